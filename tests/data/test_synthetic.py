"""Tests for the embedded synthetic car dataset (carlib.data.synthetic)."""

from __future__ import annotations

import collections
import csv
import io
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from carlib.data.synthetic import CLASS_NAMES, DATASET_FILES, generate_car_dataset, render_car_image

# Small sizes keep every generation well under a second.
SMALL = dict(n_train=40, n_test=12, seed=3, min_width=64, max_width=160)

TRAIN_MEMBER = re.compile(r"^train/([0-9])/([0-9]+\.jpg)$")
TEST_MEMBER = re.compile(r"^test_upload/([0-9]+\.jpg)$")


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def zip_names(path):
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_car_dataset(tmp_path_factory.mktemp("ds") / "cars", **SMALL)


def train_members(folder):
    """{file name: class} from train.zip, checking every member's form."""
    out = {}
    for name in zip_names(folder / "train.zip"):
        m = TRAIN_MEMBER.match(name)
        assert m, f"unexpected train.zip member {name!r}"
        assert m.group(2) not in out, f"duplicate file name {m.group(2)}"
        out[m.group(2)] = int(m.group(1))
    return out


def test_returns_out_dir_with_exactly_the_dataset_files(dataset):
    assert dataset.is_dir()
    assert sorted(p.name for p in dataset.iterdir()) == sorted(DATASET_FILES)


def test_train_zip_has_every_class_folder_with_balanced_counts(dataset):
    counts = collections.Counter(train_members(dataset).values())
    assert sorted(counts) == list(range(10))
    assert set(counts.values()) == {SMALL["n_train"] // 10}


def test_test_zip_members_are_flat_jpgs(dataset):
    names = zip_names(dataset / "test.zip")
    assert len(names) == SMALL["n_test"]
    assert all(TEST_MEMBER.match(n) for n in names), names
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("csv_name", ["train.csv", "sample-submission.csv", "test-answers.csv"])
def test_csv_header_is_exactly_id_category(dataset, csv_name):
    first_line = (dataset / csv_name).read_text(encoding="utf-8").splitlines()[0]
    assert first_line == "Id,Category"


def test_sample_submission_lists_every_test_file_once_with_zero(dataset):
    rows = read_csv(dataset / "sample-submission.csv")[1:]
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == SMALL["n_test"]
    test_files = {n.split("/")[-1] for n in zip_names(dataset / "test.zip")}
    assert set(ids) == test_files
    assert {r[1] for r in rows} == {"0"}


def test_train_csv_agrees_with_zip_folders(dataset):
    rows = read_csv(dataset / "train.csv")[1:]
    from_csv = {r[0]: int(r[1]) for r in rows}
    assert len(from_csv) == len(rows) == SMALL["n_train"]
    assert from_csv == train_members(dataset)


def test_test_answers_are_balanced_and_cover_the_test_files(dataset):
    rows = read_csv(dataset / "test-answers.csv")[1:]
    ids = [r[0] for r in rows]
    assert ids == [r[0] for r in read_csv(dataset / "sample-submission.csv")[1:]]
    counts = collections.Counter(int(r[1]) for r in rows)
    assert set(counts) <= set(range(10))
    per_class = [counts.get(c, 0) for c in range(10)]
    assert max(per_class) - min(per_class) <= 1


def test_no_file_name_in_both_train_and_test(dataset):
    train = set(train_members(dataset))
    test = {n.split("/")[-1] for n in zip_names(dataset / "test.zip")}
    assert not train & test


def test_file_names_do_not_follow_the_class(dataset):
    # Sorted by numeric name, labels must not come out grouped by class.
    labels = [c for _, c in sorted(train_members(dataset).items(), key=lambda kv: int(kv[0][:-4]))]
    assert labels != sorted(labels)


def test_images_decode_as_rgb_jpegs_of_varying_width(dataset):
    widths = set()
    for zname in ("train.zip", "test.zip"):
        with zipfile.ZipFile(dataset / zname) as zf:
            for name in zf.namelist():
                data = zf.read(name)
                assert data[:2] == b"\xff\xd8", f"{name} is not a JPEG"
                img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
                assert img is not None and img.ndim == 3 and img.shape[2] == 3
                h, w = img.shape[:2]
                assert SMALL["min_width"] <= w <= SMALL["max_width"]
                assert 0.55 * w <= h <= 0.9 * w  # about 4:3
                widths.add(w)
    assert len(widths) > 5


def test_remainder_is_spread_and_fewer_classes_work(tmp_path):
    out = generate_car_dataset(tmp_path / "d", n_train=23, n_test=5, num_classes=3, min_width=48, max_width=64)
    counts = collections.Counter(train_members(out).values())
    assert sorted(counts) == [0, 1, 2]
    assert sorted(counts.values()) == [7, 8, 8]
    answers = collections.Counter(r[1] for r in read_csv(out / "test-answers.csv")[1:])
    assert sorted(answers.values()) == [1, 2, 2]


def test_same_seed_gives_byte_identical_files(dataset, tmp_path):
    again = generate_car_dataset(tmp_path / "again", **SMALL)
    for name in DATASET_FILES:
        assert (again / name).read_bytes() == (dataset / name).read_bytes(), name


def test_different_seed_gives_different_images(dataset, tmp_path):
    other = generate_car_dataset(tmp_path / "other", **{**SMALL, "seed": SMALL["seed"] + 1})
    assert (other / "train.zip").read_bytes() != (dataset / "train.zip").read_bytes()


def test_render_is_deterministic_for_a_generator_state():
    a = render_car_image(2, np.random.default_rng(11), 120, 90)
    b = render_car_image(2, np.random.default_rng(11), 120, 90)
    assert a.shape == (90, 120, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)


def test_same_class_gets_very_different_colours():
    means = np.array([render_car_image(0, np.random.default_rng(i), 96, 72).reshape(-1, 3).mean(0) for i in range(12)])
    # the spread of mean colour across images of one class is large
    assert means.std(axis=0).mean() > 12


def test_mean_colour_does_not_predict_the_class():
    # Leave-one-out nearest class centroid on mean RGB stays near chance (10%).
    feats, labels = [], []
    for c in range(10):
        for i in range(16):
            img = render_car_image(c, np.random.default_rng([99, c, i]), 64, 48)
            feats.append(img.reshape(-1, 3).mean(0))
            labels.append(c)
    feats, labels = np.array(feats), np.array(labels)
    correct = 0
    for k in range(len(labels)):
        keep = np.arange(len(labels)) != k
        centroids = np.array([feats[keep & (labels == c)].mean(0) for c in range(10)])
        correct += int(np.argmin(((centroids - feats[k]) ** 2).sum(1)) == labels[k])
    assert correct / len(labels) < 0.3


def test_classes_differ_by_shape_with_everything_else_equal():
    images = [render_car_image(c, np.random.default_rng(5), 160, 120) for c in range(len(CLASS_NAMES))]
    for a in range(len(images)):
        for b in range(a + 1, len(images)):
            diff = np.abs(images[a].astype(int) - images[b].astype(int)).mean()
            assert diff > 0.5, f"{CLASS_NAMES[a]} and {CLASS_NAMES[b]} look the same"


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(n_train=5), "n_train"),
        (dict(n_train=40.0), "n_train"),
        (dict(n_test=0), "n_test"),
        (dict(num_classes=1), "num_classes"),
        (dict(num_classes=11), "num_classes"),
        (dict(num_classes=True), "num_classes"),
        (dict(min_width=0), "min_width"),
        (dict(max_width=-3), "max_width"),
        (dict(min_width=200, max_width=100), "min_width"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments_name_the_parameter(tmp_path, kwargs, param):
    with pytest.raises(ValueError, match=param):
        generate_car_dataset(tmp_path / "bad", **{**SMALL, **kwargs})
    assert not (tmp_path / "bad").exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_argument_message_shows_value_and_allowed_range(tmp_path):
    with pytest.raises(ValueError) as info:
        generate_car_dataset(tmp_path / "bad", num_classes=12)
    message = str(info.value)
    assert "num_classes" in message and "12" in message and "between 2 and 10" in message


@pytest.mark.parametrize(
    "args, param",
    [((10, np.random.default_rng(0), 64, 48), "class_id"), ((0, np.random.default_rng(0), 8, 48), "width"),
     ((0, 42, 64, 48), "rng")],
)
def test_render_rejects_bad_arguments(args, param):
    with pytest.raises(ValueError, match=param):
        render_car_image(*args)


def test_second_call_keeps_the_existing_identical_folder(tmp_path):
    out = generate_car_dataset(tmp_path / "cars", **SMALL)
    before = {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) for n in DATASET_FILES}
    assert generate_car_dataset(tmp_path / "cars", **SMALL) == out
    after = {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) for n in DATASET_FILES}
    assert after == before  # untouched, not rewritten
    assert [p.name for p in tmp_path.iterdir()] == ["cars"]  # no temp folders left


def test_existing_folder_with_other_data_is_not_overwritten(tmp_path):
    out = generate_car_dataset(tmp_path / "cars", **SMALL)
    original = (out / "train.zip").read_bytes()
    with pytest.raises(FileExistsError, match="out_dir"):
        generate_car_dataset(tmp_path / "cars", **{**SMALL, "seed": 99})
    assert (out / "train.zip").read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["cars"]


def test_empty_existing_folder_is_filled(tmp_path):
    (tmp_path / "cars").mkdir()
    out = generate_car_dataset(tmp_path / "cars", **SMALL)
    assert sorted(p.name for p in out.iterdir()) == sorted(DATASET_FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["cars"]


def test_out_dir_that_is_a_file_is_rejected(tmp_path):
    (tmp_path / "cars").write_text("not a folder")
    with pytest.raises(FileExistsError, match="out_dir"):
        generate_car_dataset(tmp_path / "cars", **SMALL)


def test_concurrent_generation_into_one_folder_ends_valid(tmp_path, dataset):
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: generate_car_dataset(tmp_path / "cars", **SMALL), range(3)))
    assert all(r == tmp_path / "cars" for r in results)
    for name in DATASET_FILES:
        assert (tmp_path / "cars" / name).read_bytes() == (dataset / name).read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["cars"]


def test_zip_members_have_fixed_metadata(dataset):
    with zipfile.ZipFile(dataset / "train.zip") as zf:
        infos = zf.infolist()
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        # members are grouped by class folder, then ordered by numeric name
        keys = [(int(i.filename.split("/")[1]), int(i.filename.split("/")[2][:-4])) for i in infos]
        assert keys == sorted(keys)
        assert zf.testzip() is None
    # a reader that only has bytes in memory works too
    data = (dataset / "test.zip").read_bytes()
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None
