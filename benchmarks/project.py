"""This project's side of the benchmark: its two training scripts, run as a user runs them.

Each script runs as a subprocess (through benchmarks/peak_memory.py, which adds the peak GPU
memory) with the repo's full configs. Its training time and throughput are read back from
the run's own TensorBoard log: every logged `images_per_s` / `latents_per_s` is the mean rate
since the loop started, so the last one gives the training-loop seconds (torch.compile
warm-up and checkpoints included; data loading, latent encoding and the figures drawn
after training excluded), and the logged points' wall times give a steady-state rate.
The run's timings.json says where the rest of the wall time went (data, saving, figures),
and when the trained model was on disk.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
AE_CONFIG, DDPM_CONFIG = "configs/autoencoder.yaml", "configs/latent_ddpm.yaml"
# Figures only, not training: t-SNE of 2,000 test latents instead of 10,000 saves a minute.
AE_FIGURES = ["--tsne_num_points", "2000"]
# --quick: the same configs shrunk to seconds on a CPU (sizes as in tests/conftest.py and
# tests/test_train_latent_ddpm.py), fp32, eager, no checkpoints.
QUICK_COMMON = ["--max_train_steps", "20", "--train_batch_size", "32", "--logging_steps", "5",
                "--lr_warmup_steps", "5", "--checkpointing_steps", "1000", "--mixed_precision", "no"]
QUICK_AE = [*QUICK_COMMON, "--max_train_samples", "2048", "--max_eval_samples", "300", "--validation_steps", "10",
            "--tsne_num_points", "100", "--autoencoder.block_out_channels", "[8, 16, 16]",
            "--autoencoder.layers_per_block", "1", "--autoencoder.norm_num_groups", "4", "--autoencoder.reduction", "4"]
QUICK_DDPM = [*QUICK_COMMON, "--max_train_samples", "1024", "--save_images_steps", "1000", "--num_inference_steps", "2",
              "--ddpm_num_steps", "100", "--unet.block_out_channels", "[32, 64]", "--unet.layers_per_block", "1",
              "--unet.norm_num_groups", "8", "--unet.attention_head_dim", "32"]


def read_scalars(log_dir, tag):
    """[(wall_time, step, value)] of one scalar from every TensorBoard event file under `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for folder in sorted({p.parent for p in Path(log_dir).rglob("events.out.tfevents*")}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            points += [(e.wall_time, e.step, e.value) for e in acc.Scalars(tag)]
    return sorted(points, key=lambda p: p[1])


def run_stage(name, script, args, out, rate_tag):
    """Run one training script from scratch into `out`; return its timings and peak memory."""
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: no old checkpoints, no old logs to read back
    out.parent.mkdir(parents=True, exist_ok=True)
    report = out.parent / f"{name}_process.json"
    cmd = [sys.executable, "-m", "benchmarks.peak_memory", str(report), script, *args]
    print(f"\n== {name}: python {script} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed with exit status {proc.returncode}; its output is above")

    cfg = yaml.safe_load((out / "training_config.yaml").read_text())
    items_per_step = cfg["train_batch_size"] * cfg["gradient_accumulation_steps"]  # one process
    points = read_scalars(out / cfg["logging_dir"], rate_tag)
    if not points or points[-1][1] != cfg["max_train_steps"]:
        raise RuntimeError(f"{out}: no {rate_tag} logged at the last step in TensorBoard; cannot time the run")
    last_wall, last_step, mean_rate = points[-1]
    steady = None
    if len(points) >= 3:  # skip the first logged interval, which holds torch.compile's warm-up
        (w0, s0, _), (w1, s1, _) = points[1], points[-1]
        steady = (s1 - s0) * items_per_step / (w1 - w0) if w1 > w0 else None
    process = json.loads(report.read_text())
    timings = json.loads((out / "timings.json").read_text())
    startup = wall - timings["total_seconds"]  # Python start-up and imports, before the script's main() began
    return {
        "command": f"python {script} {' '.join(args)}",
        "train_seconds": cfg["max_train_steps"] * items_per_step / mean_rate,
        "wall_seconds": wall,  # the whole subprocess: start-up, data, training, figures
        "startup_seconds": startup, "phases": timings["phases"],
        "saved_after_seconds": startup + timings["model_saved_after_seconds"],
        "steps": cfg["max_train_steps"], "batch_size": cfg["train_batch_size"],
        "items_per_s": mean_rate, "steady_items_per_s": steady, "items": rate_tag.removesuffix("_per_s"),
        "compile": cfg["compile"], "mixed_precision": cfg["mixed_precision"],
        "peak_gpu_memory_bytes": process["peak_gpu_memory_bytes"],
    }


def train(work_dir, data_dir=None, quick=False, compile=True, ae_args=(), ddpm_args=()):
    """Train the autoencoder, then the latent DDPM; return (pipeline folder, training results)."""
    work_dir = Path(work_dir).resolve()
    ae_out, ddpm_out = work_dir / "autoencoder", work_dir / "latent_ddpm"
    common = ["--data_dir", str(Path(data_dir).resolve())] if data_dir else []
    common += [] if compile else ["--compile", "false"]
    ae = run_stage("autoencoder", "train_autoencoder.py",
                   ["--config", AE_CONFIG, "--output_dir", str(ae_out), *common,
                    *(QUICK_AE if quick else AE_FIGURES), *ae_args], ae_out, "images_per_s")
    ae["test_psnr"] = json.loads((ae_out / "metrics.json").read_text())["psnr"]
    ddpm = run_stage("latent_ddpm", "train_latent_ddpm.py",
                     ["--config", DDPM_CONFIG, "--autoencoder", str(ae_out), "--output_dir", str(ddpm_out),
                      "--eval_num_samples", "0", *common, *(QUICK_DDPM if quick else []), *ddpm_args],
                     ddpm_out, "latents_per_s")
    training = {"autoencoder": ae, "latent_ddpm": ddpm,
                "train_seconds": ae["train_seconds"] + ddpm["train_seconds"],
                "wall_seconds": ae["wall_seconds"] + ddpm["wall_seconds"],
                # Raw data to a saved pipeline folder: the whole autoencoder script (the second
                # script starts after its figures), then the diffusion script until its save.
                "to_saved_pipeline_seconds": ae["wall_seconds"] + ddpm["saved_after_seconds"]}
    return ddpm_out, training
