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


from grpo_jax import tasks
from grpo_jax.study import groups
from grpo_jax.study.report.analysis import closed_form_delta
from grpo_jax.study.report.frontier import reference_point, target_of
from grpo_jax.study.report.tables import fmt, table

LEVELS = {"node": "per token, in the loss", "sequence": "sequence KL"}


def predict(config) -> list[dict[str, Any]]:
    """One row per (reference, reward): label, reward, multimodal, z0, ref_reward, and
    deltas {level: [one per fraction]}."""
    rows = []
    for ref in config.references:
        for reward in config.rewards:
            fields = {k: v for k, v in dict(reward).items() if k != "name"}
            task = tasks.make("fork", **dict(ref["fork"]), **fields)
            point = reference_point(groups.task_vectors(task))
            targets = [target_of(point, f) for f in config.fractions]
            deltas = {}
            for level in LEVELS:
                curves = groups.optimum_curves(task, config.betas, level)
                deltas[level] = [
                    float(closed_form_delta(curves, config.outcome, t)) for t in targets
                ]
            rows.append(
                dict(
                    reference=ref["label"],
                    reward=reward["name"],
                    multimodal=bool(ref["multimodal"]),
                    z0=point["z0"],
                    ref_reward=point["ref_reward"],
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
        + [f"{round(d, 4) + 0.0:+.4f}" for level in LEVELS for d in r["deltas"][level]]
        for r in sorted(rows, key=lambda r: [w["name"] for w in config.rewards].index(r["reward"]))
    ]
    f0 = config.references[0]["fork"]
    lines = [
        f"forward − reverse in {config.outcome} at fractions f of the attainable improvement "
        f"(closed forms, exact enumeration; fork task, V = {f0['num_tokens']}, "
        f"T = {f0['length']}):",
        "",
    ]
    return "\n".join(lines + table(head, body))
