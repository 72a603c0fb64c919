"""The hypothesis experiment as a sweep: (task, modality) x (KL choice, beta) x seed.

  python experiments/sweep.py --sweep configs/sweeps/hypothesis.py --workdir runs/hyp-sweep \
      --runner grpo_jax.study:run_group
  (`:full` / `:tiny` pick configs/hypothesis.py's variants; experiments/hypothesis.py runs
  the same grid and also writes the report.)

The base is configs/grpo.py plus an `eval` section; axes:
  1. a zipped axis moving the task config, the model/GRPO settings and the report labels of
     each (task, modality) together (one compiled program each);
  2. a zipped axis of (loss.kl_choice, loss.beta): every KL choice at every beta, plus the
     beta = 0 "none" baseline;
  3. train.seed.
Axes 2 and 3 are vmappable (`grpo_jax.runner.VMAPPABLE_KEYS`), so each (task, modality)
is one population.
"""

import ml_collections

from configs import grpo as grpo_config
from configs import hypothesis as hyp_config
from configs import tasks as task_configs
from grpo_jax.sweep import zip_axis


def base_config(hyp: ml_collections.ConfigDict, task: str = "bandit") -> ml_collections.ConfigDict:
    """configs/grpo.py with the hypothesis config's shared settings and an `eval` section."""
    c = grpo_config.get_config(f"task={task}")
    c.model.update(hyp.model.to_dict())
    c.reference.update(hyp.reference.to_dict())
    c.optim.update(hyp.optim.to_dict())
    c.train.update(hyp.train.to_dict())
    c.train.update(tensorboard=False, progress=False)
    c.loss.update(hyp.loss.to_dict())
    c.mesh.data = 1  # populations run on one device here (the vmapped axis is the parallelism)
    c.eval = ml_collections.ConfigDict(dict(
        task_label="", modality="", multimodal=False, ks=list(hyp.eval.ks),
        num_samples=int(hyp.eval.num_samples), seed=int(hyp.eval.seed), workdir=""))
    return c


def get_sweep(arg=None):
    """`configs/hypothesis.py:arg`'s grid."""
    return sweep_from_config(hyp_config.get_config(arg))


def sweep_from_config(hyp: ml_collections.ConfigDict):
    """(base, axes) of the grid a hypothesis config describes."""
    base = base_config(hyp)
    mods = [dict(m) for m in hyp.modalities]
    tasks = []
    for m in mods:
        name, fields = m["task"]
        tasks.append(task_configs.task_config(name, **dict(fields)))
    modality_axis = zip_axis({
        "task": tasks,
        "grpo.num_prompts": [int(m["grpo"]["num_prompts"]) for m in mods],
        "grpo.group_size": [int(m["grpo"]["group_size"]) for m in mods],
        "eval.task_label": [m["task_label"] for m in mods],
        "eval.modality": [m["modality"] for m in mods],
        "eval.multimodal": [bool(m["multimodal"]) for m in mods],
    })
    pairs = [(c, float(b)) for c in hyp.kl_choices for b in hyp.betas]
    pairs.append((hyp.none_choice, 0.0))
    choice_axis = zip_axis({"loss.kl_choice": [p[0] for p in pairs],
                            "loss.beta": [p[1] for p in pairs]})
    seed_axis = ("train.seed", list(range(int(hyp.num_seeds))))
    return base, [modality_axis, choice_axis, seed_axis]
