"""A quick config pair end to end, as a user runs it, timed and collected into one result.

    python -m benchmarks.quick_run --autoencoder_config configs/emoji_autoencoder_quick.yaml \
        --latent_config configs/emoji_latent_ddpm_quick.yaml --output_dir /tmp/emoji --name emoji-quick-cpu

It runs `train_autoencoder.py` then `train_latent_ddpm.py` (fresh folders under --output_dir; the data
and the judge come from the cache, or are fetched and trained on the way and counted in the time),
then `python -m pipeline.evaluate` on the autoencoder: PSNR/SSIM on the test split and, for labelled
data, the reconstructed floor. It writes <name>-<date>.json and .md with the wall time of each
command, the phases of timings.json, the data record, the pipeline's scores against the floor and the
class accuracy at the config's guidance scale, and copies the sample grid and reconstructions beside them.
"""

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import REPO, add_commit_option, hardware, provenance, save_result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--autoencoder_config", required=True, help="YAML for train_autoencoder.py")
    p.add_argument("--latent_config", required=True, help="YAML for train_latent_ddpm.py")
    p.add_argument("--output_dir", required=True, help="where the two runs go (emptied first)")
    p.add_argument("--name", required=True, help="file stem; the date is appended")
    p.add_argument("--results", default="benchmarks/results", help="folder for the .json, .md and pictures")
    p.add_argument("extra", nargs="*", help="more options for both scripts, after --, e.g. -- --num_threads 2")
    add_commit_option(p)
    return p.parse_args(argv)


def timed(cmd) -> float:
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, *cmd], cwd=REPO, check=True)
    return round(time.perf_counter() - start, 1)


def read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def judge_line(p: dict) -> str:
    """What the judge scored on real test images: its accuracy and bar, or why it gives no class scores."""
    if p.get("classifier_why_no_classes"):
        return f"features only: {p['classifier_why_no_classes']}"
    low, high = p.get("classifier_balanced_test_accuracy_interval") or (None, None)
    span = f" (95% interval {low:.1%} to {high:.1%})" if low is not None else ""
    bar = (f"; balanced {p['classifier_balanced_test_accuracy']:.1%}{span}, bar {p['classifier_min_accuracy']:.1%} "
           f"on {p['classifier_bar_on']}" if p.get("classifier_bar_on") else "")
    return f"accuracy {p['classifier_accuracy']:.1%}{bar}"


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.output_dir).resolve()
    shutil.rmtree(out, ignore_errors=True)
    ae, pipe = out / "autoencoder", out / "pipeline"
    seconds = {
        "autoencoder": timed(["train_autoencoder.py", "--config", args.autoencoder_config, "--output_dir", str(ae),
                              *args.extra]),
        "latent_ddpm": timed(["train_latent_ddpm.py", "--config", args.latent_config, "--autoencoder", str(ae),
                              "--output_dir", str(pipe), *args.extra]),
    }
    seconds["total"] = round(seconds["autoencoder"] + seconds["latent_ddpm"], 1)
    seconds["autoencoder_evaluation"] = timed(["-m", "pipeline.evaluate", "--pipeline", str(ae)])

    name = f"{args.name}-{datetime.date.today():%Y%m%d}"
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    pictures = {"samples": pipe / "samples.png", "reconstruction": ae / "reconstruction.png"}
    for key, src in pictures.items():
        if src.is_file():
            shutil.copy(src, results / f"{name}_{key}.png")
    result = provenance(name, hardware(torch.device("cpu")), args.commit)
    result.update(
        configs=[args.autoencoder_config, args.latent_config], extra_options=args.extra, seconds=seconds,
        data=read(ae / "data.json"), autoencoder=read(ae / "evaluation" / "metrics.json"),
        pipeline=read(pipe / "evaluation" / "metrics.json"), guidance=read(pipe / "evaluation" / "guidance.json"),
        timings_autoencoder=read(ae / "timings.json"), timings_latent_ddpm=read(pipe / "timings.json"))
    save_result(result, report(result, name), results)


def report(r: dict, name: str) -> str:
    ae, p, g, s = r["autoencoder"] or {}, r["pipeline"] or {}, r["guidance"], r["seconds"]
    hw = r["hardware"]
    lines = [f"# {name}", "", f"Commands (commit {r['git_commit']}{' + uncommitted changes' if r['git_dirty'] else ''}; "
             f"{hw['cpu_count']} CPU cores, torch {hw['torch']}, {hw['platform']}):", "",
             f"    {r['command']}", "",
             f"    python train_autoencoder.py --config {r['configs'][0]} {' '.join(r['extra_options'])}",
             f"    python train_latent_ddpm.py --config {r['configs'][1]} {' '.join(r['extra_options'])}", ""]
    if r["data"]:
        d = r["data"]
        lines += [f"Data: {d.get('num_train')} training, {d.get('num_test')} test images "
                  f"({d.get('test_split')}), {d.get('image_size')}x{d.get('image_size')}, {d.get('channels')} channels.", ""]
    lines += ["| | value |", "|---|---|",
              f"| time end to end (both scripts) | {s['total']:.0f} s ({s['total'] / 60:.1f} min) |",
              f"| autoencoder / latent diffusion | {s['autoencoder']:.0f} s / {s['latent_ddpm']:.0f} s |"]
    if ae:
        lines.append(f"| autoencoder, test split ({ae['num_images']} images) | PSNR {ae['psnr']:.2f} dB, "
                     f"SSIM {ae['ssim']:.3f} |")
    if p.get("fid") is not None:
        n = p["num_samples"]
        lines += [f"| judge, real test images | {judge_line(p)} |",
                  f"| FID, {n} samples (floor, reconstructed floor) | {p['fid']:.2f} ({p['fid_floor']:.2f}, "
                  f"{ae.get('fid_reconstructed', float('nan')):.2f}) |",
                  f"| precision / recall (floor) | {p['precision']:.3f} / {p['recall']:.3f} "
                  f"({p['precision_floor']:.3f} / {p['recall_floor']:.3f}) |",
                  *([f"| FID, labels at the data's class mix, no guidance | {p['fid_class_mix']:.2f} (precision / "
                     f"recall {p['precision_class_mix']:.3f} / {p['recall_class_mix']:.3f}) |"]
                    if p.get("fid_class_mix") is not None else []),
                  f"| sampling speed | {p['images_per_second']:.1f} images/s ({p['scheduler']}, "
                  f"{p['num_inference_steps']} steps) |"]
    elif p:
        lines.append(f"| FID | not measured: {p.get('not_scored')} |")
    if g:
        row = g["scales"][0]
        lines.append(f"| class accuracy at guidance {row['guidance_scale']:g} ({g['num_samples']} samples) | "
                     f"{row['class_accuracy']:.1%} (real test images, every class equally weighted: "
                     f"{g['floor']['class_accuracy']:.1%}); "
                     f"FID {row['fid']:.2f} |")
    lines += ["", f"Pictures: [samples]({name}_samples.png), [reconstructions]({name}_reconstruction.png). "
              f"Numbers: [{name}.json]({name}.json).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
