"""``carlib sweep FILE --until-decisive``: seeds in rounds until the verdict is clear, on an anytime-valid interval.

A round gives every configuration still in the study its next seed (one batch for the engine, so
``--workers`` fill up within it; on Ray a round is a batch of tasks). After each round the verdict is
read on the anytime-valid intervals (:mod:`carlib.studies.sequential`), and the study stops for one of
three reasons:

- **decisive**: the best is decisively better than each of the others;
- **equivalent**: every difference from the best lies inside ±``min_effect`` ("no difference
  larger than E", never "equal");
- **cap**: ``max_seeds`` seeds.

A configuration the best decisively beats (Holm across the comparisons with the leader) leaves the
study early. The log (:mod:`carlib.studies.study_log`) records each round's decision as it is made,
so a killed study resumes without deciding twice on the same seeds, and says why it stopped, after
how many seeds, and how many runs the early stops saved.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import pandas as pd

from carlib.base.locks import try_lock
from carlib.base.project_files import default_results_dir
from carlib.errors import ConfigError
from carlib.records.store import ResultsStore, load_results
from carlib.studies.sequential import HORIZON, SequentialDesign
from carlib.studies.specs import STUDIES
from carlib.studies.stats import ALPHA, MIN_EFFECT, Verdict, compare_top_two, config_label
from carlib.studies.study_log import log_path, read_log, stop_sentence, write_log
from carlib.studies.sweep import EngineOptions, SweepEngine, SweepReport, SweepSpec, check_engine, expand_trials, \
    load_sweep, run_batch, sweep_key, varying_parameters
from carlib.studies.trials import Trial

__all__ = ["SequentialReport", "run_until_decisive"]


@dataclasses.dataclass
class SequentialReport:
    """What ``--until-decisive`` did: the trials (as a sweep reports them), the log and the last verdict."""

    sweep: SweepReport
    log: dict[str, Any]
    verdict: Verdict | None

    @property
    def stopped(self) -> dict[str, Any] | None:
        """``{"reason", "seeds", "runs", "runs_saved"}`` once the study stopped, else ``None``."""
        return self.log.get("stopped")

    def sentence(self) -> str:
        """Why it stopped, after how many seeds, and how many runs the early stops saved."""
        return stop_sentence(self.log)


def _metric(study: str) -> str:
    return STUDIES.get(study).metric if study in STUDIES else "test_accuracy_best"


def _start_log(path, design: SequentialDesign, min_effect: float, spec: SweepSpec) -> dict[str, Any]:
    wanted = {"alpha": design.alpha, "max_seeds": design.horizon, "min_effect": min_effect}
    log = read_log(path)
    if log is None:
        return {"study": spec.study, "design": wanted, "grid": spec.grid, "rounds": [], "stopped": None}
    if log["design"] != wanted:
        started = log["design"]
        raise ConfigError(f"this sequential study started with --max-seeds {started['max_seeds']} --min-effect "
                          f"{started['min_effect']:g} (alpha {started['alpha']:g}); a study keeps its design (its error "
                          "was spent for that one): rerun with those, or give the new design its own --results-dir.")
    return log


def _round_trials(spec: SweepSpec, seed_index: int, active: Sequence[str], by: Sequence[str]) -> list[Trial]:
    """The trials of one round: each configuration still in gets seed ``base seed + seed_index``."""
    seed = int(spec.base.get("seed", 0)) + seed_index
    widened = dataclasses.replace(spec, seeds=seed_index + 1)
    return [t for t in expand_trials(widened)
            if t.params["seed"] == seed and config_label(by, tuple(t.params.get(k) for k in by)) in active]


def _verdict(store: ResultsStore, trial_ids: set[str], spec: SweepSpec, by: Sequence[str], design: SequentialDesign,
             min_effect: float) -> Verdict:
    """The verdict on this study's own trials so far (other sweeps of the study in the store are left out)."""
    frame = load_results(store.root, study=spec.study)
    if "trial_id" in frame:
        frame = frame[frame["trial_id"].isin(trial_ids)]
    else:
        frame = pd.DataFrame(columns=frame.columns)
    return compare_top_two(frame, list(by), _metric(spec.study), design.alpha, min_effect, design=design)


def _stop_reason(verdict: Verdict, seeds: int, max_seeds: int) -> str | None:
    if verdict.decisive:
        return "decisive"
    if verdict.equivalent:
        return "equivalent"
    return "cap" if seeds >= max_seeds else None


def run_until_decisive(sweep: str | os.PathLike | SweepSpec, *, max_seeds: int = HORIZON,
                       min_effect: float = MIN_EFFECT, alpha: float = ALPHA,
                       results_dir: str | os.PathLike | None = None, engine: str = "local", progress: bool = True,
                       kernel: str = "python3", workers: int | None = None, gpus: Sequence[str] | None = None,
                       address: str | None = None, gpus_per_trial: float | None = None, cpus_per_trial: float = 1,
                       retries: int = 1, machine_gpus: Sequence[str] | None = None) -> SequentialReport:
    """Run a sweep's configurations seed by seed until the anytime-valid verdict is clear, or ``max_seeds``.

    The sweep file's ``seeds`` is ignored (rounds add seeds); the engine options are
    :func:`carlib.studies.sweep.run_sweep`'s. Rerun after a kill: finished trials are skipped and the
    rounds already decided are not decided again. Returns the report; the log is in
    ``<results_dir>/sequential/``.
    """
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    if not isinstance(max_seeds, int) or max_seeds < 2:
        raise ConfigError(f"max_seeds={max_seeds!r}: expected an integer >= 2 (seeds per configuration).")
    if not min_effect > 0:
        raise ConfigError(f"min_effect={min_effect!r}: expected a positive difference, e.g. 0.01 (one point of "
                          "accuracy).")
    if not varying_parameters(spec):
        raise ConfigError(f"sweep {spec.study}: --until-decisive compares configurations; its grid and arms make one.")
    options = EngineOptions(kernel=kernel, workers=workers, gpus=gpus, gpus_per_trial=gpus_per_trial,
                            cpus_per_trial=cpus_per_trial, retries=retries, address=address, machine_gpus=machine_gpus)
    chosen = check_engine(engine, options)
    design = SequentialDesign(alpha=alpha, horizon=max_seeds)
    store = ResultsStore(results_dir or default_results_dir())
    path = log_path(store.root, spec.study, sweep_key(spec))
    with try_lock(path.with_suffix(".lock")) as held:
        if not held:  # two drivers deciding one study would each decide on seeds the other has not finished
            raise ConfigError(f"another carlib sweep --until-decisive is running this study ({path.name} is locked); "
                              "wait for it to finish, or stop it, then rerun to resume.")
        return _run_rounds(spec, store, path, design, min_effect, chosen, options, kernel=kernel, progress=progress)


def _run_rounds(spec: SweepSpec, store: ResultsStore, path, design: SequentialDesign, min_effect: float,
                chosen: SweepEngine,
                options: EngineOptions, *, kernel: str, progress: bool) -> SequentialReport:
    """The rounds themselves, under the study's lock: run a round, decide it once, log it, until a reason to stop."""
    max_seeds = design.horizon
    log = _start_log(path, design, min_effect, spec)
    by = varying_parameters(spec)
    everyone = sorted({config_label(by, tuple(t.params.get(k) for k in by)) for t in expand_trials(spec)})
    beaten = {label for entry in log["rounds"] for label in entry["beaten"]}
    report, run_trials, verdict = SweepReport(), None, None
    trial_ids = {t.trial_id for entry in log["rounds"] for t in
                 _round_trials(spec, entry["seeds"] - 1, entry["active"], by)}
    while not log["stopped"]:
        seed_index = len(log["rounds"])
        active = [label for label in everyone if label not in beaten]
        trials = _round_trials(spec, seed_index, active, by)
        # No verdict reads one seed, so the first two seeds run as one batch: twice the trials to fill --workers
        # (or a Ray cluster) with, and the same decisions (round 1 is still logged, undecidable, on its own).
        ahead = _round_trials(spec, 1, active, by) if seed_index == 0 else []
        finished = {r["config"].get("trial_id") for r in store.records(spec.study) if r.get("status") == "ok"}
        ran_here = set(report.ok) | set(report.failed)
        todo = [t for t in trials + ahead if t.trial_id not in finished and t.trial_id not in ran_here]  # no reruns
        report.skipped += [t.trial_id for t in trials if t.trial_id in finished and t.trial_id not in ran_here]
        report.trials += trials
        if todo and run_trials is None:
            run_trials = chosen.prepare(options)
        if todo:
            seeds = f"seeds 1-2/{max_seeds}" if ahead else f"seed {seed_index + 1}/{max_seeds}"
            run_batch(run_trials, todo, spec, store, report, kernel=kernel, progress=progress,
                      total=len(trials) + len(ahead), label=f" {seeds}")
        busy = [t.trial_id for t in trials if t.trial_id in report.busy]
        if busy:  # a plain sweep runs some of this round's trials: never decide on a round with runs missing
            raise ConfigError(f"round {seed_index + 1}'s trial(s) {', '.join(busy)} are being run by another sweep on "
                              "this store; rerun when it has finished: the round is decided then, once.")
        trial_ids |= {t.trial_id for t in trials}
        verdict = _verdict(store, trial_ids, spec, by, design, min_effect)
        newly_beaten = [label for label in verdict.beaten if label not in beaten]
        log["rounds"].append({"seeds": seed_index + 1, "active": active, "beaten": newly_beaten,
                              "decisive": bool(verdict.decisive), "equivalent": verdict.equivalent,
                              "verdict": verdict.message})
        beaten |= set(newly_beaten)
        reason = _stop_reason(verdict, seed_index + 1, max_seeds)
        if reason:
            runs = sum(len(entry["active"]) for entry in log["rounds"])
            log["stopped"] = {"reason": reason, "seeds": seed_index + 1, "runs": runs,
                              "runs_saved": len(everyone) * max_seeds - runs, "verdict": verdict.message}
        write_log(path, log)  # the round is decided: a resume never decides it again
    if verdict is None:  # stopped before this call: the verdict on the study's trials as they are
        verdict = _verdict(store, trial_ids, spec, by, design, min_effect)
    return SequentialReport(report, log, verdict)
