"""The Gaussian policy class against its own exact optima: where GRPO ends, by starting point.

`optima_by_modality` computes, per reference, the maxima of J = E[R] - beta D over (mean,
log-std) along the declared betas and at every beta the runs used
(grpo_jax/study/gaussian_optima.py); `basins` assigns each final Gaussian run to the nearest
maximum at its own beta (total variation between the run's policy and the maximum's), so the
report can say whether a sweep's jump is GRPO crossing between two maxima of a bistable
objective or a first-order change of the global one, and whether a run from another start
ends elsewhere.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from grpo_jax.study import gaussian_optima as go

DIRECTIONS = {"exact_fwd/loss": "forward", "exact_rev/loss": "reverse"}
# A run farther than this (total variation) from every maximum at its beta is "unsettled".
SETTLED_TV = 0.1


def optima_by_modality(vectors: Mapping[str, Mapping[str, Any]], betas) -> dict[str, dict]:
    """{modality: gaussian_optima.summary(...)} over `betas` (JSON-serialisable)."""
    return {
        label: go.summary(v["reward"], v["ref"], sorted(float(b) for b in betas))
        for label, v in vectors.items()
    }


def _probs(mean: float, std: float, num_answers: int) -> np.ndarray:
    return np.exp(go.log_probs([mean], [np.log(std)], num_answers)[0, 0])


def basins(records: Sequence[Mapping[str, Any]], vectors) -> list[dict]:
    """One row per (modality, arm, start) of the Gaussian class's primary arms (replicate 0):
    how many runs (over betas and seeds) end at the global maximum of their beta, at another
    (local) maximum, or nowhere near one (TV > SETTLED_TV), and the betas that are bistable."""
    runs: dict[tuple, list] = {}
    for r in records:
        if r["policy"] != "gaussian" or r["replicate"] != 0 or r["arm"] not in DIRECTIONS:
            continue
        if r["modality"] not in vectors:
            continue
        key = (r["modality"], r["arm"], r.get("start", "fit"))
        runs.setdefault(key, []).append(r)
    rows = []
    for (modality, arm, start), rs in runs.items():
        v = vectors[modality]
        betas = sorted({r["strength"] for r in rs})
        maxima = dict(zip(betas, go.optima(v["reward"], v["ref"], betas, DIRECTIONS[arm])))
        counts = {"global": 0, "local": 0, "unsettled": 0}
        for r in rs:
            p = np.asarray(r["policy_probs"], np.float64)
            tvs = [
                0.5 * np.abs(p - _probs(m.mean, m.std, p.size)).sum() for m in maxima[r["strength"]]
            ]
            k = int(np.argmin(tvs))
            counts["unsettled" if tvs[k] > SETTLED_TV else "global" if k == 0 else "local"] += 1
        rows.append(
            dict(
                modality=modality,
                arm=arm,
                start=start,
                runs=len(rs),
                **counts,
                bistable=[b for b in betas if len(maxima[b]) >= 2],
            )
        )
    order = {"fit": 0, "rewarded_mode": 1, "middle": 2}
    return sorted(rows, key=lambda x: (x["modality"], x["arm"], order.get(x["start"], 9)))
