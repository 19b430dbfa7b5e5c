"""The benchmark's outputs: <name>.json (everything), <name>.md (tables ready for docs/results.md),
<name>_samples.npz and PNG sample grids; and `merge`, which joins a project-only and a
baseline-only run (made by separate `--only` commands) into one report."""

import json
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from pipeline.visualisation import save_grid, tile

MODELS = {"project": "latent DDPM (this project)", "baseline": "pixel DDPM (diffusers baseline)"}
GIB = 2 ** 30


def same_size_floor(score) -> str:
    """What real digits score at a score's sample size when it is under the 10,000-digit floor, else ''
    (also '' for results saved before each score kept the floor at its own size)."""
    n = score.get("floor_num_samples", 10_000)
    return "" if n >= 10_000 else f"{n:,} real digits score FID {score['fid_floor']:.3g}"


def _num(x, digits=3):
    return "n/a" if x is None else f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}g}"


def _gib(b):
    return "n/a (no GPU)" if b is None else f"{b / GIB:.2f} GiB"


def _training_cells(key, m):
    t = m["training"]
    if key == "project":
        ae, dd = t["autoencoder"], t["latent_ddpm"]
        return [f"{_num(t['train_seconds'])} s (AE {_num(ae['train_seconds'])} + diffusion {_num(dd['train_seconds'])})",
                f"AE {_num(ae['items_per_s'])} images/s, diffusion {_num(dd['items_per_s'])} latents/s "
                f"(steady {_num(ae['steady_items_per_s'])} / {_num(dd['steady_items_per_s'])})",
                f"AE {_gib(ae['peak_gpu_memory_bytes'])}, diffusion {_gib(dd['peak_gpu_memory_bytes'])}",
                f"AE {m['parameters']['autoencoder'] / 1e6:.2f}M + UNet {m['parameters']['unet'] / 1e6:.2f}M "
                f"(AE test PSNR {ae['test_psnr']:.1f} dB)",
                f"{_num(t['to_saved_pipeline_seconds'])} s ({_num(t['wall_seconds'])} s with the figures drawn after "
                "the save)" if "to_saved_pipeline_seconds" in t  # results made before timings.json have no split
                else f"not measured ({_num(t['wall_seconds'])} s for both scripts, figures included)"]
    return [f"{_num(t['train_seconds'])} s ({t['steps']:,} steps of {t['hyperparameters']['batch_size']})",
            f"{_num(t['images_per_s'])} images/s (steady {_num(t['steady_images_per_s'])})",
            _gib(t["peak_gpu_memory_bytes"]), f"UNet {m['parameters']['unet'] / 1e6:.2f}M", "not measured"]


def _phases(r) -> list:
    """Where each of the project's two scripts spent its wall time (from the runs' timings.json)."""
    t = r["project"]["training"]
    out = []
    for stage, name in (("autoencoder", "train_autoencoder.py"), ("latent_ddpm", "train_latent_ddpm.py")):
        s = t[stage]
        if "phases" in s:  # results made before timings.json existed have none
            parts = {"Python start-up and imports": s["startup_seconds"], **s["phases"]}
            out.append(f"- `{name}`, {_num(s['wall_seconds'])} s: "
                       + ", ".join(f"{k} {_num(v)} s" for k, v in parts.items()))
    return ["Where the project's wall time went:", "", *out, ""] if out else []


def markdown(r) -> str:
    keys = [k for k in MODELS if k in r]
    hw = r["hardware"]
    out = []
    if r["quick"]:
        out += ["# SMOKE TEST, NOT A BENCHMARK", "",
                "Made with `--quick`: tiny models trained for a few steps. These numbers only show that the "
                "benchmark runs end to end; never quote them.", ""]
    out += ["## Latent DDPM (this project) vs pixel-space DDPM (diffusers) on MNIST", "",
            f"{hw['gpu'] or 'CPU only'}; torch {hw['torch']}, CUDA {hw['cuda']}, diffusers {hw['diffusers']}, "
            f"accelerate {hw['accelerate']}; commit `{r['git_commit']}`{' (uncommitted changes)' if r['git_dirty'] else ''}",
            "", f"Command: `{r['command']}`", ""]
    out += ["| | " + " | ".join(MODELS[k] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    train_rows = ["training time", "training throughput", "peak GPU memory, training", "parameters",
                  "raw data to saved pipeline (both scripts, wall clock)"]
    cells = {k: _training_cells(k, r[k]) for k in keys}
    for i, label in enumerate(train_rows):
        out.append(f"| {label} | " + " | ".join(cells[k][i] for k in keys) + " |")
    runs = list(dict.fromkeys(q for k in keys for q in r[k]["sampling"]["quality"]))
    for run in runs:
        q0 = next(r[k]["sampling"]["quality"][run] for k in keys if run in r[k]["sampling"]["quality"])
        name = "DPM-Solver++" if q0["scheduler"] == "dpm" else "DDPM"
        label = f"FID / precision / recall, {name} {q0['num_inference_steps']} steps ({q0['num_samples']:,} samples)"
        if same_size_floor(q0):  # fewer samples: say what real digits score at that size
            label += f"; {same_size_floor(q0)}"
        row = []
        for k in keys:
            q = r[k]["sampling"]["quality"].get(run)
            row.append("n/a" if q is None else f"{q['fid']:.3g} / {q['precision']:.3f} / {q['recall']:.3f}")
        out.append(f"| {label} | " + " | ".join(row) + " |")
    speed = {k: r[k]["sampling"]["throughput"] for k in keys}
    out.append("| sampling throughput, DPM-Solver++ {} steps | ".format(speed[keys[0]]["num_inference_steps"])
               + " | ".join(f"{_num(s['digits_per_s'])} digits/s (batch {s['batch_size']:,})" for s in speed.values()) + " |")
    out.append("| peak GPU memory, sampling at that batch | "
               + " | ".join(_gib(s["peak_gpu_memory_bytes"]) for s in speed.values()) + " |")
    f = r["real_data_floor"]
    out += ["", f"Real-data floor (10,000 training digits against the test split, same judge, whose test accuracy "
            f"is {r['judge']['test_accuracy']:.2%}): FID {f['fid']:.3g}, "
            f"precision {f['precision']:.3f}, recall {f['recall']:.3f}. FID uses the project's MNIST classifier "
            "features (pipeline/metrics.py), not Inception; fewer samples bias FID upwards, so compare numbers "
            "within a row only.", ""]
    if len(keys) == 2:
        out += [f"Samples, DPM-Solver++ {speed['project']['num_inference_steps']} steps (left: this project, right: "
                f"the baseline): ![samples]({r['name']}_side_by_side.png)", ""]
    out += _sweeps(r, keys)
    out += _phases(r) if "project" in keys else []
    out += ["Training time is the training loop only (torch.compile warm-up and checkpoints included; data loading "
            "and end-of-run figures excluded)." + _budget(r, keys) + " 'steady' leaves out the first logging "
            "interval (or the first 10% of the baseline's budget). Sampling runs under bf16 autocast on CUDA, "
            "without torch.compile.", ""]
    return "\n".join(out)


def _budget(r, keys) -> str:
    """What the baseline's training budget was, measured against the project's."""
    if "baseline" not in keys:
        return ""
    b = r["baseline"]["training"]["train_seconds"]
    if "project" not in keys:
        return f" The baseline trained for {_num(b)} s (--seconds)."
    p = r["project"]["training"]["train_seconds"]
    if abs(b - p) <= 0.02 * p:
        return " The baseline trained for the same number of seconds."
    return f" The baseline trained for {_num(b)} s, {b / p:.0%} of the project's {_num(p)} s (--seconds set its budget)."


def _sweeps(r, keys):
    out = []
    if "project" in keys and r["project"]["sampling"].get("batch_sweep"):
        out += ["Latent pipeline, sampling time vs batch size (DPM-Solver++ 20 steps, one call, decoding included):",
                "", "| batch | seconds | digits/s |", "|---|---|---|"]
        out += [f"| {row['batch_size']:,} | {_num(row['seconds'])} | {_num(row['digits_per_s'])} |"
                for row in r["project"]["sampling"]["batch_sweep"]]
        out.append("")
    dpm = {k: {q["num_inference_steps"]: q for q in r[k]["sampling"]["quality"].values() if q["scheduler"] == "dpm"}
           for k in keys}
    steps = sorted(set().union(*[d.keys() for d in dpm.values()]))
    if steps:
        n = next(iter(dpm[keys[0]].values()))["num_samples"]
        out += [f"Sampling time vs steps (DPM-Solver++, {n:,} digits at the batch size above):", "",
                "| steps | " + " | ".join(f"{MODELS[k]}: seconds (digits/s)" for k in keys) + " |",
                "|---|" + "---|" * len(keys)]
        for s in steps:
            out.append(f"| {s} | " + " | ".join(
                f"{_num(dpm[k][s]['sampling_seconds'])} ({_num(dpm[k][s]['digits_per_s'])})" if s in dpm[k] else "n/a"
                for k in keys) + " |")
        out.append("")
    return out


def side_by_side(left, right, path, scale=3, gap=8):
    """Two 10x10 digit grids next to each other, a white band between them."""
    a, b = tile(left, nrow=10), tile(right, nrow=10)
    height = max(len(a), len(b))
    a, b = (np.pad(m, ((0, height - len(m)), (0, 0))) for m in (a, b))
    mosaic = np.concatenate([a, np.full((height, gap), 255, np.uint8), b], axis=1)
    imageio.imwrite(path, np.kron(mosaic, np.ones((scale, scale), np.uint8)))


def write(result, samples, out_dir, name):
    """Write <name>.json/.md/_samples.npz and the grids; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md", out_dir / f"{name}_samples.npz"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(markdown(result))
    np.savez_compressed(paths[2], **samples)
    for key, digits in samples.items():
        paths.append(out_dir / f"{name}_{key}.png")
        save_grid(digits, paths[-1], nrow=10)
    if {"project", "baseline"} <= samples.keys():
        paths.append(out_dir / f"{name}_side_by_side.png")
        side_by_side(samples["project"], samples["baseline"], paths[-1])
    return paths


def merge(json_paths):
    """(result, samples) joining parts that each hold one of "project" / "baseline" (later parts win)."""
    result, samples, parts = None, {}, []
    for p in map(Path, json_paths):
        part = json.loads(p.read_text())
        result = result or {k: v for k, v in part.items() if k not in MODELS}
        result.update({k: part[k] for k in MODELS if k in part})
        with np.load(p.with_name(f"{p.stem}_samples.npz")) as z:
            samples.update({k: z[k] for k in z.files})
        if part["settings"] != result["settings"]:
            raise ValueError(f"{p} was sampled with other settings than {json_paths[0]}; they do not compare")
        parts.append({k: part.get(k) for k in ("name", "command", "created", "git_commit", "hardware", "quick", "judge")})
    gpus = {str(part["hardware"]["gpu"]) for part in parts}
    if len(gpus) > 1:
        raise ValueError(f"the parts ran on different hardware ({', '.join(sorted(gpus))}); they do not compare")
    if len({part["judge"]["fingerprint"] for part in parts}) > 1:
        raise ValueError("the parts were scored by different judge classifiers (other CPU or software?), so their "
                         "FIDs do not compare; run both halves on the same kind of machine")
    result["quick"] = any(part["quick"] for part in parts)
    result["parts"] = parts
    result["command"] = " + ".join(part["command"] for part in parts)
    return result, samples
