"""The offline colour dataset: the npm package `emoji-datasource-google` 16.0.0 (3,781 Google Noto emoji,
64x64 RGBA, nine categories), fetched once with `npm pack`, checked against its sha256 and cached as an image
folder with a manifest that every use checks (`--dataset emoji-datasource-google`; pipeline/image_data.py reads it).
"""

import collections
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .errors import UserError
from .paths import cache_dir

log = logging.getLogger(__name__)
EMOJI = "emoji-datasource-google"
EMOJI_PACKAGE = "emoji-datasource-google@16.0.0"
EMOJI_SHA256 = "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"  # of the npm tarball


def fetch_emoji() -> Path:
    """The emoji as an image folder (one subfolder per category), fetched once with `npm pack` and checked."""
    folder = cache_dir("data", "emoji-datasource-google-16.0.0")
    problem = cache_problem(folder)
    if problem is None:
        return folder
    if (folder / MANIFEST).exists():
        print(f"note: the cached emoji in {folder} are damaged ({problem}); fetching them again", flush=True)
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
        manifest = json.dumps(dict(package=EMOJI_PACKAGE, sha256=EMOJI_SHA256, **folder_manifest(staging)), indent=1)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    (folder / MANIFEST).write_text(manifest + "\n")  # written last: its presence says the folder is complete
    log.info("cached %s as an image folder in %s", EMOJI_PACKAGE, folder)
    return folder


MANIFEST = ".complete"  # in a cached image folder: the image count per subfolder and a digest of every file


def folder_manifest(folder) -> dict:
    """{"counts": {subfolder: images}, "digest": sha256 over every file's relative path and bytes}."""
    h, counts = hashlib.sha256(), collections.Counter()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(folder).as_posix()
        counts[rel.split("/")[0]] += 1
        h.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return dict(counts=dict(sorted(counts.items())), digest=h.hexdigest())


def cache_problem(folder) -> str | None:
    """None if the cached folder matches the manifest written when it was made, else what is wrong, in words."""
    try:
        saved = json.loads((Path(folder) / MANIFEST).read_text())
        expected, digest = saved["counts"], saved["digest"]
    except FileNotFoundError:
        return "not fetched yet"
    except (OSError, ValueError, KeyError, TypeError):
        return "no manifest of its files, or a damaged one"
    found = folder_manifest(folder)
    if found["counts"] != expected:
        gone = [f"{k}: {found['counts'].get(k, 0)} of {n} images" for k, n in expected.items()
                if found["counts"].get(k, 0) != n]
        extra = [k for k in found["counts"] if k not in expected]
        return "; ".join(gone + [f"{k}: not in the manifest" for k in extra])
    if found["digest"] != digest:
        return "files changed since they were fetched"
    return None
