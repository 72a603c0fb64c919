"""grpo_jax.evaluate: exact final evaluation vs independent hand/numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.rl import evaluate, pretrain
from grpo_jax.models import model
from grpo_jax import tasks

KS = (1, 3)


def _mcfg(task):
    return pretrain.model_config_for(task, num_layers=1, width=16, num_heads=2, mlp_width=32)


def _params(task, seed):
    return model.init(_mcfg(task), jax.random.PRNGKey(seed))


def _softmax_ordinary(logits, task):
    z = np.asarray(logits, np.float64).copy()
    z[..., list(task.special_ids)] = -np.inf
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(-1, keepdims=True)


def _arith_probs(task, params):
    """Chain rule by hand: pi(a, b | N) = pi(a | N) pi(b | N, a), numpy float64 [Np, 10, 10]."""
    mcfg = _mcfg(task)
    prompts = np.asarray(task.all_prompts())
    out = np.zeros((prompts.shape[0], 10, 10))
    for i, pr in enumerate(prompts):
        comps = np.stack([np.repeat(np.arange(10), 1), np.zeros(10, int)], -1)  # [10, 2]
        logits = model.completion_logits(
            mcfg, params, jnp.asarray(np.tile(pr, (10, 1))), jnp.asarray(comps, jnp.int32)
        )  # [10, 2, V]
        p = _softmax_ordinary(logits, task)  # [10, 2, V]
        out[i] = p[0, 0, :10][:, None] * p[:, 1, :10]
    return out


def test_bandit_exact_matches_hand_computation():
    task = tasks.make(
        "bandit",
        num_tokens=8,
        num_modes=2,
        sigma=0.7,
        separation=4.0,
        reward_kind="distance",
        reward_width=3.0,
    )
    params, ref = _params(task, 0), _params(task, 1)
    ev = evaluate.evaluate_enumerated(_mcfg(task), task, params, ref, KS)
    bos = jnp.full((1, 1), task.bos_id, jnp.int32)
    lg = lambda p: model.completion_logits(_mcfg(task), p, bos, jnp.zeros((1, 1), jnp.int32))
    pi = _softmax_ordinary(lg(params), task)[0, 0, :8]
    pr = _softmax_ordinary(lg(ref), task)[0, 0, :8]
    r = np.asarray(task.reward_vector())[:8]
    np.testing.assert_allclose(ev["reward"], (pi * r).sum(), rtol=1e-5)
    np.testing.assert_allclose(ev["exact_kl_rev"], (pi * np.log(pi / pr)).sum(), rtol=1e-4)
    np.testing.assert_allclose(ev["exact_kl_fwd"], (pr * np.log(pr / pi)).sum(), rtol=1e-4)
    np.testing.assert_allclose(ev["entropy"], -(pi * np.log(pi)).sum(), rtol=1e-5)
    labels = np.asarray(task.mode_labels(jnp.full((8, 1), task.bos_id), jnp.arange(8)[:, None]))
    shares = np.array([pi[labels == k].sum() for k in range(2)])
    ref_shares = np.array([pr[labels == k].sum() for k in range(2)])
    np.testing.assert_allclose(ev["mode_shares"], shares, rtol=1e-5)
    np.testing.assert_allclose(ev["ref_mode_shares"], ref_shares, rtol=1e-5)
    covered = (ref_shares >= 0.05) & (shares >= 0.1 * ref_shares)
    np.testing.assert_allclose(ev["mode_coverage"], covered.sum() / (ref_shares >= 0.05).sum())
    p_succ = pi[r > 0].sum()
    np.testing.assert_allclose(ev["pass_at_k"], [1 - (1 - p_succ) ** k for k in KS], rtol=1e-5)


def test_arithmetic_sequence_level_matches_chain_rule():
    task = tasks.make(
        "arithmetic", n_min=8, n_max=10, num_modes=2, preferred_mode=1, preference_bonus=0.5
    )
    params, ref = _params(task, 2), _params(task, 3)
    ev = evaluate.evaluate_enumerated(_mcfg(task), task, params, ref, KS)
    pi, pr = _arith_probs(task, params), _arith_probs(task, ref)  # [Np, 10, 10]
    prompts = np.asarray(task.all_prompts())
    n = prompts.shape[0]
    comps = np.asarray([(a, b) for a in range(10) for b in range(10)], np.int32)
    r = np.asarray(
        task.reward(jnp.asarray(np.repeat(prompts, 100, 0)), jnp.asarray(np.tile(comps, (n, 1))))
    ).reshape(n, 10, 10)
    w = 1.0 / n
    np.testing.assert_allclose(ev["reward"], w * (pi * r).sum(), rtol=1e-4)
    np.testing.assert_allclose(ev["exact_kl_rev"], w * (pi * np.log(pi / pr)).sum(), rtol=1e-3)
    np.testing.assert_allclose(ev["exact_kl_fwd"], w * (pr * np.log(pr / pi)).sum(), rtol=1e-3)
    np.testing.assert_allclose(ev["entropy"], -w * (pi * np.log(pi)).sum(), rtol=1e-4)
    p_succ = (pi * (r > 0)).sum((1, 2))  # [Np]
    np.testing.assert_allclose(
        ev["pass_at_k"], [w * (1 - (1 - p_succ) ** k).sum() for k in KS], rtol=1e-4
    )
    # The same policy against itself: both KLs vanish.
    self_ev = evaluate.evaluate_enumerated(_mcfg(task), task, params, params, KS)
    np.testing.assert_allclose([self_ev["exact_kl_rev"], self_ev["exact_kl_fwd"]], 0.0, atol=1e-5)


def test_correct_answers_are_distinct_and_correct():
    fmt = tasks.make("format", num_digits=2, format_weights=(1.0, 0.0))
    ans, valid = evaluate.correct_answers(fmt)
    assert valid.sum(1).tolist() == [2] * 100  # direct and worked, even at weight 0
    canon = tasks.make("arithmetic", n_min=8, n_max=9, num_modes=1)
    ans, valid = evaluate.correct_answers(canon)
    # The table lists every valid pair (weight 0 off the canonical one): 9 for N=8, 10 for 9.
    assert valid.sum(1).tolist() == [9, 10]
    for i, n in enumerate((8, 9)):
        good = ans[i, valid[i]]
        assert (good.sum(-1) == n).all() and len({tuple(g) for g in good}) == len(good)


def test_population_sampled_vs_exact_and_vmap():
    """evaluate_population (jit + vmap) == per-member exact evaluation; the sampled path
    gives the same exact pass@k and MC estimates of the exact values."""
    task = tasks.make("arithmetic", n_min=8, n_max=9, num_modes=2, background=1.0)
    members = [_params(task, s) for s in (4, 5)]
    ref = _params(task, 6)
    stack = lambda ps: jax.tree.map(lambda *x: jnp.stack(x), *ps)
    pop = evaluate.evaluate_population(_mcfg(task), task, stack(members), stack([ref, ref]), KS)
    assert pop["eval_method"] == "exact"
    for m, p in enumerate(members):
        one = evaluate.evaluate_enumerated(_mcfg(task), task, p, ref, KS)
        for k in ("reward", "exact_kl_rev", "exact_kl_fwd", "entropy", "pass_at_k"):
            np.testing.assert_allclose(pop[k][m], one[k], rtol=1e-5, err_msg=k)
    samp = jax.jit(
        lambda p, r, k: evaluate.evaluate_sampled(  # traced, as in a population
            _mcfg(task), task, p, r, k, KS, num_samples=4096
        )
    )(members[0], ref, jax.random.PRNGKey(0))
    np.testing.assert_allclose(samp["pass_at_k"], pop["pass_at_k"][0], rtol=1e-4)
    for k in ("reward", "exact_kl_rev", "exact_kl_fwd", "entropy"):
        np.testing.assert_allclose(samp[k], pop[k][0], rtol=0.05, atol=0.02, err_msg=k)
