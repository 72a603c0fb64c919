"""The GRPO trainer: optima on the bandit, devices, resume, populations, faults, configs.

Compiles dominate the cost here, so runs that can share a program do (one population with
a lax.switch over KL choices serves the three optimum checks and the reward check).
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import grpo as grpo_config
from grpo_jax import checkpoint, metrics, model, rundir, runner, writers
from grpo_jax.tasks.bandit import bandit_optimum

BETA = 0.5


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
    task = runner.make_task(config)
    mcfg = runner.make_model_config(config, task)
    return task, mcfg, model.init(mcfg, jax.random.PRNGKey(0))


def member(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def policy_probs(mcfg, task, params):
    """Exact bandit policy over the vocabulary (specials have probability 0)."""
    return np.exp(np.asarray(metrics.enumerated_logprobs(mcfg, params, task)))[0]


def optima(task, ref_probs, beta):
    """Closed-form optima of E[R] - beta * KL w.r.t. the *model's* reference probabilities."""
    comps = task.enumerate_completions()
    prompts = jnp.full((comps.shape[0], 1), task.bos_id, jnp.int32)
    r = np.asarray(task.reward(prompts, comps), np.float64)
    q = np.asarray(ref_probs, np.float64)
    rev, fwd = (
        bandit_optimum(r, q / q.sum(), np.array([beta]), d)[0] for d in ("reverse", "forward")
    )
    return rev, fwd, r


def tv(p, q):
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


@pytest.fixture(scope="module")
def bandit_population(tmp_path_factory):
    """k2/loss, exact_fwd/loss, k3/loss with unbiased advantages (RLOO, no std, so the
    objective is E[R] - beta KL), one program, 200 steps."""
    c = tiny_config(
        steps=200, chunk=50, beta=BETA, advantage_estimator="rloo", aggregation="token_mean"
    )
    task, mcfg, ref = reference(c)
    choices = ("k2/loss", "exact_fwd/loss", "k3/loss")
    cells = [{"train.seed": 0, "loss.kl_choice": ch} for ch in choices]
    out = runner.run_population(
        c, cells, str(tmp_path_factory.mktemp("pop")), ref_params=ref, log=lambda *_: None
    )
    return c, task, mcfg, ref, choices, out


def test_bandit_optima_match_the_gradient_audit(bandit_population):
    """k2 in the loss -> reverse-KL optimum; exact forward KL -> forward optimum; and k3 in the
    loss also lands on the *forward* optimum (DESIGN.md §2)."""
    _, task, mcfg, ref, choices, out = bandit_population
    q = policy_probs(mcfg, task, ref)
    rev, fwd, _ = optima(task, q, BETA)
    assert tv(rev, fwd) > 0.15  # the two optima are far apart, so the test discriminates
    expected = {"k2/loss": rev, "exact_fwd/loss": fwd, "k3/loss": fwd}
    for i, choice in enumerate(choices):
        p = policy_probs(mcfg, task, member(out.state.params, i))
        other = fwd if expected[choice] is rev else rev
        assert tv(p, expected[choice]) < 0.08, (choice, tv(p, expected[choice]))
        assert tv(p, other) > 0.12, (choice, tv(p, other))


def test_bandit_reward_rises_and_reference_is_frozen(bandit_population):
    _, task, mcfg, ref, _, out = bandit_population
    q = policy_probs(mcfg, task, ref)
    _, _, r = optima(task, q, BETA)
    ref_reward = float(q @ r)
    final = np.asarray(out.history["reward_mean"])[:, -20:].mean(axis=1)
    assert np.all(final > ref_reward + 0.15), (final, ref_reward)
    for i in range(3):  # the reference is never updated
        for a, b in zip(jax.tree.leaves(member(out.state.ref_params, i)), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(out.state.step[0]) == 200


def test_one_and_eight_devices_agree(tmp_path):
    """Same samples, same math: the batch split over 8 devices changes only summation order.

    Adam's eps is raised for this test: with eps = 1e-8, gradient components that are zero up
    to rounding (~1e-9) are normalised to O(lr) updates whose sign is the rounding's, which
    would turn any summation-order difference into 1e-3 parameter differences.
    """
    finals = []
    for devices, shard_params in ((1, False), (8, False), (8, True)):
        c = tiny_config(steps=4, chunk=2)
        c.optim.eps = 1e-3
        c.mesh.data = devices
        c.mesh.shard_params = shard_params  # FSDP-style: parameters split along `data` too
        _, _, ref = reference(c)
        out = runner.run_population(
            c,
            runner.population_cells(c),
            str(tmp_path / f"{devices}-{shard_params}"),
            ref_params=ref,
            log=lambda *_: None,
        )
        finals.append(out)
    sharded = [x.sharding for x in jax.tree.leaves(finals[2].state.params)]
    assert any(not s.is_fully_replicated for s in sharded)  # parameters really are split
    for other in finals[1:]:
        for a, b in zip(
            jax.tree.leaves(finals[0].state.params), jax.tree.leaves(other.state.params)
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
        for k in ("reward_mean", "loss", "exact_kl_rev"):
            np.testing.assert_allclose(finals[0].history[k], other.history[k], atol=1e-5, rtol=1e-5)


def test_kill_and_resume_equals_uninterrupted_bit_for_bit(tmp_path):
    c = tiny_config(steps=6, chunk=2)
    _, _, ref = reference(c)
    quiet = lambda *_: None
    full = runner.run_population(
        c, runner.population_cells(c), str(tmp_path / "full"), ref_params=ref, log=quiet
    )
    # "Killed" after 2 of 3 chunks, then the same command again resumes from the checkpoint.
    c_cut = tiny_config(steps=4, chunk=2)
    runner.run_population(
        c_cut, runner.population_cells(c_cut), str(tmp_path / "cut"), ref_params=ref, log=quiet
    )
    assert checkpoint.latest_step(str(tmp_path / "cut" / "checkpoints")) == 4
    logs = []
    resumed = runner.run_population(
        c, runner.population_cells(c), str(tmp_path / "cut"), ref_params=ref, log=logs.append
    )
    assert resumed.start_step == 4 and any("resumed" in line for line in logs)
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps = [r["step"] for r in writers.read_metrics(str(tmp_path / "cut"))]
    assert steps == list(range(6))  # every step logged exactly once


def test_population_equals_separate_runs(tmp_path):
    c = tiny_config(steps=4, chunk=4)
    c.optim.eps = 1e-3  # vmap changes summation order only; see test_one_and_eight_devices
    _, _, ref = reference(c)
    quiet = lambda *_: None
    pop = runner.run_population(
        c,
        [{"train.seed": 3}, {"train.seed": 4, "loss.beta": 0.1}],
        str(tmp_path / "pop"),
        ref_params=ref,
        log=quiet,
    )
    for i, cell in enumerate([{"train.seed": 3}, {"train.seed": 4, "loss.beta": 0.1}]):
        one = runner.run_population(c, [cell], str(tmp_path / f"one{i}"), ref_params=ref, log=quiet)
        for a, b in zip(
            jax.tree.leaves(member(pop.state.params, i)),
            jax.tree.leaves(member(one.state.params, 0)),
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
    # the two members really differ (so the comparison above could fail)
    diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(
            jax.tree.leaves(member(pop.state.params, 0)),
            jax.tree.leaves(member(pop.state.params, 1)),
        )
    )
    assert diff > 1e-4, diff


def test_member_values_are_validated():
    with pytest.raises(ValueError, match=r"loss.beta = inf is not a finite number in \[0.0, "):
        runner.population_hparams(tiny_config(), [{"train.seed": 0, "loss.beta": float("inf")}])
    with pytest.raises(ValueError, match=r"optim.lr = 0.0 .*\(and > 0\)"):
        runner.population_hparams(tiny_config(), [{"train.seed": 0, "optim.lr": 0.0}])


def test_nonfinite_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    # Fault injection: beta = inf per member makes the loss non-finite (the member check,
    # which would refuse it before compiling, is switched off for this test).
    monkeypatch.setattr(runner, "check_member", lambda *_: None)
    c = tiny_config(steps=2, chunk=2)
    _, _, ref = reference(c)
    quiet = lambda *_: None
    runner.run_population(c, runner.population_cells(c), str(tmp_path), ref_params=ref, log=quiet)
    good = checkpoint.latest_step(str(tmp_path / "checkpoints"))
    bad = tiny_config(steps=4, chunk=2)
    bad_cells = [{"train.seed": 0, "loss.beta": float("inf")}]
    with pytest.raises(rundir.ConfigMismatchError, match="loss.beta"):  # a changed run
        runner.run_population(bad, bad_cells, str(tmp_path), ref_params=ref, log=quiet)
    # Resume the good run with beta = inf on purpose (bypassing the run-config check) to put
    # a non-finite loss in the middle of a run.
    os.remove(tmp_path / rundir.CONFIG_FILE)
    with pytest.raises(
        runner.NonFiniteError,
        match="non-finite loss or gradient at step 2.*" "last good checkpoint, step 2, is kept in",
    ):
        runner.run_population(bad, bad_cells, str(tmp_path), ref_params=ref, log=quiet)
    assert checkpoint.latest_step(str(tmp_path / "checkpoints")) == good == 2
    with pytest.raises(runner.NonFiniteError, match="step 0.*no checkpoint exists yet"):
        runner.run_population(bad, bad_cells, str(tmp_path / "fresh"), ref_params=ref, log=quiet)

    # "skip": the bad updates are skipped and counted; parameters stay finite and unchanged.
    skip = tiny_config(steps=2, chunk=2)
    skip.train.on_nonfinite = "skip"
    with pytest.raises(runner.TooManySkippedError, match="2 of 2, 100%"):  # default 10%
        runner.run_population(skip, bad_cells, str(tmp_path / "skip0"), ref_params=ref, log=quiet)
    skip.train.max_skipped_frac = 1.0
    out = runner.run_population(skip, bad_cells, str(tmp_path / "skip"), ref_params=ref, log=quiet)
    assert int(out.state.num_skipped[0]) == 2
    for a, b in zip(jax.tree.leaves(member(out.state.params, 0)), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("loss.kl_estimator", "k4", "config.loss.*k4.*k1"),
        ("loss.kl_choice", "k3/everywhere", "config.loss.*everywhere"),
        ("loss.aggregation", "mean", "config.loss.*aggregation"),
        ("grpo.group_size", 1, "config.grpo.group_size"),
        ("model.num_heads", 3, "config.model.width"),
        ("train.on_nonfinite", "ignore", "config.train.on_nonfinite.*stop, skip"),
        ("task.name", "chess", "config.task.name.*bandit"),
        ("train.num_steps", 10, "config.train.num_steps.*multiple of train.chunk_steps"),
        ("train.checkpoint_every_chunks", 0, "config.train.checkpoint_every_chunks.*>= 1"),
        ("loss.beta", float("inf"), r"config.loss.beta: inf is not a finite number in \[0.0, "),
        ("loss.beta", -1.0, r"config.loss.beta: -1.0 is not a finite number in \[0.0, inf\)"),
        ("train.max_skipped_frac", 1.5, r"config.train.max_skipped_frac.*\[0.0, 1.0\]"),
        ("reference.checkpoint", "/no/such/ref", "config.reference.checkpoint.*no checkpoint"),
    ],
)
def test_invalid_config_names_the_field(field, value, match):
    c = tiny_config()
    section, key = field.split(".")
    c[section][key] = value
    with pytest.raises(ValueError, match=match):
        runner.validate_config(c)


def test_metrics_jsonl_has_the_promised_fields(tmp_path):
    c = tiny_config(steps=2, chunk=2)
    c.train.tensorboard = True
    _, _, ref = reference(c)
    runner.train_and_evaluate(c, str(tmp_path), ref_params=ref, log=lambda *_: None)
    rows = writers.read_metrics(str(tmp_path))
    assert len(rows) == 2
    for key in (
        "reward_mean",
        "reward_std",
        "kl_mean",
        "exact_kl_rev",
        "exact_kl_fwd",
        "entropy",
        "clip_frac_low",
        "clip_frac_high",
        "ratio_min",
        "ratio_max",
        "grad_norm",
        "param_norm",
        "update_norm",
        "mode_shares",
        "step_time",
        "tokens_per_s",
    ):
        assert key in rows[0] and np.all(np.isfinite(rows[0][key])), key
    assert os.listdir(tmp_path / "tb")
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["kl"] == "k3/loss" and len(summary["final"]["reward_mean"]) == 1


def test_replayed_policy_forward_equals_recomputed():
    """`RLSetup.replay` (the loss's policy forward replays the sampler's matmuls) and the
    recomputed forward give the same step: loss, gradient norm and the updated parameters
    agree to float32 rounding (both share one sample: same key, same prompts)."""
    from grpo_jax import train  # noqa: PLC0415

    c = tiny_config()
    task, mcfg, ref = reference(c)
    setups = [
        train.RLSetup(model=mcfg, task=task, num_prompts=4, group_size=8, replay=replay)
        for replay in (True, False)
    ]
    assert [s.replays for s in setups] == [True, False]
    state = train.init_rl_state(setups[0], ref, ref, jax.random.PRNGKey(3))
    hp = train.Hparams(loss=runner.make_loss_config(c), lr=jnp.float32(1e-2))
    both = jax.jit(lambda s, h: [train.rl_step(setup, s, h) for setup in setups])(state, hp)
    out = dict(zip((True, False), both))
    (s1, m1), (s0, m0) = out[True], out[False]
    np.testing.assert_allclose(m1["loss"], m0["loss"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m1["grad_norm"], m0["grad_norm"], rtol=1e-4)
    np.testing.assert_allclose(m1["reward_mean"], m0["reward_mean"])
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s0.params)):
        np.testing.assert_allclose(a, b, atol=1e-4)  # lr 1e-2: Adam moves each weight ~1e-2
