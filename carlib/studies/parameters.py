"""Study parameters: every config parameter plus ``seeds``, read from a notebook's namespace or a YAML file.

Unknown names fail loudly with the closest valid ones, whether they come from papermill
(``-p learning_rate …``), a parameter file or the command line.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from carlib.base.project_files import resolve_project_file
from carlib.base.yaml_files import load_yaml_mapping
from carlib.config import PARAMETER_NAMES, check_known

__all__ = ["STUDY_PARAMETERS", "notebook_parameters", "load_params_file"]

STUDY_PARAMETERS: tuple[str, ...] = (*PARAMETER_NAMES, "seeds")


_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}
_SCALARS = (int, float, str, bool, type(None))


def _is_parameter_value(value: Any) -> bool:
    # Parameters are scalars or lists of scalars; results such as a list of records are not.
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, _SCALARS) for v in value)
    if isinstance(value, dict):  # e.g. an inline albumentations pipeline given with papermill -y
        return all(isinstance(k, str) for k in value)
    return isinstance(value, _SCALARS)


def notebook_parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The study parameters defined in a notebook's namespace (its ``parameters`` cell and papermill's injection).

    Every plain value (number, string, None, a list of those, a mapping) that is not private
    counts as a parameter, so a misspelt ``papermill -p learning_rate …`` fails loudly, with the closest
    valid names, instead of being ignored.
    """
    found = {k: v for k, v in namespace.items()
             if not k.startswith("_") and k not in _IPYTHON_NAMES and _is_parameter_value(v)}
    check_known(found, STUDY_PARAMETERS)
    return found


def load_params_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML parameter file safely; it must be a mapping of known parameter names.

    A missing ``params/…`` path is looked up among carlib's own parameter files (:mod:`carlib.base.project_files`).
    """
    params = load_yaml_mapping(resolve_project_file(path), "parameter file")
    check_known(params, STUDY_PARAMETERS)
    return params
