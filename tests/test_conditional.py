"""Class-conditional digits: label dropout in training, the guidance sweep of `python -m pipeline.evaluate`,
and the shipped configs (Fashion-MNIST, class-conditional), on CPU with tiny random models.

Random weights mean nothing for quality, so the sweep tests check files and formats, not numbers, and
they score with an untrained stand-in judge in a cache of their own (`stub_judge`): the real judge takes
a minute or more to train on two cores, and test_evaluate.py already runs the scorer with it.
Already covered elsewhere, so not repeated here: the conditional pipeline's count and shape per label
and CFG against a hand-written loop (test_pipeline.py), Fashion-MNIST from Debian's folder (test_data.py).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from pipeline.autoencoder import CABAutoencoder
from pipeline.classifier import ACCURACY_FILE, ARCHITECTURE, build_classifier
from pipeline.config import AutoencoderTrainConfig, DistillConfig, LatentDDPMTrainConfig, parse_config
from pipeline.errors import UserError
from pipeline.evaluate import evaluate_pipeline
from pipeline.judge_data import dataset_key
from pipeline.sampling import sample_images
from pipeline.export import save_pipeline_folder
from pipeline.guidance import cycling_labels, guidance_sweep, parse_scales
from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline
from pipeline import latent_training
from pipeline.schedulers import make_train_scheduler

from conftest import REPO

NULL_LABEL = 10
ROW_KEYS = {"guidance_scale": float, "class_accuracy": float, "per_class_accuracy": list, "fid": float,
            "precision": float, "recall": float, "kl_to_uniform": float, "mean_confidence": float,
            "class_histogram": list, "sampling_seconds": float}
FLOOR_KEYS = {"fid", "kid", "precision", "recall", "density", "coverage", "kl_to_uniform", "mean_confidence",
              "class_accuracy", "per_class_accuracy", "test_accuracy"}


def tiny_unet(num_class_embeds=None):
    return UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=num_class_embeds).eval()


def tiny_pipe(conditional=True):
    torch.manual_seed(0)
    autoencoder = CABAutoencoder(block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4, reduction=4)
    pipe = LatentDDPMPipeline(unet=tiny_unet(NULL_LABEL + 1 if conditional else None), autoencoder=autoencoder.eval(),
                              scheduler=make_train_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stub_judge(tmp_path_factory):
    """A cache root holding an untrained MNIST judge where get_classifier looks, so nothing trains one."""
    root = tmp_path_factory.mktemp("stub_judge_cache")
    folder = root / "judge" / ARCHITECTURE / dataset_key("ylecun/mnist")
    torch.manual_seed(0)
    build_classifier(channels=1, classes=10, size=28).eval().save_pretrained(folder)
    (folder / ACCURACY_FILE).write_text(json.dumps({"dataset": "ylecun/mnist", "test_accuracy": 0.1}))
    return root


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two saved pipeline folders, as training leaves them: class-conditional and unconditional."""
    root = tmp_path_factory.mktemp("pipelines")
    return {kind: save_pipeline_folder(tiny_pipe(kind == "conditional"), root / kind)
            for kind in ("conditional", "unconditional")}


def class_labels_seen(unet, calls):
    """Record the class_labels of every UNet call into `calls`; returns the hook handle."""
    return unet.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs["class_labels"]),
                                          with_kwargs=True)


def run_evaluate(*args, cache=None):
    # the environment carries HF_HUB_OFFLINE and conftest's private cache (or `cache`) into the child
    env = dict(os.environ, **({"LATENT_DIGITS_CACHE": str(cache)} if cache else {}))
    return subprocess.run([sys.executable, "-m", "pipeline.evaluate", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


# ----------------------------------------------------------------------------- training: label dropout

@pytest.mark.parametrize("class_dropout", [0.3, 0.0])
def test_loss_fn_drops_labels_at_the_configured_rate(class_dropout):
    script = latent_training
    cfg = parse_config(LatentDDPMTrainConfig, ["--conditioning", "class", "--class_dropout", str(class_dropout)])
    unet = tiny_unet(NULL_LABEL + 1)
    n = 2000
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(1))
    seen = []
    hook = class_labels_seen(unet, seen)
    try:
        loss = script.loss_fn(cfg, make_train_scheduler(prediction_type=cfg.prediction_type), unet,
                              torch.randn(n, 4, 8, 8), labels, torch.Generator().manual_seed(2))
    finally:
        hook.remove()
    assert torch.isfinite(loss)
    (got,) = seen
    dropped = got == NULL_LABEL
    assert torch.equal(got[~dropped], labels[~dropped])  # every label kept is the one given
    if class_dropout == 0:
        assert not dropped.any()
    else:  # binomial(2000, 0.3): standard deviation of the fraction ~0.01
        assert abs(dropped.float().mean().item() - class_dropout) < 0.04
        for digit in range(10):  # dropped regardless of the class
            assert 0.15 < dropped[labels == digit].float().mean().item() < 0.45


@pytest.mark.parametrize("balance", [0.0, 0.5, 1.0])
def test_class_balance_draws_rare_classes_as_often_as_asked(balance):
    """Imbalanced data (one class 80% of the images, as People and Body are 60% of the emoji): batches hold the
    classes in proportion to n**(1 - class_balance), the same for the same seed, and cover every image in turn
    when not balancing."""
    from pipeline.training import BatchOrder, class_weights

    labels = torch.tensor([0] * 800 + [1] * 150 + [2] * 50)
    cfg = parse_config(LatentDDPMTrainConfig, ["--conditioning", "class", "--class_balance", str(balance)])
    weights = class_weights(labels, cfg.class_balance) if cfg.class_balance else None
    order = BatchOrder(len(labels), 100, seed=3, weights=weights)
    drawn = torch.cat([order(step) for step in range(200)])  # 20 epochs of 10 batches
    share = torch.bincount(labels[drawn], minlength=3).double() / len(drawn)
    expected = torch.tensor([800.0, 150, 50], dtype=torch.float64).pow(1 - balance)
    assert torch.allclose(share, expected / expected.sum(), atol=0.02)
    assert torch.equal(drawn[:500], torch.cat([BatchOrder(len(labels), 100, seed=3, weights=weights)(s)
                                              for s in range(5)]))
    if balance == 0:
        assert torch.equal(drawn[:1000].sort().values, torch.arange(1000))  # an epoch is a permutation


@pytest.mark.parametrize("args, fix", [(["--conditioning", "class", "--class_balance", "1.5"], "[0, 1]"),
                                       (["--class_balance", "1"], "--conditioning class")])
def test_class_balance_out_of_range_or_unconditional_is_one_line(args, fix):
    with pytest.raises(UserError, match=fix.replace("[", r"\[").replace("]", r"\]")):
        parse_config(LatentDDPMTrainConfig, args)


def test_build_unet_has_the_null_label_only_when_conditional():
    script = latent_training
    autoencoder = CABAutoencoder(block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4, reduction=4)
    small = ["--unet.block_out_channels", "[8, 16]", "--unet.norm_num_groups", "4", "--unet.attention_head_dim", "8",
             "--unet.down_block_types", "[DownBlock2D, DownBlock2D]", "--unet.up_block_types", "[UpBlock2D, UpBlock2D]"]
    cond = parse_config(LatentDDPMTrainConfig, ["--conditioning", "class", *small])
    assert script.build_unet(cond, autoencoder).config.num_class_embeds == NULL_LABEL + 1
    assert script.build_unet(parse_config(LatentDDPMTrainConfig, small), autoencoder).config.num_class_embeds is None


# ----------------------------------------------------------------------------- sampling for the sweep

def test_sample_images_hands_out_labels_batch_by_batch():
    pipe = tiny_pipe()
    labels = cycling_labels(20, 10)
    assert np.bincount(labels).tolist() == [2] * 10  # every class equally often
    seen = []
    hook = class_labels_seen(pipe.unet, seen)
    try:
        images = sample_images(pipe, 20, 8, 1, seed=0, class_labels=labels, guidance_scale=3.0)
        assert images.shape == (20, 28, 28) and images.dtype == np.uint8
        assert [len(s) for s in seen] == [16, 16, 8]  # batches of 8, 8, 4; each doubled for guidance
        assert all((s[:len(s) // 2] == NULL_LABEL).all() for s in seen)  # the unconditional half
        assert torch.cat([s[len(s) // 2:] for s in seen]).tolist() == labels.tolist()

        seen.clear()  # scale 1: one conditional pass, no doubling
        sample_images(pipe, 20, 8, 1, seed=0, class_labels=labels, guidance_scale=1.0)
        assert torch.cat(seen).tolist() == labels.tolist()

        seen.clear()  # no labels (what plain evaluation does): unconditional samples of a conditional model
        again = sample_images(pipe, 20, 8, 1, seed=0)
        assert all((s == NULL_LABEL).all() for s in seen) and again.shape == (20, 28, 28)
    finally:
        hook.remove()


def test_scales_and_sample_counts_are_checked():
    assert parse_scales("3, 1,2,1") == [1.0, 2.0, 3.0]
    for bad in ("", "1,x", "-1", "nan"):
        with pytest.raises(UserError, match="comma list of numbers >= 0"):
            parse_scales(bad)
    with pytest.raises(UserError, match="multiple of 10.*use 50"):
        cycling_labels(45, 10)
    with pytest.raises(UserError, match="needs a class-conditional pipeline"):  # before any data or judge
        guidance_sweep(tiny_pipe(conditional=False), "unused", [1.0], num_samples=40)


# ----------------------------------------------------------------------------- the CLI, end to end

@pytest.mark.slow
def test_guidance_sweep_writes_json_png_and_a_table(saved, tmp_path, mnist_dir, stub_judge):
    proc = run_evaluate("--pipeline", saved["conditional"], "--guidance_scales", "1,3", "--num_samples", 40,
                        "--num_inference_steps", 2, "--device", "cpu", "--output_dir", tmp_path,
                        "--data_dir", mnist_dir, cache=stub_judge)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "class acc" in proc.stdout and "real data" in proc.stdout  # the table

    result = json.loads((tmp_path / "guidance.json").read_text())
    assert result["num_samples"] == 40 and result["num_inference_steps"] == 2 and result["scheduler"] == "sde-dpm"
    # real test images at the samples' class mix (the mean over classes), and the judge's recorded accuracy
    floor = result["floor"]
    assert set(floor) == FLOOR_KEYS and len(floor["per_class_accuracy"]) == 10 and floor["test_accuracy"] == 0.1
    assert floor["class_accuracy"] == pytest.approx(np.mean(floor["per_class_accuracy"]))
    assert [row["guidance_scale"] for row in result["scales"]] == [1.0, 3.0]
    for row in result["scales"]:
        for key, kind in ROW_KEYS.items():
            assert isinstance(row[key], kind), (key, row[key])
        assert 0 <= row["class_accuracy"] <= 1 and len(row["per_class_accuracy"]) == 10
        assert sum(row["class_histogram"]) == 40
    for name in ("guidance.png", "samples_guidance_1.png", "samples_guidance_3.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not (tmp_path / "metrics.json").exists()  # the sweep replaces the plain evaluation


def test_plain_evaluation_of_a_conditional_pipeline_scores_it_with_and_without_labels(tmp_path, mnist_dir, stub_judge,
                                                                                        monkeypatch):
    monkeypatch.setenv("LATENT_DIGITS_CACHE", str(stub_judge))
    pipe, calls = tiny_pipe(), []
    class_labels_seen(pipe.unet, calls)
    metrics = evaluate_pipeline(pipe, tmp_path, num_samples=20, num_inference_steps=2, batch_size=20,
                                data_dir=mnist_dir)
    assert sum(metrics["class_histogram"]) == 20 and (tmp_path / "metrics.json").is_file()
    # first the null label (what pipe() gives without labels), then the classes at the data's mix, unguided:
    # one UNet call of 20 per step, never the doubled batch of guidance
    null = [c for c in calls if (c == NULL_LABEL).all()]
    labelled = [c for c in calls if (c < NULL_LABEL).all()]
    assert len(null) == len(labelled) == 2 and len(calls) == 4 and all(len(c) == 20 for c in calls)
    assert torch.equal(labelled[0], labelled[1]) and len(labelled[0].unique()) > 3
    for key in ("fid", "kid", "precision", "recall", "density", "coverage"):
        assert isinstance(metrics[f"{key}_class_mix"], float), key
    assert metrics["fid_class_mix"] != metrics["fid"]
    assert (tmp_path / "samples_class_mix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    unconditional = evaluate_pipeline(tiny_pipe(conditional=False), tmp_path / "u", num_samples=20,
                                      num_inference_steps=2, batch_size=20, data_dir=mnist_dir)
    assert unconditional["fid_class_mix"] is None and not (tmp_path / "u" / "samples_class_mix.png").exists()


@pytest.mark.slow
def test_guidance_scales_on_an_unconditional_pipeline_is_one_line(saved, tmp_path):
    proc = run_evaluate("--pipeline", saved["unconditional"], "--guidance_scales", "1,3", "--num_samples", 40,
                        "--device", "cpu", "--output_dir", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --guidance_scales needs a class-conditional pipeline (trained with --conditioning class), "
        "but this one is unconditional; drop --guidance_scales"]
    assert not (tmp_path / "guidance.json").exists()


# ----------------------------------------------------------------------------- shipped configs

@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_is_valid(path):
    cls = AutoencoderTrainConfig if "autoencoder" in path.stem else LatentDDPMTrainConfig
    if path.stem.startswith("distill"):
        cls = DistillConfig
    cfg = parse_config(cls, ["--config", str(path)])
    others = {"fashion": ("zalando-datasets/fashion_mnist", "runs/fashion"),
              "emoji": ("emoji-datasource-google", "runs/emoji"), "cifar10": ("uoft-cs/cifar10", "runs/cifar10")}
    prefix = path.stem.split("_")[0]
    if prefix in others:
        dataset, runs = others[prefix]
        assert cfg.dataset == dataset and cfg.output_dir.startswith(runs)
        if cls is LatentDDPMTrainConfig:
            assert cfg.autoencoder.startswith(runs)  # never another dataset's latents
    else:
        assert cfg.dataset == "ylecun/mnist"
    if cls is LatentDDPMTrainConfig:
        colour = prefix in ("emoji", "cifar10")  # class-conditional on their categories
        assert cfg.conditioning == ("class" if "class" in path.stem or colour else "none")
