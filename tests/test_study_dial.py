"""The abandoned-mass dial and the Gaussian class's exact optima: the Z0 regression on
planted data, the common frontier targets, the grid optima against a brute-force search, a
known bistable beta, and the basin assignment of runs."""

import math

import numpy as np
import pytest
from scipy import optimize

from grpo_jax.configs import study as study_config
from grpo_jax.run import config_utils
from grpo_jax.study import gaussian_optima as go
from grpo_jax.study import groups
from grpo_jax.study.report import frontier, gaussian_class

Z0 = [0.07, 0.25, 0.53, 0.77, 0.47, 0.53, 0.54, 0.77]
MULTI = [False] * 4 + [True] * 4


def _planted(slope, modality, sd=0.02, seeds=8, seed=0):
    """Per-reference seed means and standard errors of Delta = slope Z0 + modality M + noise."""
    rng = np.random.default_rng(seed)
    z, m = np.asarray(Z0), np.asarray(MULTI, np.float64)
    d = slope * z[:, None] + modality * m[:, None] + sd * rng.standard_normal((z.size, seeds))
    return d.mean(axis=1), d.std(axis=1, ddof=1) / math.sqrt(seeds)


@pytest.mark.parametrize("slope, modality, want", [(0.12, 0.0, "no"), (0.12, 0.06, "yes")])
def test_z0_regression_recovers_a_planted_slope_and_modality_term(slope, modality, want):
    means, ses = _planted(slope, modality, sd=0.01)  # TOST power ~0.99 at margin 0.02
    fit = frontier.regression(Z0, MULTI, means, ses)
    assert fit["z0"].low <= slope <= fit["z0"].high
    assert fit["multimodal"].low <= modality <= fit["multimodal"].high
    assert frontier.modality_answer(fit["multimodal"], margin=0.02) == want


def test_z0_regression_intervals_cover_at_the_nominal_rate():
    hits = 0
    for seed in range(200):
        means, ses = _planted(0.1, 0.03, sd=0.05, seed=seed)
        c = frontier.regression(Z0, MULTI, means, ses)["multimodal"]
        hits += c.low <= 0.03 <= c.high
    assert 0.90 <= hits / 200 <= 0.99


def test_z0_regression_widens_when_the_line_does_not_fit():
    means, ses = _planted(0.12, 0.0, sd=1e-4)
    means = means + 0.05 * np.asarray([1, -1, 1, -1, -1, 1, -1, 1])  # misfit, tiny seed errors
    fit = frontier.regression(Z0, MULTI, means, ses)
    assert fit["dispersion"] > 100
    assert fit["multimodal"].high - fit["multimodal"].low > 0.02


def test_z0_regression_refuses_too_few_or_one_kind_of_reference():
    with pytest.raises(ValueError, match="both kinds"):
        frontier.regression(Z0[:4], MULTI[:4], [0.0] * 4, [0.01] * 4)
    with pytest.raises(ValueError, match="one entry per reference"):
        frontier.regression(Z0, MULTI, [0.0] * 7, [0.01] * 8)


def test_relative_margin_answer():
    e = dict(mean=0.01, se=0.002, df=7)
    assert frontier.relative_answer(e, z0=0.5, margin=0.05) == "within"
    assert frontier.relative_answer(e, z0=0.05, margin=0.05) == "beyond"


def test_common_target_is_the_same_point_of_every_references_improvement():
    assert frontier.common_target(0.3, 0.5) == pytest.approx(0.65)
    assert frontier.common_target(0.6, 0.0) == pytest.approx(0.6)


def _vectors(label):
    m = next(m for m in study_config.get_config().modalities if m["label"] == label)
    return groups.task_vectors(config_utils.make_task(dict(m["task"])))


def test_floor_weight_gives_the_declared_z0():
    for label, z in (("1 mode, Z0 0.25", 0.25), ("1 mode, Z0 0.77", 0.77)):
        v = _vectors(label)
        assert v["ref"][v["zero"]].sum() == pytest.approx(z, abs=2e-4)  # weights rounded


def test_gaussian_grid_optimum_equals_a_brute_force_optimum():
    # A small instance: 12 answers, a two-mode reference, reward on the right mode.
    y = np.arange(12.0)
    ref = np.exp(-0.5 * ((y - 2) / 1.2) ** 2) + np.exp(-0.5 * ((y - 9) / 1.2) ** 2)
    ref /= ref.sum()
    reward = np.maximum(0.0, 1 - np.abs(y - 9) / 3)
    grid = (np.linspace(-0.5, 11.5, 241), np.linspace(np.log(0.3), np.log(12.0), 121))
    for direction in ("reverse", "forward"):
        for beta in (0.05, 0.3, 1.0):

            def neg_j(x):
                g = go.objective_grid(reward, ref, [x[0]], [x[1]])
                d = g["kl_rev"] if direction == "reverse" else g["kl_fwd"]
                return -float(g["reward"][0, 0] - beta * d[0, 0])

            starts = [(m, s) for m in (1.0, 5.5, 9.0) for s in (np.log(0.5), np.log(3.0))]
            opts = dict(xatol=1e-7, fatol=1e-12, maxiter=5000, maxfev=5000)
            best = min(
                (optimize.minimize(neg_j, x0, method="Nelder-Mead", options=opts) for x0 in starts),
                key=lambda r: r.fun,
            )
            top = go.optima(reward, ref, [beta], direction, grid)[0][0]
            # The forward optima at beta 0.3 and 1 are ramps (the mean far right of the
            # answers, a wide std): compare the policies, not the parameters.
            assert top.objective == pytest.approx(-best.fun, abs=1e-3)
            p_top = np.exp(go.log_probs([top.mean], [np.log(top.std)], 12))[0, 0]
            p_best = np.exp(go.log_probs([best.x[0]], [best.x[1]], 12))[0, 0]
            assert 0.5 * np.abs(p_top - p_best).sum() < 0.02


def test_a_known_bistable_beta_is_flagged_and_a_convex_one_is_not():
    v = _vectors("2 modes, 8σ")
    rev = go.optima(v["reward"], v["ref"], [0.8], "reverse")[0]
    # Reverse KL at 8 sigma, beta 0.8: locked onto the rewarded mode (global), a wide state
    # near the moment-matched start, and a lock-on onto the unrewarded mode.
    assert len(rev) >= 2 and go.bistable([rev])[0]
    assert rev[0].reward > 0.6 and any(m.reward < 0.3 and m.std > 6 for m in rev[1:])
    fwd = go.optima(v["reward"], v["ref"], [0.8], "forward")[0]
    assert len(fwd) == 1 and not go.bistable([fwd])[0]


def test_basins_assign_runs_at_the_maxima():
    v = _vectors("2 modes, 8σ")
    maxima = go.optima(v["reward"], v["ref"], [0.8], "reverse")[0]
    runs = []
    for k, start in ((0, "fit"), (1, "middle")):
        p = np.exp(go.log_probs([maxima[k].mean], [np.log(maxima[k].std)], 64)[0, 0])
        runs.append(
            dict(policy="gaussian", replicate=0, arm="exact_rev/loss", modality="2 modes, 8σ",
                 strength=0.8, start=start, policy_probs=p.tolist())
        )  # fmt: skip
    flat = dict(runs[0], start="rewarded_mode", policy_probs=(np.ones(64) / 64).tolist())
    rows = gaussian_class.basins(runs + [flat], {"2 modes, 8σ": v})
    by = {r["start"]: r for r in rows}
    assert (by["fit"]["global"], by["middle"]["local"], by["rewarded_mode"]["unsettled"]) == (
        1,
        1,
        1,
    )
    assert by["fit"]["bistable"] == [0.8]


def test_members_start_from_their_declared_points():
    from grpo_jax.configs import grpo as grpo_config
    from grpo_jax.models import policies
    from grpo_jax.run import build

    c = grpo_config.get_config("task=bandit")
    c.policy = "gaussian"
    c.task.update(num_modes=2, separation=8.0, sigma=3.0)
    cells = [
        dict(c0, **{"init.start": s}) for c0, s in zip(build.population_cells(c) * 3, build.STARTS)
    ]
    task = build.make_task(c)
    _, _, state, _ = build.build_population(c, cells, ref_params=policies.reference_params(task))
    means = np.asarray(state.params["mean"])
    centres = sorted(task.centres)
    assert means[0] == pytest.approx(np.mean(centres), abs=0.5)  # the moment-matched fit
    assert means[1] == pytest.approx(task.target_tokens[0])
    assert means[2] == pytest.approx(0.5 * (centres[0] + centres[-1]))
    assert np.exp(np.asarray(state.params["log_std"]))[1:] == pytest.approx([3.0, 3.0])
    c.policy = "tabular"
    with pytest.raises(ValueError, match="init.start: 'middle' is for the gaussian policy"):
        c.init.start = "middle"
        build.validate_config(c)


def test_grpo_trained_to_convergence_obeys_the_ratio_laws(tmp_path):
    # GX-Chen et al.'s answer-ratio laws, on GRPO's own trained tabular policies: with a
    # large groups (1000 steps of 1024 draws, lr 0.03) the check passes at the
    # study's declared tolerances; the study's 400-step runs do not (their tails are
    # unconverged; the report says so).
    from grpo_jax.configs import grpo as grpo_config  # noqa: PLC0415
    from grpo_jax.run import runner  # noqa: PLC0415
    from grpo_jax.study.report import analysis  # noqa: PLC0415

    c = grpo_config.get_config("task=bandit")
    c.policy = "tabular"
    c.task.update(
        num_tokens=16, num_modes=2, sigma=1.5, separation=4.0, reward_kind="distance",
        reward_width=3.0,
    )  # fmt: skip
    c.grpo.update(num_prompts=1, group_size=1024, one_token_draw="gumbel")
    c.loss.update(advantage_estimator="rloo", eps_low=0.2, eps_high=0.2)
    c.optim.lr = 0.03
    steps = 1000
    c.train.update(
        num_steps=steps, chunk_steps=steps, log_every_steps=steps, checkpoint_every_chunks=0,
        tensorboard=False, progress=False, skip_zero_grad=True,
    )  # fmt: skip
    c.mesh.data = 1
    arms = ("exact_rev/loss", "exact_fwd/loss")
    cells = [
        {"loss.kl_choice": a, "loss.beta": 0.5, "train.seed": s} for a in arms for s in range(2)
    ]
    res = runner.run_population(c, cells, str(tmp_path), log=lambda *a: None)
    vec = groups.task_vectors(res.task)
    probs = np.exp(groups.final_logprobs(res.setup.model, res.state.params))
    records = [
        dict(policy="tabular", replicate=0, modality="m", arm=cell["loss.kl_choice"],
             strength=0.5, policy_probs=probs[m])
        for m, cell in enumerate(cells)
    ]  # fmt: skip
    tol = dict(study_config.get_config().ratio_laws_tol)
    rows = analysis.ratio_check(records, {"m": vec}, tol)
    assert {r["arm"] for r in rows} == set(arms)
    assert all(r["ok"] for r in rows), rows
    rev = next(r for r in rows if r["arm"] == arms[0])
    assert abs(rev["beta_ratio"] - 1) <= tol["beta_ratio"]
