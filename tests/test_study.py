"""The study: exact one-token outcomes, the zero-gradient skip, references below their
ceiling, and the tiny end-to-end run (report, results.md, verdicts, figure, reuse, disk)."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.configs import study as study_config
from grpo_jax.run import config_utils
from grpo_jax.core import losses
from grpo_jax.models import model, policies
from grpo_jax.study import groups as study
from grpo_jax import tasks
from grpo_jax.rl import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPEC = importlib.util.spec_from_file_location(
    "experiments_study", os.path.join(ROOT, "experiments", "study.py")
)
experiment = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(experiment)

TINY_DISK_BOUND_MB = 20  # the tiny study's whole workdir stays under this


def _bandit(**fields):
    return tasks.make(
        "bandit", num_tokens=64, sigma=3.0, reward_kind="distance", reward_width=6.0, **fields
    )


def test_one_token_outcomes_by_hand():
    task = _bandit(num_modes=2, separation=8.0)
    vec = study.task_vectors(task)
    assert vec["best"].sum() == 1 and vec["reward"][vec["best"]][0] == 1.0
    on_best = np.zeros(64)
    on_best[vec["best"]] = 1.0
    with np.errstate(divide="ignore"):
        out = study.one_token_outcomes(np.log(on_best), vec)
    assert out["reward"] == 1.0 and out["off_target"] == 0.0 and out["entropy"] == 0.0
    assert out["pass_at_1"] == 1.0 and out["mode_coverage"] == 0.5
    ref = study.one_token_outcomes(np.log(vec["ref"]), vec)
    assert ref["exact_kl_rev"] == pytest.approx(0.0, abs=1e-12)
    assert ref["exact_kl_fwd"] == pytest.approx(0.0, abs=1e-12)
    assert ref["off_target"] == pytest.approx(float(vec["ref"][vec["zero"]].sum()))
    assert ref["mode_coverage"] == 1.0 and ref["between"] > 0
    assert np.isnan(ref["fwd_kl_per_reward"])  # no reward gained over the reference
    # A narrow Gaussian far from most of the reference: its forward KL is large but finite.
    policy = policies.make("gaussian", task)
    logp = study.final_logprobs(
        policy, {"mean": jnp.asarray([43.5]), "log_std": jnp.asarray([0.0])}
    )[0]
    far = study.one_token_outcomes(logp, vec)
    assert np.isfinite(far["exact_kl_fwd"]) and far["exact_kl_fwd"] > 100


def test_mode_coverage_is_the_stats_one_with_the_study_thresholds():
    """One meaning of `mode_coverage`: the study's outcome is `stats.mode_coverage` with
    every reference mode eligible (tau 0) and 5% of its reference share kept (eps 0.05)."""
    from grpo_jax.core import stats  # pylint: disable=import-outside-toplevel

    task = _bandit(num_modes=3, separation=8.0)
    vec = study.task_vectors(task)
    rng = np.random.default_rng(0)
    for _ in range(20):
        logp = rng.normal(size=64) * 4
        out = study.one_token_outcomes(logp, vec)
        p = np.exp(logp - np.logaddexp.reduce(logp))
        shares = np.asarray([p[vec["labels"] == k].sum() for k in range(3)])
        want, _ = stats.mode_coverage(shares, vec["ref_shares"], tau=0.0, eps=0.05)
        assert out["mode_coverage"] == pytest.approx(float(want))


def test_closed_form_delta_at_matched_reward_by_bisection():
    """The report's closed-form Δ at r* (interpolated along the optimum curves) equals the
    optima found by bisecting beta until each direction's reward is r* exactly."""
    from grpo_jax.study.report import analysis  # pylint: disable=import-outside-toplevel
    from grpo_jax.tasks.bandit import bandit_optimum  # pylint: disable=import-outside-toplevel

    task = _bandit(num_modes=2, separation=8.0)
    vec = study.task_vectors(task)

    def at_reward(direction, target, outcome):
        lo, hi = 1e-3, 50.0  # reward falls as beta grows
        for _ in range(80):
            mid = np.sqrt(lo * hi)
            p = bandit_optimum(vec["reward"], vec["ref"], np.asarray([mid]), direction)[0]
            lo, hi = (mid, hi) if float(p @ vec["reward"]) > target else (lo, mid)
        with np.errstate(divide="ignore"):
            return study.one_token_outcomes(np.log(p), vec)[outcome]

    curves = study.optimum_curves(task, betas=np.geomspace(0.005, 5.0, 400))
    for target in (0.5, 0.7):
        got = analysis.closed_form_delta(curves, "off_target", target)
        want = at_reward("forward", target, "off_target") - at_reward(
            "reverse", target, "off_target"
        )
        assert got == pytest.approx(want, abs=2e-3) and want > 0.01
    assert np.isnan(analysis.closed_form_delta(curves, "off_target", 2.0))  # out of range


def test_ratio_laws_hold_at_the_closed_form_optima_and_fail_off_them():
    """GX-Chen et al.'s answer-ratio laws: the closed-form reverse optimum gives beta_hat =
    beta and both optima keep the reference's ratios among zero-reward answers; a policy
    with multiplicative noise on its probabilities fails both within the declared 0.1."""
    from grpo_jax.study.report import analysis  # pylint: disable=import-outside-toplevel
    from grpo_jax.tasks.bandit import bandit_optimum  # pylint: disable=import-outside-toplevel

    vec = study.task_vectors(_bandit(num_modes=2, separation=8.0))
    for beta in (0.1, 0.5):
        for direction, arm in (("reverse", "exact_rev/loss"), ("forward", "exact_fwd/loss")):
            p = bandit_optimum(vec["reward"], vec["ref"], np.asarray([beta]), direction)[0]
            law = analysis.ratio_laws(p, vec["reward"], vec["ref"], arm, beta)
            assert law["spread"] < 1e-6
            if direction == "reverse":
                assert law["beta_ratio"] == pytest.approx(1.0, abs=1e-6)
            else:
                assert law["beta_ratio"] is None
    noisy = p * np.exp(np.random.default_rng(0).normal(0, 0.3, p.shape))
    law = analysis.ratio_laws(noisy / noisy.sum(), vec["reward"], vec["ref"], "exact_rev/loss", 0.5)
    assert law["spread"] > 0.1


def test_every_study_reference_starts_below_its_reward_ceiling():
    for config in (study_config.get_config(), study_config.get_config("full")):
        for m in config.modalities:
            task = config_utils.make_task(dict(m["task"]))
            t = task.table()
            reward = np.asarray(task.reward_vector())[:64]
            ref_reward = float(t["answer_probs"][0] @ reward)
            assert ref_reward < 0.7 * reward.max(), (m["label"], ref_reward)  # room to improve


def test_matched_tail_control_abandons_as_much_mass_as_two_modes():
    cfg = study_config.get_config()
    by_label = {m["label"]: config_utils.make_task(dict(m["task"])) for m in cfg.modalities}
    zero = lambda t: study.one_token_outcomes(
        np.log(study.task_vectors(t)["ref"]), study.task_vectors(t)
    )["off_target"]
    assert zero(by_label["1 mode + floor"]) == pytest.approx(
        zero(by_label["2 modes, 8σ"]), abs=1e-3
    )
    assert zero(by_label["1 mode"]) < 0.1  # the plain unimodal reference abandons little


def test_closed_form_curves_trade_reward_for_kl():
    curves = study.optimum_curves(_bandit(num_modes=2, separation=8.0), np.geomspace(0.01, 0.5, 12))
    for d in ("forward", "reverse"):
        assert np.all(np.diff(curves[d]["reward"]) < 0)  # stronger beta, less reward
    # At the same beta (up to 0.5; they cross near 1), forward keeps more mass off target.
    assert np.all(
        np.asarray(curves["forward"]["off_target"]) > np.asarray(curves["reverse"]["off_target"])
    )


@pytest.mark.parametrize("skip,moves", [(True, False), (False, True)])
def test_zero_gradient_skip_stops_adam_momentum(skip, moves):
    """All advantages zero and beta 0: the GRPO loss has exactly zero gradient. With the
    skip the parameters stay put; without it Adam's momentum (from an earlier update)
    still moves them."""
    task = _bandit(num_modes=1)
    policy = policies.make("tabular", task)
    setup = train.RLSetup(model=policy, task=task, num_prompts=1, group_size=8, skip_zero_grad=skip)
    params = policies.reference_params(task)
    opt_state = setup.optimizer().init(params)
    tokens = jnp.arange(8, dtype=jnp.int32)[:, None] + 20
    prompts = jnp.full((1, 1), task.bos_id, jnp.int32)  # one group of 8
    mask = jnp.ones((8, 1))

    def loss_fn_for(advantages, beta):
        cfg = losses.make_config(beta=beta, kl_estimator="k3")

        def loss_fn(p):
            logits = train.policy_logits(setup, p, prompts, tokens)
            logp = model.token_logprobs(logits, tokens)
            return losses.grpo_loss(
                logp,
                jax.lax.stop_gradient(logp),
                jax.lax.stop_gradient(logp),
                advantages,
                mask,
                cfg,
            )

        return loss_fn

    hp = train.Hparams(loss=losses.make_config(), lr=jnp.float32(0.1))
    zero = jnp.zeros((), jnp.int32)
    params, opt_state, _, _ = train.inner_updates(  # an ordinary update builds momentum
        setup, hp, loss_fn_for(jnp.linspace(-1, 1, 8), 0.0), params, opt_state, zero
    )
    new, _, _, stats = train.inner_updates(
        setup, hp, loss_fn_for(jnp.zeros(8), 0.0), params, opt_state, zero
    )
    assert float(stats["grad_norm"][0]) == 0.0
    changed = not np.array_equal(np.asarray(new["logits"]), np.asarray(params["logits"]))
    assert changed == moves
    assert float(stats["zero_grad_skipped"][0]) == (1.0 if skip else 0.0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("study"))
    lines = []
    out = experiment.run(
        workdir, study_config.get_config("tiny"), log=lambda s: lines.append(str(s))
    )
    return workdir, out, lines


def test_tiny_run_writes_report_results_and_the_glance_figure(tiny_run):
    workdir, out, _ = tiny_run
    paths = out["paths"]
    for key in ("report_md", "results_md", "report_json"):
        assert os.path.exists(paths[key]), key
    assert os.path.exists(paths["figures"]["glance"][0])
    results = open(paths["results_md"]).read()
    assert "### Verdicts" in results and "glance.png" in results
    report_md = open(paths["report_md"]).read()
    for section in (
        "## Verdicts",
        "## Design",
        "**Decision rule.**",
        "## Power",
        "Robustness replicate",
    ):
        assert section in report_md, section
    for contrast in out["q1"].values():
        assert contrast["overall"] in ("holds", "refuted", "undecided")
    assert len(out["records"]) == 96 and {r["replicate"] for r in out["records"]} == {0, 1}


def test_tiny_rerun_reuses_every_cell(tiny_run):
    workdir, out, _ = tiny_run
    lines = []
    again = experiment.run(
        workdir, study_config.get_config("tiny"), log=lambda s: lines.append(str(s))
    )
    assert any("96 cached, 0 to run" in line for line in lines)
    assert [r["final"] for r in again["records"]] == [r["final"] for r in out["records"]]


def test_a_lost_cell_is_recomputed_with_its_group_and_equals_the_first_run(tiny_run):
    # A truncated cell file: its whole group runs again (a one-member population is another
    # program, whose rounding a training run amplifies), so the records are the first run's.
    workdir, out, _ = tiny_run
    cells = os.path.join(workdir, "sweep", "cells")
    name = sorted(os.listdir(cells))[0]
    with open(os.path.join(cells, name), "r+", encoding="utf-8") as f:
        f.truncate(10)
    lines = []
    again = experiment.run(
        workdir, study_config.get_config("tiny"), log=lambda s: lines.append(str(s))
    )
    assert any("finished cells run again with their groups" in line for line in lines)
    assert [r["final"] for r in again["records"]] == [r["final"] for r in out["records"]]
    assert [r["history"] for r in again["records"]] == [r["history"] for r in out["records"]]


def test_a_misspelt_design_key_fails_before_any_cell_runs(tmp_path):
    for key, value, match in (
        ("primary_outcome", "off_targt", "primary_outcome: 'off_targt' is not a declared"),
        ("baselines", ["1 mod"], "baselines: '1 mod' is not a unimodal reference"),
        ("primary", ["exact_fwd/loss", "exact_rev/los"], "unknown KL placement 'los'"),
    ):
        c = study_config.get_config("tiny")
        c[key] = value
        with pytest.raises(ValueError, match=match):
            experiment.run(str(tmp_path / key), c, log=lambda s: None)
        assert not os.path.exists(tmp_path / key / "sweep" / "cells")  # nothing trained


def test_analysis_keys_change_without_recomputing_and_the_command_is_kept(tiny_run):
    # An analysis-only key (alpha) re-reports the stored cells; --report_only reports the
    # command that computed them (as typed, quoted), not its own.
    workdir, _, _ = tiny_run
    c = study_config.get_config("tiny")
    c.alpha = 0.1
    lines = []
    typed = "python experiments/study.py --workdir 'a b' --config.alpha=0.1"
    experiment.run(workdir, c, log=lambda s: lines.append(str(s)), command=typed)
    assert any("96 cached, 0 to run" in line for line in lines)
    assert any("do not alter the computation" in line and "alpha" in line for line in lines)
    out = experiment.run(workdir, c, report_only=True, log=lambda s: None, command="other")
    assert typed in open(out["paths"]["results_md"]).read()
    experiment.run(workdir, study_config.get_config("tiny"), log=lambda s: None)  # as before


def test_report_only_says_when_outcomes_are_not_finite(tiny_run):
    workdir, _, _ = tiny_run
    cells = os.path.join(workdir, "sweep", "cells")
    path = os.path.join(cells, sorted(os.listdir(cells))[1])
    saved = open(path, encoding="utf-8").read()
    stored = json.loads(saved)
    stored["result"]["final"]["off_target"] = float("nan")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(stored, f)
    try:
        lines = []
        out = experiment.run(
            workdir, study_config.get_config("tiny"), report_only=True,
            log=lambda s: lines.append(str(s)),
        )  # fmt: skip
        assert any("warning: 1 runs have non-finite outcomes" in line for line in lines)
        assert "**Non-finite outcomes:** 1 runs" in open(out["paths"]["results_md"]).read()
    finally:
        with open(path, "w", encoding="utf-8") as f:
            f.write(saved)


def test_report_only_with_another_config_reports_the_stored_one(tiny_run):
    workdir, _, _ = tiny_run
    other = study_config.get_config("tiny")
    other.num_seeds = 5
    lines = []
    out = experiment.run(workdir, other, report_only=True, log=lambda s: lines.append(str(s)))
    assert any(
        "warning: the report describes the stored cells" in line and "num_seeds" in line
        for line in lines
    )
    scale = open(out["paths"]["report_md"]).read().split("**Scale.**")[1].split("\n")[0]
    assert "3 seeds" in scale and "5 seeds" not in scale  # the stored cells' scale


def test_tiny_run_disk_use_is_bounded(tiny_run):
    workdir, _, _ = tiny_run
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(workdir) for f in fs)
    assert total < TINY_DISK_BOUND_MB * 2**20, total


def test_tiny_sequence_study_runs_reports_and_publishes(tmp_path):
    # The study in sequences through the same pipeline: per-prefix tabular policies on the
    # fork task, records over the 512 completions, the frontier table with the per-node
    # closed forms, and its own README block.
    from grpo_jax.configs import sequence_study  # noqa: PLC0415
    from grpo_jax.study import pipeline  # noqa: PLC0415

    out = experiment.run_sequences(
        str(tmp_path), sequence_study.get_config("tiny"), log=lambda s: None
    )
    recs = out["records"]
    assert len(recs) == 168 and {r["modality"] for r in recs} == {"1 branch", "2 branches, d=1"}
    assert all(len(r["policy_probs"]) == 512 for r in recs)
    # Every KL arm has its closed-form target: per node (KL in the loss) or per sequence
    # (k1 in the reward; the exact forward KL along reference samples).
    assert all((r["tv_to_optimum"] is not None) == (r["arm"] != "entropy") for r in recs)
    results = open(out["paths"]["results_md"]).read()
    assert "### Verdicts" in results and "2 branches, d=1" in results
    assert "Q1 sequence" in results  # the sequence-level contrast, decided like the others
    assert "--sequence_config grpo_jax/configs/sequence_study.py:tiny" in results
    root = tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text(
        f"a\n{pipeline.SEQUENCE_BEGIN}\nold\n{pipeline.SEQUENCE_END}\nb\n", encoding="utf-8"
    )
    report_dir = os.path.dirname(out["paths"]["results_md"])
    markers = (pipeline.SEQUENCE_BEGIN, pipeline.SEQUENCE_END)
    pipeline.publish(report_dir, str(root), "docs/results/sequences", markers)
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "old" not in readme and "docs/results/sequences/glance.png" in readme
    assert (root / "docs/results/sequences/glance.png").exists()
