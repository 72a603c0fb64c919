"""End-to-end: the hypothesis experiment at the `tiny` scale writes the report, the
effect-size table and every figure; a re-run reuses every finished cell."""

import importlib.util
import json
import os

import pytest

from configs import hypothesis as hyp_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Loaded by path under its own name: `hypothesis` is also a PyPI package (and pytest plugin).
_SPEC = importlib.util.spec_from_file_location(
    "experiments_hypothesis", os.path.join(ROOT, "experiments", "hypothesis.py"))
experiment = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(experiment)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("hypothesis"))
    lines = []
    out = experiment.run(workdir, hyp_config.get_config("tiny"), log=lambda s: lines.append(str(s)))
    return workdir, out, lines


def test_tiny_run_writes_report_table_and_figures(tiny_run):
    workdir, out, _ = tiny_run
    outdir = os.path.join(workdir, "report")
    with open(out["report"]) as f:
        md = f.read()
    assert "## Effect sizes" in md and "## Verdict" in md
    assert "Which divergence each choice behaved like" in md
    # Effect-size table: one row per (modality, beta, outcome) of the tiny grid.
    with open(os.path.join(outdir, "report.json")) as f:
        rep = json.load(f)
    rows = rep["effect_sizes"]
    assert {r["modality"] for r in rows} == {"1 mode", "2 modes, 8σ apart"}
    assert len(rows) == 2 * 1 * 5
    assert {r["status"] for r in rows} <= {"effect", "no effect", "unresolved"}
    # Verdicts computed for both modalities, one unimodal and one multimodal.
    assert sorted(m["multimodal"] for m in rep["verdicts"]["modalities"]) == [False, True]
    # The exact-KL runs were found under the report's names (behaved-like table filled).
    assert rep["behaved_like"] and all(b["choice"] == "k3/loss" for b in rep["behaved_like"])
    # Every figure kind exists as a PNG and is linked from the Markdown.
    for kind in ("mode_shares", "frontier", "pass_at_k", "entropy", "bandit"):
        assert rep["figures"][kind], kind
        for name in rep["figures"][kind]:
            assert os.path.getsize(os.path.join(outdir, name)) > 1000
            assert f"({name})" in md
    assert out["gaussian"] and os.path.exists(os.path.join(outdir, "gaussian_kl.png"))
    assert "(gaussian_kl.png)" in md
    # Records: every KL choice x seed (+ the beta-0 baseline) with exact final metrics.
    recs = out["records"]
    assert len(recs) == 2 * (3 + 1) * 2
    assert {r["kl_choice"] for r in recs} == {"k3/loss", "exact_fwd/loss", "exact_rev/loss",
                                              "none"}
    for r in recs:
        assert r["eval_method"] == "exact"
        assert abs(sum(r["bandit"]["final_policy"]) - 1) < 1e-4
        assert r["final"]["exact_kl_rev"] >= -1e-5 and r["final"]["exact_kl_fwd"] >= -1e-5


def test_rerun_reuses_finished_cells(tiny_run):
    workdir, out, _ = tiny_run
    lines = []
    again = experiment.run(workdir, hyp_config.get_config("tiny"), log=lambda s: lines.append(str(s)))
    assert any("16 cached, 0 to run" in s for s in lines), lines[:3]
    assert [r["final"] for r in again["records"]] == [r["final"] for r in out["records"]]
