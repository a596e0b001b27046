"""carlib bench verdicts: the verdict code on simulated studies, its table and JSON lines."""

from __future__ import annotations

import json

import numpy as np

from carlib.bench.verdicts import FALSE_TARGET, _scores, sequential_study, simulate_cell
from carlib.cli import main
from carlib.studies.sequential import SequentialDesign
from carlib.studies.stats import decide


def test_the_command_prints_one_json_line_per_cell_with_targets(capsys):
    assert main(["bench", "verdicts", "--json", "--simulations", "200", "--k", "2", "4", "--n", "3", "--rho",
                 "0.5"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(c["k"], c["n"], c["rho"]) for c in lines] == [(2, 3, 0.5), (4, 3, 0.5)]
    first = lines[0]
    assert first["figure"] == "verdicts" and first["simulations"] == 200 and first["date"]
    assert first["false_verdict_target"] == FALSE_TARGET and first["power_target"] == 0.15
    assert lines[1]["power_target"] is None  # only k=2, n=3, rho=0.5 has a power target
    assert 0 <= first["false_verdict_rate"] <= 0.2 and 0 < first["power"] < 0.6


def test_the_table_names_every_cell(capsys):
    assert main(["bench", "verdicts", "--simulations", "50", "--k", "2", "--n", "2", "5", "--rho", "0", "0.8"]) == 0
    out = capsys.readouterr().out
    assert "false verdicts (A/A)" in out and "power (+1 sd)" in out
    assert len([line for line in out.splitlines() if line.startswith(" 2 ")]) == 4


def test_more_seeds_and_more_correlation_give_more_power():
    weak = simulate_cell(2, 2, 0.0, 400, seed=1)
    strong = simulate_cell(2, 5, 0.8, 400, seed=1)
    assert strong.power > weak.power + 0.3
    assert weak.false_rate < 0.1 and strong.false_rate < 0.1


def test_bad_arguments_are_one_line(capsys):
    assert main(["bench", "verdicts", "--simulations", "0"]) == 2
    assert capsys.readouterr().err == "carlib: error: simulations=0: expected an integer >= 1 (e.g. 2000).\n"
    assert main(["bench", "verdicts", "--rho", "1.5"]) == 2
    assert "rho in [0, 1)" in capsys.readouterr().err


def test_the_sequential_bench_keeps_the_keys_and_adds_noise_and_seeds(capsys):
    assert main(["bench", "verdicts", "--sequential", "--json", "--simulations", "150", "--k", "2", "--rho", "0",
                 "--noise", "normal", "heavy"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    cells = [line for line in lines if line["figure"] == "verdicts"]
    assert [(c["k"], c["rho"], c["noise"]) for c in cells] == [(2, 0.0, "normal"), (2, 0.0, "heavy")]
    for key in ("false_verdict_rate", "false_verdict_se", "false_verdict_upper95", "power", "mean_seeds"):
        assert key in cells[0]
    assert cells[0]["power_target"] == 0.8 and cells[1]["power_target"] is None
    assert cells[0]["false_verdict_upper95"] > cells[0]["false_verdict_rate"]
    spent = {line["effect_sd"]: line for line in lines if line["figure"] == "seeds_spent"}
    assert sorted(spent) == [0.0, 0.5, 1.0, 2.0] and spent[2.0]["share_target"] == 0.5
    assert spent[2.0]["mean_seeds"] < spent[0.5]["mean_seeds"] <= 20


def test_optional_stopping_breaks_the_fixed_n_test_and_not_the_sequential_one():
    """The audit's finding, reproduced: stop at the first p < 0.05 from 2 to 10 seeds; the sequential verdict holds."""
    rng = np.random.default_rng(8)
    design = SequentialDesign(horizon=10)
    fixed_false = sequential_false = 0
    for _ in range(400):
        scores = _scores(rng, 2, 10, 0.0, 0.0, "normal")
        fixed_false += any(decide({f"c{c}": dict(enumerate(scores[c, :n])) for c in range(2)}, plan=False).decisive
                           for n in range(2, 11))
        sequential_false += sequential_study(scores, design)[0] is not None
    assert fixed_false / 400 > 0.12 and sequential_false / 400 < 0.06


def test_sequential_bad_arguments_are_one_line(capsys):
    assert main(["bench", "verdicts", "--sequential", "--n", "3"]) == 2
    assert "with --sequential a study reads after every seed" in capsys.readouterr().err
