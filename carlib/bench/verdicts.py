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

from scipy import stats

from carlib.errors import ConfigError
from carlib.studies.sequential import SequentialDesign, compare_with_leader
from carlib.studies.stats import ALPHA, decide, rank_by_mean, seeds_needed

__all__ = ["VerdictCell", "simulate_cell", "simulate_verdicts", "format_cells", "KS", "NS", "RHOS", "FALSE_TARGET",
           "POWER_TARGET", "SequentialCell", "SeedsSpent", "sequential_study", "simulate_sequential_cell",
           "simulate_sequential", "simulate_seeds_spent", "format_sequential", "SEQUENTIAL_KS", "SEQUENTIAL_RHOS",
           "NOISES", "EFFECTS"]

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
    _check_grid(ks, ns, rhos)
    cells = []
    for k in ks:
        for n in ns:
            for rho in rhos:
                cells.append(simulate_cell(k, n, rho, simulations, seed))
                if on_cell:
                    on_cell(cells[-1])
    return cells


def _check_grid(ks: Sequence[int], ns: Sequence[int], rhos: Sequence[float]) -> None:
    for name, values, ok in (("k", ks, lambda v: v >= 2), ("n", ns, lambda v: v >= 2),
                             ("rho", rhos, lambda v: 0 <= v < 1)):
        bad = [v for v in values if not ok(v)]
        if bad:
            raise ConfigError(f"{name}={bad}: configurations and seeds must be >= 2, rho in [0, 1).")


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


# ------------------------------------------------------------------ sequential studies (issue 22)
SEQUENTIAL_KS, SEQUENTIAL_RHOS, NOISES = (2, 4), (0.0, 0.5), ("normal", "heavy")
EFFECTS = (0.0, 0.5, 1.0, 2.0)  # true effects, in standard deviations of a single run, for the seeds-spent table
SEQUENTIAL_POWER_TARGET = 0.8  # k = 2, rho = 0, normal: a +1 sd effect found within the horizon
SAVING_TARGET = 0.5  # at +2 sd the sequential design spends at most this share of the fixed design's seeds
COLLAPSE_SHARE, COLLAPSE_DEPTH = 0.1, 10.0  # heavy tails: 10 % of runs fall 10 sd, a run that never took off


@dataclasses.dataclass(frozen=True)
class SequentialCell:
    """One cell of ``--sequential``: studies read after every seed up to ``max_seeds``, stopped at the first decision.

    ``false_rate``: A/A studies that ended decisive; ``power``: A/B studies (config0 better by
    ``EFFECT_SD``) that declared config0 the winner; ``mean_seeds``: seeds per configuration the A/B
    studies spent.
    """

    k: int
    rho: float
    noise: str
    max_seeds: int
    simulations: int
    false_count: int
    power: float
    mean_seeds: float

    @property
    def false_rate(self) -> float:
        """The share of A/A studies with a decisive verdict."""
        return self.false_count / self.simulations

    @property
    def false_upper(self) -> float:
        """The false-verdict rate's one-sided 95 % upper bound (Clopper–Pearson)."""
        if self.false_count >= self.simulations:
            return 1.0
        return float(stats.beta.ppf(0.95, self.false_count + 1, self.simulations - self.false_count))

    @property
    def false_met(self) -> bool:
        """False verdicts within the target, judged by the upper bound (not the rate minus its error)."""
        return self.false_upper <= FALSE_TARGET

    @property
    def power_target(self) -> float | None:
        """The power the issue asks for in this cell (k = 2, rho = 0, normal noise)."""
        return SEQUENTIAL_POWER_TARGET if (self.k, self.rho, self.noise) == (2, 0.0, "normal") else None

    def as_dict(self) -> dict[str, Any]:
        """One line of ``--sequential --json``: the fixed-n bench's keys, plus the noise model and seeds spent."""
        rate = self.false_rate
        return {"k": self.k, "rho": self.rho, "noise": self.noise, "max_seeds": self.max_seeds,
                "simulations": self.simulations, "false_verdict_rate": round(rate, 4),
                "false_verdict_se": round(math.sqrt(rate * (1 - rate) / self.simulations), 4),
                "false_verdict_upper95": round(self.false_upper, 4), "false_verdict_target": FALSE_TARGET,
                "false_verdict_met": self.false_met, "power": round(self.power, 4), "power_target": self.power_target,
                "power_met": None if self.power_target is None else self.power >= self.power_target,
                "mean_seeds": round(self.mean_seeds, 2)}


@dataclasses.dataclass(frozen=True)
class SeedsSpent:
    """Seeds a sequential study spends at one true effect, against the fixed-n design of equal power."""

    effect: float
    simulations: int
    mean_seeds: float
    decided: float  # the share of studies that declared config0 the winner (at effect 0: any winner)
    fixed_seeds: int | None  # the fixed-n paired t-test with the sequential design's power at +1 sd

    @property
    def share(self) -> float | None:
        """Sequential seeds as a share of the fixed design's."""
        return None if not self.fixed_seeds else self.mean_seeds / self.fixed_seeds

    def as_dict(self) -> dict[str, Any]:
        """One line of ``--sequential --json`` (``figure``: ``seeds_spent``)."""
        return {"effect_sd": self.effect, "simulations": self.simulations, "mean_seeds": round(self.mean_seeds, 2),
                "decided": round(self.decided, 4), "fixed_seeds": self.fixed_seeds,
                "share_of_fixed": None if self.share is None else round(self.share, 3),
                "share_target": SAVING_TARGET if self.effect == 2.0 else None}


def _scores(rng: np.random.Generator, k: int, n: int, rho: float, effect: float, noise: str) -> np.ndarray:
    seed_effect = rng.normal(0.0, 1.0, n) * math.sqrt(rho)
    scores = seed_effect[None, :] + rng.normal(0.0, 1.0, (k, n)) * math.sqrt(1 - rho)
    scores[0] += effect
    if noise == "heavy":
        scores -= COLLAPSE_DEPTH * (rng.random((k, n)) < COLLAPSE_SHARE)
    return scores


def sequential_study(scores: np.ndarray, design: SequentialDesign) -> tuple[str | None, int]:
    """Run one simulated study as ``carlib sweep --until-decisive`` does: (the winner or ``None``, seeds spent).

    ``scores[c, s]`` is configuration c's run on seed s. After each round (every configuration still
    in gets its next seed) the real verdict step reads it (:func:`compare_with_leader`); configurations
    decisively beaten leave; the study stops when the leader beats all, or at ``design.horizon``.
    """
    labels = [f"config{c}" for c in range(len(scores))]
    values: dict[str, dict[int, float]] = {label: {} for label in labels}
    active = list(labels)
    for seed in range(design.horizon):
        for label in active:
            values[label][seed] = float(scores[labels.index(label), seed])
        if seed < 1:
            continue
        current = {label: values[label] for label in active}
        comparison = compare_with_leader(current, rank_by_mean(current), design)
        if comparison.decisive:
            return comparison.leader, seed + 1
        active = [label for label in active if label not in comparison.beaten]
    return None, design.horizon


def simulate_sequential_cell(k: int, rho: float, noise: str, simulations: int, *, max_seeds: int = 20,
                             seed: int = 0, alpha: float = ALPHA) -> SequentialCell:
    """A/A false verdicts, A/B power at +1 sd and the seeds it spent, for one cell of the sequential bench."""
    design = SequentialDesign(alpha=alpha, horizon=max_seeds)
    rng = np.random.default_rng([seed, k, int(rho * 1000), NOISES.index(noise), 22])
    false = sum(sequential_study(_scores(rng, k, max_seeds, rho, 0.0, noise), design)[0] is not None
                for _ in range(simulations))
    found, spent = 0, 0
    for _ in range(simulations):
        winner, seeds = sequential_study(_scores(rng, k, max_seeds, rho, EFFECT_SD, noise), design)
        found += winner == "config0"
        spent += seeds
    return SequentialCell(k, rho, noise, max_seeds, simulations, false, found / simulations, spent / simulations)


def simulate_seeds_spent(effects: Sequence[float] = EFFECTS, *, simulations: int = 2000, max_seeds: int = 20,
                         seed: int = 0, alpha: float = ALPHA) -> list[SeedsSpent]:
    """Mean seeds a two-configuration study (rho = 0, normal) spends at each true effect, and the fixed-n equivalent.

    The fixed-n design is the paired t-test with the power the sequential design reaches at +1 sd
    (measured here), sized by :func:`carlib.studies.stats.seeds_needed`.
    """
    design = SequentialDesign(alpha=alpha, horizon=max_seeds)
    rng = np.random.default_rng([seed, 2222])
    outcomes = {}
    for effect in sorted(set(effects) | {EFFECT_SD}):
        runs = [sequential_study(_scores(rng, 2, max_seeds, 0.0, effect, "normal"), design)
                for _ in range(simulations)]
        decided = [winner == "config0" if effect else winner is not None for winner, _ in runs]
        outcomes[effect] = (float(np.mean([s for _, s in runs])), float(np.mean(decided)))
    fixed = seeds_needed(math.sqrt(2.0), EFFECT_SD, alpha=alpha, power=outcomes[EFFECT_SD][1])
    return [SeedsSpent(effect, simulations, *outcomes[effect], fixed) for effect in effects]


def simulate_sequential(ks: Sequence[int] = SEQUENTIAL_KS, rhos: Sequence[float] = SEQUENTIAL_RHOS,
                        noises: Sequence[str] = NOISES, *, simulations: int = 4000, max_seeds: int = 20,
                        seed: int = 0, on_cell: Callable[[SequentialCell], None] | None = None) -> list[SequentialCell]:
    """Every cell of ``ks`` × ``rhos`` × ``noises`` (``on_cell`` is called as each is done)."""
    if simulations < 1:
        raise ConfigError(f"simulations={simulations!r}: expected an integer >= 1 (e.g. 4000).")
    bad = [n for n in noises if n not in NOISES]
    if bad:
        raise ConfigError(f"noise={bad}: expected one of {', '.join(NOISES)}.")
    _check_grid(ks, (2,), rhos)
    cells = []
    for k in ks:
        for rho in rhos:
            for noise in noises:
                cells.append(simulate_sequential_cell(k, rho, noise, simulations, max_seeds=max_seeds, seed=seed))
                if on_cell:
                    on_cell(cells[-1])
    return cells


def format_sequential(cells: Sequence[SequentialCell], spent: Sequence[SeedsSpent]) -> str:
    """The sequential bench as text: one row per cell, then the seeds spent per true effect."""
    lines = [f"{'k':>2} {'rho':>4} {'noise':>6}  {'false verdicts (A/A), upper 95 %':>32}  {'power (+1 sd)':>20}  "
             f"{'mean seeds':>10}", f"{'-' * 2} {'-' * 4} {'-' * 6}  {'-' * 32}  {'-' * 20}  {'-' * 10}"]
    for c in cells:
        false = f"{c.false_rate:6.1%} (<= {c.false_upper:5.1%}) {'ok' if c.false_met else 'HIGH'}"
        power = f"{c.power:6.1%}" + ("" if c.power_target is None else
                                     f" {'ok' if c.power >= c.power_target else 'LOW'} (>= {c.power_target:.0%})")
        lines.append(f"{c.k:>2} {c.rho:>4.1f} {c.noise:>6}  {false:>32}  {power:<20}  {c.mean_seeds:>10.1f}")
    lines += ["", "seeds spent (k = 2, rho = 0, normal), against the fixed-n paired t-test of equal power:",
              f"{'effect':>7}  {'mean seeds':>10}  {'decided':>8}  {'fixed n':>7}  {'share':>6}",
              f"{'-' * 7}  {'-' * 10}  {'-' * 8}  {'-' * 7}  {'-' * 6}"]
    for row in spent:
        share = "" if row.share is None else f"{row.share:6.0%}" + (
            f" {'ok' if row.share <= SAVING_TARGET else 'HIGH'} (<= {SAVING_TARGET:.0%})" if row.effect == 2.0 else "")
        lines.append(f"{row.effect:>5.1f}sd  {row.mean_seeds:>10.1f}  {row.decided:>8.1%}  {row.fixed_seeds or '':>7}  "
                     f"{share}")
    return "\n".join(lines)
