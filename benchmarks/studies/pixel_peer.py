"""The peer a user would pick instead, on a latent run's own data: pixel-space DDPM, scored by the same judge.

    python -m benchmarks.studies.pixel_peer --pipeline runs/emoji_demo/pipeline --seconds 600

benchmarks/pixel_ddpm.py's UNet2DModel and training loop (diffusers' train_unconditional.py: linear betas,
epsilon prediction, AdamW, EMA), here on the run's training images at the run's size and channels, for the CPU
time the latent recipe spent on its autoencoder and denoiser together. On a CPU budget of minutes that script's
own model (64, 128, 256 channels, two layers per level, batch 256, lr 1e-4) takes a few hundred steps, so by
default it is scaled as a specialist would scale it (32, 64, 128 channels, one layer per level, attention at
8x8 only, batch 64, lr 1e-3); every option is recorded. --steps gives the budget in steps instead of seconds,
for a run that shares the cores: take the step count from the step rate measured alone.

The samples (unconditional; DPM-Solver++ at 20 steps by default) are scored like the latent run's: FID, KID,
precision and recall against the test split, beside the real-image floor. Writes pixel-peer-<data>-<date>.json,
.md and _samples.png.
"""

import argparse
import datetime
import time
from pathlib import Path

import torch

from benchmarks.common import add_commit_option, hardware, int_list, provenance, save_result

KEYS = ("fid", "kid", "precision", "recall", "density", "coverage")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", required=True, help="a latent pipeline folder: its data, size and judge")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--seconds", type=float, help="training wall time")
    budget.add_argument("--steps", type=int, help="training steps (for runs sharing the cores)")
    p.add_argument("--block_out_channels", type=int_list, default=[32, 64, 128], help="channels per level")
    p.add_argument("--layers_per_block", type=int, default=1)
    p.add_argument("--attention_levels", type=int, default=1, help="the last N levels get attention")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--num_samples", type=int, default=450, help="images to score (the emoji configs score 450)")
    p.add_argument("--num_inference_steps", type=int, default=20)
    p.add_argument("--scheduler", default="dpm:thresholding=true",
                   help="DPM-Solver++ with dynamic thresholding (diffusers' advice for pixel-space models: without it "
                        "an undertrained epsilon model's first steps saturate), or ddpm (the training scheduler)")
    p.add_argument("--num_threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--name", default=None)
    p.add_argument("--output", default="benchmarks/results")
    add_commit_option(p)
    return p.parse_args(argv)


def unet_shape(args) -> dict:
    levels = len(args.block_out_channels)
    attention = [i >= levels - args.attention_levels for i in range(levels)]
    return dict(block_out_channels=tuple(args.block_out_channels), layers_per_block=args.layers_per_block,
                norm_num_groups=min(32, *args.block_out_channels),  # GroupNorm's groups must divide a narrow level
                down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
                up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)))


def main(argv=None):
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    from benchmarks import pixel_ddpm
    from pipeline.autoencoder import ImageProcessor
    from pipeline.classifier import get_classifier
    from pipeline.judge_data import run_judge_data
    from pipeline.metrics import get_reference, score_images
    from pipeline.visualisation import save_grid

    data = run_judge_data(Path(args.pipeline))
    classifier = get_classifier(data)
    reference = get_reference(data, classifier=classifier)
    images = data.load("train")[0]
    processor = ImageProcessor(images.shape[-1])
    sampler, stats = pixel_ddpm.train(
        images, args.seconds or float("inf"), "cpu", unet_overrides=unet_shape(args), compile=False,
        processor=processor, max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_steps=100)
    start = time.perf_counter()
    samples = sampler(batch_size=args.num_samples, num_inference_steps=args.num_inference_steps,
                      scheduler=args.scheduler, generator=torch.Generator().manual_seed(0))
    sampling_seconds = time.perf_counter() - start
    scores = score_images(samples, classifier, reference)

    stem = data.key.split("-")[0] if data.source is not None else data.name.split("/")[-1]
    name = args.name or f"pixel-peer-{stem}-{datetime.date.today():%Y%m%d}"
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    save_grid(samples[:100], out / f"{name}_samples.png", nrow=10)
    result = {**provenance(name, hardware(torch.device("cpu")), args.commit), "pipeline": args.pipeline,
              "dataset": data.name, "training": stats, "sampler": args.scheduler,
              "num_inference_steps": args.num_inference_steps, "sampling_seconds": sampling_seconds,
              "num_threads": torch.get_num_threads(),
              "scores": {k: float(v) for k, v in scores.items() if k in KEYS or k.removesuffix("_floor") in KEYS}}
    save_result(result, markdown(result), out)
    print(markdown(result))
    return result


def markdown(r) -> str:
    t, s = r["training"], r["scores"]
    h = t["hyperparameters"]
    return "\n".join([
        f"Pixel-space DDPM on {r['dataset']}: UNet {list(h['unet']['block_out_channels'])}, "
        f"{t['parameters'] / 1e6:.2f}M parameters, batch {h['batch_size']}, lr {h['learning_rate']:g}; "
        f"{t['steps']:,} steps in {t['train_seconds']:.0f} s on {r['num_threads']} thread(s); "
        f"{r['sampler']} at {r['num_inference_steps']} steps; commit {(r['git_commit'] or 'unknown')[:7]}; "
        f"`{r['command']}`.", "",
        "| | FID | KID | precision | recall | density | coverage |", "|---|---|---|---|---|---|---|",
        *(f"| {label} | " + " | ".join(f"{s[k + suffix]:.3f}" for k in KEYS) + " |"
          for label, suffix in (("pixel DDPM", ""), ("real images (floor)", "_floor")))]) + "\n"


if __name__ == "__main__":
    main()
