"""What the benchmark scripts share: provenance of a result (command, commit, hardware), writing it,
and their common arguments. Every script runs from the repository root as a module:

    python -m benchmarks.run_benchmark --quick --output /tmp/bench
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def command_line() -> str:
    """The command as it was typed: `python -m benchmarks.NAME ARGS` for a module run, else `python ARGS`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return shlex.join(["python", "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]])
    return shlex.join(["python", *sys.argv])


def int_list(text):
    """argparse type for comma-separated positive integers: --batches 1,10,100."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,10,100; got {text!r}")
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be >= 1; got {text!r}")
    return values


def seed_list(text):
    """argparse type for comma-separated seeds (0 allowed): --seeds 0,1."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,1; got {text!r}")


def add_commit_option(parser):
    """--commit, for every benchmark script that records the commit it measured (see git_state)."""
    parser.add_argument("--commit", help="git commit to record instead of asking git (a copied repo may have "
                        "none, or a stale one)")


def git_state(explicit=None):
    """(commit, has uncommitted changes) of the repo; (explicit, None) when --commit names it.

    An explicit commit wins: a copy of the repo sent to a GPU machine may carry a stale .git."""
    if explicit:
        return explicit, None
    try:
        def git(*a):
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return None, None


def provenance(name, hw, commit=None):
    """The fields every result json starts with: its name, the command, the commit, when and on what."""
    commit, dirty = git_state(commit)
    return {"name": name, "command": command_line(), "git_commit": commit, "git_dirty": dirty,
            "created": datetime.datetime.now().astimezone().isoformat(), "hardware": hw}


def save_result(result, md, output):
    """Write <output>/<name>.json and .md, and print the md."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{result['name']}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{result['name']}.md").write_text(md)
    print("\n" + md + f"\nwrote {out / result['name']}.json and .md")


def pipeline_folder(path) -> Path:
    """--pipeline as a Path, or exit with a one-line error when it is not a saved pipeline."""
    folder = Path(path)
    if not (folder / "model_index.json").is_file():
        sys.exit(f"--pipeline {folder} is not a pipeline folder (no model_index.json); pass a training run's output_dir")
    return folder


def hardware(device):
    import accelerate
    import diffusers

    cuda = device.type == "cuda"
    info = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if cuda else None,
            "gpu_memory_bytes": torch.cuda.get_device_properties(device).total_memory if cuda else None,
            "gpu_count": torch.cuda.device_count(), "cuda": torch.version.cuda, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "gpu_driver": None}
    try:
        info["gpu_driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, check=True).stdout.split("\n")[0].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def machine_name(hw) -> str:
    """"h100-80gb-hbm3" for an NVIDIA H100 80GB HBM3, "cpu" without a GPU: the start of result file names."""
    return (hw["gpu"] or "cpu").lower().replace("nvidia", "").strip().replace(" ", "-")
