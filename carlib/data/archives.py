"""Competition archives: one idempotent, traversal-safe extraction call (R1)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path, PurePosixPath

from carlib.base.files import atomic_write_text
from carlib.base.locks import exclusive_lock
from carlib.errors import ArchiveError, MissingFileError

__all__ = ["ArchiveError", "extract_archive"]

# OS junk that archives made on macOS/Windows carry; never extracted.
_JUNK_PARTS = {"__MACOSX"}
_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


def _unsafe_reason(name: str) -> str | None:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in posix.parts:
        return "climbs out of the destination with '..'"
    return None


def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p in _JUNK_PARTS for p in parts) or (parts and (parts[-1] in _JUNK_NAMES or parts[-1].startswith("._")))


def extract_archive(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Extract a zip archive into ``dest_dir`` once; later calls return at once.

    A marker file records the archive's size and modification time, so a changed archive is
    extracted again. Members with absolute paths or ``..`` are refused before anything is
    written, naming the member; OS junk (``__MACOSX/``, ``.DS_Store``, ``Thumbs.db``) is
    skipped. Returns ``dest_dir``.
    """
    archive = Path(archive)
    dest = Path(dest_dir)
    if not archive.is_file():
        raise MissingFileError(f"archive {str(archive)!r} does not exist.")
    dest.mkdir(parents=True, exist_ok=True)
    stat = archive.stat()
    fingerprint = {"archive": archive.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    marker = dest / f".carlib-extracted-{archive.name}.json"
    with exclusive_lock(dest / ".carlib-extract.lock"):  # two notebooks extracting at once
        if marker.is_file():
            try:
                if json.loads(marker.read_text()) == fingerprint:
                    return dest
            except ValueError:
                pass  # a corrupt marker: extract again
        try:
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                for info in members:
                    reason = _unsafe_reason(info.filename)
                    if reason:
                        raise ArchiveError(
                            f"refusing to extract {str(archive)!r}: member {info.filename!r} {reason}. "
                            "The archive is unsafe; nothing was extracted."
                        )
                for info in members:
                    if not _is_junk(info.filename):
                        zf.extract(info, dest)
        except zipfile.BadZipFile as err:
            raise ArchiveError(f"{str(archive)!r} is not a readable zip archive ({err}); download it again.") from None
        atomic_write_text(marker, json.dumps(fingerprint))
    return dest
