"""The target-KL controller in the one-token study: matching at equal KL instead of a beta
sweep (experiments/kl_control.py; the controller: docs/design.md, 'The target-KL
controller').

  python experiments/kl_control.py --workdir runs/kl_control

Declared before the run: on two of the study's references (grpo_jax/configs/study.py: the
plain unimodal one and two modes 5.6 sigma apart), the tabular policy, both primary arms
(exact forward and reverse KL in the loss), each member holding the exact reverse KL at one
of `targets` (the same budget for both arms, so forward and reverse are compared at equal
reverse KL rather than at matched reward). Check: every member's final exact reverse KL
within `tolerance` (relative) of its target. Read beside it: forward - reverse in
off-target mass at each target (the study compares at matched reward; its report also gives
the difference at matched reverse KL, `deltas_at_matched_kl`).
"""

import ml_collections

from grpo_jax.configs import grpo as grpo_config, study as study_config, tasks as task_configs
from grpo_jax.run.config_utils import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: "" (default: CPU, about a minute), "tiny" (tests)."""
    tiny = parse_arg(arg, tiny=False)["tiny"]
    study = study_config.get_config()
    c = ml_collections.ConfigDict()
    keep = ("1 mode", "2 modes, 5.6σ")
    c.modalities = [m for m in study.modalities if m["label"] in keep[: 1 if tiny else 2]]
    c.arms = list(study_config.PRIMARY)
    c.targets = [0.3] if tiny else [0.1, 0.3, 0.6]
    c.num_seeds = 2 if tiny else 4
    c.beta_start = 0.1
    c.rate = 0.01
    c.lr = 0.02
    c.num_steps = 100 if tiny else 800
    c.group_size = 16 if tiny else 64
    c.tolerance = 0.15
    return c


def population_config(config, task: dict, steps: int | None = None):
    """The GRPO config of one reference's population (tabular policy, controller on)."""
    c = grpo_config.get_config("task=bandit")
    fields = dict(task)
    c.task = task_configs.task_config(fields.pop("name"), **fields)
    c.policy = "tabular"
    c.grpo.update(num_prompts=1, group_size=int(config.group_size))
    c.loss.update(beta=float(config.beta_start), advantage_estimator="rloo")
    c.optim.lr = float(config.lr)
    c.kl_control.update(measure="exact_rev", rate=float(config.rate))
    steps = int(steps or config.num_steps)
    c.train.update(
        num_steps=steps, chunk_steps=steps, progress=False, tensorboard=False, log_every_steps=steps
    )
    c.mesh.data = 1
    return c


def members(config) -> list[dict]:
    """arm x target x seed."""
    return [
        {"loss.kl_choice": a, "kl_control.target": float(t), "train.seed": s}
        for a in config.arms
        for t in config.targets
        for s in range(int(config.num_seeds))
    ]
