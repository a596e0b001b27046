"""Export a results store to MLflow (``carlib results export --mlflow URI``): the tracker many teams already browse.

carlib's JSON store stays the source of truth; MLflow gets a copy that can be exported again at any
time. Per record, one MLflow run in the experiment named after the study:

- **params**: the resolved config (every parameter, as text);
- **metrics**: the record's figures (test and validation scores of both checkpoints, best epoch,
  TTA, parameter count, throughput) and its timings at step 0, and each history column per epoch
  (``accuracy``, ``val_accuracy``, ``loss``, ``val_loss``, ``learning_rate``, … with ``step`` = epoch);
- **tags**: ``carlib_run_id`` (the key: a record already exported is never exported again),
  ``carlib_study``, ``carlib_status``, ``carlib_seed``, the error of a failed run, ``carlib_rerun_of``,
  the library versions and the host;
- **artifacts**: ``best.keras`` and ``last.keras`` (under ``model/``), ``history.csv``,
  ``learning_curves.png`` and the record itself (``carlib_record.json``);
- start and end time from the record, status FINISHED or FAILED.

A study with a spec (its scientific parameters and metric) also gets a **parent run**
(``carlib_summary_of`` = the study; its runs are nested under it with ``mlflow.parentRunId``): the
summary across seeds (``summary.csv``), the verdict (tags ``carlib_verdict*`` and the run's
description) and its figures as metrics whose step is the number of the study's runs, so the verdict's
history stays visible. It is updated when an export adds runs to the study.

Not exported: executed notebooks and their logs, trial backups, TensorBoard event files, exported
SavedModels, and records still running. A run deleted in MLflow is not exported again. MLflow is an
optional extra (``pip install "carlib[mlflow]"``), imported only here.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from carlib.errors import ConfigError
from carlib.records.store import ResultsStore
from carlib.records.table import records_to_frame
from carlib.studies.specs import STUDIES
from carlib.studies.stats import compare_top_two, summarize

__all__ = ["RUN_TAG", "SUMMARY_TAG", "ExportReport", "export_to_mlflow"]

RUN_TAG = "carlib_run_id"  # the key of an exported record
SUMMARY_TAG = "carlib_summary_of"  # the key of a study's parent run
_COMPLETE_TAG = "carlib_export"  # "complete" once every part of a run is logged; an export cut short is redone
_RUN_FILES = {"best.keras": "model", "last.keras": "model", "history.csv": None, "learning_curves.png": None}
_BATCH = {"params": 100, "tags": 100, "metrics": 1000}  # MLflow's limits per log_batch call


@dataclasses.dataclass
class ExportReport:
    """What an export did: runs exported and skipped (already there), parent runs created or updated."""

    tracking_uri: str
    exported: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    parents: dict[str, str] = dataclasses.field(default_factory=dict)  # study -> "created" or "updated"

    def summary(self) -> str:
        """One line: how many runs went where, and the parent runs."""
        studies = ", ".join(f"{study} ({what})" for study, what in self.parents.items()) or "none"
        return (f"carlib results export: {len(self.exported)} run(s) exported to {self.tracking_uri}, "
                f"{len(self.skipped)} already there (skipped); study summary runs: {studies}")


def _mlflow():
    try:
        import mlflow  # deferred: an optional extra, slow to import
        from mlflow.entities import Metric, Param, RunTag, ViewType  # deferred: as above
        from mlflow.tracking import MlflowClient  # deferred: as above
    except ImportError as err:
        raise ConfigError(f"exporting to MLflow needs the mlflow extra ({err}): pip install \"carlib[mlflow]\" "
                          "(make install installs it).") from None
    return mlflow, MlflowClient, Metric, Param, RunTag, ViewType


def _prepare_uri(uri: str) -> str:
    """``uri`` as MLflow takes it; a file store (``file:``, a plain path) is allowed: MLflow 3 refuses it by default."""
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError("--mlflow needs a tracking URI: sqlite:///mlflow.db (a local database), file:///path/mlruns, "
                          "or a tracking server's http(s)://host:port")
    uri = uri.strip()
    if uri.startswith("file:") or "://" not in uri and not uri.startswith(("databricks", "sqlite:")):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # maintenance mode in MLflow 3, still readable
    return uri


def _artifact_location(uri: str, study: str) -> str | None:
    """Where a new experiment's artifacts go: beside a local sqlite database (``mlartifacts/<study>``) rather than
    MLflow's default, ``./mlruns`` of whatever folder the export ran in; elsewhere, the tracking store's default."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):])
    return (database.expanduser().resolve().parent / "mlartifacts" / study).as_uri()


def _millis(stamp: str | None) -> int | None:
    if not stamp:
        return None
    try:
        return int(_dt.datetime.fromisoformat(stamp).timestamp() * 1000)
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


def _text(value: Any, limit: int) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _batches(client, run_id: str, *, params=(), tags=(), metrics=()) -> None:
    """Log everything in as few ``log_batch`` calls as MLflow's limits allow."""
    for kind, items in (("params", list(params)), ("tags", list(tags)), ("metrics", list(metrics))):
        size = _BATCH[kind]
        for start in range(0, len(items), size):
            client.log_batch(run_id, **{kind: items[start:start + size]})


class _Exporter:
    """One export to one tracking URI (the MLflow client and entity classes, the report)."""

    def __init__(self, tracking_uri: str, say: Callable[[str], None]):
        self.mlflow, client_class, self.Metric, self.Param, self.RunTag, self.ViewType = _mlflow()
        for name in ("mlflow", "alembic"):  # MLflow's database set-up lines are not the user's business
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri = _prepare_uri(tracking_uri)
        self.client = client_class(self.uri)
        self.report = ExportReport(self.uri)
        self.say = say

    def experiment(self, study: str) -> str:
        """The experiment of ``study`` (created when missing); a deleted one is an error that says what to do."""
        found = self.client.get_experiment_by_name(study)
        if found is None:
            return self.client.create_experiment(study, artifact_location=_artifact_location(self.uri, study),
                                                 tags={"carlib_study": study})
        if found.lifecycle_stage == "deleted":
            raise ConfigError(f"the MLflow experiment {study!r} at {self.uri} is deleted: restore it (mlflow "
                              "experiments restore) or remove it for good (mlflow gc), then export again.")
        return found.experiment_id

    def existing(self, experiment_id: str) -> tuple[dict[str, str], str | None]:
        """Records already exported (``{carlib run id: MLflow run id}``) and the study's parent run; runs an earlier
        export left unfinished are deleted, to be exported again."""
        done, parent, page = {}, None, None
        while True:
            runs = self.client.search_runs([experiment_id], run_view_type=self.ViewType.ALL, max_results=1000,
                                           page_token=page)
            for run in runs:
                tags = run.data.tags
                if SUMMARY_TAG in tags and run.info.lifecycle_stage == "active":
                    parent = run.info.run_id
                elif RUN_TAG in tags and tags.get(_COMPLETE_TAG) == "complete":
                    done[tags[RUN_TAG]] = run.info.run_id
                elif RUN_TAG in tags and run.info.lifecycle_stage == "active":
                    self.client.delete_run(run.info.run_id)
            page = runs.token
            if not page:
                return done, parent

    def log_record(self, experiment_id: str, parent: str | None, record: dict[str, Any], store: ResultsStore) -> None:
        """One MLflow run for ``record``: params, metrics, history, tags, artifacts; marked complete last."""
        config, metrics = record.get("config") or {}, record.get("metrics") or {}
        started, finished = _millis(record.get("started_at")), _millis(record.get("finished_at"))
        tags = {RUN_TAG: record["run_id"], "carlib_study": str(record.get("study")),
                "carlib_status": str(record.get("status")), "carlib_seed": str(config.get("seed")),
                **({"mlflow.parentRunId": parent} if parent else {}),
                **({"carlib_rerun_of": record["rerun_of"]} if record.get("rerun_of") else {}),
                **({"carlib_error": _text(record["error"], 8000)} if record.get("error") else {}),
                **{f"carlib_version_{k}": str(v) for k, v in (record.get("versions") or {}).items() if v},
                **({"carlib_host": str(record["hardware"]["host"])}
                   if (record.get("hardware") or {}).get("host") else {})}
        run = self.client.create_run(experiment_id, start_time=started, tags=tags, run_name=record["run_id"])
        run_id, stamp = run.info.run_id, finished or started or 0
        figures = [self.Metric(k, v, stamp, 0) for k, v in
                   ((k, _number(v)) for k, v in {**metrics, **(record.get("timings") or {})}.items()) if v is not None]
        for row in record.get("history") or []:
            step = int(row.get("epoch", 0))
            figures += [self.Metric(k, v, stamp, step) for k, v in ((k, _number(v)) for k, v in row.items())
                        if k != "epoch" and v is not None]
        _batches(self.client, run_id, params=[self.Param(k, _text(v, 6000)) for k, v in sorted(config.items())],
                 metrics=figures)
        self.log_files(run_id, record, store)
        self.client.set_tag(run_id, _COMPLETE_TAG, "complete")
        self.client.set_terminated(run_id, "FINISHED" if record.get("status") == "ok" else "FAILED",
                                   end_time=finished)

    def log_files(self, run_id: str, record: dict[str, Any], store: ResultsStore) -> None:
        """The run folder's model files, history and curves (where they are), and the record itself."""
        folder = store.runs_dir / record["run_id"]
        if not folder.is_dir() and record.get("run_dir"):
            folder = Path(record["run_dir"])  # a store whose runs live elsewhere
        for name, artifact_path in _RUN_FILES.items():
            if (folder / name).is_file():
                self.client.log_artifact(run_id, str(folder / name), artifact_path)
        self.log_text(run_id, "carlib_record.json", json.dumps(record, indent=1, default=str))

    def log_text(self, run_id: str, name: str, text: str) -> None:
        """``text`` as the artifact ``name`` of ``run_id`` (replacing an earlier one)."""
        with tempfile.TemporaryDirectory(prefix="carlib-mlflow-") as folder:
            path = Path(folder) / name
            path.write_text(text, encoding="utf-8")
            self.client.log_artifact(run_id, str(path))

    def log_summary(self, parent: str, study: str, records: Sequence[dict[str, Any]], table) -> None:
        """The study's summary and verdict on its parent run, as of ``len(records)`` runs (the metrics' step)."""
        spec = STUDIES.get(study)
        summary = summarize(table, spec.scientific, spec.metric, extra=spec.extra)
        verdict = compare_top_two(table, spec.scientific, spec.metric)
        step, stamp = len(records), max((_millis(r.get("finished_at")) or 0) for r in records)
        figures = {"n_runs": len(records), "n_failed": sum(r.get("status") != "ok" for r in records),
                   "verdict_difference": verdict.difference, "verdict_p_value": verdict.p_value,
                   "verdict_decisive": verdict.decisive, "verdict_n_pairs": verdict.n_pairs,
                   **({"verdict_interval_low": verdict.interval[0], "verdict_interval_high": verdict.interval[1],
                       "verdict_interval_level": verdict.level} if verdict.interval else {}),
                   **({"best_mean": float(summary["mean"].iloc[0])} if len(summary) else {})}
        tags = {"carlib_verdict": _text(verdict.message, 8000), "carlib_verdict_best": str(verdict.best),
                "carlib_verdict_runner_up": str(verdict.runner_up), "carlib_verdict_test": str(verdict.test),
                "carlib_verdict_decisive": str(verdict.decisive), "carlib_metric": spec.metric,
                "carlib_scientific": ",".join(spec.scientific),
                "mlflow.note.content": _text(f"**{spec.question}**\n\nVerdict ({spec.metric}, paired over seeds): "
                                             f"{verdict.message}", 8000)}
        _batches(self.client, parent, tags=[self.RunTag(k, v) for k, v in tags.items()],
                 metrics=[self.Metric(k, v, stamp, step) for k, v in
                          ((k, _number(v)) for k, v in figures.items()) if v is not None])
        buffer = io.StringIO()
        summary.reset_index().to_csv(buffer, index=False)
        self.log_text(parent, "summary.csv", buffer.getvalue())
        self.log_text(parent, "verdict.txt", verdict.message + "\n")

    def export_study(self, study: str, runs: list[tuple[dict[str, Any], ResultsStore]], table) -> None:
        """Every record of ``study`` (with its store) not yet exported, under the study's parent run (created or
        updated); ``table`` is the combined table the summary is made of."""
        records = [record for record, _ in runs]
        experiment_id = self.experiment(study)
        done, parent = self.existing(experiment_id)
        has_spec = study in STUDIES
        created = parent is None and has_spec
        if created:
            parent = self.client.create_run(experiment_id, run_name=f"{study} (summary)",
                                            tags={SUMMARY_TAG: study, "carlib_study": study}).info.run_id
        new = [(record, store) for record, store in runs if record["run_id"] not in done]
        self.report.skipped += [r["run_id"] for r in records if r["run_id"] in done]
        for record, store in new:
            self.log_record(experiment_id, parent if has_spec else None, record, store)
            self.report.exported.append(record["run_id"])
        if has_spec and (new or created):
            self.log_summary(parent, study, records, table[table["study"] == study])
            self.client.set_terminated(parent, "FINISHED")
            self.report.parents[study] = "created" if created else "updated"
        if new:
            self.say(f"carlib results export: {study}: {len(new)} run(s) exported")


def export_to_mlflow(tracking_uri: str, results_dir: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
                     study: str | None = None, *, say: Callable[[str], None] = lambda line: None) -> ExportReport:
    """Export the finished records of a store (or several: a sharded sweep's) to MLflow; see the module's docstring.

    ``tracking_uri``: ``sqlite:///path.db``, ``file:///path`` or a tracking server. ``study``: only
    its runs. A record already exported (its ``carlib_run_id`` tag) is skipped, so exporting again
    adds only new runs. ``say`` receives a line per study that got runs.
    """
    roots = [results_dir] if results_dir is None or isinstance(results_dir, (str, os.PathLike)) else list(results_dir)
    exporter = _Exporter(tracking_uri, say)
    found: dict[str, tuple[dict[str, Any], ResultsStore]] = {}  # a run in several stores (a copy) counts once
    for store in map(ResultsStore, roots):
        found.update({r["run_id"]: (r, store) for r in store.records(study) if r.get("status") in ("ok", "failed")})
    table = records_to_frame(record for record, _ in found.values())
    for name in dict.fromkeys(str(record.get("study")) for record, _ in found.values()):
        exporter.export_study(name, [pair for pair in found.values() if str(pair[0].get("study")) == name], table)
    return exporter.report
