"""Predicting any photos: one row per image, the model's class by name, errors as rows, checked against an oracle.

The model is the brightness classifier of conftest.py: its class is a known function of the image, so
the expected class and probabilities of every file are computed from PIL's decode, without carlib.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

import carlib
from carlib.cli import main
from carlib.errors import ConfigError, DataError, ModelError, ModelWarning
from carlib.evaluate.photos import PHOTO_COLUMNS, find_photos, predict_photos
from carlib.evaluate.readable import NOT_DECODABLE
from carlib.models.build import read_class_names, save_model

NAMES = tuple(f"level{c}" for c in range(10))


@pytest.fixture(scope="module")
def named_model(brightness, tmp_path_factory):
    """The brightness model saved with its class names inside."""
    return save_model(brightness.model(), tmp_path_factory.mktemp("model") / "brightness.keras", NAMES)


@pytest.fixture
def photos(brightness, tmp_path):
    """Photos of known classes in nested folders, in several formats and sizes, with junk around them."""
    root = tmp_path / "photos"
    classes = {}
    layout = [("a/0001.jpg", 3, 640, 480), ("a/0002.jpg", 7, 96, 72), ("a/0003.png", 0, 120, 200),
              ("b/deep/0004.jpg", 9, 400, 533), ("b/deep/0005.bmp", 5, 64, 64), ("b/0006.webp", 1, 80, 60),
              ("0007.jpeg", 4, 33, 47), ("b/0008.JPG", 8, 150, 100)]
    for index, (name, cls, width, height) in enumerate(layout):
        classes[str(root / name)] = cls
        brightness.paint(root / name, cls, width=width, height=height, seed=index)
    for junk in (".DS_Store", "notes.txt", "a/.hidden.jpg", "__MACOSX/a/._0001.jpg", "b/Thumbs.db"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(b"junk")
    (root / "b" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "b" / "empty.png").write_bytes(b"")
    return root, classes


def test_every_photo_gets_the_oracle_class_by_name_and_bad_files_get_an_error_row(named_model, photos, brightness):
    root, classes = photos
    frame = predict_photos(named_model, [root], top_k=3)
    assert list(frame.columns) == [*PHOTO_COLUMNS, "class_index_2", "class_name_2", "probability_2",
                                   "class_index_3", "class_name_3", "probability_3", "error"]
    expected_files = sorted([*classes, str(root / "b" / "broken.jpg"), str(root / "b" / "empty.png")])
    assert sorted(frame["file"]) == expected_files  # junk, hidden files and other extensions are not rows
    assert len(frame.attrs["skipped"]) == 5 and frame.attrs["class_names_from"] == str(named_model)

    good = frame[frame["error"] == ""].set_index("file")
    assert sorted(good.index) == sorted(classes)
    files = list(good.index)
    expected, probabilities = brightness.oracle(files)
    assert good["class_index"].tolist() == expected.tolist() == [classes[f] for f in files]
    assert good["class_name"].tolist() == [NAMES[c] for c in expected]
    assert len(set(expected)) == len(files)  # every photo a different class: a shifted row cannot pass
    order = np.argsort(-probabilities, axis=1)
    for rank, suffix in ((1, ""), (2, "_2"), (3, "_3")):
        assert good[f"class_index{suffix}"].tolist() == order[:, rank - 1].tolist()
        np.testing.assert_allclose(good[f"probability{suffix}"], probabilities[np.arange(len(files)), order[:, rank - 1]],
                                   atol=0.02)
    assert (good["probability"] >= good["probability_2"]).all() and (good["probability_2"] >= good["probability_3"]).all()

    bad = frame[frame["error"] != ""].set_index("file")["error"]
    assert "not an image" in bad[str(root / "b" / "broken.jpg")] and "empty" in bad[str(root / "b" / "empty.png")]
    assert frame.loc[frame["error"] != "", "class_index"].isna().all()
    assert str(frame["class_index"].dtype) == "Int64" and str(frame["class_index_2"].dtype) == "Int64"


@pytest.mark.parametrize("tta", [0, 2])
def test_each_photo_is_decoded_once_and_an_undecodable_one_gets_its_error_row(named_model, brightness, tmp_path,
                                                                              tensorflow_reads, undecodable_jpeg, tta):
    root = tmp_path / "photos"
    good = {str(root / f"{n}.{ext}"): cls for n, (cls, ext) in enumerate([(2, "jpg"), (6, "png"), (8, "jpg")])}
    for index, (path, cls) in enumerate(good.items()):
        brightness.paint(path, cls, seed=index)
    undecodable = undecodable_jpeg(Path(next(iter(good))), root / "3_undecodable.jpg")
    (root / "4_text.jpg").write_text("a note, not a photo")
    frame = predict_photos(named_model, root, tta=tta, tta_preset="flip").set_index("file")

    errors = frame["error"]
    assert errors[str(undecodable)] == NOT_DECODABLE and "not an image" in errors[str(root / "4_text.jpg")]
    assert frame.loc[errors != "", "class_index"].isna().all()
    predicted = frame[errors == ""]
    assert sorted(predicted.index) == sorted(good)
    assert predicted["class_index"].tolist() == [good[f] for f in predicted.index] == \
        brightness.oracle(predicted.index)[0].tolist()
    # TensorFlow read each screened file once (the prediction pass itself), the non-image never
    assert dict(tensorflow_reads) == {**{f: 1 for f in good}, str(undecodable): 1}


def test_nothing_decodes_and_every_photo_gets_its_error_row(named_model, photos, tmp_path, undecodable_jpeg):
    root, _ = photos
    only = undecodable_jpeg(root / "a" / "0001.jpg", tmp_path / "only" / "x.jpg")
    frame = predict_photos(named_model, only.parent)
    assert frame["file"].tolist() == [str(only)] and frame["error"].tolist() == [NOT_DECODABLE]
    assert frame["class_index"].isna().all()


def test_files_named_explicitly_each_get_a_row_in_the_order_given(named_model, photos, brightness, tmp_path):
    root, classes = photos
    first, second = str(root / "b" / "deep" / "0004.jpg"), str(root / "a" / "0002.jpg")
    frame = predict_photos(named_model, [first, tmp_path / "missing.jpg", root / "notes.txt", second, first])
    assert frame["file"].tolist() == [first, str(tmp_path / "missing.jpg"), str(root / "notes.txt"), second]
    assert frame["error"].tolist()[1:3] == ["no such file or folder", "unsupported extension '.txt' (images: .bmp, "
                                            ".gif, .jpeg, .jpg, .png, .webp)"]
    assert frame["class_name"].tolist()[::3] == [NAMES[classes[first]], NAMES[classes[second]]]
    assert frame["class_index"].tolist()[::3] == brightness.oracle([first, second])[0].tolist()


def test_tta_and_another_test_size_keep_the_answers(named_model, photos, brightness):
    root, classes = photos
    frame = predict_photos(named_model, root / "a", tta=3, tta_preset="flip", image_size=48)
    assert frame.attrs["tta"] == 3
    assert frame["class_index"].tolist() == brightness.oracle(frame["file"])[0].tolist()


def test_a_model_without_class_names_uses_its_indices_with_a_warning(brightness, photos, tmp_path):
    root, classes = photos
    old = tmp_path / "old" / "model.keras"
    old.parent.mkdir()
    brightness.model().save(old)  # as an older carlib (or plain Keras) saved it
    assert read_class_names(old) is None
    with pytest.warns(ModelWarning, match="saved without class names.*class index"):
        frame = predict_photos(old, root / "a")
    assert frame["class_name"].tolist() == [str(classes[f]) for f in frame["file"]]
    assert frame.attrs["class_names_from"] == "none: class indices"

    names = [f"n{c}" for c in range(10)]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    named = predict_photos(old, root / "a", class_names=tmp_path / "labels.txt")
    assert named["class_name"].tolist() == [names[classes[f]] for f in named["file"]]
    assert predict_photos(old, root / "a", class_names=names)["class_name"].tolist() == named["class_name"].tolist()
    (old.parent / "classes.json").write_text(json.dumps(names))  # next to the model: read as its own
    assert read_class_names(old) == tuple(names)
    assert predict_photos(old, root / "a")["class_name"].tolist() == named["class_name"].tolist()
    with pytest.raises(ModelError, match="predicts 10 classes but"):
        predict_photos(old, root / "a", class_names=["x", "y"])


def test_class_names_from_a_training_folder(brightness, tmp_path):
    data = tmp_path / "data"
    for c in range(10):
        brightness.paint(data / f"class_{c:02d}" / "x.png", c)
    model = brightness.model()
    frame = predict_photos(model, data / "class_07", class_names=data)
    assert frame["class_name"].tolist() == ["class_07"]


def test_nothing_to_predict_and_bad_arguments_are_clear_errors(named_model, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no photos")
    with pytest.raises(DataError, match="no image files.*1 other file"):
        predict_photos(named_model, tmp_path / "empty")
    with pytest.raises(ConfigError, match="top_k"):
        predict_photos(named_model, tmp_path, top_k=0)


def test_save_model_keeps_a_plain_keras_file_with_the_names_inside(brightness, tmp_path):
    model = brightness.model()
    path = save_model(model, tmp_path / "m.keras", NAMES)
    assert read_class_names(path) == NAMES
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(keras.models.load_model(path)(x), model(x))  # Keras loads it as before
    assert carlib.read_class_names(carlib.save_model(model, path, list(NAMES))) == NAMES  # replaced in place
    assert not list(tmp_path.glob(".m.keras*"))  # the atomic write left nothing behind
    with pytest.raises(ModelError, match="3 class names for a model with 10 outputs"):
        save_model(model, tmp_path / "n.keras", ["a", "b", "c"])


def test_find_photos_skips_junk_in_folders_only(photos):
    root, classes = photos
    found, skipped = find_photos([root / "a"])
    assert [f for f, _ in found] == sorted(str(p) for p in (root / "a").glob("*") if not p.name.startswith("."))
    assert skipped == [(str(root / "a" / ".hidden.jpg"), "hidden file")]


# ---------------------------------------------------------------------------------------- CLI
def test_cli_predict_photos_writes_one_row_per_image(named_model, photos, brightness, tmp_path, capsys):
    root, classes = photos
    out = tmp_path / "preds.csv"
    listed = sorted(str(p) for p in (root / "a").glob("*.*") if not p.name.startswith("."))
    # photos before and after other flags, as a shell glob puts them
    assert main(["predict", str(named_model), listed[0], "--out", str(out), "--top-k", "2", *listed[1:]]) == 0
    printed = capsys.readouterr().out
    assert "3 image(s), 3 predicted" in printed and str(named_model) in printed
    written = pd.read_csv(out, keep_default_na=False)
    assert list(written.columns) == [*PHOTO_COLUMNS, "class_index_2", "class_name_2", "probability_2", "error"]
    assert written["file"].tolist() == listed
    assert written["class_name"].tolist() == [NAMES[c] for c in brightness.oracle(listed)[0]]
    assert out.read_text().splitlines()[1].split(",")[1].isdigit()  # class indices are written as integers

    assert main(["predict", str(named_model), str(root / "b" / "broken.jpg"), "--out", "-"]) == 1  # nothing predicted
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "file,class_index,class_name,probability,error"
    assert "not an image" in captured.out and "0 predicted" in captured.err


def test_cli_predict_photos_refuses_competition_flags(named_model, photos, capsys):
    root, _ = photos
    assert main(["predict", str(named_model), str(root), "--data-dir", str(root)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["predict", str(named_model), "--top-k", "3"]) == 2
    assert "--top-k and --classes apply to photos" in capsys.readouterr().err
