"""``carlib sweep --until-decisive`` (issue 22): rounds of seeds, a stated reason to stop, early exits, resume after a
kill without deciding twice; the engines come from one registry."""

from __future__ import annotations

import json

import pytest
import yaml

from carlib.cli import main
from carlib.errors import ConfigError, UnknownNameError
from carlib.studies import rounds
from carlib.studies.rounds import run_until_decisive
from carlib.studies.run import study_verdict
from carlib.studies.study_log import planned_seeds, read_log
from carlib.studies.sweep import ENGINES, run_sweep


def test_a_killed_study_resumes_stops_decisive_says_why_and_never_decides_twice(scored_sweep, tmp_path, monkeypatch,
                                                                               capsys):
    results = tmp_path / "results"
    written = []
    real_write = rounds.write_log

    def die_before_round_two_is_logged(path, log):
        if len(log["rounds"]) == 2:  # the kill comes after round 2's trials, before its decision is written
            raise KeyboardInterrupt
        written.append(json.loads(json.dumps(log)))
        return real_write(path, log)

    monkeypatch.setattr(rounds, "write_log", die_before_round_two_is_logged)
    with pytest.raises(KeyboardInterrupt):
        run_until_decisive(scored_sweep, max_seeds=6, results_dir=results, progress=False, workers=2)
    assert [r["seeds"] for r in written[-1]["rounds"]] == [1]
    monkeypatch.setattr(rounds, "write_log", real_write)

    assert main(["sweep", str(scored_sweep), "--until-decisive", "--max-seeds", "6", "--results-dir", str(results),
                 "--workers", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 already finished (skipped)" in out  # round 2's trials ran before the kill: not run again
    (path,) = (results / "sequential").glob("lr_study-*.json")
    log = read_log(path)
    stopped = log["stopped"]
    assert [r["seeds"] for r in log["rounds"]] == list(range(1, stopped["seeds"] + 1))  # each round decided once
    assert stopped["reason"] == "decisive" and 2 <= stopped["seeds"] < 6
    assert stopped["runs"] == 2 * stopped["seeds"] and stopped["runs_saved"] == 2 * 6 - stopped["runs"]
    assert f"Sequential study stopped after {stopped['seeds']} seed(s) (decisive" in out
    assert f"saved {stopped['runs_saved']} of the 12" in out and "verdict: decisive: lr=0.003 beats lr=1e-05" in out

    again = run_until_decisive(scored_sweep, max_seeds=6, results_dir=results, progress=False)
    assert again.sweep.ok == [] and read_log(path) == log  # nothing ran, nothing was decided twice
    with pytest.raises(ConfigError, match="started with --max-seeds 6 .* a study keeps its design"):
        run_until_decisive(scored_sweep, max_seeds=8, results_dir=results, progress=False)


def test_until_decisive_needs_two_configurations_and_sane_limits(write_sweep, tmp_path):
    single = write_sweep(grid={"lr": [1e-3]})
    with pytest.raises(ConfigError, match="compares configurations; its grid and arms make one"):
        run_until_decisive(single, results_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match="max_seeds=1: expected an integer >= 2"):
        run_until_decisive(write_sweep(), max_seeds=1, results_dir=tmp_path / "r")


def test_sweep_engines_come_from_one_registry(write_sweep, tmp_path, capsys):
    assert ENGINES.names() == ("local", "ray")
    with pytest.raises(UnknownNameError, match="unknown sweep engine 'rey'. Did you mean 'ray'"):
        run_sweep(write_sweep(), engine="rey", dry_run=True, results_dir=tmp_path / "r")
    assert main(["sweep", str(write_sweep()), "--max-seeds", "3"]) == 2
    assert "--max-seeds and --min-effect belong to --until-decisive" in capsys.readouterr().err


def test_a_fixed_n_sweep_records_its_plan_and_more_seeds_read_again_are_marked(scored_sweep, tmp_path):
    results = tmp_path / "results"
    spec = yaml.safe_load(scored_sweep.read_text())
    scored_sweep.write_text(yaml.safe_dump({**spec, "seeds": 1}))
    run_sweep(scored_sweep, results_dir=results, progress=False, workers=2)  # the file plans 1 seed
    assert planned_seeds(results, "lr_study") == 1
    assert study_verdict("lr_study", results).basis == "fixed-n"
    scored_sweep.write_text(yaml.safe_dump({**spec, "seeds": 2}))  # the user adds a seed and reads again
    run_sweep(scored_sweep, results_dir=results, progress=False, workers=2)
    assert planned_seeds(results, "lr_study") == 1  # the first plan stands
    verdict = study_verdict("lr_study", results)
    assert verdict.basis == "anytime-valid"
    assert verdict.message.startswith("Read again after more seeds than the 1 planned (2 now)")


def test_two_drivers_never_decide_one_study(write_sweep, tmp_path):
    from carlib.base.locks import try_lock
    from carlib.studies.study_log import log_path
    from carlib.studies.sweep import load_sweep, sweep_key

    sweep = write_sweep()
    path = log_path(tmp_path / "r", "lr_study", sweep_key(load_sweep(sweep)))
    with try_lock(path.with_suffix(".lock")) as held:
        assert held
        with pytest.raises(ConfigError, match="another carlib sweep --until-decisive is running this study"):
            run_until_decisive(sweep, results_dir=tmp_path / "r", progress=False)


def test_the_first_two_seeds_run_as_one_batch_and_each_later_round_as_its_own(scored_sweep, tmp_path, monkeypatch):
    """No verdict reads one seed: seeds 1 and 2 fill the workers together; the decisions stay one per round."""
    batches = []
    real_batch = rounds.run_batch

    def record_batch(run_trials, todo, *args, **kwargs):
        batches.append(sorted((t.params["lr"], t.params["seed"]) for t in todo))
        return real_batch(run_trials, todo, *args, **kwargs)

    monkeypatch.setattr(rounds, "run_batch", record_batch)
    report = run_until_decisive(scored_sweep, max_seeds=6, results_dir=tmp_path / "r", progress=False, workers=2)
    assert batches[0] == [(1e-5, 0), (1e-5, 1), (3e-3, 0), (3e-3, 1)]
    assert all(len(batch) == 2 and {seed for _, seed in batch} == {i + 2} for i, batch in enumerate(batches[1:]))
    assert [r["seeds"] for r in report.log["rounds"]] == list(range(1, report.log["stopped"]["seeds"] + 1))
    assert report.sweep.skipped == [] and len(report.sweep.ok) == 2 * report.log["stopped"]["seeds"]
