"""The population runner: one vs eight devices, kill and resume bit for bit, a population
equal to separate runs, non-finite steps (split from test_train_grpo.py so the two files
balance on two pytest-xdist workers)."""

import os

import jax
import numpy as np
import pytest


from grpo_jax.run import build, checkpoint, rundir, runner, writers
from train_helpers import member, reference, tiny_config


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
            build.population_cells(c),
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
        c, build.population_cells(c), str(tmp_path / "full"), ref_params=ref, log=quiet
    )
    # "Killed" after 2 of 3 chunks, then the same command again resumes from the checkpoint.
    c_cut = tiny_config(steps=4, chunk=2)
    runner.run_population(
        c_cut, build.population_cells(c_cut), str(tmp_path / "cut"), ref_params=ref, log=quiet
    )
    assert checkpoint.latest_step(str(tmp_path / "cut" / "checkpoints")) == 4
    logs = []
    resumed = runner.run_population(
        c, build.population_cells(c), str(tmp_path / "cut"), ref_params=ref, log=logs.append
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


def test_nonfinite_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    # Fault injection: beta = inf per member makes the loss non-finite (the member check,
    # which would refuse it before compiling, is switched off for this test).
    monkeypatch.setattr(build, "check_member", lambda *_: None)
    c = tiny_config(steps=2, chunk=2)
    _, _, ref = reference(c)
    quiet = lambda *_: None
    runner.run_population(c, build.population_cells(c), str(tmp_path), ref_params=ref, log=quiet)
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
        match="non-finite loss or gradient.* at step 2.*"
        "last good checkpoint, step 2, is kept in",
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


def test_nonfinite_parameters_stop_before_a_checkpoint(tmp_path, monkeypatch):
    """Adam with b2 = -1: finite losses and gradients, but the first update's second moment
    makes NaN parameters. The run stops at that step, and no checkpoint with a non-finite
    leaf is written (or named "the last good checkpoint")."""
    check = build.validate_config

    def lenient(config, **kw):  # the config check refuses b2 = -1: it sees a valid b2
        valid = config.copy_and_resolve_references()
        valid.optim.b2 = 0.999
        check(valid, **kw)

    monkeypatch.setattr(build, "validate_config", lenient)
    c = tiny_config(steps=4, chunk=2)
    c.optim.b2 = -1.0
    _, _, ref = reference(c)
    with pytest.raises(runner.NonFiniteError, match="parameters.*at step [01] .*no checkpoint"):
        runner.run_population(
            c, build.population_cells(c), str(tmp_path), ref_params=ref, log=lambda *_: None
        )
    ckpt_dir = str(tmp_path / "checkpoints")
    assert checkpoint.all_steps(ckpt_dir) == []
    # The checkpoint writer refuses a non-finite state on its own as well.
    bad = {"w": np.asarray([1.0, np.nan], np.float32)}
    with pytest.raises(checkpoint.NonFiniteCheckpointError, match=r"\['w'\]"):
        checkpoint.save(ckpt_dir, 1, bad, require_finite=True)
    assert checkpoint.all_steps(ckpt_dir) == []
