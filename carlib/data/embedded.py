"""Where the embedded synthetic dataset lives, and generating it on first use."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root", "embedded_data_dir", "ensure_embedded_data", "EMBEDDED_VERSION"]

# Bump when the generator changes what it draws, so caches of the old version are not reused.
EMBEDDED_VERSION = 1
CACHE_ENV = "CARLIB_CACHE"


def cache_root() -> Path:
    """carlib's cache folder: ``$CARLIB_CACHE``, else ``$XDG_CACHE_HOME/carlib``, else ``~/.cache/carlib``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "carlib"


def embedded_data_dir(seed: int = 0) -> Path:
    """The folder of the embedded dataset for ``seed`` (it may not exist yet)."""
    return cache_root() / f"embedded-v{EMBEDDED_VERSION}-seed{seed}"


def ensure_embedded_data(seed: int = 0) -> Path:
    """Generate the embedded dataset (competition layout: train.zip, test.zip, CSVs) unless cached."""
    from carlib.data.synthetic import generate_car_dataset  # deferred: OpenCV, only to generate the data

    out = embedded_data_dir(seed)
    if not (out / "sample-submission.csv").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        generate_car_dataset(out, seed=seed)
    return out
