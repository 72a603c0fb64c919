"""Pretrain a reference policy on a task's reference data (experiments/pretrain.py).

Run (the argument after ':' is a comma-separated list: `task=NAME` (a task or preset of
grpo_jax/configs/tasks.py), `quick` (tiny model, few steps: a smoke test)):

  python experiments/pretrain.py --config grpo_jax/configs/pretrain.py:task=bandit_bimodal \
      --workdir runs/ref-bandit-bimodal
  python experiments/pretrain.py --config grpo_jax/configs/pretrain.py:task=format_90_10,quick \
      --workdir /tmp/ref-q

Override any field with `--config.FIELD=VALUE` (locked config: misspelt fields fail).
The workdir receives the checkpoint (orbax, restorable with `reference.restore_reference(workdir)`
and usable as `--config.reference.checkpoint` of grpo_jax/configs/grpo.py), metrics.jsonl and
report.json (the fit: exact KL[data || model], entropies, mode shares vs the data).
The model section must match the GRPO config's model to be restored there.
"""

import ml_collections

from grpo_jax.configs import tasks as task_configs
from grpo_jax.run.config_utils import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, task="bandit", quick=False)
    c = ml_collections.ConfigDict()
    c.task = task_configs.task_config(opts["task"])
    # W2-scale Llama-style decoder (docs/design.md, 'Benchmark workloads'); vocab and max_len
    # come from the task.
    c.model = ml_collections.ConfigDict(
        dict(num_layers=2, width=64, num_heads=2, mlp_width=256, dtype="float32")
    )
    c.pretrain = ml_collections.ConfigDict(
        dict(steps=3000, batch_size=256, lr=3e-3, chunk_steps=250, seed=0, rng_impl="threefry2x32")
    )  # or "rbg" (much faster to compile on CPU)
    c.eval = ml_collections.ConfigDict(
        dict(
            mode_share_tolerance=0.02,  # max |model share - data share| accepted per mode
            num_samples=8192,  # for mode shares when not computable exactly
            seed=1,
        )
    )
    if opts["quick"]:
        c.model.update(num_layers=1, width=32, mlp_width=64)
        c.pretrain.update(steps=100, batch_size=64, lr=1e-2, chunk_steps=50)
        c.eval.update(mode_share_tolerance=0.1, num_samples=1024)
    return c
