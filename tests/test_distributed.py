"""Two gloo processes on a CPU-only machine: torchrun and `accelerate launch --multi_gpu`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY_AE

from test_train_latent_ddpm import TINY_UNET

pytestmark = pytest.mark.slow  # two processes per test

BIN = Path(sys.executable).parent


def children(pid):
    """PIDs whose parent is `pid` (from /proc: Linux, as CI)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def launch(launcher, script, args, timeout=600):
    cmd = {"torchrun": [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29533"],
           "accelerate": [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", "29534"]}[launcher]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd + [str(REPO / script), *args], cwd=REPO, capture_output=True, text=True,
                         timeout=timeout, env=env)
    log = res.stdout + res.stderr
    if res.returncode != 0:
        pytest.fail(f"{launcher} {script} failed:\n{log[-4000:]}")
    return log


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_both_scripts_train_on_two_processes(launcher, mnist_dir, tmp_path):
    ae = tmp_path / "ae"
    log = launch(launcher, "train_autoencoder.py", [
        "--config", str(REPO / "configs/autoencoder_quick.yaml"), "--output_dir", str(ae), "--data_dir", str(mnist_dir),
        "--max_train_samples", "1024", "--max_eval_samples", "100", "--max_train_steps", "10", "--train_batch_size", "16",
        "--checkpointing_steps", "5", "--logging_steps", "5", "--tsne_num_points", "50", *TINY_AE])
    assert "training on 2 process(es)" in log and "weights identical on all 2 processes" in log
    assert (ae / "diffusion_pytorch_model.safetensors").is_file() and (ae / "checkpoint-10").is_dir()

    ddpm_args = ["--config", str(REPO / "configs/latent_ddpm_quick.yaml"), "--autoencoder", str(ae),
                 "--output_dir", str(tmp_path / "ddpm"), "--data_dir", str(mnist_dir), "--max_train_samples", "1024",
                 "--train_batch_size", "16", "--logging_steps", "5", "--checkpointing_steps", "5",
                 "--save_images_steps", "100", "--eval_num_samples", "0", "--num_inference_steps", "2", *TINY_UNET]
    log = launch(launcher, "train_latent_ddpm.py", ddpm_args + ["--max_train_steps", "5"])
    assert "training on 2 process(es)" in log and "weights identical on all 2 processes" in log
    # Resume on two processes from the checkpoint the two processes wrote, this time with the end-of-run
    # evaluation on: the main process scores while the other waits, and no metric reaches for the other's state.
    log = launch(launcher, "train_latent_ddpm.py", ddpm_args + ["--max_train_steps", "10", "--eval_num_samples", "20",
                                                                "--resume_from_checkpoint", "latest"])
    assert "resumed from" in log and "checkpoint-5" in log and "weights identical on all 2 processes" in log
    assert (tmp_path / "ddpm" / "model_index.json").is_file() and (tmp_path / "ddpm" / "checkpoint-10").is_dir()
    metrics = json.loads((tmp_path / "ddpm" / "evaluation" / "metrics.json").read_text())
    assert metrics["num_samples"] == 20 and metrics["fid"] > 0 and metrics["fid_floor"] > 0


def test_sigterm_to_one_of_two_processes_checkpoints_and_stops_both(mnist_dir, tiny_autoencoder_run, tmp_path):
    """A scheduler may signal one rank only: every rank must agree, save one checkpoint and exit."""
    import signal
    import time

    out = tmp_path / "ddpm"
    args = ["--config", str(REPO / "configs/latent_ddpm_quick.yaml"), "--autoencoder", str(tiny_autoencoder_run),
            "--output_dir", str(out), "--data_dir", str(mnist_dir), "--max_train_samples", "1024",
            "--train_batch_size", "16", "--logging_steps", "5", "--checkpointing_steps", "1000",
            "--save_images_steps", "1000", "--eval_num_samples", "0", "--num_inference_steps", "2", *TINY_UNET]
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29535", str(REPO / "train_latent_ddpm.py")]
    proc = subprocess.Popen(cmd + args + ["--max_train_steps", "100000"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "loss.csv").is_file():
        time.sleep(0.1)
    while time.time() < deadline and len((out / "loss.csv").read_text().split()) < 2:  # training is under way
        time.sleep(0.1)
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGTERM)  # one worker only
    output, _ = proc.communicate(timeout=300)
    ckpts = sorted(out.glob("checkpoint-*"))
    assert len(ckpts) == 1 and int(ckpts[0].name.split("-")[1]) % 10 == 0, (ckpts, output[-3000:])
    assert "--resume_from_checkpoint latest" in output and not (out / "unet").exists()
    step = int(ckpts[0].name.split("-")[1])
    log = launch("torchrun", "train_latent_ddpm.py", args + ["--max_train_steps", str(step + 5),
                                                             "--resume_from_checkpoint", "latest"])
    assert "resumed from" in log and "weights identical on all 2 processes" in log


def test_the_one_command_runs_its_stages_on_two_processes(tmp_path):
    """`accelerate launch train_latent_ddpm.py --train_data_dir DIR` with no --autoencoder: every stage trains on
    both processes, each waits for the main process to finish the last, and both end in one process group."""
    from test_image_data import colour_folder
    from test_one_command import TINY

    folder = colour_folder(tmp_path / "pics", n_per_class=16)
    log = launch("accelerate", "train_latent_ddpm.py", ["--train_data_dir", str(folder), "--output_dir",
                                                        str(tmp_path / "run"), *TINY])
    assert log.count("training on 2 process(es)") == 3 and log.count("weights identical on all 2 processes") == 3, log[-4000:]
    assert f"made in {tmp_path / 'run'}" in log
    assert (tmp_path / "run" / "student" / "model_index.json").is_file()
