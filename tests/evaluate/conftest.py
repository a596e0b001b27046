"""Fixtures of the evaluation tests: files TensorFlow cannot decode, and a count of what TensorFlow reads."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest


@pytest.fixture
def undecodable_jpeg():
    """:func:`write_undecodable_jpeg`, for tests to call."""
    return write_undecodable_jpeg


def write_undecodable_jpeg(good: Path, out: Path) -> Path:
    """A copy of the JPEG ``good`` that PIL's screening passes but TensorFlow's decoder refuses.

    Its frame header names quantization table 3 for its first component, a table the file never
    defines: PIL reads the header (and the end-of-image marker is there), libjpeg stops with
    "Quantization table 0x03 was not defined".
    """
    data = bytearray(good.read_bytes())
    frame = data.index(b"\xff\xc0")  # SOF0: marker, length (2), precision, height (2), width (2), components, …
    data[frame + 12] = 3  # … then per component: id, sampling, quantization table
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(data))
    return out


@pytest.fixture
def tensorflow_reads(monkeypatch):
    """How many times TensorFlow reads each file (``tf.io.read_file``, eager or inside tf.data), by path."""
    import tensorflow as tf

    reads: collections.Counter[str] = collections.Counter()
    original = tf.io.read_file

    def note(path):
        reads[path.decode()] += 1
        return path

    def counting_read_file(filename, name=None):
        noted = tf.numpy_function(note, [filename], tf.string, stateful=True)
        noted.set_shape(())
        return original(noted, name=name)

    monkeypatch.setattr(tf.io, "read_file", counting_read_file)
    return reads
