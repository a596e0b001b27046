"""The sweep runner: a study grid × seeds, each trial one papermill execution of a study notebook.

A sweep file (YAML)::

    notebook: notebooks/lr_study.ipynb   # relative to the sweep file's repository, or absolute
    study: lr_study
    base: {epochs: 8, image_size: 64}    # fixed parameters of every trial
    grid: {lr: [1e-3, 3e-3]}             # scientific parameters: every combination runs
    seeds: 2                             # repeats per combination: seed, seed+1, ...

Arms that differ in several parameters at once (a pretrained net against a from-scratch recipe)
are listed under ``arms:``, each a mapping of overrides on ``base``; every arm runs with every
combination of ``grid`` (which may then be empty)::

    arms:
      - {backbone: efficientnet_lite0, image_size: 128, finetune: two_stage}
      - {backbone: cnn_small, image_size: 64, epochs: 48}

Each trial gets a stable id from its parameters, so a rerun skips trials whose record is
already in the store (``status == "ok"``) and runs only the missing or failed ones; a trial
killed mid-training resumes from its last finished epoch (:mod:`carlib.train.resume`). A failing
trial is recorded as failed, with the error, and the others go on; a trial whose process or
kernel is killed from outside is retried (``retries``), then recorded as failed naming the death.
Sweeps sharing a store claim each trial while they run it (``claims/<trial_id>.lock``), so two
sweeps never run one trial at once. Executed notebooks and their logs are kept in
``<results_dir>/notebooks/<trial_id>.ipynb|.log``.

Two engines run the trials: ``local`` (:mod:`carlib.studies.local_engine`: parallel processes of
this machine, one GPU slot each) and ``ray`` (:mod:`carlib.studies.ray_engine`: one Ray task per
trial, on this machine or a cluster, the driver the store's only writer). Shards (``i/n``, or
``auto`` from a Slurm job array or a Kubernetes Indexed Job) split a sweep between machines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from tqdm.auto import tqdm

from carlib.base.devices import visible_gpus
from carlib.base.project_files import default_results_dir, resolve_project_file
from carlib.base.registry import Registry
from carlib.base.yaml_files import load_yaml_mapping
from carlib.config import ExperimentConfig, check_known
from carlib.errors import ConfigError
from carlib.records.store import ResultsStore
from carlib.studies.local_engine import finished_trial_ids, run_local
from carlib.studies.parameters import STUDY_PARAMETERS
from carlib.studies.ray_engine import import_ray, run_ray
from carlib.studies.specs import STUDIES
from carlib.studies.study_log import write_plan
from carlib.studies.trials import KERNEL_START_TIMEOUT_S, SweepReport, Trial, gpu_slots

__all__ = ["SweepSpec", "Trial", "SweepReport", "ENGINES", "varying_parameters", "SweepEngine", "EngineOptions", "KERNEL_START_TIMEOUT_S",
           "load_sweep", "sweep_key", "expand_trials", "run_sweep", "run_batch", "check_engine", "parse_shard", "check_kernel"]

_SWEEP_KEYS = ("notebook", "study", "base", "arms", "grid", "seeds", "description")


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file."""

    notebook: Path
    study: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    seeds: int = 1
    description: str = ""
    arms: tuple[dict[str, Any], ...] = ({},)


def _find_notebook(value: str, sweep_file: Path) -> Path:
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return candidate
    # Relative paths are tried from the current directory, then upwards from the sweep file
    # (params/<study>/sweep.yaml names notebooks/<study>.ipynb of the same repository).
    for base in (Path.cwd(), *sweep_file.resolve().parents):
        if (base / candidate).is_file():
            return (base / candidate).resolve()
    return resolve_project_file(candidate)  # notebooks/<study>.ipynb of carlib itself (a wheel carries them)


def load_sweep(path: str | os.PathLike, base_overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Read and validate a sweep file: every trial's parameters are checked before anything runs.

    A missing ``params/…`` path is looked up among carlib's own parameter files (:mod:`carlib.base.project_files`).
    ``base_overrides`` replace values of the file's ``base`` (``carlib sweep --data-dir``).
    """
    path = resolve_project_file(path)
    raw = load_yaml_mapping(path, "sweep file")
    unknown = [k for k in raw if k not in _SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"sweep file {str(path)!r}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(_SWEEP_KEYS)}.")
    for key in ("notebook", "study"):
        if not raw.get(key):
            raise ConfigError(f"sweep file {str(path)!r} needs {key!r}.")
    base, grid = raw.get("base") or {}, raw.get("grid") or {}
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise ConfigError(f"sweep file {str(path)!r}: 'base' and 'grid' must be mappings of parameter names.")
    base = {**base, **(base_overrides or {})}
    grid = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()}
    for key, values in grid.items():
        if not values:
            raise ConfigError(f"sweep file {str(path)!r}: grid parameter {key!r} has no values.")
    arms = raw.get("arms")
    if arms is None:
        arms = [{}]
    if not isinstance(arms, list) or not arms or not all(isinstance(arm, dict) for arm in arms):
        raise ConfigError(f"sweep file {str(path)!r}: 'arms' must be a non-empty list of mappings of parameter names "
                          "(each arm's overrides on base).")
    overlap = sorted({key for arm in arms for key in arm} & set(grid))
    if overlap:
        raise ConfigError(f"sweep file {str(path)!r}: {', '.join(overlap)} set both in arms and in grid; set each "
                          "parameter in one of them.")
    try:
        seeds = int(raw.get("seeds", 1))
    except (TypeError, ValueError):
        raise ConfigError(f"sweep file {str(path)!r}: seeds={raw.get('seeds')!r} must be an integer >= 1.") from None
    if seeds < 1:
        raise ConfigError(f"sweep file {str(path)!r}: seeds={seeds} must be an integer >= 1.")
    if str(raw["study"]) not in STUDIES:  # the notebook's summary and `carlib results --summary` need its spec
        raise ConfigError(f"sweep file {str(path)!r}: " + STUDIES.unknown_message(
            raw["study"], alternatives="a variant of a study (other arms, other data) keeps the study's name and gets "
                                       "its own --results-dir"))
    notebook = _find_notebook(str(raw["notebook"]), path)
    if not notebook.is_file():
        raise ConfigError(f"sweep file {str(path)!r}: notebook {str(raw['notebook'])!r} does not exist.")
    spec = SweepSpec(notebook, str(raw["study"]), base, grid, seeds, str(raw.get("description", "")),
                     tuple(dict(arm) for arm in arms))
    for trial in expand_trials(spec):  # fail on any bad value now, not hours into the sweep
        params = {k: v for k, v in trial.params.items() if k not in ("seeds", "results_dir")}
        ExperimentConfig.from_dict(params)
    return spec


def sweep_key(spec: SweepSpec) -> str:
    """A short hash of what makes a sweep's study: its arms, grid and fixed parameters (not the seeds)."""
    shape = {"base": spec.base, "grid": spec.grid, **({"arms": list(spec.arms)} if spec.arms != ({},) else {})}
    canonical = json.dumps(shape, sort_keys=True, default=str)
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]


def trial_id_for(study: str, params: dict[str, Any]) -> str:
    """A stable id for a trial: the study and a hash of its parameters (results_dir excluded)."""
    canonical = json.dumps({k: v for k, v in params.items() if k not in ("results_dir", "trial_id")},
                           sort_keys=True, default=str)
    return f"{study}-{hashlib.sha1(canonical.encode()).hexdigest()[:12]}"


def varying_parameters(spec: SweepSpec) -> list[str]:
    """The parameters that tell the sweep's configurations apart: grid keys with several values, then the keys whose
    value differs between arms (an arm that leaves one out has the base's value)."""
    varying = [key for key, values in spec.grid.items() if len(values) > 1]
    for key in dict.fromkeys(key for arm in spec.arms for key in arm):
        if key not in varying and len({repr(arm.get(key, spec.base.get(key))) for arm in spec.arms}) > 1:
            varying.append(key)
    return varying


def expand_trials(spec: SweepSpec) -> list[Trial]:
    """Every arm × every combination of the grid × seeds, in a stable order."""
    check_known({**spec.base, **spec.grid, **{k: v for arm in spec.arms for k, v in arm.items()}}, STUDY_PARAMETERS)
    base_seed = int(spec.base.get("seed", 0))
    keys = list(spec.grid)
    trials = []
    for arm, values in itertools.product(spec.arms, itertools.product(*(spec.grid[k] for k in keys))):
        for offset in range(spec.seeds):
            params = {**spec.base, **arm, **dict(zip(keys, values)), "seed": base_seed + offset, "seeds": 1,
                      "study": spec.study}
            trial_id = trial_id_for(spec.study, params)
            trials.append(Trial(trial_id, {**params, "trial_id": trial_id}))
    return trials


def parse_shard(text: str | None, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``"i/n"`` (1-based: ``1/2`` and ``2/2``) → (index, count); ``"auto"`` reads the scheduler's variables.

    ``auto``: a Slurm job array (``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT``; the ids may
    start at ``SLURM_ARRAY_TASK_MIN`` and step by ``SLURM_ARRAY_TASK_STEP``, as in ``--array=1-8`` or
    ``--array=0-14:2``) or a Kubernetes Indexed Job (``JOB_COMPLETION_INDEX``, 0-based, and
    ``JOB_COMPLETIONS``, which the Job's manifest sets to its ``completions``: Kubernetes does not
    pass the count itself). ``environ`` stands in for ``os.environ``.
    """
    if not text:
        return (1, 1)
    if text == "auto":
        return _scheduler_shard(os.environ if environ is None else environ)
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"shard={text!r}: expected i/n with 1 <= i <= n, e.g. 1/2, or auto.") from None
    if not 1 <= index <= count:
        raise ConfigError(f"shard={text!r}: expected i/n with 1 <= i <= n, e.g. 1/2, or auto.")
    return (index, count)


def _integer(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value in (None, ""):
        if default is not None:
            return default
        raise ConfigError(f"shard=auto: {name} is not set.")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"shard=auto: {name}={value!r} is not an integer.") from None


def _scheduler_shard(environ: Mapping[str, str]) -> tuple[int, int]:
    if environ.get("SLURM_ARRAY_TASK_ID"):
        task, count = _integer(environ, "SLURM_ARRAY_TASK_ID"), _integer(environ, "SLURM_ARRAY_TASK_COUNT")
        first, step = _integer(environ, "SLURM_ARRAY_TASK_MIN", 0), _integer(environ, "SLURM_ARRAY_TASK_STEP", 1)
        offset, rest = divmod(task - first, max(step, 1))
        if rest or not 0 <= offset < count:
            raise ConfigError(f"shard=auto: Slurm array task {task} is not one of {count} evenly spaced ids from "
                              f"{first} (step {step}); submit the array as a range, e.g. sbatch --array=0-{count - 1}.")
        return (offset + 1, count)
    if environ.get("JOB_COMPLETION_INDEX"):
        index = _integer(environ, "JOB_COMPLETION_INDEX")
        if not environ.get("JOB_COMPLETIONS"):
            raise ConfigError("shard=auto: a Kubernetes Indexed Job (JOB_COMPLETION_INDEX is set) must also set "
                              "JOB_COMPLETIONS to its completions count in the pod's env (docs/sweeps.md shows how).")
        count = _integer(environ, "JOB_COMPLETIONS")
        if not 0 <= index < count:
            raise ConfigError(f"shard=auto: JOB_COMPLETION_INDEX={index} is outside 0..{count - 1} "
                              f"(JOB_COMPLETIONS={count}).")
        return (index + 1, count)
    raise ConfigError("shard=auto: neither a Slurm job array (SLURM_ARRAY_TASK_ID) nor a Kubernetes Indexed Job "
                      "(JOB_COMPLETION_INDEX) is in the environment; pass the shard as i/n, e.g. --shard 1/2.")


def check_kernel(kernel: str) -> str:
    """The interpreter the Jupyter kernel ``kernel`` runs; fails before any trial if papermill could not start it.

    ``python3`` resolves as papermill resolves it: the kernel this environment installed (``make install``
    registers the project's own) or, without one, ipykernel's built-in spec, which runs this very interpreter.
    A kernel that runs another interpreter gets a warning: its trials import carlib from that environment.
    """
    manager = KernelSpecManager()
    try:
        spec = manager.get_kernel_spec(kernel)
    except NoSuchKernel:
        known = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise ConfigError(f"Jupyter kernel {kernel!r} is not installed (installed kernels: {known}). Pass --kernel with "
                          f"one of them, or register this environment as {kernel!r}: {sys.executable} -m ipykernel "
                          f"install --sys-prefix --name {kernel}") from None
    program = spec.argv[0] if spec.argv else ""
    # jupyter_client starts a kernel whose argv[0] is plain "python", "python3" or "python3.X" with sys.executable.
    if program in {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}:
        return sys.executable
    # Same environment = same bin folder (a venv's python is a symlink to the base interpreter: never resolve the file).
    located = shutil.which(program) or program
    if os.path.realpath(os.path.dirname(located)) != os.path.realpath(os.path.dirname(sys.executable)):
        warnings.warn(f"Jupyter kernel {kernel!r} runs {program}, not this interpreter ({sys.executable}): the trials "
                      f"import carlib and its packages from that environment. To use this one: {sys.executable} -m "
                      f"ipykernel install --sys-prefix --name {kernel}", stacklevel=2)
    return program


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """How a sweep's trials run: the options of ``carlib sweep`` that engines read (see :func:`run_sweep`)."""

    kernel: str = "python3"
    workers: int | None = None
    gpus: Sequence[str] | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float = 1
    retries: int = 1
    address: str | None = None
    machine_gpus: Sequence[str] | None = None


# An engine's ``prepare`` checks the options before any trial starts and returns the function that runs a batch
# of trials: run(todo, notebook, store, report, on_done).
RunTrials = Callable[[Sequence[Trial], Path, ResultsStore, SweepReport, Callable[[str, str], None]], None]


@dataclasses.dataclass(frozen=True)
class SweepEngine:
    """A way to run a sweep's trials: ``check(options)`` rejects options it cannot use (before anything, even a dry
    run); ``prepare(options)`` makes ready (GPU slots, Ray's presence) and returns the runner."""

    description: str
    check: Callable[[EngineOptions], None]
    prepare: Callable[[EngineOptions], RunTrials]


def _check_local(options: EngineOptions) -> None:
    if options.address:
        raise ConfigError("--address is the Ray cluster to join: it needs --engine ray.")


def _check_ray(options: EngineOptions) -> None:
    if options.gpus:
        raise ConfigError("--gpus picks GPUs for the local engine; with --engine ray, Ray assigns them "
                          "(--gpus-per-trial says how many each trial gets).")


def _prepare_local(options: EngineOptions) -> RunTrials:
    slots = gpu_slots(options.workers or 1, gpus=options.gpus, gpus_per_trial=options.gpus_per_trial,
                      machine_gpus=visible_gpus() if options.machine_gpus is None else options.machine_gpus)

    def run(todo, notebook, store, report, on_done):
        run_local(todo, notebook, store, report, kernel=options.kernel, slots=slots, retries=options.retries,
                  on_done=on_done)
    return run


def _prepare_ray(options: EngineOptions) -> RunTrials:
    import_ray()  # without Ray installed: one line saying how to install it, before any trial

    def run(todo, notebook, store, report, on_done):
        if todo:
            run_ray(todo, notebook, store, report, kernel=options.kernel, address=options.address,
                    workers=options.workers, gpus_per_trial=options.gpus_per_trial,
                    cpus_per_trial=options.cpus_per_trial, retries=options.retries, on_done=on_done)
    return run


ENGINES: Registry[SweepEngine] = Registry("sweep engine", "add one with carlib.studies.sweep.ENGINES.register(name, "
                                                          "SweepEngine(description, check, prepare))")
ENGINES.register("local", SweepEngine("processes of this machine, --workers at a time", _check_local,
                                      _prepare_local))
ENGINES.register("ray", SweepEngine("one Ray task per trial, on a private instance or a cluster", _check_ray,
                                    _prepare_ray))


def check_engine(engine: str, options: EngineOptions) -> SweepEngine:
    """The engine named ``engine`` once ``options`` passed its checks (an unknown name or a bad option fails here)."""
    chosen = ENGINES.get(engine)
    if options.workers is not None and options.workers < 1:
        raise ConfigError(f"workers={options.workers!r} is out of range: expected an integer >= 1.")
    if options.retries < 0:
        raise ConfigError(f"retries={options.retries!r} is out of range: expected an integer >= 0.")
    if options.cpus_per_trial <= 0:
        raise ConfigError(f"cpus_per_trial={options.cpus_per_trial!r} is out of range: expected a positive number.")
    chosen.check(options)
    return chosen


def run_sweep(sweep: str | os.PathLike | SweepSpec, *, results_dir: str | os.PathLike | None = None,
              workers: int | None = None, gpus: Sequence[str] | None = None,
              shard: str | tuple[int, int] | None = None, kernel: str = "python3", progress: bool = True,
              engine: str = "local", address: str | None = None, gpus_per_trial: float | None = None,
              cpus_per_trial: float = 1, retries: int = 1, dry_run: bool = False,
              machine_gpus: Sequence[str] | None = None) -> SweepReport:
    """Run every unfinished trial of a sweep (this shard's share); returns what ran, failed and was skipped.

    All results are in the store. ``engine="local"`` runs ``workers`` (default 1) papermill processes
    on this machine; ``gpus`` (e.g. ``["0", "1"]``, default: the machine's) are shared out
    ``gpus_per_trial`` per trial (see :func:`carlib.studies.trials.gpu_slots`; ``machine_gpus`` stands in
    for the GPUs found, for tests). ``engine="ray"`` runs one Ray task per trial (see
    :mod:`carlib.studies.ray_engine`) on a private instance or the cluster at ``address``, at most
    ``workers`` at once, each with ``gpus_per_trial`` GPUs and ``cpus_per_trial`` CPUs. A trial whose
    process dies is retried up to ``retries`` times on either engine. ``shard``: ``"i/n"``, ``(i, n)`` or
    ``"auto"`` (:func:`parse_shard`). ``dry_run``: run nothing; the report lists this shard's trials and
    which are finished. Engines are registered in :data:`ENGINES`.
    """
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    options = EngineOptions(kernel=kernel, workers=workers, gpus=gpus, gpus_per_trial=gpus_per_trial,
                            cpus_per_trial=cpus_per_trial, retries=retries, address=address, machine_gpus=machine_gpus)
    chosen = check_engine(engine, options)  # before the shard and the store: a typo fails first
    index, count = shard if isinstance(shard, tuple) else parse_shard(shard)
    store = ResultsStore(results_dir or default_results_dir())
    trials = sorted(expand_trials(spec), key=lambda t: t.trial_id)[index - 1::count]
    done = finished_trial_ids(store, spec.study)
    report = SweepReport(skipped=[t.trial_id for t in trials if t.trial_id in done], trials=trials)
    todo = [t for t in trials if t.trial_id not in done]
    if dry_run:
        return report
    run_trials = chosen.prepare(options)  # GPU safety and Ray's presence before anything starts
    write_plan(store.root, spec.study, sweep_key(spec), spec.seeds)  # a verdict on more seeds is a re-read
    run_batch(run_trials, todo, spec, store, report, kernel=kernel, progress=progress, total=len(trials))
    return report


def run_batch(run_trials: RunTrials, todo: Sequence[Trial], spec: SweepSpec, store: ResultsStore,
              report: SweepReport, *, kernel: str, progress: bool, total: int, label: str = "") -> None:
    """Run ``todo`` with an engine's runner behind a progress bar (the kernel is checked first when there is work)."""
    if todo:
        check_kernel(kernel)  # a missing kernel fails here, not once per trial in the logs
    bar = tqdm(total=total, initial=total - len(todo), desc=f"sweep {spec.study}{label}", unit="trial",
               disable=not progress)

    def on_done(trial_id: str, outcome: str) -> None:
        bar.update(1)
        bar.set_postfix(failed=len(report.failed))

    try:
        run_trials(todo, spec.notebook, store, report, on_done)
    finally:
        bar.close()
