"""How a parameter's value reads to a person, in labels and messages (one rule for the summaries and the plots)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["shown_value"]


def shown_value(value: Any) -> str:
    """A parameter's value as a person wrote it: None where a table holds NaN (a ``weights: None`` run), floats
    short (``0.001``, ``1e-05``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "None"
    return f"{value:g}" if isinstance(value, float) else str(value)
