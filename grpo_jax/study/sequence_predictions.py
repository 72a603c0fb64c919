"""Closed-form predictions for the study in sequences (grpo_jax/configs/sequence_predictions.py).

    rows = predict(config)          # one row per (reference, reward)
    text = markdown(rows, config)

Per fork reference and reward: Z0, the reference's expected reward, and forward - reverse
in the declared outcome at each declared fraction of the attainable improvement, for the
per-node targets (the KL per token in the loss) and for the sequence-level optima, all by
exact enumeration (groups.optimum_curves at `level` "node" and "sequence").
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from grpo_jax import tasks
from grpo_jax.study import groups
from grpo_jax.study.report.frontier import common_target
from grpo_jax.study.report.tables import fmt, table

LEVELS = {"node": "per token, in the loss", "sequence": "sequence KL"}


def delta_at(curves, target: float, outcome: str) -> float:
    """forward - reverse in `outcome` at reward `target`, each interpolated along its beta
    curve (reward sorted); NaN where a direction's curve does not reach `target`."""
    out = []
    for direction in ("forward", "reverse"):
        r = np.asarray(curves[direction]["reward"])
        o = np.asarray(curves[direction][outcome])
        order = np.argsort(r)
        if not r.min() <= target <= r.max():
            return float("nan")
        out.append(float(np.interp(target, r[order], o[order])))
    return out[0] - out[1]


def predict(config) -> list[dict[str, Any]]:
    """One row per (reference, reward): label, reward, multimodal, z0, ref_reward, and
    deltas {level: [one per fraction]}."""
    rows = []
    for ref in config.references:
        for reward in config.rewards:
            fields = {k: v for k, v in dict(reward).items() if k != "name"}
            task = tasks.make("fork", **dict(ref["fork"]), **fields)
            vec = groups.task_vectors(task)
            ref_reward = float(vec["ref"] @ vec["reward"])
            targets = [
                common_target(ref_reward, f, float(vec["reward"].max())) for f in config.fractions
            ]
            deltas = {}
            for level in LEVELS:
                curves = groups.optimum_curves(task, config.betas, level)
                deltas[level] = [delta_at(curves, t, config.outcome) for t in targets]
            rows.append(
                dict(
                    reference=ref["label"],
                    reward=reward["name"],
                    multimodal=bool(ref["multimodal"]),
                    z0=task.zero_reward_mass(),
                    ref_reward=ref_reward,
                    deltas=deltas,
                )
            )
    return rows


def markdown(rows: Sequence[Mapping[str, Any]], config) -> str:
    """The predictions table: one row per (reward, reference)."""
    fr = list(config.fractions)
    head = ["reward", "reference", "Z0", "E_ref[R]"] + [
        f"{LEVELS[level]}, f = {f:g}" for level in LEVELS for f in fr
    ]
    body = [
        [r["reward"], r["reference"], fmt(r["z0"], 3), fmt(r["ref_reward"], 3)]
        + [f"{d:+.4f}" for level in LEVELS for d in r["deltas"][level]]
        for r in sorted(rows, key=lambda r: [w["name"] for w in config.rewards].index(r["reward"]))
    ]
    lines = [
        f"forward − reverse in {config.outcome} at fractions f of the attainable improvement "
        "(closed forms, exact enumeration; fork task, V = 8, T = 3):",
        "",
    ]
    return "\n".join(lines + table(head, body))
