"""Score a trained model: `python -m pipeline.evaluate --pipeline PATH [...]`.

For a LatentDDPMPipeline folder (has model_index.json) it samples `--num_samples` digits
with a seeded generator and writes to `--output_dir`:
  samples.npz   key `images`, uint8 (N, 28, 28)
  samples.png   the first 100 digits
  metrics.json  FID and KID (torchmetrics), precision / recall / density / coverage (prdc),
                class balance and confidence, each with its real-data floor, plus sampler
                settings, speed and the judge's fingerprint and test accuracy
and prints a table with the floor next to each number. The judge is a transformers image
classifier trained from scratch on the dataset (pipeline/classifier.py), trained once and cached.

Next to the floor it prints what the same real images score after a trip through the
pipeline's autoencoder (`*_reconstructed` in metrics.json): the best a latent model decoded
by that autoencoder can reach, so a gap to the floor is the autoencoder's and the rest is the
diffusion model's.

For a CABAutoencoder folder (config.json, no model_index.json) it reports PSNR/SSIM of
reconstructions over the whole test split instead (metrics.json: psnr, ssim, num_images),
and the judge's scores of 10,000 reconstructed training images next to the floor.

With `--guidance_scales 1,2,3,5` (class-conditional pipelines only) it sweeps classifier-free
guidance instead: per scale, digits of every class in equal numbers, their FID / precision /
recall and class accuracy (does the judge see the requested class?), into guidance.json and
guidance.png (see pipeline/guidance.py). Without it, a class-conditional pipeline is scored on
unconditional samples (the null label), like any other, and again on samples whose labels are drawn at
the training data's class mix, unguided (`fid_class_mix` and the like; samples_class_mix.png): the
model's own conditional distribution, which the null label (a tenth of the images with class_dropout 0.1) lags.

Other datasets (pipeline/image_data.py: Hub ids, image folders, colour): the data options are read
from the run's training_config.yaml, and the judge is trained on that dataset's own images, contrastively,
with its labels where it has any, at the pipeline's size and channels (samples.npz: (N, H, W) or
(N, 3, H, W)); PSNR/SSIM of colour images are over all channels. Unlabelled data gets FID, KID and
precision/recall too; class balance and confidence need labels. With fewer than 100 test images there are no
real statistics: samples and speed are written, and one line says why there is no FID.

`--features inception|dinov2` computes FID, KID and precision/recall on a published network instead of the
judge (pipeline/feature_networks.py): the numbers papers report, for users whose machine can fetch the weights.

Same seed, same settings, same device => same samples and the same scores.
In-process (e.g. at the end of training): `evaluate_pipeline(pipe, output_dir, ...)` and
`evaluate_autoencoder(autoencoder, output_dir, ...)` do the same and return the metrics.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffusers.utils import logging as diffusers_logging

from pipeline.classifier import classifier_accuracy, classifier_record, get_classifier, why_no_classes
from pipeline.data import to_uint8
from pipeline.errors import UserError, first_line, run_cli
from pipeline.feature_networks import FEATURES, feature_network
from pipeline.guidance import guidance_sweep, parse_scales
from pipeline.image_data import load_images
from pipeline.judge_data import run_data_options, judge_for, model_kind, pick_dataset
from pipeline.latent_cache import encode_decode, load_autoencoder
from pipeline.metrics import FLOOR_SIZE, get_reference, judge_fingerprint, memorisation, psnr_ssim, score_images
from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline
from pipeline.sampling import MIN_SAMPLES, output_folder, sample_images
from pipeline.schedulers import (DEFAULT_SAMPLER, DEFAULT_STEPS, check_steps, default_sampling, parse_scheduler,
                                 with_scheduler)
from pipeline.visualisation import reconstruction_figure, save_grid

TABLE = [("fid", "FID", "lower is better (torchmetrics)"), ("kid", "KID", "lower is better, unbiased (torchmetrics)"),
         ("precision", "precision", "realism (prdc, k=3)"), ("recall", "recall", "variety covered (prdc)"),
         ("density", "density", "realism, robust to outliers (prdc)"), ("coverage", "coverage", "variety (prdc)"),
         ("kl_to_uniform", "KL to uniform", "class balance, 0 = even"),
         ("mean_confidence", "mean confidence", "judge's max softmax")]


def scheduler_spec(text):
    """argparse type for --scheduler: a name, optionally with options ("dpm:solver_order=3")."""

    try:
        parse_scheduler(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
    return text


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", required=True, help="a saved LatentDDPMPipeline folder, or a CABAutoencoder folder")
    p.add_argument("--num_samples", type=int, default=10_000,
                   help="samples to draw and score; for an autoencoder, test images to reconstruct "
                        "(default %(default)s: the whole test split)")
    p.add_argument("--num_inference_steps", type=int, default=None,
                   help=f"default: {DEFAULT_STEPS}, or a consistency-distilled student's saved steps")
    p.add_argument("--scheduler", type=scheduler_spec, default=None,
                   help="ddpm, ddim, dpm (DPM-Solver++), sde-dpm (its stochastic form), unipc, euler or lcm, "
                        "optionally with the scheduler's own options after a colon: unipc:solver_order=3 (default: "
                        f"{DEFAULT_SAMPLER}, the best FID per second measured; a student's LCMScheduler)"),
    p.add_argument("--output_dir", default=None, help="default: <pipeline>/evaluation, where training writes its scores too")
    p.add_argument("--batch_size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dataset", default=None,
                   help="the dataset the model was trained on (picks the judge); default: the one named in the "
                        "folder's training_config.yaml or model card, else ylecun/mnist")
    p.add_argument("--data_dir", default=None, help="folder with the four IDX files, if the Hub is unreachable")
    p.add_argument("--train_data_dir", default=None,
                   help="the image folder the model was trained on; default: the one in training_config.yaml")
    p.add_argument("--features", choices=FEATURES, default="judge",
                   help="the network FID, KID and precision/recall are computed on: judge (trained on the data "
                        "itself, offline; the default), inception (torchmetrics' FID Inception, the number papers "
                        "report) or dinov2 (FD-DINOv2; facebook/dinov2-small)")
    p.add_argument("--features_weights", default=None, metavar="PATH",
                   help="a local copy of the --features network: the Inception .pth, or a DINOv2 folder or Hub id")
    p.add_argument("--guidance_scales", default=None, metavar="1,2,3,5",
                   help="class-conditional pipelines: sweep these classifier-free guidance scales "
                        "(class accuracy and FID per scale, guidance.json and guidance.png)")
    args = p.parse_args(argv)
    for name in ("num_samples", "num_inference_steps", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be a positive integer; got {getattr(args, name)}")
    if args.guidance_scales is not None:
        args.guidance_scales = parse_scales(args.guidance_scales)
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} but CUDA is not available here; use --device auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name} but MPS is not available here; use --device auto or cpu")
    return device


def load_pipeline(path: Path, device):
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components" bars; we print our own progress
    try:
        pipe = LatentDDPMPipeline.from_pretrained(str(path))
    except Exception as e:  # missing weights, wrong component classes, ...
        raise UserError(f"cannot load the pipeline {path}: {first_line(e)}")
    return pipe.to(device)


def print_table(metrics: dict):
    # real data: as many real training digits as samples (up to 10,000), so both carry the same sample-size bias;
    # reconstructed: those same digits through the autoencoder
    print(f"\n{'':16}{'model':>10}{'real data':>11}{'reconstructed':>15}   "
          f"({metrics['floor_num_samples']} real images vs the test split; reconstructed: through the autoencoder)")
    for key, label, hint in TABLE:
        if metrics[key] is not None:  # class balance and confidence need labels
            print(f"{label:16}{metrics[key]:10.4g}{metrics[key + '_floor']:11.4g}"
                  f"{metrics[key + '_reconstructed']:15.4g}   {hint}")
    if metrics["class_histogram"] is not None:
        hist = " ".join(str(c) for c in metrics["class_histogram"])
        classes = f"classes 0-{len(metrics['class_histogram']) - 1}"
        print(f"{classes:16}{hist}")
    if metrics.get("fid_class_mix") is not None:
        print(f"at class mix    FID {metrics['fid_class_mix']:.4g}, precision {metrics['precision_class_mix']:.4g}, "
              f"recall {metrics['recall_class_mix']:.4g}: labels drawn as the training data holds them, no guidance "
              "(the column 'model' is the null label's)")
    print(f"speed           {metrics['images_per_second']:.1f} images/s "
          f"({metrics['scheduler']}, {metrics['num_inference_steps']} steps)")
    print_memorisation(metrics)


def print_memorisation(metrics: dict):
    print(f"memorisation    {metrics['nn_distance']:.4g} median RMS distance of a sample to its nearest training "
          f"image; held-out real images: {metrics['nn_distance_held_out']:.4g} (far below it: copies)")


def score_reconstructions(autoencoder, classifier, reference, num_samples, train_images, batch_size=1000) -> dict:
    """`<metric>_reconstructed`: the judge on the floor's own `num_samples` real training images (picked from
    `train_images`, the training split) after a trip through `autoencoder`. No latent model decoded by it can
    expect to score better."""

    real = train_images[:FLOOR_SIZE][reference.floor_pick(num_samples)]
    scores = score_images(to_uint8(encode_decode(autoencoder, real, batch_size)[1]), classifier, reference)
    return {f"{key}_reconstructed": scores[key] for key, _, _ in TABLE}


def judge_record(classifier, data) -> dict:
    """Which judge gave the scores: its architecture, weights fingerprint and test accuracy, for metrics.json."""

    record = classifier_record(data)
    extra = {f"classifier_{k}": record[k] for k in ("balanced_test_accuracy", "balanced_test_accuracy_interval",
                                                      "min_accuracy", "bar_on", "objective")
             if k in record}
    return dict(classifier_accuracy=classifier_accuracy(data, record),
                classifier_why_no_classes=why_no_classes(data, record), **extra,
                classifier_fingerprint=judge_fingerprint(classifier), classifier_architecture=classifier.config.model_type)


def _write_metrics(metrics: dict, out: Path):
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {out / 'metrics.json'}")


def evaluate_pipeline(pipe, output_dir, num_samples=10_000, num_inference_steps=DEFAULT_STEPS, scheduler=DEFAULT_SAMPLER,
                      seed=0, batch_size=1000, dataset="ylecun/mnist", data_dir=None, source=None, features="judge",
                      features_weights=None) -> dict:
    """Sample with `pipe` (left untouched: a copy gets `scheduler`), score, write the three files, return metrics.
    `source`: the training config (or run_data_options) for data other than the IDX datasets; data with too few
    test images gets samples and speed only. `features`: the network the scores are computed on (FEATURES)."""

    if num_samples < MIN_SAMPLES:
        raise UserError(f"--num_samples {num_samples} is too few to score; use at least {MIN_SAMPLES}")
    out = output_folder(output_dir)
    data, why_not = judge_for(source, dataset, data_dir, pipe.autoencoder)
    if data is None:
        return _samples_only(pipe, out, source, why_not, num_samples, batch_size, num_inference_steps, scheduler, seed)
    # The judge and the real images first: if they cannot be had (no data), fail before spending time on sampling.
    classifier = get_classifier(data, device=pipe.device)
    reference = get_reference(data, classifier=classifier, features=features, weights=features_weights)
    train_images, train_labels = data.load("train")
    sampler = with_scheduler(pipe, scheduler)

    start = time.perf_counter()
    images = sample_images(sampler, num_samples, batch_size, num_inference_steps, seed)
    seconds = time.perf_counter() - start
    np.savez_compressed(out / "samples.npz", images=images)
    save_grid(images[:100], out / "samples.png", nrow=10)

    metrics = score_images(images, classifier, reference)
    metrics.update(score_reconstructions(pipe.autoencoder, classifier, reference, num_samples, train_images, batch_size))
    metrics.update(memorisation(images, train_images, data.load("test")[0][:num_samples]))
    metrics.update(score_at_class_mix(sampler, classifier, reference, train_labels, out, num_samples, batch_size,
                                      num_inference_steps, seed))
    metrics.update(scheduler=scheduler, num_inference_steps=num_inference_steps, seed=seed, batch_size=batch_size,
                   device=str(pipe.device), sampling_seconds=round(seconds, 3),
                   images_per_second=round(num_samples / seconds, 2),
                   **judge_record(classifier, data), features=features, dataset=data.name)
    print_table(metrics)
    _write_metrics(metrics, out)
    return metrics


CLASS_MIX_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage")


def score_at_class_mix(sampler, classifier, reference, train_labels, out, num_samples, batch_size, steps, seed) -> dict:
    """`<metric>_class_mix`: a class-conditional model's own distribution, scored like the samples above. Labels
    are drawn at the training data's class mix (so the real images and the samples hold the classes alike),
    without guidance. The samples above come from the null label, which class dropout trains on a tenth of the
    images (class_dropout 0.1): the weaker half of the model, and what pipe() gives without labels. None for
    unconditional models, unlabelled data, or labels the model has no classes for."""

    num_class_embeds = sampler.unet.config.num_class_embeds
    if num_class_embeds is None or train_labels is None or np.max(train_labels) >= num_class_embeds - 1:
        return {f"{key}_class_mix": None for key in CLASS_MIX_KEYS}
    labels = np.random.default_rng(seed).choice(np.asarray(train_labels), num_samples)
    images = sample_images(sampler, num_samples, batch_size, steps, seed, labels, guidance_scale=1.0)
    save_grid(images[:100], out / "samples_class_mix.png", nrow=10)
    scores = score_images(images, classifier, reference)
    return {f"{key}_class_mix": scores[key] for key in CLASS_MIX_KEYS}


def _samples_only(pipe, out, source, reason, num_samples, batch_size, num_inference_steps, scheduler, seed) -> dict:
    """Samples, their grid and the sampling speed for unlabelled data, with the line saying why there is no FID."""

    start = time.perf_counter()
    images = sample_images(with_scheduler(pipe, scheduler), num_samples, batch_size, num_inference_steps, seed)
    seconds = time.perf_counter() - start
    np.savez_compressed(out / "samples.npz", images=images)
    save_grid(images[:100], out / "samples.png", nrow=10)
    metrics = dict(scheduler=scheduler, num_inference_steps=num_inference_steps, seed=seed, batch_size=batch_size,
                   device=str(pipe.device), sampling_seconds=round(seconds, 3),
                   images_per_second=round(num_samples / seconds, 2), num_samples=num_samples,
                   dataset=source.train_data_dir or source.dataset, fid=None, not_scored=reason)
    size, channels = pipe.image_size, pipe.num_channels  # the training and held-out images, as the model saw them
    metrics.update(memorisation(images, load_images("train", source, size, channels).images,
                                load_images("test", source, size, channels).images[:num_samples]))
    print(f"speed           {metrics['images_per_second']:.1f} images/s ({scheduler}, {num_inference_steps} steps)")
    print_memorisation(metrics)
    print(reason)
    _write_metrics(metrics, out)
    return metrics


def evaluate_autoencoder(autoencoder, output_dir, batch_size=1000, dataset="ylecun/mnist", data_dir=None,
                         num_samples=None, source=None, features="judge", features_weights=None) -> dict:
    """PSNR/SSIM of reconstructions of the first `num_samples` test images (None: all), and the judge's scores
    of as many reconstructed training images next to the floor at that size; writes metrics.json and
    reconstructions.png. Unlabelled data: PSNR/SSIM only, and the line saying why."""

    out = output_folder(output_dir)
    data, why_not = judge_for(source, dataset, data_dir, autoencoder)
    if data is not None:
        originals = data.load("test")[0]
    else:
        cfg = autoencoder.config
        originals = load_images("test", source, cfg.image_size, cfg.in_channels).images
    originals = originals[:num_samples]
    _, recons = encode_decode(autoencoder, originals, batch_size)
    scores = psnr_ssim(originals, recons)
    reconstruction_figure(originals, recons, out / "reconstructions.png")
    metrics = dict(psnr=scores["psnr"], ssim=scores["ssim"], num_images=scores["num_images"],
                   dataset=data.name if data is not None else source.train_data_dir or source.dataset)
    print(f"\nreconstruction of {scores['num_images']} test images: "
          f"PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.4f} (perfect: inf, 1)")
    if data is None:
        metrics["not_scored"] = why_not
        print(why_not)
        _write_metrics(metrics, out)
        return metrics

    classifier = get_classifier(data, device=autoencoder.device)
    metrics.update(judge_record(classifier, data), features=features)
    reference = get_reference(data, classifier=classifier, features=features, weights=features_weights)
    n = min(len(originals), reference.pool_size)
    metrics.update(score_reconstructions(autoencoder, classifier, reference, n, data.load("train")[0], batch_size))
    floor = reference.floor_for(n, classifier)
    metrics.update({f"{key}_floor": floor[key] for key, _, _ in TABLE}, floor_num_samples=n)
    print(f"\n{'':16}{'reconstructed':>15}{'real data':>11}   ({n} training images vs the test split)")
    for key, label, hint in TABLE:
        if metrics[key + "_reconstructed"] is not None:
            print(f"{label:16}{metrics[key + '_reconstructed']:15.4g}{metrics[key + '_floor']:11.4g}   {hint}")
    print("(the best a latent model decoded by this autoencoder can expect to score)")
    _write_metrics(metrics, out)
    return metrics


def main(argv=None):

    args = parse_args(argv)
    path = Path(args.pipeline).expanduser()
    kind = model_kind(path)
    if args.guidance_scales is not None and kind == "autoencoder":
        raise UserError(f"--guidance_scales applies to class-conditional pipelines, but {path} is an autoencoder; "
                        "drop --guidance_scales")
    device = pick_device(args.device)
    out = Path(args.output_dir).expanduser() if args.output_dir else path / "evaluation"
    dataset = pick_dataset(path, args.dataset)
    source = run_data_options(path, dataset, args.data_dir, args.train_data_dir)
    if args.num_samples < MIN_SAMPLES:  # before loading anything
        raise UserError(f"--num_samples {args.num_samples} is too few to score; use at least {MIN_SAMPLES}")
    if args.features != "judge":  # its weights, before any judge is trained or sample drawn
        feature_network(args.features, args.features_weights, device)
    if kind == "autoencoder":
        return evaluate_autoencoder(load_autoencoder(path).to(device), out, batch_size=args.batch_size,
                                    dataset=dataset, data_dir=args.data_dir, num_samples=args.num_samples, source=source,
                                    features=args.features, features_weights=args.features_weights)
    pipe = load_pipeline(path, device)
    scheduler, steps = default_sampling(pipe)
    settings = dict(num_samples=args.num_samples, num_inference_steps=args.num_inference_steps or steps,
                    scheduler=args.scheduler or scheduler, seed=args.seed, batch_size=args.batch_size,
                    dataset=dataset, data_dir=args.data_dir)
    try:  # before the judge and the sampling: a scheduler that cannot run these steps fails now, in one line
        check_steps(settings["scheduler"], pipe.scheduler.config, settings["num_inference_steps"])
    except ValueError as e:
        raise UserError(str(e))
    if args.guidance_scales is not None:
        return guidance_sweep(pipe, out, args.guidance_scales, source=source, **settings)
    return evaluate_pipeline(pipe, out, source=source, features=args.features, features_weights=args.features_weights,
                             **settings)


if __name__ == "__main__":
    run_cli(main)
