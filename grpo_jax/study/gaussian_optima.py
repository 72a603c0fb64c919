"""Exact KL-regularised optima of the Gaussian policy class, by a grid over (mean, log-std).

The study's "gaussian" policy (grpo_jax/models/policies.py: one discretised Gaussian over the
answers 0..A-1) cannot reach the closed-form optima of the full simplex; its own optima at
strength beta maximise

    J(m, s) = E_pi[R] - beta * D(pi, ref),   pi(y) ∝ exp(-(y - m)^2 / (2 s^2)), y = 0..A-1,

over the two parameters (the mean is not bounded by the answers: a far mean with a wide std is
a ramp over them). J can have two maxima (a wide state near the reference and a
state locked onto the rewarded mode): then which one GRPO reaches depends on where it
starts, and the beta range where both exist is *bistable*. Everything here is exact
enumeration (plain NumPy, float64): a grid finds the candidates, a local search
(Nelder-Mead, unconstrained in (mean, log-std)) polishes each; so a global maximum off the
grid (a ramp, the mean far outside the answers) is still found from the grid's edge (local
maxima are searched inside the grid only):

  objective_grid(reward, ref, means, log_stds) -> (reward, KL_rev, KL_fwd) per grid point
  optima(reward, ref, betas, direction)       -> per beta: the global maximum and every
                                                 distinct local one, and whether bistable
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy import optimize

# Local maxima closer than these are one state (J ripples on the grid where it is flat):
# means within MERGE_MEAN of the wider one's standard deviation (or within 2 answers) and
# standard deviations within a factor MERGE_STD.
MERGE_MEAN = 0.5
MERGE_STD = 1.5
# Below this standard deviation a discretised Gaussian is one or two answers: J ripples with
# the mean's position between integers, so local maxima there are grid artefacts (the global
# maximum is still searched everywhere).
MIN_LOCAL_STD = 0.6


def default_grid(num_answers: int) -> tuple[np.ndarray, np.ndarray]:
    """Means every quarter answer over [-0.5, A - 0.5]; 96 log-stds from 0.25 to A."""
    means = np.arange(-0.5, num_answers - 0.5 + 1e-9, 0.25)
    log_stds = np.linspace(np.log(0.25), np.log(float(num_answers)), 96)
    return means, log_stds


def log_probs(means, log_stds, num_answers: int) -> np.ndarray:
    """[M, S, A] log-probabilities of the discretised Gaussians of the grid."""
    y = np.arange(num_answers, dtype=np.float64)
    m = np.asarray(means, np.float64)[:, None, None]
    s = np.exp(np.asarray(log_stds, np.float64))[None, :, None]
    z = -0.5 * ((y - m) / s) ** 2
    return z - np.logaddexp.reduce(z, axis=-1, keepdims=True)


def objective_grid(reward, ref, means, log_stds) -> dict[str, np.ndarray]:
    """Exact reward, KL[pi || ref] and KL[ref || pi] of every grid policy: each [M, S]."""
    r = np.asarray(reward, np.float64)
    q = np.asarray(ref, np.float64)
    q = q / q.sum()
    logp = log_probs(means, log_stds, r.size)
    p = np.exp(logp)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = np.log(q)
        kl_rev = np.sum(np.where(p > 0, p * (logp - log_q), 0.0), axis=-1)
        kl_fwd = np.sum(np.where(q > 0, q * (log_q - logp), 0.0), axis=-1)
    return {"reward": p @ r, "kl_rev": kl_rev, "kl_fwd": kl_fwd}


def _local_maxima(j: np.ndarray) -> np.ndarray:
    """Boolean [M, S]: interior cells at least as large as each of their 8 neighbours (a
    maximum on the grid's edge is the edge's, not J's)."""
    m, s = j.shape
    keep = np.zeros_like(j, dtype=bool)
    inner = j[1:-1, 1:-1]
    ok = np.ones_like(inner, dtype=bool)
    for dm in (-1, 0, 1):
        for ds in (-1, 0, 1):
            if dm or ds:
                ok &= inner >= j[1 + dm : m - 1 + dm, 1 + ds : s - 1 + ds]
    keep[1:-1, 1:-1] = ok
    return keep


@dataclasses.dataclass
class Maximum:
    """One maximum of J at one beta: parameters, objective, and the policy's exact values."""

    mean: float
    std: float
    objective: float
    reward: float
    kl_rev: float
    kl_fwd: float
    is_global: bool


def _polish(start, reward, q, beta, direction) -> Maximum:
    """A local search from a grid cell (mean, log-std) to the maximum of J it climbs to."""

    def values(x):
        g = objective_grid(reward, q, [x[0]], [x[1]])
        return {k: float(v[0, 0]) for k, v in g.items()}

    def neg_j(x):
        v = values(x)
        return -(v["reward"] - beta * v["kl_rev" if direction == "reverse" else "kl_fwd"])

    fit = optimize.minimize(
        neg_j, np.asarray(start, np.float64), method="Nelder-Mead",
        options=dict(xatol=1e-5, fatol=1e-12, maxiter=600),
    )  # fmt: skip
    x = fit.x if fit.fun <= neg_j(start) else np.asarray(start, np.float64)
    v = values(x)
    return Maximum(
        float(x[0]), float(np.exp(x[1])), -float(neg_j(x)), v["reward"], v["kl_rev"], v["kl_fwd"],
        is_global=False,
    )  # fmt: skip


def _merge(cands: list[Maximum]) -> list[Maximum]:
    """Distinct states, best first (see MERGE_MEAN, MERGE_STD)."""
    out: list[Maximum] = []
    for c in sorted(cands, key=lambda c: -c.objective):
        if not any(
            abs(c.mean - o.mean) <= max(2.0, MERGE_MEAN * max(c.std, o.std))
            and max(c.std, o.std) / min(c.std, o.std) <= MERGE_STD
            for o in out
        ):
            out.append(c)
    return out


def optima(
    reward,
    ref,
    betas: Sequence[float],
    direction: str,
    grid: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[list[Maximum]]:
    """Per beta, the distinct maxima of J (global first): a list of `Maximum`. Two or more
    means the beta is bistable (`bistable`). `direction`: "reverse" (D = KL[pi || ref]) or
    "forward" (D = KL[ref || pi])."""
    if direction not in ("reverse", "forward"):
        raise ValueError(f"direction must be 'reverse' or 'forward', got {direction!r}")
    means, log_stds = default_grid(len(reward)) if grid is None else grid
    g = objective_grid(reward, ref, means, log_stds)
    d = g["kl_rev"] if direction == "reverse" else g["kl_fwd"]
    stds = np.exp(log_stds)
    wide = stds >= MIN_LOCAL_STD
    out = []
    for beta in np.asarray(betas, np.float64):
        j = g["reward"] - beta * d
        cells = [np.unravel_index(np.argmax(j), j.shape)]
        loc = _local_maxima(j[:, wide])
        cells += [(a, b + int(np.argmax(wide))) for a, b in zip(*np.nonzero(loc))]
        cands = [_polish((means[a], log_stds[b]), reward, ref, beta, direction) for a, b in cells]
        best = int(np.argmax([c.objective for c in cands]))
        cands[best] = dataclasses.replace(cands[best], is_global=True)
        out.append(_merge(cands))
    return out


def bistable(maxima: Sequence[Sequence[Maximum]]) -> np.ndarray:
    """[len(betas)] bool: J has two or more distinct maxima at that beta."""
    return np.asarray([len(m) >= 2 for m in maxima])


def summary(reward, ref, betas, grid=None) -> dict[str, dict[str, list]]:
    """{direction: {"beta", "global" (reward, kl_rev, kl_fwd, mean, std per beta),
    "local" (the other maxima as [beta, reward, kl_rev, kl_fwd, mean, std] rows),
    "bistable"}} for the report and its figure (JSON-serialisable)."""
    out = {}
    keys = ("reward", "kl_rev", "kl_fwd", "mean", "std")
    for direction in ("forward", "reverse"):
        mx = optima(reward, ref, betas, direction, grid)
        out[direction] = {
            "beta": [float(b) for b in betas],
            "global": {k: [getattr(m[0], k) for m in mx] for k in keys},
            "local": [
                [float(b)] + [getattr(o, k) for k in keys] for b, m in zip(betas, mx) for o in m[1:]
            ],
            "bistable": bistable(mx).tolist(),
        }
    return out
