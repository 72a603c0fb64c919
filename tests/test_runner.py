"""The population runner: one vs eight devices, kill and resume bit for bit, a population
equal to separate runs, non-finite steps (split from test_train_grpo.py so the two files
balance on two pytest-xdist workers)."""

import errno
import os
import shutil
import signal

import jax
import numpy as np
import pytest


from grpo_jax.run import build, checkpoint, programs, rundir, runner, writers
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
    c.train.log_every_steps = 2  # rows at steps 2, 4, 6
    _, _, ref = reference(c)
    quiet = lambda *_: None
    full = runner.run_population(
        c, build.population_cells(c), str(tmp_path / "full"), ref_params=ref, log=quiet
    )
    # "Killed" after 2 of 3 chunks, then the same command again resumes from the checkpoint.
    c_cut = tiny_config(steps=4, chunk=2)
    c_cut.train.log_every_steps = 2
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
    assert steps == [1, 3, 5]  # every logged step exactly once (0-based in the rows)
    # The history returned is the same, resumed or not: the logged steps, read back from
    # metrics.jsonl after a resume (timings aside).
    assert full.history["reward_mean"].shape[1] == 3
    for k, v in full.history.items():
        if k not in ("step_time", "tokens_per_s"):
            np.testing.assert_allclose(resumed.history[k], v, rtol=1e-6, err_msg=k)


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
    # Resume the good run with beta = inf on purpose (bypassing the run-config checks of
    # config.json and of the checkpoints) to put a non-finite loss in the middle of a run.
    os.remove(tmp_path / rundir.CONFIG_FILE)
    monkeypatch.setattr(runner, "_check_checkpoint_config", lambda *_: None)
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


# ------------------------------------------------------------------------------------------
# Nothing lost, nothing silent: SIGTERM, a torn metrics row, another config, a full disk.
# Each run is compared with one uninterrupted run of the same tiny config.
# ------------------------------------------------------------------------------------------

QUIET = lambda *_: None


def _rows(workdir):
    """metrics.jsonl without the timing columns (they differ between any two runs)."""
    timing = ("step_time", "tokens_per_s")
    return [{k: v for k, v in r.items() if k not in timing} for r in writers.read_metrics(workdir)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    c = tiny_config(steps=4, chunk=2)
    _, _, ref = reference(c)
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    out = runner.run_population(c, build.population_cells(c), workdir, ref_params=ref, log=QUIET)
    assert checkpoint.all_steps(os.path.join(workdir, "checkpoints")) == [2, 4]
    return dict(config=c, ref=ref, out=out, rows=_rows(workdir), workdir=workdir)


def _assert_same_run(full, out, workdir):
    for a, b in zip(jax.tree.leaves(full["out"].state), jax.tree.leaves(out.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _rows(workdir) == full["rows"]  # every row, once, as the uninterrupted run wrote it


def test_sigterm_checkpoints_releases_the_lock_and_the_rerun_resumes(
    tmp_path, monkeypatch, uninterrupted
):
    full, d = uninterrupted, str(tmp_path)
    c = tiny_config(steps=4, chunk=2)
    c.train.checkpoint_every_chunks = 2  # no checkpoint at step 2 unless SIGTERM makes one
    get = programs.PROGRAMS.get

    def get_then_sigterm(*args, **kwargs):
        run_chunk, cached = get(*args, **kwargs)

        def run(state, hp):
            out = run_chunk(state, hp)
            os.kill(os.getpid(), signal.SIGTERM)  # what a cluster scheduler sends
            return out

        return run, cached

    def not_handled(*_):
        raise AssertionError("SIGTERM reached the handler installed before the run")

    monkeypatch.setattr(programs.PROGRAMS, "get", get_then_sigterm)
    before = signal.signal(signal.SIGTERM, not_handled)
    try:
        with pytest.raises(
            runner.Terminated, match=f"SIGTERM: stopped at step 2 of 4; checkpoint step 2 is in"
        ) as stopped:
            runner.run_population(
                c, build.population_cells(c), d, ref_params=full["ref"], log=QUIET
            )
        assert signal.getsignal(signal.SIGTERM) is not_handled  # the previous one, restored
    finally:
        signal.signal(signal.SIGTERM, before)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert not os.path.exists(os.path.join(d, rundir.LOCK_FILE))  # any host may rerun
    assert checkpoint.all_steps(os.path.join(d, "checkpoints")) == [2]
    monkeypatch.undo()
    c = full["config"]
    out = runner.run_population(c, build.population_cells(c), d, ref_params=full["ref"], log=QUIET)
    assert out.start_step == 2
    _assert_same_run(full, out, d)


def test_torn_last_metrics_row_is_computed_again(tmp_path, uninterrupted):
    """The last row torn after the run ended: the newest checkpoint (step 4) is ahead of the
    rows, so the run resumes from step 2 and writes rows 2 and 3 again (11 of 12 rows
    survived before)."""
    full, d = uninterrupted, str(tmp_path / "run")
    shutil.copytree(full["workdir"], d)
    path = os.path.join(d, "metrics.jsonl")
    text = open(path, encoding="utf-8").read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[:-20])  # a crash, or damage, in the middle of the last line
    logs = []
    c = full["config"]
    out = runner.run_population(
        c, build.population_cells(c), d, ref_params=full["ref"], log=logs.append
    )
    assert out.start_step == 2
    assert any("holds 3 of the 4 rows written before checkpoint step 4" in x for x in logs), logs
    _assert_same_run(full, out, d)


def test_checkpoints_refuse_another_config_when_config_json_is_gone(tmp_path, uninterrupted):
    full, d = uninterrupted, str(tmp_path / "run")
    shutil.copytree(full["workdir"], d)
    os.remove(os.path.join(d, rundir.CONFIG_FILE))
    other = tiny_config(steps=6, chunk=2)
    other.loss.beta = 0.5
    with pytest.raises(
        rundir.ConfigMismatchError,
        match=r"(?s)checkpoints \(step 4\) of a run with a different config.*"
        r"loss.beta: 0.04 -> 0.5.*--overwrite",
    ):
        runner.run_population(
            other, build.population_cells(other), d, ref_params=full["ref"], log=QUIET
        )
    assert not os.path.exists(os.path.join(d, rundir.CONFIG_FILE))  # nothing taken as agreed
    assert checkpoint.all_steps(os.path.join(d, "checkpoints")) == [2, 4]


def test_full_disk_mid_run_names_the_file_and_the_rerun_resumes(
    tmp_path, monkeypatch, uninterrupted
):
    full, d = uninterrupted, str(tmp_path)
    write = writers.MetricWriter.write

    def write_until_full(self, step, metrics):
        if step >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, step, metrics)

    monkeypatch.setattr(writers.MetricWriter, "write", write_until_full)
    c = full["config"]
    with pytest.raises(
        OSError,
        match=r"no space left on device while writing .*metrics.jsonl \(step 2\) \(.*\); free space",
    ) as failed:
        runner.run_population(c, build.population_cells(c), d, ref_params=full["ref"], log=QUIET)
    assert failed.value.errno == errno.ENOSPC
    assert not os.path.exists(os.path.join(d, rundir.LOCK_FILE))
    monkeypatch.undo()
    out = runner.run_population(c, build.population_cells(c), d, ref_params=full["ref"], log=QUIET)
    assert out.start_step == 2
    _assert_same_run(full, out, d)
