"""Plots of results; computing happens elsewhere, these only draw what records and tables hold.

Every function returns a ``matplotlib.figure.Figure`` (not pyplot state), so it can be
shown in a notebook, saved to PNG in a run folder, or embedded in a report.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import pandas as pd
from matplotlib.figure import Figure

__all__ = ["plot_learning_curves", "plot_summary"]


def _label(record: dict[str, Any], vary: Sequence[str]) -> str:
    config = record["config"]
    parts = [f"{k}={config[k]:g}" if isinstance(config.get(k), float) else f"{k}={config.get(k)}" for k in vary]
    return ", ".join(parts) or record["run_id"]


def plot_learning_curves(records: Iterable[dict[str, Any]], *, metric: str = "accuracy",
                         show_lr: bool = True) -> Figure:
    """Training (dashed) and validation (solid) ``metric`` per epoch for each run, and the learning rate.

    Runs are labelled by the config fields that differ between them, plus the seed.
    """
    records = [r for r in records if r.get("history")]
    figure = Figure(figsize=(10, 4) if show_lr else (6, 4), layout="constrained")
    axes = figure.subplots(1, 2 if show_lr else 1, squeeze=False)[0]
    if not records:
        axes[0].text(0.5, 0.5, "no finished runs to plot", ha="center", va="center")
        return figure
    keys = sorted({k for r in records for k in r["config"]})
    vary = [k for k in keys if k not in ("seed", "results_dir") and len({str(r["config"].get(k)) for r in records}) > 1]
    vary = vary + ["seed"] if len(records) > 1 else vary
    for index, record in enumerate(records):
        history = pd.DataFrame(record["history"])
        color = f"C{index % 10}"
        label = _label(record, vary)
        if metric in history:
            axes[0].plot(history["epoch"], history[metric], "--", color=color, alpha=0.7)
        if f"val_{metric}" in history:
            axes[0].plot(history["epoch"], history[f"val_{metric}"], "-", color=color, label=label)
        elif metric in history:
            axes[0].lines[-1].set_label(label)
        if show_lr and "learning_rate" in history:
            axes[1].plot(history["epoch"], history["learning_rate"], "-", color=color, label=label)
    axes[0].set(xlabel="epoch", ylabel=metric, title=f"{metric}: validation (solid), training (dashed)")
    axes[0].legend(fontsize="small")
    if show_lr:
        axes[1].set(xlabel="epoch", ylabel="learning rate", yscale="log", title="learning rate per epoch")
    return figure


def plot_summary(summary: pd.DataFrame, *, metric: str = "val_accuracy_best") -> Figure:
    """Bar chart of a study summary: mean ± std across seeds for each configuration."""
    figure = Figure(figsize=(7, 3.5), layout="constrained")
    ax = figure.subplots()
    if summary.empty:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center")
        return figure
    labels = [str(i) for i in summary.index]
    ax.bar(labels, summary["mean"], yerr=summary["std"].fillna(0), capsize=4, color="C0", alpha=0.8)
    for x, (mean, n) in enumerate(zip(summary["mean"], summary["n"])):
        ax.annotate(f"{mean:.3f}\nn={n}", (x, mean), ha="center", va="bottom", fontsize="small",
                    xytext=(0, 3), textcoords="offset points")
    ax.set(ylabel=f"{metric} (mean ± std over seeds)", title=" × ".join(summary.index.names or []))
    ax.tick_params(axis="x", labelrotation=20)
    return figure
