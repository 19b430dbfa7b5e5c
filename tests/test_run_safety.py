"""Nothing lost, nothing silently changed: resume checks, one run per folder, a full disk, safe loading,
uploading later. Each case drives the real scripts in subprocesses, as a user would."""

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_script
from test_train_latent_ddpm import assert_same_weights, ddpm_args, unet_weights

slow = pytest.mark.slow  # every test here but the last starts the scripts


def folder_hashes(folder):
    """sha256 of every file under `folder` except TensorBoard logs, the lock and the config a run rewrites."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "logs" not in p.parts}


def error_lines(res):
    return [line for line in res.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def run_30(mnist_dir, tiny_autoencoder_run, tmp_path_factory):
    """An uninterrupted 30-step run with checkpoints at 10, 20 and 30 (and its pipeline folder)."""
    out = tmp_path_factory.mktemp("runs") / "ddpm30"
    run_script("train_latent_ddpm.py", ddpm_args(mnist_dir, tiny_autoencoder_run, out, steps=30,
                                                 extra=["--checkpoints_total_limit", "null", "--skip_figures"]))
    return out


def copy_run(run, dest):
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("logs"))
    return dest


@slow
@pytest.mark.parametrize("change,says", [
    (["--unet.block_out_channels", "[64, 128]"], ["unet.block_out_channels [32, 64] -> [64, 128]"]),
    (["--train_batch_size", "16"], ["train_batch_size 32 -> 16"]),
    (["--use_ema", "false", "--prediction_type", "epsilon"],
     ["prediction_type 'v_prediction' -> 'epsilon'", "use_ema True -> False"]),
])
def test_resume_with_other_options_stops_before_writing_anything(mnist_dir, tiny_autoencoder_run, run_30, tmp_path,
                                                                  change, says):
    out = copy_run(run_30, tmp_path / "run")
    before = folder_hashes(out)
    args = ddpm_args(mnist_dir, tiny_autoencoder_run, out, steps=40, extra=["--checkpoints_total_limit", "1", *change])
    res = run_script("train_latent_ddpm.py", args + ["--resume_from_checkpoint", "latest"], check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    (line,) = error_lines(res)
    assert "was trained with other options" in line and "use a new --output_dir" in line
    assert all(s in line for s in says), line
    # The same without --resume_from_checkpoint: a fresh start would overwrite and prune them, so it stops too.
    res = run_script("train_latent_ddpm.py", args, check=False)
    assert res.returncode == 2 and all(s in res.stderr for s in says)
    assert folder_hashes(out) == before  # no checkpoint pruned or overwritten, no config rewritten


@slow
def test_old_checkpoint_of_another_model_is_not_called_damaged(mnist_dir, tiny_autoencoder_run, run_30, tmp_path):
    """Checkpoints saved before they recorded their options: the load itself finds the mismatch."""
    out = copy_run(run_30, tmp_path / "run")
    for state in out.glob("checkpoint-*/training_state.json"):
        state.write_text(json.dumps({"global_step": json.loads(state.read_text())["global_step"]}))
    before = folder_hashes(out)
    args = ddpm_args(mnist_dir, tiny_autoencoder_run, out, steps=40,
                     extra=["--checkpoints_total_limit", "1", "--unet.block_out_channels", "[64, 128]"])
    res = run_script("train_latent_ddpm.py", args + ["--resume_from_checkpoint", "latest"], check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    (line,) = error_lines(res)
    assert "checkpoint-30 does not fit this run's model" in line and "damaged" not in res.stdout + res.stderr
    after = folder_hashes(out)
    after.pop("training_config.yaml"), before.pop("training_config.yaml")  # written before the load could tell
    assert after == before


def tensorboard_scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events in sorted((folder / "logs").rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return values


@slow
def test_a_new_learning_rate_and_more_steps_take_effect_on_resume(mnist_dir, tiny_autoencoder_run, run_30, tmp_path):
    import torch
    import yaml
    from diffusers.optimization import get_scheduler

    out = copy_run(run_30, tmp_path / "run")
    config = yaml.safe_load((out / "training_config.yaml").read_text())
    res = run_script("train_latent_ddpm.py", ddpm_args(mnist_dir, tiny_autoencoder_run, out, steps=40, extra=[
        "--learning_rate", "1e-2", "--resume_from_checkpoint", "latest", "--skip_figures"]))
    log = res.stdout + res.stderr
    assert "resumed from" in log and config["learning_rate"] != 1e-2
    # diffusers' warnings about rebuilding a UNet from the EMA folder's config are gone from resumes
    assert "were passed to UNet2DModel, but are not expected" not in log and "`from_config`" not in log
    assert yaml.safe_load((out / "training_config.yaml").read_text())["learning_rate"] == 1e-2
    # The schedule this run follows from step 30: a 40-step schedule of the new peak rate.
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-2)
    sched = get_scheduler(config["lr_scheduler"], opt, num_warmup_steps=config["lr_warmup_steps"], num_training_steps=40)
    want = {}
    for step in range(1, 41):
        opt.step()
        sched.step()
        want[step] = sched.get_last_lr()[0]
    logged = tensorboard_scalars(out, "lr")
    assert logged[35] == pytest.approx(want[35], rel=1e-5) and logged[40] == pytest.approx(want[40], rel=1e-5)
    # ...and a skipped figure step leaves no pictures, only the model
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file() and not (out / "samples.png").exists()


@slow
def test_one_run_per_folder_and_a_stale_lock_is_taken_over(mnist_dir, tiny_autoencoder_run, tmp_path):
    out = tmp_path / "shared"
    # long enough (tens of seconds) to still hold the folder when the second run has started up
    args = ddpm_args(mnist_dir, tiny_autoencoder_run, out, steps=600,
                     extra=["--skip_figures", "--checkpointing_steps", "200"])
    first = subprocess.Popen([sys.executable, str(REPO / "train_latent_ddpm.py"), *args], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = out / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip() == str(first.pid)):
        time.sleep(0.05)
    second = run_script("train_latent_ddpm.py", args, check=False)
    output, _ = first.communicate(timeout=900)  # a CI run on loaded cores took over 300 s
    assert first.returncode == 0, output[-2000:]
    assert second.returncode == 2 and "Traceback" not in second.stderr
    (line,) = error_lines(second)
    assert f"is in use by another run (process {first.pid})" in line
    steps = [int(r.split(",")[0]) for r in (out / "loss.csv").read_text().split()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 600  # one run's rows, once each

    # A lock left by a run that died (its process is gone): taken over with a note.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{dead.pid}\n")
    res = run_script("train_latent_ddpm.py", args + ["--resume_from_checkpoint", "latest"])
    assert f"took over {lock} from process {dead.pid}" in res.stdout + res.stderr
    assert lock.read_text() == ""  # released at the end


def limited_file_size(limit):
    def limit_child():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_child


def run_limited(args, limit):
    return subprocess.run([sys.executable, str(REPO / "train_latent_ddpm.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, preexec_fn=limited_file_size(limit))


@slow
def test_a_full_disk_during_a_checkpoint_keeps_the_good_ones_and_resume_continues(mnist_dir, tiny_autoencoder_run,
                                                                                   run_30, tmp_path):
    out = copy_run(run_30, tmp_path / "run")
    shutil.rmtree(out / "checkpoint-30")  # as if the run had stopped at 20; its folder holds an older pipeline
    before = folder_hashes(out)
    weights = (out / "checkpoint-20" / "model.safetensors").stat().st_size
    args = ddpm_args(mnist_dir, tiny_autoencoder_run, out, steps=30,
                     extra=["--checkpoints_total_limit", "null", "--skip_figures", "--resume_from_checkpoint", "latest"])
    res = run_limited(args, weights // 2)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    (line,) = error_lines(res)
    assert f"could not write {out / 'checkpoint-30'}" in line and "MiB free on" in line
    assert f"the last good checkpoint {out / 'checkpoint-20'} is untouched" in line
    assert not list(out.glob(".tmp-*"))
    after = folder_hashes(out)
    for name in ("training_config.yaml", "loss.csv", ".lock"):
        after.pop(name, None), before.pop(name, None)
    assert after == before
    # Space again: the same command continues from checkpoint-20 and ends where the uninterrupted run did.
    run_script("train_latent_ddpm.py", args)
    assert_same_weights(unet_weights(out), unet_weights(run_30))


@slow
def test_a_full_disk_while_saving_the_pipeline_leaves_the_old_one_whole(mnist_dir, tiny_autoencoder_run, run_30,
                                                                        tmp_path):
    out = copy_run(run_30, tmp_path / "run")
    pipeline_files = {k: v for k, v in folder_hashes(out).items() if not k.startswith("checkpoint-")}
    weights = (out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    # 35 steps with no checkpoint due: the only big write is the pipeline.
    args = ddpm_args(mnist_dir, tiny_autoencoder_run, out, steps=35, extra=[
        "--checkpointing_steps", "100", "--skip_figures", "--resume_from_checkpoint", "latest"])
    res = run_limited(args, weights // 2)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    (line,) = error_lines(res)
    assert f"could not save the pipeline to {out}" in line and "MiB free on" in line
    assert not list(out.glob(".tmp-*"))
    now = {k: v for k, v in folder_hashes(out).items() if not k.startswith("checkpoint-")}
    for name in ("training_config.yaml", "loss.csv", ".lock"):
        now.pop(name, None), pipeline_files.pop(name, None)
    assert now == pipeline_files


@slow
def test_a_leftover_temporary_folder_never_blocks_a_run(mnist_dir, tiny_autoencoder_run, run_30, tmp_path):
    out = copy_run(run_30, tmp_path / "run")
    (out / ".tmp-checkpoint-40").mkdir()
    (out / ".tmp-checkpoint-40" / "model.safetensors").write_bytes(b"half")
    run_script("train_latent_ddpm.py", ddpm_args(mnist_dir, tiny_autoencoder_run, out, steps=40, extra=[
        "--checkpoints_total_limit", "null", "--skip_figures", "--resume_from_checkpoint", "latest"]))
    assert not list(out.glob(".tmp-*")) and (out / "checkpoint-40" / "model.safetensors").stat().st_size > 100


def pickle_weights(model_folder):
    """Replace a model folder's safetensors by a plain torch.save pickle of the same state dict."""
    import torch
    from safetensors.torch import load_file

    safetensors = model_folder / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(safetensors)), model_folder / "diffusion_pytorch_model.bin")
    safetensors.unlink()


@slow
def test_pickled_weights_are_refused_by_name(run_30, tiny_autoencoder_run, mnist_dir, tmp_path):
    from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline

    pipe_dir = copy_run(run_30, tmp_path / "pipe")
    pickle_weights(pipe_dir / "unet")
    with pytest.raises(ValueError, match=r"unet/diffusion_pytorch_model\.bin is a pickle"):
        LatentDDPMPipeline.from_pretrained(pipe_dir)
    res = subprocess.run([sys.executable, "-m", "pipeline.evaluate", "--pipeline", str(pipe_dir), "--num_samples",
                          "100", "--data_dir", str(mnist_dir)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = error_lines(res)
    assert "diffusion_pytorch_model.bin is a pickle" in line and "safetensors only" in line

    ae_dir = tmp_path / "ae"
    shutil.copytree(tiny_autoencoder_run, ae_dir, ignore=shutil.ignore_patterns("checkpoint-*", "logs"))
    pickle_weights(ae_dir)
    res = run_script("train_latent_ddpm.py", ddpm_args(mnist_dir, ae_dir, tmp_path / "x"), check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = error_lines(res)
    assert "holds only pickled weights (diffusion_pytorch_model.bin)" in line


@slow
def test_upload_later_sends_what_push_to_hub_sends(run_30):
    from pipeline.export import upload_plan

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "pipeline.export", "push", str(run_30), "someone/latent-digits"]
    res = subprocess.run(cmd + ["--dry_run"], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    listed = res.stdout.splitlines()[:-1]
    assert listed == upload_plan(run_30, "someone/latent-digits").files
    assert "model_index.json" in listed and not any(f.startswith(("checkpoint-", "logs/", ".")) for f in listed)
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = error_lines(res)
    assert line.startswith("error: upload to someone/latent-digits failed") and "hf auth login" in line
    res = subprocess.run([sys.executable, "-m", "pipeline.export", "push", str(run_30 / "unet"), "someone/x"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "not a complete pipeline folder" in res.stderr and "Traceback" not in res.stderr


def test_more_training_samples_than_the_dataset_says_how_many_were_used(capsys):
    import numpy as np
    from accelerate import Accelerator

    from pipeline.config import LatentDDPMTrainConfig, parse_config
    from pipeline.training import first_samples

    cfg = parse_config(LatentDDPMTrainConfig, ["--max_train_samples", "500"])
    images, labels = first_samples(Accelerator(cpu=True), cfg, np.zeros((300, 28, 28)), np.zeros(300))
    assert len(images) == len(labels) == 300
    assert "max_train_samples 500 is more than the 300 training images; using all 300" in capsys.readouterr().out
