"""The GRPO trainer: optima on the bandit, member validation, configs, metrics, replay
(devices, resume, populations and faults: test_runner.py).

Compiles dominate the cost here, so runs that can share a program do (one population with
a lax.switch over KL choices serves the three optimum checks and the reward check).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest


from grpo_jax.run import build, runner, writers
from grpo_jax.tasks import enumeration
from grpo_jax.tasks.bandit import bandit_optimum
from train_helpers import member, reference, tiny_config

BETA = 0.5


def policy_probs(mcfg, task, params):
    """Exact bandit policy over the vocabulary (specials have probability 0)."""
    return np.exp(np.asarray(enumeration.enumerated_logprobs(mcfg, params, task)))[0]


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
    loss also lands on the *forward* optimum (docs/design.md, 'The math')."""
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


def test_member_values_are_validated():
    with pytest.raises(ValueError, match=r"loss.beta = inf is not a finite number in \[0.0, "):
        build.population_hparams(tiny_config(), [{"train.seed": 0, "loss.beta": float("inf")}])
    with pytest.raises(ValueError, match=r"optim.lr = 0.0 .*\(and > 0\)"):
        build.population_hparams(tiny_config(), [{"train.seed": 0, "optim.lr": 0.0}])


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("loss.kl_estimator", "k4", "config.loss.*k4.*k1"),
        ("loss.kl_choice", "k3/everywhere", "config.loss.*everywhere"),
        ("loss.aggregation", "mean", "config.loss.*aggregation"),
        ("grpo.group_size", 1, "config.grpo.group_size"),
        ("grpo.one_token_draw", "bogus", "config.grpo.one_token_draw.*inverse_cdf, gumbel"),
        ("model.num_heads", 3, "config.model.width"),
        ("train.on_nonfinite", "ignore", "config.train.on_nonfinite.*stop, skip"),
        ("task.name", "chess", "config.task.name.*bandit"),
        ("train.num_steps", 10, "config.train.num_steps.*multiple of train.chunk_steps"),
        ("train.checkpoint_every_chunks", -1, "config.train.checkpoint_every_chunks.*>= 0"),
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
        build.validate_config(c)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("optim.b1", 1.5, r"config.optim.b1: 1.5 is not a finite number in \[0.0, 1.0\)"),
        ("optim.b2", -1.0, r"config.optim.b2: -1.0 is not a finite number in \[0.0, 1.0\)"),
        ("task.sigma", float("nan"), r"config.task.sigma: nan is not finite"),
        ("task.sigma", -1.0, r"config.task: sigma must be > 0, got -1.0"),
        ("reference.chunk_steps", 0, r"config.reference.chunk_steps: 0; must be an integer >= 1"),
        (
            "optim.eps",
            float("nan"),
            r"config.optim.eps: nan is not a finite number in \(0.0, inf\)",
        ),
    ],
)
def test_bad_numbers_are_refused_before_anything_runs(tmp_path, field, value, match):
    """A run with an out-of-range or non-finite number stops with a ValueError naming the key
    and its range, before the run directory exists or anything compiles."""
    c = tiny_config()
    section, key = field.split(".")
    c[section][key] = value
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        runner.run_population(c, [{"train.seed": 0}], str(workdir), log=lambda *_: None)
    assert not workdir.exists()


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
    ev = summary["evaluation"]  # exact, sequence level (bandit: 16 completions per prompt)
    assert ev["eval_method"] == "exact" and ev["members"] == 1
    for key in ("reward", "exact_kl_rev", "exact_kl_fwd", "entropy", "mode_coverage"):
        assert len(ev[key]) == 1 and np.isfinite(ev[key][0]), key
    assert ev["exact_kl_rev"][0] > 0 and ev["exact_kl_fwd"][0] > 0  # it moved off the ref
    assert 0.0 <= ev["pass_at_k"][0][0] <= ev["pass_at_k"][0][1] <= 1.0


def test_replayed_policy_forward_equals_recomputed():
    """`RLSetup.replay` (the loss's policy forward replays the sampler's matmuls) and the
    recomputed forward give the same step: loss, gradient norm and the updated parameters
    agree to float32 rounding (both share one sample: same key, same prompts)."""
    from grpo_jax.rl import train  # noqa: PLC0415

    c = tiny_config()
    task, mcfg, ref = reference(c)
    setups = [
        train.RLSetup(model=mcfg, task=task, num_prompts=4, group_size=8, replay=replay)
        for replay in (True, False)
    ]
    assert [s.replays for s in setups] == [True, False]
    state = train.init_rl_state(setups[0], ref, ref, jax.random.PRNGKey(3))
    hp = train.Hparams(loss=build.make_loss_config(c), lr=jnp.float32(1e-2))
    both = jax.jit(lambda s, h: [train.rl_step(setup, s, h) for setup in setups])(state, hp)
    out = dict(zip((True, False), both))
    (s1, m1), (s0, m0) = out[True], out[False]
    np.testing.assert_allclose(m1["loss"], m0["loss"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m1["grad_norm"], m0["grad_norm"], rtol=1e-4)
    np.testing.assert_allclose(m1["reward_mean"], m0["reward_mean"])
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s0.params)):
        np.testing.assert_allclose(a, b, atol=1e-4)  # lr 1e-2: Adam moves each weight ~1e-2
