"""``carlib bench recipe``: carlib's CPU recipe against a plain hand-written Keras CNN, and the pretrained recipe.

The baseline is the CNN a student writes first (``Rescaling(1/255)``, ``Conv2D`` 32/64/128 each
followed by max-pooling, ``Flatten``, ``Dense(512, relu)``, ``Dropout(0.5)``, softmax; RMSprop at
1e-3, 50 epochs, no augmentation, the last weights), a strong, simple reference on small photo
datasets. The recipe is ``params/cpu_recipe/recipe.yaml`` (:func:`cpu_recipe`), trained by
:func:`carlib.run_experiment` exactly as ``carlib run --params params/cpu_recipe/recipe.yaml``
would, then scored with its TTA. The third arm, the pretrained recipe
(``params/cpu_recipe/pretrained.yaml``: EfficientNet-Lite1 fine-tuned from ImageNet), is trained the same
way and compared with the recipe, within :data:`PRETRAINED_CPU_BUDGET` times its CPU time. All arms train on the same images (the recipe run's own
splits of the same seed, :func:`carlib.data.splits.split_for_run`), read through carlib's data
pipeline, and are scored on the same held-out test images: the dataset's labelled test set (a
``test/`` folder, or ``test-answers.csv`` as the embedded dataset has) when it has one, else a
stratified share of the labelled images (``test_split``) that neither arm ever sees. Each arm's
CPU time is the process CPU time (all threads) from listing the data to the test predictions;
wall time is measured beside it.

These are benchmarks, not tests: the figures depend on the machine and its load.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import keras
import numpy as np
import pandas as pd

from carlib.bench.machine import machine_description
from carlib.base.project_files import default_results_dir, resolve_project_file
from carlib.base.yaml_files import load_yaml_mapping
from carlib.config import ExperimentConfig
from carlib.data.embedded import embedded_data_dir
from carlib.data.folders import prepare_data
from carlib.data.splits import split_for_run
from carlib.data.pipeline import eval_dataset, training_dataset
from carlib.errors import ConfigError, TrainingError
from carlib.evaluate.predict import predict_images
from carlib.models.build import ensure_weights
from carlib.studies.parameters import load_params_file
from carlib.studies.stats import compare_top_two
from carlib.train.experiment import run_experiment
from carlib.train.setup import prepare_run_data

__all__ = ["RECIPE_PRESET", "cpu_recipe", "PRETRAINED_PRESET", "PRETRAINED_CPU_BUDGET", "pretrained_recipe", "BASELINE", "baseline_model", "recipe_benchmark", "format_figures", "verdict"]

# The CPU recipe (issue 9), chosen by the cpu_recipe_study on the embedded data (docs/cpu-recipe.md):
# one preset file for `carlib run --params`, papermill -f and this benchmark (a wheel carries a copy of it).
RECIPE_PRESET = "params/cpu_recipe/recipe.yaml"


def cpu_recipe() -> dict[str, Any]:
    """The CPU recipe's parameters, read from :data:`RECIPE_PRESET` (the clone's, or the installed package's copy)."""
    return load_params_file(RECIPE_PRESET)


# The pretrained arm (issue 21): EfficientNet-Lite1 fine-tuned from ImageNet, within 3x the recipe's CPU time.
PRETRAINED_PRESET = "params/cpu_recipe/pretrained.yaml"
PRETRAINED_CPU_BUDGET = 3.0  # x the from-scratch recipe's CPU time


def pretrained_recipe() -> dict[str, Any]:
    """The pretrained CPU recipe's parameters, read from :data:`PRETRAINED_PRESET`."""
    return load_params_file(PRETRAINED_PRESET)


# The baseline's fixed settings: what a student's first notebook uses on ~100 px photos.
BASELINE: dict[str, Any] = {"epochs": 50, "image_size": 96, "batch_size": 32, "optimizer": "RMSprop", "lr": 1e-3}


def baseline_model(num_classes: int, image_size: int):
    """The plain hand-written Keras CNN of the comparison (not a carlib backbone: it is the reference)."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input(shape=(image_size, image_size, 3)),
        layers.Rescaling(1.0 / 255),
        layers.Conv2D(32, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(128, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(512, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ], name="plain_keras_cnn")


# ------------------------------------------------------------------------------- arms
class _Clock:
    """Process CPU seconds (every thread) and wall seconds since creation."""

    def __init__(self):
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def read(self) -> tuple[float, float]:
        return time.process_time() - self.cpu, time.perf_counter() - self.wall


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((np.argmax(probabilities, axis=1) == labels).mean())


def _run_baseline(config, *, epochs: int, image_size: int, say: Callable[[str], None]) -> dict[str, Any]:
    clock = _Clock()
    data = prepare_run_data(config)  # the recipe run's own splits of the same seed, and the same test images
    keras.utils.set_random_seed(config.seed)
    batch = BASELINE["batch_size"]
    train_ds = training_dataset(data.train_images, image_size, batch, augmentation="none", seed=config.seed)
    val_ds = eval_dataset(data.val_images, image_size, batch) if data.has_val else None
    model = baseline_model(data.num_classes, image_size)
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=BASELINE["lr"]),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, shuffle=False, verbose=0)
    test = data.test_images
    accuracy = _accuracy(predict_images(model, test, batch_size=batch), test.labels)  # the last weights
    cpu, wall = clock.read()
    say(f"baseline (seed {config.seed}): test accuracy {accuracy:.4f}, {cpu:.0f} CPU s, {wall:.0f} s")
    return {"accuracy": accuracy, "cpu_s": cpu, "wall_s": wall, **data.splits.describe(),
            "class_names": list(test.class_names)}


def _run_preset(arm: str, config, *, say: Callable[[str], None]) -> dict[str, Any]:
    """One run of a carlib preset arm (the recipe, the pretrained recipe), exactly as ``carlib run`` trains it."""
    clock = _Clock()
    record = run_experiment(config)  # scores its test set itself, with TTA when the preset asks for it
    if record["status"] != "ok":
        raise TrainingError(f"the {arm}'s run {record['run_id']} failed: {record.get('error')}")
    metrics = record["metrics"]
    accuracy_plain = metrics["test_accuracy_best"]
    accuracy = metrics.get("test_accuracy_tta") if record["config"]["tta_passes"] else accuracy_plain
    cpu, wall = clock.read()
    say(f"{arm} (seed {config.seed}): test accuracy {accuracy:.4f} ({accuracy_plain:.4f} without TTA), "
        f"{cpu:.0f} CPU s, {wall:.0f} s; run {record['run_id']}")
    return {"accuracy": accuracy, "accuracy_no_tta": accuracy_plain, "cpu_s": cpu, "wall_s": wall,
            "run_id": record["run_id"], "best_epoch": metrics.get("best_epoch"),
            "class_names": record["data"]["class_names"]}


def _warm_up() -> None:
    """Pay TensorFlow's one-time start-up (kernels, thread pools) before either arm's clock starts."""
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(np.zeros((4, 16, 16, 3), np.float32), np.zeros(4, np.int32), epochs=1, verbose=0)
    model.predict_on_batch(np.zeros((2, 16, 16, 3), np.float32))


def _release() -> None:
    keras.backend.clear_session()
    gc.collect()


# ------------------------------------------------------------------------------ public
def selection_seeds(folder: str | os.PathLike = "params/cpu_recipe") -> set[int]:
    """The seeds the CPU recipe was chosen on: every seed of the study's sweep files (``sweep-*.yaml``) in ``folder``.

    Confirming the recipe on them would report the winner's curse, not the recipe's worth.
    """
    chosen: set[int] = set()
    for path in sorted(resolve_project_file(folder).glob("sweep-*.yaml")):
        sweep = load_yaml_mapping(path, "sweep file")
        first = int((sweep.get("base") or {}).get("seed", 0))
        chosen |= set(range(first, first + int(sweep.get("seeds", 1))))
    return chosen


def recipe_benchmark(data_dir: str | os.PathLike | None = None, *, seeds: int = 1, seed: int | None = None,
                     recipe: Mapping[str, Any] | None = None, pretrained: Mapping[str, Any] | bool | None = None,
                     baseline_epochs: int = BASELINE["epochs"], baseline_image_size: int = BASELINE["image_size"],
                     test_split: float = 0.2, results_dir: str | os.PathLike | None = None,
                     verbose: bool = True) -> list[dict[str, Any]]:
    """Train the baseline, the recipe and the pretrained recipe on ``data_dir`` for ``seeds`` seeds; return the figures.

    ``data_dir``: the embedded dataset (``None``), the competition layout or any class-folder
    tree. ``recipe``: the parameters of the recipe arm (default :func:`cpu_recipe`; any carlib
    parameters, e.g. a preset file's). ``pretrained``: those of the pretrained arm (default
    :func:`pretrained_recipe`), or ``False`` to leave that arm out. ``seed``: the first seed; the
    default recipe is confirmed only on fresh seeds, never those that chose it
    (:func:`selection_seeds`; ``None``: the first seed after them). The preset arms' runs are
    recorded in ``results_dir`` (study ``recipe_bench``). Returns a list of ``{"figure", "value",
    "unit", ...context}`` dicts: ``baseline_accuracy``, ``recipe_accuracy``,
    ``recipe_accuracy_no_tta``, ``accuracy_gain`` (recipe − baseline), ``baseline_cpu_s``,
    ``recipe_cpu_s``, ``recipe_cpu_ratio`` (recipe / baseline), ``baseline_wall_s``,
    ``recipe_wall_s``, and with the pretrained arm ``pretrained_accuracy``,
    ``pretrained_accuracy_no_tta``, ``pretrained_gain`` (pretrained − recipe), ``pretrained_cpu_s``,
    ``pretrained_cpu_ratio`` (pretrained / recipe), ``pretrained_wall_s``; values are means over
    the seeds, ``per_seed`` lists each seed's. Arms rotate which one runs first.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds={seeds!r} is out of range: expected an integer >= 1 (runs of each arm).")
    if isinstance(baseline_epochs, bool) or not isinstance(baseline_epochs, int) or baseline_epochs < 1:
        raise ConfigError(f"baseline_epochs={baseline_epochs!r} is out of range: expected an integer >= 1 "
                          f"(the baseline's own setting is {BASELINE['epochs']}).")
    if isinstance(baseline_image_size, bool) or not isinstance(baseline_image_size, int) or baseline_image_size < 32:
        raise ConfigError(f"baseline_image_size={baseline_image_size!r} is out of range: expected an integer >= 32 "
                          "(three 3x3 convolutions and poolings need it).")
    chosen = selection_seeds() if recipe is None else set()
    seed = (max(chosen) + 1 if chosen else 0) if seed is None else seed
    reused = sorted(chosen & set(range(seed, seed + seeds)))
    if reused:
        raise ConfigError(f"seed(s) {reused} chose the CPU recipe (params/cpu_recipe/sweep-*.yaml): confirming it on "
                          f"them measures the winner's curse, not the recipe; pass --seed {max(chosen) + 1} or later "
                          "(the default).")
    store = Path(results_dir or default_results_dir()).expanduser().resolve()

    def preset_config(values: Mapping[str, Any]) -> tuple[dict[str, Any], ExperimentConfig]:
        params = dict(values)
        for key in ("data_dir", "seed", "results_dir", "study", "trial_id", "seeds", "test_split"):
            params.pop(key, None)  # the benchmark sets these itself
        return params, ExperimentConfig.from_dict(params, study="recipe_bench", results_dir=str(store),
                                                  test_split=test_split,
                                                  data_dir=None if data_dir is None else str(data_dir))

    params, base = preset_config(cpu_recipe() if recipe is None else recipe)  # bad values fail here
    pretrained_base = None
    if pretrained is not False:
        pretrained_params, pretrained_base = preset_config(pretrained_recipe() if pretrained in (None, True)
                                                           else pretrained)
    say = (lambda text: print(f"carlib bench recipe: {text}", flush=True)) if verbose else (lambda text: None)

    splits = split_for_run(prepare_data(base.data_dir), val_split=base.val_split, test_split=test_split, seed=seed)
    if not len(splits.test):
        raise ConfigError(f"test_split={test_split!r}: {splits.layout.root} has no labelled test images (a test/ "
                          "folder or test-answers.csv), so a share of its labelled images is held out as the test "
                          "set; expected a fraction in (0, 1), e.g. 0.2.")
    say(f"{splits.layout.root}: {len(splits.images.class_names)} classes; test set: {splits.test_source} "
        f"({len(splits.test)} images, the same for both arms and every seed)")
    if pretrained_base is not None:
        ensure_weights(pretrained_base.backbone, pretrained_base.effective_weights)  # missing weights fail now
    _warm_up()
    rows: dict[str, list[dict[str, Any]]] = {"baseline": [], "recipe": [], "pretrained": []}
    for offset in range(seeds):
        config = base.replace(seed=seed + offset)
        arms = [("baseline", lambda: _run_baseline(config, epochs=baseline_epochs, image_size=baseline_image_size,
                                                   say=say)),
                ("recipe", lambda: _run_preset("recipe", config, say=say))]
        if pretrained_base is not None:
            arms.append(("pretrained", lambda: _run_preset("pretrained", pretrained_base.replace(seed=seed + offset),
                                                           say=say)))
        shift = offset % len(arms)  # each arm runs first, second, … in turn
        for name, run in arms[shift:] + arms[:shift]:
            _release()
            rows[name].append(run())
        names = {name: tuple(rows[name][-1]["class_names"]) for name, _ in arms}
        if len(set(names.values())) > 1:
            raise TrainingError(f"the arms trained on different classes: {names} (the dataset changed during the "
                                "benchmark?)")
    _release()
    figures = _figures(rows["baseline"], rows["recipe"], base, params, seeds=seeds, seed=seed, data_dir=data_dir,
                       baseline_epochs=baseline_epochs, baseline_image_size=baseline_image_size)
    if pretrained_base is not None:
        figures += _pretrained_figures(rows["recipe"], rows["pretrained"], pretrained_base, pretrained_params,
                                       context={k: v for k, v in figures[0].items()
                                                if k not in ("figure", "value", "unit", "std", "per_seed")})
    return figures


def _figures(baseline_rows, recipe_rows, recipe_config, recipe_params, *, seeds: int, seed: int, data_dir,
             baseline_epochs: int, baseline_image_size: int) -> list[dict[str, Any]]:
    def column(rows, key):
        return [float(row[key]) for row in rows]

    ratios = [r["cpu_s"] / b["cpu_s"] for b, r in zip(baseline_rows, recipe_rows)]
    gains = [r["accuracy"] - b["accuracy"] for b, r in zip(baseline_rows, recipe_rows)]
    embedded = data_dir is None or Path(data_dir).expanduser().resolve() == embedded_data_dir().resolve()
    context = {
        "dataset": "embedded" if embedded else str(Path(data_dir).expanduser().resolve()),
        "layout": baseline_rows[0]["layout"],
        "test_set": baseline_rows[0]["test_source"],
        "num_classes": len(baseline_rows[0]["class_names"]),
        "n_train": baseline_rows[0]["n_train"],
        "n_val": baseline_rows[0]["n_val"],
        "n_test": baseline_rows[0]["n_test"],
        "seeds": seeds,
        "first_seed": seed,
        "baseline": (f"plain Keras CNN (Conv2D 32/64/128 + MaxPool, Dense 512, Dropout 0.5), RMSprop "
                     f"lr={BASELINE['lr']:g}, {baseline_epochs} epochs, {baseline_image_size} px, no augmentation, "
                     "last weights"),
        "recipe": {k: v for k, v in recipe_config.to_dict().items()
                   if k in recipe_params or (k in ("backbone_width", "backbone_depth") and v is not None)},
        "recipe_runs": [row["run_id"] for row in recipe_rows],
        "machine": machine_description(),
        "date": _dt.date.today().isoformat(),
    }
    figures = []
    for name, values, unit in (
        ("baseline_accuracy", column(baseline_rows, "accuracy"), "fraction"),
        ("recipe_accuracy", column(recipe_rows, "accuracy"), "fraction"),
        ("recipe_accuracy_no_tta", column(recipe_rows, "accuracy_no_tta"), "fraction"),
        ("accuracy_gain", gains, "fraction"),
        ("baseline_cpu_s", column(baseline_rows, "cpu_s"), "s"),
        ("recipe_cpu_s", column(recipe_rows, "cpu_s"), "s"),
        ("recipe_cpu_ratio", ratios, "x"),
        ("baseline_wall_s", column(baseline_rows, "wall_s"), "s"),
        ("recipe_wall_s", column(recipe_rows, "wall_s"), "s"),
    ):
        figures.append({"figure": name, "value": float(np.mean(values)), "unit": unit,
                        "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                        "per_seed": values, **context})
    return figures


def _pretrained_figures(recipe_rows, pretrained_rows, config, params, *, context) -> list[dict[str, Any]]:
    """The pretrained arm's figures, against the from-scratch recipe of the same seeds."""
    context = {**context, "pretrained": {k: v for k, v in config.to_dict().items() if k in params},
               "pretrained_runs": [row["run_id"] for row in pretrained_rows]}
    figures = []
    for name, values, unit in (
        ("pretrained_accuracy", [row["accuracy"] for row in pretrained_rows], "fraction"),
        ("pretrained_accuracy_no_tta", [row["accuracy_no_tta"] for row in pretrained_rows], "fraction"),
        ("pretrained_gain", [p["accuracy"] - r["accuracy"] for r, p in zip(recipe_rows, pretrained_rows)],
         "fraction"),
        ("pretrained_cpu_s", [row["cpu_s"] for row in pretrained_rows], "s"),
        ("pretrained_cpu_ratio", [p["cpu_s"] / r["cpu_s"] for r, p in zip(recipe_rows, pretrained_rows)], "x"),
        ("pretrained_wall_s", [row["wall_s"] for row in pretrained_rows], "s"),
    ):
        values = [float(v) for v in values]
        figures.append({"figure": name, "value": float(np.mean(values)), "unit": unit,
                        "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                        "per_seed": values, **context})
    return figures


def _paired(by_name: Mapping[str, Mapping[str, Any]], first: str, second: str):
    rows = [{"arm": arm, "seed": by_name[f"{arm}_accuracy"]["first_seed"] + i, "status": "ok", "accuracy": value}
            for arm in (first, second) for i, value in enumerate(by_name[f"{arm}_accuracy"]["per_seed"])]
    return compare_top_two(pd.DataFrame(rows), ["arm"], "accuracy")


def verdict(figures: Sequence[Mapping[str, Any]]) -> str:
    """Does the recipe beat the baseline on the test images (a paired verdict across seeds) within its CPU time, and
    does the pretrained recipe (when it ran) beat the recipe within :data:`PRETRAINED_CPU_BUDGET` times its CPU time?"""
    by_name = {f["figure"]: f for f in figures}
    ratio = by_name["recipe_cpu_ratio"]["value"]
    budget = (f"The recipe used {ratio:.2f}x the baseline's CPU time "
              + ("(within it)" if ratio <= 1 else "(MORE than the baseline: over budget)"))
    text = f"{_paired(by_name, 'baseline', 'recipe').message} {budget}."
    if "pretrained_accuracy" in by_name:
        ratio = by_name["pretrained_cpu_ratio"]["value"]
        text += (f" Pretrained against the recipe: {_paired(by_name, 'recipe', 'pretrained').message} The pretrained "
                 f"recipe used {ratio:.2f}x the recipe's CPU time ("
                 + (f"within {PRETRAINED_CPU_BUDGET:g}x" if ratio <= PRETRAINED_CPU_BUDGET
                    else f"MORE than {PRETRAINED_CPU_BUDGET:g}x: over budget") + ").")
    return text


def format_figures(figures: Sequence[Mapping[str, Any]]) -> str:
    """The figures as a text table, with the context, the verdict and the machine."""
    lines = [f"{'figure':<24}{'value':>10}  {'unit':<9}{'std':>8}  per seed"]
    for f in figures:
        std = "" if f["std"] is None else f"{f['std']:.3g}"
        per_seed = ", ".join(f"{v:.4g}" for v in f["per_seed"])
        lines.append(f"{f['figure']:<24}{f['value']:>10.4g}  {f['unit']:<9}{std:>8}  {per_seed}")
    first = figures[0]
    lines += [
        "",
        f"dataset: {first['dataset']} ({first['num_classes']} classes; {first['n_train']} train / {first['n_val']} "
        f"validation images; test set: {first['test_set']}); seeds: {first['seeds']}",
        f"baseline: {first['baseline']}",
        "recipe: " + ", ".join(f"{k}={v}" for k, v in first["recipe"].items()),
        *(["pretrained: " + ", ".join(f"{k}={v}" for k, v in figures[-1]["pretrained"].items())]
          if "pretrained" in figures[-1] else []),
        f"machine: {first['machine']}; date: {first['date']}",
        "verdict: " + verdict(figures),
    ]
    return "\n".join(lines)
