"""carlib: train and compare image classifiers with conclusions you can trust.

The public API is importable from here; submodules are loaded on first use, so
``carlib results`` does not pay for importing TensorFlow.

- :func:`run_experiment` — one config in, one trained model and record out
- :func:`run_study`, :func:`study_summary` — a configuration over several seeds, and its summary
- :func:`load_results` — the combined table of every run in a results store
- :class:`ExperimentConfig` — the parameter vocabulary shared by API, notebooks, YAML and CLI
"""

import importlib as _importlib
import os as _os

# Keep TensorFlow's C++ start-up chatter and albumentations' update check out of notebooks.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# The lines TensorFlow prints before its logging reads TF_CPP_MIN_LOG_LEVEL are filtered by it too.
from carlib.base.startup_log import filter_tensorflow_startup_lines as _filter_tensorflow_startup_lines  # noqa: E402

_filter_tensorflow_startup_lines()

__version__ = "0.1.0"

_EXPORTS = {
    # the parameter vocabulary and its errors
    "ExperimentConfig": "carlib.config",
    "PARAMETER_NAMES": "carlib.config",
    "ConfigError": "carlib.errors",
    "CarlibError": "carlib.errors",
    # training, studies, sweeps
    "run_experiment": "carlib.train.experiment",
    "lr_find": "carlib.train.lr_find",
    "lr_find_for_config": "carlib.train.lr_find",
    "run_study": "carlib.studies.run",
    "study_summary": "carlib.studies.run",
    "study_verdict": "carlib.studies.run",
    "study_config": "carlib.studies.run",
    "augmentation_samples": "carlib.studies.run",
    "notebook_parameters": "carlib.studies.parameters",
    "StudySpec": "carlib.studies.specs",
    "register_study": "carlib.studies.specs",
    "run_sweep": "carlib.studies.sweep",
    # results
    "load_results": "carlib.records.store",
    "ResultsStore": "carlib.records.store",
    "rerun": "carlib.train.rerun",
    "export_to_mlflow": "carlib.studies.mlflow_export",
    # models and data
    "build_model": "carlib.models.build",
    "BackboneSpec": "carlib.models.spec",
    "register_backbone": "carlib.models.registry",
    "available_backbones": "carlib.models.registry",
    "register_preset": "carlib.data.augment",
    "available_presets": "carlib.data.augment",
    "register_tta_preset": "carlib.data.tta_presets",
    "available_tta_presets": "carlib.data.tta_presets",
    "prepare_data": "carlib.data.folders",
    "augmented_views": "carlib.data.pipeline",
    "check_dataset": "carlib.data.check",
    # evaluation, TTA and the submission
    "tta_predict": "carlib.evaluate.tta",
    "tta_pass_images": "carlib.evaluate.tta",
    "accuracy_by_passes": "carlib.evaluate.tta",
    "evaluate_predictions": "carlib.evaluate.metrics",
    "evaluate_model": "carlib.evaluate.checkpoints",
    "evaluate_run": "carlib.evaluate.checkpoints",
    "resolution_curve": "carlib.evaluate.resolution",
    "load_model": "carlib.evaluate.predict",
    "predict_submission": "carlib.evaluate.submission",
    "score_submission": "carlib.evaluate.submission",
    # predicting any photos, exporting for deployment, the class names a model carries
    "predict_photos": "carlib.evaluate.photos",
    "export_model": "carlib.evaluate.export",
    "save_model": "carlib.models.build",
    "read_class_names": "carlib.models.build",
    # plots (drawing only)
    "plot_learning_curves": "carlib.plots",
    "plot_summary": "carlib.plots",
    "plot_tradeoff": "carlib.plots",
    "plot_augmentation_gallery": "carlib.plots",
    "plot_confusion_matrix": "carlib.plots",
    "plot_mistakes": "carlib.plots",
    "plot_resolution_curve": "carlib.plots",
    "plot_tta_grid": "carlib.plots",
    "plot_tta_spread": "carlib.plots",
    "plot_lr_find": "carlib.plots",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(_EXPORTS[name]), name)  # deferred: the facade loads on first use
        globals()[name] = value
        return value
    raise AttributeError(f"module 'carlib' has no attribute {name!r}")


def __dir__():
    return __all__
