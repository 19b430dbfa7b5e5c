"""Does the judge see what a person sees? Scores of real, damaged and generated images, in the order a person would
rank them.

    python -m benchmarks.studies.judge_ordering --pipeline runs/emoji_demo/pipeline \
        --samples "halfway=runs/emoji_demo/pipeline/checkpoint-2000" --samples "today=runs/emoji_demo/pipeline"

For the run's data (its judge, as `python -m pipeline.evaluate` picks it, or `--features`), N images per row: real
training images (the floor's own pick: the floor), the same images through the run's autoencoder, blurred,
noised, with shuffled patches and with rotated colour channels (two strengths each; grayscale images have no
channels to rotate), and the samples of each `--samples NAME=FOLDER` (a pipeline folder, or a checkpoint-N folder
of one: its EMA weights in the run's pipeline), drawn as the evaluation draws them. Writes
judge-ordering-<data>-<date>.json and .md: FID, KID, precision and recall per row, FID over the floor.
"""

import argparse
import datetime
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from benchmarks.common import add_commit_option, hardware, provenance, save_result

KEYS = ("fid", "kid", "precision", "recall")
PATCHES = 4  # the image is cut into 4x4 patches for the shuffles


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", required=True, help="a pipeline folder: its data, judge and autoencoder")
    p.add_argument("--samples", action="append", default=[], metavar="NAME=FOLDER",
                   help="samples to score: a pipeline folder or a checkpoint-N folder inside one (repeatable)")
    p.add_argument("--num_samples", type=int, default=None, help="images per row (default: the test split's size, "
                   "at most 2,000)")
    p.add_argument("--num_inference_steps", type=int, default=None, help="default: the pipeline's own")
    p.add_argument("--features", default="judge", help="judge, inception or dinov2, as in pipeline.evaluate")
    p.add_argument("--features_weights", default=None)
    p.add_argument("--name", default=None)
    p.add_argument("--output", default="benchmarks/results")
    add_commit_option(p)
    return p.parse_args(argv)


def blur(images, sigma):
    spatial = (0, sigma, sigma) if images.ndim == 3 else (0, 0, sigma, sigma)
    return np.round(gaussian_filter(images.astype(np.float64), sigma=spatial)).astype(np.uint8)


def noise(images, sigma, rng):
    return np.clip(np.round(images + rng.normal(0, sigma * 255, images.shape)), 0, 255).astype(np.uint8)


def shuffle_patches(images, swaps, rng):
    """Each image cut into PATCHES x PATCHES patches; `swaps` random pairs of patches exchanged (None: all shuffled)."""
    out = images.copy()
    h, w = images.shape[-2] // PATCHES, images.shape[-1] // PATCHES
    cells = [(i, j) for i in range(PATCHES) for j in range(PATCHES)]
    for image, original in zip(out, images):
        order = rng.permutation(len(cells))
        if swaps is not None:
            moved = np.arange(len(cells))
            for a, b in rng.choice(len(cells), (swaps, 2), replace=False):
                moved[a], moved[b] = moved[b], moved[a]
            order = moved
        for (i, j), k in zip(cells, order):
            si, sj = cells[k]
            image[..., i * h:(i + 1) * h, j * w:(j + 1) * w] = original[..., si * h:(si + 1) * h, sj * w:(sj + 1) * w]
    return out


def rotate_channels(images, amount):
    """RGB -> BRG blended in by `amount` (1: the channels fully rotated)."""
    rotated = images[:, [2, 0, 1]].astype(np.float64)
    return np.round((1 - amount) * images + amount * rotated).astype(np.uint8)


def load_samples(run, folder):
    """The pipeline of `folder`, or the run's pipeline with the EMA UNet of a checkpoint-N folder."""
    from diffusers import UNet2DModel

    from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline

    folder = Path(folder)
    if folder.name.startswith("checkpoint-"):
        pipe = LatentDDPMPipeline.from_pretrained(folder.parent)
        ema = folder / "unet_ema"
        pipe.unet = UNet2DModel.from_pretrained(ema if ema.is_dir() else folder / "unet").eval()
        return pipe
    return LatentDDPMPipeline.from_pretrained(folder)


def main(argv=None):
    args = parse_args(argv)
    from pipeline.classifier import get_classifier
    from pipeline.data import to_uint8
    from pipeline.judge_data import run_judge_data
    from pipeline.latent_cache import encode_decode
    from pipeline.metrics import FLOOR_SIZE, get_reference, score_images
    from pipeline.sampling import sample_images
    from pipeline.schedulers import default_sampling, with_scheduler

    run = Path(args.pipeline)
    data = run_judge_data(run)
    classifier = get_classifier(data)
    reference = get_reference(data, classifier=classifier, features=args.features, weights=args.features_weights)
    n = args.num_samples or min(2000, len(data.load("test")[0]))
    real = data.load("train")[0][:FLOOR_SIZE][reference.floor_pick(n)]
    rng = np.random.default_rng(0)
    base = load_samples(run, run)
    rows = {"real training images (the floor)": real,
            "through the autoencoder": to_uint8(encode_decode(base.autoencoder, real, 500)[1])}
    rows.update({"blurred, sigma 0.5 px": blur(real, 0.5), "blurred, sigma 1 px": blur(real, 1.0),
                 "noised, sigma 0.05": noise(real, 0.05, rng), "noised, sigma 0.15": noise(real, 0.15, rng),
                 "2 patches of 16 swapped": shuffle_patches(real, 2, rng),
                 "all 16 patches shuffled": shuffle_patches(real, None, rng)})
    if real.ndim == 4:
        rows.update({"channels half rotated": rotate_channels(real, 0.5), "channels rotated": rotate_channels(real, 1.0)})
    for spec in args.samples:
        name, _, folder = spec.partition("=")
        pipe = load_samples(run, folder)
        pipe.set_progress_bar_config(disable=True)
        sampler, steps = default_sampling(pipe)
        steps = args.num_inference_steps or steps
        rows[f"samples: {name} ({sampler}, {steps} steps)"] = sample_images(with_scheduler(pipe, sampler), n, 500,
                                                                           steps, seed=0)
    results = []
    for name, images in rows.items():
        s = score_images(images, classifier, reference)
        results.append({"row": name, **{k: float(s[k]) for k in KEYS}, "fid_floor": float(s["fid_floor"])})
        print(f"{name:45} FID {s['fid']:8.2f} (floor {s['fid_floor']:.2f})  KID {s['kid']:.4f}  precision "
              f"{s['precision']:.3f}  recall {s['recall']:.3f}", flush=True)
    hw = hardware(torch.device("cpu"))
    stem = data.key.split("-")[0] if data.source is not None else data.name.split("/")[-1]
    name = args.name or f"judge-ordering-{stem}-{datetime.datetime.now().strftime('%Y%m%d')}"
    result = {**provenance(name, hw, args.commit), "pipeline": str(run), "dataset": data.name,
              "features": args.features, "num_samples": n, "judge": classifier_summary(data), "rows": results}
    save_result(result, markdown(result), args.output)
    return result


def classifier_summary(data) -> dict:
    from pipeline.classifier import classifier_record, objective

    record = classifier_record(data)
    return {"objective": objective(data), **{k: record.get(k) for k in (
        "labelled", "test_accuracy", "balanced_test_accuracy", "train_seconds", "steps", "epochs")}}


def markdown(r) -> str:
    judge = r["judge"]
    acc = "" if judge["test_accuracy"] is None else f", test accuracy {judge['test_accuracy']:.1%}"
    lines = [f"The judge's view of real, damaged and generated images: {r['dataset']}, {r['num_samples']:,} images "
             f"per row against the test split, features `{r['features']}` (judge: {judge['objective']}{acc}); "
             f"{r['hardware']['cpu_count']} cores, commit {(r['git_commit'] or 'unknown')[:7]}; `{r['command']}`.", "",
             "| images | FID | FID / floor | KID | precision | recall |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['row']} | {row['fid']:.2f} | {row['fid'] / row['fid_floor']:.2f} | {row['kid']:.4f} | "
                     f"{row['precision']:.3f} | {row['recall']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
