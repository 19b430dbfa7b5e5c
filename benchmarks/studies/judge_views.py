"""Which judge would see the samples' smudges? Judges trained as the run's judge is, with one thing changed each,
and what they make of real, damaged and generated images.

    python -m benchmarks.studies.judge_views --pipeline runs/emoji_demo/pipeline \
        --samples "halfway, 700 steps=runs/emoji_demo/pipeline/checkpoint-700"

Every candidate learns as the judge of any image folder does (pipeline/classifier.py: contrastive, plus the labels
where there are any; the same steps, batch and seed), except for one change:
  judge     the run's own judge, as pipeline.evaluate loads it (no training here)
  stages    the same judge, its features the mean of every stage's output side by side instead of the last one's
  no-zoom   views shifted and relit but not zoomed in: the judge before zoomed views
  gray      views also turned gray half of the time (colour data): SimCLR's grayscale, against colour shortcuts
  jitter    views also change saturation and hue by up to half: SimCLR's colour jitter
  regnet-y  a RegNet Y, whose 3x3 stride-2 stem keeps 16x16 of a 32-px image (the ResNet's keeps 8x8)
  input-2x  the ResNet on images repeated to twice the size (its stem then keeps 16x16), half the steps

On each candidate's features, FID of N images per row (N: the test split's size, at most 2,000), over the floor,
against two references: the test split (as pipeline.evaluate scores: the floor is N training images, damaged rows
are damaged training images) and the whole training folder (the floor is the N test images, damaged rows are
damaged test images). Rows: blur, noise, 2 of 16 patches swapped, the run's samples unguided and, for a
class-conditional run, at guidance 1.5 with the test split's labels, and each `--samples NAME=FOLDER`.
Writes judge-views-<data>-<date>.json and .md.
"""

import argparse
import datetime
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import add_commit_option, hardware, provenance, save_result
from benchmarks.studies.judge_ordering import blur, load_samples, noise, shuffle_patches

CANDIDATES = ("judge", "stages", "no-zoom", "gray", "jitter", "regnet-y", "input-2x")
GUIDANCE = 1.5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", required=True, help="a pipeline folder: its data, judge and samples")
    p.add_argument("--samples", action="append", default=[], metavar="NAME=FOLDER",
                   help="more samples: a pipeline folder or a checkpoint-N folder inside one (repeatable)")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help=f"comma-separated, of {', '.join(CANDIDATES)}")
    p.add_argument("--num_samples", type=int, default=None, help="images per row (default: the test split's size, "
                   "at most 2,000)")
    p.add_argument("--sampler", default=None, help="default: the evaluation's (pipeline.evaluate)")
    p.add_argument("--num_inference_steps", type=int, default=None, help="default: the evaluation's")
    p.add_argument("--steps", type=int, default=None, help="training steps per candidate (default: the judge's)")
    p.add_argument("--name", default=None)
    p.add_argument("--output", default="benchmarks/results")
    add_commit_option(p)
    return p.parse_args(argv)


# --- the views: the judge's own (pipeline.classifier.augment), then one more change, or without its zoom ---------

def luminance(x):
    return 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def grayed(x, g, p=0.5):
    if x.shape[1] != 3:
        return x
    pick = (torch.rand(len(x), 1, 1, 1, generator=g) < p).to(x.device)
    return torch.where(pick, luminance(x).expand_as(x), x)


def jittered(x, g, amount=0.5):
    """Saturation scaled by 1 +- amount, hue turned by up to amount x 180 degrees (a rotation in YIQ's chroma plane)."""
    if x.shape[1] != 3:
        return x
    n = len(x)
    lum = luminance(x)
    x = lum + (x - lum) * (1 + amount * (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1)).to(x.device)
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device)
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, x)
    angle = (amount * torch.pi * (torch.rand(n, generator=g) * 2 - 1)).to(x.device)[:, None, None]
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], angle.cos() * i - angle.sin() * q, angle.sin() * i + angle.cos() * q], 1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), yiq).clamp(-1, 1)


def views_for(name):
    from pipeline.classifier import augment

    extra = {"gray": [grayed], "jitter": [jittered]}.get(name, [])

    def views(x, g):
        x = augment(x, g, min_zoom=1.0) if name == "no-zoom" else augment(x, g)
        for change in extra:
            x = change(x, g)
        return x
    return views


def upscale(images, factor):
    return images if factor == 1 else np.repeat(np.repeat(images, factor, axis=-1), factor, axis=-2)


# --- features and scores ------------------------------------------------------------------------------------------

@torch.no_grad()
def features(model, images, factor=1, stages=False, batch_size=500):
    from pipeline.classifier import to_pixel_values

    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        o = model.base_model(pixel_values=to_pixel_values(upscale(images[i:i + batch_size], factor)),
                             output_hidden_states=stages)
        out.append(torch.cat([h.mean(dim=(2, 3)) for h in o.hidden_states[1:]], 1) if stages
                   else o.pooler_output.flatten(1))
    return torch.cat(out).double()


def frechet(real, fake):
    """torchmetrics' FID between two sets of features already computed."""
    from pipeline.metrics import GivenFeatures, fid_metric

    fid = fid_metric(GivenFeatures(real.shape[1]))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


def candidate(name, data, steps):
    """(model, upscale factor, stage features?, train seconds, test accuracy, balanced test accuracy)."""
    from pipeline.classifier import (ARCHITECTURE, accuracies, classifier_record, contrastive_steps, get_classifier,
                                     has_labels, train_contrastive)

    train_x, train_y = data.load("train")
    test_x, test_y = data.load("test")
    factor = 2 if name == "input-2x" else 1
    if name in ("judge", "stages"):
        model = get_classifier(data)
        seconds = classifier_record(data)["train_seconds"]
    else:
        steps = steps or contrastive_steps(len(train_x))
        classes = 0 if train_y is None else int(max(train_y.max(), test_y.max())) + 1
        start = time.time()
        model = train_contrastive(upscale(train_x, factor), train_y, classes, steps=steps // factor,
                                  architecture="regnet-y" if name == "regnet-y" else ARCHITECTURE,
                                  views=views_for(name), desc=f"{name} judge")
        seconds = time.time() - start
    acc = bal = None
    if train_y is not None and has_labels(model):
        acc, bal, _ = accuracies(model, upscale(test_x, factor), test_y)
    return model, factor, name == "stages", seconds, acc, bal


def damaged(images, rng):
    return {"blurred, sigma 1 px": blur(images, 1.0), "noised, sigma 0.05": noise(images, 0.05, rng),
            "noised, sigma 0.15": noise(images, 0.15, rng), "2 patches of 16 swapped": shuffle_patches(images, 2, rng)}


def draw_samples(run, specs, n, labels, sampler=None, steps=None):
    """name -> uint8 samples: the run's unguided and (class-conditional runs) guided at the test split's labels, and
    each --samples folder unguided; the evaluation's sampler and steps unless given."""
    from pipeline.sampling import sample_images
    from pipeline.schedulers import default_sampling, with_scheduler

    out = {}
    for name, folder in [("today", run), *[s.partition("=")[::2] for s in specs]]:
        pipe = load_samples(run, folder)
        pipe.set_progress_bar_config(disable=True)
        default_sampler, default_steps = default_sampling(pipe)  # per folder: a distilled one has its own
        use_sampler, use_steps = sampler or default_sampler, steps or default_steps
        pipe = with_scheduler(pipe, use_sampler)
        out[f"samples: {name} ({use_sampler}, {use_steps} steps)"] = sample_images(pipe, n, 500, use_steps, seed=0)
        if pipe.unet.config.num_class_embeds and labels is not None and name == "today":
            out[f"samples: {name}, guidance {GUIDANCE} at the test split's labels"] = sample_images(
                pipe, n, 500, use_steps, seed=0, class_labels=[int(c) for c in labels], guidance_scale=GUIDANCE)
    return out


def main(argv=None):
    args = parse_args(argv)
    from pipeline.judge_data import run_judge_data

    run = Path(args.pipeline)
    data = run_judge_data(run)
    train_x, _ = data.load("train")
    test_x, test_y = data.load("test")
    n = min(args.num_samples or min(2000, len(test_x)), len(test_x))
    pick = np.random.default_rng(1).permutation(len(train_x))[:n]
    rng = np.random.default_rng(0)
    # reference "test split": training images and their damage against the test split (pipeline.evaluate's view);
    # reference "training folder": test images and their damage against every training image
    rows = {"test split": {"real (the floor)": train_x[pick], **damaged(train_x[pick], rng)},
            "training folder": {"real (the floor)": test_x[:n], **damaged(test_x[:n], rng)}}
    samples = draw_samples(run, args.samples, n, None if test_y is None else test_y[:n], args.sampler,
                           args.num_inference_steps)
    results = []
    for name in args.candidates.split(","):
        if name not in CANDIDATES:
            raise SystemExit(f"unknown candidate {name!r}; choose from {', '.join(CANDIDATES)}")
        model, factor, stages, seconds, acc, bal = candidate(name, data, args.steps)
        feats = lambda images: features(model, images, factor, stages)  # noqa: E731
        refs = {"test split": feats(test_x), "training folder": feats(train_x)}
        sample_feats = {row: feats(images) for row, images in samples.items()}  # the same under both references
        scores = {}
        for ref_name, ref in refs.items():
            fids = {row: frechet(ref, feats(images)) for row, images in rows[ref_name].items()}
            fids.update({row: frechet(ref, f) for row, f in sample_feats.items()})
            floor = fids["real (the floor)"]
            for row, fid in fids.items():
                scores.setdefault(row, {})[ref_name] = round(fid / floor, 3)
            scores["real (the floor)"][ref_name + " FID"] = round(floor, 3)
        result = {"candidate": name, "train_seconds": round(seconds, 1), "test_accuracy": acc,
                  "balanced_test_accuracy": bal, "num_features": int(refs["test split"].shape[1]), "rows": scores}
        results.append(result)
        print(result, flush=True)
    stem = data.key.split("-")[0] if data.source is not None else data.name.split("/")[-1]
    name = args.name or f"judge-views-{stem}-{datetime.datetime.now().strftime('%Y%m%d')}"
    result = {**provenance(name, hardware(torch.device("cpu")), args.commit), "pipeline": str(run),
              "dataset": data.name, "num_images": n, "candidates": results}
    save_result(result, markdown(result), args.output)
    return result


def markdown(r) -> str:
    names = [c["candidate"] for c in r["candidates"]]
    lines = [f"Judges trained as {r['dataset']}'s is, one change each: FID over the floor on {r['num_images']:,} "
             f"images per row, against the test split / against the whole training folder; "
             f"{r['hardware']['cpu_count']} cores, commit {(r['git_commit'] or 'unknown')[:7]}; `{r['command']}`.", "",
             "| images | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for row in r["candidates"][0]["rows"]:
        cells = [c["rows"][row] for c in r["candidates"]]
        lines.append(f"| {row} | " + " | ".join(f"{x['test split']:.2f} / {x['training folder']:.2f}" for x in cells)
                     + " |")
    floors = [c["rows"]["real (the floor)"] for c in r["candidates"]]
    lines.append("| floor FID | " + " | ".join(f"{f['test split FID']:.2f} / {f['training folder FID']:.2f}"
                                               for f in floors) + " |")
    acc = [c["balanced_test_accuracy"] for c in r["candidates"]]
    lines.append("| balanced test accuracy | " + " | ".join("-" if a is None else f"{a:.1%}" for a in acc) + " |")
    lines.append("| train seconds | " + " | ".join(f"{c['train_seconds']:.0f}" for c in r["candidates"]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
