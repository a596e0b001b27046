"""One self-contained HTML report of a results store: what a person reads instead of logs.

For every study with runs in the store: its question, the summary across seeds with the
verdict, the bar chart with confidence intervals, and the learning curves of its best
configuration. Then the figures of the latest executed notebook of each study (the
augmentation gallery, the LR range test, the TTA grid, the FixRes curve, the confusion
matrix — whatever that notebook showed), and the combined results table. Everything is
computed by carlib from the store and the executed notebooks; images are embedded, so the
file can be mailed or opened anywhere.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import os
import platform
from pathlib import Path
from typing import Any

import pandas as pd

from carlib.base.files import atomic_write_text
from carlib.plots import plot_anytime_path, plot_learning_curves, plot_summary
from carlib.records.record import environment_info
from carlib.records.store import ResultsStore
from carlib.records.table import COMPACT_COLUMNS
from carlib.studies.specs import STUDIES
from carlib.studies.aggregate import aggregate_note, check_aggregate, summarize_with
from carlib.studies.sequential import HORIZON, SequentialDesign, interval_path
from carlib.studies.stats import Verdict, configuration_values
from carlib.studies.study_log import design_of, study_logs, verdict_in_store

__all__ = ["build_report"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444} h2{margin-top:2em;border-bottom:1px solid #aaa} h3{margin-top:1.5em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3} .verdict{background:#eef6ff;border-left:4px solid #36c;padding:.5em 1em}
.meta{color:#666;font-size:13px} img{max-width:100%;border:1px solid #eee;margin:.3em 0}
.md{color:#333;font-size:14px} pre{background:#f6f6f6;padding:.5em;overflow-x:auto;font-size:12px}
"""


def _figure_html(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return _png_html(base64.b64encode(buffer.getvalue()).decode())


# Notebook figures the report already computes from the store.
_RECOMPUTED = ("plot_summary(", "plot_learning_curves(")


def _png_html(b64: str) -> str:
    return f'<img src="data:image/png;base64,{b64}">'


def _table_html(frame: pd.DataFrame, index: bool = True) -> str:
    return frame.to_html(index=index, float_format=lambda v: f"{v:.4g}", na_rep="–", border=0)


def _notebook_figures(path: Path) -> str:
    """The markdown headings, images and tables of an executed notebook, in order."""
    notebook = json.loads(path.read_text())
    parts = []
    pending_heading = ""
    for cell in notebook.get("cells", []):
        source = "".join(cell.get("source", []))
        if cell["cell_type"] == "markdown":
            pending_heading = source.strip().splitlines()[0].lstrip("# ") if source.strip() else ""
            continue
        if any(name in source for name in _RECOMPUTED):
            continue  # the report draws these itself, from the whole store
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                if pending_heading:
                    parts.append(f"<h4>{html.escape(pending_heading)}</h4>")
                    pending_heading = ""
                image = data["image/png"]
                parts.append(_png_html("".join(image) if isinstance(image, list) else image))
    return "".join(parts)


def _latest_notebooks(store: ResultsStore, extra_dirs: list[Path]) -> dict[str, Path]:
    """The most recently executed notebook of each study (from sweeps and from ``extra_dirs``)."""
    latest: dict[str, Path] = {}
    folders = [store.root / "notebooks", *extra_dirs]
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.ipynb"), key=lambda p: p.stat().st_mtime):
            try:
                notebook = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            study = notebook.get("metadata", {}).get("papermill", {}).get("parameters", {}).get("study")
            study = study or _default_study(notebook)
            if study and path.stat().st_mtime >= latest.get(study, path).stat().st_mtime:
                latest[study] = path
    return latest


def _default_study(notebook: dict[str, Any]) -> str | None:
    for cell in notebook.get("cells", []):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            for line in "".join(cell.get("source", [])).splitlines():
                if line.startswith("study ="):
                    return line.split("=", 1)[1].split("#")[0].strip().strip("\"'")
    return None


def build_report(results_dir: str | os.PathLike | None = None, out: str | os.PathLike = "build/report.html", *,
                 notebook_dirs: list[str | os.PathLike] = (), title: str = "carlib report",
                 aggregate: str = "mean") -> Path:
    """Write the HTML report of a results store to ``out`` and return its path.

    ``notebook_dirs`` adds folders of executed notebooks beyond the sweeps' own
    (``<results_dir>/notebooks``); ``aggregate`` ranks each summary by the ``mean``, ``median`` or
    ``worst`` seed (:mod:`carlib.studies.aggregate`).
    """
    check_aggregate(aggregate)
    store = ResultsStore(results_dir)
    records = store.records()
    table = store.table()
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">{now} · carlib {environment_info()["versions"]["carlib"]} · {html.escape(platform.platform())} · '
             f"{os.cpu_count()} CPU cores · store {html.escape(str(store.root.resolve()))} · {len(records)} runs</p>"]
    notebooks = _latest_notebooks(store, [Path(d) for d in notebook_dirs])
    studies = list(dict.fromkeys([r.get("study") for r in records] + list(notebooks)))
    for study in studies:
        spec = STUDIES.get(study) if study in STUDIES else None
        parts.append(f"<h2>{html.escape(str(study))}</h2>")
        study_table = table[table["study"] == study] if not table.empty else table
        if spec is not None:
            parts.append(f"<p><b>Question:</b> {html.escape(spec.question)} "
                         f"<b>Scientific parameters:</b> {', '.join(spec.scientific)}; runs repeat over seeds.</p>")
        if spec is not None and not study_table.empty:
            summary = summarize_with(study_table, spec.scientific, spec.metric, extra=spec.extra, aggregate=aggregate)
            note = f" · {html.escape(aggregate_note(aggregate))}" if aggregate != "mean" else ""
            parts.append(f"<p class='meta'>metric: {spec.metric}{note}</p>" + _table_html(summary))
            logs = study_logs(store.root, study)
            verdict = verdict_in_store(study_table, spec.scientific, spec.metric, store.root)
            parts.append(f'<p class="verdict"><b>Verdict:</b> {html.escape(verdict.message)}</p>')
            parts.append(_figure_html(plot_summary(summary, metric=spec.metric)))
            parts.append(_anytime_html(study_table, spec, verdict, design_of(logs[-1]) if logs else None,
                                       logs[-1] if logs else None))
            best_runs = _best_configuration_runs(records, study, spec.scientific, summary)
            if best_runs:
                parts.append("<h3>Learning curves of the best configuration</h3>")
                parts.append(_figure_html(plot_learning_curves(best_runs)))
            failed = study_table[study_table["status"] != "ok"]
            if len(failed):
                parts.append(f"<p><b>{len(failed)} failed run(s):</b></p>")
                parts.append(_table_html(failed[["run_id", "error"]], index=False))
        if study in notebooks:
            parts.append(f"<h3>Figures of the latest executed notebook</h3><p class='meta'>"
                         f"{html.escape(str(notebooks[study]))}</p>")
            parts.append(_notebook_figures(notebooks[study]))
    if not table.empty:
        parts.append("<h2>Combined results table</h2>")
        parts.append(_table_html(table[[c for c in COMPACT_COLUMNS if c in table.columns]], index=False))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>"
    atomic_write_text(out, page)
    return out


def _anytime_html(study_table: pd.DataFrame, spec, verdict: Verdict, design: SequentialDesign | None,
                  log: dict[str, Any] | None) -> str:
    """The anytime-valid interval of the best against the runner-up, seed by seed, with the stop marked."""
    if verdict.best is None or verdict.runner_up is None:
        return ""
    values = configuration_values(study_table, spec.scientific, spec.metric)[0]
    best, other = values[verdict.best], values[verdict.runner_up]
    shared = len(set(best) & set(other))
    design = design or SequentialDesign(horizon=max(HORIZON, shared))
    path = pd.DataFrame([{"seeds": i.n, "low": i.low, "high": i.high, "difference": (i.low + i.high) / 2}
                         for i in interval_path(best, other, design)], columns=["seeds", "low", "high", "difference"])
    stop = (log.get("stopped") or {}).get("seeds") if log else None
    title = f"{verdict.best} − {verdict.runner_up}"
    return ("<h3>Anytime-valid interval, seed by seed</h3>"
            + _figure_html(plot_anytime_path(path, stop=stop, title=title)))


def _best_configuration_runs(records, study, scientific, summary) -> list[dict[str, Any]]:
    if summary.empty:
        return []
    best = summary.index[0] if isinstance(summary.index[0], tuple) else (summary.index[0],)
    chosen = []
    for record in records:
        if record.get("study") != study or record.get("status") != "ok":
            continue
        values = tuple(record["config"].get(name) for name in scientific)
        if all(str(a) == str(b) or (isinstance(a, float) and isinstance(b, float) and abs(a - b) < 1e-12)
               for a, b in zip(values, best)):
            chosen.append(record)
    return chosen
