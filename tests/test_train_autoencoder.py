"""train_autoencoder.py end to end, as a user runs it, on a small subset."""

import json

import pytest
import yaml

from conftest import run_script

pytestmark = pytest.mark.slow  # every test runs the script, killed or not


def test_autoencoder_run_leaves_a_complete_folder(tiny_autoencoder_run):
    out = tiny_autoencoder_run
    for name in ["config.json", "diffusion_pytorch_model.safetensors", "metrics.json", "reconstruction.png",
                 "tsne_batch.png", "tsne_test.png", "loss.png", "training_config.yaml"]:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 300 and 10 < metrics["psnr"] < 60 and 0 < metrics["ssim"] <= 1
    config = json.loads((out / "config.json").read_text())
    assert config["_class_name"] == "CABAutoencoder" and config["scaling_factor"] != 1.0
    assert yaml.safe_load((out / "training_config.yaml").read_text())["max_train_steps"] == 40
    steps, losses = zip(*[map(float, r.split(",")) for r in (out / "loss.csv").read_text().split()[1:]])
    assert steps[-1] == 40 and losses[-1] < 0.5 * losses[0], "the reconstruction loss must go down"
    assert list((out / "logs").rglob("events.out.tfevents*")), "TensorBoard logs missing"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-40"]
    t = json.loads((out / "timings.json").read_text())  # where the run's time went, phase by phase
    assert list(t["phases"]) == ["set-up", "data", "training", "scaling and saving", "test-split scores", "figures"]
    assert min(t["phases"].values()) >= 0 and sum(t["phases"].values()) == pytest.approx(t["total_seconds"])
    assert t["phases"]["training"] < t["model_saved_after_seconds"] < t["total_seconds"]


def test_scaled_latents_have_unit_variance(mnist_dir, tiny_autoencoder_run):
    import torch

    from pipeline.data import load_idx_dataset
    from pipeline.latent_cache import encode_images, load_autoencoder

    images, _ = load_idx_dataset("train", data_dir=mnist_dir)
    z = encode_images(load_autoencoder(tiny_autoencoder_run), images[:2000], "cpu")
    assert abs(z.std().item() - 1.0) < 0.1
    assert torch.isfinite(z).all()


def test_bad_input_is_one_line_error(tmp_path):
    res = run_script("train_autoencoder.py", ["--data_dir", str(tmp_path / "missing"), "--output_dir",
                                              str(tmp_path / "o")], check=False)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and "--data_dir" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_script("train_autoencoder.py", ["--learning_rat", "1"], check=False)
    assert res.returncode == 2 and "did you mean 'learning_rate'" in res.stderr and "Traceback" not in res.stderr


def test_kill_9_then_resume_ends_with_identical_weights(mnist_dir, tiny_autoencoder_run, tmp_path):
    from safetensors.torch import load_file

    from conftest import kill_9_once, tiny_ae_args

    out = tmp_path / "killed"
    args = tiny_ae_args(mnist_dir, out) + ["--checkpointing_steps", "10"]
    kill_9_once("train_autoencoder.py", args, out / "checkpoint-20")
    run_script("train_autoencoder.py", args + ["--resume_from_checkpoint", "latest"])
    name = "diffusion_pytorch_model.safetensors"
    a, b = load_file(str(out / name)), load_file(str(tiny_autoencoder_run / name))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (out / "loss.csv").read_text() == (tiny_autoencoder_run / "loss.csv").read_text()


def test_sigterm_once_the_model_is_saved_stops_at_once_and_keeps_it(mnist_dir, tmp_path):
    """After the save only scores and pictures are left (here a t-SNE of 10,000 latents, about half a
    minute): a stop signal must end the run then, not be swallowed by the training loop's handler."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO, tiny_ae_args
    from pipeline.latent_cache import load_autoencoder

    out = tmp_path / "ae"
    args = tiny_ae_args(mnist_dir, out, steps=2) + ["--max_eval_samples", "10000", "--tsne_num_points", "10000"]
    proc = subprocess.Popen([sys.executable, str(REPO / "train_autoencoder.py"), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (out / "diffusion_pytorch_model.safetensors").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert f"stopped by SIGTERM after the trained model was saved to {out}" in output and "Traceback" not in output
    assert not (out / "tsne_test.png").exists() and not (out / "timings.json").exists()
    assert load_autoencoder(out).config.scaling_factor != 1.0  # the saved model is whole
