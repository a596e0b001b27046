"""A cheap fingerprint of a data folder, kept in every record, so a rerun can tell whether its data changed.

It reads no image: the number of files, their total size, and a hash of their relative names and
sizes (``os.stat`` only, a fraction of a second for the competition's 22,000 files). Hidden files
(carlib's extraction markers and locks, editors' litter) do not count, nor do modification times:
a copy of the same data elsewhere has the same fingerprint. A file edited to the same size is not
noticed; the fingerprint is a guard against a different or changed folder, not a checksum.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["data_fingerprint", "fingerprint_difference"]


def data_fingerprint(root: str | os.PathLike) -> dict[str, Any]:
    """``{"files", "bytes", "names_sha256"}`` of every visible file under ``root`` (followed through links)."""
    root = Path(root)
    entries = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            path = Path(folder) / name
            try:
                size = path.stat().st_size
            except OSError:  # a broken link or a file removed while walking: not part of the data
                continue
            entries.append((path.relative_to(root).as_posix(), size))
    digest = hashlib.sha256()
    for name, size in sorted(entries):
        digest.update(f"{name}\0{size}\n".encode())
    return {"files": len(entries), "bytes": sum(size for _, size in entries), "names_sha256": digest.hexdigest()}


def fingerprint_difference(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """How ``current`` differs from ``recorded``, in words (``None``: the same data)."""
    if recorded.get("names_sha256") == current.get("names_sha256"):
        return None
    parts = []
    if recorded.get("files") != current.get("files"):
        parts.append(f"{recorded.get('files')} files then, {current.get('files')} now")
    if recorded.get("bytes") != current.get("bytes"):
        parts.append(f"{recorded.get('bytes')} bytes then, {current.get('bytes')} now")
    return "; ".join(parts) or "the same number and size of files, but other names or sizes"
