"""The abandoned-mass dial: forward - reverse along the reward frontier, and its regression on
Z0 (the reference's mass on zero-reward answers) with a modality term.

On the full simplex both closed-form optima depend on the reference only through the pairs
(ref(y), R(y)), so at matched reward the forward - reverse difference in off-target mass is
about proportional to Z0, whatever the modes (docs/design.md, 'The math'). Whether
*modality* adds anything is then a question about the coefficient of a modality term once Z0
is in the model. Two pieces:

  common_target(ref_reward, fraction)  r(f) = E_ref[R] + f (max R - E_ref[R]): the same
                                        point of the attainable improvement for every
                                        reference (the declared r* is a fraction of each
                                        sweep's own range, which differs between references)
  regression(z0, multimodal, deltas)   weighted least squares of per-reference Delta on
                                        (1, Z0, multimodal), weights 1 / se^2, the
                                        covariance scaled up by the residual dispersion when
                                        it exceeds the seeds' errors; t intervals

and, on `analysis`'s seed-paired differences (`delta(policy, modality, target)`):

  frontier_rows(...)                   Delta at each declared fraction, every reference
  z0_rows(...)                         per policy class: the regression at the declared
                                        fraction, the modality answer, and Delta / Z0 of
                                        every unimodal reference against its relative margin

Plain NumPy/SciPy on host data; the coefficients are `inference.Estimate`s, so the
equivalence tests of the decision rule apply to them unchanged.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from grpo_jax.study.report import inference as inf

TERMS = ("intercept", "z0", "multimodal")


def common_target(ref_reward: float, fraction: float, max_reward: float = 1.0) -> float:
    """The reward at `fraction` of the attainable improvement over the reference."""
    return float(ref_reward + fraction * (max_reward - ref_reward))


def reference_point(vec: Mapping[str, np.ndarray]) -> dict[str, float]:
    """{"z0", "ref_reward", "max_reward"} of a reference's answer vectors
    (`groups.task_vectors`: "ref", "reward", "zero")."""
    return {
        "z0": float(vec["ref"][vec["zero"]].sum()),
        "ref_reward": float(vec["ref"] @ vec["reward"]),
        "max_reward": float(np.max(vec["reward"])),
    }


def target_of(ref: Mapping[str, float], fraction: float) -> float:
    """`common_target` of a reference's {"ref_reward", "max_reward" (default 1)}."""
    return common_target(ref["ref_reward"], fraction, ref.get("max_reward", 1.0))


def regression(
    z0: Sequence[float],
    multimodal: Sequence[bool],
    means: Sequence[float],
    ses: Sequence[float],
    level: float = 0.95,
) -> dict[str, inf.Estimate]:
    """Delta_j = a + b Z0_j + c multimodal_j, by weighted least squares over references j
    (weights 1 / se_j^2). The coefficients' covariance is (X'WX)^-1 times max(1, chi2 / df):
    the seeds' errors when the model fits within them, the residual spread when it does not
    (a misspecified line must not look precise). t intervals with df = n - 3.
    Raises ValueError with fewer than 4 references or without both kinds of reference."""
    z = np.asarray(z0, np.float64)
    m = np.asarray(multimodal, bool).astype(np.float64)
    y = np.asarray(means, np.float64)
    se = np.asarray(ses, np.float64)
    if not (z.shape == m.shape == y.shape == se.shape):
        raise ValueError(
            f"z0 {z.shape}, multimodal {m.shape}, means {y.shape} and ses {se.shape} "
            "must have one entry per reference"
        )
    if z.size < 4 or m.min() == m.max():
        raise ValueError(
            f"the Z0 regression needs >= 4 references of both kinds; got {z.size} "
            f"({int(m.sum())} multimodal)"
        )
    x = np.stack([np.ones_like(z), z, m], axis=1)
    w = 1.0 / np.maximum(se, 1e-12) ** 2
    xtwx = x.T @ (w[:, None] * x)
    cov = np.linalg.inv(xtwx)
    beta = cov @ (x.T @ (w * y))
    df = z.size - x.shape[1]
    chi2 = float(np.sum(w * (y - x @ beta) ** 2))
    cov = cov * max(1.0, chi2 / df)
    out = {}
    for k, name in enumerate(TERMS):
        s = float(math.sqrt(cov[k, k]))
        mean = float(beta[k])
        low, high = inf._interval(mean, s, df, level, (-math.inf, math.inf))
        p = inf._p(mean, s, df)
        out[name] = inf.Estimate(
            mean, s, df, int(z.size), s * math.sqrt(z.size), low, high, level,
            (-math.inf, math.inf), p, p,
        )  # fmt: skip
    out["dispersion"] = chi2 / df  # type: ignore[assignment]
    return out


def modality_answer(c: inf.Estimate, margin: float, alpha: float = 0.05, sign: int = 1) -> str:
    """Does modality add once Z0 is in the model? "yes" when the modality coefficient is
    significant with the predicted sign, "no" when it is equivalent to 0 within `margin`
    (TOST), "opposite" when significant with the other sign, else "undecided"."""
    if c.p < alpha:
        return "yes" if np.sign(c.mean) == sign else "opposite"
    if c.tost_p(margin) < alpha:
        return "no"
    return "undecided"


def relative_answer(e: Mapping[str, float], z0: float, margin: float, alpha=0.05) -> str:
    """Is Delta / Z0 within the relative margin? `e` an `Estimate.as_dict()`: "beyond" when
    its (1 - alpha) interval divided by Z0 lies outside [-margin, margin], "within" when
    the (1 - 2 alpha) interval (TOST) lies inside, else "undecided"."""
    if z0 <= 0:
        return "undecided"
    lo, hi = inf._interval(e["mean"], e["se"], e["df"], 1 - alpha, (-math.inf, math.inf))
    if lo / z0 > margin or hi / z0 < -margin:
        return "beyond"
    lo, hi = inf._interval(e["mean"], e["se"], e["df"], 1 - 2 * alpha, (-math.inf, math.inf))
    return "within" if -margin < lo / z0 and hi / z0 < margin else "undecided"


def frontier_rows(delta, policies, mods, refs, fractions) -> list[dict]:
    """Forward - reverse at the common targets: one row per policy, reference and fraction.

    delta(policy, modality, target) -> `inference.Estimate` or None (fewer than the needed
    seeds matchable there); mods: (label, multimodal, separation, num_modes); refs:
    {label: {"z0", "ref_reward", "max_reward"}}."""
    rows = []
    for p in policies:
        for label, multi, sep, k in mods:
            if label not in refs:
                continue
            for f in fractions:
                t = target_of(refs[label], float(f))
                est = delta(p, label, t)
                rows.append(
                    dict(
                        policy=p,
                        modality=label,
                        multimodal=bool(multi),
                        num_modes=int(k),
                        z0=float(refs[label]["z0"]),
                        fraction=float(f),
                        target=t,
                        estimate=None if est is None else est.as_dict(),
                    )
                )
    return rows


def z0_rows(rows, fraction, margin, relative_margin, alpha=0.05, sign=1) -> list[dict]:
    """Per policy class, at `fraction`: the regression of Delta on (Z0, multimodal) over the
    references comparable there, the modality answer against the absolute `margin`, and
    each unimodal reference's Delta / Z0 against `relative_margin`."""
    out = []
    for p in dict.fromkeys(r["policy"] for r in rows):
        sel = [
            r
            for r in rows
            if r["policy"] == p and r["fraction"] == fraction and r["estimate"] is not None
        ]
        rel = [
            dict(
                modality=r["modality"],
                z0=r["z0"],
                ratio=r["estimate"]["mean"] / r["z0"] if r["z0"] > 0 else None,
                answer=relative_answer(r["estimate"], r["z0"], relative_margin, alpha),
            )
            for r in sel
            if not r["multimodal"]
        ]
        row = dict(policy=p, fraction=fraction, references=[r["modality"] for r in sel])
        try:
            fit = regression(
                [r["z0"] for r in sel],
                [r["multimodal"] for r in sel],
                [r["estimate"]["mean"] for r in sel],
                [r["estimate"]["se"] for r in sel],
            )
        except ValueError as e:
            row.update(fit=None, why=str(e), modality_adds="not comparable", relative=rel)
        else:
            row.update(
                fit={k: fit[k].as_dict() for k in TERMS},
                dispersion=float(fit["dispersion"]),
                modality_adds=modality_answer(fit["multimodal"], margin, alpha, sign),
                relative=rel,
            )
        out.append(row)
    return out
