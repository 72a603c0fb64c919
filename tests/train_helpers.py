"""Shared set-up of the trainer tests (test_train_grpo.py, test_runner.py): a tiny bandit
GRPO config, its reference and one population member."""

import jax
import ml_collections

from grpo_jax.configs import grpo as grpo_config
from grpo_jax.models import model
from grpo_jax.run import build, runner


def tiny_config(steps=8, chunk=4, **loss):
    c = grpo_config.get_config("task=bandit")
    c.task = ml_collections.ConfigDict(dict(name="bandit", num_tokens=16, sigma=2.0))
    c.model.update(num_layers=1, width=32, num_heads=2, mlp_width=64)
    c.grpo.update(num_prompts=4, group_size=16)
    c.optim.lr = 1e-2
    c.train.update(num_steps=steps, chunk_steps=chunk, progress=False, tensorboard=False)
    c.mesh.data = 1
    c.loss.update(loss)
    return c


def reference(config):
    task = build.make_task(config)
    mcfg = build.make_model_config(config, task)
    return task, mcfg, model.init(mcfg, jax.random.PRNGKey(0))


def member(tree, i):
    return jax.tree.map(lambda x: x[i], tree)
