"""Archive extraction (idempotent, traversal-safe), the competition layout, class folders and the split."""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest

from carlib.data.archives import extract_archive
from carlib.data.folders import COMPETITION, list_class_images, prepare_data, stratified_split
from carlib.errors import ArchiveError

_LOCK_AND_MARKERS = (".carlib-extract.lock", ".carlib-extracted-")


def make_zip(path: Path, members: dict[str, bytes | str]) -> Path:
    """A zip holding ``members`` under exactly these names (``writestr`` keeps '..' and leading '/')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def written_files(root: Path) -> list[str]:
    """Files under ``root`` other than carlib's lock and markers, as sorted relative paths."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(_LOCK_AND_MARKERS)
    )


# --------------------------------------------------------------------- extraction
def test_extracts_members(tmp_path):
    archive = make_zip(tmp_path / "train.zip", {"train/0/a.jpg": b"aaa", "train/1/b.jpg": b"bb", "train/": b""})
    dest = tmp_path / "out"
    assert extract_archive(archive, dest) == dest
    assert written_files(dest) == ["train/0/a.jpg", "train/1/b.jpg"]
    assert (dest / "train/0/a.jpg").read_bytes() == b"aaa"
    assert (dest / "train/1/b.jpg").read_bytes() == b"bb"


def test_second_call_is_a_no_op_until_the_archive_changes(tmp_path):
    archive = make_zip(tmp_path / "data.zip", {"a.txt": "first", "b.txt": "b"})
    dest = tmp_path / "out"
    extract_archive(archive, dest)
    (dest / "a.txt").unlink()
    extract_archive(archive, dest)
    assert not (dest / "a.txt").exists()  # the marker matches: nothing re-extracted
    assert (dest / "b.txt").read_text() == "b"

    make_zip(archive, {"a.txt": "second version", "b.txt": "b2", "c.txt": "c"})
    os.utime(archive, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    extract_archive(archive, dest)
    assert (dest / "a.txt").read_text() == "second version"
    assert (dest / "b.txt").read_text() == "b2"
    assert (dest / "c.txt").read_text() == "c"


def test_touching_the_archive_extracts_again(tmp_path):
    archive = make_zip(tmp_path / "data.zip", {"a.txt": "x"})
    dest = tmp_path / "out"
    extract_archive(archive, dest)
    (dest / "a.txt").unlink()
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    extract_archive(archive, dest)
    assert (dest / "a.txt").read_text() == "x"


def test_marker_records_the_archive(tmp_path):
    archive = make_zip(tmp_path / "train.zip", {"a.txt": "x"})
    dest = tmp_path / "out"
    extract_archive(archive, dest)
    marker = json.loads((dest / ".carlib-extracted-train.zip.json").read_text())
    assert marker == {"archive": "train.zip", "size": archive.stat().st_size, "mtime_ns": archive.stat().st_mtime_ns}
    assert not list(dest.glob("*.tmp")) and not list(dest.glob(".*.tmp"))


def test_corrupt_marker_extracts_again(tmp_path):
    archive = make_zip(tmp_path / "train.zip", {"a.txt": "x"})
    dest = tmp_path / "out"
    extract_archive(archive, dest)
    (dest / "a.txt").unlink()
    (dest / ".carlib-extracted-train.zip.json").write_text("{not json")
    extract_archive(archive, dest)
    assert (dest / "a.txt").read_text() == "x"


def test_two_archives_into_one_folder_keep_separate_markers(tmp_path):
    train = make_zip(tmp_path / "train.zip", {"train/0/a.jpg": b"a"})
    test = make_zip(tmp_path / "test.zip", {"test_upload/1.jpg": b"t"})
    dest = tmp_path / "out"
    extract_archive(train, dest)
    extract_archive(test, dest)
    (dest / "train/0/a.jpg").unlink()
    extract_archive(train, dest)  # its own marker still matches
    assert not (dest / "train/0/a.jpg").exists()
    assert written_files(dest) == ["test_upload/1.jpg"]


def test_concurrent_extractions_of_one_archive(tmp_path):
    members = {f"train/{c}/{i}.jpg": os.urandom(2048) for c in range(3) for i in range(30)}
    archive = make_zip(tmp_path / "train.zip", members)
    dest = tmp_path / "out"
    errors = []

    def work():
        try:
            extract_archive(archive, dest)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert written_files(dest) == sorted(members)
    assert all((dest / name).read_bytes() == data for name, data in members.items())


@pytest.mark.parametrize(
    "evil",
    ["../evil.txt", "train/../../evil.txt", f"/tmp/carlib-evil-{uuid.uuid4().hex}.txt", "..\\evil.txt",
     "C:\\evil.txt", "C:/evil.txt"],
    # stable ids: the absolute path is unique per process, and pytest-xdist's workers must collect the same tests
    ids=["parent", "nested-parent", "absolute", "backslash-parent", "drive-backslash", "drive-slash"],
)
def test_unsafe_member_is_refused_and_nothing_is_written(tmp_path, evil):
    archive = make_zip(tmp_path / "src" / "bad.zip",
                       {"a.txt": "safe", "dir/b.txt": "safe too", evil: "gotcha", "z.txt": "after"})
    dest = tmp_path / "out" / "dest"
    with pytest.raises(ArchiveError) as err:
        extract_archive(archive, dest)
    message = str(err.value)
    assert repr(evil) in message
    assert "nothing was extracted" in message
    assert written_files(dest) == []  # not even the safe members
    assert not list(dest.glob(".carlib-extracted-*"))
    assert not (tmp_path / "out" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()
    if evil.startswith("/"):
        assert not Path(evil).exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [".carlib-extract.lock", "bad.zip"]
    with pytest.raises(ArchiveError):  # no marker was written: still refused on the next call
        extract_archive(archive, dest)


def test_os_junk_is_not_extracted(tmp_path):
    archive = make_zip(tmp_path / "train.zip", {
        "train/0/a.jpg": b"a",
        "__MACOSX/train/0/._a.jpg": b"resource fork",
        "__MACOSX/": b"",
        ".DS_Store": b"junk",
        "train/.DS_Store": b"junk",
        "train/0/Thumbs.db": b"junk",
        "train/desktop.ini": b"junk",
        "train/0/._b.jpg": b"fork",
    })
    dest = tmp_path / "out"
    extract_archive(archive, dest)
    assert written_files(dest) == ["train/0/a.jpg"]
    assert not (dest / "__MACOSX").exists()


def test_not_a_zip(tmp_path):
    bogus = tmp_path / "train.zip"
    bogus.write_text("<html>Kaggle login page</html>")
    with pytest.raises(ArchiveError) as err:
        extract_archive(bogus, tmp_path / "out")
    message = str(err.value)
    assert "not a readable zip" in message and str(bogus) in message


def test_truncated_zip(tmp_path):
    archive = make_zip(tmp_path / "train.zip", {f"{i}.txt": os.urandom(4096) for i in range(5)})
    archive.write_bytes(archive.read_bytes()[:3000])
    with pytest.raises(ArchiveError, match="not a readable zip"):
        extract_archive(archive, tmp_path / "out")


def test_missing_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.zip"):
        extract_archive(tmp_path / "missing.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_archive_error_is_a_value_error():
    assert issubclass(ArchiveError, ValueError)


# ---------------------------------------------------------------- prepare_data
def test_prepare_data_competition_layout(tiny_data_dir):
    layout = prepare_data(tiny_data_dir)
    root = Path(tiny_data_dir)
    assert layout.root == root
    assert layout.train_dir == root / "train"
    classes = sorted(p.name for p in layout.train_dir.iterdir() if p.is_dir())
    assert sorted(classes, key=int) == [str(i) for i in range(10)]
    assert sum(1 for _ in layout.train_dir.rglob("*.jpg")) == 80
    assert layout.test_dir == root / "test_upload"
    assert len(list(layout.test_dir.glob("*.jpg"))) == 20
    assert layout.sample_submission == root / "sample-submission.csv"

    again = prepare_data(str(tiny_data_dir))
    assert again == layout


def test_prepare_data_missing_folder(tmp_path):
    missing = tmp_path / "no-such-data"
    with pytest.raises(FileNotFoundError) as err:
        prepare_data(missing)
    message = str(err.value)
    assert str(missing) in message
    assert COMPETITION == "sf-dl-car-classification"
    assert "sf-dl-car-classification" in message
    assert "embedded" in message


def test_prepare_data_read_only_folder_extracts_into_cache(tiny_data_dir, tmp_path, monkeypatch):
    ro = tmp_path / "kaggle-input"
    ro.mkdir()
    for name in ("train.zip", "test.zip", "sample-submission.csv"):
        shutil.copy2(Path(tiny_data_dir) / name, ro / name)
    ro.chmod(0o555)
    real_access = os.access

    def access(path, mode, *args, **kwargs):  # running as root ignores permissions, so pretend
        if Path(path).resolve() == ro.resolve() and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    try:
        layout = prepare_data(ro)
        cache = Path(os.environ["CARLIB_CACHE"])
        assert layout.root == ro
        assert layout.train_dir.is_relative_to(cache)
        assert layout.train_dir.name == "train"
        assert len([p for p in layout.train_dir.iterdir() if p.is_dir()]) == 10
        assert layout.test_dir is not None and layout.test_dir.is_relative_to(cache)
        assert layout.test_dir.name == "test_upload"
        assert layout.sample_submission == ro / "sample-submission.csv"
        assert sorted(p.name for p in ro.iterdir()) == ["sample-submission.csv", "test.zip", "train.zip"]
        assert prepare_data(ro) == layout
    finally:
        ro.chmod(0o755)


def test_prepare_data_plain_class_folders(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        (tmp_path / "pets" / cls / "1.png").write_bytes(b"png")
    layout = prepare_data(tmp_path / "pets")
    assert layout.train_dir == tmp_path / "pets"
    assert layout.test_dir is None
    assert layout.sample_submission is None


def test_prepare_data_already_extracted(tmp_path):
    root = tmp_path / "data"
    (root / "train" / "0").mkdir(parents=True)
    (root / "train" / "0" / "a.jpg").write_bytes(b"x")
    (root / "test_upload").mkdir()
    make_zip(root / "train.zip", {"train/0/zzz.jpg": b"never extracted"})
    layout = prepare_data(root)
    assert layout.train_dir == root / "train"
    assert layout.test_dir == root / "test_upload"
    assert not (root / "train" / "0" / "zzz.jpg").exists()


def test_prepare_data_refuses_unsafe_competition_archive(tmp_path):
    root = tmp_path / "data"
    make_zip(root / "train.zip", {"train/0/a.jpg": b"x", "../../escape.jpg": b"x"})
    with pytest.raises(ArchiveError, match="escape.jpg"):
        prepare_data(root)
    assert not (root / "train").exists()


# ------------------------------------------------------------ list_class_images
def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


TINY_PNG = _tiny_png()  # listing screens every file: a decodable image (PIL and TensorFlow read PNG by content)


def touch(path: Path, data: bytes = TINY_PNG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_numeric_class_folders_sort_numerically(tmp_path):
    for cls in ("10", "2", "1", "0"):
        touch(tmp_path / cls / f"{cls}-a.jpg")
        touch(tmp_path / cls / f"{cls}-b.JPG")
    images = list_class_images(tmp_path)
    assert images.class_names == ("0", "1", "2", "10")
    assert len(images) == 8
    for path, label in zip(images.paths, images.labels):
        assert Path(path).parent.name == images.class_names[label]
    assert images.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert images.skipped == ()


def test_numeric_before_named_classes(tmp_path):
    for cls in ("b", "10", "a", "9"):
        touch(tmp_path / cls / "x.png")
    assert list_class_images(tmp_path).class_names == ("9", "10", "a", "b")


def test_non_images_and_hidden_files_are_skipped_with_a_warning(tmp_path):
    good = [touch(tmp_path / "0" / "a.jpg"), touch(tmp_path / "1" / "b.jpeg"), touch(tmp_path / "1" / "sub" / "c.png")]
    bad = [touch(tmp_path / "0" / "notes.txt"), touch(tmp_path / "1" / ".hidden.jpg"),
           touch(tmp_path / "1" / "archive.zip")]
    touch(tmp_path / ".ipynb_checkpoints" / "x.jpg")  # hidden folders are not classes
    touch(tmp_path / "__MACOSX" / "y.jpg")
    touch(tmp_path / "README.md")  # files next to the class folders are ignored
    with pytest.warns(UserWarning) as caught:
        images = list_class_images(tmp_path)
    message = " ".join(str(w.message) for w in caught)
    for path in bad:
        assert str(path) in message
    assert sorted(images.paths) == sorted(map(str, good))
    assert sorted(images.skipped) == sorted(map(str, bad))
    assert images.class_names == ("0", "1")


def test_empty_tree_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no images found"):
        list_class_images(tmp_path)
    (tmp_path / "0").mkdir()
    with pytest.raises(ValueError) as err:
        list_class_images(tmp_path)
    assert str(tmp_path) in str(err.value) and "one sub-folder per class" in str(err.value)


def test_tree_of_only_non_images_is_an_error(tmp_path):
    touch(tmp_path / "0" / "a.txt")
    with pytest.warns(UserWarning, match="a.txt"), pytest.raises(ValueError, match="no images found"):
        list_class_images(tmp_path)


def test_list_class_images_on_prepared_competition_data(tiny_data_dir):
    images = list_class_images(prepare_data(tiny_data_dir).train_dir)
    assert len(images) == 80
    assert images.class_names == tuple(str(i) for i in range(10))
    assert set(images.labels.tolist()) == set(range(10))


# --------------------------------------------------------------- stratified_split
LABELS = np.array([0] * 50 + [1] * 30 + [2] * 20)


def test_split_keeps_class_proportions():
    train, val = stratified_split(LABELS, 0.2, seed=0)
    assert len(np.intersect1d(train, val)) == 0
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(LABELS)))
    assert np.bincount(LABELS[val]).tolist() == [10, 6, 4]
    assert np.bincount(LABELS[train]).tolist() == [40, 24, 16]
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()  # sorted indices


def test_split_is_deterministic_by_seed():
    a = stratified_split(LABELS, 0.25, seed=3)
    b = stratified_split(LABELS, 0.25, seed=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = stratified_split(LABELS, 0.25, seed=4)
    assert not np.array_equal(a[1], c[1])
    assert np.bincount(LABELS[c[1]]).tolist() == np.bincount(LABELS[a[1]]).tolist()


def test_split_zero_gives_empty_validation():
    train, val = stratified_split(LABELS, 0.0, seed=0)
    assert len(val) == 0
    assert train.tolist() == list(range(len(LABELS)))


def test_single_image_class_stays_in_training():
    labels = np.array([0] * 10 + [1] + [2] * 2)
    train, val = stratified_split(labels, 0.2, seed=0)
    assert 10 in train and 10 not in val
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 0, 1]  # a 2-image class still gets 1 val image


@pytest.mark.parametrize("val_split", [0.6, 0.9])
def test_single_image_class_stays_in_training_at_large_val_split(val_split):
    labels = np.array([0] * 10 + [1])
    train, val = stratified_split(labels, val_split, seed=0)
    assert 10 in train and 10 not in val


@pytest.mark.parametrize("val_split", [-0.1, 1.0, 1.5])
def test_split_rejects_out_of_range(val_split):
    with pytest.raises(ValueError, match="val_split"):
        stratified_split(LABELS, val_split, seed=0)
