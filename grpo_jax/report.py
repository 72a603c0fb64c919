"""The hypothesis report: effect sizes with bootstrap intervals, verdicts, figures, Markdown.

Input: a list of run records, one per task x modality x kl_choice x beta x seed::

  {"task": str, "modality": str, "multimodal": bool, "kl_choice": str, "beta": float,
   "seed": int,
   "final": {"reward", "exact_kl_rev", "exact_kl_fwd", "entropy", "mode_coverage": float,
             "pass_at_k": [float, ...] (one per ks), "mode_shares": [float, ...] (one per mode)},
   "history": {"step": [S], "reward": [S], "exact_kl_rev": [S], "exact_kl_fwd": [S],
               "entropy": [S], "mode_shares": [S][M]},
   "ks": [1, 2, 4, ...], "ref_mode_shares": [M],
   "bandit": {"final_policy", "optimum_reverse", "optimum_forward", "reference": [A]}  # optional
  }

A *cell* is (task, modality, beta). Runs with ``kl_choice == "none"`` or ``beta == 0`` are the
unregularised *baseline*: shown beside every cell of their task x modality, never part of a
spread. Everything here is plain numpy on host data (this is an I/O edge, not jitted code);
figures use ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot global state).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import statistics
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

OUTCOMES = ("mode_coverage", "reward", "exact_kl_rev", "exact_kl_fwd", "entropy")
BASELINE_CHOICE = "none"
_FINAL_KEYS = OUTCOMES
_REQUIRED = ("task", "modality", "multimodal", "kl_choice", "beta", "seed", "final")


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


# --------------------------------------------------------------------------- records


def validate_records(records: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Check the keys the report needs; ``ValueError`` naming the record and the key."""
    if not records:
        raise ValueError("No run records to report on.")
    out = []
    flag: dict[tuple, bool] = {}
    for i, r in enumerate(records):
        for k in _REQUIRED:
            if k not in r:
                raise ValueError(f"Record {i} lacks key {k!r}; required keys: {_REQUIRED}")
        for k in _FINAL_KEYS:
            if k not in r["final"]:
                raise ValueError(f"Record {i} ('final') lacks key {k!r}; required: {_FINAL_KEYS}")
        tm = (r["task"], r["modality"])
        if flag.setdefault(tm, bool(r["multimodal"])) != bool(r["multimodal"]):
            raise ValueError(
                f"Records of task {tm[0]!r}, modality {tm[1]!r} disagree on 'multimodal'."
            )
        out.append(dict(r))
    return out


def is_baseline(record: Mapping[str, Any]) -> bool:
    """Unregularised run: ``kl_choice == "none"`` or ``beta == 0``."""
    return record["kl_choice"] == BASELINE_CHOICE or float(record["beta"]) == 0.0


def _unique(seq: Iterable) -> list:
    seen, out = set(), []
    for x in seq:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def _task_modalities(records) -> list[tuple[str, str, bool]]:
    """(task, modality, multimodal) in order: tasks by first appearance, unimodal first."""
    tms = _unique((r["task"], r["modality"], bool(r["multimodal"])) for r in records)
    tasks = _unique(t for t, _, _ in tms)
    return sorted(tms, key=lambda x: (tasks.index(x[0]), x[2], tms.index(x)))


def _betas(records, task, modality) -> list[float]:
    return sorted(
        {
            float(r["beta"])
            for r in records
            if r["task"] == task and r["modality"] == modality and not is_baseline(r)
        }
    )


def _choices(records) -> list[str]:
    return _unique(r["kl_choice"] for r in records if not is_baseline(r))


def _select(records, task, modality, beta=None, choice=None, baseline=None) -> list[dict]:
    out = []
    for r in records:
        if r["task"] != task or r["modality"] != modality:
            continue
        if baseline is not None and is_baseline(r) != baseline:
            continue
        if beta is not None and not is_baseline(r) and float(r["beta"]) != beta:
            continue
        if choice is not None and r["kl_choice"] != choice:
            continue
        out.append(r)
    return sorted(out, key=lambda r: r["seed"])


def _final(recs, outcome) -> np.ndarray:
    return np.array([float(r["final"][outcome]) for r in recs], np.float64)


# --------------------------------------------------------------------------- bootstrap


BOOTSTRAP_METHODS = ("conservative", "percentile", "basic")


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
    unbiased ``s^2 / n`` (the plain bootstrap shrinks it by ``(n-1)/n``), the second widens
    its tails to Student's t, so that one choice's interval matches the t interval. Without
    it, the bootstrap undercovers badly at 3-5 seeds (about 75% instead of 95% for this
    statistic with no true effect, 5 choices, 5 seeds; about 96% with it).
    With ``q_a`` the quantiles of the resampled spreads and ``a = (1 - ci) / 2``:

      percentile:   [q_a, q_{1-a}]
      basic:        [2 spread - q_{1-a}, 2 spread - q_a]   (reverses the resampling bias)
      conservative: [min of both lower bounds, max of both upper bounds]  (default)

    Lower bounds are clipped at 0 (a spread is >= 0). The spread of noisy means is biased
    upwards, and so is its percentile interval: with no true effect the percentile lower
    bound is above 0 every time. The basic lower bound corrects that; the percentile upper
    bound is the wider one. Their union errs towards "undecided", never towards a verdict.

    Args:
      values: C sequences of per-seed values (one per choice; lengths may differ).
      n_boot: number of resamples.
      ci: interval coverage (0.95 -> 2.5% and 97.5% quantiles).
      rng: numpy Generator (default ``default_rng(0)``).
      method: one of ``BOOTSTRAP_METHODS``.
    Returns:
      ``(spread, lo, hi)``; ``lo``/``hi`` are NaN when C < 2, a choice has < 2 seeds, or a
      value is not finite. Vectorised: one ``[n_boot, C, n_max]`` draw, no loop over resamples.
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
    n_max = int(n.max())
    padded = np.zeros((len(arrays), n_max))
    for c, a in enumerate(arrays):
        padded[c, : a.size] = a
    idx = (rng.random((n_boot, len(arrays), n_max)) * n[None, :, None]).astype(
        np.int64
    )  # [B, C, N]
    draws = np.take_along_axis(np.broadcast_to(padded[None], idx.shape), idx, axis=2)  # [B, C, N]
    mask = np.arange(n_max)[None, None, :] < n[None, :, None]  # [1, C, N]
    boot_means = np.where(mask, draws, 0.0).sum(axis=2) / n[None, :]  # [B, C]
    alpha = (1.0 - ci) / 2.0
    if small_sample:
        z = statistics.NormalDist().inv_cdf(1.0 - alpha)
        factor = np.array(
            [math.sqrt(k / (k - 1)) * student_t_quantile(1.0 - alpha, k - 1) / z for k in n]
        )  # [C]
        boot_means = means[None, :] + (boot_means - means[None, :]) * factor[None, :]
    boot_spread = boot_means.max(axis=1) - boot_means.min(axis=1)  # [B]
    q_lo, q_hi = (float(q) for q in np.quantile(boot_spread, [alpha, 1.0 - alpha]))
    pct = (q_lo, q_hi)
    basic = (2.0 * spread - q_hi, 2.0 * spread - q_lo)
    lo, hi = {
        "percentile": pct,
        "basic": basic,
        "conservative": (min(pct[0], basic[0]), max(pct[1], basic[1])),
    }[method]
    return spread, max(lo, 0.0), hi


# --------------------------------------------------------------------------- effect sizes


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
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    for o in outcomes:
        if o not in thresholds:
            raise ValueError(f"No threshold for outcome {o!r}; known: {sorted(thresholds)}")
    rows = []
    for task, modality, multimodal in _task_modalities(records):
        base_recs = _select(records, task, modality, baseline=True)
        for beta in _betas(records, task, modality):
            recs = _select(records, task, modality, beta=beta, baseline=False)
            choices = _unique(r["kl_choice"] for r in recs)
            for outcome in outcomes:
                vals = [_final([r for r in recs if r["kl_choice"] == c], outcome) for c in choices]
                rng = np.random.default_rng([seed, len(rows)])
                spread, lo, hi = bootstrap_spread(
                    vals, n_boot=n_boot, ci=ci, rng=rng, method=method
                )
                means = {c: float(v.mean()) for c, v in zip(choices, vals)}
                scale = float(np.mean(np.abs(list(means.values())))) if means else math.nan
                thr = thresholds[outcome].value(scale) if math.isfinite(scale) else math.nan
                if math.isfinite(lo) and lo > thr:
                    status = "effect"
                elif math.isfinite(hi) and hi < thr:
                    status = "no effect"
                else:
                    status = "unresolved"
                bvals = _final(base_recs, outcome)
                rows.append(
                    {
                        "task": task,
                        "modality": modality,
                        "multimodal": multimodal,
                        "beta": beta,
                        "outcome": outcome,
                        "choices": choices,
                        "means": means,
                        "n_seeds": {c: int(v.size) for c, v in zip(choices, vals)},
                        "spread": spread,
                        "lo": lo,
                        "hi": hi,
                        "scale": scale,
                        "threshold": thr,
                        "argmin": min(means, key=means.get) if means else None,
                        "argmax": max(means, key=means.get) if means else None,
                        "baseline_mean": float(bvals.mean()) if bvals.size else None,
                        "baseline_n": int(bvals.size),
                        "status": status,
                    }
                )
    return rows


def _describe_row(r) -> str:
    return (
        f"{r['outcome']} at beta={r['beta']:g}: spread {_fmt(r['spread'])} "
        f"[{_fmt(r['lo'])}, {_fmt(r['hi'])}] vs threshold {_fmt(r['threshold'])} "
        f"({r['argmin']} -> {r['argmax']})"
    )


def verdicts(
    rows: Sequence[Mapping[str, Any]], verdict_outcomes: Sequence[str] | None = None
) -> dict:
    """Verdicts computed from effect-size rows.

    Returns ``{"overall": {...}, "tasks": [{...}], "modalities": [{...}]}``; each entry has
    ``verdict`` in ``{"holds", "refuted", "undecided"}`` and a ``reason``. The rule:

    """
    use = [r for r in rows if verdict_outcomes is None or r["outcome"] in verdict_outcomes]
    mods = []
    for task, modality, multimodal in _unique(
        (r["task"], r["modality"], r["multimodal"]) for r in use
    ):
        cell = [r for r in use if r["task"] == task and r["modality"] == modality]
        effects = [r for r in cell if r["status"] == "effect"]
        nulls = [r for r in cell if r["status"] == "no effect"]
        unresolved = [r for r in cell if r["status"] == "unresolved"]
        if not multimodal:
            if effects:
                v, why = "refuted", "unimodal, yet the KL choice matters: " + _describe_row(
                    effects[0]
                )
            elif len(nulls) == len(cell):
                v, why = (
                    "holds",
                    f"unimodal and all {len(cell)} cell-outcomes show no effect above threshold",
                )
            else:
                v, why = "undecided", (
                    f"unimodal; {len(unresolved)} of {len(cell)} cell-outcomes unresolved, "
                    "e.g. " + _describe_row(unresolved[0])
                )
        else:
            if effects:
                v, why = "holds", "multimodal and the KL choice matters: " + _describe_row(
                    effects[0]
                )
            elif len(nulls) == len(cell):
                v, why = "refuted", (
                    f"multimodal, yet all {len(cell)} cell-outcomes show no effect "
                    "above threshold"
                )
            else:
                v, why = "undecided", (
                    f"multimodal; no effect established, {len(unresolved)} of "
                    f"{len(cell)} cell-outcomes unresolved, e.g. " + _describe_row(unresolved[0])
                )
        mods.append(
            {
                "task": task,
                "modality": modality,
                "multimodal": multimodal,
                "verdict": v,
                "reason": why,
                "n_cells": len(cell),
            }
        )

    def combine(entries, what):
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

    tasks = []
    for task in _unique(m["task"] for m in mods):
        v, why = combine([m for m in mods if m["task"] == task], "modality")
        tasks.append({"task": task, "verdict": v, "reason": why})
    v, why = combine(mods, "modality")
    return {"overall": {"verdict": v, "reason": why}, "tasks": tasks, "modalities": mods}


verdicts.__doc__ += "\n".join("  " + line for line in VERDICT_RULE.splitlines()) + "\n"


# --------------------------------------------------------------------------- behaved like


def _reference_choice(choices: Sequence[str], prefix: str) -> str | None:
    cands = sorted(c for c in choices if c.startswith(prefix))
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
    ``support`` is the fraction of bootstrap resamples (seeds within every group) in which
    the nearest reference is the same as on the full data; ``nearest`` gets "(unclear)"
    appended when support < 0.95.

    Row keys: ``task, modality, beta, choice, metric, dist {"forward", "reverse", "none"},
    nearest, support``.
    """
    valid = ("auto", "mode_shares", "exact_kl")
    if metric not in valid:
        raise ValueError(f"Unknown metric {metric!r}; valid: {valid}")
    records = validate_records(records)
    all_choices = _choices(records)
    fwd = fwd_choice or _reference_choice(all_choices, "exact_fwd")
    rev = rev_choice or _reference_choice(all_choices, "exact_rev")
    rows = []
    for task, modality, _ in _task_modalities(records):
        base_recs = _select(records, task, modality, baseline=True)
        for beta in _betas(records, task, modality):
            recs = _select(records, task, modality, beta=beta, baseline=False)
            n_modes = min((len(r["final"]["mode_shares"]) for r in recs), default=0)
            m = metric if metric != "auto" else ("mode_shares" if n_modes >= 2 else "exact_kl")
            refs = {}
            for name, ch in (("forward", fwd), ("reverse", rev)):
                rr = [r for r in recs if r["kl_choice"] == ch]
                if rr:
                    refs[name] = _point(rr, m)
            if base_recs:
                refs["none"] = _point(base_recs, m)
            if len(refs) < 2:
                continue
            for choice in _unique(r["kl_choice"] for r in recs):
                if choice in (fwd, rev):
                    continue
                x = _point([r for r in recs if r["kl_choice"] == choice], m)
                names = list(refs)
                dist = {k: float(np.abs(x.mean(0) - refs[k].mean(0)).sum()) for k in names}
                nearest = min(dist, key=dist.get)
                rng = np.random.default_rng([seed, len(rows)])

                def boot_mean(a):  # [n, D] -> [n_boot, D]
                    idx = rng.integers(0, a.shape[0], size=(n_boot, a.shape[0]))
                    return a[idx].mean(axis=1)

                xb = boot_mean(x)
                db = np.stack([np.abs(xb - boot_mean(refs[k])).sum(-1) for k in names], axis=1)
                support = float(np.mean(np.argmin(db, axis=1) == names.index(nearest)))
                rows.append(
                    {
                        "task": task,
                        "modality": modality,
                        "beta": beta,
                        "choice": choice,
                        "metric": m,
                        "dist": dist,
                        "references": {"forward": fwd, "reverse": rev},
                        "nearest": nearest if support >= 0.95 else nearest + " (unclear)",
                        "support": support,
                    }
                )
    return rows


def behaved_like_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Per KL choice, how many (task, modality, beta) cells it ended nearest to each reference.

    Counts only clear answers (bootstrap support >= 0.95); the rest are counted as unclear.
    Row keys: ``choice, forward, reverse, none, unclear, cells, verdict`` where ``verdict``
    names the reference with a strict majority of all cells, else "mixed".
    """
    out = []
    for choice in _unique(r["choice"] for r in rows):
        counts = {"forward": 0, "reverse": 0, "none": 0, "unclear": 0}
        mine = [r for r in rows if r["choice"] == choice]
        for r in mine:
            counts[r["nearest"] if r["support"] >= 0.95 else "unclear"] += 1
        top = max(("forward", "reverse", "none"), key=counts.get)
        clear = counts[top] > len(mine) / 2
        out.append(dict(counts, choice=choice, cells=len(mine), verdict=top if clear else "mixed"))
    return out


def bandit_table(records: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Seed-mean total variation of each choice's final bandit policy to both closed-form optima.

    Row keys: ``task, modality, beta, choice, tv_reverse, tv_forward, tv_reference, nearer``.
    Only records with a ``"bandit"`` entry count.
    """
    recs = [r for r in validate_records(records) if r.get("bandit")]
    rows = []
    for task, modality, _ in _task_modalities(recs):
        for beta in _betas(recs, task, modality) + (
            [0.0] if _select(recs, task, modality, baseline=True) else []
        ):
            sel = (
                _select(recs, task, modality, baseline=True)
                if beta == 0.0
                else _select(recs, task, modality, beta=beta, baseline=False)
            )
            for choice in _unique(r["kl_choice"] for r in sel):
                rr = [r for r in sel if r["kl_choice"] == choice]

                def tv(key):
                    return float(
                        np.mean(
                            [
                                0.5
                                * np.abs(
                                    np.asarray(r["bandit"]["final_policy"])
                                    - np.asarray(r["bandit"][key])
                                ).sum()
                                for r in rr
                            ]
                        )
                    )

                t_rev, t_fwd = tv("optimum_reverse"), tv("optimum_forward")
                rows.append(
                    {
                        "task": task,
                        "modality": modality,
                        "beta": beta,
                        "choice": choice,
                        "tv_reverse": t_rev,
                        "tv_forward": t_fwd,
                        "tv_reference": tv("reference"),
                        "nearer": "reverse" if t_rev < t_fwd else "forward",
                        "n_seeds": len(rr),
                    }
                )
    return rows


# --------------------------------------------------------------------------- figures


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", "_".join(str(p) for p in parts)).strip("-").lower()


def _colours(choices: Sequence[str]) -> dict:
    from matplotlib import colormaps  # pylint: disable=g-import-not-at-top

    cmap = colormaps["tab10" if len(choices) <= 10 else "tab20"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(choices)}


def _new_figure(rows: int, cols: int, w: float = 3.0, h: float = 2.3):
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    fig = Figure(figsize=(max(4.0, w * cols), max(3.0, h * rows)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig, outdir, name) -> str:
    path = os.path.join(outdir, name)
    fig.savefig(path, dpi=90)
    return path


def _mean_history(recs, key) -> tuple[np.ndarray, np.ndarray]:
    """Seed-mean history ``[S, ...]`` (truncated to the shortest run) and its steps ``[S]``."""
    hs = [
        np.asarray(r["history"][key], np.float64)
        for r in recs
        if r.get("history", {}).get(key) is not None
    ]
    if not hs:
        return np.zeros((0,)), np.zeros((0,))
    s = min(h.shape[0] for h in hs)
    steps = [np.asarray(r["history"]["step"][:s], np.float64) for r in recs if r.get("history")]
    return np.mean([h[:s] for h in hs], axis=0), steps[0]


def plot_mode_shares(records, outdir) -> list[str]:
    """Per (task, modality) with >= 2 modes: stacked seed-mean mode shares over training.

    Grid: rows = betas, columns = KL choices (+ the baseline, repeated on each row).
    """
    paths = []
    for task, modality, _ in _task_modalities(records):
        recs = _select(records, task, modality)
        if not recs or min(len(r["final"]["mode_shares"]) for r in recs) < 2:
            continue
        betas = _betas(records, task, modality)
        choices = _unique(r["kl_choice"] for r in recs if not is_baseline(r))
        base = _select(records, task, modality, baseline=True)
        cols = choices + ([BASELINE_CHOICE] if base else [])
        fig, axes = _new_figure(max(1, len(betas)), len(cols), w=2.4, h=1.9)
        n_modes = len(recs[0]["final"]["mode_shares"])
        from matplotlib import colormaps  # pylint: disable=g-import-not-at-top

        colours = [colormaps["viridis"](i / max(1, n_modes - 1)) for i in range(n_modes)]
        for i, beta in enumerate(betas or [0.0]):
            for j, choice in enumerate(cols):
                ax = axes[i, j]
                rr = (
                    base
                    if choice == BASELINE_CHOICE
                    else _select(records, task, modality, beta=beta, choice=choice, baseline=False)
                )
                shares, steps = _mean_history(rr, "mode_shares")
                if shares.ndim == 2 and shares.shape[0]:
                    ax.stackplot(steps, shares.T, colors=colours[: shares.shape[1]], alpha=0.85)
                    ref = np.cumsum(rr[0].get("ref_mode_shares") or [])[:-1]
                    for y in ref:
                        ax.axhline(y, color="k", lw=0.6, ls="--")
                ax.set_ylim(0, 1)
                ax.set_title(
                    f"{choice}" + ("" if choice == BASELINE_CHOICE else f", β={beta:g}"), fontsize=8
                )
                ax.tick_params(labelsize=7)
        fig.suptitle(
            f"{task} / {modality}: mode shares over training (dashed: reference)", fontsize=9
        )
        paths.append(_save(fig, outdir, f"mode_shares_{_slug(task, modality)}.png"))
    return paths


def plot_frontier(records, outdir) -> list[str]:
    """Per task: final reward against final exact KL (reverse | forward), per modality row."""
    paths = []
    colours = _colours(_choices(records))
    for task in _unique(r["task"] for r in records):
        tms = [tm for tm in _task_modalities(records) if tm[0] == task]
        fig, axes = _new_figure(len(tms), 2, w=3.6, h=2.6)
        for i, (_, modality, _) in enumerate(tms):
            for j, kl in enumerate(("exact_kl_rev", "exact_kl_fwd")):
                ax = axes[i, j]
                for choice in _unique(
                    r["kl_choice"] for r in _select(records, task, modality, baseline=False)
                ):
                    xs, ys = [], []
                    for beta in _betas(records, task, modality):
                        rr = _select(
                            records, task, modality, beta=beta, choice=choice, baseline=False
                        )
                        if rr:
                            ax.scatter(
                                _final(rr, kl),
                                _final(rr, "reward"),
                                s=6,
                                alpha=0.3,
                                color=colours[choice],
                            )
                            xs.append(_final(rr, kl).mean())
                            ys.append(_final(rr, "reward").mean())
                    ax.plot(xs, ys, "o-", ms=3, lw=1, color=colours[choice], label=choice)
                base = _select(records, task, modality, baseline=True)
                if base:
                    ax.plot(
                        [_final(base, kl).mean()],
                        [_final(base, "reward").mean()],
                        "k*",
                        ms=8,
                        label=BASELINE_CHOICE,
                    )
                ax.set_xlabel(
                    {"exact_kl_rev": "exact KL[π||π_ref]", "exact_kl_fwd": "exact KL[π_ref||π]"}[
                        kl
                    ],
                    fontsize=8,
                )
                ax.set_ylabel("reward", fontsize=8)
                ax.set_title(modality, fontsize=8)
                ax.tick_params(labelsize=7)
        axes[0, 1].legend(fontsize=6, loc="best")
        fig.suptitle(f"{task}: reward vs exact KL (lines join betas; dots are seeds)", fontsize=9)
        paths.append(_save(fig, outdir, f"frontier_{_slug(task)}.png"))
    return paths


def _lines_grid(records, outdir, name, title, xy_fn, xlabel, ylabel, logx=False) -> list[str]:
    """Per task: rows = modalities, columns = betas; one seed-mean line per KL choice."""
    paths = []
    colours = _colours(_choices(records))
    for task in _unique(r["task"] for r in records):
        tms = [tm for tm in _task_modalities(records) if tm[0] == task]
        betas = sorted({b for _, m, _ in tms for b in _betas(records, task, m)}) or [0.0]
        fig, axes = _new_figure(len(tms), len(betas))
        for i, (_, modality, _) in enumerate(tms):
            base = _select(records, task, modality, baseline=True)
            for j, beta in enumerate(betas):
                ax = axes[i, j]
                for choice in _unique(
                    r["kl_choice"] for r in _select(records, task, modality, baseline=False)
                ):
                    rr = _select(records, task, modality, beta=beta, choice=choice, baseline=False)
                    if rr:
                        x, y = xy_fn(rr)
                        ax.plot(x, y, lw=1.2, color=colours[choice], label=choice)
                if base:
                    x, y = xy_fn(base)
                    ax.plot(x, y, "--", lw=1.0, color="0.4", label=BASELINE_CHOICE)
                if logx:
                    ax.set_xscale("log", base=2)
                ax.set_title(f"{modality}, β={beta:g}", fontsize=8)
                ax.set_xlabel(xlabel, fontsize=8)
                ax.set_ylabel(ylabel, fontsize=8)
                ax.tick_params(labelsize=7)
        axes[0, -1].legend(fontsize=6, loc="best")
        fig.suptitle(f"{task}: {title}", fontsize=9)
        paths.append(_save(fig, outdir, f"{name}_{_slug(task)}.png"))
    return paths


def plot_pass_at_k(records, outdir) -> list[str]:
    """Per task: seed-mean final pass@k against k."""

    def xy(rr):
        return (
            np.asarray(rr[0]["ks"], np.float64),
            np.mean([np.asarray(r["final"]["pass_at_k"], np.float64) for r in rr], axis=0),
        )

    return _lines_grid(
        records, outdir, "pass_at_k", "pass@k against k (dashed: β=0)", xy, "k", "pass@k", logx=True
    )


def plot_entropy(records, outdir) -> list[str]:
    """Per task: seed-mean policy entropy over training."""

    def xy(rr):
        h, steps = _mean_history(rr, "entropy")
        return steps, h

    return _lines_grid(
        records, outdir, "entropy", "entropy over training (dashed: β=0)", xy, "step", "entropy"
    )


def plot_bandit(records, outdir) -> list[str]:
    """Per task with bandit entries: final policies (bars, seed mean) vs closed-form optima.

    Grid: rows = (modality, beta), columns = KL choices (+ baseline). Markers: reference
    (grey), reverse-KL optimum (blue), forward-KL optimum (red) for that beta.
    """
    paths = []
    recs = [r for r in records if r.get("bandit")]
    for task in _unique(r["task"] for r in recs):
        tms = [tm for tm in _task_modalities(recs) if tm[0] == task]
        rows = [(m, b) for _, m, _ in tms for b in _betas(recs, task, m)]
        choices = _unique(r["kl_choice"] for r in recs if r["task"] == task and not is_baseline(r))
        has_base = any(is_baseline(r) for r in recs if r["task"] == task)
        cols = choices + ([BASELINE_CHOICE] if has_base else [])
        if not rows or not cols:
            continue
        fig, axes = _new_figure(len(rows), len(cols), w=2.4, h=1.9)
        for i, (modality, beta) in enumerate(rows):
            for j, choice in enumerate(cols):
                ax = axes[i, j]
                rr = (
                    _select(recs, task, modality, baseline=True)
                    if choice == BASELINE_CHOICE
                    else _select(recs, task, modality, beta=beta, choice=choice, baseline=False)
                )
                opt = _select(recs, task, modality, beta=beta, baseline=False)
                if rr:
                    pol = np.array([r["bandit"]["final_policy"] for r in rr], np.float64)
                    a = np.arange(pol.shape[1])
                    ax.bar(
                        a,
                        pol.mean(0),
                        color="0.75",
                        yerr=np.stack([pol.mean(0) - pol.min(0), pol.max(0) - pol.mean(0)]),
                        error_kw={"lw": 0.6},
                    )
                    b0 = opt[0]["bandit"] if opt else rr[0]["bandit"]
                    ax.plot(a, b0["reference"], "_", color="0.3", ms=10, mew=2, label="reference")
                    ax.plot(
                        a,
                        b0["optimum_reverse"],
                        "o",
                        color="tab:blue",
                        ms=3,
                        label="rev-KL optimum",
                    )
                    ax.plot(
                        a, b0["optimum_forward"], "s", color="tab:red", ms=3, label="fwd-KL optimum"
                    )
                ax.set_title(
                    f"{choice}"
                    + ("" if choice == BASELINE_CHOICE else f", β={beta:g}")
                    + f"\n{modality}",
                    fontsize=7,
                )
                ax.tick_params(labelsize=6)
        axes[0, 0].legend(fontsize=5, loc="best")
        fig.suptitle(
            f"{task}: final bandit policies (bars, min-max over seeds) vs closed-form optima",
            fontsize=9,
        )
        paths.append(_save(fig, outdir, f"bandit_{_slug(task)}.png"))
    return paths


def make_figures(records: Sequence[Mapping[str, Any]], outdir: str) -> dict[str, list[str]]:
    """Every figure as PNG under ``outdir``; returns ``{kind: [paths]}``."""
    records = validate_records(records)
    os.makedirs(outdir, exist_ok=True)
    return {
        "mode_shares": plot_mode_shares(records, outdir),
        "frontier": plot_frontier(records, outdir),
        "pass_at_k": plot_pass_at_k(records, outdir),
        "entropy": plot_entropy(records, outdir),
        "bandit": plot_bandit(records, outdir),
    }


# --------------------------------------------------------------------------- markdown


def _fmt(x, digits=3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "nan"
    return f"{x:.{digits}g}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _scale_section(records, notes) -> list[str]:
    seeds = {}
    for r in records:
        seeds.setdefault((r["task"], r["modality"], r["kl_choice"], float(r["beta"])), set()).add(
            r["seed"]
        )
    n_seeds = sorted({len(s) for s in seeds.values()})
    steps = sorted(
        {
            int(r["history"]["step"][-1])
            for r in records
            if r.get("history") and r["history"].get("step")
        }
    )
    derived = {
        "run records": len(records),
        "tasks": ", ".join(_unique(r["task"] for r in records)),
        "modalities": ", ".join(_unique(f"{r['modality']}" for r in records)),
        "KL choices": ", ".join(_choices(records)),
        "betas": ", ".join(f"{b:g}" for b in sorted({float(r['beta']) for r in records})),
        "seeds per (cell, choice)": ", ".join(map(str, n_seeds)),
        "final step": ", ".join(map(str, steps)) if steps else "–",
    }
    lines = ["## Scale of this run", ""]
    lines += [f"- **{k}**: {v}" for k, v in (notes or {}).items()]
    lines += ["", "Derived from the records:", ""]
    lines += [f"- {k}: {v}" for k, v in derived.items()]
    return lines + [""]


def write_report(
    records: Sequence[Mapping[str, Any]],
    outdir: str,
    notes: Mapping[str, Any] | None = None,
    *,
    outcomes: Sequence[str] = OUTCOMES,
    verdict_outcomes: Sequence[str] | None = None,
    thresholds: Mapping[str, Threshold] | None = None,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    method: str = "conservative",
) -> str:
    """Write ``report.md``, ``report.json`` and every PNG figure under ``outdir``.

    Args:
      records: run records (module docstring).
      outdir: created if needed.
      notes: ``{label: value}`` for the "Scale of this run" section (config name, steps,
        wall time, machine, what was shrunk relative to the full config...).
      outcomes: outcomes of the effect-size table; ``verdict_outcomes`` (default: all of
        ``outcomes``) are the ones the verdict uses.
      thresholds: per-outcome :class:`Threshold` overriding ``DEFAULT_THRESHOLDS``.
      n_boot, ci, seed, method: bootstrap settings (:func:`bootstrap_spread`).
    Returns:
      Path of ``report.md``. ``report.json`` holds every table, the verdicts and the figure
      paths (relative to ``outdir``).
    """
    records = validate_records(records)
    os.makedirs(outdir, exist_ok=True)
    thr = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    verdict_outcomes = tuple(outcomes if verdict_outcomes is None else verdict_outcomes)
    rows = effect_sizes(records, outcomes, thr, n_boot=n_boot, ci=ci, seed=seed, method=method)
    ver = verdicts(rows, verdict_outcomes)
    like = behaved_like(records, n_boot=min(n_boot, 1000), seed=seed)
    bandit = bandit_table(records)
    figures = make_figures(records, outdir)

    md = ["# Does the KL choice matter only when the reference is multimodal?", ""]
    md += [
        "Hypothesis: *the choice of KL penalty (forward vs reverse; k1/k2/k3; in the loss vs "
        "in the reward) matters only when the reference policy's token distributions are "
        "multimodal.* Every verdict below is computed from the run records by "
        "`grpo_jax.report`; none is written by hand.",
        "",
    ]
    md += [
        "## Verdict",
        "",
        f"**Overall: {ver['overall']['verdict'].upper()}** — {ver['overall']['reason']}.",
        "",
    ]
    md.append(
        _md_table(
            ["task", "verdict", "reason"],
            [[t["task"], t["verdict"].upper(), t["reason"]] for t in ver["tasks"]],
        )
    )
    md += ["", "Per modality:", ""]
    md.append(
        _md_table(
            ["task", "modality", "multimodal", "verdict", "reason"],
            [
                [
                    m["task"],
                    m["modality"],
                    "yes" if m["multimodal"] else "no",
                    m["verdict"].upper(),
                    m["reason"],
                ]
                for m in ver["modalities"]
            ],
        )
    )
    md += ["", "### How the verdict is computed", "", "```text", VERDICT_RULE, "```", ""]
    md += [
        f"Bootstrap: {n_boot} resamples, {ci:.0%} {method} interval, numpy RNG seed {seed}. "
        f"Verdict outcomes: {', '.join(verdict_outcomes)}. Thresholds (scale = mean |per-choice "
        "mean| in the cell):",
        "",
    ]
    md.append(_md_table(["outcome", "threshold"], [[o, thr[o].describe()] for o in outcomes]))
    md += [
        "",
        "## Effect sizes: spread across KL choices",
        "",
        "Spread = max − min of per-choice seed means (β = 0 / `none` excluded; its mean is "
        "shown as *baseline*). Status: effect (CI above threshold), no effect (CI below), "
        "unresolved.",
        "",
    ]
    for task in _unique(r["task"] for r in rows):
        md += [f"### {task}", ""]
        md.append(
            _md_table(
                [
                    "modality",
                    "β",
                    "outcome",
                    "spread [95% CI]",
                    "threshold",
                    "status",
                    "lowest → highest",
                    "baseline",
                ],
                [
                    [
                        r["modality"],
                        f"{r['beta']:g}",
                        r["outcome"],
                        f"{_fmt(r['spread'])} [{_fmt(r['lo'])}, {_fmt(r['hi'])}]",
                        _fmt(r["threshold"]),
                        r["status"],
                        f"{r['argmin']} ({_fmt(r['means'].get(r['argmin']))}) → "
                        f"{r['argmax']} ({_fmt(r['means'].get(r['argmax']))})",
                        _fmt(r["baseline_mean"]),
                    ]
                    for r in rows
                    if r["task"] == task
                ],
            )
        )
        md.append("")
    md += ["### Per-choice seed means", ""]
    for task, modality, _ in _task_modalities(records):
        for beta in _betas(records, task, modality):
            sel = _select(records, task, modality, beta=beta)
            chs = _unique(r["kl_choice"] for r in sel if not is_baseline(r))
            base = [r for r in sel if is_baseline(r)]
            table = []
            for c, rr in [
                (c, [r for r in sel if r["kl_choice"] == c and not is_baseline(r)]) for c in chs
            ] + ([(BASELINE_CHOICE + " (β=0)", base)] if base else []):
                table.append(
                    [c, len(rr)]
                    + [
                        f"{_fmt(_final(rr, o).mean())} ± {_fmt(_final(rr, o).std())}"
                        for o in outcomes
                    ]
                )
            md += [f"**{task} / {modality} / β={beta:g}** (mean ± sd over seeds)", ""]
            md += [_md_table(["KL choice", "seeds"] + list(outcomes), table), ""]

    md += [
        "## Which divergence each choice behaved like",
        "",
        "Summary: in how many (task, modality, β) cells each choice ended nearest to the exact "
        "forward-KL runs, the exact reverse-KL runs or the unregularised runs (clear answers "
        "only; *behaved like* needs a strict majority of all cells, else *mixed*).",
        "",
        _md_table(
            ["KL choice", "→ forward", "→ reverse", "→ none", "unclear", "behaved like"],
            [
                [b["choice"], b["forward"], b["reverse"], b["none"], b["unclear"], b["verdict"]]
                for b in behaved_like_summary(like)
            ],
        ),
        "",
        "Per cell:",
        "",
        "Distance = L1 between seed-mean final vectors (mode shares when there are ≥ 2 modes, "
        "else (exact KL_rev, exact KL_fwd)) to the exact forward-KL runs, the exact reverse-KL "
        "runs and the unregularised runs of the same cell. *support* = fraction of bootstrap "
        "resamples with the same nearest reference; below 0.95 it is marked unclear.",
        "",
    ]
    if like:
        md.append(
            _md_table(
                [
                    "task",
                    "modality",
                    "β",
                    "KL choice",
                    "metric",
                    "to fwd",
                    "to rev",
                    "to none",
                    "nearest",
                    "support",
                ],
                [
                    [
                        b["task"],
                        b["modality"],
                        f"{b['beta']:g}",
                        b["choice"],
                        b["metric"],
                        _fmt(b["dist"].get("forward")),
                        _fmt(b["dist"].get("reverse")),
                        _fmt(b["dist"].get("none")),
                        b["nearest"],
                        f"{b['support']:.2f}",
                    ]
                    for b in like
                ],
            )
        )
    else:
        md.append("_No exact forward/reverse-KL reference runs in the records._")
    md.append("")
    if bandit:
        md += [
            "## Bandit: final policies against the closed-form optima",
            "",
            "Seed-mean total variation distance of the final policy to the reverse-KL optimum "
            "π ∝ π_ref·exp(R/β), to the forward-KL optimum π = β·π_ref/(λ − R), and to the "
            "reference.",
            "",
        ]
        md.append(
            _md_table(
                [
                    "task",
                    "modality",
                    "β",
                    "KL choice",
                    "TV to rev opt",
                    "TV to fwd opt",
                    "TV to ref",
                    "nearer",
                ],
                [
                    [
                        b["task"],
                        b["modality"],
                        f"{b['beta']:g}",
                        b["choice"],
                        _fmt(b["tv_reverse"]),
                        _fmt(b["tv_forward"]),
                        _fmt(b["tv_reference"]),
                        b["nearer"],
                    ]
                    for b in bandit
                ],
            )
        )
        md.append("")
    md += ["## Figures", ""]
    titles = {
        "mode_shares": "Mode shares over training",
        "frontier": "Reward against exact KL",
        "pass_at_k": "pass@k against k",
        "entropy": "Entropy over training",
        "bandit": "Bandit final policies against closed-form optima",
    }
    for kind, paths in figures.items():
        if not paths:
            continue
        md += [f"### {titles[kind]}", ""]
        md += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in paths]
        md.append("")
    md += _scale_section(records, notes)

    path = os.path.join(outdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(outdir, "report.json"), "w") as f:
        json.dump(
            {
                "verdicts": ver,
                "effect_sizes": rows,
                "behaved_like": like,
                "behaved_like_summary": behaved_like_summary(like),
                "bandit": bandit,
                "figures": {k: [os.path.basename(p) for p in v] for k, v in figures.items()},
                "notes": {str(k): str(v) for k, v in (notes or {}).items()},
                "settings": {
                    "n_boot": n_boot,
                    "ci": ci,
                    "seed": seed,
                    "method": method,
                    "verdict_outcomes": list(verdict_outcomes),
                    "thresholds": {o: dataclasses.asdict(thr[o]) for o in outcomes},
                },
            },
            f,
            indent=1,
            allow_nan=True,
        )
    return path
