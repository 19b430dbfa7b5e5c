"""What real folders and real callers contain, through the real scripts: images of more than 8 bits, nested class
folders, files that are not images, string and missing labels, a column that holds no images, too few or too
small images, a damaged emoji cache, and the file modes of a saved model. Every refusal is one line on stderr,
exit 2, and leaves the output folder exactly as it was."""

import json
import os
import stat
import struct
import zlib

import numpy as np
import PIL.Image
import pytest

from conftest import REPO, run_script
from pipeline.errors import UserError
from pipeline.image_data import MIN_IMAGES, MIN_SIDE, DataOptions, load_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--autoencoder.block_out_channels", "[8, 16, 16]", "--autoencoder.layers_per_block", "1",
        "--autoencoder.norm_num_groups", "4", "--autoencoder.reduction", "4", "--train_batch_size", "4",
        "--checkpointing_steps", "100", "--logging_steps", "5", "--validation_steps", "5", "--num_threads", "1"]


def options(**kw):
    return DataOptions(**{"dataset": "none", **kw})


def snapshot(folder):
    """Every file under `folder` with its bytes and mode: what a refusal must leave alone."""
    if not folder.exists():
        return None
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mode)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(script, args, out) -> str:
    """Run `script` as a user would; it must refuse: exit 2, one line on stderr, nothing in `out` changed."""
    before = snapshot(out)
    res = run_script(script, args + ["--output_dir", str(out)], check=False, timeout=300)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    assert snapshot(out) == before
    return lines[0]


def png16(gray=None, rgb=None) -> bytes:
    """A 16-bit PNG written byte by byte: grayscale (H, W) or colour (H, W, 3) uint16."""
    a = gray if gray is not None else rgb
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 0 if gray is not None else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def square(i, size=16, mode="RGB"):
    a = np.full((size, size, 3), 40 * (i % 6), np.uint8)
    a[size // 4: 3 * size // 4, size // 4: 3 * size // 4, i % 3] = 255
    return PIL.Image.fromarray(a).convert(mode)


# ----------------------------------------------------------------------------- pixels of more than 8 bits

def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    gradient = np.tile(np.linspace(0, 65535, 16).round().astype(np.uint16), (16, 1))
    for i in range(MIN_IMAGES):
        (tmp_path / f"{i}.png").write_bytes(png16(gray=gradient))
    assert PIL.Image.open(tmp_path / "0.png").mode == "I;16"
    images = np.concatenate([load_images(s, options(train_data_dir=str(tmp_path))).images for s in ("train", "test")])
    assert images.shape[1:] == (16, 16)
    np.testing.assert_array_equal(images[0, 0], np.round(np.linspace(0, 255, 16)).astype(np.uint8))
    assert (images == 255).mean() == pytest.approx(1 / 16)  # the brightest column only, not 99.5% of the pixels


def test_16_bit_colour_and_32_bit_integer_and_float_grayscale_keep_their_range(tmp_path):
    colour = np.zeros((16, 16, 3), np.uint16)
    colour[..., 0], colour[..., 1] = 65535, 30000
    (tmp_path / "rgb").mkdir()
    (tmp_path / "int").mkdir()
    for i in range(MIN_IMAGES):
        (tmp_path / "rgb" / f"{i}.png").write_bytes(png16(rgb=colour))
        PIL.Image.fromarray(np.full((16, 16), 30000, np.int32)).save(tmp_path / "int" / f"{i}.tif")
    rgb = load_images("train", options(train_data_dir=str(tmp_path / "rgb"))).images
    assert rgb.shape[1] == 3 and rgb[0, 0].min() == 255 and rgb[0, 1].max() == round(30000 / 257)
    gray = load_images("train", options(train_data_dir=str(tmp_path / "int"))).images
    assert (gray == round(30000 / 257)).all()


def test_a_mode_that_cannot_be_read_faithfully_is_one_line_naming_the_file(tmp_path):
    for i in range(MIN_IMAGES):
        PIL.Image.fromarray(np.full((16, 16), 7.5 if i == 3 else 0.5, np.float32)).save(tmp_path / f"{i}.tif")
    with pytest.raises(UserError, match=r"3\.tif .*mode F with values from 7\.5 to 7\.5 cannot be read as an image "
                                        "faithfully.*save it as 8- or 16-bit PNG"):
        for split in ("train", "test"):
            load_images(split, options(train_data_dir=str(tmp_path)))


# ----------------------------------------------------------------------------- labels from folders

def test_nested_class_folders_keep_their_labels_and_the_rule_is_said(tmp_path, capsys):
    for i in range(12):
        cls = "cats" if i % 2 else "dogs"
        sub = tmp_path / cls / ("indoor" if i % 3 else "outdoor") / ("deep" if i % 4 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        square(i).save(sub / f"{i}.png")
    (tmp_path / "cats" / "drawing.svg").write_text("<svg/>")
    (tmp_path / ".hidden.png").write_bytes(b"not looked at")
    train = load_images("train", options(train_data_dir=str(tmp_path)))
    test = load_images("test", options(train_data_dir=str(tmp_path)))
    assert train.class_names == ["cats", "dogs"] and len(train.labels) + len(test.labels) == 12
    assert np.bincount(np.concatenate([train.labels, test.labels])).tolist() == [6, 6]
    out = capsys.readouterr().out
    assert out.count("12 images in 2 classes (cats, dogs: each image's class is the top-level subfolder it lies in, "
                     "at any depth); skipped 1 file(s) that are not images (cats/drawing.svg)") == 1  # said once


def test_the_training_script_says_what_it_found_and_keeps_nested_labels_of_16_bit_images(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 16).round().astype(np.uint16), (16, 1))
    for i in range(12):
        sub = tmp_path / "pics" / ("light" if i % 2 else "dark") / "scans" / f"batch{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i}.png").write_bytes(png16(gray=ramp if i % 2 else ramp // 4))
    (tmp_path / "pics" / "light" / "README.svg").write_text("<svg/>")
    out = tmp_path / "ae"
    res = run_script("train_autoencoder.py", ["--train_data_dir", str(tmp_path / "pics"), "--output_dir", str(out),
                                              "--max_train_steps", "2", "--skip_figures", "true", *TINY])
    assert (f"--train_data_dir {tmp_path / 'pics'}: 12 images in 2 classes (dark, light: each image's class is the "
            "top-level subfolder it lies in, at any depth); skipped 1 file(s) that are not images "
            "(light/README.svg)") in res.stdout
    record = json.loads((out / "data.json").read_text())
    assert record["labelled"] and record["class_names"] == ["dark", "light"] and record["channels"] == 1


def test_one_class_folder_and_loose_images_are_unlabelled_with_the_reason(tmp_path, capsys):
    (tmp_path / "one" / "only").mkdir(parents=True)
    (tmp_path / "mixed" / "a").mkdir(parents=True)
    (tmp_path / "mixed" / "b").mkdir()
    for i in range(MIN_IMAGES):
        square(i).save(tmp_path / "one" / "only" / f"{i}.png")
        square(i).save(tmp_path / "mixed" / ("a", "b", ".")[i % 3] / f"{i}.png")
    assert load_images("train", options(train_data_dir=str(tmp_path / "one"))).labels is None
    assert load_images("train", options(train_data_dir=str(tmp_path / "mixed"))).labels is None
    out = capsys.readouterr().out
    assert "10 images, unlabelled (one class subfolder (only): labels need two or more)" in out
    assert "10 images, unlabelled (3 images lie directly in the folder, beside the subfolders" in out


# ----------------------------------------------------------------------------- labels from columns

def parquet(root, labels, image_column=None, n=None):
    """A one-split Parquet dataset: `img` images and a `label` column of the given values."""
    import datasets

    root.mkdir(parents=True, exist_ok=True)
    n = n or len(labels)
    rows = dict(img=[square(i) for i in range(n)], label=list(labels), number=list(range(n)))
    features = datasets.Features(img=datasets.Image(), number=datasets.Value("int64"),
                                 label=labels.feature if hasattr(labels, "feature") else datasets.Value("string"))
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / "train.parquet"))
    return root


def test_string_labels_become_sorted_classes_usable_by_name(tmp_path):
    root = parquet(tmp_path / "colours", ["red", "blue", "green"] * 10)
    train = load_images("train", options(dataset=str(root), label_column="label"))
    test = load_images("test", options(dataset=str(root), label_column="label"))
    assert train.class_names == test.class_names == ["blue", "green", "red"]
    both = np.concatenate([train.labels, test.labels])
    assert sorted(np.bincount(both).tolist()) == [10, 10, 10]
    assert load_images("train", options(dataset=str(root), label_column="none")).labels is None


@pytest.mark.slow
def test_string_labels_train_a_class_conditional_pipeline_that_takes_the_names(tmp_path):
    from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline

    root = parquet(tmp_path / "colours", ["red", "blue", "green"] * 10)
    ae, run = tmp_path / "ae", tmp_path / "pipe"
    res = run_script("train_autoencoder.py", ["--dataset", str(root), "--label_column", "label", "--output_dir", str(ae),
                                              "--max_train_steps", "4", "--tsne_num_points", "10", *TINY])
    assert json.loads((ae / "data.json").read_text())["class_names"] == ["blue", "green", "red"], res.stdout
    run_script("train_latent_ddpm.py", [
        "--config", str(REPO / "configs/latent_ddpm_class_quick.yaml"), "--dataset", str(root), "--label_column",
        "label", "--autoencoder", str(ae), "--output_dir", str(run), "--max_train_steps", "3", "--train_batch_size", "4",
        "--checkpointing_steps", "100", "--num_inference_steps", "2", "--eval_num_samples", "0", "--skip_figures",
        "true", "--num_threads", "1"])
    pipe = LatentDDPMPipeline.from_pretrained(run)
    assert pipe.class_names == ["blue", "green", "red"] and pipe.unet.config.num_class_embeds == 4
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=["red", "blue"], num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 16, 16, 3)


class WithFeature(list):
    feature = None


def test_missing_labels_are_one_line_with_their_count_and_the_fix(tmp_path):
    import datasets

    labels = WithFeature([0, 1, None, 1, None] * 4)
    labels.feature = datasets.ClassLabel(names=["a", "b"])
    root = parquet(tmp_path / "holes", labels)
    line = refused("train_autoencoder.py", ["--dataset", str(root), "--max_train_steps", "2", *TINY], tmp_path / "ae")
    assert "8 of 20 rows of --dataset" in line and "have no label in column label" in line
    assert "drop those rows, or train without labels with --label_column none" in line
    strings = parquet(tmp_path / "strings", ["x", None] * 10)
    line = refused("train_autoencoder.py", ["--dataset", str(strings), "--label_column", "label",
                                            "--max_train_steps", "2", *TINY], tmp_path / "ae")
    assert "10 of 20 rows" in line


def test_a_column_without_images_is_one_line(tmp_path):
    root = parquet(tmp_path / "numbers", ["x"] * 12)
    line = refused("train_autoencoder.py", ["--dataset", str(root), "--image_column", "number",
                                            "--max_train_steps", "2", *TINY], tmp_path / "ae")
    assert "--image_column number of --dataset" in line and "holds Value('int64'" in line
    assert "pass a column of images (img)" in line


# ----------------------------------------------------------------------------- the least the system takes

def test_too_few_and_too_small_images_are_refused_before_anything_is_written(tmp_path):
    (tmp_path / "one").mkdir()
    square(0).save(tmp_path / "one" / "0.png")
    out = tmp_path / "runs" / "ae"
    line = refused("train_autoencoder.py", ["--train_data_dir", str(tmp_path / "one"), *TINY], out)
    assert f"holds 1 image(s), fewer than the {MIN_IMAGES} the system needs" in line
    assert not out.exists()

    (tmp_path / "dots").mkdir()
    for i in range(10):
        PIL.Image.new("RGB", (1, 1), (i * 20, 0, 0)).save(tmp_path / "dots" / f"{i}.png")
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")  # a folder the user already has: left exactly as it was
    line = refused("train_autoencoder.py", ["--train_data_dir", str(tmp_path / "dots"), *TINY], out)
    assert f"are 1x1 pixels, smaller than the {MIN_SIDE}x{MIN_SIDE} the models take" in line
    assert f"--resolution {MIN_SIDE}" in line


def test_a_batch_larger_than_the_data_is_refused_before_the_latent_run_writes(tmp_path, tiny_autoencoder_run,
                                                                               mnist_dir):
    out = tmp_path / "ddpm"
    line = refused("train_latent_ddpm.py", [
        "--config", str(REPO / "configs/latent_ddpm_quick.yaml"), "--autoencoder", str(tiny_autoencoder_run),
        "--data_dir", str(mnist_dir), "--max_train_samples", "16", "--train_batch_size", "32"], out)
    assert "train_batch_size 32 x 1 processes exceeds the 16 training items" in line and not out.exists()


# ----------------------------------------------------------------------------- saved files

def test_saved_weights_follow_the_umask_like_the_configs(tiny_autoencoder_run):
    mask = os.umask(0)
    os.umask(mask)
    wanted = 0o666 & ~mask
    for name in ("diffusion_pytorch_model.safetensors", "config.json"):
        assert stat.S_IMODE((tiny_autoencoder_run / name).stat().st_mode) == wanted, name
    for weights in tiny_autoencoder_run.glob("checkpoint-*/model.safetensors"):
        assert stat.S_IMODE(weights.stat().st_mode) == wanted


# ----------------------------------------------------------------------------- the emoji cache

@pytest.mark.slow
def test_a_damaged_emoji_cache_is_fetched_again_with_a_note(capsys):
    """Needs npm and its registry, as the emoji themselves do."""
    import shutil

    from pipeline.emoji import cache_problem, fetch_emoji

    folder = fetch_emoji()
    counts = json.loads((folder / ".complete").read_text())["counts"]
    assert len(counts) == 9 and sum(counts.values()) == 3781 and cache_problem(folder) is None
    shutil.rmtree(folder / "Flags")  # a category gone, its manifest left in place
    assert cache_problem(folder) == "Flags: 0 of 270 images"
    assert fetch_emoji() == folder and cache_problem(folder) is None
    assert "note: the cached emoji in" in capsys.readouterr().out and len(list((folder / "Flags").iterdir())) == 270
    victim = next((folder / "Objects").iterdir())
    victim.write_bytes(victim.read_bytes()[:-1])  # one file changed, the counts the same
    assert cache_problem(folder) == "files changed since they were fetched"


@pytest.mark.slow
def test_the_floor_table_of_a_run_folder_uses_that_runs_data(tmp_path, capsys):
    """python -m pipeline.metrics --pipeline RUN without --dataset: the folder's own data and judge, not MNIST's."""
    from test_image_data import separable_colours

    from pipeline.metrics import main

    root = separable_colours(tmp_path / "squares")
    ae = tmp_path / "ae"
    run_script("train_autoencoder.py", ["--dataset", str(root), "--output_dir", str(ae), "--max_train_steps", "4",
                                        "--skip_figures", "true", *TINY])
    capsys.readouterr()
    main(["--pipeline", str(ae), "--sizes", "20"])
    out = capsys.readouterr().out
    assert f"real-data floor of --dataset {root}" in out and "mnist" not in out and "warning" not in out
