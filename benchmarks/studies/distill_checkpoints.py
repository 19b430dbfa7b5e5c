"""Score every checkpoint of a consistency-distillation run, at several timestep schedules: when to stop, how to sample.

    python -m benchmarks.studies.distill_checkpoints --run runs/demo/fast --schedules "2;999,699;4;999,799,599,399" \
        --num_samples 2000 --seeds 0 --data_dir ../shared/data/mnist

A distillation's few-step quality peaks and then degrades at a point that depends on the target network's decay,
so scoring only a run's end can miss its best student. Each checkpoint-N of --run (its online student weights,
what the run's folder would hold had it stopped at N) samples --num_samples digits per seed and schedule, drawn
and scored exactly as the evaluation does (`pipeline.sampling.sample_images`, the benchmarks' judge and floor). A
schedule is a step count (LCMScheduler's own evenly spaced timesteps) or a comma-separated list of timesteps from
the run's grid (what `pipe(timesteps=...)` and a folder's `default_timesteps` run). Writes distill-checkpoints-
<gpu|cpu>-<date>.json and .md: FID per checkpoint and schedule, mean over the seeds, and each seed's.
"""

import argparse
import datetime
import re
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import add_commit_option, hardware, machine_name, pipeline_folder, provenance, save_result, seed_list

KEYS = ("fid", "precision", "recall", "fid_floor")


def schedule_list(text):
    """argparse type: "2;999,699" -> [(2, None), (2, [999, 699])]: (steps, timesteps), where a bare count means
    LCM's own timesteps (None) and a list means those."""
    out = []
    for part in (p.strip() for p in text.split(";") if p.strip()):
        try:
            ts = [int(t) for t in part.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is neither a step count nor a list of timesteps")
        out.append((ts[0], None) if len(ts) == 1 else (len(ts), ts))
    if not out:
        raise argparse.ArgumentTypeError("no schedules given")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a distill_latent_ddpm.py output folder with its checkpoint-N folders")
    p.add_argument("--schedules", type=schedule_list, default=schedule_list("1;2;4"),
                   help="';'-separated: a step count, or timesteps '999,699' (default 1;2;4)")
    p.add_argument("--checkpoints", help="comma-separated steps to score (default: every checkpoint-N in --run)")
    p.add_argument("--num_samples", type=int, default=2000, help="digits per checkpoint, schedule and seed")
    p.add_argument("--seeds", type=seed_list, default=[0], help="sample seeds, comma-separated (scores are averaged)")
    p.add_argument("--batch_size", type=int, default=1000)
    p.add_argument("--data_dir", help="folder with the four MNIST IDX files")
    p.add_argument("--output", default="benchmarks/results")
    p.add_argument("--name", help="file stem (default distill-checkpoints-<gpu|cpu>-<date>)")
    add_commit_option(p)
    return p.parse_args(argv)


def checkpoint_steps(run: Path, wanted=None) -> list[int]:
    found = sorted(int(m.group(1)) for d in run.iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", d.name)))
    steps = [int(s) for s in wanted.split(",")] if wanted else found
    missing = [s for s in steps if s not in found]
    if not steps or missing:
        raise SystemExit(f"error: {run} has no checkpoint-{missing[0] if missing else 'N'} folder (found: "
                         f"{', '.join(map(str, found)) or 'none'}); distill with a checkpointing_steps that reaches it")
    return steps


def label(schedule) -> str:
    n, timesteps = schedule
    return f"LCM {n}" if timesteps is None else "[" + ", ".join(map(str, timesteps)) + "]"


def main(argv=None):
    args = parse_args(argv)
    run = pipeline_folder(args.run)
    steps = checkpoint_steps(run, args.checkpoints)
    from safetensors.torch import load_file

    from pipeline.classifier import get_classifier
    from pipeline.sampling import sample_images
    from pipeline.metrics import get_reference, score_images
    from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline

    pipe = LatentDDPMPipeline.from_pretrained(run)
    if type(pipe.scheduler).__name__ != "LCMScheduler":
        raise SystemExit(f"error: {run} is not a consistency-distilled student (its scheduler is "
                         f"{type(pipe.scheduler).__name__}); pass a distill_latent_ddpm.py output folder")
    pipe.set_progress_bar_config(disable=True)
    for n, timesteps in args.schedules:
        try:  # the pipeline's own checks, before any sampling
            pipe.check_inputs(1, n, 1.0, None, "np", None, [], timesteps)
            pipe._student_timesteps(n, timesteps)
        except ValueError as e:
            raise SystemExit(f"error: --schedules {label((n, timesteps))}: {e}")
    classifier = get_classifier(data_dir=args.data_dir, device="cpu")
    reference = get_reference(data_dir=args.data_dir, classifier=classifier)
    rows = []
    for step in steps:
        pipe.unet.load_state_dict(load_file(run / f"checkpoint-{step}" / "model.safetensors"))
        for s in args.schedules:
            n, timesteps = s
            pipe.register_to_config(default_timesteps=timesteps and [timesteps])  # what pipe(n) runs
            per_seed = []
            for seed in args.seeds:
                digits = sample_images(pipe, args.num_samples, args.batch_size, n, seed)
                scores = score_images(digits, classifier, reference)
                per_seed.append({k: float(scores[k]) for k in KEYS})
            mean = {k: float(np.mean([p[k] for p in per_seed])) for k in KEYS}
            rows.append({"checkpoint": step, "schedule": label(s), "num_inference_steps": n,
                         "timesteps": timesteps, **mean, "per_seed": per_seed})
            print(f"checkpoint {step}, {label(s)}: FID {mean['fid']:.2f}", flush=True)

    hw = hardware(torch.device("cpu"))
    name = args.name or f"distill-checkpoints-{machine_name(hw)}-{datetime.datetime.now().strftime('%Y%m%d-%H%M')}"
    result = {**provenance(name, hw, args.commit), "run": str(run), "num_samples": args.num_samples,
              "seeds": args.seeds, "rows": rows}
    save_result(result, markdown(result), args.output)
    return result


def markdown(r) -> str:
    labels = list(dict.fromkeys(row["schedule"] for row in r["rows"]))
    seeds = ", ".join(map(str, r["seeds"]))
    lines = [f"Checkpoints of `{r['run']}` (online student), FID on {r['num_samples']:,} digits per cell and seed "
             f"(seeds {seeds}; the mean, each seed's in brackets when more than one), {r['hardware']['cpu_count']} "
             f"cores, commit {(r['git_commit'] or 'unknown')[:7]}; `{r['command']}`.", "",
             "| checkpoint | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for step in dict.fromkeys(row["checkpoint"] for row in r["rows"]):
        cells = []
        for lab in labels:
            row = next(x for x in r["rows"] if x["checkpoint"] == step and x["schedule"] == lab)
            each = " / ".join(f"{p['fid']:.2f}" for p in row["per_seed"])
            cells.append(f"{row['fid']:.2f}" + (f" ({each})" if len(row["per_seed"]) > 1 else ""))
        lines.append(f"| {step:,} | " + " | ".join(cells) + " |")
    floor = r["rows"][0]["fid_floor"]
    lines += ["", f"Real-data floor at {r['num_samples']:,} digits: FID {floor:.2f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
