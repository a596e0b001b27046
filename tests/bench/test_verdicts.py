"""carlib bench verdicts: the verdict code on simulated studies, its table and JSON lines."""

from __future__ import annotations

import json

from carlib.bench.verdicts import FALSE_TARGET, simulate_cell
from carlib.cli import main


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
