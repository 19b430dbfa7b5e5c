"""Teacher against its consistency-distilled student, one run on one machine: quality, speed, distillation time.

    python -m benchmarks.few_step --teacher runs/demo/pipeline --student runs/demo/fast --num_samples 5000 \
        --seeds 0,1 --data_dir ../shared/data/mnist

Cells: the teacher at its best measured settings (--teacher_best, default SDE-DPM-Solver++ 20 steps), at the default
a training run saves (SDE-DPM-Solver++ 10 steps), with DPM-Solver++ at 10 and 20 steps, and the student
(LCMScheduler) at --student_steps. Each cell scores
--num_samples digits per seed with the benchmarks' judge and floor (FID, precision, recall), and its speed is
digits/s of one sampler call at the best of --batch_sizes, decoding and the copy to the CPU included (after a
warm-up call at that size). Distillation and teacher training seconds come from the two folders' timings.json.
Writes few-step-<gpu|cpu>-<date>.json and .md and a side-by-side grid (_grid.png) of each cell's first 100 digits.
"""

import argparse
import datetime
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (add_commit_option, hardware, int_list, machine_name, pipeline_folder, provenance,
                               save_result, seed_list)
from benchmarks.sampling import LatentSampler, batch_sweep, check_schedulers, quality
from pipeline.evaluate import scheduler_spec
from pipeline.schedulers import DEFAULT_SAMPLER, DEFAULT_STEPS

KEYS = ("fid", "precision", "recall", "fid_floor", "precision_floor", "recall_floor", "floor_num_samples")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="the teacher's pipeline folder (train_latent_ddpm.py)")
    p.add_argument("--student", required=True, help="the student's pipeline folder (distill_latent_ddpm.py)")
    p.add_argument("--teacher_best", type=scheduler_spec, default="sde-dpm",
                   help="the teacher's best measured sampler (default: SDE-DPM-Solver++)")
    p.add_argument("--teacher_best_steps", type=int, default=20)
    p.add_argument("--student_steps", type=int_list, default=[1, 2, 4])
    p.add_argument("--num_samples", type=int, default=5000, help="digits scored per cell and seed (default 5000)")
    p.add_argument("--seeds", type=seed_list, default=[0], help="sample seeds, comma-separated (scores are averaged)")
    p.add_argument("--batch_sizes", type=int_list, default=[250, 1000, 2500], help="speed: the best of these")
    p.add_argument("--data_dir", help="folder with the four MNIST IDX files")
    p.add_argument("--output", default="benchmarks/results")
    p.add_argument("--name", help="file stem (default few-step-<gpu|cpu>-<date>)")
    add_commit_option(p)
    return p.parse_args(argv)


def cells(args):
    """(label, model, scheduler spec, steps) for every cell, teacher first."""
    rows = [("teacher best", "teacher", args.teacher_best, args.teacher_best_steps),
            ("teacher default", "teacher", DEFAULT_SAMPLER, DEFAULT_STEPS),
            ("teacher DPM-Solver++", "teacher", "dpm", 10), ("teacher DPM-Solver++", "teacher", "dpm", 20)]
    return rows + [("student", "student", "lcm", n) for n in args.student_steps]


def train_seconds(folder):
    try:
        return json.loads((Path(folder) / "timings.json").read_text())["phases"]["training"]
    except (OSError, ValueError, KeyError):
        return None


def measure_cell(sampler, spec, steps, args, classifier, reference):
    per_seed = []
    for seed in args.seeds:
        scores, grids = quality(sampler, [(spec, steps, args.num_samples)], max(args.batch_sizes), classifier,
                                reference, seed)
        per_seed.append({k: scores[f"{spec}_{steps}"][k] for k in KEYS})
    speed = batch_sweep(sampler, args.batch_sizes, steps, max(args.batch_sizes), spec)
    best = max(speed, key=lambda r: r["digits_per_s"])
    mean = {k: float(np.mean([s[k] for s in per_seed])) for k in KEYS}
    mean["floor_num_samples"] = per_seed[0]["floor_num_samples"]
    return {**mean, "per_seed": per_seed, "digits_per_s": best["digits_per_s"], "best_batch_size": best["batch_size"],
            "speed_by_batch": speed}, grids[f"{spec}_{steps}"]


def markdown(r) -> str:
    seeds = ", ".join(map(str, r["seeds"]))
    lines = [f"Teacher `{r['teacher']}` against its consistency-distilled student `{r['student']}` on "
             f"{r['hardware']['gpu'] or 'CPU'} ({r['hardware']['cpu_count']} cores), {r['num_samples']:,} digits per "
             f"cell and seed (seeds {seeds}; scores are their mean), commit {(r['git_commit'] or 'unknown')[:7]}; "
             f"`{r['command']}`. Speed: digits/s of one call at the best batch size, decoding included.", "",
             "| model | sampler | steps | FID | precision | recall | FID per seed | digits/s (batch) |",
             "|---|---|---|---|---|---|---|---|"]
    for c in r["cells"]:
        per = " / ".join(f"{s['fid']:.2f}" for s in c["per_seed"])
        at = f" at {c['timesteps']}" if c.get("timesteps") else ""
        lines.append(f"| {c['label']} | `{c['scheduler']}`{at} | {c['steps']} | {c['fid']:.2f} | {c['precision']:.3f} | "
                     f"{c['recall']:.3f} | {per} | {c['digits_per_s']:,.0f} ({c['best_batch_size']:,}) |")
    floor = r["cells"][0]
    lines += ["", f"Real-data floor at {int(floor['floor_num_samples']):,} digits: FID {floor['fid_floor']:.2f}, precision "
              f"{floor['precision_floor']:.3f}, recall {floor['recall_floor']:.3f}. Training: teacher "
              f"{_s(r['teacher_training_seconds'])}, distillation {_s(r['distillation_seconds'])} (training loops, "
              "from each folder's timings.json)."]
    return "\n".join(lines) + "\n"


def _s(x):
    return "n/a" if x is None else f"{x:.0f} s"


def side_by_side(result, grids, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.visualisation import tile

    fig, axes = plt.subplots(1, len(grids), figsize=(3 * len(grids), 3.4))
    for ax, c, digits in zip(np.atleast_1d(axes), result["cells"], grids):
        ax.imshow(tile(digits, nrow=10), cmap="gray")
        ax.set_title(f"{c['label']}\n{c['scheduler'].split(':')[0]} {c['steps']} steps, FID {c['fid']:.1f}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    folders = {"teacher": pipeline_folder(args.teacher), "student": pipeline_folder(args.student)}
    from pipeline.classifier import get_classifier
    from pipeline.metrics import get_reference

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    samplers = {k: LatentSampler(f, device) for k, f in folders.items()}
    for _, model, spec, steps in cells(args):
        check_schedulers(samplers[model], [spec], [steps])
    classifier = get_classifier(data_dir=args.data_dir, device="cpu")
    reference = get_reference(data_dir=args.data_dir, classifier=classifier)
    results, grids = [], []
    for label, model, spec, steps in cells(args):
        cell, digits = measure_cell(samplers[model], spec, steps, args, classifier, reference)
        timesteps = samplers[model].pipe._student_timesteps(steps, None) if spec == "lcm" else None  # a folder's own
        results.append({"label": label, "model": model, "scheduler": spec, "steps": steps, "timesteps": timesteps,
                        **cell})
        grids.append(digits)
        print(f"{label} {spec} {steps}: FID {cell['fid']:.2f}, {cell['digits_per_s']:.0f} digits/s", flush=True)

    hw = hardware(device)
    name = args.name or f"few-step-{machine_name(hw)}-{datetime.datetime.now().strftime('%Y%m%d-%H%M')}"
    result = {**provenance(name, hw, args.commit), "teacher": str(folders["teacher"]),
              "student": str(folders["student"]), "num_samples": args.num_samples, "seeds": args.seeds,
              "batch_sizes": args.batch_sizes, "teacher_training_seconds": train_seconds(folders["teacher"]),
              "distillation_seconds": train_seconds(folders["student"]), "cells": results}
    Path(args.output).mkdir(parents=True, exist_ok=True)
    side_by_side(result, grids, Path(args.output) / f"{name}_grid.png")
    save_result(result, markdown(result), args.output)
    return result


if __name__ == "__main__":
    main()
