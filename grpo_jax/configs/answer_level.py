"""Config of the real model at answer level (experiments/answer_level.py).

  python experiments/answer_level.py --workdir runs/answer_level --stage=predict   # Stage 0
  python experiments/answer_level.py --workdir runs/answer_level --stage=train     # Stage 1
  (``grpo_jax/configs/answer_level.py:test``: the tiny config the tests run)

SmolLM2-135M-Instruct (the GGUF of models/gguf.py) on number prompts whose answers form the
lumped two-level tree of grpo_jax/tasks/answer_tree.py. Stage 0 computes, per prompt, the
closed-form forward and reverse optima at matched reward (answer level and per-node level,
grpo_jax/study/answer_level.py); Stage 1 trains the model by exact gradients of GRPO's
objective with the exact KL per token in the loss (no sampling, grpo_jax/rl/answer_tree.py)
through the shared population loop, both directions x 3 betas, one population per trainable
subset, and evaluates each member's exact answer distribution on the training and the
held-out prompts against its per-node target.

Declared before the first training run:

* Prediction (from Stage 0's closed forms): with a 0/1 reward, the answer-level optima of
  the two directions coincide at matched reward (both reweight the valid and the invalid
  answers as two blocks); at node level, where GRPO's KL in the loss acts, forward and
  reverse differ at matched reward, by the amounts Stage 0 prints per prompt.
* Contrast: forward - reverse at matched mean reward over the training prompts, per
  trainable subset, in ``outcomes`` (off-target mass is pinned by the reward, so the
  primary outcome is ``valid_tv_to_ref``: whether the ratios among valid answers are kept),
  set against the per-node closed form's difference at the same reward.
* Capacity diagnostic: each member's mean total variation to its own per-node target;
  ``capacity_tv`` is the declared "reached" bound. A subset whose members stay farther than
  that is reported as capacity-limited, and its contrast as not comparable with the
  closed form.
* Pilot (chose ``lrs`` and ``steps``; 30 steps, beta 0.4, both directions, before the
  grid ran): "last:1" at lr 1e-3 reached mean reward 0.59 / 0.62 (targets 0.70 / 0.67) and
  TV 0.21 / 0.15 to the targets, at 3e-3 no closer (TV 0.20 / 0.23); "lora:1" at 1e-2 reached
  0.55 / 0.59, TV 0.23 / 0.17, at 3e-2 0.52 / 0.58, TV 0.28 / 0.20.
* Decision rule (per subset): the trained difference "agrees" with the closed form when
  both members at the matched reward are within ``capacity_tv`` of their targets and the
  trained difference is within ``margin`` of the closed form's; "differs" otherwise.
"""

import ml_collections

from grpo_jax.configs import grpo

# (family, a, b): tasks/answer_tree.py FAMILIES. Two-digit bounds; several kinds and ranges.
TRAIN_PROMPTS = (
    ("prime", 10, 50),
    ("prime", 20, 60),
    ("prime", 30, 90),
    ("prime", 50, 99),
    ("even", 10, 30),
    ("even", 20, 60),
    ("even", 50, 90),
    ("even", 30, 40),
    ("multiple", 3, 0),
    ("multiple", 7, 0),
    ("multiple", 9, 0),
    ("multiple", 12, 0),
    ("range", 1, 20),
    ("range", 10, 50),
    ("range", 30, 70),
    ("range", 60, 99),
)
HELD_OUT_PROMPTS = (
    ("prime", 15, 45),
    ("prime", 40, 80),
    ("even", 25, 75),
    ("even", 60, 80),
    ("multiple", 5, 0),
    ("multiple", 11, 0),
    ("range", 5, 40),
    ("range", 40, 90),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.cache_dir = ""  # "" = ~/.cache/grpo_jax
    c.gguf_path = ""  # another Llama-family GGUF instead of SmolLM2 (the tests: a tiny one)
    c.dtype = "float32"
    c.train_prompts = TRAIN_PROMPTS
    c.held_out_prompts = HELD_OUT_PROMPTS
    # Stage 0: fractions f of the attainable improvement, r* = E_ref[R] + f (1 - E_ref[R]).
    c.fractions = (0.25, 0.5, 0.75)
    # Stage 1.
    c.directions = ("exact_fwd/loss", "exact_rev/loss")
    c.betas = (0.2, 0.4, 0.8)  # node-level rewards ~0.94-0.47 (Stage 0): both directions span r*
    # One population per trainable subset, each with its Adam learning rate (``lrs``): the
    # last block (3.5 M parameters) and rank-8 LoRA on q, v of the last block (12 k): a
    # capacity dial at the same compute (the blocks before it are a constant trunk).
    # "all", "last:K", "lora" and "lora:K" are valid; a deeper cut costs more per step.
    c.trainable = ("last:1", "lora:1")
    c.lrs = (1e-3, 1e-2)
    c.lora = ml_collections.ConfigDict(dict(rank=8, alpha=16.0, targets="q,v"))
    c.steps = 150
    c.chunk_steps = 10
    c.log_every_steps = 10
    c.grad_clip = 1.0
    # Analysis (may change without retraining).
    c.capacity_tv = 0.1
    c.margin = 0.05
    c.primary_outcome = "valid_tv_to_ref"
    if arg == "test":
        c.train_prompts = TRAIN_PROMPTS[:2]
        c.held_out_prompts = HELD_OUT_PROMPTS[:1]
        c.betas = (0.1,)
        c.trainable = ("last:1",)
        c.lrs = (1e-3,)
        c.steps = 4
        c.chunk_steps = 2
        c.log_every_steps = 2
    elif arg not in (None, "", "default"):
        raise ValueError(f"unknown answer_level config {arg!r}; use '' or 'test'")
    return c


def grpo_config(config, spec: str, num_prompts: int) -> ml_collections.ConfigDict:
    """The GRPO config (grpo_jax/configs/grpo.py's fields) of one Stage 1 population."""
    c = grpo.get_config()
    c.grpo.update(num_prompts=num_prompts, group_size=2)  # unused: the exact step samples nothing
    lr = dict(zip(config.trainable, config.lrs))[spec]
    c.optim.update(lr=float(lr), grad_clip=float(config.grad_clip))
    c.train.update(
        num_steps=int(config.steps),
        chunk_steps=int(config.chunk_steps),
        log_every_steps=int(config.log_every_steps),
        seed=int(config.seed),
        checkpoint_every_chunks=int(config.get("checkpoint_every_chunks", 0)),
        tensorboard=False,
        max_to_keep=1,
        trainable=spec,
    )
    c.train.lora.update(dict(config.lora))
    c.mesh.data = 1  # nothing to split: the exact step has no batch of samples

    return c
