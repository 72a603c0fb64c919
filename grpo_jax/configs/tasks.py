"""Task configs: `task_config(name, **overrides) -> ConfigDict` for every task and preset.

A task config holds `name` (one of grpo_jax.tasks.TASKS) and every field of that task's
dataclass, so any field can be overridden from the command line
(`--config.task.separation=3.0`). `make_task(cfg)` builds the (hashable) task.

Presets put the modality dial at named positions (docs/design.md, 'The math': for two equal
Gaussian modes,
reverse KL stops straddling them at about 5.6 standard deviations of separation):

  bandit                 the Bandit defaults: one discretised Gaussian (unimodal)
  bandit_unimodal        same
  bandit_bimodal         two equal modes 8 sigma apart (far: reverse KL can lock onto one)
  bandit_bimodal_near    two equal modes 3 sigma apart (near: reverse KL straddles)
  bandit_bimodal_skewed  modes 8 sigma apart with weights 0.9 / 0.1
  bandit_trimodal        three equal modes 6 sigma apart
  arithmetic             4 anchor answers per N, equal weights (multimodal)
  arithmetic_canonical   one canonical (balanced) pair per N (unimodal)
  arithmetic_dominant    4 anchors, the first with 85% of the mass
  arithmetic_uniform     spread uniformly over every valid pair
  format / format_50_50  direct vs worked format, 50/50
  format_90_10, format_100_0

Bandit modes default to a reward on the last mode (its centre token), so a bimodal bandit
asks the policy to move mass from one mode to the other.

Every preset's reference starts below its reward ceiling (a reference at the ceiling gives
GRPO zero advantages, so training would measure drift, not the regulariser; asserted from the
exact tables by tests/test_tasks.py). Exact expected reward / ceiling of the reference:
  bandit, bandit_unimodal 0.10; bandit_bimodal 0.07; bandit_bimodal_near 0.07;
  bandit_bimodal_skewed 0.01; bandit_trimodal 0.04 (one target token);
  arithmetic*, format*    1 - error_mass = 0.6 (default error_mass 0.4: the reference slips
                          an off-by-one second digit, or a format's punctuation, with that
                          probability; the slips are wrong answers that belong to no mode).

Run `python -c "from configs import tasks; print(tasks.task_config('bandit_bimodal'))"`.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from grpo_jax import tasks as tasks_lib
from grpo_jax.run.config_utils import make_task

PRESETS: dict[str, tuple[str, dict]] = {
    "bandit": ("bandit", {}),
    "bandit_unimodal": ("bandit", dict(num_modes=1)),
    "bandit_bimodal": ("bandit", dict(num_modes=2, sigma=3.0, separation=8.0)),
    "bandit_bimodal_near": ("bandit", dict(num_modes=2, sigma=3.0, separation=3.0)),
    "bandit_bimodal_skewed": (
        "bandit",
        dict(num_modes=2, sigma=3.0, separation=8.0, weights=(0.9, 0.1)),
    ),
    "bandit_trimodal": ("bandit", dict(num_modes=3, sigma=3.0, separation=6.0)),
    "fork": ("fork", {}),
    "arithmetic": ("arithmetic", {}),
    "arithmetic_canonical": ("arithmetic", dict(num_modes=1)),
    "arithmetic_dominant": ("arithmetic", dict(num_modes=4, weights=(0.85, 0.05, 0.05, 0.05))),
    "arithmetic_uniform": ("arithmetic", dict(background=1.0)),
    "format": ("format", {}),
    "format_50_50": ("format", dict(format_weights=(0.5, 0.5))),
    "format_90_10": ("format", dict(format_weights=(0.9, 0.1))),
    "format_100_0": ("format", dict(format_weights=(1.0, 0.0))),
}


def task_config(name: str = "bandit", **overrides) -> ml_collections.ConfigDict:
    """ConfigDict {"name": task name, **every dataclass field} for a task or preset name.

    `overrides` replace fields; unknown names raise ValueError listing the valid ones. The
    result is validated by building the task once.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown task or preset {name!r}; valid: {tuple(PRESETS)}")
    base, preset = PRESETS[name]
    fields = {f.name: f.default for f in dataclasses.fields(tasks_lib.make(base))}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown fields {unknown} for task {base!r}; valid: {sorted(fields)}")
    fields.update(preset)
    fields.update(overrides)
    cfg = ml_collections.ConfigDict({"name": base, **fields})
    make_task(cfg)  # fail early on bad values
    return cfg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`--config grpo_jax/configs/tasks.py:bandit_bimodal` gives that preset's task config."""
    return task_config(arg or "bandit")
