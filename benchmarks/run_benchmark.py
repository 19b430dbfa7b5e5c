"""One-command benchmark: this project's latent DDPM against the pixel-space DDPM
baseline a diffusers user would pick, trained for the same time on the same GPU.

    python -m benchmarks.run_benchmark --output benchmarks/results/            # GPU: the real thing
    python -m benchmarks.run_benchmark --output /tmp/bench --quick             # CPU smoke test, ~2 min

1. this project: train_autoencoder.py + train_latent_ddpm.py with configs/*.yaml (subprocesses);
2. the baseline (benchmarks/pixel_ddpm.py), trained in this process for the SAME number of
   seconds as the project's two training loops took together (or --seconds);
3. for both: FID / precision / recall at 10, 20, 50 DPM-Solver++ steps and with full DDPM
   (all training timesteps, fewer samples), sampling speed at the largest batch that fits,
   peak GPU memory; for the latent pipeline also time vs batch size.
Results: <output>/<name>.json (all numbers, hardware, commit, command), <name>.md (tables for
docs/results.md) and PNG sample grids. See benchmarks/README.md.
"""

import argparse
import datetime
import shlex
import sys
from pathlib import Path

import torch

from benchmarks import pixel_ddpm, project, report, sampling
from benchmarks.common import add_commit_option, hardware, machine_name, provenance

FULL = dict(num_samples=10_000, ddpm_samples=2_000, max_batch=10_000, dpm_steps=(10, 20, 50), throughput_steps=20,
            sweep_batches=(1, 10, 100, 1_000, 10_000), baseline_train_images=None, baseline_unet={}, baseline_hparams={})
# --quick: tiny everything, so that the whole pipeline of the benchmark runs in a minute or two on a CPU.
QUICK = dict(FULL, num_samples=64, ddpm_samples=16, max_batch=64, sweep_batches=(1, 8, 64),
             baseline_train_images=1024, baseline_unet=dict(block_out_channels=(8, 16, 16), layers_per_block=1,
                                                            norm_num_groups=4),
             baseline_hparams=dict(batch_size=32, warmup_steps=5, num_train_timesteps=100))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="Example (GPU): python -m benchmarks.run_benchmark --output benchmarks/results/ "
                                       "--data_dir ../shared/data/mnist")
    p.add_argument("--output", default="benchmarks/results",
                   help="folder for <name>.json/.md/.png (default %(default)s)")
    p.add_argument("--name", help="result file stem (default: <gpu>-<date>, 'quick-' first with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny models and few steps: a CPU smoke test, not a benchmark")
    p.add_argument("--seconds", type=float, help="baseline training budget in seconds (default: the project's "
                   "training time measured in this run; required with --only baseline)")
    p.add_argument("--data_dir", help="folder with the four MNIST IDX files (else the Hub / local caches)")
    p.add_argument("--no_compile", action="store_true", help="train both without torch.compile (--quick implies it)")
    p.add_argument("--work_dir", default="runs/benchmark",
                   help="training runs go here; wiped per run (default %(default)s)")
    p.add_argument("--only", choices=("project", "baseline"), help="run one side only (e.g. to fit a time-limited "
                   "machine); join the two results afterwards with --merge")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="join results of --only runs into one report; trains nothing")
    p.add_argument("--ae_args", default="",
                   help="extra train_autoencoder.py options, as one string: --ae_args='--max_train_steps 3000'")
    p.add_argument("--ddpm_args", default="",
                   help="extra train_latent_ddpm.py options, as one string: --ddpm_args='--max_train_steps 5000'")
    p.add_argument("--num_samples", type=int, help="digits scored per DPM-Solver++ setting (default 10000; quick 64)")
    p.add_argument("--ddpm_samples", type=int, help="digits scored with full DDPM (default 2000; quick 16)")
    p.add_argument("--max_batch", type=int, help="first batch size tried for sampling (default 10000; quick 64)")
    p.add_argument("--seed", type=int, default=0)
    add_commit_option(p)
    return p.parse_args(argv)


def default_name(args, hw):
    """<gpu>-<date>[-project|-baseline], or --name; "quick-" in front of anything made with --quick."""
    name = args.name or "-".join([machine_name(hw), datetime.datetime.now().strftime("%Y%m%d-%H%M")])
    if args.only and not name.endswith(args.only):
        name = f"{name}-{args.only}"  # the two halves of a split run must not overwrite each other
    return name if not args.quick or name.startswith("quick") else f"quick-{name}"


def run_project(args, profile, device, judge):
    folder, training = project.train(args.work_dir, args.data_dir, quick=args.quick, compile=not args.no_compile,
                                     ae_args=shlex.split(args.ae_args), ddpm_args=shlex.split(args.ddpm_args))
    sampler = sampling.LatentSampler(folder, device)
    results, grid = sampling.measure(sampler, profile, *judge, seed=args.seed)
    largest = results["throughput"]["batch_size"]
    results["batch_sweep"] = sampling.batch_sweep(sampler, profile["sweep_batches"], profile["throughput_steps"], largest)
    result = {"training": training, "parameters": sampler.parameters(), "sampling": results, "folder": str(folder)}
    del sampler
    return result, grid


def run_baseline(args, profile, device, judge, seconds):
    from pipeline.data import load_idx_dataset

    images, _ = load_idx_dataset("train", data_dir=args.data_dir)
    images = images[:profile["baseline_train_images"]]
    print(f"\n== pixel DDPM baseline: training for {seconds:.0f} s on {len(images)} digits", flush=True)
    sampler, training = pixel_ddpm.train(images, seconds, device, unet_overrides=profile["baseline_unet"],
                                         compile=not args.no_compile, seed=args.seed, **profile["baseline_hparams"])
    folder = Path(args.work_dir) / "pixel_ddpm"
    sampler.save_pretrained(folder)
    results, grid = sampling.measure(sampler, profile, *judge, seed=args.seed)
    return {"training": training, "parameters": {"unet": training["parameters"]}, "sampling": results,
            "folder": str(folder), "ddpm_note": "full DDPM uses the training scheduler as saved (clip_sample=True, "
            "as diffusers' DDPMPipeline); DPM-Solver++ as pipeline.schedulers.make_scheduler builds it"}, grid


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.output)
    if args.merge:
        result, samples = report.merge(args.merge)
        stem = Path(args.merge[0]).stem  # "<gpu>-<date>-project" -> "<gpu>-<date>"
        name = args.name or stem.removesuffix("-project").removesuffix("-baseline")
        result["name"] = f"quick-{name}" if result["quick"] and not name.startswith("quick") else name
        for path in report.write(result, samples, out, result["name"]):
            print(f"wrote {path}")
        return result
    args.no_compile = args.no_compile or args.quick  # compiling takes longer than a quick run trains
    if args.only == "baseline" and args.seconds is None:
        sys.exit("--only baseline needs --seconds (the project's train_seconds from its result json)")

    profile = dict(QUICK if args.quick else FULL)
    for key in ("num_samples", "ddpm_samples", "max_batch"):
        profile[key] = getattr(args, key) or profile[key]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hw = hardware(device)
    name = default_name(args, hw)
    result = {**provenance(name, hw, args.commit), "quick": args.quick,
              "settings": {**{k: v for k, v in profile.items() if not k.startswith("baseline")},
                           "seed": args.seed, "compile": not args.no_compile},
              "note": "smoke test, not a benchmark: tiny models, few steps" if args.quick else None}
    print(f"benchmark {name} on {hw['gpu'] or 'CPU'}; results go to {out}", flush=True)

    # The judge first: a missing dataset should fail before any training time is spent. It is
    # trained on the CPU, which repeats exactly on the same software, so the two halves of a
    # split run (--only) are scored by the same judge; the fingerprint lets --merge check that.
    from pipeline.classifier import classifier_accuracy, get_classifier
    from pipeline.metrics import get_reference, judge_fingerprint

    classifier = get_classifier(data_dir=args.data_dir, device="cpu")
    judge = (classifier, get_reference(data_dir=args.data_dir, classifier=classifier))
    result["judge"] = {"fingerprint": judge_fingerprint(classifier), "test_accuracy": classifier_accuracy()}
    result["real_data_floor"] = judge[1].floor
    samples = {}
    if args.only != "baseline":
        result["project"], samples["project"] = run_project(args, profile, device, judge)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.only != "project":
        seconds = args.seconds or result["project"]["training"]["train_seconds"]
        result["baseline"], samples["baseline"] = run_baseline(args, profile, device, judge, seconds)
    for path in report.write(result, samples, out, name):
        print(f"wrote {path}")
    print("\n" + report.markdown(result))
    return result


if __name__ == "__main__":
    main()
