"""Screening image files before tf.data sees them: what can be decoded, what must be converted, what is junk.

A file that TensorFlow cannot decode stops a whole ``fit`` from inside tf.data, so every file
is checked first with PIL, cheaply: the header (format, mode, size, EXIF orientation) and,
for JPEGs, the end-of-image marker (a truncated file has none; only then is the file decoded,
at 1/8 scale, to decide). The verdict is cached per folder in carlib's cache, keyed by path,
size and modification time, so it is not redone every run.

Three outcomes per file:

- **usable as it is** (the fast path: ``tf.io.decode_image`` decodes it to the right RGB),
- **usable after conversion**: TensorFlow would decode it wrongly — EXIF-rotated photos
  (TensorFlow ignores the orientation tag), palette BMPs, formats it cannot read — so it is
  decoded once with PIL (:func:`decode_rgb`) into an RGB PNG in the cache, and that copy is
  what the pipeline reads;
- **unusable**, with the reason: empty, not an image, truncated or corrupt, an unsupported
  extension, hidden files and OS junk (``Thumbs.db``, ``.DS_Store``, ``__MACOSX/``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from carlib.base.files import atomic_path, atomic_write_text
from carlib.data.embedded import cache_root
from carlib.errors import DataError, DataWarning

__all__ = ["IMAGE_EXTENSIONS", "DataError", "DataWarning", "ImageInfo", "Screening", "skip_reason", "inspect_image",
           "screen_images", "decode_rgb", "converted_copy", "describe_files", "CHECK_CACHE_VERSION"]

# What tf.io.decode_image reads (TensorFlow 2.21 also reads WebP).
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
# Files that operating systems and archivers leave behind; never data.
OS_JUNK_NAMES = {"thumbs.db", "ehthumbs.db", ".ds_store", "desktop.ini", "icon\r"}
OS_JUNK_FOLDERS = {"__MACOSX", ".AppleDouble", ".Trashes", ".Spotlight-V100", ".fseventsd", "$RECYCLE.BIN"}
# Bump when the screening rules change: cached verdicts of an older version are redone.
CHECK_CACHE_VERSION = 1
# PIL formats and modes tf.io.decode_image turns into the right RGB (checked against PIL in
# tests/test_hostile_data.py); anything else is converted once with PIL.
_TF_DECODES = {
    "JPEG": {"L", "RGB", "CMYK"},
    "MPO": {"L", "RGB", "CMYK"},  # camera JPEGs with extra pictures: TensorFlow decodes the first
    "PNG": None,  # every PNG mode, 16-bit included (TensorFlow keeps the high byte)
    "GIF": None,
    "WEBP": None,
    "BMP": {"RGB", "RGBA"},  # TensorFlow ignores a BMP's palette: palette/8-bit BMPs decode as noise
}


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What screening found out about one file.

    ``reason`` is set when the file is unusable; ``convert`` says why a usable file is decoded
    with PIL (e.g. ``"EXIF orientation 6"``) instead of TensorFlow; ``sha1`` is filled in by
    the dataset check only.
    """

    path: str
    usable: bool
    reason: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    orientation: int | None = None
    convert: str | None = None
    size_bytes: int = 0
    sha1: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain fields, for caches and JSON reports."""
        return dataclasses.asdict(self)


def _supported_extensions() -> str:
    return ", ".join(sorted(IMAGE_EXTENSIONS))


def skip_reason(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str | None:
    """Why a file is never an image by its name alone (OS junk, hidden, extension), or None.

    ``root``: parts of the path above it (e.g. the data folder itself) are not judged.
    """
    path = Path(path)
    parts = path.relative_to(root).parts if root is not None else path.parts
    if any(part in OS_JUNK_FOLDERS for part in parts[:-1]):
        junk = next(part for part in parts[:-1] if part in OS_JUNK_FOLDERS)
        return f"OS junk (inside {junk}/)"
    name = path.name
    if name.lower() in OS_JUNK_NAMES or name.startswith("._"):
        return "OS junk file"
    if any(part.startswith(".") for part in parts[:-1]):
        return "inside a hidden folder"
    if name.startswith("."):
        return "hidden file"
    suffix = path.suffix.lower()
    if not suffix:
        return f"no file extension (images: {_supported_extensions()})"
    if suffix not in IMAGE_EXTENSIONS:
        return f"unsupported extension {suffix!r} (images: {_supported_extensions()})"
    return None


def _jpeg_ends_properly(path: Path, size: int) -> bool:
    # The end-of-image marker FF D9, possibly followed by padding or a trailer: look at the last KB.
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 1024))
        return b"\xff\xd9" in handle.read()


def inspect_image(path: str | os.PathLike) -> ImageInfo:
    """Check one image file with PIL (no cache): usable, how, or why not.

    Truncation is caught for JPEGs by the end marker (and a 1/8-scale decode when it is
    missing), for PNGs by PIL's chunk verification, for other formats by a full decode.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        return ImageInfo(str(path), False, f"unreadable: {err.strerror or err}")
    if size == 0:
        return ImageInfo(str(path), False, "empty file (0 bytes)")
    info: dict[str, Any] = {"path": str(path), "size_bytes": size}
    try:
        # PIL may warn (DecompressionBombWarning) but no warnings.catch_warnings here: this runs in worker
        # threads, and catch_warnings swaps process-wide state (it would swallow other threads' warnings).
        with Image.open(path) as image:
            info.update(format=image.format, mode=image.mode, width=image.width, height=image.height)
            orientation = image.getexif().get(0x0112)
            info["orientation"] = int(orientation) if isinstance(orientation, int) else None
            if image.format in ("JPEG", "MPO"):
                if not _jpeg_ends_properly(path, size):
                    image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
                    image.load()  # raises on truncation; a file with trailing bytes passes
            elif image.format != "PNG":
                image.load()
        if info["format"] == "PNG":
            with Image.open(path) as image:
                image.verify()  # chunk structure and CRCs, without decompressing (must follow open directly)
    except UnidentifiedImageError:
        return ImageInfo(str(path), False, "not an image file (PIL cannot identify its content)", size_bytes=size)
    except Image.DecompressionBombError as err:
        return ImageInfo(str(path), False, f"too large to decode safely ({err})", size_bytes=size)
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        details = {k: v for k, v in info.items() if k != "path"}
        return ImageInfo(str(path), False, f"truncated or corrupt image: {err}", **details)
    info["convert"] = _conversion_reason(info)
    return ImageInfo(usable=True, **info)


def _conversion_reason(info: dict[str, Any]) -> str | None:
    """Why TensorFlow's decoder would get this file wrong (so PIL decodes it), or None."""
    if info.get("orientation") not in (None, 1):
        return f"EXIF orientation {info['orientation']} (TensorFlow ignores it)"
    modes = _TF_DECODES.get(info["format"], set())
    if info["format"] not in _TF_DECODES:
        return f"{info['format']} format (TensorFlow cannot decode it)"
    if modes is not None and info["mode"] not in modes:
        return f"{info['format']} in mode {info['mode']} (TensorFlow decodes it wrongly)"
    return None


def decode_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode any image PIL reads into uint8 RGB (H, W, 3), honouring its EXIF orientation.

    Grayscale, palette, CMYK and alpha images become RGB as PIL's ``convert("RGB")`` makes them
    (alpha is dropped, as TensorFlow drops it); 16-bit images keep their high byte (value // 256), as
    TensorFlow scales them — PIL's own ``convert`` would clip every value above 255 to white.
    """
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            # The high byte, as TensorFlow's decoder scales 16-bit PNGs (PIL's convert() would clip at 255).
            gray = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=-1)
        if image.mode == "F":
            gray = np.clip(np.round(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=-1)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _file_key(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def converted_copy(path: str | os.PathLike) -> Path:
    """The RGB PNG copy of ``path`` decoded by :func:`decode_rgb`, made once in carlib's cache.

    Its name hashes the source's path, size and modification time, so an edited file gets a
    new copy; it is written to a temporary file and renamed, so parallel runs never see half a file.
    """
    path = Path(path).resolve()
    size, mtime = _file_key(path)
    digest = hashlib.sha1(f"{path}|{size}|{mtime}".encode()).hexdigest()[:20]
    target = cache_root() / "converted" / f"{digest}.png"
    if target.is_file():
        return target
    with atomic_path(target, suffix=".png") as temporary:
        Image.fromarray(decode_rgb(path)).save(temporary, "PNG", compress_level=1)
    return target


class _VerdictCache:
    """Screening verdicts of one folder's files, in ``<cache>/image-checks/<folder hash>.json``."""

    def __init__(self, folder: Path):
        digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]
        self.path = cache_root() / "image-checks" / f"{digest}.json"
        self.entries: dict[str, dict[str, Any]] = {}
        self.changed = False
        try:
            stored = json.loads(self.path.read_text())
            if stored.get("version") == CHECK_CACHE_VERSION and isinstance(stored.get("entries"), dict):
                self.entries = stored["entries"]
        except (OSError, ValueError, AttributeError):
            pass  # no cache yet, or a damaged one: screen again

    def get(self, path: Path, key: tuple[int, int], need_hash: bool) -> ImageInfo | None:
        entry = self.entries.get(str(path))
        if not entry or entry.get("key") != list(key) or (need_hash and not entry["info"].get("sha1")):
            return None
        return ImageInfo(**entry["info"])

    def put(self, path: Path, key: tuple[int, int], info: ImageInfo) -> None:
        self.entries[str(path)] = {"key": list(key), "info": info.to_dict()}
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        try:  # concurrent runs: the last writer wins, nothing is half-written
            atomic_write_text(self.path, json.dumps({"version": CHECK_CACHE_VERSION, "entries": self.entries}))
        except OSError:
            pass  # a read-only cache only costs a re-check next time


def _sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Screening:
    """The outcome of :func:`screen_images` for a list of files, in their order.

    ``usable``: the files to read (a converted copy where TensorFlow would decode the
    original wrongly), ``sources``: the original file of each, ``unusable``: (path, reason)
    pairs, ``converted``: original → copy, ``infos``: original → :class:`ImageInfo`.
    """

    usable: tuple[str, ...]
    sources: tuple[str, ...]
    unusable: tuple[tuple[str, str], ...]
    converted: dict[str, str]
    infos: dict[str, ImageInfo]


def screen_images(paths: Sequence[str | os.PathLike], *, with_hashes: bool = False,
                  workers: int | None = None) -> Screening:
    """Screen image files (cached per folder by path, size and mtime); convert the ones TensorFlow would get wrong.

    ``with_hashes`` also computes each file's SHA-1 (for duplicate detection). Files are
    inspected in ``workers`` threads (PIL releases the GIL while decoding).
    """
    paths = [Path(p) for p in paths]
    caches: dict[Path, _VerdictCache] = {}
    infos: dict[str, ImageInfo] = {}
    todo: list[tuple[Path, tuple[int, int] | None]] = []
    for path in paths:
        if path.parent not in caches:
            caches[path.parent] = _VerdictCache(path.parent)
        cache = caches[path.parent]
        try:
            key = _file_key(path)
        except OSError:
            key = None
        cached = cache.get(path, key, with_hashes) if key else None
        if cached is not None:
            infos[str(path)] = cached
        else:
            todo.append((path, key))

    def inspect(item: tuple[Path, tuple[int, int] | None]) -> ImageInfo:
        path, _ = item
        info = inspect_image(path)
        if with_hashes and info.size_bytes:
            try:
                info = dataclasses.replace(info, sha1=_sha1_of(path))
            except OSError:
                pass
        return info

    if todo:
        workers = workers or min(8, os.cpu_count() or 1)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for (path, key), info in zip(todo, pool.map(inspect, todo)):
                infos[str(path)] = info
                if key is not None:
                    caches[path.parent].put(path, key, info)
        for cache in caches.values():
            cache.save()
    usable, sources, unusable, converted = [], [], [], {}
    for path in paths:
        info = infos[str(path)]
        if not info.usable:
            unusable.append((str(path), info.reason or "unusable"))
            continue
        target = str(path)
        if info.convert:
            try:
                target = str(converted_copy(path))
            except (OSError, ValueError) as err:
                unusable.append((str(path), f"cannot be converted ({info.convert}): {err}"))
                continue
            converted[str(path)] = target
        usable.append(target)
        sources.append(str(path))
    return Screening(tuple(usable), tuple(sources), tuple(unusable), converted, infos)


def describe_files(items: Iterable[tuple[str, str]]) -> str:
    """``path (reason), path (reason), …`` for warnings and errors."""
    return ", ".join(f"{path} ({reason})" for path, reason in items)
