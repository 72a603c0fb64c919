"""The target-KL controller: beta in the jitted state, moved each step on log beta toward a
declared KL per token; a bandit population holds two targets at once and resumes bit for
bit; beta stays positive and finite whatever the target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.configs import grpo as grpo_config
from grpo_jax.core import kl_control
from grpo_jax.run import build, checkpoint, runner


def test_controller_step_moves_beta_toward_the_target_and_stays_in_range():
    up = kl_control.update(jnp.float32(0.1), jnp.float32(0.3), 0.1, 0.1)  # KL too high
    down = kl_control.update(jnp.float32(0.1), jnp.float32(0.05), 0.1, 0.1)
    np.testing.assert_allclose(float(up), 0.1 * np.exp(0.1), rtol=1e-6)  # error clipped at 1
    np.testing.assert_allclose(float(down), 0.1 * np.exp(-0.05), rtol=1e-6)
    off = kl_control.update(jnp.float32(0.1), jnp.float32(5.0), 0.0, 0.1)
    nan = kl_control.update(jnp.float32(0.1), jnp.float32(np.nan), 0.1, 0.1)
    assert float(off) == float(nan) == np.float32(0.1)  # target 0 or a NaN KL: unchanged
    step = lambda _, b, m: kl_control.update(b, m, 1e-12, 5.0)
    run = jax.jit(lambda b, m: jax.lax.fori_loop(0, 5000, lambda i, x: step(i, x, m), b))
    beta = jnp.float32(0.1)
    for measured in (1e30, 0.0):  # an extreme, NaN-free target for 5000 steps each way
        beta = run(beta, jnp.float32(measured))
        lo, hi = kl_control.BETA_RANGE
        assert np.isfinite(float(beta)) and lo * (1 - 1e-6) <= float(beta) <= hi * (1 + 1e-6)


def _config(steps):
    c = grpo_config.get_config("task=bandit")
    c.policy = "tabular"
    c.grpo.update(num_prompts=1, group_size=64)
    c.loss.update(kl_estimator="exact_rev", beta=0.1, advantage_estimator="rloo")
    c.optim.lr = 0.02
    c.kl_control.update(measure="exact_rev", rate=0.01)  # 0.1 overshoots into a limit cycle
    c.train.update(num_steps=steps, chunk_steps=300, progress=False, tensorboard=False)
    c.mesh.data = 1
    return c


def test_a_bandit_population_holds_its_kl_targets_and_resumes_bit_for_bit(tmp_path):
    targets = (0.05, 0.2)
    cells = [{"train.seed": 0, "kl_control.target": t} for t in targets]
    quiet = lambda *_: None
    full = runner.run_population(_config(600), cells, str(tmp_path / "full"), log=quiet)
    kl = np.asarray(full.history["exact_kl_rev"])[:, -100:].mean(axis=1)
    beta = np.asarray(full.history["beta"])
    for i, t in enumerate(targets):  # the realised exact KL tracks its own target
        assert abs(kl[i] - t) < 0.15 * t, (kl, targets)
    assert beta[0, -1] > beta[1, -1] > 0  # the smaller KL needs the larger beta
    runner.run_population(_config(300), cells, str(tmp_path / "cut"), log=quiet)
    assert checkpoint.latest_step(str(tmp_path / "cut" / "checkpoints")) == 300
    resumed = runner.run_population(_config(600), cells, str(tmp_path / "cut"), log=quiet)
    assert resumed.start_step == 300
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_controller_settings_are_refused_by_name():
    c = _config(10)
    c.kl_control.measure = "exact"
    with pytest.raises(ValueError, match="kl_control.measure.*valid: '' \\(off\\), exact_rev"):
        build.validate_config(c)
    c = _config(10)
    c.kl_control.target = -1.0
    with pytest.raises(ValueError, match="kl_control.target"):
        build.validate_config(c)
    c = _config(10)
    c.loss.beta = 0.0
    with pytest.raises(ValueError, match="starts from beta > 0"):
        build.population_hparams(c, [{"train.seed": 0}])


def test_the_one_token_check_runs_every_arm_and_target(tmp_path):
    from grpo_jax.configs import kl_control as kl_control_config  # noqa: PLC0415
    from grpo_jax.study import kl_control  # noqa: PLC0415

    c = kl_control_config.get_config("tiny")
    cells = kl_control_config.members(c)
    rows = kl_control.run(c, str(tmp_path), kl_control_config.population_config, cells)
    assert [(r["arm"], r["target"]) for r in rows] == [(a, 0.3) for a in c.arms]
    assert all(np.isfinite(r["kl"]) and r["beta"] > 0 for r in rows)
    text = kl_control.markdown(rows, c)
    assert "Check: every member's final exact reverse KL within 15%" in text
