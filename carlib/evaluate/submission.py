"""The competition submission: a saved model over ``test_upload/``, rows exactly as ``sample-submission.csv``.

:func:`predict_submission` reads ``sample-submission.csv`` for the rows, their order and the
``Id`` format (the file is the contract; the test folder is not), predicts each row's file
(optionally with TTA), writes the CSV atomically and checks it with
:func:`validate_submission`. Nothing is ever matched by position, so a bad file cannot shift
rows:

- an ``Id`` whose file is missing, or a file that cannot be decoded (found by the prediction
  pass itself, which decodes each file once: :func:`carlib.evaluate.readable.predict_files`), is reported by name with a warning and gets the **fallback class**: the
  most frequent class of the training folders (ties: the lowest class index), or the class
  passed as ``fallback``;
- a test file that no row names is reported and ignored.

:func:`score_submission` scores a submission against answers (the embedded dataset's
``test-answers.csv``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from carlib.base.files import atomic_path
from carlib.data.folders import ImageList, list_class_images, prepare_data, read_sample_submission
from carlib.data.screen import screen_images
from carlib.data.tta_presets import check_tta_preset
from carlib.errors import MissingFileError, SubmissionError, SubmissionWarning
from carlib.evaluate.predict import load_model, model_for_classes, resolve_model_path
from carlib.evaluate.readable import predict_files

__all__ = [
    "SubmissionError",
    "SubmissionWarning",
    "Submission",
    "predict_submission",
    "validate_submission",
    "score_submission",
    ]


@dataclasses.dataclass(frozen=True, eq=False)
class Submission:
    """A written and validated submission.

    ``frame`` holds the CSV's rows; ``source`` says for each row whether it was ``predicted``
    or is a ``fallback`` (file ``missing`` or ``unreadable``). ``tta`` is the
    :class:`carlib.evaluate.tta.TTAResult` when TTA was used.
    """

    path: Path
    frame: pd.DataFrame
    source: pd.Series
    fallback_label: str
    missing: tuple[str, ...]
    unreadable: tuple[str, ...]
    extra: tuple[str, ...]
    model_path: str | None
    tta: object | None = None

    @property
    def n_predicted(self) -> int:
        """Rows whose label the model predicted."""
        return int((self.source == "predicted").sum())

    def summary(self) -> str:
        """A few lines for the CLI and logs."""
        lines = [f"wrote {self.path}: {len(self.frame)} rows, {self.n_predicted} predicted"
                 + (f" with {self.tta.passes}-pass TTA ({self.tta.preset})" if self.tta else "")]
        for label, names in (("missing file", self.missing), ("unreadable image", self.unreadable)):
            if names:
                lines.append(f"  {len(names)} {label}(s) got the fallback class {self.fallback_label!r}: "
                             + ", ".join(names))
        if self.extra:
            lines.append(f"  {len(self.extra)} test file(s) not in the sample submission, ignored: " + ", ".join(self.extra))
        if self.tta:
            lines.append("  " + self.tta.diagnostics.summary())
        return "\n".join(lines)


def _atomic_write_csv(frame: pd.DataFrame, out: Path) -> None:
    with atomic_path(out) as temporary:
        frame.to_csv(temporary, index=False, lineterminator="\n")


def validate_submission(csv_path: str | os.PathLike, sample_path: str | os.PathLike,
                        class_names: Sequence[str]) -> None:
    """Check a submission against its sample: same header, every Id once in the same order, labels in range.

    Raises :class:`SubmissionError` listing every problem found.
    """
    sample = read_sample_submission(sample_path)
    submission = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    problems = []
    if list(submission.columns) != list(sample.columns):
        problems.append(f"header {list(submission.columns)} differs from the sample's {list(sample.columns)}")
    else:
        ids, expected = submission.iloc[:, 0], sample.iloc[:, 0]
        duplicated = ids[ids.duplicated()].unique().tolist()
        if duplicated:
            problems.append(f"ids listed more than once: {', '.join(duplicated[:10])}")
        missing = sorted(set(expected) - set(ids))
        if missing:
            problems.append(f"{len(missing)} id(s) of the sample are missing: {', '.join(missing[:10])}")
        unexpected = sorted(set(ids) - set(expected))
        if unexpected:
            problems.append(f"{len(unexpected)} id(s) are not in the sample: {', '.join(unexpected[:10])}")
        if not (duplicated or missing or unexpected) and not ids.reset_index(drop=True).equals(expected.reset_index(drop=True)):
            first = int(np.flatnonzero(ids.to_numpy() != expected.to_numpy())[0])
            problems.append(f"rows are not in the sample's order (first difference at row {first + 1}: "
                            f"{ids.iloc[first]!r} where the sample has {expected.iloc[first]!r})")
        labels = submission.iloc[:, 1]
        allowed = set(map(str, class_names))
        bad = labels[~labels.isin(allowed)]
        if len(bad):
            problems.append(f"{len(bad)} label(s) are not classes ({', '.join(sorted(allowed))}): "
                            + ", ".join(f"{i}={v!r}" for i, v in zip(ids[bad.index][:5], bad[:5])))
    if problems:
        raise SubmissionError(f"submission {str(csv_path)!r} is invalid: " + "; ".join(problems) + ".")


def _fallback_label(train: ImageList, fallback: str | None) -> str:
    if fallback is not None:
        if str(fallback) not in train.class_names:
            raise SubmissionError(f"fallback={fallback!r} is not a class; classes: {', '.join(train.class_names)}.")
        return str(fallback)
    counts = np.bincount(train.labels, minlength=len(train.class_names))
    return train.class_names[int(np.argmax(counts))]  # argmax: ties go to the lowest class index


def predict_submission(model_or_path, data_dir: str | os.PathLike | None = None,
                       out: str | os.PathLike = "submission.csv", *, tta: int = 0, tta_preset: str = "light",
                       tta_seed: int = 0, tta_mean: str = "arithmetic", batch_size: int = 32,
                       image_size: int | None = None, fallback: str | None = None) -> Submission:
    """Predict the test images of ``data_dir`` and write a validated submission CSV to ``out``.

    ``model_or_path``: a model, a ``.keras`` file or a run folder (a final run's folder uses
    ``last.keras``; see :func:`carlib.evaluate.predict.resolve_model_path`). ``data_dir``: the
    competition folder (``test.zip`` is extracted once) or ``None`` for the embedded dataset.
    ``tta`` > 1 averages that many passes of ``tta_preset``. Class labels are the training
    folder names; missing or unreadable images get ``fallback`` (default: the training set's
    most frequent class) and a warning naming them.
    """
    if tta and int(tta) > 1:
        check_tta_preset(tta_preset)
    model = load_model(model_or_path)
    model_path = None if hasattr(model_or_path, "predict") else str(resolve_model_path(model_or_path))
    layout = prepare_data(data_dir)
    if layout.sample_submission is None:
        raise MissingFileError(f"{str(layout.root)!r} has no sample-submission.csv: it defines the rows, their "
                                "order and the Id format of a submission, so carlib needs it. To predict photos "
                                "without one: carlib predict MODEL PATH… (files or folders).")
    if layout.test_dir is None:
        raise MissingFileError(f"{str(layout.root)!r} has neither test.zip nor test_upload/: no test images.")
    sample = read_sample_submission(layout.sample_submission)
    id_column, label_column = sample.columns[0], sample.columns[1]
    train = list_class_images(layout.train_dir)
    model, _ = model_for_classes(model, train.class_names, image_size)
    fallback_label = _fallback_label(train, fallback)

    ids = sample[id_column].tolist()
    present = {f.name: f for f in layout.test_dir.iterdir() if f.is_file() and not f.name.startswith(".")}
    missing = [i for i in ids if i not in present]
    wanted = set(ids)
    extra = sorted(name for name in present if name not in wanted)
    candidates = [i for i in ids if i in present]
    # Screened like training images (EXIF rotation honoured, converted copies where TensorFlow would
    # decode wrongly), then decoded once by the prediction pass, which leaves out what TensorFlow cannot decode.
    screened = screen_images([present[i] for i in candidates])
    decode_path = dict(zip(screened.sources, screened.usable))
    usable = [i for i in candidates if str(present[i]) in decode_path]
    tta_result, readable, probabilities = None, [], None
    if usable:
        test_images = ImageList(tuple(decode_path[str(present[i])] for i in usable), np.zeros(len(usable), np.int32),
                                train.class_names)
        predicted = predict_files(model, test_images, batch_size=batch_size, tta=tta, tta_preset=tta_preset,
                                  tta_seed=tta_seed, tta_mean=tta_mean)
        readable = [usable[j] for j in predicted.decoded]
        probabilities, tta_result = predicted.probabilities, predicted.tta
    readable_ids = set(readable)
    unreadable = [i for i in candidates if i not in readable_ids]
    for what, names in (("has no file in " + str(layout.test_dir), missing), ("cannot be decoded", unreadable)):
        if names:
            warnings.warn(f"{len(names)} test image(s) {what}: {', '.join(names)}; their rows get the fallback class "
                          f"{fallback_label!r} (the training set's most frequent class unless fallback= is given).",
                          SubmissionWarning, stacklevel=2)
    if extra:
        warnings.warn(f"{len(extra)} file(s) in {layout.test_dir} are not in the sample submission and are ignored: "
                      f"{', '.join(extra)}", SubmissionWarning, stacklevel=2)

    labels = pd.Series(fallback_label, index=ids, dtype=object)
    source = pd.Series("fallback: missing", index=ids, dtype=object)
    source.loc[unreadable] = "fallback: unreadable"
    if readable:
        labels.loc[readable] = [train.class_names[c] for c in probabilities.argmax(axis=1)]  # by Id, never by position
        source.loc[readable] = "predicted"
    frame = pd.DataFrame({id_column: ids, label_column: labels.loc[ids].to_numpy()})
    out = Path(out).expanduser()
    _atomic_write_csv(frame, out)
    validate_submission(out, layout.sample_submission, train.class_names)
    return Submission(path=out, frame=frame, source=source.loc[ids].reset_index(drop=True), fallback_label=fallback_label,
                      missing=tuple(missing), unreadable=tuple(unreadable), extra=tuple(extra), model_path=model_path,
                      tta=tta_result)


def score_submission(csv_path: str | os.PathLike, answers_path: str | os.PathLike) -> dict:
    """Accuracy of a submission against an answers CSV with the same id column (``test-answers.csv``).

    Returns ``{"accuracy", "n", "n_correct"}``; ids must match one to one.
    """
    submission = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    answers = read_sample_submission(answers_path)
    id_column = answers.columns[0]
    if id_column not in submission.columns or submission.shape[1] < 2:
        raise SubmissionError(f"{str(csv_path)!r} has columns {list(submission.columns)}; expected "
                              f"{list(answers.columns)} like the answers.")
    submitted = submission.set_index(id_column).iloc[:, 0]
    truth = answers.set_index(id_column).iloc[:, 0]
    if submitted.index.duplicated().any():
        raise SubmissionError(f"{str(csv_path)!r} lists some ids more than once.")
    missing = sorted(set(truth.index) - set(submitted.index))
    unexpected = sorted(set(submitted.index) - set(truth.index))
    if missing or unexpected:
        raise SubmissionError(f"ids differ from the answers: {len(missing)} missing ({', '.join(missing[:5])}), "
                              f"{len(unexpected)} unexpected ({', '.join(unexpected[:5])}).")
    correct = int((submitted.loc[truth.index] == truth).sum())
    return {"accuracy": correct / len(truth) if len(truth) else float("nan"), "n": int(len(truth)), "n_correct": correct}
