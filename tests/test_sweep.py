"""Tests for grpo_jax.sweep: expansion, grouping, hashing, the cache and resumption."""

import hashlib
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from grpo_jax.run import jsonio, sweep
from grpo_jax.tasks.bandit import bandit_optimum

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _base():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "bandit"
    c.loss = ml_collections.ConfigDict({"beta": 0.1, "estimator": "k3"})
    c.optim = ml_collections.ConfigDict({"lr": 1e-3, "warmup": 10})
    return c


def test_expand_cartesian_order_and_values():
    axes = [("loss.estimator", ["k1", "k2", "k3"]), ("seed", [0, 1])]
    cells = sweep.expand(_base(), axes)
    assert len(cells) == 6
    got = [(c.loss.estimator, c.seed) for c in cells]
    assert got == [(e, s) for e in ["k1", "k2", "k3"] for s in [0, 1]]
    # The base is not modified and untouched fields are copied.
    assert _base().loss.estimator == "k3"
    assert all(c.optim.lr == 1e-3 and c.task == "bandit" for c in cells)


def test_expand_zipped_axis_moves_together():
    axes = [
        sweep.zip_axis({"optim.lr": [1e-3, 3e-4, 1e-4], "optim.warmup": [1, 2, 3]}),
        ("seed", [0, 1]),
    ]
    cells = sweep.expand(_base(), axes)
    assert len(cells) == 6
    assert {(c.optim.lr, c.optim.warmup) for c in cells} == {(1e-3, 1), (3e-4, 2), (1e-4, 3)}
    with pytest.raises(ValueError, match="differ in length"):
        sweep.zip_axis({"optim.lr": [1, 2], "optim.warmup": [1]})


def test_expand_follows_field_references():
    base = _base()
    base.loss.beta = ml_collections.FieldReference(0.1)
    base.kl_coef_copy = base.loss.get_ref("beta")
    cells = sweep.expand(base, [("loss.beta", [0.5, 2.0])])
    assert [c.kl_coef_copy for c in cells] == [0.5, 2.0]


def test_expand_errors_name_the_key():
    with pytest.raises(KeyError, match="loss.bta"):
        sweep.expand(_base(), [("loss.bta", [1.0])])
    with pytest.raises(ValueError, match="more than one axis"):
        sweep.expand(_base(), [("seed", [0]), ("seed", [1])])
    with pytest.raises(ValueError, match="no values"):
        sweep.expand(_base(), [("seed", [])])


def test_group_cells_by_static_part():
    axes = [("loss.estimator", ["k1", "k3"]), ("loss.beta", [0.0, 0.1]), ("seed", [0, 1, 2])]
    cells = sweep.expand(_base(), axes)
    groups = sweep.group_cells(cells, {"seed", "loss.beta"})
    assert len(groups) == 2
    assert [len(g.cells) for g in groups] == [6, 6]
    assert groups[0].indices == list(range(6)) and groups[1].indices == list(range(6, 12))
    for g in groups:
        assert {c.loss.estimator for c in g.cells} == {g.static_config.loss.estimator}
        assert "seed" not in g.static_config and "beta" not in g.static_config.loss
        # The key is the hash of the static part (grouping hashes dicts, not copies).
        assert g.key == sweep.cell_hash(g.static_config)
        assert g.key == sweep.cell_hash(sweep.static_part(g.cells[-1], {"seed", "loss.beta"}))
    # A vmappable key under a missing or non-dict parent is ignored, as in static_part.
    assert len(sweep.group_cells(cells, {"seed", "nope.x", "seed.x", "loss.beta"})) == 2
    # ... and so is one inside a plain dict (static_part walks ConfigDicts only); the cell
    # itself is not changed by the grouping.
    plain = ml_collections.ConfigDict({"a": {"b": 1, "c": 2}}, convert_dict=False)
    (g,) = sweep.group_cells([plain], {"a.b"})
    assert g.key == sweep.cell_hash(sweep.static_part(plain, {"a.b"})) == sweep.cell_hash(plain)
    assert plain.a == {"b": 1, "c": 2}
    # Nothing vmappable: every cell is its own program.
    assert len(sweep.group_cells(cells, set())) == 12
    # Everything that varies is vmappable: one program.
    assert len(sweep.group_cells(cells, {"seed", "loss.beta", "loss.estimator"})) == 1
    # Splitting a population.
    split = sweep.group_cells(cells, {"seed", "loss.beta"}, max_group_size=4)
    assert [len(g.cells) for g in split] == [4, 2, 4, 2]
    assert sorted(i for g in split for i in g.indices) == list(range(12))


def test_hash_stable_order_independent_and_sensitive():
    a = ml_collections.ConfigDict({"b": 1, "a": {"y": (1, 2), "x": "s"}})
    b = ml_collections.ConfigDict({"a": {"x": "s", "y": (1, 2)}, "b": 1})
    assert sweep.cell_hash(a) == sweep.cell_hash(b)
    # The hashed text is the sorted compact JSON; check it against an independent sha256.
    expected_text = '{"a":{"x":"s","y":[1,2]},"b":1}'
    assert sweep.canonical_json(a) == expected_text
    assert sweep.cell_hash(a) == hashlib.sha256(expected_text.encode()).hexdigest()[:16]
    c = ml_collections.ConfigDict({"a": {"x": "s", "y": (1, 3)}, "b": 1})
    assert sweep.cell_hash(c) != sweep.cell_hash(a)
    # Same hash in a fresh interpreter with a different PYTHONHASHSEED.
    code = (
        "import ml_collections; from grpo_jax.run import sweep; "
        "print(sweep.cell_hash(ml_collections.ConfigDict({'b': 1, 'a': {'y': (1, 2), 'x': 's'}})))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == sweep.cell_hash(a)


def test_write_json_atomic_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "x.json"
    with pytest.raises(TypeError):
        jsonio.write_json_atomic(str(path), {"bad": object()})
    assert os.listdir(tmp_path) == []
    jsonio.write_json_atomic(str(path), {"a": np.arange(3), "b": np.float32(0.5)})
    assert json.loads(path.read_text()) == {"a": [0, 1, 2], "b": 0.5}


class _CountingRunner:
    """Result per cell: a closed form of the cell's values; optionally raises on call N."""

    def __init__(self, fail_on_call=None):
        self.calls = []
        self.fail_on_call = fail_on_call

    def __call__(self, static, cells):
        self.calls.append([sweep.cell_hash(c) for c in cells])
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("simulated crash")
        scale = {"k1": 1.0, "k2": 2.0, "k3": 3.0, "k4": 4.0}[static.loss.estimator]
        return [{"value": scale * c.loss.beta + c.seed, "arr": np.array([c.seed])} for c in cells]


def _expected(c):
    return {"k1": 1.0, "k2": 2.0, "k3": 3.0, "k4": 4.0}[c.loss.estimator] * c.loss.beta + c.seed


def test_interrupted_sweep_resumes_without_redoing_cells(tmp_path):
    axes = [
        ("loss.estimator", ["k1", "k2", "k3", "k4"]),
        ("loss.beta", [0.1, 0.2]),
        ("seed", [0, 1]),
    ]
    cells = sweep.expand(_base(), axes)
    keys = {"seed", "loss.beta"}
    workdir = str(tmp_path / "run")
    crashing = _CountingRunner(fail_on_call=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sweep.run_sweep(cells, crashing, workdir, keys, log=lambda s: None)
    assert len(crashing.calls) == 3
    done = {h for call in crashing.calls[:2] for h in call}
    assert len(done) == 8
    on_disk = {f[:-5] for f in os.listdir(os.path.join(workdir, "cells"))}
    assert on_disk == done  # no file of the crashed group, no temporary files
    manifest = json.load(open(os.path.join(workdir, "manifest.json")))
    assert [m["hash"] for m in manifest["cells"]] == [sweep.cell_hash(c) for c in cells]

    partial, missing = sweep.load_results(workdir)
    assert len(partial) == 8 and missing == 8

    resumed = _CountingRunner()
    results = sweep.run_sweep(cells, resumed, workdir, keys, log=lambda s: None)
    assert len(resumed.calls) == 2
    rerun = {h for call in resumed.calls for h in call}
    assert not rerun & done and len(rerun) == 8
    assert [r["value"] for r in results] == pytest.approx([_expected(c) for c in cells])
    assert [r["arr"] for r in results] == [[c.seed] for c in cells]

    # A third run finds everything cached and never calls the runner.
    idle = _CountingRunner()
    again = sweep.run_sweep(cells, idle, workdir, keys, log=lambda s: None)
    assert idle.calls == [] and again == results
    assert sweep.load_results(workdir) == (results, 0)


def test_whole_groups_reruns_a_group_with_any_unfinished_cell_whole(tmp_path):
    # One cell file of a finished sweep lost: with whole_groups its whole group runs again
    # (so its numbers come from the same program as before); other groups stay cached.
    cells = sweep.expand(_base(), [("loss.estimator", ["k1", "k2"]), ("seed", [0, 1, 2])])
    keys, workdir = {"seed"}, str(tmp_path / "run")
    first = _CountingRunner()
    results = sweep.run_sweep(cells, first, workdir, keys, log=lambda s: None)
    assert sorted(len(c) for c in first.calls) == [3, 3]
    os.remove(os.path.join(workdir, "cells", sweep.cell_hash(cells[1]) + ".json"))
    only, whole = _CountingRunner(), _CountingRunner()
    sweep.run_sweep(cells, only, workdir, keys, log=lambda s: None)
    assert [len(c) for c in only.calls] == [1]  # default: the missing cell alone
    os.remove(os.path.join(workdir, "cells", sweep.cell_hash(cells[1]) + ".json"))
    again = sweep.run_sweep(cells, whole, workdir, keys, log=lambda s: None, whole_groups=True)
    assert [sorted(c) for c in whole.calls] == [sorted(sweep.cell_hash(c) for c in cells[:3])]
    assert again == results


def test_run_sweep_checks_runner_output(tmp_path):
    cells = sweep.expand(_base(), [("seed", [0, 1])])
    with pytest.raises(ValueError, match="returned 1 results for 2 cells"):
        sweep.run_sweep(cells, lambda s, cs: [{}], str(tmp_path), {"seed"}, log=lambda s: None)
    with pytest.raises(ValueError, match="Identical cells"):
        sweep.run_sweep(
            cells + cells[:1],
            lambda s, cs: [{}] * len(cs),
            str(tmp_path),
            {"seed"},
            log=lambda s: None,
        )


@pytest.mark.parametrize("divergence", ["reverse", "forward"])
def test_bandit_optimum_beats_random_policies(divergence):
    rewards = np.array([1.0, 0.8, 0.2, 0.0])
    ref = np.array([0.1, 0.2, 0.3, 0.4])
    beta = np.array([0.05, 0.3, 2.0])
    pi = bandit_optimum(rewards, ref, beta, divergence)
    np.testing.assert_allclose(pi.sum(axis=1), 1.0, atol=1e-12)

    def objective(q, b):  # q [N, A], b [N] or scalar
        d = (
            (q * np.log(q / ref)).sum(-1)
            if divergence == "reverse"
            else (ref * np.log(ref / q)).sum(-1)
        )
        return q @ rewards - b * d

    rng = np.random.default_rng(0)
    for n, b in enumerate(beta):
        best = objective(pi[n : n + 1], b)[0]
        others = rng.dirichlet(np.ones(4), size=2000)
        near = pi[n] * np.exp(rng.normal(scale=0.05, size=(2000, 4)))
        near /= near.sum(-1, keepdims=True)
        assert best >= objective(others, b).max() - 1e-12
        assert best >= objective(near, b).max() - 1e-12
    with pytest.raises(ValueError, match="valid"):
        bandit_optimum(rewards, ref, beta, "sideways")


def test_entry_point_runs_example_sweep_and_resumes(tmp_path):
    workdir = str(tmp_path / "ex")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "experiments", "sweep.py"),
        "--sweep",
        os.path.join(ROOT, "grpo_jax", "configs", "sweeps", "example.py") + ":small",
        "--workdir",
        workdir,
        "--runner",
        "grpo_jax.configs.sweeps.example:closed_form_bandit_runner",
        "--logtostderr",
    ]
    env = dict(os.environ, PYTHONPATH=ROOT)
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    results = json.load(open(os.path.join(workdir, "results.json")))["cells"]
    assert len(results) == 8  # 2 divergences x 1 lr pair x 2 betas x 2 seeds
    for r in results:
        cfg, res = r["config"], r["result"]
        pi = np.array(res["policy"])
        expect = bandit_optimum(
            np.array(cfg["bandit"]["rewards"]),
            np.array(cfg["bandit"]["ref"]),
            np.array([cfg["loss"]["beta"]]),
            cfg["loss"]["divergence"],
        )[0]
        np.testing.assert_allclose(pi, expect, rtol=1e-9)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    assert second.returncode == 0, second.stderr
    assert "8 cached, 0 to run" in second.stderr
