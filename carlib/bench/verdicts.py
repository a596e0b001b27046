"""``carlib bench verdicts``: the verdict code itself, run on simulated studies with a known truth.

Each simulated study has ``k`` configurations run on the same ``n`` seeds; a run's score is its
configuration's true mean plus a seed effect shared by every configuration on that seed (a share
``rho`` of the variance: runs on one seed share their split, initial weights, data order and
augmentation draws) plus noise of its own, with unit standard deviation in all. Under **A/A** every
configuration has the same mean, and any decisive verdict is false. Under **A/B** one configuration
is better by one standard deviation of a single run, and the verdict's **power** is how often it
declares that configuration the winner. Every study goes through :func:`carlib.studies.stats.decide`,
the function behind every summary, so the figures describe the code users run.

Targets: false verdicts ≤ 5 % in every cell (a two-sided test at alpha 0.05 has exactly 5 % with
k = 2 in expectation: the figure is met when its Monte-Carlo interval reaches 5 %), and power ≥ 15 %
at n = 3, rho = 0.5, k = 2.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

from carlib.errors import ConfigError
from carlib.studies.stats import ALPHA, decide

__all__ = ["VerdictCell", "simulate_cell", "simulate_verdicts", "format_cells", "KS", "NS", "RHOS", "FALSE_TARGET",
           "POWER_TARGET"]

KS, NS, RHOS = (2, 4, 8), (2, 3, 5), (0.0, 0.5, 0.8)
FALSE_TARGET = 0.05  # at most this share of A/A studies may get a decisive verdict
POWER_TARGET = 0.15  # at n = 3, rho = 0.5, k = 2: at least this share of +1 sd effects found
EFFECT_SD = 1.0  # the A/B effect, in standard deviations of a single run


@dataclasses.dataclass(frozen=True)
class VerdictCell:
    """One cell of the table: ``k`` configurations, ``n`` seeds, same-seed correlation ``rho``, ``simulations`` studies."""

    k: int
    n: int
    rho: float
    simulations: int
    false_rate: float  # A/A: share of studies with a decisive verdict
    power: float  # A/B: share of studies that declared the truly better configuration the winner

    @staticmethod
    def _interval(rate: float, count: int) -> float:
        return 2 * math.sqrt(max(rate * (1 - rate), 1e-12) / count)

    @property
    def false_met(self) -> bool:
        """False verdicts within the target (within two Monte-Carlo standard errors of it)."""
        return self.false_rate - self._interval(self.false_rate, self.simulations) <= FALSE_TARGET

    @property
    def power_target(self) -> float | None:
        """The power the issue asks for in this cell (only n = 3, rho = 0.5, k = 2 has one)."""
        return POWER_TARGET if (self.k, self.n, self.rho) == (2, 3, 0.5) else None

    def as_dict(self) -> dict[str, Any]:
        """One line of ``--json``."""
        return {"k": self.k, "n": self.n, "rho": self.rho, "simulations": self.simulations,
                "false_verdict_rate": round(self.false_rate, 4),
                "false_verdict_se": round(self._interval(self.false_rate, self.simulations) / 2, 4),
                "false_verdict_target": FALSE_TARGET, "false_verdict_met": self.false_met,
                "power": round(self.power, 4), "power_target": self.power_target,
                "power_met": None if self.power_target is None else self.power >= self.power_target}


def _study(rng: np.random.Generator, k: int, n: int, rho: float, effect: float) -> dict[str, dict[int, float]]:
    seed_effect = rng.normal(0.0, 1.0, n) * math.sqrt(rho)
    own = rng.normal(0.0, 1.0, (k, n)) * math.sqrt(1 - rho)
    means = np.zeros(k)
    means[0] = effect
    scores = means[:, None] + seed_effect[None, :] + own
    return {f"config{c}": dict(enumerate(scores[c])) for c in range(k)}


def simulate_cell(k: int, n: int, rho: float, simulations: int, seed: int = 0, alpha: float = ALPHA) -> VerdictCell:
    """The false-verdict rate (A/A) and the power at a +1 sd effect (A/B) of :func:`decide` in one cell."""
    rng = np.random.default_rng([seed, k, n, int(rho * 1000)])
    false = sum(bool(decide(_study(rng, k, n, rho, 0.0), alpha=alpha, plan=False).decisive)
                for _ in range(simulations))
    found = 0
    for _ in range(simulations):
        verdict = decide(_study(rng, k, n, rho, EFFECT_SD), alpha=alpha, plan=False)
        found += bool(verdict.decisive) and verdict.best == "config0"
    return VerdictCell(k, n, rho, simulations, false / simulations, found / simulations)


def simulate_verdicts(ks: Sequence[int] = KS, ns: Sequence[int] = NS, rhos: Sequence[float] = RHOS, *,
                      simulations: int = 2000, seed: int = 0,
                      on_cell: Callable[[VerdictCell], None] | None = None) -> list[VerdictCell]:
    """Every cell of ``ks`` × ``ns`` × ``rhos``; ``on_cell`` is called as each is done (the CLI prints as it goes)."""
    if simulations < 1:
        raise ConfigError(f"simulations={simulations!r}: expected an integer >= 1 (e.g. 2000).")
    for name, values, ok in (("k", ks, lambda v: v >= 2), ("n", ns, lambda v: v >= 2),
                             ("rho", rhos, lambda v: 0 <= v < 1)):
        bad = [v for v in values if not ok(v)]
        if bad:
            raise ConfigError(f"{name}={bad}: configurations and seeds must be >= 2, rho in [0, 1).")
    cells = []
    for k in ks:
        for n in ns:
            for rho in rhos:
                cells.append(simulate_cell(k, n, rho, simulations, seed))
                if on_cell:
                    on_cell(cells[-1])
    return cells


def format_cells(cells: Sequence[VerdictCell]) -> str:
    """A text table: one row per cell, with the targets and whether they are met."""
    lines = [f"{'k':>2} {'n':>2} {'rho':>4}  {'false verdicts (A/A)':>22}  {'power (+1 sd)':>15}",
             f"{'-' * 2} {'-' * 2} {'-' * 4}  {'-' * 22}  {'-' * 15}"]
    for c in cells:
        se = c._interval(c.false_rate, c.simulations) / 2
        false = f"{c.false_rate:6.1%} ±{se:5.1%} {'ok' if c.false_met else 'HIGH'}"
        power = f"{c.power:6.1%}" + ("" if c.power_target is None else
                                     f" {'ok' if c.power >= c.power_target else 'LOW'} (>= {c.power_target:.0%})")
        lines.append(f"{c.k:>2} {c.n:>2} {c.rho:>4.1f}  {false:>22}  {power}")
    return "\n".join(lines)
