"""Metrics on hand-computed cases, and exact sequence-level identities on a tiny model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.core import checks, kl, stats
from grpo_jax.models import model
from grpo_jax.rl import pretrain
from grpo_jax import tasks
from grpo_jax.tasks import enumeration


def logits_of(p):
    return jnp.log(jnp.asarray(p, jnp.float32))


def test_token_kl_and_entropy_hand_computed():
    p, q = [0.5, 0.5], [0.25, 0.75]
    rev = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    fwd = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    np.testing.assert_allclose(
        stats.token_kl(logits_of(p), logits_of(q), "reverse"), rev, rtol=1e-6
    )
    np.testing.assert_allclose(
        stats.token_kl(logits_of(p), logits_of(q), "forward"), fwd, rtol=1e-6
    )
    with pytest.raises(ValueError, match="direction"):
        stats.token_kl(logits_of(p), logits_of(q), "both")
    np.testing.assert_allclose(stats.entropy(jnp.zeros((3, 4))), [math.log(4)] * 3, rtol=1e-6)
    banned = stats.ban_tokens(jnp.zeros((2, 4)), (1, 3))
    np.testing.assert_allclose(jax.nn.softmax(banned), [[0.5, 0, 0.5, 0]] * 2)
    np.testing.assert_allclose(stats.entropy(banned), [math.log(2)] * 2, rtol=1e-6)
    np.testing.assert_allclose(
        stats.masked_mean(jnp.asarray([1.0, 2.0, 9.0]), jnp.asarray([1.0, 1.0, 0.0])), 1.5
    )
    # One implementation each: exact KL is kl.exact, the masked mean is checks.masked_mean.
    assert stats.token_kl is kl.exact and stats.masked_mean is checks.masked_mean
    np.testing.assert_allclose(
        stats.masked_mean(
            jnp.asarray([[1.0, 3.0], [5.0, 7.0]]), jnp.asarray([[1.0, 1.0], [0.0, 0.0]]), axis=1
        ),
        [2.0, 0.0],
    )
    with pytest.raises(ValueError, match=r"x\[3\], mask\[2\]"):
        stats.masked_mean(jnp.zeros(3), jnp.zeros(2))


def test_sequence_and_data_kl_hand_computed():
    p = np.asarray([0.5, 0.25, 0.25, 0.0])
    q = np.asarray([0.25, 0.25, 0.25, 0.25])
    lp = jnp.log(jnp.asarray(p, jnp.float32))  # contains -inf
    lq = jnp.log(jnp.asarray(q, jnp.float32))
    rev = 0.5 * math.log(2) + 0 + 0
    np.testing.assert_allclose(stats.sequence_kl(lp, lq, "reverse"), rev, rtol=1e-6)
    # Forward KL[q || p] is infinite: q puts mass where p has none (and never NaN).
    assert float(stats.sequence_kl(lp, lq, "forward")) == float("inf")
    np.testing.assert_allclose(stats.sequence_kl(lq, lp, "reverse"), float("inf"))
    data = jnp.asarray([[1.0, 0.0], [0.5, 0.5]])
    model_lp = jnp.log(jnp.asarray([[0.5, 0.5], [0.25, 0.5]]))
    want = 0.5 * math.log(2) + 0.5 * (0.5 * math.log(2) + 0.5 * 0)
    np.testing.assert_allclose(stats.data_kl(data, model_lp), want, rtol=1e-6)
    np.testing.assert_allclose(
        stats.data_kl(data, model_lp, jnp.asarray([1.0, 0.0])), math.log(2), rtol=1e-6
    )
    with pytest.raises(ValueError, match="shape"):
        stats.data_kl(data, model_lp[:, :1])


def test_mode_shares_and_coverage():
    np.testing.assert_allclose(stats.mode_shares(jnp.asarray([0, 1, 1, -1]), 2), [0.25, 0.5])
    np.testing.assert_allclose(
        stats.mode_shares(jnp.asarray([0, 1, 2]), 3, jnp.asarray([0.2, 0.5, 0.3])),
        [0.2, 0.5, 0.3],
    )
    ref = jnp.asarray([0.5, 0.3, 0.15, 0.05])
    pol = jnp.asarray([0.9, 0.02, 0.08, 0.0])
    frac, covered = stats.mode_coverage(pol, ref, tau=0.1, eps=0.1)
    np.testing.assert_allclose(frac, 2 / 3, rtol=1e-6)
    np.testing.assert_array_equal(covered, [True, False, True, False])
    frac, _ = stats.mode_coverage(pol, ref, tau=0.9, eps=0.1)
    assert float(frac) == 1.0  # no eligible mode


def test_pass_at_k():
    np.testing.assert_allclose(
        stats.pass_at_k_exact(jnp.asarray([0.5, 0.0, 1.0, 0.1]), 3),
        [0.875, 0.0, 1.0, 1 - 0.9**3],
        rtol=1e-6,
    )
    # Hand case: n=5, c=2, k=2 -> 1 - C(3,2)/C(5,2) = 0.7.
    np.testing.assert_allclose(stats.pass_at_k_unbiased(5, 2, 2), 0.7, rtol=1e-5)
    n, k = 10, 3
    c = jnp.arange(n + 1)
    est = np.asarray(stats.pass_at_k_unbiased(n, c, k), np.float64)
    want = [1 - math.comb(n - ci, k) / math.comb(n, k) for ci in range(n + 1)]
    np.testing.assert_allclose(est, want, atol=2e-6)
    # Unbiasedness: E_{c ~ Binomial(n, p)}[estimate] = 1 - (1 - p)^k exactly.
    for p in (0.05, 0.3, 0.8):
        weights = [math.comb(n, ci) * p**ci * (1 - p) ** (n - ci) for ci in range(n + 1)]
        np.testing.assert_allclose(np.dot(weights, est), 1 - (1 - p) ** k, atol=1e-5)


def test_distinct_correct():
    comps = jnp.asarray([[[1, 2], [1, 2], [3, 4], [5, 6]], [[1, 2], [1, 2], [1, 2], [7, 7]]])
    correct = jnp.asarray([[True, True, True, False], [False, True, True, False]])
    np.testing.assert_array_equal(stats.distinct_correct(comps, correct), [2, 1])
    with pytest.raises(ValueError, match="N, k, T"):
        stats.distinct_correct(comps[0], correct[0])


def _tiny(task, seed):
    cfg = pretrain.model_config_for(task, num_layers=1, width=16, num_heads=2, mlp_width=32)
    return cfg, jax.jit(model.init, static_argnums=0)(cfg, jax.random.key(seed, impl="rbg"))


def test_sequence_level_identities_on_a_model():
    """Enumerated sequence KL = expected sum of exact per-token KLs (chain rule), both
    directions; rows of enumerated probabilities sum to 1; pattern mass = enumerated mass."""
    task = tasks.make("arithmetic", n_min=9, n_max=10, num_modes=2)
    cfg, pol = _tiny(task, 0)
    _, ref = _tiny(task, 1)

    @jax.jit
    def compute(pol, ref):
        lp = enumeration.enumerated_logprobs(cfg, pol, task)  # [2, 100]
        lr = enumeration.enumerated_logprobs(cfg, ref, task)
        prompts = task.all_prompts()
        comps = task.enumerate_completions()
        n, c = lp.shape
        fp, fc = jnp.repeat(prompts, c, axis=0), jnp.tile(comps, (n, 1))
        ban = lambda x: stats.ban_tokens(x, task.special_ids)
        zp = ban(model.completion_logits(cfg, pol, fp, fc))
        zr = ban(model.completion_logits(cfg, ref, fp, fc))
        tok = {d: stats.token_kl(zp, zr, d).sum(-1).reshape(n, c) for d in ("reverse", "forward")}
        mass = enumeration.pattern_mass(cfg, pol, prompts, ((3, 4), (5, 6)), task.special_ids)
        return lp, lr, tok, mass

    lp, lr, tok, mass = compute(pol, ref)
    np.testing.assert_allclose(jnp.exp(lp).sum(-1), [1, 1], rtol=1e-5)
    np.testing.assert_allclose(
        stats.sequence_kl(lp, lr, "reverse"), jnp.sum(jnp.exp(lp) * tok["reverse"], -1), rtol=1e-4
    )
    np.testing.assert_allclose(
        stats.sequence_kl(lp, lr, "forward"), jnp.sum(jnp.exp(lr) * tok["forward"], -1), rtol=1e-4
    )
    comps = np.asarray(task.enumerate_completions())
    sel = np.isin(comps[:, 0], (3, 4)) & np.isin(comps[:, 1], (5, 6))
    np.testing.assert_allclose(mass, np.exp(np.asarray(lp))[:, sel].sum(-1), rtol=1e-5)
    shares = enumeration.enumerated_mode_shares(task, lp)
    labels = np.asarray(
        task.mode_labels(
            jnp.repeat(task.all_prompts(), 100, axis=0), jnp.tile(jnp.asarray(comps), (2, 1))
        )
    ).reshape(2, 100)
    want = [0.5 * (np.exp(np.asarray(lp)) * (labels == k)).sum() for k in range(2)]
    np.testing.assert_allclose(shares, want, rtol=1e-5)
