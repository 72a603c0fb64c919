"""Autoregressive tables of enumerable sequences (NumPy, float64).

A distribution over the V^T sequences of length T (lexicographic order, leading axes free,
e.g. prompts) is a joint ``[..., V^T]`` or, equivalently, one table of conditionals per
position, ``tables[t]: [..., V^t, V]`` with ``tables[t][..., h, y] = P(y_t = y | y_<t = h)``
(row h = the prefix's lexicographic index): the layout of `core.audit`'s sequence tables and
of `models.policies.SequenceTabularPolicy`'s parameters.
"""

from __future__ import annotations

import numpy as np


def check_joint(joint, vocab_size: int, length: int) -> tuple[int, ...]:
    """The leading (batch) shape of a joint ``[..., V^T]``; ValueError naming the shape."""
    joint = np.asarray(joint)
    if joint.ndim < 1 or joint.shape[-1] != vocab_size**length:
        raise ValueError(
            f"a joint over {vocab_size}^{length} sequences needs a last axis of "
            f"{vocab_size**length}, got shape {joint.shape}"
        )
    return joint.shape[:-1]


def conditionals(joint, vocab_size: int, length: int) -> list[np.ndarray]:
    """The tables ``[..., V^t, V]`` of a joint ``[..., V^T]`` (uniform after a prefix of
    mass 0)."""
    p = np.asarray(joint, np.float64)
    batch = check_joint(p, vocab_size, length)
    out = []
    for t in range(length):
        marg = p.reshape(batch + (vocab_size ** (t + 1), -1)).sum(-1)  # P(y_<=t)
        marg = marg.reshape(batch + (vocab_size**t, vocab_size))
        total = marg.sum(-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(total > 0, marg / total, 1.0 / vocab_size))
    return out


def log_joint_from_tables(log_tables) -> np.ndarray:
    """The log-joint ``[..., V^T]`` of log-conditional tables: a sum, so a sequence far below
    float64's smallest probability keeps a finite log-probability."""
    lp = np.asarray(log_tables[0], np.float64)  # [..., 1, V]
    batch = lp.shape[:-2]
    lp = lp.reshape(batch + (-1,))
    for table in log_tables[1:]:
        lp = (lp[..., :, None] + np.asarray(table, np.float64)).reshape(batch + (-1,))
    return lp


def joint_from_tables(tables) -> np.ndarray:
    """The joint ``[..., V^T]`` of tables (the inverse of `conditionals`)."""
    with np.errstate(divide="ignore"):  # log 0 = -inf: those sequences get probability 0
        return np.exp(log_joint_from_tables([np.log(np.asarray(t, np.float64)) for t in tables]))
