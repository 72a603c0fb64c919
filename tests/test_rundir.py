"""A run directory you can trust: config check, lock, damaged files, reference mismatch."""

import errno
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from grpo_jax.configs import grpo as grpo_config, tasks as task_configs
from grpo_jax.run import (
    build,
    checkpoint,
    config_utils,
    jsonio,
    reference,
    rundir,
    runner,
    sweep,
    writers,
)
from grpo_jax.models import model
from grpo_jax.rl import pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**train):
    c = grpo_config.get_config("task=bandit")
    c.train.update(train)
    return c


def test_changed_config_is_refused_with_a_diff(tmp_path):
    logs = []
    assert rundir.check_config(str(tmp_path), _config(), log=logs.append) == {}
    assert os.path.exists(tmp_path / rundir.CONFIG_FILE)
    rundir.check_config(str(tmp_path), _config(), log=logs.append)  # the same: resumes
    changed = _config()
    changed.loss.beta = 0.5
    with pytest.raises(
        rundir.ConfigMismatchError, match=r"(?s)loss.beta: 0.04 -> 0.5.*--workdir.*--overwrite"
    ):
        rundir.check_config(str(tmp_path), changed, log=logs.append)
    # A change that does not alter the computation resumes and says so.
    longer = _config(num_steps=400, progress=False)
    diff = rundir.check_config(str(tmp_path), longer, log=logs.append)
    assert set(diff) == {"train.num_steps", "train.progress"}
    assert "do not alter the computation" in logs[-1] and "train.num_steps" in logs[-1]
    # --overwrite replaces the stored config.
    rundir.check_config(str(tmp_path), changed, overwrite=True, log=logs.append)
    assert jsonio.read_json(str(tmp_path / rundir.CONFIG_FILE))["loss"]["beta"] == 0.5


def test_second_process_is_refused_and_stale_lock_taken_over(tmp_path):
    code = (
        "import sys; from grpo_jax.run import rundir\n"
        "try:\n"
        "    with rundir.lock(sys.argv[1]): pass\n"
        "except rundir.LockedError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    with rundir.lock(str(tmp_path)):
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
        assert out.returncode == 3, out.stderr
        assert f"in use by PID {os.getpid()} on host" in out.stdout
    assert not os.path.exists(tmp_path / rundir.LOCK_FILE)  # released
    # A lock left by a dead process (same host) is taken over with a warning.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    import socket  # pylint: disable=import-outside-toplevel

    (tmp_path / rundir.LOCK_FILE).write_text(
        json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()})
    )
    logs = []
    with rundir.lock(str(tmp_path), log=logs.append):
        pass
    assert any("stale lock" in line for line in logs)


def test_unreadable_lock_is_taken_over_with_a_warning(tmp_path):
    """An empty or damaged lock (its holder crashed, or the disk filled, while writing it)
    names no process that could still hold it: taken over with a warning, as a stale one."""
    for content in ("", '{"pid": 12'):
        (tmp_path / rundir.LOCK_FILE).write_text(content)
        logs = []
        with rundir.lock(str(tmp_path), log=logs.append) as path:
            assert jsonio.read_json(path)["pid"] == os.getpid()
        assert any("taking over the lock" in line and "cannot be read" in line for line in logs)
        assert not os.path.exists(tmp_path / rundir.LOCK_FILE)


def test_full_disk_while_locking_says_so_and_leaves_no_lock(tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd, *args, **kwargs):
            self._f = real_fdopen(fd, *args, **kwargs)

        def write(self, _):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(os, "fdopen", FullDisk)
    with pytest.raises(OSError, match=r"no space left on device while writing the lock .*\.lock"):
        with rundir.lock(str(tmp_path), log=lambda *_: None):
            pass
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []  # neither a lock nor a temporary file
    with rundir.lock(str(tmp_path), log=lambda *_: None):  # space freed: the rerun locks
        pass


def test_partial_last_jsonl_line_is_truncated_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": i, "x": float(i)} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "x": 3.')
    logs = []
    writers.truncate_jsonl(str(path), 2, log=logs.append)
    assert "line 4 is a partial write" in logs[0] and str(path) in logs[0]
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1]
    # Damage before the last line is not silently dropped.
    path.write_text('{"step": 0}\n{"step": 1\n{"step": 2}\n')
    with pytest.raises(jsonio.CorruptFileError, match="line 2 of 3 is damaged"):
        rundir.recover_jsonl(str(path))


def _truncate_files(directory):
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(max(0, os.path.getsize(os.path.join(root, name)) // 3))


def test_truncated_checkpoint_falls_back_to_the_previous_step(tmp_path):
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(4)}
    d = str(tmp_path / "ckpt")
    checkpoint.save(d, 1, tree, {"step": 1})
    checkpoint.save(d, 2, jax.tree.map(lambda x: x + 1, tree), {"step": 2})
    _truncate_files(os.path.join(d, "2"))
    logs = []
    out, meta, step = checkpoint.restore_newest_intact(d, tree, log=logs.append)
    assert step == 1 and meta["step"] == 1
    np.testing.assert_array_equal(out["w"], tree["w"])
    assert any("step 2" in line and "unreadable" in line for line in logs)
    _truncate_files(os.path.join(d, "1"))
    with pytest.raises(RuntimeError, match=f"no intact checkpoint in {d}"):
        checkpoint.restore_newest_intact(d, tree, log=logs.append)


def _garble_files(directory):
    """Flip 16 bytes in the middle of the largest data file under `directory` (size kept)."""
    paths = [os.path.join(r, n) for r, _, files in os.walk(directory) for n in files]
    path = max(paths, key=os.path.getsize)
    data = bytearray(open(path, "rb").read())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    with open(path, "wb") as f:
        f.write(bytes(data))


def test_garbled_checkpoint_falls_back_to_the_previous_step(tmp_path):
    """Bytes flipped in the newest checkpoint (its size kept) read back without an error
    from orbax; the checksums saved with it catch them and the previous step is used."""
    noise = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    tree = {"w": jnp.asarray(noise), "b": jnp.ones(4)}
    d = str(tmp_path / "ckpt")
    checkpoint.save(d, 1, tree, {"step": 1})
    checkpoint.save(d, 2, jax.tree.map(lambda x: x + 1, tree), {"step": 2})
    _garble_files(os.path.join(d, "2"))
    logs = []
    out, meta, step = checkpoint.restore_newest_intact(d, tree, log=logs.append)
    assert step == 1 and meta == {"step": 1}
    np.testing.assert_array_equal(out["w"], tree["w"])
    assert any("step 2" in line and "checksum" in line for line in logs), logs
    with pytest.raises(checkpoint.CorruptCheckpointError, match="step 2.*checksum"):
        checkpoint.restore(d, tree, step=2)


def test_fallback_past_a_damaged_step_leaves_no_read_running(tmp_path, monkeypatch, capfd):
    """Orbax reads a step's arrays concurrently and, at the first failure, closes its event
    loop under the reads still running: each printed "RuntimeError: Event loop is closed"
    when it finished, after a run that fell back and succeeded. A damaged step is now found
    by reads that are all waited for, and never handed to orbax's reader."""
    rng = np.random.default_rng(1)
    tree = {f"w{i}": jnp.asarray(rng.standard_normal((32, 32)), jnp.float32) for i in range(40)}
    d = str(tmp_path / "ckpt")
    checkpoint.save(d, 1, tree)
    checkpoint.save(d, 2, tree)
    _truncate_files(os.path.join(d, "2", "state", "ocdbt.process_0"))  # the data, not the JSON
    handed_to_orbax = []
    restore = ocp.CheckpointManager.restore

    def spy(self, step, *args, **kwargs):
        if "state" in kwargs["args"].keys():
            handed_to_orbax.append(step)
        return restore(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", spy)
    logs = []
    _, _, step = checkpoint.restore_newest_intact(d, tree, log=logs.append)
    assert step == 1 and handed_to_orbax == [1]
    assert any("step 2" in line and "unreadable" in line for line in logs), logs
    assert "Event loop is closed" not in capfd.readouterr().err


def test_max_to_keep_bounds_the_checkpoints(tmp_path):
    d = str(tmp_path / "ckpt")
    for step in range(1, 5):
        checkpoint.save(d, step, {"x": jnp.full(3, step)}, max_to_keep=2)
    assert checkpoint.all_steps(d) == [3, 4]


def test_corrupted_cell_is_run_again(tmp_path):
    base = ml_collections.ConfigDict({"seed": 0, "x": 1.0})
    cells = sweep.expand(base, [("seed", [0, 1, 2])])
    calls = []

    def run_group(static, group):
        calls.append(len(group))
        return [{"value": float(c.seed) * 2} for c in group]

    quiet = lambda *_: None
    sweep.run_sweep(cells, run_group, str(tmp_path), {"seed"}, log=quiet)
    damaged = sweep.cell_path(str(tmp_path), sweep.cell_hash(cells[1]))
    with open(damaged, "r+") as f:
        f.truncate(20)
    logs = []
    results = sweep.run_sweep(cells, run_group, str(tmp_path), {"seed"}, log=logs.append)
    assert calls == [3, 1] and [r["value"] for r in results] == [0.0, 2.0, 4.0]
    assert any(damaged in line and "run again" in line for line in logs)


def _tiny_reference(seed: int):
    """(config, task, model config, random parameters) of a 16-token bandit, 1 layer."""
    c = _config()
    c.task = task_configs.task_config("bandit", num_tokens=16, sigma=2.0)
    c.model.update(num_layers=1, width=16, num_heads=2, mlp_width=32)
    task = build.make_task(c)
    mcfg = build.make_model_config(c, task)
    return c, task, mcfg, model.init(mcfg, jax.random.PRNGKey(seed))


def test_reference_of_another_task_is_refused(tmp_path):
    c, task, mcfg, params = _tiny_reference(0)
    ref_dir = str(tmp_path / "reference")
    reference.save_reference(
        ref_dir,
        1,
        params,
        task_config=c.task,
        model_config=mcfg,
        pretrain={k: c.reference[k] for k in ("steps", "batch_size", "lr", "chunk_steps", "seed")},
    )
    restored = reference.load_or_pretrain_reference(c, task, mcfg, ref_dir, log=lambda *_: None)
    np.testing.assert_array_equal(jax.tree.leaves(restored)[0], jax.tree.leaves(params)[0])
    # The runner's cache format is the one restore_reference reads.
    t2, m2, _, meta = reference.restore_reference(ref_dir)
    assert t2 == task and m2 == mcfg and meta["task"]["num_tokens"] == 16
    other = _config()
    other.task = task_configs.task_config(
        "bandit", num_tokens=16, sigma=2.0, num_modes=2, separation=3.0
    )
    other.model.update(num_layers=1, width=16, num_heads=2, mlp_width=32)
    with pytest.raises(rundir.ConfigMismatchError, match=r"(?s)task.num_modes: 1 -> 2"):
        reference.load_or_pretrain_reference(other, build.make_task(other), mcfg, ref_dir)
    other.reference.checkpoint = ref_dir  # an explicit reference of another task, too
    with pytest.raises(rundir.ConfigMismatchError, match="task.num_modes"):
        reference.load_or_pretrain_reference(other, build.make_task(other), mcfg, None)


@pytest.mark.parametrize(
    "arg,match",
    [
        ("task=bandit,quikc", "unknown config argument 'quikc'.*valid: full, quick, task"),
        ("arithmetic", "unknown config argument 'arithmetic'"),
        ("task=bandit,quick=maybe", "not a boolean"),
    ],
)
def test_misspelt_config_argument_fails(arg, match):
    with pytest.raises(ValueError, match=match):
        grpo_config.get_config(arg)


def test_config_argument_types():
    assert (
        grpo_config.get_config("task=arithmetic,quick=False").train.num_steps
        == grpo_config.get_config("task=arithmetic").train.num_steps
    )
    assert config_utils.parse_arg("", a=1) == {"a": 1}
    assert config_utils.parse_arg("a=3", a=1) == {"a": 3}


def test_misspelt_override_names_the_key_and_the_valid_ones():
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "experiments", "train_grpo.py"),
            "--config",
            os.path.join(ROOT, "grpo_jax", "configs", "grpo.py") + ":task=bandit",
            "--config.train.num_stepz=3",
            "--workdir",
            "/nonexistent",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert out.returncode != 0
    assert "--config.train.num_stepz" in out.stderr and "'num_steps'" in out.stderr
    assert "Traceback" not in out.stderr


def test_runner_cached_reference_loads_through_restore_reference(tmp_path, monkeypatch):
    """The runner pretrains and caches a reference in the one metadata format that
    `reference.restore_reference` reads (the old runner wrote one it could not load)."""
    c, task, mcfg, params = _tiny_reference(1)
    monkeypatch.setattr(
        pretrain,
        "pretrain_reference",  # skip the training, keep the saving
        lambda *a, **k: (params, {"steps": 7, "data_kl_seq": 0.5}),
    )
    cache = str(tmp_path / "reference")
    reference.load_or_pretrain_reference(c, task, mcfg, cache, log=lambda *_: None)
    t2, m2, p2, meta = reference.restore_reference(cache)
    assert t2 == task and m2 == mcfg and meta["report"]["data_kl_seq"] == 0.5
    for a, b in zip(jax.tree.leaves(p2), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_damaged_cached_reference_is_refused_naming_it_and_the_way_out(tmp_path, monkeypatch):
    """A cached reference with flipped bytes (size kept) was trained against silently, a
    truncated one died with a storage message; both now name the reference and the fix."""
    c, task, mcfg, params = _tiny_reference(3)
    monkeypatch.setattr(pretrain, "pretrain_reference", lambda *a, **k: (params, {"steps": 7}))
    cache = str(tmp_path / "reference")
    reference.load_or_pretrain_reference(c, task, mcfg, cache, log=lambda *_: None)
    pristine = str(tmp_path / "pristine")
    shutil.copytree(cache, pristine)
    for damage in (_garble_files, _truncate_files):
        shutil.rmtree(cache)
        shutil.copytree(pristine, cache)
        damage(os.path.join(cache, "7", "state"))
        with pytest.raises(
            reference.DamagedReferenceError,
            match=f"the reference in {cache} is damaged.*delete {cache}.*pretrained again",
        ):
            reference.load_or_pretrain_reference(c, task, mcfg, cache, log=lambda *_: None)


def test_reference_saved_before_new_model_fields_still_matches(tmp_path):
    """ModelConfig fields added later (GQA, tied embeddings, norm eps) take their defaults
    when an older reference's metadata lacks them."""
    c, task, mcfg, params = _tiny_reference(2)
    ref_dir = str(tmp_path / "reference")
    meta = reference.reference_metadata(
        c.task,
        mcfg,
        pretrain={k: c.reference[k] for k in ("steps", "batch_size", "lr", "chunk_steps", "seed")},
    )
    for field in ("num_kv_heads", "tie_embeddings", "norm_eps"):
        meta["model"].pop(field, None)
    checkpoint.save(ref_dir, 1, params, meta)
    restored = reference.load_or_pretrain_reference(c, task, mcfg, ref_dir, log=lambda *_: None)
    np.testing.assert_array_equal(jax.tree.leaves(restored)[0], jax.tree.leaves(params)[0])


def test_member_rows_selects_steps_and_converts_once():
    """`writers.member_rows`: rows[member][i] for the chosen steps, values as Python numbers
    and lists (trailing shapes may differ); mismatched [members, steps] axes are refused."""
    from grpo_jax.run import writers  # noqa: PLC0415

    metrics = {
        "loss": np.arange(6, dtype=np.float32).reshape(2, 3),  # [S=2, K=3]
        "shares": np.arange(12).reshape(2, 3, 2),  # [S, K, 2]
    }
    rows = writers.member_rows(metrics, [0, 2])
    assert rows == [
        [{"loss": 0.0, "shares": [0, 1]}, {"loss": 2.0, "shares": [4, 5]}],
        [{"loss": 3.0, "shares": [6, 7]}, {"loss": 5.0, "shares": [10, 11]}],
    ]
    assert type(rows[1][1]["loss"]) is float and type(rows[0][0]["shares"][0]) is int
    assert writers.member_rows(metrics, [])[0] == [] and writers.member_rows({}) == []
    assert writers.unstack_steps({"loss": np.array([1.5, 2.5])}) == [{"loss": 1.5}, {"loss": 2.5}]
    with pytest.raises(ValueError, match=r"\[members, steps\]"):
        writers.member_rows({"a": np.zeros((2, 3)), "b": np.zeros((2, 4))})
