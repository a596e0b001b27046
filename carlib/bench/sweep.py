"""``carlib bench sweep``: what each sweep engine adds to a trial, and what a second worker buys.

The same tiny trials (the lr study's notebook on a small synthetic dataset: 80 images, 32 px, one
epoch, on the CPU) run as four sweeps, each into a fresh results store: the local engine with one
worker and with two, and the Ray engine one trial at a time and two at once, on a private Ray
instance started before the clock runs (its start is a figure of its own). Rounds interleave the
four, and each figure is the median over the rounds.

Figures (``{"figure", "value", "unit", ...context}``, as ``carlib bench --json`` prints them):

- ``sweep_local_s_per_trial``, ``sweep_ray_s_per_trial``: wall time per trial, one at a time.
- ``sweep_ray_overhead_s``: what Ray adds per trial over the local engine, one at a time: the
  difference of the time each spends around the runs (wall time minus the runs' own ``total_s``,
  per trial), so the training time's noise cancels; the plain wall difference is in the context.
  Target: at most 2 s.
- ``sweep_ray_start_s``: starting the private Ray instance (once per sweep, not per trial).
- ``sweep_local_speedup_2_workers``, ``sweep_ray_speedup_2_workers``: one-at-a-time wall time over
  two-at-once wall time.

These are benchmarks, not tests: the figures depend on the machine and its load.
"""

from __future__ import annotations

import datetime as _dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from carlib.base.project_files import resolve_project_file
from carlib.bench.machine import machine_description
from carlib.data.synthetic import generate_car_dataset
from carlib.errors import ConfigError, TrainingError
from carlib.records.store import ResultsStore
from carlib.studies.ray_engine import ray_session
from carlib.studies.sweep import SweepSpec, run_sweep

__all__ = ["RAY_OVERHEAD_TARGET_S", "SWEEPS", "sweep_benchmark", "format_sweep_figures"]

RAY_OVERHEAD_TARGET_S = 2.0
# (engine, trials at once) of each timed sweep
SWEEPS = (("local", 1), ("ray", 1), ("local", 2), ("ray", 2))


def _timed_sweep(spec: SweepSpec, engine: str, workers: int, store: Path) -> dict[str, float]:
    start = time.perf_counter()
    report = run_sweep(spec, results_dir=store, engine=engine, workers=workers, gpus_per_trial=0, retries=0,
                       progress=False)
    wall = time.perf_counter() - start
    records = ResultsStore(store).records()
    if report.failed or len(records) != len(report.ok) or any(r["status"] != "ok" for r in records):
        errors = [r.get("error") for r in records if r["status"] != "ok"]
        log = store / "notebooks" / f"{report.failed[0]}.log" if report.failed else None
        tail = log.read_text(errors="replace").strip().splitlines()[-20:] if log and log.is_file() else []
        raise TrainingError(f"sweep benchmark: {len(report.failed)} trial(s) failed on the {engine} engine "
                            f"({workers} at once): {errors[:1]}\n" + "\n".join(tail))
    return {"wall_s": wall, "run_s": sum(float(r["timings"]["total_s"]) for r in records), "trials": len(records)}


def sweep_benchmark(data_dir: str | None = None, *, trials: int = 4, image_size: int = 32, epochs: int = 1,
                    rounds: int = 1, say: Callable[[str], None] = lambda text: None) -> list[dict[str, Any]]:
    """Time the four sweeps ``rounds`` times on ``trials`` tiny trials; return the figures (medians over rounds).

    ``data_dir``: a dataset (default: a synthetic one of 80 training images, made in a temporary folder).
    """
    for name, value in (("trials", trials), ("rounds", rounds), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r} is out of range: expected an integer >= 1.")
    if trials < 2:
        raise ConfigError(f"trials={trials}: at least 2, so that two workers have something to share.")
    samples: dict[tuple[str, int], list[dict[str, float]]] = {sweep: [] for sweep in SWEEPS}
    with tempfile.TemporaryDirectory(prefix="carlib-bench-sweep-") as tmp:
        work = Path(tmp)
        data = data_dir or str(generate_car_dataset(work / "data", n_train=80, n_test=20, seed=1))
        base = {"data_dir": str(data), "image_size": image_size, "epochs": epochs, "val_split": 0.25,
                "augmentation": "none", "batch_size": 16}
        spec = SweepSpec(resolve_project_file("notebooks/lr_study.ipynb"), "lr_study", base,
                         {"lr": [round(1e-3 * (1 + i / 10), 8) for i in range(trials)]}, 1, "carlib bench sweep")
        started = time.perf_counter()
        with ray_session() as ray:
            ray_start = time.perf_counter() - started
            say(f"Ray started in {ray_start:.1f} s ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
            for round_ in range(rounds):
                order = SWEEPS if round_ % 2 == 0 else SWEEPS[::-1]
                for engine, workers in order:  # each sweep into a fresh store: all its trials run
                    result = _timed_sweep(spec, engine, workers, work / f"{engine}-{workers}-{round_}")
                    samples[(engine, workers)].append(result)
                    say(f"{engine} engine, {workers} at once: {result['wall_s']:.1f} s for {trials} trials")
    return _figures(samples, ray_start, trials=trials, image_size=image_size, epochs=epochs, rounds=rounds,
                    data_dir=data_dir)


def _figures(samples, ray_start: float, **context: Any) -> list[dict[str, Any]]:
    trials = context["trials"]

    def median(sweep: tuple[str, int], value: Callable[[dict[str, float]], float]) -> float:
        return statistics.median(value(s) for s in samples[sweep])

    def per_trial(sweep):
        return median(sweep, lambda s: s["wall_s"] / trials)

    def around(sweep):  # seconds per trial spent outside the runs themselves
        return median(sweep, lambda s: (s["wall_s"] - s["run_s"]) / trials)

    context = {**context, "dataset": context.pop("data_dir") or "synthetic, 80 training images",
               "machine": machine_description(), "date": _dt.date.today().isoformat()}
    overhead = around(("ray", 1)) - around(("local", 1))
    return [
        {"figure": "sweep_local_s_per_trial", "value": per_trial(("local", 1)), "unit": "s",
         "around_run_s": around(("local", 1)), **context},
        {"figure": "sweep_ray_s_per_trial", "value": per_trial(("ray", 1)), "unit": "s",
         "around_run_s": around(("ray", 1)), **context},
        {"figure": "sweep_ray_overhead_s", "value": overhead, "unit": "s", "target": RAY_OVERHEAD_TARGET_S,
         "met": overhead <= RAY_OVERHEAD_TARGET_S,
         "wall_difference_s": per_trial(("ray", 1)) - per_trial(("local", 1)), **context},
        {"figure": "sweep_ray_start_s", "value": ray_start, "unit": "s", **context},
        {"figure": "sweep_local_speedup_2_workers", "value": median(("local", 1), lambda s: s["wall_s"])
         / median(("local", 2), lambda s: s["wall_s"]), "unit": "x", **context},
        {"figure": "sweep_ray_speedup_2_workers", "value": median(("ray", 1), lambda s: s["wall_s"])
         / median(("ray", 2), lambda s: s["wall_s"]), "unit": "x", **context},
    ]


def format_sweep_figures(figures: Sequence[dict[str, Any]]) -> str:
    """The figures as a text table: figure, value, unit, target (met or MISSED), and the context below."""
    rows = [("figure", "value", "unit", "target")]
    for f in figures:
        target = "" if "target" not in f else f"<= {f['target']:g}  " + ("met" if f["met"] else "MISSED")
        rows.append((f["figure"], f"{f['value']:.2f}", f["unit"], target))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    first = figures[0]
    lines[1:1] = ["  ".join("-" * w for w in widths)]
    lines += ["", f"{first['trials']} trials per sweep ({first['image_size']} px, {first['epochs']} epoch(s), "
                  f"{first['dataset']}), median of {first['rounds']} round(s); machine: {first['machine']}; "
                  f"date: {first['date']}"]
    return "\n".join(lines)
