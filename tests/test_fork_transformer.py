"""The transformer arm of the study in sequences: a small decoder pretrained on the fork
task's reference (its exact fit reported), trained by GRPO through the shared population
loop, killed and resumed bit for bit (the sequence study's transformer arm will run so)."""

import jax
import numpy as np

from grpo_jax.configs import grpo as grpo_config
from grpo_jax.run import build, checkpoint, reference, runner


def _config(steps: int):
    c = grpo_config.get_config("task=fork")
    c.policy = "transformer"
    c.task.update(num_tokens=4, length=3, num_branches=2, fork_depth=1, slip=0.1)
    c.model.update(num_layers=1, width=32, num_heads=2, mlp_width=64)
    c.grpo.update(num_prompts=2, group_size=8)
    c.reference.update(steps=60, batch_size=64, lr=3e-3, chunk_steps=60)
    c.loss.update(kl_estimator="exact_fwd", beta=0.1)
    c.train.update(num_steps=steps, chunk_steps=2, progress=False, tensorboard=False)
    c.mesh.data = 1
    return c


def test_transformer_on_the_fork_task_reports_its_fit_and_resumes_bit_for_bit(tmp_path):
    c = _config(steps=4)
    task = build.make_task(c)
    mcfg = build.make_model_config(c, task)
    logs = []
    ref = reference.load_or_pretrain_reference(c, task, mcfg, str(tmp_path / "ref"), logs.append)
    fit = [line for line in logs if "reference pretrained" in line]
    assert fit and "data_kl_seq" in fit[0] and "mode_shares_model" in fit[0]
    quiet = lambda *_: None
    cells = build.population_cells(c)
    full = runner.run_population(c, cells, str(tmp_path / "full"), ref_params=ref, log=quiet)
    assert np.isfinite(np.asarray(full.history["loss"])).all()
    c_cut = _config(steps=2)  # "killed" after the first chunk
    runner.run_population(
        c_cut, build.population_cells(c_cut), str(tmp_path / "cut"), ref_params=ref, log=quiet
    )
    assert checkpoint.latest_step(str(tmp_path / "cut" / "checkpoints")) == 2
    resumed = runner.run_population(c, cells, str(tmp_path / "cut"), ref_params=ref, log=quiet)
    assert resumed.start_step == 2
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
