"""Config of the premise measurement (experiments/token_modality.py).

  python experiments/token_modality.py --config grpo_jax/configs/token_modality.py --workdir runs/tm
  python experiments/token_modality.py --config grpo_jax/configs/token_modality.py:full --workdir ...

Default: CPU-sized (a few minutes on 2 cores). ``full``: a few hundred prompts, more samples
and longer chat completions, for a GPU (or a patient CPU).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.cache_dir = ""  # model cache; "" = ~/.cache/grpo_jax (gguf.fetch_smollm2)
    # Prompts per kind: arithmetic (one correct answer), multi (many valid answers), chat.
    c.num_arithmetic = 48
    c.num_multi = 48
    c.num_chat = 32
    # Samples per prompt at temperature 1 (the model's own distribution); per-position
    # statistics are taken at every generated position of these samples.
    c.samples_per_prompt = 4
    c.max_new_tokens_number = 8  # arithmetic / multi completions
    c.max_new_tokens_chat = 24  # chat completions
    c.prompt_batch = 16  # prompts per jitted call (memory)
    # "Answers above 0.1 x the top answer" (answer level): how many numbers 0..99 carry at
    # least answer_threshold x the most probable number's probability (no rule about
    # adjacent integers: numerical closeness means nothing to the model).
    c.answer_threshold = 0.1
    c.mass_fraction = 0.9  # "how many distinct answers carry 90% of the mass"
    c.ratio_threshold = 0.5  # per position: p2 / p1 > 0.5 counts as "two real modes"
    # Per position, also over the top-entropy decile: the 10% of each kind's generated
    # positions with the highest entropy (where RL moves mass).
    c.top_entropy_fraction = 0.1
    if arg == "full":
        c.num_arithmetic = 100
        c.num_multi = 100
        c.num_chat = 100
        c.samples_per_prompt = 16
        c.max_new_tokens_chat = 64
        c.prompt_batch = 50
    elif arg not in (None, "", "default"):
        raise ValueError(f"unknown token_modality config {arg!r}; use '' or 'full'")
    return c
