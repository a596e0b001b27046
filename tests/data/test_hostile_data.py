"""Real-world photo dumps (issue 7): every kind of bad file is named, skipped or converted, and training goes on.

One hostile dataset in the competition layout holds every case of the issue; the data check
and a short training run on it must name every bad file, count right, and never crash.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carlib.cli import main
from carlib.data import screen
from carlib.data.check import HUGE_SIDE, TINY_SIDE, check_dataset
from carlib.data.folders import list_class_images
from carlib.data.screen import decode_rgb, screen_images
from carlib.errors import DataError, DataWarning

EXTENSIONS = "images: .bmp, .gif, .jpeg, .jpg, .png, .webp"


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth, photo-like RGB image (JPEG decoders agree closely on smooth content), unique per seed."""
    rng = np.random.default_rng(seed)
    w, h = min(width, 256), min(height, 256)  # big images are a small gradient scaled up (fast to make)
    y, x = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, 3)
    slope = rng.uniform(-0.5, 0.5, (2, 3))
    pixels = base + x[..., None] * slope[0] * 64 / w + y[..., None] * slope[1] * 64 / h
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image if (w, h) == (width, height) else image.resize((width, height), Image.BILINEAR)


def halves(width: int = 48, height: int = 32) -> Image.Image:
    """Left half red, right half blue: any rotation shows."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (220, 20, 20)
    pixels[:, width // 2:] = (20, 20, 220)
    return Image.fromarray(pixels)


def save(image: Image.Image, path: Path, fmt: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **kwargs)
    return path


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **kwargs)
    return buffer.getvalue()


def exif_rotated(path: Path, orientation: int = 6) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(halves(), path, "JPEG", quality=95, exif=exif.tobytes())


def mode_images(folder: Path) -> dict[str, Path]:
    """One file per decoding case of the issue (grayscale, CMYK, 16-bit, palette, alpha, EXIF, …)."""
    base = photo(48, 36, seed=100)
    rgba = np.dstack([np.asarray(base), np.linspace(0, 255, 48 * 36).reshape(36, 48).astype(np.uint8)])
    gray16 = (np.asarray(base.convert("L")).astype(np.uint16) * 257 + 123).astype(np.uint16)
    return {
        "gray": save(base.convert("L"), folder / "gray.jpg", quality=95),
        "cmyk": save(base.convert("CMYK"), folder / "cmyk.jpg", quality=95),
        "sixteen_bit": save(Image.fromarray(gray16), folder / "sixteen-bit.png"),
        "palette": save(base.convert("P"), folder / "palette.png"),
        "palette_bmp": save(base.convert("P"), folder / "palette.bmp"),
        "rgba": save(Image.fromarray(rgba, "RGBA"), folder / "rgba.png"),
        "la": save(base.convert("LA"), folder / "gray-alpha.png"),
        "gif": save(base.convert("P"), folder / "anim.gif"),
        "webp": save(base, folder / "photo.webp", lossless=True),
        "exif_rotated": exif_rotated(folder / "rotated.jpg"),
    }


def build_hostile_dataset(root: Path) -> dict:
    """Every case of issue 7 in one competition-layout dataset; returns what a check must find."""
    train, test = root / "train", root / "test_upload"
    good = {c: [save(photo(64 + 4 * i, 48, seed=10 * int(c) + i), train / c / f"{c}-{i:02d}.jpg", quality=90)
                for i in range(6)] for c in ("0", "1")}
    single = save(photo(64, 48, seed=99), train / "2" / "only one.jpg", quality=90)  # a single-image class
    modes = mode_images(train / "1")
    huge = save(photo(6000, 4000, seed=7), train / "0" / "huge.jpg", quality=70)
    tiny = save(photo(3, 2, seed=8), train / "0" / "tiny.png")
    unicode_name = save(photo(60, 40, seed=9), train / "0" / "фото машины №1.jpg", quality=90)
    spaced = save(photo(60, 40, seed=11), train / "1" / "car  with   spaces .png")
    duplicate = train / "1" / "copy-of-0-00.jpg"  # identical bytes in another class: contradicting labels
    shutil.copyfile(good["0"][0], duplicate)

    def write(path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    full = jpeg_bytes(photo(64, 48, seed=12))
    bad = {
        write(train / "0" / "truncated.jpg", full[: len(full) // 2]): "truncated or corrupt image",
        write(train / "0" / "zero.jpg", b""): "empty file (0 bytes)",
        write(train / "0" / "notes-as-image.jpg", b"just some text, not a photo\n" * 20):
            "not an image file (PIL cannot identify its content)",
        write(train / "0" / "scan.tiff", b"II*\x00"): f"unsupported extension '.tiff' ({EXTENSIONS})",
        write(train / "1" / "readme.txt", b"hello"): f"unsupported extension '.txt' ({EXTENSIONS})",
        write(train / "1" / "Thumbs.db", b"\x00" * 64): "OS junk file",
        write(train / "1" / ".DS_Store", b"\x00\x00\x00\x01Bud1"): "OS junk file",
        write(train / "0" / "._huge.jpg", b"\x00\x05\x16\x07"): "OS junk file",
        write(train / "0" / ".hidden.jpg", full): "hidden file",
        write(train / "1" / "__MACOSX" / "._gray.jpg", b"\x00"): "OS junk (inside __MACOSX/)",
        write(train / "extra" / "about.txt", b"scraped 2021"): f"unsupported extension '.txt' ({EXTENSIONS})",
    }
    write(train / "__MACOSX" / "0" / "._0-00.jpg", b"\x00\x05")
    write(train / ".ipynb_checkpoints" / "x-checkpoint.jpg", full)
    ignored = {
        train / "__MACOSX": "OS junk folder",
        train / ".ipynb_checkpoints": "hidden folder",
        train / "extra": "not a class folder: the class folders are numbered (0, 1, ...)",
    }

    tests = [save(photo(50, 40, seed=200 + i), test / f"t{i}.jpg", quality=90) for i in range(4)]
    shutil.copyfile(good["1"][2], test / "leak.jpg")  # a test image identical to a training image
    save(photo(50, 40, seed=300), test / "not-in-csv.jpg", quality=90)
    write(test / "Thumbs.db", b"\x00" * 16)
    ids = [p.name for p in tests] + ["leak.jpg", "missing.jpg"]
    (root / "sample-submission.csv").write_text("Id,Category\n" + "".join(f"{i},0\n" for i in ids))

    train_usable = {"0": 6 + 3, "1": 6 + len(modes) + 2, "2": 1}  # + huge, tiny, unicode / + modes, spaced, duplicate
    return {
        "root": root, "train_usable": train_usable, "bad": {str(p): r for p, r in bad.items()},
        "ignored": {str(p): r for p, r in ignored.items()}, "test_junk": str(test / "Thumbs.db"),
        "converted": {str(modes["exif_rotated"]), str(modes["palette_bmp"])}, "huge": str(huge), "tiny": str(tiny),
        "duplicate": (str(good["0"][0]), str(duplicate)), "leak": (str(good["1"][2]), str(test / "leak.jpg")),
        "single": str(single), "unicode": str(unicode_name), "spaced": str(spaced),
    }


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return build_hostile_dataset(tmp_path_factory.mktemp("hostile") / "data")


# ------------------------------------------------------------------ the data check
def test_check_names_every_bad_file_and_counts_right(hostile):
    report = check_dataset(hostile["root"])
    assert report.usable, report.errors
    assert report.class_counts == hostile["train_usable"]
    assert report.imbalance_ratio == pytest.approx(max(hostile["train_usable"].values()) / 1)
    expected_unusable = {**hostile["bad"], hostile["test_junk"]: "OS junk file"}
    found = dict(report.unusable)
    assert set(found) == set(expected_unusable)
    for path, reason in expected_unusable.items():
        assert found[path].startswith(reason), (path, found[path])
    assert dict(report.ignored) == hostile["ignored"]
    assert {path for path, _ in report.converted} == hostile["converted"]
    assert dict(report.converted)[[p for p in hostile["converted"] if p.endswith("rotated.jpg")][0]] == \
        "EXIF orientation 6 (TensorFlow ignores it)"
    train_sizes = report.sizes["train"]
    assert (train_sizes["n_tiny"], train_sizes["n_huge"]) == (1, 1)
    assert train_sizes["tiny"] == [hostile["tiny"]] and train_sizes["huge"] == [hostile["huge"]]
    assert train_sizes["width"]["max"] == 6000 and train_sizes["height"]["min"] == 2
    assert train_sizes["n"] == sum(hostile["train_usable"].values())
    assert [sorted(g) for g in report.duplicate_groups] == [sorted(hostile["duplicate"])]
    assert len(report.conflicting_groups) == 1
    assert report.train_test_duplicates == [hostile["leak"]]
    assert report.n_test_images == 6
    assert report.missing_test_files == ["missing.jpg"]
    assert report.unlisted_test_files == ["not-in-csv.jpg"]
    text = report.to_text()
    for path in [*expected_unusable, *hostile["ignored"], *hostile["converted"], "missing.jpg", "not-in-csv.jpg"]:
        assert path in text, path
    assert "verdict: usable for training" in text
    assert f"1 tiny (shorter side < {TINY_SIDE} px), 1 huge (longer side >= {HUGE_SIDE} px)" in text


def test_cli_check_prints_the_report_and_json(hostile, capsys):
    assert main(["data", "check", str(hostile["root"])]) == 0
    text = capsys.readouterr().out
    assert all(path in text for path in hostile["bad"])
    assert main(["data", "check", str(hostile["root"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["usable"] is True and data["class_counts"] == hostile["train_usable"]
    assert {item["path"] for item in data["unusable"]} == {*hostile["bad"], hostile["test_junk"]}
    assert data["missing_test_files"] == ["missing.jpg"] and data["unlisted_test_files"] == ["not-in-csv.jpg"]


# --------------------------------------------------------------------- training
def test_short_training_on_the_hostile_dataset_skips_and_records_every_bad_file(hostile, tmp_path):
    import carlib

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")  # (pytest.warns would record and re-emit TensorFlow's deprecation chatter)
        warnings.simplefilter("always", DataWarning)
        record = carlib.run_experiment(data_dir=str(hostile["root"]), image_size=32, batch_size=8, epochs=1,
                                       val_split=0.25, augmentation="light", results_dir=str(tmp_path / "results"))
    assert record["status"] == "ok"
    assert caught and all(issubclass(w.category, DataWarning) for w in caught)
    warned = " ".join(str(w.message) for w in caught)
    for path in [*hostile["bad"], *hostile["ignored"]]:
        assert path in warned, path
    data = record["data"]
    assert data["num_classes"] == 3 and data["class_names"] == ["0", "1", "2"]
    assert data["n_train"] + data["n_val"] + data["n_test"] == sum(hostile["train_usable"].values())
    assert data["test_source"].endswith("held out with data seed 0")  # no labelled test images: carved
    assert data["n_skipped"] == len(hostile["bad"])
    assert {item["path"]: item["reason"] for item in data["skipped"]}.keys() == hostile["bad"].keys()
    assert {item["path"] for item in data["ignored"]} == set(hostile["ignored"])
    assert data["n_converted"] == len(hostile["converted"])
    table = carlib.load_results(tmp_path / "results")
    assert table["n_skipped"].tolist() == [len(hostile["bad"])]


def test_a_single_image_class_stays_in_training(hostile):
    from carlib.data.folders import stratified_split

    with pytest.warns(DataWarning):
        images = list_class_images(Path(hostile["root"]) / "train")
    train_idx, val_idx = stratified_split(images.labels, 0.5, seed=0)
    assert hostile["single"] in [images.paths[i] for i in train_idx]
    assert 2 not in images.labels[val_idx]
    assert hostile["unicode"] in images.paths and hostile["spaced"] in images.paths


# ------------------------------------------------------------ decoding: right RGB
def _resized(rgb: np.ndarray, size: int) -> np.ndarray:
    from carlib.data.pipeline import resize_image  # what every decoded image goes through

    return resize_image(rgb, size).numpy()


@pytest.mark.parametrize("case", ["gray", "cmyk", "sixteen_bit", "palette", "palette_bmp", "rgba", "la", "gif", "webp",
                                  "exif_rotated"])
def test_every_image_mode_decodes_to_the_rgb_pil_makes(case, tmp_path):
    import tensorflow as tf

    from carlib.data.pipeline import load_image

    original = mode_images(tmp_path)[case]
    screened = screen_images([original])
    assert screened.sources == (str(original),) and not screened.unusable
    loaded = load_image(tf.constant(screened.usable[0]), 32).numpy()
    with Image.open(original) as image:
        mode = image.mode
    if case == "sixteen_bit":  # PIL's own convert("RGB") clips 16-bit values to 255: the right value is v // 256
        assert mode == "I;16"
        with Image.open(original) as image:
            gray = (np.asarray(image, dtype=np.int64) >> 8).astype(np.uint8)
        reference = np.repeat(gray[..., None], 3, axis=-1)
    else:
        with Image.open(original) as image:
            reference = np.asarray(image.convert("RGB")) if case != "exif_rotated" else None
        if reference is None:
            from PIL import ImageOps

            with Image.open(original) as image:
                reference = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    np.testing.assert_array_equal(decode_rgb(original), reference)
    expected = _resized(reference, 32).astype(int)
    difference = np.abs(loaded.astype(int) - expected)
    if original.suffix == ".jpg":  # TensorFlow's and PIL's JPEG decoders differ in the last bits
        assert difference.mean() < 1.0 and difference.max() <= 4, (case, mode)
    else:
        assert difference.max() <= 1, (case, mode)


def test_exif_orientation_is_honoured(tmp_path):
    import tensorflow as tf

    from carlib.data.pipeline import load_image

    # Stored left red | right blue; orientation 6 shows it rotated 90° clockwise: red on top.
    rotated = exif_rotated(tmp_path / "rotated.jpg", orientation=6)
    screened = screen_images([rotated])
    assert screened.converted == {str(rotated): screened.usable[0]}
    image = load_image(tf.constant(screened.usable[0]), 32).numpy().astype(int)
    top, bottom = image[:12].mean(axis=(0, 1)), image[-12:].mean(axis=(0, 1))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]  # red on top, blue below
    plain = load_image(tf.constant(str(rotated)), 32).numpy().astype(int)  # TensorFlow alone keeps it sideways
    assert plain[:, :12].mean(axis=(0, 1))[0] > 150


def test_huge_and_tiny_images_load(hostile):
    import tensorflow as tf

    from carlib.data.pipeline import load_image

    for path in (hostile["huge"], hostile["tiny"]):
        image = load_image(tf.constant(path), 32).numpy()
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and image.max() > 0


# --------------------------------------------------------------- the cache
def test_screening_verdicts_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    files = [save(photo(20, 20, seed=i), tmp_path / f"{i}.png") for i in range(3)]
    calls = []
    original = screen.inspect_image
    monkeypatch.setattr(screen, "inspect_image", lambda path: calls.append(str(path)) or original(path))
    screen_images(files)
    assert len(calls) == 3
    screen_images(files)
    assert len(calls) == 3  # all from the cache
    os.utime(files[1], ns=(1, 1))
    (tmp_path / "2.png").write_bytes(b"")  # replaced by an empty file: size and mtime change
    result = screen_images(files)
    assert calls[3:] == [str(files[1]), str(files[2])]
    assert result.unusable == ((str(files[2]), "empty file (0 bytes)"),)


# ------------------------------------------------------------------ errors
def _small_dataset(root: Path) -> Path:
    for c in ("0", "1", "2"):
        for i in range(3):
            save(photo(40, 30, seed=10 * int(c) + i), root / "train" / c / f"{i}.jpg", quality=90)
    return root


EMPTY_CLASS_FIX = ("An empty class would shift the class indices against the labels (classes are numbered by "
                   "folder order). Remove the folder or add images to it.")


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path, capsys):
    import carlib

    root = _small_dataset(tmp_path / "data")
    empty = root / "train" / "3"
    empty.mkdir()
    expected = f"class folder(s) without a usable image: {str(empty)!r}. {EMPTY_CLASS_FIX}"
    with pytest.raises(DataError) as err:
        list_class_images(root / "train")
    assert str(err.value) == expected
    report = check_dataset(root)
    assert not report.usable and report.errors == [expected]
    assert main(["data", "check", str(root)]) == 1
    assert expected in capsys.readouterr().out
    with pytest.raises(DataError, match="Remove the folder or add images to it"):
        carlib.run_experiment(data_dir=str(root), image_size=32, epochs=1, results_dir=str(tmp_path / "results"))
    assert not (tmp_path / "results" / "records").exists()  # failed before training: no record


def test_a_class_of_only_broken_files_is_an_empty_class(tmp_path):
    root = _small_dataset(tmp_path / "data")
    broken = root / "train" / "3" / "a.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"")
    with pytest.warns(DataWarning, match="a.jpg \\(empty file \\(0 bytes\\)\\)"), pytest.raises(DataError) as err:
        list_class_images(root / "train")
    assert str(broken.parent) in str(err.value) and str(err.value).endswith(EMPTY_CLASS_FIX)


def test_carlib_run_on_an_empty_class_exits_2_with_the_message(tmp_path, capsys):
    root = _small_dataset(tmp_path / "data")
    (root / "train" / "3").mkdir()
    assert main(["run", "--data-dir", str(root), "--epochs", "1", "--image-size", "32",
                 "--results-dir", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("carlib: error: class folder(s) without a usable image:") and err.endswith(EMPTY_CLASS_FIX)


@pytest.mark.parametrize("member,reason", [("../escape.jpg", "climbs out of the destination with '..'"),
                                           ("/etc/evil.jpg", "is an absolute path")])
def test_the_check_refuses_an_archive_with_a_traversal_member(tmp_path, capsys, member, reason):
    root = tmp_path / "data"
    root.mkdir()
    with zipfile.ZipFile(root / "train.zip", "w") as zf:
        zf.writestr("train/0/a.jpg", jpeg_bytes(photo(20, 20, 0)))
        zf.writestr(member, b"x")
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert (f"refusing to extract {str(root / 'train.zip')!r}: member {member!r} {reason}. "
            "The archive is unsafe; nothing was extracted.") in out
    assert "Traceback" not in out and not (root / "train").exists()


def test_a_missing_data_dir_says_where_it_looked_and_how_to_get_the_data(tmp_path, capsys):
    missing = tmp_path / "nope"
    expected = (f"data_dir {str(missing)!r} does not exist. Download the competition data "
                "(`kaggle competitions download -c sf-dl-car-classification`, then unzip the download into that "
                "folder: train.zip, test.zip, sample-submission.csv), point data_dir at any folder of class "
                "sub-folders, or leave data_dir unset to use the embedded synthetic dataset.")
    assert check_dataset(missing).errors == [expected]
    assert main(["data", "check", str(missing)]) == 1
    assert main(["run", "--data-dir", str(missing), "--epochs", "1"]) == 2
    assert capsys.readouterr().err.strip() == f"carlib: error: {expected}"
