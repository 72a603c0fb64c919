"""Stage 0 of the study in sequences: closed-form predictions on the fork task, before any run.

  python experiments/sequence_predictions.py --workdir runs/sequence_predictions

For each fork reference (grpo_jax/tasks/fork.py: V = 8 tokens, T = 3 positions, K branches
forking at depth d, slip rate e) and each reward (`rewards`), the four targets of
tasks.sequence_optima along beta: what GRPO's per-token exact KL in the loss reaches
(`exact_fwd/loss`, `exact_rev/loss`: the per-node targets) and the sequence-level optima
(`k1/reward` reaches the reverse one; maximum likelihood on reference samples the forward
one). The prediction is forward - reverse in off-target mass at common fractions of each
reference's attainable improvement (reward E_ref[R] + f (max R - E_ref[R])), per level,
beside Z0 (the reference's mass on zero-reward completions).

These choose the sequence study's reward before it runs: with a 0/1 reward the two
sequence optima coincide at matched reward (both scale each reward level by a constant), so
only graded rewards can show a direction effect.
"""

from __future__ import annotations

import ml_collections
import numpy as np

NUM_TOKENS, LENGTH = 8, 3


def fork_fields(branches: int, depth: int, slip: float, target_weight: float = 0.5) -> dict:
    """Fork task fields (one prompt, V = 8, T = 3): the target branch (the last) has weight
    `target_weight` in a branching reference, the others share the rest equally."""
    w = 1.0 if branches == 1 else target_weight
    weights = [1.0] if branches == 1 else [(1 - w) / (branches - 1)] * (branches - 1) + [w]
    return dict(
        num_prompts=1,
        num_tokens=NUM_TOKENS,
        length=LENGTH,
        num_branches=branches,
        fork_depth=depth,
        slip=slip,
        weights=weights,
    )


def _reference(label, branches, depth, slip) -> dict:
    fork = fork_fields(branches, depth, slip)
    return dict(label=label, multimodal=branches > 1, fork=fork)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: "" (the default), "tiny" (tests: two references, one reward, 20 betas)."""
    c = ml_collections.ConfigDict()
    c.references = [
        _reference("1 branch, e 0.26", 1, 0, 0.26),
        _reference("1 branch, e 0.07", 1, 0, 0.07),
        _reference("2 branches, d=0", 2, 0, 0.07),
        _reference("2 branches, d=1", 2, 1, 0.07),
        _reference("2 branches, d=2", 2, 2, 0.07),
        _reference("4 branches, d=1", 4, 1, 0.07),
    ]
    # Each reward: a name and its Fork fields ("exact" with partial_reward 0 is the 0/1 one).
    c.rewards = [
        dict(name="0/1", reward_kind="exact", partial_reward=0.0),
        dict(name="other branches 0.5", reward_kind="exact", partial_reward=0.5),
        dict(name="one token off 0.5", reward_kind="near", partial_reward=0.5),
        dict(name="hamming", reward_kind="hamming", partial_reward=0.0),
    ]
    c.fractions = [0.3, 0.5, 0.7]
    c.outcome = "off_target"
    c.betas = [float(b) for b in np.geomspace(0.005, 5.0, 120)]
    if arg == "tiny":
        c.references = c.references[:1] + c.references[3:4]
        c.rewards = c.rewards[2:3]
        c.betas = [float(b) for b in np.geomspace(0.01, 5.0, 20)]
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; valid: '' or 'tiny'")
    return c
