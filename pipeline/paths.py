"""Where the project keeps things that are not in git: caches of data and models."""

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Root for data caches and the evaluation classifier; `$LATENT_DIGITS_CACHE` overrides.

    Lives outside the repo by default so several checkouts share one download.
    """
    root = Path(os.environ.get("LATENT_DIGITS_CACHE", Path.home() / ".cache" / "latent-digits"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def follow_umask(folder):
    """Give every file under `folder` the mode a plain open() would (0666 less the umask). Some writers (safetensors)
    create 0600 files, which a group or a container user cannot read beside the 0644 configs."""
    mask = os.umask(0)
    os.umask(mask)
    for top, _, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(top, name), 0o666 & ~mask)
