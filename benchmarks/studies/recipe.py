"""A recipe study's table: finished latent runs side by side, each at the CPU time its steps cost alone.

    python -m benchmarks.studies.recipe --row "wide, batch 64=/tmp/study/b64" --row "today=runs/emoji_demo/pipeline" \
        --peer benchmarks/results/pixel-peer-emoji-20261206.json --name emoji-recipe-cpu-20261206

Each --row NAME=FOLDER is a train_latent_ddpm.py run that ended with its evaluation. From the folder: the resolved
config (UNet, batch, steps, learning rate, EMA, augmentation, guidance), the latent shape and the autoencoder's test
PSNR, the scores (FID, KID, precision, recall beside the real-image floor) and the class accuracy at the config's
guidance. Runs of a study may share the cores (scores do not depend on it), so each row's cost is measured here
instead: the training steps per second alone of a fresh UNet of the run's shape and batch, and of a fresh autoencoder
of its autoencoder's, and from them the seconds each stage's steps take on quiet cores (studies that move steps
between the two stages compare their sum). Each distinct shape and batch is timed once and shared by every row that
has it, so rows that differ only in options that cost nothing (seed, learning rate, loss weighting) differ in
seconds only by their steps. Run this alone. --peer adds a pixel-space row
(benchmarks/studies/pixel_peer.py), its cost measured the same way.
Writes NAME.json and NAME.md.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from benchmarks.common import add_commit_option, hardware, provenance, save_result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--row", action="append", required=True, metavar="NAME=FOLDER", help="a finished latent run")
    p.add_argument("--peer", action="append", default=[], help="a pixel_peer.py result json")
    p.add_argument("--rate_steps", type=int, default=40, help="steps timed per distinct shape (after 3 warm-up steps)")
    p.add_argument("--name", required=True)
    p.add_argument("--output", default="benchmarks/results")
    add_commit_option(p)
    return p.parse_args(argv)


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def steps_per_second(model, loss_of, steps: int) -> float:
    """Training steps per second of `model`: forward, loss, backward, AdamW, as the loops do (3 steps of warm-up)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        loss = loss_of(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - start)


_RATES = {}


def once_per_shape(rate):
    """`rate(config, batch_size, steps)` measured once per shape in this process: configs equal but for what
    does not change the network (diffusers' `_` keys, the autoencoder's scaling_factor) share one measurement."""
    def shared(config: dict, batch_size: int, steps: int) -> float:
        shape = {k: v for k, v in config.items() if not k.startswith("_") and k != "scaling_factor"}
        key = (rate.__name__, json.dumps(shape, sort_keys=True), batch_size, steps)
        if key not in _RATES:
            _RATES[key] = rate(config, batch_size, steps)
        return _RATES[key]
    return shared


@once_per_shape
def step_rate(unet_config: dict, batch_size: int, steps: int) -> float:
    """Training steps per second of a fresh UNet of this config."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel.from_config(unet_config)
    c = unet.config
    x = torch.randn(batch_size, c.in_channels, c.sample_size, c.sample_size)
    t = torch.randint(0, 1000, (batch_size,))
    labels = {"class_labels": torch.randint(0, c.num_class_embeds, (batch_size,))} if c.num_class_embeds else {}
    return steps_per_second(unet, lambda m: (m(x, t, **labels).sample - x).pow(2).mean(), steps)


@once_per_shape
def autoencoder_rate(config: dict, batch_size: int, steps: int) -> float:
    """Training steps per second of a fresh autoencoder of this config, on a batch of its padded images."""
    from pipeline.autoencoder import CABAutoencoder

    torch.manual_seed(0)
    autoencoder = CABAutoencoder.from_config(config)
    c = autoencoder.config
    x = torch.rand(batch_size, c.in_channels, c.sample_size, c.sample_size) * 2 - 1
    return steps_per_second(autoencoder, lambda m: (m(x) - x).pow(2).mean(), steps)


def row(name: str, folder: Path, rate_steps: int) -> dict:
    cfg = yaml.safe_load((folder / "training_config.yaml").read_text())
    unet = read_json(folder / "unet" / "config.json")
    autoencoder = read_json(folder / "autoencoder" / "config.json")
    ae_metrics = read_json(Path(cfg["autoencoder"]) / "metrics.json") or {}
    ae_cfg = yaml.safe_load((Path(cfg["autoencoder"]) / "training_config.yaml").read_text())
    ae_rate = autoencoder_rate(autoencoder, ae_cfg["train_batch_size"], rate_steps)
    metrics = read_json(folder / "evaluation" / "metrics.json") or {}
    guidance = read_json(folder / "evaluation" / "guidance.json")
    guided = guidance["scales"][0] if guidance else {}
    floor = (guidance or {}).get("floor", {})
    rate = step_rate(unet, cfg["train_batch_size"], rate_steps)
    return {
        "name": name, "folder": str(folder),
        "latent_shape": [unet["in_channels"], unet["sample_size"], unet["sample_size"]],
        "autoencoder": {"folder": cfg["autoencoder"], "block_out_channels": autoencoder["block_out_channels"],
                        "test_psnr": ae_metrics.get("psnr"), "train_batch_size": ae_cfg["train_batch_size"],
                        "max_train_steps": ae_cfg["max_train_steps"], "steps_per_second_alone": ae_rate,
                        "train_seconds_alone": ae_cfg["max_train_steps"] / ae_rate},
        "unet": {k: unet[k] for k in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block")},
        **{k: cfg.get(k) for k in ("seed", "train_batch_size", "max_train_steps", "learning_rate", "ema_max_decay",
                                    "snr_gamma", "timestep_sampling", "random_flip", "class_dropout", "class_balance",
                                    "eval_guidance_scale")},
        "steps_per_second_alone": rate, "train_seconds_alone": cfg["max_train_steps"] / rate,
        **{k: metrics.get(k) for k in ("fid", "fid_floor", "fid_reconstructed", "kid", "kid_floor", "precision",
                                        "recall", "num_samples")},
        "class_accuracy": guided.get("class_accuracy"),
        # real test images at the samples' class mix: guidance.json's floor since it records them per class, the
        # judge's balanced test accuracy (the same number) for runs scored before
        "class_accuracy_real": floor["class_accuracy"] if "per_class_accuracy" in floor
        else metrics.get("classifier_balanced_test_accuracy"),
        "judge": metrics.get("classifier_fingerprint"),
    }


def peer_row(path: Path, rate_steps: int) -> dict:
    """A pixel_peer.py result, its cost measured as the latent rows' is: its UNet's steps alone, on a fresh one."""
    r = json.loads(path.read_text())
    t, s, h = r["training"], r["scores"], r["training"]["hyperparameters"]
    rate = step_rate(h["unet"], h["batch_size"], rate_steps)
    return {"name": f"pixel space, UNet {list(h['unet']['block_out_channels'])}", "folder": str(path),
            "latent_shape": None, "unet": h["unet"], "train_batch_size": h["batch_size"], "max_train_steps": t["steps"],
            "learning_rate": h["learning_rate"], "steps_per_second_alone": rate, "train_seconds_alone": t["steps"] / rate,
            "train_seconds_wall": t["train_seconds"], "threads": r.get("num_threads"),
            **{k: s.get(k) for k in ("fid", "fid_floor", "kid", "precision", "recall")}, "class_accuracy": None}


def markdown(r) -> str:
    lines = [f"Recipe study on {r['hardware']['cpu_count']} CPU cores, commit {(r['git_commit'] or 'unknown')[:7]}; "
             f"`{r['command']}`. Seconds: each stage's training steps alone on quiet cores (measured here, the pixel "
             "rows too), autoencoder + UNet. Distance: FID minus the real-image floor.", "",
             "| recipe | latent | autoencoder steps (PSNR) | UNet | batch x steps | lr | seconds | FID (floor) | distance | "
             "KID | precision | recall | class acc. at guidance |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        latent = "x".join(map(str, x["latent_shape"])) if x["latent_shape"] else "pixels"
        acc = "" if x["class_accuracy"] is None else \
            f"{x['class_accuracy']:.1%} ({x['class_accuracy'] / x['class_accuracy_real']:.0%} of real)"
        ae = x.get("autoencoder") or {}
        psnr = "" if ae.get("test_psnr") is None else f" ({ae['test_psnr']:.1f} dB)"
        stages = f"{ae['max_train_steps']:,}{psnr}" if "max_train_steps" in ae else "none"
        seconds = f"{ae['train_seconds_alone']:.0f} + {x['train_seconds_alone']:.0f}" if "train_seconds_alone" in ae \
            else f"{x['train_seconds_alone']:.0f}"
        lines.append(
            f"| {x['name']} | {latent} | {stages} | {list(x['unet']['block_out_channels'])} | {x['train_batch_size']} x "
            f"{x['max_train_steps']:,} | {x['learning_rate']:g} | {seconds} | {x['fid']:.2f} "
            f"({x['fid_floor']:.2f}) | {x['fid'] - x['fid_floor']:.2f} | {x['kid']:.3f} | {x['precision']:.3f} | "
            f"{x['recall']:.3f} | {acc} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    rows = []
    for spec in args.row:
        name, _, folder = spec.partition("=")
        rows.append(row(name, Path(folder), args.rate_steps))
        print(f"{name}: {rows[-1]['steps_per_second_alone']:.2f} UNet and "
              f"{rows[-1]['autoencoder']['steps_per_second_alone']:.2f} autoencoder steps/s alone", flush=True)
    rows += [peer_row(Path(p), args.rate_steps) for p in args.peer]
    result = {**provenance(args.name, hardware(torch.device("cpu")), args.commit), "threads": torch.get_num_threads(),
              "rows": rows}
    save_result(result, markdown(result), args.output)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
