"""Noise schedules and training objectives on one training budget.

    python -m benchmarks.schedules --output benchmarks/results                 # GPU: full configs
    python -m benchmarks.schedules --output benchmarks/results --cpu            # 2-core CPU: quick configs
    python -m benchmarks.schedules --output /tmp/s --quick                      # smoke test, ~1 min

Trains train_latent_ddpm.py once per variant (subprocesses, as a user runs it) on the SAME
autoencoder, config, seed, data order, noise draws and number of steps; only the beta schedule
(linear = DDPM's 1e-4..0.02, cosine = squaredcos_cap_v2), the prediction target (epsilon or
v) and min-SNR loss weighting (gamma 5, Hang et al. 2023) change. Each is scored with the same
judge and sampling seed at 10/20/50 DPM-Solver++ steps (and full DDPM with --ddpm_samples).
Results: <output>/<name>.json (every number, hardware, commit, command), <name>.md (the table in
docs/tuning.md) and <name>.png (samples of each variant, titled with their FID).
"""

import argparse
import datetime
import json
import shlex
from pathlib import Path

import numpy as np
import torch

from benchmarks import project
from benchmarks.report import same_size_floor
from benchmarks.common import add_commit_option, hardware, machine_name, provenance

# name -> (beta schedule, prediction type, min-SNR gamma or None). Every combination of the three.
VARIANTS = {f"{s}-{p}{'-minsnr5' if g else ''}": (s, p, g)
            for s in ("linear", "cosine") for p in ("epsilon", "v") for g in (None, 5.0)}
SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction"}
PROFILES = {  # which configs, how many digits are scored
    "gpu": dict(ae_config="configs/autoencoder.yaml", config="configs/latent_ddpm.yaml", num_samples=10_000,
                ddpm_samples=2_000, steps=(10, 20, 50), extra=[]),
    "cpu": dict(ae_config="configs/autoencoder_quick.yaml", config="configs/latent_ddpm_quick.yaml",
                num_samples=2_000, ddpm_samples=0, steps=(10, 20, 50), extra=[]),
    "quick": dict(ae_config="configs/autoencoder_quick.yaml", config="configs/latent_ddpm_quick.yaml",
                  num_samples=32, ddpm_samples=0, steps=(2,), extra=project.QUICK_DDPM),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="benchmarks/results", help="folder for <name>.json/.md/.png")
    p.add_argument("--name", help="result file stem (default schedules-<gpu|cpu|quick>-<date>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--cpu", action="store_true", help="the CPU demo configs (quick yaml files), 2,000 digits scored")
    mode.add_argument("--quick", action="store_true", help="tiny models, 2 sampling steps: a smoke test, not a benchmark")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
                   help="which to train (default: all 8)")
    p.add_argument("--autoencoder", help="a trained autoencoder folder to share (default: train one first)")
    p.add_argument("--data_dir", help="folder with the four MNIST IDX files (else the Hub / local caches)")
    p.add_argument("--work_dir", default="runs/schedules", help="training runs go here (default %(default)s)")
    p.add_argument("--ddpm_args", default="", help="extra train_latent_ddpm.py options for every variant, one string")
    p.add_argument("--num_samples", type=int, help="digits scored per DPM-Solver++ setting")
    p.add_argument("--ddpm_samples", type=int, help="digits scored with full DDPM (0 = skip; slow on a CPU)")
    p.add_argument("--seed", type=int, default=0, help="training seed of every variant, and the sampling seed")
    add_commit_option(p)
    args = p.parse_args(argv)
    args.profile = dict(PROFILES["quick" if args.quick else "cpu" if args.cpu else "gpu"])
    for key in ("num_samples", "ddpm_samples"):
        if getattr(args, key) is not None:
            args.profile[key] = getattr(args, key)
    return args


def variant_args(name):
    schedule, prediction, gamma = VARIANTS[name]
    return ["--ddpm_beta_schedule", SCHEDULES[schedule], "--prediction_type", PREDICTIONS[prediction],
            "--snr_gamma", "null" if gamma is None else str(gamma)]


def train_autoencoder(args, work, data):
    if args.autoencoder:
        return Path(args.autoencoder).resolve(), None
    out = work / "autoencoder"
    extra = project.QUICK_AE if args.quick else project.AE_FIGURES
    stage = project.run_stage("autoencoder", "train_autoencoder.py",
                              ["--config", args.profile["ae_config"], "--output_dir", str(out), *data, *extra,
                               *(["--compile", "false"] if args.quick else [])], out, "images_per_s")
    return out, stage


def score_variant(folder, args, device):
    """FID / precision / recall of one trained variant at each sampler setting; and its 20-step digits."""
    from pipeline.evaluate import evaluate_pipeline, load_pipeline

    pipe = load_pipeline(folder, device)
    pipe.set_progress_bar_config(disable=True)
    runs = [("dpm", n, args.profile["num_samples"]) for n in args.profile["steps"]]
    if args.profile["ddpm_samples"]:
        runs.append(("ddpm", pipe.scheduler.config.num_train_timesteps, args.profile["ddpm_samples"]))
    scores, digits = {}, None
    for scheduler, steps, n in runs:
        m = evaluate_pipeline(pipe, folder / f"eval_{scheduler}_{steps}", num_samples=n, num_inference_steps=steps,
                              scheduler=scheduler, seed=args.seed, batch_size=min(n, 1000), data_dir=args.data_dir)
        scores[f"{scheduler}_{steps}"] = {k: m[k] for k in ("fid", "precision", "recall", "kl_to_uniform", "mean_confidence",
                                                             "num_samples", "images_per_second", "fid_floor",
                                                             "floor_num_samples")}
        if digits is None or steps == 20:
            with np.load(folder / f"eval_{scheduler}_{steps}" / "samples.npz") as z:
                digits = z["images"][:64]
    return scores, digits


def markdown(r) -> str:
    keys = list(next(iter(r["variants"].values()))["scores"])
    floor = r["real_data_floor"]
    pr_key = "dpm_20" if "dpm_20" in keys else keys[0]
    lines = [f"Schedules and objectives, {r['profile']} profile, {r['hardware']['gpu'] or 'CPU'}, commit "
             f"{(r['git_commit'] or 'unknown')[:7]}; `{r['command']}`.",
             f"Same autoencoder, config, seed and {r['steps']:,} training steps for every row; FID / precision / "
             f"recall in the judge's feature space on {r['num_samples']:,} samples (real-data floor: FID "
             f"{floor['fid']:.2f}, precision {floor['precision']:.2f}, recall {floor['recall']:.2f}"
             f"{_same_size(r)}).", "",
             "| schedule | target | min-SNR | train s | " + " | ".join(f"FID {k.replace('_', '-')}" for k in keys)
             + f" | precision / recall ({pr_key.replace('_', '-')}) |",
             "|---|---|---|---|" + "---|" * len(keys) + "---|"]
    for name, v in r["variants"].items():
        s, p, g = VARIANTS[name]
        pr = v["scores"][pr_key]
        lines.append(f"| {s} | {p} | {'gamma 5' if g else 'off'} | {v['training']['train_seconds']:.0f} | "
                     + " | ".join(f"{v['scores'][k]['fid']:.2f}" for k in keys)
                     + f" | {pr['precision']:.2f} / {pr['recall']:.2f} |")
    return "\n".join(lines) + "\n"


def _same_size(r) -> str:
    """What real digits score at the sample size of the table, when it is below the 10,000 of the floor."""
    note = same_size_floor(next(iter(next(iter(r["variants"].values()))["scores"].values())))
    return " on 10,000 digits" + (f"; {note}" if note else "")


def figure(result, digits, path):
    from pipeline.visualisation import plt, tile  # pyplot with the Agg backend, set there

    names = list(digits)
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        scores = result["variants"][name]["scores"]
        key = "dpm_20" if "dpm_20" in scores else next(iter(scores))
        ax.imshow(tile(digits[name][:36], nrow=6), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{name}\nFID {scores[key]['fid']:.2f} ({key.replace('_', '-')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    out, work = Path(args.output), Path(args.work_dir).resolve()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hw = hardware(device)
    profile = "quick" if args.quick else "cpu" if args.cpu else "gpu"
    machine = profile if profile != "gpu" else machine_name(hw)
    name = args.name or f"schedules-{machine}-{datetime.datetime.now().strftime('%Y%m%d-%H%M')}"  # schedules-h100-...
    # The judge first, so that missing data fails before any training.
    from pipeline.classifier import get_classifier
    from pipeline.metrics import get_reference
    floor = get_reference(data_dir=args.data_dir, classifier=get_classifier(data_dir=args.data_dir)).floor

    data = ["--data_dir", str(Path(args.data_dir).resolve())] if args.data_dir else []
    ae_folder, ae_stage = train_autoencoder(args, work, data)
    result = {**provenance(name, hw, args.commit), "profile": profile, "config": args.profile["config"], "autoencoder": str(ae_folder),
              "autoencoder_training": ae_stage, "num_samples": args.profile["num_samples"], "seed": args.seed,
              "real_data_floor": floor, "variants": {},
              "note": "smoke test, not a benchmark: tiny models, few steps" if args.quick else None}
    digits = {}
    for variant in args.variants:
        folder = work / variant
        cmd = ["--config", args.profile["config"], "--autoencoder", str(ae_folder), "--output_dir", str(folder),
               "--eval_num_samples", "0", "--seed", str(args.seed), *data, *args.profile["extra"],
               *shlex.split(args.ddpm_args), *variant_args(variant)]
        stage = project.run_stage(variant, "train_latent_ddpm.py", cmd, folder, "latents_per_s")
        result["steps"] = stage["steps"]
        scores, digits[variant] = score_variant(folder, args, device)
        result["variants"][variant] = {"training": stage, "scores": scores}
        out.mkdir(parents=True, exist_ok=True)  # written after every variant: a crash keeps what was measured
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (out / f"{name}.md").write_text(("# SMOKE TEST, not a benchmark\n\n" if args.quick else "") + md)
    figure(result, digits, out / f"{name}.png")
    print("\n" + md + f"\nwrote {out / name}.json, .md, .png")
    return result


if __name__ == "__main__":
    main()
