"""`python -m pipeline.evaluate` end to end, as a user runs it, on a tiny untrained pipeline.

It checks the files and their formats, not sample quality (the model is random). The judge
classifier is trained by the first run into the session's private cache (conftest), so
running this file alone costs one classifier training; with test_metrics.py it is shared.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from pipeline.autoencoder import CABAutoencoder
from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline
from pipeline.schedulers import make_train_scheduler

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = {
    "fid": float, "fid_floor": float, "precision": float, "precision_floor": float, "recall": float,
    "recall_floor": float, "class_histogram": list, "kl_to_uniform": float, "kl_to_uniform_floor": float,
    "mean_confidence": float, "mean_confidence_floor": float, "num_samples": int, "scheduler": str,
    "num_inference_steps": int, "seed": int, "sampling_seconds": float, "images_per_second": float,
    "classifier_accuracy": float, "floor_num_samples": int, "fid_reconstructed": float,
    "precision_reconstructed": float, "recall_reconstructed": float, "kl_to_uniform_reconstructed": float,
    "mean_confidence_reconstructed": float, "kid": float, "kid_std": float, "kid_floor": float, "density": float,
    "density_floor": float, "coverage": float, "coverage_floor": float, "kid_reconstructed": float,
    "density_reconstructed": float, "coverage_reconstructed": float, "classifier_fingerprint": str,
    "classifier_architecture": str,
}


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    torch.manual_seed(0)
    autoencoder = CABAutoencoder(block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4, reduction=4)
    unet = UNet2DModel(sample_size=autoencoder.latent_size, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    path = tmp_path_factory.mktemp("tiny") / "pipeline"
    LatentDDPMPipeline(unet=unet, autoencoder=autoencoder, scheduler=make_train_scheduler()).save_pretrained(path)
    return path


def run_evaluate(*args):
    # the environment carries conftest's private cache and HF_HUB_OFFLINE into the child
    return subprocess.run([sys.executable, "-m", "pipeline.evaluate", *map(str, args)], cwd=REPO,
                          env=dict(os.environ), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_evaluate_writes_samples_and_metrics_reproducibly(tiny_pipeline, tmp_path, mnist_dir):
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        proc = run_evaluate("--pipeline", tiny_pipeline, "--num_samples", 64, "--num_inference_steps", 2,
                            "--batch_size", 24, "--scheduler", "ddpm", "--seed", 3, "--device", "cpu",
                            "--output_dir", out, "--data_dir", mnist_dir)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "FID" in proc.stdout  # the summary table
        outputs.append(out)

    a, b = outputs
    with np.load(a / "samples.npz") as za, np.load(b / "samples.npz") as zb:
        assert list(za.keys()) == ["images"]
        images = za["images"]
        assert images.shape == (64, 28, 28) and images.dtype == np.uint8
        assert np.array_equal(images, zb["images"])  # same seed => same digits, over several batches
        assert images.std() > 0  # not a blank image

    metrics = json.loads((a / "metrics.json").read_text())
    for key, kind in METRIC_KEYS.items():
        assert isinstance(metrics[key], kind), (key, metrics[key])
    assert metrics["num_samples"] == 64 and metrics["scheduler"] == "ddpm" and metrics["seed"] == 3
    assert len(metrics["class_histogram"]) == 10 and sum(metrics["class_histogram"]) == 64
    assert metrics["classifier_accuracy"] >= 0.99
    assert metrics["floor_num_samples"] == 64  # read against 64 real digits, which carry the same sample-size bias
    assert metrics["fid"] > 5 * metrics["fid_floor"]  # random weights make no digits
    # an untrained autoencoder cannot even pass real digits through: its ceiling is far from the floor
    assert metrics["fid_reconstructed"] > 5 * metrics["fid_floor"]
    assert "reconstructed" in proc.stdout  # the column in the printed table
    # random weights make no copies: their samples lie further from every training digit than real unseen digits
    assert metrics["nn_distance"] > metrics["nn_distance_held_out"] > 0 and "memorisation" in proc.stdout
    other = json.loads((b / "metrics.json").read_text())
    for key in ("fid", "precision", "recall", "class_histogram", "mean_confidence"):
        assert metrics[key] == other[key], key
    assert (a / "samples.png").stat().st_size > 0


@pytest.mark.slow
def test_evaluate_other_seed_and_scheduler(tiny_pipeline, tmp_path, mnist_dir):
    proc = run_evaluate("--pipeline", tiny_pipeline, "--num_samples", 16, "--num_inference_steps", 2,
                        "--scheduler", "unipc:solver_order=3", "--seed", 4, "--device", "cpu", "--output_dir", tmp_path,
                        "--data_dir", mnist_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["scheduler"] == "unipc:solver_order=3"
    with np.load(tmp_path / "samples.npz") as z:
        assert z["images"].shape == (16, 28, 28)


@pytest.mark.slow
def test_evaluate_user_errors_are_one_line(tmp_path):
    proc = run_evaluate("--pipeline", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --pipeline {tmp_path} is neither a LatentDDPMPipeline folder (model_index.json) nor a "
        f"CABAutoencoder folder (config.json); pass the output_dir of a training run"]
    proc = run_evaluate("--pipeline", tmp_path, "--num_samples", 0)
    assert proc.returncode == 2 and "--num_samples must be a positive integer" in proc.stderr
    proc = run_evaluate("--pipeline", tmp_path, "--scheduler", "dpm:solver_ordr=3")
    assert proc.returncode == 2 and "DPMSolverMultistepScheduler takes no option solver_ordr; did you mean solver_order?" in proc.stderr


@pytest.mark.slow
def test_evaluate_refuses_a_scheduler_that_repeats_timesteps_in_one_line(tiny_pipeline, tmp_path):
    """Karras sigmas on a cosine-schedule model: one line naming the fix, before the judge or any sampling."""
    from diffusers import DDPMScheduler

    cosine = tmp_path / "cosine"
    shutil.copytree(tiny_pipeline, cosine)
    DDPMScheduler.from_pretrained(cosine / "scheduler", beta_schedule="squaredcos_cap_v2").save_pretrained(
        cosine / "scheduler")
    proc = run_evaluate("--pipeline", cosine, "--scheduler", "dpm:use_karras_sigmas=true", "--num_inference_steps", 8,
                        "--num_samples", 16, "--device", "cpu", "--output_dir", tmp_path / "out")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: scheduler 'dpm:use_karras_sigmas=true' repeats timesteps")
    assert not (tmp_path / "out" / "samples.npz").exists()
    proc = run_evaluate("--pipeline", cosine, "--scheduler", "dpm:algorithm_type=foo", "--num_samples", 16,
                        "--device", "cpu", "--output_dir", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: scheduler 'dpm:algorithm_type=foo' cannot be built: foo is not implemented for "
        "<class 'diffusers.schedulers.scheduling_dpmsolver_multistep.DPMSolverMultistepScheduler'>; "
        "check its option values"]


@pytest.mark.slow
def test_a_missing_data_dir_fails_before_any_sampling(tiny_pipeline, tmp_path, mnist_dir):
    from pipeline.classifier import get_classifier
    from pipeline.metrics import get_reference

    # With the judge and its floor cached, nothing before the sampling reads --data_dir but the check for it.
    get_reference(data_dir=mnist_dir, classifier=get_classifier(data_dir=mnist_dir))
    proc = run_evaluate("--pipeline", tiny_pipeline, "--data_dir", tmp_path / "nope", "--num_samples", 16,
                        "--device", "cpu", "--output_dir", tmp_path / "out")
    assert proc.returncode == 2 and "sampled" not in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"error: --data_dir {tmp_path / 'nope'} does not exist; pass a folder holding the four MNIST IDX files"]


def test_the_judge_follows_the_dataset_the_folder_was_trained_on(tmp_path, capsys):
    """A Fashion-MNIST run scored without --dataset must get the Fashion judge, not MNIST's."""
    from huggingface_hub import ModelCard, ModelCardData

    from pipeline.judge_data import pick_dataset

    run = tmp_path / "run"
    run.mkdir()
    assert pick_dataset(run, None) == "ylecun/mnist"  # nothing says otherwise
    card = ModelCard.from_template(ModelCardData(datasets=["zalando-datasets/fashion_mnist"]), template_str="---\n{{ card_data }}\n---\n")
    card.save(run / "README.md")  # a folder from the Hub: only the model card says
    assert pick_dataset(run, None) == "zalando-datasets/fashion_mnist"
    (run / "training_config.yaml").write_text("seed: 0\ndataset: my/digits\n")  # training_config.yaml wins
    assert pick_dataset(run, None) == "my/digits"
    assert "dataset my/digits, from" in capsys.readouterr().out
    assert pick_dataset(run, "ylecun/mnist") == "ylecun/mnist"  # --dataset wins, with a warning
    assert "warning: --dataset ylecun/mnist, but" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_defaults_to_sde_dpm_solver_at_10_steps(tiny_pipeline, tmp_path, mnist_dir):
    """No --scheduler or --num_inference_steps: the measured best, even for a folder saved with DDPM."""
    proc = run_evaluate("--pipeline", tiny_pipeline, "--num_samples", 16, "--device", "cpu", "--output_dir", tmp_path,
                        "--data_dir", mnist_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["scheduler"], metrics["num_inference_steps"]) == ("sde-dpm", 10)
    assert "(sde-dpm, 10 steps)" in proc.stdout
