"""Config of GRPO on the real model (experiments/grpo_lm.py).

  python experiments/grpo_lm.py --config grpo_jax/configs/grpo_lm.py --workdir runs/grpo_lm
  python experiments/grpo_lm.py --config grpo_jax/configs/grpo_lm.py:full --workdir runs/grpo_lm_full

SmolLM2-135M-Instruct (GGUF) on the prime-number text task (grpo_jax/tasks/number_text.py),
regularised by each of exact_fwd/loss, exact_rev/loss, k3/loss, k2/loss. The default is a
CPU smoke test (a few steps); ``full`` is sized for one H100/H200 and has NOT been run in
this repository yet. Either way the four regularisers are one vmapped population.
"""

import ml_collections


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
    if arg == "full":
        c.num_prompts = 8
        c.group_size = 8
        c.steps = 200
        c.chunk_steps = 10
        c.checkpoint_every_chunks = 5
    elif arg not in (None, "", "default"):
        raise ValueError(f"unknown grpo_lm config {arg!r}; use '' or 'full'")
    return c
