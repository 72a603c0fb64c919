"""Config of GRPO on the real model (experiments/grpo_lm.py).

  python experiments/grpo_lm.py --config grpo_jax/configs/grpo_lm.py --workdir runs/grpo_lm
  python experiments/grpo_lm.py --config grpo_jax/configs/grpo_lm.py:full --workdir runs/grpo_lm_full

SmolLM2-135M-Instruct (GGUF) on the prime-number text task (grpo_jax/tasks/number_text.py),
regularised by each of exact_fwd/loss, exact_rev/loss, k3/loss, k2/loss. The default is a
CPU smoke test (a few steps); ``full`` is sized for one H100/H200 and has NOT been run in
this repository yet. Either way the four regularisers are one vmapped population.
"""

import ml_collections

from grpo_jax.configs import grpo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.cache_dir = ""  # "" = ~/.cache/grpo_jax
    c.gguf_path = ""  # a Llama-family GGUF file to use instead of SmolLM2 (tests: a tiny one)
    # Prompts: "Name a prime number between lo and hi" (two-digit bounds: one token length).
    c.ranges = ((10, 50), (20, 60), (30, 90))
    c.choices = ("exact_fwd/loss", "exact_rev/loss", "k3/loss", "k2/loss")
    c.beta = 0.1
    c.lr = 1e-5
    c.num_prompts = 2
    c.group_size = 4
    c.steps = 3
    c.chunk_steps = 1
    c.checkpoint_every_chunks = 0  # 0: none (a 135M-parameter member's Adam state is 1.6 GB)
    c.dtype = "float32"
    # Which weights train (grpo.py's train.trainable): "all", "last:K" or "lora"; the LoRA
    # adapters (train.lora) when "lora": rank, alpha, targets (of q, k, v, o, gate, up,
    # down). The Adam state then covers only the trainable leaves.
    c.trainable = "all"
    c.lora = ml_collections.ConfigDict(dict(rank=8, alpha=16.0, targets="q,v"))
    if arg == "full":
        c.num_prompts = 8
        c.group_size = 8
        c.steps = 200
        c.chunk_steps = 10
        c.checkpoint_every_chunks = 5
    elif arg not in (None, "", "default"):
        raise ValueError(f"unknown grpo_lm config {arg!r}; use '' or 'full'")
    return c


def grpo_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The GRPO config (grpo_jax/configs/grpo.py's fields) of this experiment; the task and
    the model come from the GGUF file, not from it."""
    c = grpo.get_config()
    c.grpo.update(num_prompts=int(config.num_prompts), group_size=int(config.group_size))
    c.loss.beta = float(config.beta)
    c.optim.lr = float(config.lr)
    c.train.update(
        num_steps=int(config.steps),
        chunk_steps=int(config.chunk_steps),
        seed=int(config.seed),
        checkpoint_every_chunks=int(config.checkpoint_every_chunks),
        tensorboard=False,
        max_to_keep=1,
        trainable=str(config.get("trainable", "all")),
    )
    c.train.lora.update(dict(config.get("lora", {})))
    return c
