"""``carlib rerun RUN_ID``: train a recorded run's configuration again and say, figure by figure, whether it repeats.

The rerun uses the record's resolved config (the same seed, data folder and every parameter), writes
a new record into the same store marked ``rerun_of: <run_id>`` (with ``rerun_check``: what matched),
and compares every figure of the two records: the test and validation scores of both checkpoints,
the best epoch, the parameter count, and each column of the per-epoch history. With
``deterministic`` on, the figures must be equal to the last bit on the same CPU and libraries; without
it, each must lie within :data:`RERUN_TOLERANCE` (× the figure's size above 1: losses). Timings are
never compared.

Before training it says what would make the figures differ: the data folder gone (an error, unless
it is the embedded dataset, which is regenerated identically) or changed since the run (its
fingerprint, :mod:`carlib.data.fingerprint`; records older than fingerprints cannot be checked), and
another carlib, TensorFlow, Keras, NumPy, albumentations or Python version, or another machine.
"""

from __future__ import annotations

import dataclasses
import math
import platform
from pathlib import Path
from typing import Any, Callable

from carlib.data.embedded import embedded_data_dir
from carlib.data.fingerprint import data_fingerprint, fingerprint_difference
from carlib.data.folders import prepare_data
from carlib.errors import ConfigError, MissingFileError
from carlib.records.record import environment_info
from carlib.records.store import ResultsStore
from carlib.train.experiment import run_experiment

__all__ = ["RERUN_TOLERANCE", "FigureComparison", "RerunReport", "rerun_checks", "compare_records", "rerun"]

RERUN_TOLERANCE = 0.01  # without `deterministic`: |rerun - original| <= this x max(1, |original|)
# Figures that measure the machine's speed, not the model: never compared.
_TIMINGS = {"train_images_per_s", "eval_images_per_s", "epoch_time_s", "train_time_s"}


@dataclasses.dataclass(frozen=True)
class FigureComparison:
    """One figure of the original run and of its rerun; ``difference`` is rerun − original (for the history, the
    largest difference over the epochs); ``match`` within the tolerance (exactly, when it is 0)."""

    figure: str
    original: float | None
    rerun: float | None
    difference: float | None
    match: bool


@dataclasses.dataclass(frozen=True)
class RerunReport:
    """The rerun of ``original_id`` as ``rerun_id``: what was checked before training, and every figure compared."""

    original_id: str
    rerun_id: str
    tolerance: float  # 0: exact
    notes: tuple[str, ...]
    figures: tuple[FigureComparison, ...]

    @property
    def matched(self) -> bool:
        """Whether every figure matched."""
        return all(f.match for f in self.figures)

    def table(self) -> str:
        """The comparison, one line per figure, and the conclusion."""
        width = max([len(f.figure) for f in self.figures] + [6])
        lines = [f"{'figure':<{width}}  {'original':>12}  {'rerun':>12}  {'difference':>11}  match"]
        for f in self.figures:
            lines.append(f"{f.figure:<{width}}  {_number(f.original):>12}  {_number(f.rerun):>12}  "
                         f"{_number(f.difference, signed=True):>11}  {'yes' if f.match else 'NO'}")
        wrong = [f.figure for f in self.figures if not f.match]
        rule = ("exactly (deterministic: on)" if self.tolerance == 0 else
                f"within {self.tolerance:g} x max(1, |figure|) (deterministic: off; set deterministic: true for "
                "exact reruns)")
        if not wrong:
            exactly = self.tolerance and all(f.difference in (0, None) for f in self.figures)
            lines.append(f"rerun {self.rerun_id} of {self.original_id}: all {len(self.figures)} figures match {rule}"
                         + ("; every one exactly." if exactly else "."))
        else:
            lines.append(f"rerun {self.rerun_id} of {self.original_id}: {len(wrong)} of {len(self.figures)} figures "
                         f"differ beyond the rule ({rule}): {', '.join(wrong)}.")
        return "\n".join(lines)


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.6g}" if signed else f"{value:.6g}"


def rerun_checks(record: dict[str, Any]) -> list[str]:
    """What may make a rerun of ``record`` differ, in sentences; raises when its data folder is gone.

    The data folder is prepared as a run would (archives extracted, the embedded dataset
    regenerated) before its fingerprint is compared with the record's.
    """
    notes = []
    config = record.get("config", {})
    data_dir = config.get("data_dir")
    if not data_dir:
        raise ConfigError(f"run {record['run_id']!r} does not record its data folder (config.data_dir): it cannot be "
                          "rerun on the same data.")
    embedded = Path(data_dir).resolve() == embedded_data_dir().resolve()
    if not Path(data_dir).is_dir():
        if not embedded:
            raise MissingFileError(f"run {record['run_id']!r} read its data from {data_dir!r}, which is gone; put the "
                                   "same files back there (or a link to them) and rerun.")
        notes.append(f"the embedded dataset {data_dir!r} is gone: it is generated again (the same images).")
    root = prepare_data(data_dir).root
    recorded = record.get("data", {}).get("fingerprint")
    if recorded is None:
        notes.append(f"the record has no data fingerprint (written by an older carlib): whether {str(root)!r} still "
                     "holds the same files cannot be checked.")
    else:
        changed = fingerprint_difference(recorded, data_fingerprint(root))
        if changed:
            notes.append(f"the data folder {str(root)!r} has changed since the run ({changed}): the figures will "
                         "differ.")
    then, now = record.get("versions", {}), environment_info()["versions"]
    for name in ("carlib", "tensorflow", "keras", "numpy", "albumentations", "python"):
        if name in then and then.get(name) != now.get(name):
            notes.append(f"{name} {then.get(name)} made the run, {now.get(name)} reruns it: the figures may differ.")
    machine = record.get("hardware", {})
    here = {"machine": platform.machine(), "platform": platform.platform()}
    if any(key in machine and machine[key] != here[key] for key in here):
        notes.append(f"the run ran on {machine.get('platform')} ({machine.get('machine')}), this is {here['platform']} "
                     f"({here['machine']}): even a deterministic run repeats exactly only on the same kind of CPU.")
    return notes


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _within(original: float | None, rerun: float | None, tolerance: float) -> bool:
    if original is None or rerun is None:
        return original is None and rerun is None
    if math.isnan(original) or math.isnan(rerun):
        return math.isnan(original) and math.isnan(rerun)
    return abs(rerun - original) <= tolerance * max(1.0, abs(original))


def compare_records(original: dict[str, Any], rerun: dict[str, Any], tolerance: float) -> list[FigureComparison]:
    """Every figure of the two records (metrics, then each history column), compared within ``tolerance``."""
    figures = []
    metrics, again = original.get("metrics") or {}, rerun.get("metrics") or {}
    for name in sorted(set(metrics) | set(again)):
        a, b = _scalar(metrics.get(name)), _scalar(again.get(name))
        if name in _TIMINGS or (a is None and b is None):
            continue
        difference = b - a if a is not None and b is not None else None
        figures.append(FigureComparison(name, a, b, difference, _within(a, b, tolerance)))
    history, repeated = original.get("history") or [], rerun.get("history") or []
    columns = sorted({k for row in history + repeated for k in row} - _TIMINGS - {"epoch"})
    for name in columns:
        a = [_scalar(row.get(name)) for row in history]
        b = [_scalar(row.get(name)) for row in repeated]
        pairs = list(zip(a, b))
        match = len(a) == len(b) and all(_within(x, y, tolerance) for x, y in pairs)
        gaps = [y - x for x, y in pairs if x is not None and y is not None]
        figure = f"history {name} ({len(a)} epochs)" if len(a) == len(b) else \
            f"history {name} ({len(a)} vs {len(b)} epochs)"
        figures.append(FigureComparison(figure, a[-1] if a else None, b[-1] if b else None,
                                        max(gaps, key=abs) if gaps else None, match))
    return figures


def rerun(run_id: str, results_dir: str | None = None, *, tolerance: float = RERUN_TOLERANCE,
          say: Callable[[str], None] = print) -> RerunReport:
    """Train run ``run_id`` of the store again and compare the figures (see the module's docstring).

    ``tolerance`` applies when the run was not ``deterministic`` (with it, figures must be equal).
    ``say`` prints the checks made before training. The rerun's record is written to the same store.
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"--tolerance must be a number >= 0 (0.01: one point of accuracy), got {tolerance!r}")
    store = ResultsStore(results_dir)
    original = store.record(run_id)
    notes = rerun_checks(original)
    exact = bool(original["config"].get("deterministic"))
    for note in notes:
        say(f"carlib rerun {run_id}: {note}")
    config = {**original["config"], "results_dir": str(store.root), "trial_id": None}
    record = run_experiment(config, rerun_of=run_id)
    limit = 0.0 if exact else float(tolerance)
    figures = compare_records(original, record, limit)
    report = RerunReport(run_id, record["run_id"], limit, tuple(notes), tuple(figures))
    record["rerun_check"] = {"tolerance": limit, "matched": report.matched,
                             "differing": [f.figure for f in figures if not f.match], "notes": list(notes)}
    store.write(record)
    return report
