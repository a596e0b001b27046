"""One atomic-write helper: readers see the old file or the whole new one; a failed write leaves nothing behind."""

from __future__ import annotations

import os

import pytest

from carlib.base.files import atomic_copy, atomic_path, atomic_write_text, current_umask, new_file_mode, new_folder_mode


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "record.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["record.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "record.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_the_temporary_file_is_hidden_next_to_the_target_with_the_suffix_asked_for(tmp_path):
    target = tmp_path / "epoch-0001.weights.h5"
    with atomic_path(target, suffix=".weights.h5") as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".epoch-0001.weights.h5.")
        assert temporary.name.endswith(".weights.h5")
        temporary.write_bytes(b"weights")
    assert target.read_bytes() == b"weights"


def test_the_content_is_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_copy(tmp_path / "a.txt", tmp_path / "b.txt")
    assert len(synced) == 2 and (tmp_path / "b.txt").read_text() == "x"


def test_the_umask_is_read_without_changing_it_with_or_without_proc(monkeypatch):
    expected = os.umask(0o022)
    os.umask(expected)
    assert current_umask() == expected
    assert new_file_mode() == 0o666 & ~expected and new_folder_mode() == 0o777 & ~expected
    real_open = open

    def no_proc(path, *args, **kwargs):  # a system without /proc/self/status (macOS, old kernels)
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
    assert current_umask() == expected
    assert os.umask(expected) == expected  # the fallback put it back
