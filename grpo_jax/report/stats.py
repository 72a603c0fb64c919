"""Statistics of the report: bootstrap intervals, effect sizes, verdicts, nearest regulariser.

Plain numpy on host data. The rule the verdicts follow is ``VERDICT_RULE`` (also in the
docstring of `verdicts`); ``docs/design.md``, section "The hypothesis report", explains why.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Mapping, Sequence

import numpy as np

from grpo_jax.report.records import (
    OUTCOMES,
    betas,
    by_choice,
    cells,
    choices,
    final_values,
    select,
    task_modalities,
    unique,
    validate_records,
)


@dataclasses.dataclass(frozen=True)
class Threshold:
    """Minimal effect worth calling an effect: ``max(absolute, relative * scale)``.

    ``scale`` is the mean absolute value of the outcome's per-choice seed means in the cell,
    so a relative threshold follows the outcome's size (a KL of 0.01 nats vs 1 nat), and the
    absolute floor keeps tiny outcomes from turning noise into "effects".
    """

    absolute: float = 0.0
    relative: float = 0.0

    def value(self, scale: float) -> float:
        return max(self.absolute, self.relative * abs(scale))

    def describe(self) -> str:
        parts = []
        if self.absolute:
            parts.append(f"{self.absolute:g}")
        if self.relative:
            parts.append(f"{self.relative:g} x scale")
        return "max(" + ", ".join(parts) + ")" if len(parts) > 1 else (parts[0] if parts else "0")


DEFAULT_THRESHOLDS = {
    "mode_coverage": Threshold(absolute=0.1),
    "reward": Threshold(absolute=0.02, relative=0.1),
    "exact_kl_rev": Threshold(absolute=0.02, relative=0.25),
    "exact_kl_fwd": Threshold(absolute=0.02, relative=0.25),
    "entropy": Threshold(absolute=0.02, relative=0.1),
}

VERDICT_RULE = """\
For every cell (task, modality, beta > 0) and outcome, the effect of the KL choice is the
spread max_c mean_c - min_c mean_c of the per-choice seed means over the regularised KL
choices c (the baseline, kl_choice "none" or beta 0, is excluded). Its 95% interval comes
from a bootstrap: seeds are resampled with replacement within each choice (fixed RNG seed;
each resampled mean's deviation from its choice mean is widened by sqrt(n/(n-1)) * t_{n-1}/z
so that a single mean's interval matches Student's t at n seeds), the spread is recomputed,
and the interval is the union of the percentile interval [q2.5, q97.5] and the basic
interval [2 spread - q97.5, 2 spread - q2.5], lower bound clipped at 0. A cell-outcome is an
EFFECT when the interval's lower bound exceeds the outcome's threshold, NO EFFECT when its
upper bound is below the threshold, and UNRESOLVED otherwise (also when an interval cannot
be computed: fewer than 2 KL choices, fewer than 2 seeds in a choice, or a NaN).

Per (task, modality), over the verdict outcomes and every beta:
- unimodal modality: REFUTED if any cell-outcome is an EFFECT; HOLDS if every cell-outcome
  is NO EFFECT; otherwise UNDECIDED at this sample size.
- multimodal modality: HOLDS if at least one cell-outcome is an EFFECT; REFUTED if every
  cell-outcome is NO EFFECT; otherwise UNDECIDED at this sample size.
Per task (and overall, across tasks): REFUTED if any modality is REFUTED; HOLDS if every
modality HOLDS and both a unimodal and a multimodal modality were measured; otherwise
UNDECIDED.

Why the union: the spread of noisy means is biased upwards (with no true effect it is still
> 0) and so is the percentile interval, whose lower bound would turn noise into "effects";
the basic interval reverses that bias; taking the wider bound on each side errs towards
UNDECIDED rather than towards a verdict. More seeds shrink the bias and the interval."""

BOOTSTRAP_METHODS = ("conservative", "percentile", "basic")
SUPPORT_LEVEL = 0.95  # bootstrap support below which a nearest reference is "unclear"


def fmt(x, digits=3) -> str:
    """A number for tables and reasons: 3 significant digits, "–" for None, "nan"."""
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "nan"
    return f"{x:.{digits}g}"


def merged_thresholds(thresholds: Mapping[str, Threshold] | None) -> dict[str, Threshold]:
    """``DEFAULT_THRESHOLDS`` overridden by ``thresholds``."""
    return {**DEFAULT_THRESHOLDS, **(thresholds or {})}


# --------------------------------------------------------------------------- bootstrap


def student_t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t: exact for df = 1, 2; Cornish-Fisher (Hill 1970) for df >= 3.

    The expansion is within 0.8% of the exact value for df >= 3 and p <= 0.995.
    """
    if df < 1:
        raise ValueError(f"df must be >= 1; got {df}")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = statistics.NormalDist().inv_cdf(p)
    v = float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
    )


def _resampled_means(arrays, n, n_boot, rng) -> np.ndarray:
    """``[n_boot, C]`` means of seeds resampled with replacement within each choice; one
    ``[n_boot, C, n_max]`` draw, no loop over resamples."""
    n_max = int(n.max())
    padded = np.zeros((len(arrays), n_max))
    for c, a in enumerate(arrays):
        padded[c, : a.size] = a
    idx = (rng.random((n_boot, len(arrays), n_max)) * n[None, :, None]).astype(np.int64)
    draws = np.take_along_axis(np.broadcast_to(padded[None], idx.shape), idx, axis=2)
    mask = np.arange(n_max)[None, None, :] < n[None, :, None]  # [1, C, N]
    return np.where(mask, draws, 0.0).sum(axis=2) / n[None, :]


def _small_sample_factor(n, alpha) -> np.ndarray:
    """``[C]`` widening ``sqrt(n / (n - 1)) * t_{n-1}(1 - alpha) / z(1 - alpha)``."""
    z = statistics.NormalDist().inv_cdf(1.0 - alpha)
    return np.array(
        [math.sqrt(k / (k - 1)) * student_t_quantile(1.0 - alpha, k - 1) / z for k in n]
    )


def _interval(spread, q_lo, q_hi, method) -> tuple[float, float]:
    pct = (q_lo, q_hi)
    basic = (2.0 * spread - q_hi, 2.0 * spread - q_lo)
    if method == "percentile":
        return pct
    if method == "basic":
        return basic
    return min(pct[0], basic[0]), max(pct[1], basic[1])


def bootstrap_spread(
    values: Sequence[Sequence[float]],
    n_boot: int = 2000,
    ci: float = 0.95,
    rng: np.random.Generator | None = None,
    method: str = "conservative",
    small_sample: bool = True,
) -> tuple[float, float, float]:
    """Spread ``max_c mean(values[c]) - min_c mean(values[c])`` and a bootstrap interval.

    Seeds are resampled with replacement within each choice. With ``small_sample`` (default)
    each resampled mean's deviation from its choice's mean is scaled by
    ``sqrt(n / (n - 1)) * t_{n-1}(1 - a) / z(1 - a)``: the first factor makes its variance the
    unbiased ``s^2 / n``, the second widens its tails to Student's t (without it the interval
    covers about 75% instead of 95% at 5 choices x 5 seeds with no true effect). With ``q_a``
    the quantiles of the resampled spreads and ``a = (1 - ci) / 2``:

      percentile:   [q_a, q_{1-a}]
      basic:        [2 spread - q_{1-a}, 2 spread - q_a]   (reverses the resampling bias)
      conservative: [min of both lower bounds, max of both upper bounds]  (default)

    Lower bounds are clipped at 0. The spread of noisy means is biased upwards, and so is the
    percentile interval; the union of both errs towards "undecided", never towards a verdict.

    Args:
      values: C sequences of per-seed values (one per choice; lengths may differ).
      n_boot: number of resamples.
      ci: interval coverage (0.95 -> 2.5% and 97.5% quantiles).
      rng: numpy Generator (default ``default_rng(0)``).
      method: one of ``BOOTSTRAP_METHODS``.
    Returns:
      ``(spread, lo, hi)``; ``lo``/``hi`` are NaN when C < 2, a choice has < 2 seeds, or a
      value is not finite.
    """
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"Unknown bootstrap method {method!r}; valid: {BOOTSTRAP_METHODS}")
    rng = np.random.default_rng(0) if rng is None else rng
    arrays = [np.asarray(v, np.float64).reshape(-1) for v in values]
    if not arrays or any(a.size == 0 for a in arrays):
        return math.nan, math.nan, math.nan
    means = np.array([a.mean() for a in arrays])  # [C]
    spread = float(means.max() - means.min())
    n = np.array([a.size for a in arrays])  # [C]
    if len(arrays) < 2 or n.min() < 2 or not all(np.all(np.isfinite(a)) for a in arrays):
        return spread, math.nan, math.nan
    boot_means = _resampled_means(arrays, n, n_boot, rng)  # [B, C]
    alpha = (1.0 - ci) / 2.0
    if small_sample:
        factor = _small_sample_factor(n, alpha)  # [C]
        boot_means = means[None, :] + (boot_means - means[None, :]) * factor[None, :]
    boot_spread = boot_means.max(axis=1) - boot_means.min(axis=1)  # [B]
    q_lo, q_hi = (float(q) for q in np.quantile(boot_spread, [alpha, 1.0 - alpha]))
    lo, hi = _interval(spread, q_lo, q_hi, method)
    return spread, max(lo, 0.0), hi


# --------------------------------------------------------------------------- effect sizes


def _status(lo: float, hi: float, threshold: float) -> str:
    if math.isfinite(lo) and lo > threshold:
        return "effect"
    if math.isfinite(hi) and hi < threshold:
        return "no effect"
    return "unresolved"


def _effect_row(cell, outcome, groups, interval, threshold: Threshold) -> dict:
    """One effect-size row; ``groups`` is ``[(choice, [n] values)]``, ``cell`` a `cells` item."""
    task, modality, multimodal, beta, _, base = cell
    spread, lo, hi = interval
    means = {c: float(v.mean()) for c, v in groups}
    scale = float(np.mean(np.abs(list(means.values())))) if means else math.nan
    thr = threshold.value(scale) if math.isfinite(scale) else math.nan
    bvals = final_values(base, outcome)
    return {
        "task": task,
        "modality": modality,
        "multimodal": multimodal,
        "beta": beta,
        "outcome": outcome,
        "choices": [c for c, _ in groups],
        "means": means,
        "n_seeds": {c: int(v.size) for c, v in groups},
        "spread": spread,
        "lo": lo,
        "hi": hi,
        "scale": scale,
        "threshold": thr,
        "argmin": min(means, key=means.get) if means else None,
        "argmax": max(means, key=means.get) if means else None,
        "baseline_mean": float(bvals.mean()) if bvals.size else None,
        "baseline_n": int(bvals.size),
        "status": _status(lo, hi, thr),
    }


def effect_sizes(
    records: Sequence[Mapping[str, Any]],
    outcomes: Sequence[str] = OUTCOMES,
    thresholds: Mapping[str, Threshold] | None = None,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    method: str = "conservative",
) -> list[dict]:
    """One row per (task, modality, beta > 0, outcome): the spread across KL choices.

    Row keys: ``task, modality, multimodal, beta, outcome, choices, means {choice: mean},
    n_seeds {choice: n}, spread, lo, hi, scale, threshold, argmin, argmax, baseline_mean,
    baseline_n, status`` with status ``"effect"`` (lo > threshold), ``"no effect"``
    (hi < threshold) or ``"unresolved"``. See ``VERDICT_RULE``. The bootstrap RNG of row j is
    ``default_rng([seed, j])``, so rows do not depend on each other; ``method`` as in
    :func:`bootstrap_spread`.
    """
    records = validate_records(records)
    thresholds = merged_thresholds(thresholds)
    for o in outcomes:
        if o not in thresholds:
            raise ValueError(f"No threshold for outcome {o!r}; known: {sorted(thresholds)}")
    rows = []
    for cell in cells(records):
        recs = cell[4]
        for outcome in outcomes:
            groups = [(c, final_values(rr, outcome)) for c, rr in by_choice(recs)]
            rng = np.random.default_rng([seed, len(rows)])
            interval = bootstrap_spread(
                [v for _, v in groups], n_boot=n_boot, ci=ci, rng=rng, method=method
            )
            rows.append(_effect_row(cell, outcome, groups, interval, thresholds[outcome]))
    return rows


# --------------------------------------------------------------------------- verdicts


def _describe_row(r) -> str:
    return (
        f"{r['outcome']} at beta={r['beta']:g}: spread {fmt(r['spread'])} "
        f"[{fmt(r['lo'])}, {fmt(r['hi'])}] vs threshold {fmt(r['threshold'])} "
        f"({r['argmin']} -> {r['argmax']})"
    )


def _modality_verdict(cell: Sequence[Mapping[str, Any]], multimodal: bool) -> tuple[str, str]:
    """(verdict, reason) of one (task, modality) from its cell-outcome rows.

    The hypothesis predicts an effect where the reference is multimodal and none where it is
    unimodal: an effect confirms it (multimodal) or refutes it (unimodal), and all-null
    cell-outcomes the other way round.
    """
    effects = [r for r in cell if r["status"] == "effect"]
    nulls = [r for r in cell if r["status"] == "no effect"]
    unresolved = [r for r in cell if r["status"] == "unresolved"]
    n, kind = len(cell), ("multimodal" if multimodal else "unimodal")
    on_effect, on_null = ("holds", "refuted") if multimodal else ("refuted", "holds")
    joint = {"holds": " and", "refuted": ", yet"}
    if effects:
        return on_effect, (f"{kind}{joint[on_effect]} the KL choice matters: "
                           + _describe_row(effects[0]))
    if len(nulls) == n:
        return on_null, (f"{kind}{joint[on_null]} all {n} cell-outcomes show no effect "
                         "above threshold")
    established = " no effect established," if multimodal else ""
    return "undecided", (f"{kind};{established} {len(unresolved)} of {n} cell-outcomes "
                         "unresolved, e.g. " + _describe_row(unresolved[0]))


def _combine(entries: Sequence[Mapping[str, Any]], what: str) -> tuple[str, str]:
    """(verdict, reason) of a task, or of all tasks, from its modality verdicts."""
    if not entries:
        return "undecided", f"no {what} measured"
    refuted = [e for e in entries if e["verdict"] == "refuted"]
    if refuted:
        e = refuted[0]
        return "refuted", f"refuted by {e['task']} / {e['modality']}"
    has_uni = any(not e["multimodal"] for e in entries)
    has_multi = any(e["multimodal"] for e in entries)
    if all(e["verdict"] == "holds" for e in entries):
        if has_uni and has_multi:
            return "holds", f"all {len(entries)} modalities hold"
        return "undecided", "needs both a unimodal and a multimodal modality"
    n_und = sum(e["verdict"] == "undecided" for e in entries)
    return "undecided", f"{n_und} of {len(entries)} modalities undecided"


def verdicts(
    rows: Sequence[Mapping[str, Any]], verdict_outcomes: Sequence[str] | None = None
) -> dict:
    """Verdicts computed from effect-size rows.

    Returns ``{"overall": {...}, "tasks": [{...}], "modalities": [{...}]}``; each entry has
    ``verdict`` in ``{"holds", "refuted", "undecided"}`` and a ``reason``. The rule:

    """
    use = [r for r in rows if verdict_outcomes is None or r["outcome"] in verdict_outcomes]
    mods = []
    for task, modality, multimodal in unique(
        (r["task"], r["modality"], r["multimodal"]) for r in use
    ):
        cell = [r for r in use if r["task"] == task and r["modality"] == modality]
        v, why = _modality_verdict(cell, multimodal)
        mods.append({"task": task, "modality": modality, "multimodal": multimodal,
                     "verdict": v, "reason": why, "n_cells": len(cell)})
    tasks = []
    for task in unique(m["task"] for m in mods):
        v, why = _combine([m for m in mods if m["task"] == task], "modality")
        tasks.append({"task": task, "verdict": v, "reason": why})
    v, why = _combine(mods, "modality")
    return {"overall": {"verdict": v, "reason": why}, "tasks": tasks, "modalities": mods}


verdicts.__doc__ += "\n".join("  " + line for line in VERDICT_RULE.splitlines()) + "\n"


# --------------------------------------------------------------------------- behaved like


def _reference_choice(names: Sequence[str], prefix: str) -> str | None:
    """The reference KL choice starting with ``prefix``, preferring the loss placement."""
    cands = sorted(c for c in names if c.startswith(prefix))
    if not cands:
        return None
    loss = [c for c in cands if c.endswith("/loss")]
    return (loss or cands)[0]


def _point(recs, metric) -> np.ndarray:
    """``[n_seeds, D]`` per-seed vectors used for the distance."""
    if metric == "mode_shares":
        return np.array([np.asarray(r["final"]["mode_shares"], np.float64) for r in recs])
    return np.array(
        [[r["final"]["exact_kl_rev"], r["final"]["exact_kl_fwd"]] for r in recs], np.float64
    )


def _cell_references(recs, base, fwd, rev, metric) -> dict[str, np.ndarray]:
    """``{"forward" | "reverse" | "none": [n_seeds, D]}`` for the references present."""
    refs = {}
    for name, ch in (("forward", fwd), ("reverse", rev)):
        rr = [r for r in recs if r["kl_choice"] == ch]
        if rr:
            refs[name] = _point(rr, metric)
    if base:
        refs["none"] = _point(base, metric)
    return refs


def _support(x, refs, nearest, n_boot, rng) -> float:
    """Fraction of bootstrap resamples (seeds within every group) whose nearest reference
    to ``x`` ``[n, D]`` is ``nearest``."""
    names = list(refs)

    def boot_mean(a):  # [n, D] -> [n_boot, D]
        idx = rng.integers(0, a.shape[0], size=(n_boot, a.shape[0]))
        return a[idx].mean(axis=1)

    xb = boot_mean(x)
    db = np.stack([np.abs(xb - boot_mean(refs[k])).sum(-1) for k in names], axis=1)
    return float(np.mean(np.argmin(db, axis=1) == names.index(nearest)))


def behaved_like(
    records: Sequence[Mapping[str, Any]],
    fwd_choice: str | None = None,
    rev_choice: str | None = None,
    metric: str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """For each KL choice, which regulariser its runs ended nearest to.

    References, per (task, modality, beta): the exact forward-KL runs (``fwd_choice``,
    default the choice starting with ``"exact_fwd"``), the exact reverse-KL runs
    (``rev_choice``, ``"exact_rev"``) and the unregularised baseline (``"none"``/beta 0).
    Distance: L1 between seed-mean vectors; the vector is the final mode shares
    (``metric="mode_shares"``) or ``(exact_kl_rev, exact_kl_fwd)`` (``"exact_kl"``);
    ``"auto"`` uses mode shares when there are at least 2 modes, else the KLs.
    ``support`` is the fraction of bootstrap resamples in which the nearest reference is the
    same as on the full data; ``nearest`` gets "(unclear)" appended when support < 0.95.

    Row keys: ``task, modality, beta, choice, metric, dist {"forward", "reverse", "none"},
    references {"forward", "reverse"}, nearest, support``.
    """
    valid = ("auto", "mode_shares", "exact_kl")
    if metric not in valid:
        raise ValueError(f"Unknown metric {metric!r}; valid: {valid}")
    records = validate_records(records)
    fwd = fwd_choice or _reference_choice(choices(records), "exact_fwd")
    rev = rev_choice or _reference_choice(choices(records), "exact_rev")
    rows = []
    for task, modality, _, beta, recs, base in cells(records):
        n_modes = min((len(r["final"]["mode_shares"]) for r in recs), default=0)
        m = metric if metric != "auto" else ("mode_shares" if n_modes >= 2 else "exact_kl")
        refs = _cell_references(recs, base, fwd, rev, m)
        if len(refs) < 2:
            continue
        for choice, rr in by_choice(recs):
            if choice in (fwd, rev):
                continue
            x = _point(rr, m)
            dist = {k: float(np.abs(x.mean(0) - v.mean(0)).sum()) for k, v in refs.items()}
            nearest = min(dist, key=dist.get)
            support = _support(x, refs, nearest, n_boot, np.random.default_rng([seed, len(rows)]))
            rows.append({
                "task": task, "modality": modality, "beta": beta, "choice": choice,
                "metric": m, "dist": dist, "references": {"forward": fwd, "reverse": rev},
                "nearest": nearest if support >= SUPPORT_LEVEL else nearest + " (unclear)",
                "support": support,
            })
    return rows


def behaved_like_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Per KL choice, how many (task, modality, beta) cells it ended nearest to each reference.

    Counts only clear answers (bootstrap support >= 0.95); the rest are counted as unclear.
    Row keys: ``choice, forward, reverse, none, unclear, cells, verdict`` where ``verdict``
    names the reference with a strict majority of all cells, else "mixed".
    """
    out = []
    for choice in unique(r["choice"] for r in rows):
        counts = {"forward": 0, "reverse": 0, "none": 0, "unclear": 0}
        mine = [r for r in rows if r["choice"] == choice]
        for r in mine:
            counts[r["nearest"] if r["support"] >= SUPPORT_LEVEL else "unclear"] += 1
        top = max(("forward", "reverse", "none"), key=counts.get)
        clear = counts[top] > len(mine) / 2
        out.append(dict(counts, choice=choice, cells=len(mine), verdict=top if clear else "mixed"))
    return out


# --------------------------------------------------------------------------- bandit


def _mean_tv(recs, key) -> float:
    """Seed mean of the total variation between the final bandit policy and ``bandit[key]``."""
    return float(np.mean([
        0.5 * np.abs(np.asarray(r["bandit"]["final_policy"]) - np.asarray(r["bandit"][key])).sum()
        for r in recs
    ]))


def bandit_table(records: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Seed-mean total variation of each choice's final bandit policy to both closed-form optima.

    Row keys: ``task, modality, beta, choice, tv_reverse, tv_forward, tv_reference, nearer,
    n_seeds``; the baseline's rows have beta 0. Only records with a ``"bandit"`` entry count.
    """
    recs = [r for r in validate_records(records) if r.get("bandit")]
    rows = []
    for task, modality, _ in task_modalities(recs):
        base = select(recs, task, modality, baseline=True)
        groups = [(b, select(recs, task, modality, beta=b, baseline=False))
                  for b in betas(recs, task, modality)] + ([(0.0, base)] if base else [])
        for beta, sel in groups:
            for choice, rr in by_choice(sel):
                t_rev, t_fwd = _mean_tv(rr, "optimum_reverse"), _mean_tv(rr, "optimum_forward")
                rows.append({
                    "task": task, "modality": modality, "beta": beta, "choice": choice,
                    "tv_reverse": t_rev, "tv_forward": t_fwd,
                    "tv_reference": _mean_tv(rr, "reference"),
                    "nearer": "reverse" if t_rev < t_fwd else "forward",
                    "n_seeds": len(rr),
                })
    return rows
