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
