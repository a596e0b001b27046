"""Plots of results; computing happens elsewhere, these only draw what records and tables hold.

Every function returns a ``matplotlib.figure.Figure`` (not pyplot state), so it can be
shown in a notebook, saved to PNG in a run folder, or embedded in a report.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from carlib.base.values import shown_value
from carlib.errors import ConfigError

__all__ = ["plot_learning_curves", "plot_summary", "plot_anytime_path", "plot_tradeoff", "plot_augmentation_gallery",
           "plot_confusion_matrix", "plot_mistakes", "plot_resolution_curve", "plot_tta_grid", "plot_tta_spread",
           "plot_lr_find"]


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
    vary = [k for k in keys if k not in ("seed", "results_dir", "trial_id")
            and len({str(r["config"].get(k)) for r in records}) > 1]
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
        for stage in record.get("training", {}).get("stages", [])[1:]:  # fine-tuning: where a stage unfroze more
            for ax in axes:
                ax.axvline(stage["first_epoch"] - 0.5, color=color, linestyle=":", alpha=0.6)
    axes[0].set(xlabel="epoch", ylabel=metric, title=f"{metric}: validation (solid), training (dashed)")
    axes[0].legend(fontsize="small")
    if show_lr:
        axes[1].set(xlabel="epoch", ylabel="learning rate", yscale="log", title="learning rate per epoch")
    return figure


def _config_labels(summary: pd.DataFrame) -> list[str]:
    names = [n for n in (summary.index.names or []) if n]
    labels = []
    for key in summary.index:
        key = key if isinstance(key, tuple) else (key,)
        labels.append("\n".join(shown_value(v) for v in key))
    return labels if names else [str(i) for i in summary.index]


def plot_summary(summary: pd.DataFrame, *, metric: str | None = None) -> Figure:
    """Bar chart of a study summary: mean across seeds per configuration, with its 95% confidence interval.

    Configurations with a single run show no interval (there is no spread to estimate yet).
    ``metric`` labels the axis (default: the one the summary was made for, ``summary.attrs["metric"]``).
    """
    metric = metric or summary.attrs.get("metric", "accuracy")
    figure = Figure(figsize=(max(5, 1.2 * len(summary) + 2), 3.8), layout="constrained")
    ax = figure.subplots()
    if summary.empty:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center")
        return figure
    means = summary["mean"].to_numpy(dtype=float)
    if "ci95_low" in summary:
        low = (means - summary["ci95_low"].to_numpy(dtype=float))
        high = (summary["ci95_high"].to_numpy(dtype=float) - means)
        errors = [[0 if v != v else v for v in low], [0 if v != v else v for v in high]]
    else:
        errors = summary["std"].fillna(0).to_numpy()
    labels = _config_labels(summary)
    ax.bar(labels, means, yerr=errors, capsize=4, color="C0", alpha=0.8)
    failed = summary["n_failed"] if "n_failed" in summary else [0] * len(summary)
    for x, (mean, n, n_failed) in enumerate(zip(means, summary["n"], failed)):
        ax.annotate(f"{mean:.3f}\nn={n}" + (f", {n_failed} failed" if n_failed else ""), (x, mean if mean == mean
                    else 0), ha="center", va="bottom", fontsize="small", xytext=(0, 3), textcoords="offset points")
    names = [n for n in (summary.index.names or []) if n]
    ax.set(ylabel=f"{metric}\nmean, 95% CI over seeds", xlabel=" × ".join(names))
    ax.margins(y=0.2)
    return figure


def plot_anytime_path(path: pd.DataFrame, *, stop: int | None = None, title: str = "") -> Figure:
    """The anytime-valid interval of best − other after each seed (``path``: columns ``seeds``, ``low``, ``high``,
    ``difference``), narrowing as seeds are added, with 0 and the seed the study stopped at (``stop``) marked."""
    figure = Figure(figsize=(6, 3.4), layout="constrained")
    ax = figure.subplots()
    finite = path[np.isfinite(path["low"]) & np.isfinite(path["high"])] if not path.empty else path
    if finite.empty:
        ax.text(0.5, 0.5, "no interval yet: it needs 2 or more seeds both ran", ha="center", va="center")
        return figure
    if len(finite) > 1:  # the band shows the narrowing; the bars below show each look, even a single one
        ax.fill_between(finite["seeds"], finite["low"], finite["high"], color="C0", alpha=0.2, step="mid")
    centre = finite["difference"].to_numpy(dtype=float)
    ax.errorbar(finite["seeds"], centre, yerr=[centre - finite["low"], finite["high"] - centre], fmt="o-",
                color="C0", capsize=4, label="anytime-valid interval and its centre")
    ax.axhline(0, color="k", linewidth=0.8)
    if stop is not None:
        ax.axvline(stop, color="C3", linestyle="--", label=f"stopped after {stop} seeds")
    bounds = np.abs(finite[["low", "high"]].to_numpy())
    spread = float(np.nanmax(bounds[1:] if len(bounds) > 2 else bounds))  # after 2 seeds the interval is vast
    last = max(int(finite["seeds"].max()), stop or 0)
    ax.set(xlabel="seeds per configuration", ylabel="best − other", title=title,
           ylim=(-1.1 * spread, 1.1 * spread), xlim=(int(finite["seeds"].min()) - 0.5, last + 0.5))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # seeds are whole numbers
    ax.legend(fontsize="small")
    return figure


def plot_tradeoff(summary: pd.DataFrame, *, x: str = "train_images_per_s_mean", y: str = "mean",
                  error: str | None = "std", labels: Sequence[str] | None = None, target: float | None = None,
                  budget: float | None = None, log_x: bool = True,
                  label_offsets: Sequence[tuple[float, float]] | None = None) -> Figure:
    """Scatter of a summary's configurations: accuracy (``y``) against a cost such as throughput or CPU seconds
    (``x``, e.g. ``cpu_s_mean``), so a trade between them is visible.

    ``error``: the summary column drawn as a vertical error bar (the spread across seeds; ``None``: none).
    ``labels``: one name per row instead of the configuration's values. ``target`` draws the accuracy a study aims
    at as a horizontal line, ``budget`` the cost it may spend as a vertical one (e.g. 3× a baseline's CPU seconds).
    ``label_offsets``: where each name sits from its point, in typographic points (default ``(5, 5)``), for points
    that lie close together.
    """
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = figure.subplots()
    if summary.empty or x not in summary:
        ax.text(0.5, 0.5, f"no finished runs with {x} yet", ha="center", va="center")
        return figure
    names = list(labels) if labels is not None else [label.replace("\n", " @ ") for label in _config_labels(summary)]
    if len(names) != len(summary):
        raise ConfigError(f"labels: {len(names)} names for {len(summary)} configurations; give one per row.")
    spread = summary[error] if error and error in summary else None
    ax.errorbar(summary[x], summary[y], yerr=spread, fmt="o", color="C1", ecolor="C1", capsize=3)
    offsets = list(label_offsets) if label_offsets is not None else [(5, 5)] * len(names)
    if len(offsets) != len(names):
        raise ConfigError(f"label_offsets: {len(offsets)} offsets for {len(names)} configurations; give one per row.")
    for name, xv, yv, offset in zip(names, summary[x], summary[y], offsets):
        ax.annotate(name, (xv, yv), fontsize="small", xytext=offset, textcoords="offset points")
    if target is not None:
        ax.axhline(target, color="C2", linestyle="--", linewidth=1, label=f"target {target:g}")
    if budget is not None:
        ax.axvline(budget, color="C3", linestyle=":", linewidth=1, label=f"budget {budget:,.0f}")
    if target is not None or budget is not None:
        ax.legend(loc="lower right", fontsize="small")
    metric = summary.attrs.get("metric", "accuracy")  # the figure the summary was made for
    bars = f", bars: ±1 {error}" if spread is not None else ""
    ax.set(xlabel=x, ylabel=f"{metric} ({y} over seeds{bars})", xscale="log" if log_x else "linear")
    ax.margins(x=0.2)  # room for the names right of the points
    if log_x:  # plain numbers (250, 1,000) rather than 2.5×10²
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    return figure


def plot_augmentation_gallery(views: np.ndarray, *, title: str = "") -> Figure:
    """Grid of :func:`carlib.data.pipeline.augmented_views`: one row per image, column 0 un-augmented."""
    rows, cols = views.shape[:2]
    figure = Figure(figsize=(1.6 * cols, 1.6 * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            axes[r][c].imshow(views[r, c])
            axes[r][c].set_axis_off()
            if r == 0:
                axes[r][c].set_title("original" if c == 0 else f"view {c}", fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


# ------------------------------------------------------------------ evaluation (issue 5)
def plot_confusion_matrix(confusion: pd.DataFrame, *, normalize: bool = True, title: str | None = None) -> Figure:
    """The confusion matrix with class names: rows true class, columns predicted class.

    Each cell shows its count; with ``normalize`` the colour is the share of the true class's
    images (rows sum to 1), so small classes are as readable as large ones.
    """
    counts = confusion.to_numpy()
    n = len(confusion)
    size = max(4.0, 0.55 * n + 2)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    ax = figure.subplots()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1 if normalize else max(1, counts.max()))
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class" if normalize else "images")
    threshold = (1 if normalize else max(1, counts.max())) / 2
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize="small",
                        color="white" if shares[i, j] > threshold else "black")
    ax.set_xticks(range(n), [str(c) for c in confusion.columns], rotation=45, ha="right")
    ax.set_yticks(range(n), [str(c) for c in confusion.index])
    ax.set(xlabel="predicted class", ylabel="true class")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(title or f"confusion matrix ({counts.sum()} images, accuracy {accuracy:.3f})")
    return figure


def plot_mistakes(mistakes: pd.DataFrame, images: Sequence[Any] | None = None, *, columns: int = 4,
                  title: str | None = None) -> Figure:
    """A gallery of mistakes (e.g. :func:`carlib.evaluate.metrics.most_confident_mistakes`): true, predicted, confidence.

    ``images`` (one array per row) are shown; without them each row's ``path`` is read for display.
    """
    rows = max(1, -(-len(mistakes) // columns))
    figure = Figure(figsize=(2.6 * columns, 2.6 * rows + 0.4), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if mistakes.empty:
        axes[0][0].text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=axes[0][0].transAxes)
        return figure
    for k, (ax, (_, row)) in enumerate(zip(axes.flat, mistakes.iterrows())):
        image = images[k] if images is not None else imread(row["path"])
        ax.imshow(np.asarray(image).astype("uint8") if np.asarray(image).dtype != np.uint8 else image)
        ax.set_title(f"true {row['true']}\npred {row['predicted']} ({row['confidence']:.2f})", fontsize="small",
                     color="C3")
    figure.suptitle(title or f"the {len(mistakes)} most confident mistakes")
    return figure


def plot_resolution_curve(curve: pd.DataFrame, *, metric: str = "accuracy", title: str | None = None) -> Figure:
    """Accuracy against test image size (a :func:`carlib.evaluate.resolution.resolution_curve` table); the training size is marked."""
    figure = Figure(figsize=(6, 3.8), layout="constrained")
    ax = figure.subplots()
    if curve.empty:
        ax.text(0.5, 0.5, "no sizes evaluated", ha="center", va="center")
        return figure
    curve = curve.sort_values("image_size")
    ax.plot(curve["image_size"], curve[metric], "o-", color="C0", label=metric)
    for size, value in zip(curve["image_size"], curve[metric]):
        ax.annotate(f"{value:.3f}", (size, value), xytext=(0, 6), textcoords="offset points", ha="center",
                    fontsize="small")
    if "train_size" in curve:
        train_size = int(curve["train_size"].iloc[0])
        ax.axvline(train_size, color="C3", linestyle="--", label=f"training size {train_size} px")
    ax.set(xlabel="test image size (px)", ylabel=metric,
           title=title or f"{metric} vs test size (FixRes, Touvron et al. 2019)")
    ax.legend(fontsize="small")
    return figure


def plot_tta_grid(pass_images: np.ndarray, per_pass_probabilities: np.ndarray, *,
                  class_names: Sequence[str] | None = None, true_labels: Sequence[int] | None = None,
                  title: str | None = None) -> Figure:
    """What each TTA pass saw: rows = images, columns = passes, each titled with predicted class and confidence.

    ``pass_images``: passes × n × H × W × 3 (:meth:`carlib.evaluate.tta.TTAResult.pass_images`);
    ``per_pass_probabilities``: passes × n × C for the same images (``result.per_pass[:, indices]``).
    """
    passes, n = pass_images.shape[:2]
    figure = Figure(figsize=(1.9 * passes, 2.0 * n + 0.4), layout="constrained")
    axes = figure.subplots(n, passes, squeeze=False)
    for i in range(n):
        for p in range(passes):
            ax = axes[i][p]
            ax.imshow(pass_images[p, i])
            ax.set_xticks([])
            ax.set_yticks([])
            probabilities = per_pass_probabilities[p, i]
            predicted = int(np.argmax(probabilities))
            name = class_names[predicted] if class_names is not None else str(predicted)
            wrong = true_labels is not None and predicted != int(true_labels[i])
            ax.set_title(f"{'original' if p == 0 else f'pass {p}'}\n{name} {probabilities[predicted]:.2f}",
                         fontsize="small", color="C3" if wrong else "black")
        if true_labels is not None:
            label = int(true_labels[i])
            axes[i][0].set_ylabel(f"true: {class_names[label] if class_names is not None else label}",
                                  fontsize="small")
    figure.suptitle(title or "TTA passes (red: wrong class)")
    return figure


def plot_tta_spread(diagnostics: Any, *, title: str | None = None) -> Figure:
    """TTA diagnostics (:class:`carlib.evaluate.tta.TTADiagnostics`): agreement of each pass with the mean, and per-image spread."""
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = figure.subplots(1, 2)
    agreement = np.asarray(diagnostics.pass_agreement)
    left.bar(range(len(agreement)), agreement, color="C0")
    left.set_xticks(range(len(agreement)), ["orig" if p == 0 else str(p) for p in range(len(agreement))])
    left.set(xlabel="pass", ylabel="agreement with the TTA class", ylim=(0, 1.05),
             title="per-pass agreement with the mean prediction")
    spread = np.asarray(diagnostics.per_image_spread)
    right.hist(spread, bins=30, color="C1")
    right.axvline(diagnostics.mean_spread, color="C3", linestyle="--", label=f"mean {diagnostics.mean_spread:.4f}")
    right.set(xlabel="std across passes of the TTA class's probability", ylabel="images",
              title=f"{diagnostics.n_changed} of {spread.size} images change class across passes")
    right.legend(fontsize="small")
    flag = " — IDENTICAL PASSES: the preset does not augment" if diagnostics.identical_passes else ""
    figure.suptitle(title or f"TTA preset {diagnostics.preset!r}, {diagnostics.passes} passes{flag}")
    return figure


# ------------------------------------------------------------------ LR range test (issue 4)
def plot_lr_find(result: Any, *, show_raw: bool = True, title: str | None = None) -> Figure:
    """The loss of an LR range test (:class:`carlib.train.lr_find.LRFindResult`) against the learning rate (log scale).

    The smoothed loss is the line, each batch's loss the faint dots; the suggested starting
    LRs (steepest descent, valley) are marked. Start an LR study around them, not at them.
    """
    figure = Figure(figsize=(6.5, 4), layout="constrained")
    ax = figure.subplots()
    if len(result.lrs) == 0:
        ax.text(0.5, 0.5, "no steps recorded", ha="center", va="center")
        return figure
    if show_raw:
        ax.plot(result.lrs, result.raw_losses, ".", color="C0", alpha=0.25, markersize=3, label="batch loss")
    ax.plot(result.lrs, result.losses, "-", color="C0", label="smoothed loss")
    for value, name, color in ((result.suggestion_steepest, "steepest", "C3"),
                               (result.suggestion_valley, "valley", "C2")):
        if value is not None:
            ax.axvline(value, color=color, linestyle="--", label=f"{name}: {value:.2g}")
    finite = result.losses[np.isfinite(result.losses)]
    if finite.size:  # keep the divergence from squashing the interesting part of the curve
        ax.set_ylim(finite.min() - 0.05 * abs(finite.min()), min(finite.max(), 2 * finite[0]) * 1.05)
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss",
           title=title or f"LR range test ({len(result.lrs)} steps{', stopped on divergence' if result.diverged else ''})")
    ax.legend(fontsize="small")
    return figure
