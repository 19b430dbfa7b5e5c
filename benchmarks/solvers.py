"""Which sampler, and how few steps, for a trained pipeline on any data: FID and images/s per (scheduler, steps).

    python -m benchmarks.solvers --pipeline runs/latent_ddpm --steps 6,8,10,15,20 \
        --schedulers dpm dpm:solver_order=3 unipc unipc:solver_order=3
    python -m benchmarks.solvers --pipeline runs/demo/pipeline --steps 2,4,6 --seeds 0,1 --num_samples 5000 \
        --schedulers dpm dpm:algorithm_type=sde-dpmsolver++ ddim:eta=1 ddpm     # the stochastic solvers too

The stochastic samplers: `dpm:algorithm_type=sde-dpmsolver++` (SDE DPM-Solver++), `ddpm`, and DDIM with
`ddim:eta=E` (eta is an argument of each sampling call; the benchmark passes it there). With several --seeds
each cell's FID, precision and recall are the mean over the seeds (each seed's FID is kept too).

Sampling speed is set by the number of UNet calls, so the cheapest sampler at a given quality is the one
that needs the fewest steps. Every scheduler is a pipeline.schedulers spec (a name, options after a
colon), built from the pipeline's own training scheduler. Each cell scores --num_samples images from the
same seed with the run's own judge and floor, as the evaluation's. Writes solvers-<gpu|cpu>-<date>.json and .md.
"""

import argparse
import datetime

import torch

from benchmarks.report import same_size_floor
from benchmarks.common import (add_commit_option, hardware, int_list, machine_name, pipeline_folder, provenance,
                               save_result, seed_list)
from benchmarks.sampling import LatentSampler, check_schedulers, quality, split_eta
from pipeline.evaluate import scheduler_spec


def solver_spec(text):
    """A pipeline.schedulers spec, which may also carry DDIM's eta: ddim:eta=1."""
    spec, _ = split_eta(text)
    scheduler_spec(spec)
    return text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", required=True, help="a saved LatentDDPMPipeline folder")
    p.add_argument("--schedulers", nargs="+", type=solver_spec, default=["dpm", "unipc"],
                   help="scheduler specs, e.g. dpm unipc:solver_order=3 (default: dpm unipc)")
    p.add_argument("--steps", type=int_list, default=[10, 20], help="numbers of steps (default 10,20)")
    p.add_argument("--num_samples", type=int, default=10_000, help="images scored per cell (default 10000)")
    p.add_argument("--batch_size", type=int, default=10_000)
    p.add_argument("--data_dir", help="folder with the four MNIST IDX files (else the Hub / local caches)")
    p.add_argument("--output", default="benchmarks/results", help="folder for the .json and .md")
    p.add_argument("--name", help="file stem (default solvers-<gpu|cpu>-<date>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=seed_list, help="several sample seeds, comma-separated (overrides --seed)")
    add_commit_option(p)
    return p.parse_args(argv)


def markdown(r) -> str:
    floor = r["real_data_floor"]["fid"]
    note = same_size_floor(next(iter(r["scores"].values())))  # the floor at this table's sample size
    same = f", {note}" if note else ""
    lines = [f"FID of `{r['pipeline']}` by sampler and steps ({r['num_samples']:,} images each; real-data floor "
             f"{floor:.3f}{same}) on {r['hardware']['gpu'] or 'CPU'}, commit {(r['git_commit'] or 'unknown')[:7]}; "
             f"`{r['command']}`.", "",
             f"Each cell: FID (mean over seeds {', '.join(map(str, r.get('seeds', [r['seed']])))}) and images/s "
             "at the scoring batch, decoding included.", "",
             "| scheduler | " + " | ".join(f"{s} steps" for s in r["steps"]) + " |",
             "|---|" + "---|" * len(r["steps"])]
    for name in r["schedulers"]:
        cells = [r["scores"][f"{name}_{s}"] for s in r["steps"]]
        lines.append(f"| `{name}` | " + " | ".join(f"{c['fid']:.3f} ({c['digits_per_s']:,.0f}/s)" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def over_seeds(per_seed: list) -> dict:
    """The first seed's record, with FID, precision, recall and speed averaged over all seeds."""
    mean = dict(per_seed[0])
    for k in ("fid", "precision", "recall", "digits_per_s"):
        mean[k] = sum(s[k] for s in per_seed) / len(per_seed)
    mean["fid_per_seed"] = [s["fid"] for s in per_seed]
    return mean


def main(argv=None):
    args = parse_args(argv)
    folder = pipeline_folder(args.pipeline)
    from pipeline.classifier import get_classifier
    from pipeline.judge_data import run_judge_data
    from pipeline.metrics import get_reference

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sampler = LatentSampler(folder, device)
    check_schedulers(sampler, args.schedulers, args.steps)  # before the judge: a bad spec fails at once
    data = run_judge_data(folder, data_dir=args.data_dir)  # the run's own data and judge, as the evaluation's
    classifier = get_classifier(data, device="cpu")
    reference = get_reference(data, classifier=classifier)
    runs = [(name, steps, args.num_samples) for name in args.schedulers for steps in args.steps]
    seeds = args.seeds or [args.seed]
    per_seed = [quality(sampler, runs, args.batch_size, classifier, reference, seed)[0] for seed in seeds]
    scores = {key: over_seeds([p[key] for p in per_seed]) for key in per_seed[0]}

    hw = hardware(device)
    name = args.name or f"solvers-{machine_name(hw)}-{datetime.datetime.now().strftime('%Y%m%d-%H%M')}"
    result = {**provenance(name, hw, args.commit), "pipeline": str(folder), "schedulers": args.schedulers,
              "steps": args.steps, "num_samples": args.num_samples, "seed": seeds[0], "seeds": seeds,
              "real_data_floor": reference.floor, "scores": scores}
    save_result(result, markdown(result), args.output)
    return result


if __name__ == "__main__":
    main()
