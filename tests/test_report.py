"""Tests for grpo_jax.report: bootstrap intervals, data-driven verdicts, tables and figures."""

import json
import os

import numpy as np
import pytest

from grpo_jax import report

CHOICES = ("k1/loss", "k2/loss", "k3/loss", "exact_fwd/loss", "exact_rev/loss")
# Share of mode 0 at the end of training, per choice (multimodal cells): k3-in-loss ends
# like the exact forward KL (mass on both modes), k2-in-loss like the exact reverse KL
# (one mode), k1-in-loss like no regulariser at all.
MODE0 = {
    "exact_fwd/loss": 0.50,
    "k3/loss": 0.52,
    "exact_rev/loss": 0.95,
    "k2/loss": 0.93,
    "k1/loss": 0.75,
    "none": 0.75,
}
BASE = {
    "mode_coverage": 0.5,
    "reward": 0.5,
    "exact_kl_rev": 0.3,
    "exact_kl_fwd": 0.3,
    "entropy": 1.0,
}


def make_records(
    effect_uni,
    effect_multi,
    noise,
    n_seeds,
    seed=0,
    betas=(0.1,),
    steps=4,
    bandit=False,
    task="toy",
):
    """Synthetic records: outcome = base + effect * offset(choice) + noise * N(0, 1).

    The offsets run linearly from -0.5 to 0.5 over CHOICES, so the true spread of every
    outcome across choices is exactly ``effect``.
    """
    rng = np.random.default_rng(seed)
    offsets = dict(zip(CHOICES, np.linspace(-0.5, 0.5, len(CHOICES))))
    ks = [1, 2, 4]
    out = []
    for modality, multimodal, effect in (
        ("unimodal", False, effect_uni),
        ("2 modes, sep 6", True, effect_multi),
    ):
        ref_shares = [0.5, 0.5] if multimodal else [1.0]
        runs = [(c, b) for b in betas for c in CHOICES] + [("none", 0.0)]
        for choice, beta in runs:
            for s in range(n_seeds):
                off = offsets.get(choice, 0.0)
                final = {o: float(BASE[o] + effect * off + noise * rng.normal()) for o in BASE}
                m0 = MODE0[choice] + 0.01 * rng.normal() if multimodal else 1.0
                shares = [m0, 1.0 - m0] if multimodal else [1.0]
                final["mode_shares"] = shares
                p = float(np.clip(final["reward"], 0.01, 0.99))
                final["pass_at_k"] = [1 - (1 - p) ** k for k in ks]
                t = np.linspace(0, 1, steps)
                rec = {
                    "task": task,
                    "modality": modality,
                    "multimodal": multimodal,
                    "kl_choice": choice,
                    "beta": beta,
                    "seed": s,
                    "final": final,
                    "ks": ks,
                    "ref_mode_shares": ref_shares,
                    "history": {
                        "step": list(range(0, 10 * steps, 10)),
                        "reward": list(t * final["reward"]),
                        "exact_kl_rev": list(t * final["exact_kl_rev"]),
                        "exact_kl_fwd": list(t * final["exact_kl_fwd"]),
                        "entropy": list(1.5 - t * (1.5 - final["entropy"])),
                        "mode_shares": [
                            list((1 - x) * np.array(ref_shares) + x * np.array(shares)) for x in t
                        ],
                    },
                }
                if bandit:
                    rec["bandit"] = _bandit_entry(choice, rng)
                out.append(rec)
    return out


def _bandit_entry(choice, rng):
    """A final bandit policy near the forward-KL optimum for k3/loss and exact_fwd/loss, near
    the reverse-KL optimum otherwise."""
    ref = np.array([0.1, 0.2, 0.3, 0.4])
    opt_rev, opt_fwd = np.array([0.7, 0.2, 0.05, 0.05]), np.array([0.4, 0.3, 0.15, 0.15])
    target = opt_fwd if choice in ("k3/loss", "exact_fwd/loss") else opt_rev
    pol = target + 0.01 * rng.dirichlet(np.ones(4))
    return {
        "final_policy": list(pol / pol.sum()),
        "optimum_reverse": list(opt_rev),
        "optimum_forward": list(opt_fwd),
        "reference": list(ref),
    }


def _verdict(records, **kw):
    rows = report.effect_sizes(records, n_boot=500, **kw)
    return report.verdicts(rows), rows


def test_bootstrap_interval_contains_true_spread():
    rng = np.random.default_rng(0)
    true_means = np.array([0.0, 0.5, 1.0])
    vals = [m + 0.1 * rng.normal(size=20) for m in true_means]
    for method in report.BOOTSTRAP_METHODS:
        spread, lo, hi = report.bootstrap_spread(
            vals, n_boot=2000, rng=np.random.default_rng(1), method=method
        )
        assert lo <= 1.0 <= hi, (method, lo, hi)
        assert hi - lo < 0.3
        assert spread == pytest.approx(max(v.mean() for v in vals) - min(v.mean() for v in vals))
    # Coverage over repeated experiments is near nominal on this easy case.
    hits = 0
    for rep in range(100):
        vals = [m + 0.1 * rng.normal(size=20) for m in true_means]
        _, lo, hi = report.bootstrap_spread(vals, n_boot=400, rng=rng)
        hits += lo <= 1.0 <= hi
    assert hits >= 88
    # More seeds, narrower interval; too few seeds, no interval.
    few = [m + 0.1 * rng.normal(size=4) for m in true_means]
    many = [m + 0.1 * rng.normal(size=64) for m in true_means]
    _, l4, h4 = report.bootstrap_spread(few, rng=np.random.default_rng(2))
    _, l64, h64 = report.bootstrap_spread(many, rng=np.random.default_rng(2))
    assert h64 - l64 < h4 - l4
    assert np.isnan(report.bootstrap_spread([[1.0], [2.0, 3.0]])[1])
    with pytest.raises(ValueError, match="valid"):
        report.bootstrap_spread(few, method="bca")


def test_student_t_quantile_matches_tables():
    # Textbook two-sided 95% critical values.
    for df, t in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)]:
        assert report.student_t_quantile(0.975, df) == pytest.approx(t, rel=2e-3)
    assert report.student_t_quantile(0.995, 4) == pytest.approx(4.604, rel=5e-3)


def test_bootstrap_no_effect_lower_bound_near_zero():
    # With no true difference the percentile lower bound is biased above 0; the default
    # (conservative) interval reaches down to the basic bound.
    rng = np.random.default_rng(3)
    vals = [0.3 * rng.normal(size=5) for _ in range(5)]
    _, lo_p, _ = report.bootstrap_spread(vals, rng=np.random.default_rng(0), method="percentile")
    _, lo_c, hi_c = report.bootstrap_spread(vals, rng=np.random.default_rng(0))
    assert lo_c < lo_p and lo_c <= 0.1 < hi_c


def test_verdict_holds_when_only_multimodal_has_an_effect():
    ver, rows = _verdict(make_records(effect_uni=0.0, effect_multi=1.0, noise=0.01, n_seeds=6))
    assert ver["overall"]["verdict"] == "holds", ver
    mods = {m["modality"]: m["verdict"] for m in ver["modalities"]}
    assert mods == {"unimodal": "holds", "2 modes, sep 6": "holds"}
    uni = [r for r in rows if r["modality"] == "unimodal"]
    assert all(r["status"] == "no effect" for r in uni)
    multi = [r for r in rows if r["multimodal"]]
    # The true spread is 1.0 for every outcome; noise 0.01 moves the estimate very little.
    assert all(abs(r["spread"] - 1.0) < 0.05 and r["lo"] > r["threshold"] for r in multi)
    assert sum(r["lo"] <= 1.0 <= r["hi"] for r in multi) >= 4
    assert all(r["argmin"] == CHOICES[0] and r["argmax"] == CHOICES[-1] for r in multi)
    assert all(r["baseline_n"] == 6 for r in rows)


def test_verdict_refuted_by_unimodal_effect():
    ver, _ = _verdict(make_records(effect_uni=1.0, effect_multi=1.0, noise=0.01, n_seeds=6))
    assert ver["overall"]["verdict"] == "refuted"
    mods = {m["modality"]: m["verdict"] for m in ver["modalities"]}
    assert mods == {"unimodal": "refuted", "2 modes, sep 6": "holds"}
    assert "unimodal" in ver["overall"]["reason"]


def test_verdict_refuted_when_multimodal_shows_no_effect():
    ver, _ = _verdict(make_records(effect_uni=0.0, effect_multi=0.0, noise=0.01, n_seeds=6))
    assert ver["overall"]["verdict"] == "refuted"
    mods = {m["modality"]: m["verdict"] for m in ver["modalities"]}
    assert mods == {"unimodal": "holds", "2 modes, sep 6": "refuted"}


def test_verdict_undecided_when_noise_swamps_the_threshold():
    # Same means as the "holds" case, but noise comparable to the effect and 3 seeds.
    ver, rows = _verdict(make_records(effect_uni=0.0, effect_multi=0.3, noise=0.3, n_seeds=3))
    assert ver["overall"]["verdict"] == "undecided", ver
    assert all(m["verdict"] == "undecided" for m in ver["modalities"])
    assert any(r["status"] == "unresolved" for r in rows)


def test_verdict_follows_thresholds_and_outcomes():
    recs = make_records(effect_uni=0.3, effect_multi=1.0, noise=0.01, n_seeds=6)
    assert _verdict(recs)[0]["overall"]["verdict"] == "refuted"
    big = {o: report.Threshold(absolute=0.5) for o in report.OUTCOMES}
    assert _verdict(recs, thresholds=big)[0]["overall"]["verdict"] == "holds"
    rows = report.effect_sizes(recs, outcomes=("reward",), n_boot=200)
    assert {r["outcome"] for r in rows} == {"reward"}
    with pytest.raises(ValueError, match="lacks key 'final'"):
        report.effect_sizes([{k: v for k, v in recs[0].items() if k != "final"}])


def test_behaved_like_finds_forward_and_reverse():
    recs = make_records(effect_uni=0.0, effect_multi=0.0, noise=0.01, n_seeds=5)
    like = {(b["modality"], b["choice"]): b for b in report.behaved_like(recs, n_boot=300)}
    multi = "2 modes, sep 6"
    assert like[(multi, "k3/loss")]["nearest"] == "forward"
    assert like[(multi, "k2/loss")]["nearest"] == "reverse"
    assert like[(multi, "k1/loss")]["nearest"] == "none"
    assert like[(multi, "k3/loss")]["metric"] == "mode_shares"
    assert like[("unimodal", "k3/loss")]["metric"] == "exact_kl"
    assert (multi, "exact_fwd/loss") not in like
    d = like[(multi, "k3/loss")]["dist"]
    assert d["forward"] == pytest.approx(2 * 0.02, abs=0.02)  # |0.52 - 0.50| per mode, 2 modes


def test_behaved_like_summary_counts_clear_cells_and_needs_a_majority():
    row = lambda choice, nearest, support: {"choice": choice, "nearest": nearest,
                                            "support": support}
    rows = [row("k3/loss", "forward", 1.0), row("k3/loss", "forward", 0.99),
            row("k3/loss", "reverse (unclear)", 0.6), row("k2/loss", "reverse", 1.0),
            row("k2/loss", "none", 1.0), row("k2/loss", "forward (unclear)", 0.5)]
    summary = {s["choice"]: s for s in report.behaved_like_summary(rows)}
    assert summary["k3/loss"]["forward"] == 2 and summary["k3/loss"]["unclear"] == 1
    assert summary["k3/loss"]["verdict"] == "forward"
    assert summary["k2/loss"]["reverse"] == 1 and summary["k2/loss"]["verdict"] == "mixed"


def test_write_report_writes_tables_and_every_figure(tmp_path):
    recs = make_records(
        effect_uni=0.0, effect_multi=1.0, noise=0.01, n_seeds=5, betas=(0.1, 1.0), bandit=True
    )
    out = str(tmp_path / "rep")
    result = report.write_report(recs, out, {"config": "synthetic", "steps": 30}, n_boot=200)
    path = result["path"]
    assert path == result["paths"]["report_md"] == os.path.join(out, "report.md")
    assert result["paths"]["report_json"] == os.path.join(out, "report.json")
    md = open(path).read()
    data = json.load(open(os.path.join(out, "report.json")))
    figs = data["figures"]
    assert set(figs) == {"mode_shares", "frontier", "pass_at_k", "entropy", "bandit"}
    for kind, names in figs.items():
        assert names, kind
        for n in names:
            p = os.path.join(out, n)
            assert os.path.getsize(p) > 1000
            with open(p, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
            assert f"]({n})" in md
    assert len(figs["mode_shares"]) == 1  # only the multimodal modality has >= 2 modes
    assert f"**Overall: {data['verdicts']['overall']['verdict'].upper()}**" in md
    assert data["verdicts"]["overall"]["verdict"] == "holds"
    for section in (
        "## Effect sizes",
        "## Which divergence",
        "## Bandit",
        "## Scale of this run",
        "### How the verdict is computed",
        "- **config**: synthetic",
    ):
        assert section in md, section
    assert len(data["effect_sizes"]) == 2 * 2 * len(report.OUTCOMES)
    bandit = {(b["modality"], b["beta"], b["choice"]): b["nearer"] for b in data["bandit"]}
    assert bandit[("unimodal", 0.1, "k3/loss")] == "forward"
    assert bandit[("unimodal", 0.1, "k2/loss")] == "reverse"


def test_write_report_returns_what_report_json_holds(tmp_path):
    recs = make_records(effect_uni=0.0, effect_multi=0.0, noise=0.01, n_seeds=3)
    out = str(tmp_path / "rep")
    result = report.write_report(recs, out, n_boot=100)
    data = json.load(open(result["paths"]["report_json"]))
    assert result["verdicts"] == data["verdicts"]
    assert result["overall"] == data["verdicts"]["overall"]
    assert result["overall"]["verdict"] == "refuted"  # the multimodal modality shows no effect
    assert result["effect_sizes"] == data["effect_sizes"]
    assert result["settings"] == data["settings"]
    assert {k: [os.path.basename(p) for p in v] for k, v in
            result["paths"]["figures"].items()} == data["figures"]
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]  # atomic writes left no temp


def test_baseline_is_none_or_beta_zero():
    rec = {"kl_choice": "k3/loss", "beta": 0.1}
    assert not report.is_baseline_record(rec)
    assert report.is_baseline_record({**rec, "beta": 0.0})
    assert report.is_baseline_record({"kl_choice": "none", "beta": 0.1})
    assert report.is_baseline_record({"kl_choice": report.BASELINE_CHOICE, "beta": 0})
    assert not report.is_baseline_record({"kl_choice": "exact_fwd/loss", "beta": 0.1})
    with pytest.raises(ValueError, match="valid"):
        report.is_baseline_record({"kl_choice": "exact_forwrd/loss", "beta": 0.1})
    recs = make_records(effect_uni=0.0, effect_multi=0.0, noise=0.01, n_seeds=2)
    with pytest.raises(ValueError, match="Record 3: unknown KL estimator 'k9'"):
        report.validate_records(recs[:3] + [{**recs[3], "kl_choice": "k9/loss"}])


def test_markdown_table_helper():
    assert report.table(["a", "b"], [[1, "x"], [2.5, None]]) == [
        "| a | b |", "|---|---|", "| 1 | x |", "| 2.5 | None |"]
    assert report.table(["only"], []) == ["| only |", "|---|"]
