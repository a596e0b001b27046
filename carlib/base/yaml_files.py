"""Reading the YAML files carlib is given (parameter files, sweep files): a mapping, or one clear error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from carlib.errors import ConfigError

__all__ = ["load_yaml_mapping"]


def load_yaml_mapping(path: str | os.PathLike, what: str = "parameter file") -> dict[str, Any]:
    """Read a YAML file safely; it must exist and hold a mapping (``what`` names it in errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping of names to values.")
    return data
