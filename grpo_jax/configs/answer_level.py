"""Config of the real model at answer level (experiments/answer_level.py).

  python experiments/answer_level.py --workdir runs/answer_level --stage=predict   # Stage 0
  python experiments/answer_level.py --workdir runs/answer_level --stage=train     # Stage 1
  python experiments/answer_level.py --workdir runs/answer_level \
      --config grpo_jax/configs/answer_level.py:sampled --stage=sampled            # Stage 2
  (``:test`` and ``:sampled_smoke``: the tiny configs the tests run)

SmolLM2-135M-Instruct (the GGUF of models/gguf.py) on number prompts whose answers form the
lumped two-level tree of grpo_jax/tasks/answer_tree.py. Stage 0 computes, per prompt, the
closed-form forward and reverse optima at matched reward (answer level and per-node level,
grpo_jax/study/answer_level.py); Stage 1 trains the model by exact gradients of GRPO's
objective with the exact KL per token in the loss (no sampling, grpo_jax/rl/answer_tree.py)
through the shared population loop, both directions x 3 betas, one population per trainable
subset, and evaluates each member's exact answer distribution on the training and the
held-out prompts against its per-node target.

The default config is the CPU run: both stages take about 25 minutes on 2 cores and 11.5 GB
(the README's 'What GRPO's KL choice does on the real model, at answer level' states the
machine and commit); the subsets "all" and "lora" (adapters in every block) run the whole
backward and have no constant trunk, several times the cost per step: for a GPU.

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

**Stage 2** (variants ``sampled``, for one GPU, and ``sampled_smoke``, the CPU test; the
``sampled`` block, read by grpo_jax/study/answer_level_sampled.py): sampled GRPO on the same
training prompts (`tasks.number_text.from_tree`: right-padded, G completions of 2 tokens
each), through the shared population loop: ``kl_choices`` x ``betas`` x ``seeds`` members in
one vmapped program, evaluated exactly (answer trees of the training and held-out prompts,
TV to each member's per-node target) before training and at each of ``eval_steps``.
Advantages are RLOO's (``advantage_estimator``): A_i = R_i - mean of the others, so the
expected step is the gradient of Stage 1's objective (halved by the 2-token mean), with the
same stationary points, the per-node targets at the member's beta; GRPO's division by the
group's reward std would rescale the reward term per group and move them. ``k3/loss`` may be
added to ``kl_choices``: its gradient on pi_old's samples is the forward KL's in
expectation, so it is set against the forward per-node target. Same subset (``last:1``), lr
and betas as Stage 1's first population: the difference from Stage 1 is sampling noise.

Sizing of ``sampled`` (arithmetic from measured per-step costs; NOT run on a GPU yet):

* Measured: the H100 ran W1 (4.23 M parameters; 16 prompts of 16 tokens, 128 completions
  of 32) at ~0.011 s/step (benchmarks/results/gpu_h100_20261126.txt). Tokens processed per
  forward, the prompt once per group (docs/design.md, 'Shared prompts and replay'):
  N P + B (T - 1) = 16 x 16 + 128 x 31 = 4,224; 6 x 4.23 M x 4,224 = 1.07e11 FLOP in
  0.011 s, 9.7 TFLOP/s.
* A member-step here: SmolLM2-135M (134.5 M parameters), 16 prompts padded to 69 tokens
  (their own lengths 61 to 69 with SmolLM2's chat template), G = 8, 2 new tokens: 16 x 69 +
  128 x 1 = 1,232 tokens; 6 x 134.5 M x 1,232 = 9.9e11 FLOP, 0.102 s at W1's rate. 18
  members (2 KL choices x 3 betas x 3 seeds) x 200 steps = 3,600 member-steps: 367 s with
  every weight trained.
* ``last:1`` trains the last block only: the sampler's and the reference's forwards (2 N
  each per token) stay, the backward (4 N) shrinks to the last block's 4 x 3.54 M plus the
  head's input gradient 2 x 28.3 M (the tied embedding is frozen): 0.57 of the step, 0.058
  s per member-step, 208 s for the run.
* Plus, not measured: compiling the 30-block step (W1's 4 blocks compiled in 27 s; allow
  ~2 min), 3 checkpoint saves and 2 restores of ~6.5 GB (each member's parameters, 363 MB
  on disk, compressed: measured on the CPU; ~1 min at ~0.5 GB/s), loading and the exact evaluations (~0.5 min): ~7.0 min, inside one
  8-minute call. Every weight trained would take ~9.6 min, over it.
* Memory (float32, per member): parameters 0.54 GB and the reference's copy 0.54 GB; Adam
  moments and gradient of the last block 0.04 GB; the sampler's matmul records for the
  replay (5,184 outputs per token and block x 30 blocks x 1,232 tokens, and the head's
  [128, 2, 49152]) 0.82 GB; ~10 [B, T, V] logit-sized arrays of the loss 0.5 GB: ~2.4 GB,
  ~44 GB for 18 members, inside the 75 % of the H100's ~78 GiB that JAX takes by default
  (XLA_PYTHON_CLIENT_MEM_FRACTION). Every weight trained adds 1.6 GB a member
  (Adam moments and gradient) and the inputs the whole backward keeps (~0.7 GB): ~85 GB
  for 18 members, over it.
* Checked on the CPU with the real model (one member, two prompts of 63 and 67 tokens,
  G = 2, one step): the step compiles (31 s at LLVM -O0), trains and is evaluated.
* ``k3/loss`` added: 27 members, ~312 s of training (~8.7 min in all) and ~66 GB (set
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.95): over one call; run it as two (the second resumes
  from the checkpoint) or with 2 seeds.
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
    elif arg in ("sampled", "sampled_smoke"):
        c.sampled = _sampled(arg == "sampled_smoke")
        if arg == "sampled_smoke":
            c.train_prompts = (TRAIN_PROMPTS[0], TRAIN_PROMPTS[8])  # two token lengths
            c.held_out_prompts = HELD_OUT_PROMPTS[:1]
            c.betas = (0.1,)
    elif arg not in (None, "", "default"):
        raise ValueError(
            f"unknown answer_level config {arg!r}; use '', 'test', 'sampled' or 'sampled_smoke'"
        )
    return c


def _sampled(smoke: bool) -> ml_collections.ConfigDict:
    """Stage 2's block (module docstring): sized for one H100 call, or the CPU smoke test."""
    s = ml_collections.ConfigDict()
    s.kl_choices = ("exact_fwd/loss", "exact_rev/loss")  # "k3/loss" may be added
    s.seeds = 3  # members: kl_choices x betas x seeds, one population
    s.num_prompts = 16  # prompts per step (drawn with replacement from the training prompts)
    s.group_size = 8
    s.advantage_estimator = "rloo"  # stationary points = the per-node targets
    s.trainable = "last:1"
    s.lr = 1e-3
    # Exact evaluation before training and at each of these steps; the last is the run's
    # length. Each is one `run_population` call that resumes from the previous one's
    # checkpoint (train.num_steps is not computational), so each a multiple of chunk_steps.
    s.eval_steps = (50, 100, 200)
    s.chunk_steps = 10
    s.checkpoint_every_chunks = 10  # and at each eval step (a segment's end)
    s.log_every_steps = 10
    if smoke:
        s.seeds = 2
        s.num_prompts = 2
        s.group_size = 4  # batch 8: the tests' 8 CPU devices
        s.lr = 1e-2
        s.eval_steps = (2, 4)
        s.chunk_steps = 2
        s.checkpoint_every_chunks = 1
        s.log_every_steps = 1
    return s


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


def sampled_grpo_config(config, num_steps: int) -> ml_collections.ConfigDict:
    """The GRPO config of Stage 2's population run for ``num_steps`` steps (one segment:
    only ``train.num_steps`` differs between segments)."""
    s = config.sampled
    c = grpo.get_config()
    c.grpo.update(num_prompts=int(s.num_prompts), group_size=int(s.group_size))
    c.loss.advantage_estimator = str(s.advantage_estimator)
    c.optim.update(lr=float(s.lr), grad_clip=float(config.grad_clip))
    c.train.update(
        num_steps=int(num_steps),
        chunk_steps=int(s.chunk_steps),
        log_every_steps=int(s.log_every_steps),
        seed=int(config.seed),
        checkpoint_every_chunks=int(s.checkpoint_every_chunks),
        tensorboard=False,
        max_to_keep=1,
        trainable=str(s.trainable),
    )
    c.train.lora.update(dict(config.lora))
    return c
