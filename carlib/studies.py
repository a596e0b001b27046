"""Studies: named questions, each with its scientific parameters, run over several seeds.

Following Google's tuning playbook, a study compares values of its *scientific*
parameters; the seed is a nuisance parameter that runs repeat over (R5, R10), and
everything else is held fixed. Notebooks are thin wrappers around :func:`run_study`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import pandas as pd

from carlib.config import PARAMETER_NAMES, ConfigError, ExperimentConfig, check_known
from carlib.results import load_results
from carlib.stats import Comparison, compare_top_two, summarize

__all__ = ["StudySpec", "STUDIES", "register_study", "get_study", "run_study", "study_config", "summarize", "study_summary",
           "study_verdict", "notebook_parameters", "STUDY_PARAMETERS"]

STUDY_PARAMETERS: tuple[str, ...] = (*PARAMETER_NAMES, "seeds")


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """A study: the question it answers, the parameters whose effect it measures (scientific),
    and further per-run figures its summary averages (e.g. epoch time)."""

    name: str
    question: str
    scientific: tuple[str, ...]
    extra: tuple[str, ...] = ()
    metric: str = "val_accuracy_best"


STUDIES: dict[str, StudySpec] = {}


def register_study(spec: StudySpec, *, overwrite: bool = False) -> StudySpec:
    """Add a study so summaries know its scientific parameters (how users add their own)."""
    if spec.name in STUDIES and not overwrite:
        raise ValueError(f"study {spec.name!r} is already registered; pass overwrite=True to replace it.")
    STUDIES[spec.name] = spec
    return spec


for _spec in (
    StudySpec("lr_study", "Which learning rate and schedule train this backbone best?", ("lr", "schedule")),
    StudySpec("augmentation_study", "Which augmentation helps, and what does it cost per epoch?",
              ("augmentation",), ("epoch_s",)),
    StudySpec("tta_visualization", "Does test-time augmentation help, and do its passes differ?",
              ("tta_preset", "tta_passes"), ("tta_changed_images", "val_accuracy_best"), metric="val_accuracy_tta"),
    StudySpec("backbone_study", "Which backbone at which image size, for what speed?", ("backbone", "image_size"),
              ("param_count", "train_images_per_s", "eval_images_per_s")),
    StudySpec("finetune_study", "How should a pretrained backbone be fine-tuned, and with BatchNorm in which mode?",
              ("finetune", "bn_mode"), ("epoch_s",)),
    StudySpec("cpu_recipe_study", "Which from-scratch recipe trains best on a CPU within a fixed budget?",
              ("backbone", "backbone_width", "backbone_depth", "image_size", "epochs", "augmentation", "label_smoothing",
               "schedule", "warmup_epochs", "lr"),
              ("val_accuracy_tta", "epoch_s", "train_images_per_s")),
):
    register_study(_spec)
del _spec


def get_study(name: str) -> StudySpec:
    """The spec of a known study; an unknown name lists the known ones."""
    try:
        return STUDIES[name]
    except KeyError:
        raise ConfigError(f"unknown study {name!r}. Known studies: {', '.join(sorted(STUDIES))}.") from None


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
    from carlib.experiment import run_experiment  # TensorFlow loads here, not for summaries

    base = ExperimentConfig.from_dict(params, study=study)
    return [run_experiment(base.replace(seed=base.seed + i)) for i in range(seeds)]


def study_summary(study: str, results_dir: str | None = None, metric: str | None = None) -> pd.DataFrame:
    """The summary of every finished run of ``study`` in the store, grouped by its scientific parameters.

    Columns: n, mean, std and 95% CI of ``metric`` (default: the study's own) across seeds,
    min, max, and the study's extra figures averaged (``<name>_mean``); best configuration first.
    """
    spec = get_study(study)
    return summarize(load_results(results_dir, study=study), spec.scientific, metric or spec.metric, spec.extra)


def study_verdict(study: str, results_dir: str | None = None, metric: str | None = None) -> Comparison:
    """Whether the study's best configuration is distinguishable from the runner-up (Welch's t-test across seeds)."""
    spec = get_study(study)
    return compare_top_two(load_results(results_dir, study=study), spec.scientific, metric or spec.metric)


_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}
_SCALARS = (int, float, str, bool, type(None))


def _is_parameter_value(value: Any) -> bool:
    # Parameters are scalars or lists of scalars; results such as a list of records are not.
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, _SCALARS) for v in value)
    if isinstance(value, dict):  # e.g. an inline albumentations pipeline given with papermill -y
        return all(isinstance(k, str) for k in value)
    return isinstance(value, _SCALARS)


def notebook_parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The study parameters defined in a notebook's namespace (its ``parameters`` cell and papermill's injection).

    Every plain value (number, string, None, a list of those, a mapping) that is not private
    counts as a parameter, so a misspelt ``papermill -p learning_rate …`` fails loudly, with the closest
    valid names, instead of being ignored.
    """
    found = {k: v for k, v in namespace.items()
             if not k.startswith("_") and k not in _IPYTHON_NAMES and _is_parameter_value(v)}
    check_known(found, STUDY_PARAMETERS)
    return found


def augmentation_samples(augmentation: str, *, data_dir: str | None = None, image_size: int = 64,
                         n_images: int = 4, views: int = 5, seed: int = 0):
    """Augmented views of ``n_images`` training images (one per class in turn) for a gallery.

    Returns the array of :func:`carlib.data.pipeline.augmented_views`; plot it with
    :func:`carlib.plots.plot_augmentation_gallery`.
    """
    from carlib.augment import check_augmentation
    from carlib.data.folders import list_class_images, prepare_data, sample_images
    from carlib.data.pipeline import augmented_views

    augmentation = ExperimentConfig.from_dict({"augmentation": augmentation}).augmentation  # same coercion as runs
    check_augmentation(augmentation)
    images = sample_images(list_class_images(prepare_data(data_dir).train_dir), n_images, seed)
    return augmented_views(images, augmentation, int(image_size), views=views, seed=seed)
