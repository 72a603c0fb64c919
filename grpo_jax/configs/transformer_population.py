"""A small transformer population: several KL choices in one compiled chunk program.

  get_config()         6 KL choices, chunks of 100 steps (benchmarks/compile_time.py)
  get_config("small")  3 KL choices, chunks of 50 steps (the suite's compile-time guard,
                       tests/test_compile_time.py)

A 1-layer transformer policy (width 32, 2 heads, MLP 64) on a 20-token two-mode bandit (modes
4 sigma apart, sigma 2, a distance reward of width 5), 4 prompts x 16 completions per step:
the shape of the sequence study's populations, and of the program that XLA:CPU once took
over 15 minutes to compile at its default optimisation level (benchmarks/README.md). The
members are `member_cells(config)` (one per KL choice), for `runner.run_population`.
"""

import ml_collections

from grpo_jax.configs import grpo as grpo_config, tasks as task_configs

KL_CHOICES = ("k2/loss", "k3/loss", "k1/reward", "k3_st/loss", "exact_rev/loss", "exact_fwd/loss")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "small"):
        raise ValueError(f"unknown argument {arg!r}; valid: '' or 'small'")
    small = arg == "small"
    c = grpo_config.get_config("task=bandit")
    c.task = task_configs.task_config(
        "bandit",
        num_tokens=20,
        num_modes=2,
        separation=4.0,
        sigma=2.0,
        reward_kind="distance",
        reward_width=5.0,
    )
    c.model.update(num_layers=1, width=32, num_heads=2, mlp_width=64)
    c.grpo.update(num_prompts=4, group_size=16)
    c.train.update(num_steps=300, chunk_steps=50 if small else 100)
    c.mesh.data = 1
    c.kl_choices = KL_CHOICES[:3] if small else KL_CHOICES
    return c


def member_cells(config) -> list[dict]:
    """One population member per KL choice of `config`."""
    return [{"loss.kl_choice": choice} for choice in config.kl_choices]
