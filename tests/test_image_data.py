"""Any small-image dataset: image folders and Hub-style datasets (colour and grayscale), bad input, and a colour
pipeline trained end to end and loaded with plain diffusers. Real files only: PNGs and Parquet written here."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import UNet2DModel

from conftest import REPO, run_script
from pipeline.autoencoder import CABAutoencoder
from pipeline.errors import UserError
from pipeline.image_data import HOLDOUT_FRACTION, DataOptions, load_images
from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline
from pipeline.schedulers import make_scheduler, make_train_scheduler

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def options(**kw):
    return DataOptions(**{"dataset": "none", **kw})


def picture(mode, size, seed):
    """A small PIL image in `mode`: a coloured square on a plain ground (half transparent for RGBA)."""
    rng = np.random.default_rng(seed)
    a = np.zeros((size, size, 4), np.uint8)
    a[..., :3] = rng.integers(0, 256, 3)
    a[size // 4: 3 * size // 4, size // 4: 3 * size // 4, :3] = rng.integers(0, 256, 3)
    a[..., 3] = 255
    a[: size // 4, :, 3] = 0  # a transparent band for the modes that keep alpha
    im = PIL.Image.fromarray(a, "RGBA")
    return im.convert("P") if mode == "P" else im if mode == "RGBA" else im.convert(mode)


def colour_folder(root, n_per_class=8):
    """Two class folders of PNGs in four modes and three sizes, plus a file imagefolder ignores."""
    modes, sizes = ["RGB", "RGBA", "L", "P"], [16, 20, 16, 24, 16]  # 16x16 the most common
    for c, name in enumerate(["circles", "squares"]):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            picture(modes[i % 4], sizes[i % 5], 10 * c + i).save(root / name / f"{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_image_folder_labels_modes_and_holdout(tmp_path):
    folder = colour_folder(tmp_path / "pics")
    train = load_images("train", options(train_data_dir=str(folder)))
    test = load_images("test", options(train_data_dir=str(folder)))
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (3, 16, 16)  # most common size: 16
    assert train.class_names == ["circles", "squares"] and set(train.labels) <= {0, 1}
    assert len(test.images) == np.ceil(16 * HOLDOUT_FRACTION)  # datasets' train_test_split rounds the test part up
    assert len(train.images) + len(test.images) == 16 and "hold-out" in test.test_split
    again = load_images("test", options(train_data_dir=str(folder)))  # the hold-out is fixed
    np.testing.assert_array_equal(again.images, test.images)
    small = load_images("train", options(train_data_dir=str(folder)), resolution=8, channels=1)
    assert small.images.shape[1:] == (8, 8) and small.channels == 1


def test_rgba_is_composited_on_the_background(tmp_path):
    (tmp_path / "a").mkdir()
    im = PIL.Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    for i in range(10):
        im.save(tmp_path / "a" / f"{i}.png")
    white = load_images("train", options(train_data_dir=str(tmp_path), background="white")).images
    black = load_images("train", options(train_data_dir=str(tmp_path), background="black")).images
    assert white.min() == 255 and black.max() == 0


def test_grayscale_folder_gives_one_channel(tmp_path):
    (tmp_path / "x").mkdir()
    for i in range(10):
        picture("L", 12, i).save(tmp_path / "x" / f"{i}.png")
    data = load_images("train", options(train_data_dir=str(tmp_path)))
    assert data.images.shape[1:] == (12, 12) and data.channels == 1


def cifar_like(root, n=12):
    """A local dataset with CIFAR-10's schema (`img` Image, `label` ClassLabel) and its own test split, as Parquet."""
    import datasets

    features = datasets.Features(img=datasets.Image(), label=datasets.ClassLabel(names=["cat", "dog", "ship"]),
                                 note=datasets.Value("string"))
    for split in ("train", "test"):
        rows = dict(img=[picture("RGB", 32, i) for i in range(n)], label=[i % 3 for i in range(n)],
                    note=["x"] * n)
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / f"{split}.parquet"))
    return root


def test_hub_style_dataset_through_load_dataset(tmp_path):
    root = cifar_like(tmp_path / "cifar")
    data = load_images("test", options(dataset=str(root)))
    assert data.images.shape == (12, 3, 32, 32) and data.class_names == ["cat", "dog", "ship"]
    assert data.labels.tolist() == [i % 3 for i in range(12)] and data.test_split == "the dataset's own test split"
    ref = np.asarray(picture("RGB", 32, 5)).transpose(2, 0, 1)
    np.testing.assert_array_equal(data.images[5], ref)  # no resize at the native size: the pixels as stored
    with pytest.raises(UserError, match=r"--image_column photo: no such column .* columns: img, label, note"):
        load_images("train", options(dataset=str(root), image_column="photo"))
    with pytest.raises(UserError, match=r"--label_column fine: no such column .* columns: img, label, note"):
        load_images("train", options(dataset=str(root), label_column="fine"))


def test_empty_folders_and_corrupt_images_are_named(tmp_path):
    with pytest.raises(UserError, match=rf"{tmp_path / 'empty'} holds no images"):
        (tmp_path / "empty").mkdir()
        load_images("train", options(train_data_dir=str(tmp_path / "empty")))
    (tmp_path / "text" / "a").mkdir(parents=True)
    (tmp_path / "text" / "a" / "readme.txt").write_text("hello")
    with pytest.raises(UserError, match="holds no images"):
        load_images("train", options(train_data_dir=str(tmp_path / "text")))
    bad = colour_folder(tmp_path / "bad")
    (bad / "squares" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    errors = []
    for split in ("train", "test"):  # the broken file is in one of the two
        try:
            load_images(split, options(train_data_dir=str(bad)))
        except UserError as e:
            errors.append(str(e))
    assert len(errors) == 1 and "broken.png" in errors[0] and "cannot read the image" in errors[0]


def colour_pipe(class_names=("cats", "dogs")):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, num_class_embeds=len(class_names) + 1).eval()
    ae = CABAutoencoder(in_channels=3, sample_size=16, image_size=12, block_out_channels=(8, 16, 16),
                        layers_per_block=1, norm_num_groups=4, reduction=4).eval()
    pipe = LatentDDPMPipeline(unet=unet, autoencoder=ae, scheduler=make_scheduler("ddim", make_train_scheduler().config),
                              class_names=list(class_names))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_colour_pipeline_sizes_names_and_channel_errors():
    pipe = colour_pipe()
    out = pipe(class_labels=["dogs", "cats", 1], num_inference_steps=2, generator=torch.manual_seed(0), output_type="pt")
    assert out.images.shape == (3, 3, 12, 12)  # the padding (16 -> 12) cropped off
    by_index = pipe(class_labels=[1, 0, 1], num_inference_steps=2, generator=torch.manual_seed(0), output_type="pt")
    torch.testing.assert_close(out.images, by_index.images)
    pil = pipe(class_labels="cats", num_inference_steps=2, output_type="pil").images
    assert pil[0].mode == "RGB" and pil[0].size == (12, 12)
    with pytest.raises(ValueError, match=r"unknown class name\(s\) \['horses'\].*cats, dogs"):
        pipe(class_labels=["horses"], num_inference_steps=2)
    with pytest.raises(ValueError, match="holds 1-channel images .* makes 3-channel images"):
        pipe(image=np.zeros((2, 12, 12), np.uint8), strength=0.5, num_inference_steps=2)
    with pytest.raises(ValueError, match="holds 1-channel images but this pipeline makes 3-channel"):
        pipe(image=[PIL.Image.new("L", (12, 12))], strength=0.5, num_inference_steps=2)
    redrawn = pipe(image=np.zeros((2, 12, 12, 3), np.uint8), strength=0.5, num_inference_steps=2, output_type="np")
    assert redrawn.images.shape == (2, 12, 12, 3)
    gray = LatentDDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler,
                              autoencoder=CABAutoencoder(block_out_channels=(8, 16, 16), layers_per_block=1,
                                                         norm_num_groups=4, reduction=4))
    with pytest.raises(ValueError, match="holds 3-channel images .* makes 1-channel images"):
        gray(image=np.zeros((1, 3, 28, 28), np.float32), strength=0.5, num_inference_steps=2)


def test_resolution_the_models_cannot_halve_is_one_line(tmp_path):
    folder = colour_folder(tmp_path / "pics")
    res = run_script("train_autoencoder.py", ["--train_data_dir", str(folder), "--resolution", "20",
                                              "--output_dir", str(tmp_path / "run")], check=False)
    assert res.returncode == 2
    assert "--resolution 20 cannot be halved often enough" in res.stderr and "8, 16, 24, 32" in res.stderr
    res = run_script("train_autoencoder.py", ["--train_data_dir", str(tmp_path / "nowhere"),
                                              "--output_dir", str(tmp_path / "run2")], check=False)
    assert res.returncode == 2 and "is not a folder" in res.stderr and "Traceback" not in res.stderr


TINY = ["--autoencoder.block_out_channels", "[8, 16, 16]", "--autoencoder.layers_per_block", "1",
        "--autoencoder.norm_num_groups", "4", "--autoencoder.reduction", "4", "--train_batch_size", "4",
        "--checkpointing_steps", "100", "--logging_steps", "5", "--validation_steps", "10", "--num_threads", "1"]


@pytest.mark.slow
def test_colour_folder_end_to_end_loads_with_plain_diffusers(tmp_path):
    folder = colour_folder(tmp_path / "pics")
    ae, run = tmp_path / "ae", tmp_path / "pipe"
    run_script("train_autoencoder.py", ["--train_data_dir", str(folder), "--resolution", "16", "--output_dir", str(ae),
                                        "--max_train_steps", "10", "--tsne_num_points", "20", *TINY])
    record = json.loads((ae / "data.json").read_text())
    assert record["channels"] == 3 and record["image_size"] == 16 and "hold-out" in record["test_split"]
    assert json.loads((ae / "metrics.json").read_text())["num_images"] == 2
    run_script("train_latent_ddpm.py", [
        "--config", str(REPO / "configs/latent_ddpm_class_quick.yaml"), "--train_data_dir", str(folder),
        "--autoencoder", str(ae), "--output_dir", str(run), "--max_train_steps", "5", "--train_batch_size", "4",
        "--checkpointing_steps", "100", "--num_inference_steps", "2", "--eval_num_samples", "10", "--num_threads", "1"])
    assert json.loads((run / "model_index.json").read_text())["class_names"] == ["circles", "squares"]
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert "not_scored" in metrics and metrics["nn_distance"] > 0 and metrics["nn_distance_held_out"] > 0
    assert PIL.Image.open(run / "samples.png").mode == "RGB"
    scored = subprocess.run([sys.executable, "-m", "pipeline.evaluate", "--pipeline", str(run), "--num_samples", "10",
                             "--output_dir", str(tmp_path / "scores")], cwd=REPO, capture_output=True, text=True)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert f"dataset --train_data_dir {folder}, from" in scored.stdout and "mnist" not in scored.stdout
    code = textwrap.dedent(f"""
        import torch
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(run)!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(class_labels=["squares", "circles"], num_inference_steps=2, generator=torch.manual_seed(0)).images
        print(type(pipe).__module__, [(im.mode, im.size) for im in images])
    """)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "diffusers_modules.local.pipeline_latent_ddpm [('RGB', (16, 16)), ('RGB', (16, 16))]" in r.stdout


def test_unlabelled_folder_has_no_labels_and_too_small_a_hold_out_has_no_judge(tmp_path):
    from pipeline.judge_data import judge_for

    for i in range(10):  # images at the top of the folder: no class subfolders, no labels
        picture("RGB", 8, i).save(tmp_path / f"{i}.png")
    data = load_images("train", options(train_data_dir=str(tmp_path)))
    assert data.labels is None and data.class_names is None and data.images.shape[1:] == (3, 8, 8)
    labelled = colour_folder(tmp_path / "labelled")  # 16 images: a 10% hold-out of 2, too few to judge on
    ae = CABAutoencoder(in_channels=3, image_size=16, block_out_channels=(8, 16, 16), layers_per_block=1,
                        norm_num_groups=4, reduction=4)
    data, why_not = judge_for(options(train_data_dir=str(labelled)), "none", None, ae)
    assert data is None and "has 2 test images" in why_not and "at least 100" in why_not


def separable_colours(root, n_train=390, n_test=120, size=16):
    """CIFAR-10's schema with three classes a judge tells apart at a glance: a red, green or blue square at a
    random place on a dim noisy ground, each split its own Parquet file."""
    import datasets

    features = datasets.Features(img=datasets.Image(), label=datasets.ClassLabel(names=["red", "green", "blue"]))
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        images = []
        for i in range(n):
            a = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            y, x = rng.integers(0, size // 2, 2)
            a[y:y + size // 2, x:x + size // 2, i % 3] = 255
            images.append(PIL.Image.fromarray(a, "RGB"))
        rows = dict(img=images, label=[i % 3 for i in range(n)])
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / f"{split}.parquet"))
    return root


@pytest.mark.slow
def test_labelled_colour_dataset_gets_its_own_judge_fid_and_class_accuracy(tmp_path):
    from pipeline.classifier import classifier_dir
    from pipeline.evaluate import main as evaluate
    from pipeline.paths import cache_dir

    root = separable_colours(tmp_path / "squares")
    ae, run = tmp_path / "ae", tmp_path / "pipe"
    run_script("train_autoencoder.py", ["--dataset", str(root), "--output_dir", str(ae), "--max_train_steps", "10",
                                        "--tsne_num_points", "20", *TINY])
    run_script("train_latent_ddpm.py", [
        "--config", str(REPO / "configs/latent_ddpm_class_quick.yaml"), "--dataset", str(root),
        "--autoencoder", str(ae), "--output_dir", str(run), "--max_train_steps", "5", "--train_batch_size", "4",
        "--checkpointing_steps", "100", "--num_inference_steps", "2", "--eval_num_samples", "30",
        "--num_threads", "1"])
    # the judge was trained at the end of training, on these images at the pipeline's size and channels
    kind = classifier_dir("ylecun/mnist").parent.name + "-simclr"  # contrastive, with the labels
    judges = list(cache_dir("judge", kind).glob("squares-*-16px-3ch-white"))
    assert len(judges) == 1, list(cache_dir("judge").iterdir())
    record = json.loads((judges[0] / "accuracy.json").read_text())
    assert record["num_train"] == 390 and record["num_test"] == 120 and "data_digest" in record
    # the bar: a balanced accuracy halfway from chance (one in three) to 100%, reached with a training that scales
    # with the data: 100 epochs of the 390 images in batches of 256 would be 100 steps, so the least, 200
    assert abs(record["min_accuracy"] - 2 / 3) < 1e-9 and record["bar_on"] == "balanced_test_accuracy"
    assert record["balanced_test_accuracy"] >= record["min_accuracy"]
    low, high = record["balanced_test_accuracy_interval"]  # its 95% interval on the 120 test images
    assert low <= record["balanced_test_accuracy"] <= high and high - low > 0
    assert record["objective"] == "contrastive" and record["labelled"] and record["steps"] == 200

    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert "not_scored" not in metrics and metrics["fid"] > metrics["fid_floor"] > 0
    assert metrics["floor_num_samples"] == 30 and len(metrics["class_histogram"]) == 3
    assert metrics["classifier_accuracy"] == record["test_accuracy"]
    assert metrics["classifier_balanced_test_accuracy_interval"] == [low, high]
    guided = json.loads((run / "evaluation" / "guidance.json").read_text())
    assert guided["num_samples"] == 30 and guided["scales"][0]["guidance_scale"] == 1.5
    assert 0 <= guided["scales"][0]["class_accuracy"] <= 1
    # real images scored at the samples' class mix (equal numbers per class): the judge's balanced accuracy
    assert guided["floor"]["class_accuracy"] == pytest.approx(record["balanced_test_accuracy"])
    assert guided["floor"]["test_accuracy"] == record["test_accuracy"]
    card = (run / "README.md").read_text()
    assert "| class_accuracy |" in card and "| eval_guidance_scale | 1.5 |" in card
    assert "class_labels=['red', 'green', 'blue']" in card and "(N, 16, 16, 3)" in card
    assert "- class-conditional-image-generation" in card and "unconditional-image-generation" not in card and 'save("image.png")' in card

    recon = evaluate(["--pipeline", str(ae), "--num_samples", "120"])  # the autoencoder, scored by the same judge
    assert recon["num_images"] == 120 and recon["classifier_accuracy"] == record["test_accuracy"]
    assert recon["fid_reconstructed"] > recon["fid_floor"] and recon["floor_num_samples"] == 120
