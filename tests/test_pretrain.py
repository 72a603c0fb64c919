"""Reference pretraining: a tiny run per task lowers the loss and reproduces the data's mode
shares (exactly computed) within a tolerance; the experiment saves a restorable reference."""

import os

import jax
import numpy as np
import optax
import pytest

from grpo_jax.configs import pretrain as pretrain_config
from grpo_jax.models import model
from grpo_jax.rl import pretrain, reference_fit
from grpo_jax.run import reference
from grpo_jax import tasks

# Tiny runs (1 layer, width 32, batch 256 so the final minibatch noise stays well below the
# tolerance): each compiles one scan and one exact evaluation of the model's mode shares.
CASES = {
    "bandit": (dict(num_modes=2, sigma=3.0, separation=6.0, weights=(0.7, 0.3)), 150, 0.05),
    "arithmetic": (dict(n_min=6, n_max=12, num_modes=2, weights=(0.7, 0.3)), 150, 0.05),
    "format": (dict(num_digits=2, format_weights=(0.7, 0.3)), 200, 0.05),
}


@pytest.mark.parametrize("name", list(CASES))
def test_tiny_pretraining_fits_modes(name):
    kwargs, steps, tol = CASES[name]
    task = tasks.make(name, **kwargs)
    cfg = pretrain.model_config_for(task, num_layers=1, width=32, num_heads=2, mlp_width=64)
    params, report = pretrain.pretrain_reference(
        cfg,
        task,
        jax.random.key(0, impl="rbg"),
        steps=steps,
        batch_size=256,
        lr=1e-2,
        chunk_steps=steps,
        mode_share_tolerance=tol,
        num_eval_samples=0,
    )
    assert report["steps"] == steps
    floor = float(np.mean(report["entropy_per_position_data"]))  # the loss at a perfect fit
    assert report["final_loss"] < report["initial_loss"] - 0.2
    assert report["final_loss"] > floor - 0.05
    assert report["mode_shares_method"] == "exact"  # enumeration or exact pattern mass
    assert report["mode_shares_ok"], report
    np.testing.assert_allclose(report["mode_shares_model"], task.reference_mode_shares(), atol=tol)
    assert report["data_kl_seq"] >= 0.0


def test_make_pretrain_is_pure_and_descends():
    task = tasks.make("bandit", num_tokens=16, sigma=2.0)
    cfg = pretrain.model_config_for(task, num_layers=1, width=16, num_heads=2, mlp_width=32)
    params = jax.jit(model.init, static_argnums=0)(cfg, jax.random.key(0, impl="rbg"))
    opt = optax.adam(3e-2)
    run = pretrain.make_pretrain(cfg, task, opt, chunk_steps=40, batch_size=32)
    key = jax.random.key(1, impl="rbg")
    a = run(params, opt.init(params), key)
    b = run(params, opt.init(params), key)
    for x, y in zip(jax.tree_util.tree_leaves(a[:2]), jax.tree_util.tree_leaves(b[:2])):
        np.testing.assert_array_equal(x, y)  # same inputs, same outputs
    losses = np.asarray(a[3]["loss"])
    # From about log(V) = log 17 = 2.83 towards the data entropy (about 2.1 nats).
    assert losses.shape == (40,) and losses[-10:].mean() < losses[0] - 0.4
    assert set(a[3]) == {"loss", "token_accuracy", "grad_norm"}
    with pytest.raises(ValueError, match="chunk_steps"):
        pretrain.make_pretrain(cfg, task, opt, chunk_steps=0, batch_size=32)


def test_experiment_saves_a_restorable_reference(tmp_path):
    from experiments import pretrain as pretrain_exp  # pylint: disable=import-outside-toplevel

    config = pretrain_config.get_config("task=bandit,quick")
    config.task.num_tokens = 16
    config.task.sigma = 2.0
    config.model.width = 16
    config.model.mlp_width = 32
    config.pretrain.steps = 20
    config.pretrain.chunk_steps = 10
    config.pretrain.rng_impl = "rbg"
    workdir = str(tmp_path / "ref")
    report = pretrain_exp.train_and_evaluate(config, workdir, log=lambda *_: None)
    assert os.path.exists(os.path.join(workdir, "report.json"))
    assert os.path.exists(os.path.join(workdir, "metrics.jsonl"))
    task, cfg, params, meta = reference.restore_reference(workdir)
    assert task == tasks.make("bandit", num_tokens=16, sigma=2.0)
    assert cfg.width == 16 and cfg.vocab_size == 17
    assert meta["report"]["data_kl_seq"] == pytest.approx(report["data_kl_seq"])
    # The restored reference reproduces the saved report's fit exactly.
    again = reference_fit.fit_report(
        cfg, params, task, jax.random.key(0, impl="rbg"), num_samples=0
    )
    assert again["data_kl_seq"] == pytest.approx(report["data_kl_seq"], abs=1e-6)
