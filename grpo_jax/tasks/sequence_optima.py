"""Closed-form targets of KL-regularised GRPO on an enumerable sequence task.

A policy over completions of length T from V tokens is a joint ``[..., V^T]`` (lexicographic
order, leading axes = prompts) or, equivalently, its autoregressive conditionals, one table
per position ``tables[t]: [..., V^t, V]`` (`core.tables`: `conditionals`,
`joint_from_tables`, re-exported here). With reward R(y) and reference ref, four targets
(docs/design.md, 'The study in sequences'), all float64 NumPy:

  sequence_optimum(R, ref, beta, "reverse")   pi*(y) ∝ ref(y) exp(R(y) / beta): the maximiser
                                              of E_pi[R] - beta KL(pi || ref) over sequences,
                                              which k1 in the reward with reward-to-go reaches
  sequence_optimum(R, ref, beta, "forward")   pi*(y) = beta ref(y) / (lam - R(y)): the
                                              maximiser of E_pi[R] - beta KL(ref || pi)
  per_node_optimum(R, ref_tables, beta, d)    the stationary point of the KL placed in the
                                              loss (no gradient through the sampling of
                                              prefixes): at every prefix h, pi(.|h) maximises
                                              sum_y pi(y|h) Q_R(h, y) - beta D(pi(.|h), ref(.|h)),
                                              Q_R the expected reward of continuing with y
                                              under pi itself (no downstream KL): solved by
                                              backward induction from the last position

The per-node forward target is GRPO's `exact_fwd/loss` (and, in expectation, `k3/loss`)
evaluated on the policy's own prefixes; it is neither the sequence forward optimum (the
forward KL over sequences is a sum over the *reference's* prefixes) nor, for the reverse
KL, the sequence reverse optimum (placement in the loss drops the future-KL term).
"""

from __future__ import annotations

import numpy as np

from grpo_jax.core import kl
from grpo_jax.core.tables import check_joint, conditionals, joint_from_tables
from grpo_jax.tasks.bandit import regularised_optimum

__all__ = [
    "conditionals",
    "joint_from_tables",
    "per_node_optimum",
    "regularised_optimum",
    "sequence_optimum",
]


def _betas(beta, rewards, batch: tuple[int, ...]):
    """(beta broadcastable to [N?, ..., rows, V], rewards broadcast to the reference's batch
    shape `batch` [..., V^T], with a leading N axis if beta is an array of N values)."""
    b = np.asarray(beta, np.float64)
    r = np.asarray(rewards, np.float64)
    try:
        r = np.broadcast_to(r, batch + r.shape[-1:])
    except ValueError:
        raise ValueError(
            f"rewards {r.shape} do not broadcast to the reference's batch {batch} + [V^T]"
        ) from None
    if b.ndim == 0:
        return b, r
    if b.ndim != 1:
        raise ValueError(f"beta must be a number or a 1-D array of betas, got shape {b.shape}")
    return b.reshape(b.shape + (1,) * (r.ndim + 1)), np.broadcast_to(r, b.shape + r.shape)


def sequence_optimum(rewards, ref, beta, direction: str) -> np.ndarray:
    """The maximiser of ``E_pi[R] - beta D(pi, ref)`` over joints (D the sequence KL in
    `direction`), per prompt: ``rewards``, ``ref [..., V^T]`` -> ``[..., V^T]``; with
    ``beta [N]``, one per beta: ``[N, ..., V^T]``."""
    ref = np.asarray(ref, np.float64)
    b, r = _betas(beta, rewards, ref.shape[:-1])
    return regularised_optimum(r, ref, b[..., 0] if b.ndim else b, direction)


def per_node_optimum(rewards, ref_tables, beta, direction: str) -> list[np.ndarray]:
    """The stationary point of the KL placed in the loss (module docstring), by backward
    induction: at the last position ``pi(.|h)`` solves the one-step problem with the
    rewards; at position t with ``Q_R(h, y)`` = the value of the prefix h y under the
    positions after t, already solved. Returns the policy's tables ``[..., V^t, V]`` (with
    ``beta [N]``: ``[N, ..., V^t, V]``, one policy per beta)."""
    kl.validate_direction(direction)
    v, length = ref_tables[0].shape[-1], len(ref_tables)
    b, r = _betas(beta, rewards, np.shape(ref_tables[0])[:-2])
    batch = check_joint(r, v, length)
    tables: list = [None] * length
    q = r.reshape(batch + (v ** (length - 1), v))
    for t in range(length - 1, -1, -1):
        tables[t] = regularised_optimum(q, ref_tables[t], b, direction)
        if t:
            q = np.sum(tables[t] * q, axis=-1).reshape(batch + (v ** (t - 1), v))
    return tables
