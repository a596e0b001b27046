"""The submission: exactly the sample's rows, order and Id format; bad files named, never a shifted row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import carlib
from carlib.cli import main
from carlib.config import ExperimentConfig
from carlib.data.folders import list_class_images, prepare_data
from carlib.data.synthetic import generate_car_dataset
from carlib.errors import SubmissionError, SubmissionWarning
from carlib.evaluate.submission import predict_submission, score_submission, validate_submission
from carlib.studies.parameters import load_params_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_file(brightness, tmp_path_factory):
    """A saved 32 px model whose class is the image's brightness (conftest.Brightness): its answer for every
    test image is known, and differs from row to row, so a shifted row cannot pass unnoticed."""
    path = tmp_path_factory.mktemp("model") / "model.keras"
    brightness.model().save(path)
    return path


@pytest.fixture
def data_dir(brightness, tmp_path):
    """A fresh embedded-style dataset (competition layout) that a test may damage; its test images are repainted
    so that neighbouring rows of the sample submission belong to different brightness classes."""
    root = generate_car_dataset(tmp_path / "data", n_train=30, n_test=12, seed=2)
    test_dir = prepare_data(root).test_dir
    for row, image_id in enumerate(_read(root / "sample-submission.csv")["Id"]):
        brightness.paint(test_dir / image_id, (3 * row + 1) % 10, width=160 + 40 * row, height=120, seed=row)
    return root


def _oracle(brightness, data_dir, ids) -> list[str]:
    """The class each test image's brightness says (PIL's decode, no carlib), as the submission spells it."""
    test_dir = prepare_data(data_dir).test_dir
    return [str(c) for c in brightness.oracle([test_dir / i for i in ids])[0]]


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_rows_match_the_sample_submission_exactly(model_file, data_dir, brightness, tmp_path):
    out = tmp_path / "submission.csv"
    submission = predict_submission(model_file, data_dir, out)
    written, sample = _read(out), _read(data_dir / "sample-submission.csv")
    assert list(written.columns) == list(sample.columns) == ["Id", "Category"]
    assert written["Id"].tolist() == sample["Id"].tolist()  # same Ids, same order, same format
    assert written["Category"].tolist() == _oracle(brightness, data_dir, sample["Id"])  # each row its own image's
    assert written["Category"].tolist() == [str((3 * row + 1) % 10) for row in range(12)]
    assert submission.n_predicted == len(sample) and not submission.missing and not submission.unreadable
    assert out.read_text().splitlines()[0] == "Id,Category"
    assert not list(tmp_path.glob(".submission.csv.*"))  # the atomic write left no temporary file


def test_predictions_are_those_of_the_model_for_each_file(model_file, data_dir, brightness, tmp_path):
    import keras

    from carlib.data.folders import ImageList
    from carlib.evaluate.predict import predict_images

    submission = predict_submission(model_file, data_dir, tmp_path / "s.csv")
    layout = prepare_data(data_dir)
    ids = submission.frame["Id"].tolist()
    images = ImageList(tuple(str(layout.test_dir / i) for i in ids), np.zeros(len(ids), np.int32), tuple(map(str, range(10))))
    expected = predict_images(keras.models.load_model(model_file), images).argmax(axis=1).astype(str)
    assert submission.frame["Category"].tolist() == expected.tolist() == _oracle(brightness, data_dir, ids)
    assert len(set(expected)) == 10  # the predictions vary: a row order shifted by one would fail


@pytest.mark.parametrize("tta", [0, 2])
def test_unreadable_images_are_named_and_get_the_fallback_row(model_file, data_dir, brightness, tmp_path,
                                                               tensorflow_reads, undecodable_jpeg, tta):
    layout = prepare_data(data_dir)  # extracts test.zip once
    sample = _read(data_dir / "sample-submission.csv")
    broken, undecodable = sample["Id"].iloc[3], sample["Id"].iloc[5]
    (layout.test_dir / broken).write_bytes(b"not a jpeg")  # screening turns it away
    good = layout.test_dir / sample["Id"].iloc[0]
    undecodable_jpeg(good, layout.test_dir / undecodable)  # passes screening; the prediction pass finds it
    with pytest.warns(SubmissionWarning, match=f"{broken}, {undecodable}"):
        submission = predict_submission(model_file, data_dir, tmp_path / "s.csv", tta=tta, tta_preset="flip")
    written = _read(tmp_path / "s.csv")
    assert written["Id"].tolist() == sample["Id"].tolist()
    train = list_class_images(layout.train_dir)
    majority = train.class_names[int(np.argmax(np.bincount(train.labels)))]
    assert submission.fallback_label == majority
    assert written.loc[written["Id"].isin([broken, undecodable]), "Category"].tolist() == [majority, majority]
    assert submission.unreadable == (broken, undecodable)
    assert submission.source.tolist().count("predicted") == len(sample) - 2
    assert submission.source.iloc[3] == submission.source.iloc[5] == "fallback: unreadable"
    # each test file is read by TensorFlow once: the prediction pass decodes, nothing checks it before
    assert dict(tensorflow_reads) == {str(layout.test_dir / i): 1 for i in sample["Id"] if i != broken}
    others = ~written["Id"].isin([broken, undecodable])
    assert written.loc[others, "Category"].tolist() == _oracle(brightness, data_dir, written.loc[others, "Id"])


def test_missing_and_extra_files_are_reported_without_shifting_rows(model_file, data_dir, brightness, tmp_path):
    layout = prepare_data(data_dir)
    sample = _read(data_dir / "sample-submission.csv")
    gone = sample["Id"].iloc[0]
    clean = predict_submission(model_file, data_dir, tmp_path / "clean.csv").frame.set_index("Id")["Category"]
    (layout.test_dir / gone).unlink()
    (layout.test_dir / "stray.jpg").write_bytes((layout.test_dir / sample["Id"].iloc[1]).read_bytes())
    with pytest.warns(SubmissionWarning) as caught:
        submission = predict_submission(model_file, data_dir, tmp_path / "s.csv", fallback="4")
    messages = " ".join(str(w.message) for w in caught)
    assert gone in messages and "stray.jpg" in messages
    written = _read(tmp_path / "s.csv").set_index("Id")["Category"]
    assert written.index.tolist() == sample["Id"].tolist()
    assert written[gone] == "4" and submission.missing == (gone,) and submission.extra == ("stray.jpg",)
    others = [i for i in sample["Id"] if i != gone]
    assert written[others].tolist() == clean[others].tolist()  # every other row kept its own prediction
    assert written[others].tolist() == _oracle(brightness, data_dir, others)


def test_tta_submission_keeps_the_rows(model_file, data_dir, brightness, tmp_path):
    submission = predict_submission(model_file, data_dir, tmp_path / "s.csv", tta=3, tta_preset="light")
    assert submission.tta is not None and submission.tta.per_pass.shape[:2] == (3, 12)
    written = _read(tmp_path / "s.csv")
    assert written["Id"].tolist() == _read(data_dir / "sample-submission.csv")["Id"].tolist()
    assert written["Category"].tolist() == _oracle(brightness, data_dir, written["Id"])  # flips keep the brightness


def test_validate_submission_names_every_problem(data_dir, tmp_path):
    sample_path = data_dir / "sample-submission.csv"
    sample = _read(sample_path)
    classes = [str(c) for c in range(10)]
    validate_submission(sample_path, sample_path, classes)
    cases = {
        "order": sample.iloc[::-1],
        "more than once": pd.concat([sample.iloc[:-1], sample.iloc[:1]]),
        "missing": sample.iloc[1:],
        "not classes": sample.assign(Category=["11"] + sample["Category"].tolist()[1:]),
        "header": sample.rename(columns={"Category": "label"}),
    }
    for expected, frame in cases.items():
        path = tmp_path / "bad.csv"
        frame.to_csv(path, index=False)
        with pytest.raises(SubmissionError, match=expected):
            validate_submission(path, sample_path, classes)


def test_score_submission_against_the_answers(data_dir, tmp_path):
    answers_path = data_dir / "test-answers.csv"
    assert score_submission(answers_path, answers_path) == {"accuracy": 1.0, "n": 12, "n_correct": 12}
    answers = _read(answers_path)
    wrong = answers.copy()
    wrong.loc[:2, "Category"] = [str((int(c) + 1) % 10) for c in wrong.loc[:2, "Category"]]
    wrong.to_csv(tmp_path / "wrong.csv", index=False)
    assert score_submission(tmp_path / "wrong.csv", answers_path)["n_correct"] == 9
    answers.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(SubmissionError, match="1 missing"):
        score_submission(tmp_path / "short.csv", answers_path)


def test_no_sample_submission_is_a_clear_error(model_file, tmp_path, data_dir):
    (data_dir / "sample-submission.csv").unlink()
    with pytest.raises(FileNotFoundError, match="sample-submission.csv"):
        predict_submission(model_file, data_dir, tmp_path / "s.csv")


# --------------------------------------------------------------------- CLI + final
def test_cli_predict_end_to_end_on_a_final_run(tiny_data_dir, tmp_path, capsys):
    record = carlib.run_experiment(data_dir=str(tiny_data_dir), image_size=32, batch_size=16, epochs=1,
                                   val_split=0, results_dir=str(tmp_path / "results"), study="final")
    assert record["status"] == "ok" and record["data"]["n_val"] == 0
    out = tmp_path / "submission.csv"
    code = main(["predict", record["run_dir"], "--data-dir", str(tiny_data_dir), "--out", str(out),
                 "--tta", "2", "--tta-preset", "flip", "--batch-size", "8"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "last.keras" in printed  # a final run's folder predicts with its last weights
    assert "2-pass TTA" in printed and "accuracy against test-answers.csv" in printed
    assert _read(out)["Id"].tolist() == _read(Path(tiny_data_dir) / "sample-submission.csv")["Id"].tolist()


def test_cli_predict_errors_are_one_line(model_file, tiny_data_dir, tmp_path, capsys):
    assert main(["predict", str(model_file), "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "s.csv"),
                 "--tta", "4", "--tta-preset", "ligth"]) == 2
    assert "Did you mean 'light'" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nothing.keras"), "--data-dir", str(tiny_data_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_final_presets_train_on_all_labelled_data(preset):
    params = load_params_file(ROOT / "params" / "final" / f"{preset}.yaml")
    assert float(params["val_split"]) == 0 and params["study"] == "final"
    params.pop("seeds", None)  # a study parameter, not a config field
    config = ExperimentConfig.from_dict(params)
    assert config.val_split == 0 and config.epochs >= 1
