"""Classifier-free guidance sweep for a class-conditional pipeline (`python -m pipeline.evaluate --guidance_scales`).

For each guidance scale it samples `num_samples` digits with labels cycling 0..9 (equal numbers per
class; the same seed, so the same starting noise, for every scale), scores them like
`evaluate_pipeline` does (FID, precision, recall, ... against the real-data floor) and adds
class accuracy: the fraction of samples the judge classifies as the class that was asked for.
It writes to `output_dir`:
  guidance.json                 settings, `floor` (real data: its class_accuracy and per_class_accuracy are
                                the judge's on real test images at the samples' class mix, every class
                                equally often; test_accuracy its plain one) and `scales`, one per scale:
                                guidance_scale, class_accuracy, per_class_accuracy, fid, precision, recall,
                                kl_to_uniform, mean_confidence, class_histogram, sampling_seconds
  guidance.png                  FID (left) and class accuracy / precision / recall (right) vs guidance scale
  samples_guidance_<s>.png      the first 100 digits at scale s: column c asks for class c
and prints a table. Guidance usually trades diversity (recall, and FID past some scale) for
class fidelity (class accuracy, precision).
"""

import json
import time
from pathlib import Path

import numpy as np

from pipeline.classifier import classifier_accuracy, classifier_record, get_classifier, predict, why_no_classes
from pipeline.errors import UserError
from pipeline.judge_data import judge_for
from pipeline.metrics import get_reference, score_images
from pipeline.sampling import MIN_SAMPLES, output_folder, sample_images
from pipeline.schedulers import DEFAULT_SAMPLER, DEFAULT_STEPS, with_scheduler
from pipeline.visualisation import plt, save_grid  # pyplot with the Agg backend, set there

FLOOR_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage", "kl_to_uniform", "mean_confidence")


def parse_scales(text: str) -> list[float]:
    """"1,2,3,5" -> [1.0, 2.0, 3.0, 5.0] (sorted, no repeats); anything else is a UserError."""
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        scales = None
    if not scales or not all(np.isfinite(s) and s >= 0 for s in scales):
        raise UserError(f"--guidance_scales {text!r} must be a comma list of numbers >= 0, e.g. 1,2,3,5")
    return sorted(set(scales))


def num_classes_of(pipe) -> int:
    """The number of real classes of a class-conditional pipeline (its UNet has one more, the null label)."""
    num_class_embeds = pipe.unet.config.num_class_embeds
    if num_class_embeds is None:
        raise UserError("--guidance_scales needs a class-conditional pipeline (trained with --conditioning class), "
                        "but this one is unconditional; drop --guidance_scales")
    return num_class_embeds - 1


def cycling_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """0, 1, ..., num_classes-1, 0, 1, ...: every class equally often (num_samples must be a multiple)."""
    if num_samples % num_classes:
        raise UserError(f"--num_samples {num_samples} must be a multiple of {num_classes} for --guidance_scales "
                        f"(equal numbers per class); use {num_samples - num_samples % num_classes + num_classes}")
    return np.arange(num_samples) % num_classes


def guidance_sweep(pipe, output_dir, guidance_scales, num_samples=10_000, num_inference_steps=DEFAULT_STEPS,
                   scheduler=DEFAULT_SAMPLER, seed=0, batch_size=1000, dataset="ylecun/mnist", data_dir=None, source=None) -> dict:
    """Sample and score `pipe` (left untouched: a copy gets `scheduler`) at each scale; write the files, return them.
    `source`: the training config (or run_data_options) for data other than the IDX datasets."""

    num_classes = num_classes_of(pipe)  # the checks first, before anything slow
    if num_samples < MIN_SAMPLES:
        raise UserError(f"--num_samples {num_samples} is too few to score; use at least {MIN_SAMPLES}")
    labels = cycling_labels(num_samples, num_classes)
    data, why_not = judge_for(source, dataset, data_dir, pipe.autoencoder)
    if data is None:
        raise UserError(f"--guidance_scales measures class accuracy with the judge: {why_not}")
    out = output_folder(output_dir)
    classifier = get_classifier(data, device=pipe.device)
    record = classifier_record(data)  # read once: why there are no class scores, and the judge's accuracy
    why = why_no_classes(data, record)
    if why is not None:
        raise UserError(f"--guidance_scales measures class accuracy with the judge, but {why}; "
                        "score the samples without it (FID, KID, prdc): drop --guidance_scales")
    if classifier.config.num_labels != num_classes:
        raise UserError(f"the pipeline has {num_classes} classes but the {data.name} judge has "
                        f"{classifier.config.num_labels}; pass the --dataset it was trained on")
    reference = get_reference(data, classifier=classifier)
    sampler = with_scheduler(pipe, scheduler)

    rows = []
    for scale in guidance_scales:
        print(f"guidance scale {scale:g}", flush=True)
        start = time.perf_counter()
        images = sample_images(sampler, num_samples, batch_size, num_inference_steps, seed, labels, scale)
        seconds = time.perf_counter() - start
        save_grid(images[:100], out / f"samples_guidance_{scale:g}.png", nrow=10)
        scores = score_images(images, classifier, reference)
        rows.append(dict(guidance_scale=scale, **class_scores(classifier, images, labels, num_classes),
                         **{k: scores[k] for k in (*FLOOR_KEYS, "class_histogram")}, sampling_seconds=round(seconds, 3)))

    floor = {k: reference.floor_for(num_samples, classifier)[k] for k in FLOOR_KEYS}
    # Real test images at the samples' class mix, every class equally often; the judge's plain accuracy beside it
    floor.update(class_scores(classifier, *data.load("test"), num_classes),
                 test_accuracy=classifier_accuracy(data, record))
    result = dict(scales=rows, floor=floor, num_samples=num_samples, num_inference_steps=num_inference_steps,
                  scheduler=scheduler, seed=seed, batch_size=batch_size, device=str(pipe.device), dataset=data.name)
    print_table(result)
    (out / "guidance.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_guidance(result, out / "guidance.png")
    print(f"wrote {out / 'guidance.json'} and {out / 'guidance.png'}")
    return result


def class_scores(classifier, images, labels, num_classes: int) -> dict:
    """How often the judge sees the class of each image: per class, and the mean over classes (a class without
    images left out). For samples, whose labels cycle, the mean is their plain accuracy. For real test images it
    is what they score at the samples' class mix, the fair comparison: the judge's plain test accuracy weighs each
    class by its share (on the emoji, whose judge is surest of the largest category, 84% against 63%)."""
    correct = predict(classifier, images)[1].argmax(1) == labels
    per_class = [float(correct[labels == c].mean()) if (labels == c).any() else None for c in range(num_classes)]
    return dict(class_accuracy=float(np.mean([a for a in per_class if a is not None])), per_class_accuracy=per_class)


def print_table(result: dict):
    print(f"\n{'guidance':>9}{'class acc':>11}{'FID':>9}{'precision':>11}{'recall':>9}")
    for row in [*result["scales"], dict(result["floor"], guidance_scale=None)]:
        scale = "real data" if row["guidance_scale"] is None else f"{row['guidance_scale']:g}"
        print(f"{scale:>9}{row['class_accuracy']:11.4f}{row['fid']:9.4g}{row['precision']:11.4f}{row['recall']:9.4f}")
    print(f"({result['num_samples']} samples per scale, {result['scheduler']}, {result['num_inference_steps']} steps; "
          "real data: FID etc. of as many real images; class acc of the judge on the test split, every class "
          "weighted equally as the samples' labels are)")


def plot_guidance(result: dict, path):
    """Two panels against the guidance scale: FID, then class accuracy with precision and recall; dashed = real data."""
    rows, floor = result["scales"], result["floor"]
    x = [r["guidance_scale"] for r in rows]
    fig, (ax_fid, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax_fid.plot(x, [r["fid"] for r in rows], "o-", color="C3", label="samples")
    ax_fid.axhline(floor["fid"], ls="--", color="C3", alpha=0.5, label="real data")
    ax_fid.set_ylabel("FID (lower is better)")
    ax_fid.set_ylim(bottom=0)
    for key, color, width in (("class_accuracy", "C0", 2.0), ("precision", "C2", 1.0), ("recall", "C1", 1.0)):
        ax_acc.plot(x, [r[key] for r in rows], "o-", color=color, lw=width, label=key.replace("_", " "))
        ax_acc.axhline(floor[key], ls="--", color=color, alpha=0.4, lw=1.0)
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_ylabel("fraction (dashed: real data)")
    for ax in (ax_fid, ax_acc):
        ax.set_xlabel("guidance scale")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"classifier-free guidance, {result['num_samples']} samples per scale "
                 f"({result['scheduler']}, {result['num_inference_steps']} steps)", fontsize=10)
    fig.tight_layout()
    fig.savefig(Path(path), dpi=120)
    plt.close(fig)
