"""The project's folders: its notebooks and parameter files (in a clone or inside an installed package),
and the default results store.

A clone (and an editable install) has ``notebooks/`` and ``params/`` next to ``carlib/``.
A wheel — ``pip install .``, ``pip install git+…`` on Colab — carries copies of both inside the
package (``carlib/_bundled/``, put there by ``setup.py`` at build time), so ``carlib sweep
params/lr_study/sweep-quick.yaml`` and ``carlib run --params params/final/quick.yaml`` work
from any folder: a path that does not exist where it is given is looked up there.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PROJECT_FOLDERS", "RESULTS_DIR_ENV", "checkout_root", "bundled_root", "project_roots",
           "resolve_project_file", "default_results_dir"]

PROJECT_FOLDERS = ("notebooks", "params")
RESULTS_DIR_ENV = "CARLIB_RESULTS_DIR"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # carlib/, where a wheel keeps _bundled/


def checkout_root() -> Path | None:
    """The clone carlib is imported from (editable install or source tree), or None for an installed wheel."""
    root = _PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and all((root / folder).is_dir() for folder in PROJECT_FOLDERS):
        return root
    return None


def bundled_root() -> Path:
    """Where a wheel keeps its copies of ``notebooks/`` and ``params/`` (absent in a clone)."""
    return _PACKAGE_DIR / "_bundled"


def project_roots() -> list[Path]:
    """The folders holding ``notebooks/`` and ``params/``: the clone's, then the package's bundled copies."""
    return [root for root in (checkout_root(), bundled_root()) if root is not None and root.is_dir()]


def resolve_project_file(path: str | os.PathLike) -> Path:
    """``path`` if it exists; else, for ``notebooks/…`` or ``params/…``, the project's own copy of it if there is one;
    else ``path`` unchanged, for the caller to report as missing."""
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute() or not given.parts or given.parts[0] not in PROJECT_FOLDERS:
        return given
    for root in project_roots():
        if (root / given).exists():
            return root / given
    return given


def default_results_dir() -> str:
    """The results store used when ``results_dir`` is not given.

    ``$CARLIB_RESULTS_DIR`` if set (the test suite uses it to keep notebook runs out of
    the source tree), else ``results`` under the current directory.
    """
    return os.environ.get(RESULTS_DIR_ENV) or "results"
