"""Running a study and reading its conclusions: one configuration over several seeds, the summary across seeds
and the verdict on the top two configurations."""

from __future__ import annotations

from typing import Any

import pandas as pd

from carlib.base.project_files import default_results_dir
from carlib.config import PARAMETER_NAMES, ExperimentConfig, check_known
from carlib.data.folders import list_class_images, prepare_data, sample_images
from carlib.errors import ConfigError
from carlib.records.store import load_results
from carlib.studies.specs import get_study
from carlib.studies.aggregate import summarize_with
from carlib.studies.stats import MIN_EFFECT, Verdict
from carlib.studies.study_log import verdict_in_store

__all__ = ["run_study", "study_config", "study_summary", "study_verdict", "augmentation_samples"]


def study_config(study: str, *, seeds: int = 1, **params: Any) -> ExperimentConfig:
    """The configuration a study's first run uses (``seeds`` is accepted and ignored), e.g. for an LR range test."""
    check_known(params, PARAMETER_NAMES)
    return ExperimentConfig.from_dict(params, study=study)


def run_study(study: str, *, seeds: int = 1, **params: Any) -> list[dict[str, Any]]:
    """Run one configuration of ``study`` for ``seeds`` consecutive seeds (``seed``, ``seed+1``, …).

    ``study`` names the group the records belong to (a known study, or any name of yours).
    Returns the records, which are also in the results store. Unknown parameter names fail
    before anything runs.
    """
    check_known(params, PARAMETER_NAMES)
    try:
        seeds = int(seeds)
    except (TypeError, ValueError):
        raise ConfigError(f"seeds={seeds!r} has the wrong type: expected an integer >= 1.") from None
    if seeds < 1:
        raise ConfigError(f"seeds={seeds!r} is out of range: expected an integer >= 1 (runs per configuration).")
    from carlib.train.experiment import run_experiment  # deferred: TensorFlow loads here, not for summaries

    base = ExperimentConfig.from_dict(params, study=study)
    return [run_experiment(base.replace(seed=base.seed + i)) for i in range(seeds)]


def study_summary(study: str, results_dir: str | None = None, *, aggregate: str = "mean") -> pd.DataFrame:
    """The summary of every run of ``study`` in the store, grouped by its scientific parameters.

    Columns: n finished and n_failed runs, mean, std and 95 % CI of the study's primary metric (a
    held-out test figure) across seeds, min, max, and the study's other figures averaged
    (``<name>_mean``); best configuration first: by the mean, or by ``aggregate`` (``median``, ``worst``:
    :func:`carlib.studies.aggregate.summarize_with`). ``summary.attrs["metric"]`` names the metric.
    """
    spec = get_study(study)
    return summarize_with(load_results(results_dir, study=study), spec.scientific, spec.metric, spec.extra,
                          aggregate=aggregate)


def study_verdict(study: str, results_dir: str | None = None, *, min_effect: float = MIN_EFFECT) -> Verdict:
    """Is the study's best configuration better than the others? A verdict on the study's primary metric
    (:func:`carlib.studies.stats.compare_top_two`), with a seed plan sized for ``min_effect``.

    A study run ``--until-decisive`` (a log in ``<results_dir>/sequential/``) is decided on its
    anytime-valid intervals, and the message ends with why it stopped; a fixed-n study holding more seeds
    than its sweep planned is marked as read again (:mod:`carlib.studies.study_log`).
    """
    spec = get_study(study)
    store = results_dir if results_dir is not None else default_results_dir()
    return verdict_in_store(load_results(results_dir, study=study), spec.scientific, spec.metric, store,
                            min_effect=min_effect)


def augmentation_samples(augmentation: str, *, data_dir: str | None = None, image_size: int = 64,
                         n_images: int = 4, views: int = 5, seed: int = 0):
    """Augmented views of ``n_images`` training images (one per class in turn) for a gallery.

    Returns the array of :func:`carlib.data.pipeline.augmented_views`; plot it with
    :func:`carlib.plots.plot_augmentation_gallery`.
    """
    from carlib.data.augment import check_augmentation  # deferred: albumentations and TensorFlow
    from carlib.data.pipeline import augmented_views

    augmentation = ExperimentConfig.from_dict({"augmentation": augmentation}).augmentation  # same coercion as runs
    check_augmentation(augmentation)
    images = sample_images(list_class_images(prepare_data(data_dir).train_dir), n_images, seed)
    return augmented_views(images, augmentation, int(image_size), views=views, seed=seed)
