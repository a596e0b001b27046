"""``carlib bench``: reproducible speed figures for the input pipeline and the study harness (R19).

Every figure is a :class:`Figure` with a stable name (``decode_limit_ips``,
``pipeline_<preset>_ips``/``_ratio``, ``oldway_ips``, ``oldway_speedup``,
``transform_<name>_ips``, ``feed_ratio``, ``harness_overhead_s``), so results stay comparable
over time. Alternatives that are compared are measured side by side in one process, in
interleaved rounds (median of the rounds), so ratios hold on a noisy machine even when the
absolute numbers move.

Measurements (``carlib bench --help``):

- ``decode``: images/s of tf.data's parallel decode + resize alone, the practical ceiling of a
  pipeline that decodes every epoch.
- ``pipeline``: carlib's training pipeline per augmentation preset, its first epoch (decoding)
  and later epochs (decoded images cached), as images/s and as a ratio to the decode limit.
- ``oldway``: the seed notebook's approach — a Python generator reading, resizing and
  augmenting one image at a time (as ``ImageDataGenerator``-style loaders do) — and carlib's
  speed-up over it with the same augmentations.
- ``transforms``: each transform of a preset applied alone (probability 1), slowest first,
  heavy ones flagged.
- ``feed``: training throughput of a small backbone fed by the pipeline, divided by the same
  model fed the same batches from memory (1.0: the model never waits for data).
- ``harness``: wall time of a study trial run the way ``carlib sweep`` runs it (papermill,
  a fresh kernel) minus the same ``run_experiment`` call made directly (a fresh interpreter),
  beside the start-up time of a kernel running an empty notebook.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import albumentations as A
import cv2
import keras
import nbformat
import numpy as np
import tensorflow as tf

from carlib.base.project_files import resolve_project_file
from carlib.data.augment import build_augmentation, check_augmentation
from carlib.data.folders import list_class_images, prepare_data, sample_images
from carlib.data.pipeline import load_image, training_dataset
from carlib.errors import ConfigError, MissingFileError, TrainingError
from carlib.models.build import build_model
from carlib.models.registry import get_backbone
from carlib.records.store import ResultsStore
from carlib.studies.notebook_run import notebook_command
from carlib.studies.parameters import load_params_file
from carlib.studies.sweep import KERNEL_START_TIMEOUT_S

__all__ = [
    "Figure",
    "TARGETS",
    "MEASUREMENTS",
    "bench_images",
    "measure_decode_limit",
    "measure_pipelines",
    "measure_oldway",
    "measure_transforms",
    "measure_feed",
    "measure_harness",
    "run_benchmarks",
    "format_table",
]

# The targets on the embedded data on 2 cores (name -> minimum). The harness target
# depends on measured times and is computed in measure_harness.
TARGETS: dict[str, float] = {
    "pipeline_light_ratio": 0.85,
    "pipeline_medium_ratio": 0.6,
    "oldway_speedup": 3.0,
    "feed_ratio": 0.95,
}
# A transform is flagged heavy when it costs at least this share of its preset's per-image time.
HEAVY_SHARE = 0.25
MEASUREMENTS = ("decode", "pipeline", "oldway", "transforms", "feed", "harness")


@dataclasses.dataclass
class Figure:
    """One measured figure: a stable name, a value, its unit and the context it was measured in."""

    figure: str
    value: float
    unit: str
    context: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def target(self) -> float | None:
        """The minimum the issue asks for, when there is one."""
        return self.context.get("target", TARGETS.get(self.figure))

    @property
    def met(self) -> bool | None:
        """Whether the target is reached (None: no target)."""
        if self.target is None:
            return None
        if self.figure == "harness_overhead_s":  # an upper limit
            return self.value <= self.target
        return self.value >= self.target

    def as_dict(self, common: dict[str, Any] | None = None) -> dict[str, Any]:
        """``{"figure", "value", "unit", ...context}``: one line of ``carlib bench --json``."""
        out = {"figure": self.figure, "value": round(float(self.value), 4), "unit": self.unit}
        out.update(self.context)
        if self.target is not None:
            out["target"], out["met"] = self.target, self.met
        out.update(common or {})
        return out


# ----------------------------------------------------------------------------- helpers
def bench_images(data_dir: str | None = None, limit: int | None = None, seed: int = 0):
    """The training images of ``data_dir`` (default: the embedded dataset), at most ``limit`` of them.

    A limit takes a stratified random sample, so every class is represented.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit!r}: expected a number of images >= 1, or None for all of them.")
    images = list_class_images(prepare_data(data_dir).train_dir)
    if limit is not None and limit < len(images):
        images = sample_images(images, limit, seed=seed)
    return images


def _epoch_rate(dataset) -> float:
    """Images/s of one full pass over a batched dataset (elements ``(images, labels)`` or ``images``)."""
    n = 0
    start = time.perf_counter()
    for element in dataset:
        batch = element[0] if isinstance(element, tuple) else element
        n += int(batch.shape[0])
    return n / (time.perf_counter() - start)


class _Rounds(dict):
    """Samples per candidate from interleaved rounds: ``rounds[name]`` is the median."""

    def __init__(self, samples: dict[str, list[float]]):
        super().__init__({name: statistics.median(values) for name, values in samples.items()})
        self.samples = samples

    def ratio(self, numerator: str, denominator: str) -> float:
        """Median of the per-round ratios: each pair was measured moments apart, so load changes cancel."""
        return statistics.median(a / b for a, b in zip(self.samples[numerator], self.samples[denominator]))


def _side_by_side(candidates: dict[str, Callable[[], float]], rounds: int) -> _Rounds:
    """``rounds`` interleaved measurements of each candidate (a function returning a rate or a time)."""
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, measure in candidates.items():
            samples[name].append(measure())
    return _Rounds(samples)


def _decode_dataset(images, image_size: int, batch_size: int):
    ds = tf.data.Dataset.from_tensor_slices(list(images.paths))
    ds = ds.map(lambda path: load_image(path, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


# ----------------------------------------------------------------------------- measurements
def measure_decode_limit(images, image_size: int = 128, batch_size: int = 32, rounds: int = 3) -> Figure:
    """``decode_limit_ips``: parallel decode + resize alone (tf.data, no cache, no augmentation)."""
    dataset = _decode_dataset(images, image_size, batch_size)
    _epoch_rate(dataset)  # warm-up: graph tracing, files into the page cache
    rate = _side_by_side({"decode": lambda: _epoch_rate(dataset)}, rounds)["decode"]
    return Figure("decode_limit_ips", rate, "images/s", {"image_size": image_size, "n_images": len(images)})


def measure_pipelines(images, presets: Sequence[str] = ("none", "light", "medium", "heavy"), image_size: int = 128,
                      batch_size: int = 32, rounds: int = 3) -> list[Figure]:
    """Decode limit and carlib's training pipeline per preset, measured side by side.

    ``pipeline_<preset>_ips`` is an epoch after the first (decoded images cached in memory,
    as in a run where they fit); ``pipeline_<preset>_first_epoch_ips`` includes the decoding.
    Ratios are medians of per-round ratios to ``decode_limit_ips`` measured in the same round.
    """
    decode = _decode_dataset(images, image_size, batch_size)
    _epoch_rate(decode)
    pipelines, first_epoch = {}, {}
    for preset in presets:
        pipelines[preset] = training_dataset(images, image_size, batch_size, augmentation=preset, seed=0,
                                             cache="memory")
        first_epoch[preset] = _epoch_rate(pipelines[preset])  # fills the cache
    candidates = {"decode": lambda: _epoch_rate(decode)}
    candidates.update({preset: (lambda ds=ds: _epoch_rate(ds)) for preset, ds in pipelines.items()})
    rates = _side_by_side(candidates, rounds)
    limit = rates["decode"]
    context = {"image_size": image_size, "batch_size": batch_size, "n_images": len(images), "rounds": rounds}
    figures = [Figure("decode_limit_ips", limit, "images/s", dict(context))]
    for preset in presets:
        later = {**context, "preset": preset, "epochs": "after the first (decoded images cached)"}
        figures += [
            Figure(f"pipeline_{preset}_ips", rates[preset], "images/s", later),
            Figure(f"pipeline_{preset}_ratio", rates.ratio(preset, "decode"), "x decode limit", later),
            Figure(f"pipeline_{preset}_first_epoch_ips", first_epoch[preset], "images/s",
                   {**context, "preset": preset, "epochs": "the first (decoding, filling the cache)"}),
            Figure(f"pipeline_{preset}_first_epoch_ratio", first_epoch[preset] / limit, "x decode limit",
                   {**context, "preset": preset, "epochs": "the first (decoding, filling the cache)"}),
        ]
    return figures


def _oldway_batches(paths: Sequence[str], image_size: int, batch_size: int, pipeline) -> Iterable[np.ndarray]:
    """The seed notebook's loader: one Python thread reads, resizes and augments image by image."""
    batch = []
    for path in paths:
        image = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)
        if pipeline is not None:
            image = pipeline(image=image)["image"]
        batch.append(image)
        if len(batch) == batch_size:
            yield np.stack(batch).astype(np.float32)
            batch = []
    if batch:
        yield np.stack(batch).astype(np.float32)


def measure_oldway(images, preset: str = "medium", image_size: int = 128, batch_size: int = 32,
                   rounds: int = 3) -> list[Figure]:
    """``oldway_ips`` and ``oldway_speedup``: a per-image Python generator vs carlib, same augmentations.

    The speed-up compares carlib's steady state (later epochs) with the old way, which decodes
    every epoch by design; the first-epoch speed-up is in the context.
    """
    pipeline = build_augmentation(preset, image_size, seed=0)
    paths = list(images.paths)

    def oldway() -> float:
        n, start = 0, time.perf_counter()
        for batch in _oldway_batches(paths, image_size, batch_size, pipeline):
            n += len(batch)
        return n / (time.perf_counter() - start)

    carlib_ds = training_dataset(images, image_size, batch_size, augmentation=preset, seed=0, cache="memory")
    first = _epoch_rate(carlib_ds)
    oldway()  # warm-up: page cache, cv2 and albumentations first calls
    rates = _side_by_side({"oldway": oldway, "carlib": lambda: _epoch_rate(carlib_ds)}, rounds)
    context = {"preset": preset, "image_size": image_size, "batch_size": batch_size, "n_images": len(images),
               "rounds": rounds, "carlib_ips": round(rates["carlib"], 1),
               "first_epoch_speedup": round(first / rates["oldway"], 2)}
    return [Figure("oldway_ips", rates["oldway"], "images/s", context),
            Figure("oldway_speedup", rates.ratio("carlib", "oldway"), "x", context)]


def _single_transforms(preset: str, image_size: int) -> list[tuple[str, Any, float]]:
    """(name, transform with p=1, probability in the preset) for each transform, OneOf's choices included."""
    compose = build_augmentation(preset, image_size)
    if compose is None:
        return []
    found: list[tuple[str, Any, float]] = []

    def visit(transform, probability: float) -> None:
        if isinstance(transform, (A.OneOf, A.SomeOf, A.Compose)):
            children = list(transform.transforms)
            for child in children:
                share = probability * transform.p
                if isinstance(transform, A.OneOf):  # one child, chosen by its weight
                    total = sum(c.p for c in children) or 1.0
                    share *= child.p / total
                visit(child, share)
            return
        single = copy.deepcopy(transform)
        single.p = 1.0
        found.append((_snake(type(transform).__name__), single, probability * transform.p))

    for transform in compose.transforms:
        visit(transform, 1.0)
    return found


def measure_transforms(images, preset: str = "heavy", image_size: int = 128, rounds: int = 3,
                       n_images: int = 200) -> list[Figure]:
    """``transform_<name>_ips``: each transform of ``preset`` alone (p=1) on decoded images, one thread.

    Sorted slowest first. ``heavy`` marks a transform that costs at least :data:`HEAVY_SHARE`
    of the preset's per-image time (all transforms applied); ``expected_ms`` weighs the cost by
    how often the preset applies it.
    """
    decoded = [load_image(tf.constant(path), image_size).numpy() for path in images.paths[:n_images]]
    transforms = _single_transforms(preset, image_size)
    if not transforms:
        raise ConfigError(f"augmentation preset {preset!r} has no transforms to time; pick one with transforms "
                         "(e.g. heavy, which contains every transform of medium and light).")
    composes = {}
    for index, (name, single, _) in enumerate(transforms):
        compose = A.Compose([single], seed=index)
        composes[f"{index}:{name}"] = compose

    def timer(compose) -> Callable[[], float]:
        def rate() -> float:
            start = time.perf_counter()
            for image in decoded:
                compose(image=image)
            return len(decoded) / (time.perf_counter() - start)
        return rate

    for compose in composes.values():
        timer(compose)()  # warm-up
    rates = _side_by_side({key: timer(c) for key, c in composes.items()}, rounds)
    costs = {key: 1000.0 / rate for key, rate in rates.items()}  # ms per image
    total = sum(costs.values())
    figures = []
    seen: dict[str, int] = {}
    for (key, rate), (name, _, probability) in zip(rates.items(), transforms):
        seen[name] = seen.get(name, 0) + 1
        figure_name = name if seen[name] == 1 else f"{name}_{seen[name]}"
        share = costs[key] / total
        figures.append(Figure(f"transform_{figure_name}_ips", rate, "images/s", {
            "preset": preset, "image_size": image_size, "ms_per_image": round(costs[key], 4),
            "share_of_preset": round(share, 3), "probability_in_preset": round(probability, 3),
            "expected_ms": round(costs[key] * probability, 4), "heavy": share >= HEAVY_SHARE,
            "n_images": len(decoded), "rounds": rounds}))
    return sorted(figures, key=lambda f: f.value)


def measure_feed(images, backbone: str = "mobilenet_v3_small", preset: str = "light", image_size: int = 128,
                 batch_size: int = 32, rounds: int = 3) -> list[Figure]:
    """``feed_ratio``: training images/s fed by the pipeline ÷ the same batches fed from memory.

    The model is built by carlib (random weights) and compiled with Adam and sparse
    cross-entropy, a run's defaults; each measurement is one ``fit`` epoch after a warm-up
    epoch, the two feeds interleaved.
    """
    keras.utils.set_random_seed(0)
    pipeline = training_dataset(images, image_size, batch_size, augmentation=preset, seed=0, cache="memory")
    batches = [(x.numpy(), y.numpy()) for x, y in pipeline]  # also fills the pipeline's cache
    in_memory = tf.data.Dataset.from_tensor_slices(
        (np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])))
    in_memory = in_memory.batch(batch_size).cache().prefetch(tf.data.AUTOTUNE)
    n_classes = int(max(images.labels)) + 1
    model = build_model(backbone, n_classes, image_size, weights=None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])

    def rate(dataset) -> Callable[[], float]:
        def measure() -> float:
            start = time.perf_counter()
            model.fit(dataset, epochs=1, verbose=0, shuffle=False)
            return len(images) / (time.perf_counter() - start)
        return measure

    rate(in_memory)()  # warm-up: tracing and the first steps
    rate(pipeline)()
    rates = _side_by_side({"memory": rate(in_memory), "pipeline": rate(pipeline)}, rounds)
    context = {"backbone": backbone, "preset": preset, "image_size": image_size, "batch_size": batch_size,
               "n_images": len(images), "rounds": rounds, "pipeline_ips": round(rates["pipeline"], 1),
               "memory_ips": round(rates["memory"], 1)}
    return [Figure("feed_ratio", rates.ratio("pipeline", "memory"), "x in-memory", context)]


HARNESS_NOTEBOOK = "notebooks/backbone_study.ipynb"
HARNESS_PRESET = "params/backbone_study/quick.yaml"


def _timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise TrainingError(f"harness benchmark: {' '.join(command[:4])} … failed with exit code "
                           f"{completed.returncode}:\n{(completed.stdout + completed.stderr)[-2000:]}")
    return elapsed


def measure_harness(data_dir: str | None = None, notebook: str | Path | None = None, epochs: int | None = None,
                    image_size: int | None = None, rounds: int = 2, kernel: str = "python3") -> list[Figure]:
    """``harness_overhead_s``: what running a study trial the way ``carlib sweep`` does adds to a direct run.

    The trial is the backbone study's quick preset (one seed; ``epochs`` and ``image_size``
    override it), executed by the sweep's own command (:func:`carlib.studies.notebook_run.notebook_command`);
    the direct run is ``run_study`` with the same parameters in a fresh interpreter. Both pay for
    importing TensorFlow and start with fresh results folders. Each way's time around the run
    (wall time minus the record's ``total_s``) is compared, so the training time's run-to-run
    noise cancels; the plain wall-time difference is in the context. The target is the start-up
    of a kernel running an empty notebook the same way, plus 5% of the direct run.
    """
    notebook = Path(notebook or resolve_project_file(HARNESS_NOTEBOOK)).expanduser().resolve()
    if not notebook.is_file():
        raise MissingFileError(f"harness benchmark: no study notebook at {notebook}; pass --notebook PATH "
                                "(e.g. notebooks/backbone_study.ipynb of a carlib clone).")
    params = {**load_params_file(resolve_project_file(HARNESS_PRESET)), "study": "backbone_study", "seeds": 1,
              "data_dir": data_dir}
    params.update({k: v for k, v in (("epochs", epochs), ("image_size", image_size)) if v is not None})
    env = dict(os.environ)  # both ways import carlib, which quiets TensorFlow and albumentations itself
    with tempfile.TemporaryDirectory(prefix="carlib-bench-harness-") as tmp:
        work = Path(tmp)
        empty = work / "empty.ipynb"
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("pass")]), empty)
        counter = iter(range(10**6))

        def run_notebook(path: Path, parameters: dict[str, Any]) -> float:
            command = notebook_command(path, work / f"out-{next(counter)}.ipynb", parameters, kernel=kernel,
                                       start_timeout=KERNEL_START_TIMEOUT_S)
            return _timed(command, path.parent, env)

        def kernel_start() -> float:
            return run_notebook(empty, {})

        # Seconds spent inside run_experiment (its record's total_s), per way and round: subtracting
        # them leaves what each way adds around the same work, free of the training time's own noise.
        inside: dict[str, list[float]] = {"papermill": [], "direct": []}

        def run_time(results: Path) -> float:
            (record,) = ResultsStore(results).records()
            return float(record["timings"]["total_s"])

        def through_papermill() -> float:
            results = work / f"papermill-{next(counter)}"
            wall = run_notebook(notebook, {**params, "results_dir": str(results)})
            inside["papermill"].append(run_time(results))
            return wall

        def direct() -> float:
            code = "import json, sys; from carlib.studies.run import run_study; run_study(**json.loads(sys.argv[1]))"
            results = work / f"direct-{next(counter)}"
            wall = _timed([sys.executable, "-c", code, json.dumps({**params, "results_dir": str(results)})], work, env)
            inside["direct"].append(run_time(results))
            return wall

        kernel_start()  # warm-up: the first kernel start pays for cold imports
        times = _side_by_side({"kernel": kernel_start, "direct": direct, "papermill": through_papermill}, rounds)
    around = {way: [wall - run for wall, run in zip(times.samples[way], inside[way])] for way in inside}
    overhead = statistics.median(p - d for p, d in zip(around["papermill"], around["direct"]))
    target = times["kernel"] + 0.05 * times["direct"]
    context = {"notebook": notebook.name, "kernel": kernel, "epochs": params["epochs"],
               "image_size": params["image_size"], "rounds": rounds, "papermill_s": round(times["papermill"], 2),
               "direct_s": round(times["direct"], 2), "kernel_start_s": round(times["kernel"], 2),
               "papermill_around_run_s": round(statistics.median(around["papermill"]), 2),
               "direct_around_run_s": round(statistics.median(around["direct"]), 2),
               "wall_difference_s": round(statistics.median(
                   p - d for p, d in zip(times.samples["papermill"], times.samples["direct"])), 2),
               "target": round(target, 2)}
    return [Figure("harness_overhead_s", overhead, "s", context)]


# ----------------------------------------------------------------------------- the command
def run_benchmarks(measurements: Sequence[str] = MEASUREMENTS, *, data_dir: str | None = None, image_size: int = 128,
                   batch_size: int = 32, presets: Sequence[str] = ("none", "light", "medium", "heavy"),
                   oldway_preset: str = "medium", transforms_preset: str = "heavy",
                   feed_backbone: str = "mobilenet_v3_small", feed_preset: str = "light", rounds: int = 3,
                   limit: int | None = None, notebook: str | None = None, harness_rounds: int = 2,
                   harness_epochs: int | None = None, on_figures: Callable[[list[Figure]], None] | None = None) -> list[Figure]:
    """Run the named measurements (default: all) and return their figures.

    ``on_figures`` is called after each measurement (the CLI prints as it goes).
    Unknown measurement names, presets or backbones fail before anything is measured.
    """
    unknown = [m for m in measurements if m not in MEASUREMENTS]
    if unknown:
        raise ConfigError(f"unknown measurement(s) {', '.join(unknown)}; known: {', '.join(MEASUREMENTS)}.")
    for preset in (*presets, oldway_preset, transforms_preset, feed_preset):
        check_augmentation(preset)
    get_backbone(feed_backbone)
    for name, value in (("rounds", rounds), ("harness_rounds", harness_rounds), ("harness_epochs", harness_epochs)):
        if value is not None and value < 1:
            raise ConfigError(f"{name}={value!r}: expected an integer >= 1.")
    images = bench_images(data_dir, limit) if set(measurements) - {"harness"} else None
    figures: list[Figure] = []

    def emit(new: list[Figure]) -> None:
        figures.extend(new)
        if on_figures:
            on_figures(new)

    if "pipeline" in measurements:
        emit(measure_pipelines(images, presets, image_size, batch_size, rounds))
    elif "decode" in measurements:
        emit([measure_decode_limit(images, image_size, batch_size, rounds)])
    if "oldway" in measurements:
        emit(measure_oldway(images, oldway_preset, image_size, batch_size, rounds))
    if "transforms" in measurements:
        emit(measure_transforms(images, transforms_preset, image_size, rounds))
    if "feed" in measurements:
        emit(measure_feed(images, feed_backbone, feed_preset, image_size, batch_size, rounds))
    if "harness" in measurements:
        emit(measure_harness(data_dir, notebook, epochs=harness_epochs, rounds=harness_rounds))
    return figures


def format_table(figures: Sequence[Figure]) -> str:
    """A plain-text table: figure, value, unit, target and whether it is met, and a short note."""
    rows = [("figure", "value", "unit", "target", "note")]
    for f in figures:
        target = "" if f.target is None else (f"<= {f.target:g}" if f.figure == "harness_overhead_s"
                                              else f">= {f.target:g}") + ("  met" if f.met else "  MISSED")
        note = ""
        if f.figure.startswith("transform_"):
            note = f"{f.context['ms_per_image']:.3f} ms/image, {f.context['share_of_preset']:.0%} of the preset" + (
                "  HEAVY" if f.context["heavy"] else "")
        elif f.figure == "feed_ratio":
            note = f"pipeline {f.context['pipeline_ips']} vs memory {f.context['memory_ips']} images/s"
        elif f.figure == "oldway_speedup":
            note = f"carlib {f.context['carlib_ips']} images/s; first epoch {f.context['first_epoch_speedup']}x"
        elif f.figure == "harness_overhead_s":
            note = (f"around the run: papermill {f.context['papermill_around_run_s']} s, direct "
                    f"{f.context['direct_around_run_s']} s; kernel start {f.context['kernel_start_s']} s; walls "
                    f"{f.context['papermill_s']} vs {f.context['direct_s']} s")
        value = f"{f.value:.3f}" if abs(f.value) < 10 else f"{f.value:.0f}"
        rows.append((f.figure, value, f.unit, target, note))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)).rstrip()
             for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
