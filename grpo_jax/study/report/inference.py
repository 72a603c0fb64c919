"""Inference for the study: seed-paired estimates, Holm, equivalence, power, matched strength,
and the decision rule. Plain NumPy/SciPy on host data.

Every effect is a mean over seeds of a per-seed difference (common random numbers: every arm
and every reference shares the seeds, so the same keys drive them), with a Student-t
interval clipped to the range the difference can take. An *interaction* is paired the same
way: per seed, Delta(multimodal) - Delta(unimodal). Families of tests are Holm-adjusted;
"little difference" is shown by equivalence (TOST) against a margin declared before the
run.

The decision rule (`decide`) is `DECISION_RULE`, printed in every report.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats as sps

DECISION_RULE = """\
For a predicted sign s of the interaction I = Delta(multimodal) - Delta(unimodal),
Delta = forward - reverse at matched strength:
HOLDS      I's Holm-adjusted p < alpha with sign s, I is not equivalent to 0 (a
           negligible interaction does not count), and Delta(unimodal) is equivalent to 0
           (TOST p < alpha against its margin);
REFUTED    I is equivalent to 0 (TOST against I's margin), or Delta(unimodal) exceeds its
           margin (its adjusted interval lies wholly outside [-margin, margin]), or I is
           significant with the sign opposite to s;
UNDECIDED  otherwise, with the number of seeds that would decide it at the observed spread.
The conditions are checked in this order: HOLDS, then REFUTED."""


@dataclasses.dataclass
class Estimate:
    """A mean difference with its uncertainty.

    mean, se, df: estimate, standard error and degrees of freedom (t distribution).
    n: seeds used. sd: per-seed standard deviation. low, high: the interval at `level`,
    clipped to `bounds`.
    p: two-sided p-value of mean = 0; p_adj: Holm-adjusted within its family (= p until
    `holm` is applied).
    """

    mean: float
    se: float
    df: float
    n: int
    sd: float
    low: float
    high: float
    level: float
    bounds: tuple[float, float]
    p: float
    p_adj: float

    def interval(self, level: float) -> tuple[float, float]:
        """The t interval at `level`, clipped to `bounds`."""
        return _interval(self.mean, self.se, self.df, level, self.bounds)

    def tost_p(self, margin: float) -> float:
        """Equivalence p-value: max of the one-sided tests of mean > -margin, mean < margin."""
        if not self.se > 0:
            return 0.0 if abs(self.mean) < margin else 1.0
        lower = sps.t.sf((self.mean + margin) / self.se, self.df)
        upper = sps.t.cdf((self.mean - margin) / self.se, self.df)
        return float(max(lower, upper))

    def as_dict(self) -> dict:
        return {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
        }


def _interval(mean, se, df, level, bounds):
    q = sps.t.ppf(0.5 + level / 2, df) if se > 0 else 0.0
    lo, hi = mean - q * se, mean + q * se
    return float(np.clip(lo, *bounds)), float(np.clip(hi, *bounds))


def _p(mean, se, df) -> float:
    if not se > 0:
        return 0.0 if mean != 0 else 1.0
    return float(2 * sps.t.sf(abs(mean) / se, df))


def paired(diffs: Sequence[float], bounds=(-math.inf, math.inf), level: float = 0.95) -> Estimate:
    """Mean of per-seed differences (NaNs dropped) with a t interval clipped to `bounds`."""
    d = np.asarray(diffs, np.float64)
    d = d[np.isfinite(d)]
    n = d.size
    if n < 2:
        raise ValueError(f"need at least 2 finite per-seed differences, got {n}")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se, df = sd / math.sqrt(n), n - 1
    low, high = _interval(mean, se, df, level, bounds)
    p = _p(mean, se, df)
    return Estimate(mean, se, df, n, sd, low, high, level, tuple(bounds), p, p)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given).

    Sorted ascending, p_(i) is multiplied by (m - i) (i from 0), a running maximum keeps the
    adjusted values monotone, and they are capped at 1."""
    p = np.asarray(pvalues, np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adj[i] = min(1.0, running)
    return adj


def apply_holm(estimates: Sequence[Estimate], alpha: float = 0.05) -> None:
    """Set `p_adj` of every estimate of one family, and its interval to the level at which
    Holm tests it: 1 - alpha / (m - rank) while the step-down rejects, and for every test at
    and after the first one it does not reject, the level of that step, 1 - alpha / (m - k*).
    So "the adjusted interval excludes 0" and "p_adj < alpha" agree for every test."""
    if not estimates:
        return
    adj = holm([e.p for e in estimates])
    order = np.argsort([e.p for e in estimates], kind="stable")
    m = len(estimates)
    stopped = None
    for rank, i in enumerate(order):
        e = estimates[i]
        e.p_adj = float(adj[i])
        if stopped is None and not e.p_adj < alpha:
            stopped = rank
        e.level = 1 - alpha / (m - (rank if stopped is None else stopped))
        e.low, e.high = e.interval(e.level)


def seeds_for_halfwidth(
    sd: float, halfwidth: float, level: float = 0.95, power: float = 0.8
) -> int:
    """Seeds n for which a t interval at `level` has half-width below `halfwidth` with
    probability about `power`: n = ((z_level + z_power) sd / halfwidth)^2, then the t
    correction by iterating with t quantiles."""
    if not halfwidth > 0 or not np.isfinite(sd):
        return -1
    if sd == 0:
        return 2
    n = 2
    for _ in range(50):
        q = sps.t.ppf(0.5 + level / 2, n - 1) + sps.t.ppf(power, n - 1)
        new = max(2, math.ceil((q * sd / halfwidth) ** 2))
        if new == n:
            break
        n = new
    return n


# ------------------------------------------------------------------------- matched strength


def decreasing_fit(y: Sequence[float]) -> np.ndarray:
    """Pool-adjacent-violators: the non-increasing sequence closest to `y` (least squares)."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in np.asarray(y, np.float64):
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return np.concatenate([np.full(int(c), s / c) for s, c in blocks])


def at_matched(
    strength: Sequence[float],
    matched: Sequence[float],
    outcome: Sequence[float],
    target: float,
    max_distance: float = math.inf,
    max_gap: float = math.inf,
) -> float:
    """The outcome at `matched` = `target` along a beta sweep (sorted by ascending beta).

    `matched` (e.g. reward) falls with the regulariser's strength; per-seed noise can break
    that, so it is first made non-increasing (`decreasing_fit`). The outcome is interpolated
    linearly in `matched` between the two betas that bracket `target`; NaN when `target` is
    outside the sweep's range (the seed then drops out, and the count is reported).

    Matchability: NaN as well when no run of the sweep lies within `max_distance` of
    `target`, or when the bracketing runs are more than `max_gap` apart in `matched` (a jump
    across the target: the interpolated value would be a chord between two different
    policies, not a policy the sweep realised).
    """
    order = np.argsort(np.asarray(strength, np.float64))
    m = decreasing_fit(np.asarray(matched, np.float64)[order])
    o = np.asarray(outcome, np.float64)[order]
    if not (m.min() <= target <= m.max()):
        return math.nan
    if np.min(np.abs(m - target)) > max_distance:
        return math.nan
    for i in range(len(m) - 1):
        hi, lo = m[i], m[i + 1]
        if lo <= target <= hi:
            if hi - lo > max_gap:
                return math.nan
            if hi == lo:
                return float(0.5 * (o[i] + o[i + 1]))
            w = (hi - target) / (hi - lo)
            return float((1 - w) * o[i] + w * o[i + 1])
    return float(o[int(np.argmin(np.abs(m - target)))])  # a single point equals the target


# ------------------------------------------------------------------------- decision rule


@dataclasses.dataclass
class Verdict:
    verdict: str  # "holds" | "refuted" | "undecided"
    reason: str
    seeds_to_decide: int  # -1 when decided


def decide(
    interaction: Estimate,
    unimodal: Estimate,
    margin_interaction: float,
    margin_unimodal: float,
    alpha: float = 0.05,
    sign: int = 1,
) -> Verdict:
    """The decision rule of the module docstring. `interaction` and `unimodal` carry their
    Holm-adjusted p-values and intervals (`apply_holm`)."""
    i, u = interaction, unimodal
    sig = i.p_adj < alpha
    uni_eq = u.tost_p(margin_unimodal) < alpha
    int_eq = i.tost_p(margin_interaction) < alpha
    uni_beyond = u.low > margin_unimodal or u.high < -margin_unimodal
    fmt = lambda e: f"{e.mean:+.3g} [{e.low:+.3g}, {e.high:+.3g}]"
    if sig and np.sign(i.mean) == sign and uni_eq and not int_eq:
        return Verdict(
            "holds",
            f"interaction {fmt(i)} (p_adj {i.p_adj:.2g}) has the predicted "
            f"sign and unimodal difference {fmt(u)} is within "
            f"±{margin_unimodal:g} (TOST p {u.tost_p(margin_unimodal):.2g})",
            -1,
        )
    if uni_beyond:
        return Verdict(
            "refuted",
            f"unimodal difference {fmt(u)} exceeds its margin " f"±{margin_unimodal:g}",
            -1,
        )
    if int_eq:
        return Verdict(
            "refuted",
            f"interaction {fmt(i)} is equivalent to 0 within "
            f"±{margin_interaction:g} (TOST p "
            f"{i.tost_p(margin_interaction):.2g})",
            -1,
        )
    if sig and np.sign(i.mean) == -sign:
        return Verdict(
            "refuted",
            f"interaction {fmt(i)} (p_adj {i.p_adj:.2g}) has the sign "
            f"opposite to the prediction",
            -1,
        )
    need = []
    if not sig and i.mean != 0:  # seeds for the interaction to reach significance
        need.append(seeds_for_halfwidth(i.sd, abs(i.mean), i.level))
    if not uni_eq:  # seeds for equivalence (or for the excess to show, at the margin)
        gap = abs(margin_unimodal - abs(u.mean)) or margin_unimodal
        need.append(seeds_for_halfwidth(u.sd, gap, 1 - 2 * alpha))
    n = max(need) if need else -1
    return Verdict(
        "undecided",
        f"interaction {fmt(i)} (p_adj {i.p_adj:.2g}); unimodal "
        f"difference {fmt(u)} not shown within ±{margin_unimodal:g}",
        n,
    )


def two_answers(
    interactions: Sequence[Estimate],
    unimodal: Estimate,
    margin_interaction: float,
    margin_unimodal: float,
    alpha: float = 0.05,
    sign: int = 1,
) -> dict[str, str]:
    """The two questions the one verdict mixes, answered apart (Holm-adjusted estimates):

    unimodal: does the direction matter on the unimodal reference? "yes" when its interval
      lies beyond the margin, "no" when it is equivalent to 0 within the margin (TOST),
      else "undecided".
    multimodal_adds: does multimodality add to it? "yes" when some interaction is
      significant with the predicted sign and none with the other, "no" when every
      interaction is equivalent to 0 within its margin, "opposite" when some is significant
      with the other sign and none with the predicted one, else "undecided" ("not
      comparable" without interactions).
    """
    u = unimodal
    if u.low > margin_unimodal or u.high < -margin_unimodal:
        uni = "yes"
    elif u.tost_p(margin_unimodal) < alpha:
        uni = "no"
    else:
        uni = "undecided"
    sig = [i for i in interactions if i.p_adj < alpha]
    pred = [i for i in sig if np.sign(i.mean) == sign]
    other = [i for i in sig if np.sign(i.mean) == -sign]
    if not interactions:
        adds = "not comparable"
    elif pred and not other:
        adds = "yes"
    elif all(i.tost_p(margin_interaction) < alpha for i in interactions):
        adds = "no"
    elif other and not pred:
        adds = "opposite"
    else:
        adds = "undecided"
    return {"unimodal": uni, "multimodal_adds": adds}


def overall(verdicts: Sequence[str]) -> str:
    """Across tasks: refuted if any task refutes; holds if every task holds; else undecided."""
    if any(v == "refuted" for v in verdicts):
        return "refuted"
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    return "undecided"
