"""carlib: train and compare image classifiers with conclusions you can trust.

The public API is importable from here; submodules are loaded on first use, so
``carlib results`` does not pay for importing TensorFlow.

- :func:`run_experiment` — one config in, one trained model and record out
- :func:`run_study`, :func:`study_summary` — a configuration over several seeds, and its summary
- :func:`load_results` — the combined table of every run in a results store
- :class:`ExperimentConfig` — the parameter vocabulary shared by API, notebooks, YAML and CLI
"""

import os as _os

# Keep TensorFlow's C++ start-up chatter and albumentations' update check out of notebooks.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# The lines TensorFlow prints before its logging reads TF_CPP_MIN_LOG_LEVEL are filtered by it too.
from carlib.startup_log import filter_tensorflow_startup_lines as _filter_tensorflow_startup_lines  # noqa: E402

_filter_tensorflow_startup_lines()

__version__ = "0.1.0"

_EXPORTS = {
    "ExperimentConfig": "carlib.config",
    "ConfigError": "carlib.config",
    "PARAMETER_NAMES": "carlib.config",
    "run_experiment": "carlib.experiment",
    "run_study": "carlib.studies",
    "study_summary": "carlib.studies",
    "study_verdict": "carlib.studies",
    "study_config": "carlib.studies",
    "augmentation_samples": "carlib.studies",
    "run_sweep": "carlib.sweep",
    "augmented_views": "carlib.data.pipeline",
    "plot_tradeoff": "carlib.plots",
    "plot_augmentation_gallery": "carlib.plots",
    "notebook_parameters": "carlib.studies",
    "load_results": "carlib.results",
    "ResultsStore": "carlib.results",
    "build_model": "carlib.backbones",
    "available_backbones": "carlib.backbones",
    "available_presets": "carlib.augment",
    "prepare_data": "carlib.data.folders",
    "plot_learning_curves": "carlib.plots",
    "plot_summary": "carlib.plots",
    # evaluation, TTA and the submission (issue 5)
    "tta_predict": "carlib.tta",
    "tta_pass_images": "carlib.tta",
    "accuracy_by_passes": "carlib.tta",
    "register_tta_preset": "carlib.tta",
    "available_tta_presets": "carlib.tta",
    "evaluate_predictions": "carlib.evaluate",
    "evaluate_model": "carlib.evaluate",
    "evaluate_run": "carlib.evaluate",
    "resolution_curve": "carlib.evaluate",
    "predict_submission": "carlib.submission",
    "score_submission": "carlib.submission",
    "plot_confusion_matrix": "carlib.plots",
    "plot_mistakes": "carlib.plots",
    "plot_resolution_curve": "carlib.plots",
    "plot_tta_grid": "carlib.plots",
    "plot_tta_spread": "carlib.plots",
    # training methodology (issue 4)
    "lr_find": "carlib.lr_find",
    "lr_find_for_config": "carlib.lr_find",
    "plot_lr_find": "carlib.plots",
    "load_model": "carlib.backbones",
    # messy data and faults (issue 7)
    "check_dataset": "carlib.data.check",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'carlib' has no attribute {name!r}")


def __dir__():
    return __all__
