"""The expected-gradient facts of docs/design.md, 'The math', by exact enumeration
(grpo_jax.audit)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.core import audit, kl


@pytest.fixture(scope="module")
def token():
    with jax.enable_x64(True):
        p = audit.random_token_problem(jax.random.key(0), 6, scale=1.0, old_scale=0.5)
        res = audit.token_audit(**p)
        # pi_old == pi: the "off_is" rows are then on-policy samples with the weight.
        res_same = audit.token_audit(p["logits"], p["ref_logits"], p["logits"])
    return p, res, res_same


@pytest.fixture(scope="module")
def sequence():
    with jax.enable_x64(True):
        p = audit.random_sequence_problem(jax.random.key(1), 3, 3, old_scale=0.5)
        res = audit.sequence_audit(
            p["logits"], p["ref_logits"], p["old_logits"], samplings=("on", "off_is")
        )
    return p, res


def grad_of(res, **labels):
    return audit.find_row(res, **labels)["grad_mean"]


def close(a, b, tol=1e-9):
    a, b = np.asarray(a), np.asarray(b)
    return np.linalg.norm(a - b) <= tol * max(np.linalg.norm(b), 1.0)


def test_exact_targets_are_the_closed_forms(token):
    p, res, _ = token
    softmax = lambda x: np.exp(x - x.max()) / np.sum(np.exp(x - x.max()))
    pi = softmax(np.asarray(p["logits"], np.float64))
    ref = softmax(np.asarray(p["ref_logits"], np.float64))
    delta = np.log(pi) - np.log(ref)
    kl_rev = float(np.sum(pi * delta))
    np.testing.assert_allclose(res["kl_reverse"], kl_rev, rtol=1e-12)
    np.testing.assert_allclose(res["kl_forward"], np.sum(ref * -delta), rtol=1e-12)
    np.testing.assert_allclose(res["grad_reverse"], pi * (delta - kl_rev), atol=1e-12)
    np.testing.assert_allclose(res["grad_forward"], pi - ref, atol=1e-12)


@pytest.mark.parametrize("name", kl.ESTIMATORS)
def test_expected_values(token, name):
    _, res, _ = token
    target = res["kl_reverse"] if kl.VALUE_TARGET[name] == "reverse" else res["kl_forward"]
    for sampling in ("on", "off_is"):  # the weight makes the off-policy value unbiased
        row = audit.find_row(res, estimator=name, placement="loss", sampling=sampling)
        if name == "k2":
            assert abs(row["value_mean"] - target) > 1e-2  # second-order approximation
        else:
            np.testing.assert_allclose(row["value_mean"], target, rtol=1e-10)
        assert row["value_var"] > 0 and row["grad_var"] > 0
    if name != "k2":
        off = audit.find_row(res, estimator=name, placement="loss", sampling="off")
        assert abs(off["value_mean"] - target) > 1e-3  # without the weight: biased


def test_token_level_loss_facts(token):
    """As a loss, on policy: k1 -> 0, k2 -> grad KL_rev, k3 -> grad KL_fwd, *_st -> rev."""
    _, res, _ = token
    rev, fwd = res["grad_reverse"], res["grad_forward"]
    g = lambda e: grad_of(res, estimator=e, placement="loss", sampling="on")
    assert np.linalg.norm(g("k1")) < 1e-12
    assert close(g("k2"), rev)
    assert close(g("k3"), fwd)
    assert not close(g("k3"), rev, 1e-2)
    assert close(g("k1_st"), rev) and close(g("k3_st"), rev)
    # k1 as a loss has zero mean but nonzero per-sample gradient variance (noise only).
    assert audit.find_row(res, estimator="k1", placement="loss", sampling="on")["grad_var"] > 0
    # Forward-KL estimators as losses are biased for grad KL_fwd on policy ...
    for e in ("fwd_rlogr", "fwd_nonneg"):
        assert not close(g(e), fwd, 1e-2)


def test_token_level_reward_facts(token):
    """In the reward (score function): k1 -> grad KL_rev, k3 -> rev - fwd, k2 biased."""
    _, res, _ = token
    rev, fwd = res["grad_reverse"], res["grad_forward"]
    g = lambda e, s="on": grad_of(res, estimator=e, placement="reward", sampling=s)
    assert close(g("k1"), rev) and close(g("k1_st"), rev)
    assert close(g("k3"), rev - fwd) and close(g("k3_st"), rev - fwd)
    assert not close(g("k2"), rev, 1e-2)
    for e in kl.ESTIMATORS:
        # The PPO ratio corrects off-policy samples exactly; without it the score is biased.
        assert close(g(e, "off_is"), g(e, "on"))
        assert not close(g(e, "off"), g(e, "on"), 1e-3)


def test_off_policy_and_importance_weight(token):
    """Off policy the weight restores the reverse-KL gradient for k1, k3 and *_st; the
    weighted forward estimators give the forward-KL gradient; without the weight all are
    biased. With pi_old = pi (on policy with the weight) the same holds."""
    _, res, res_same = token
    rev, fwd = res["grad_reverse"], res["grad_forward"]
    for r in (res, res_same):
        g = lambda e: grad_of(r, estimator=e, placement="loss", sampling="off_is")
        for e in ("k1", "k3", "k1_st", "k3_st"):
            assert close(g(e), rev), e
        for e in ("fwd_rlogr", "fwd_nonneg"):
            assert close(g(e), fwd), e
        assert not close(g("k2"), rev, 1e-2)
    # pi_old == pi without the weight is just on policy: k3 -> forward again.
    assert close(grad_of(res_same, estimator="k3", placement="loss", sampling="off"), fwd)
    for e in ("k2", "k3", "k1_st", "k3_st"):
        off = grad_of(res, estimator=e, placement="loss", sampling="off")
        assert not close(off, rev, 1e-2) and not close(off, fwd, 1e-2), e
    # Cosine and relative error reported consistently.
    row = audit.find_row(res, estimator="k3", placement="loss", sampling="on")
    assert row["rel_err_fwd"] < 1e-9 and abs(row["cos_fwd"] - 1) < 1e-9
    assert np.isnan(audit.find_row(res, estimator="k1", placement="loss", sampling="on")["cos_rev"])


def test_sequence_level_facts(sequence):
    """Sequence KL: its exact gradient is the future-KL reward-to-go; per-token losses
    (even unbiased per-token ones) only give part of it."""
    p, res = sequence
    rev = res["grad_reverse"]
    g = lambda e, pl, s="on": grad_of(res, estimator=e, placement=pl, sampling=s)
    # Exact: k1 as a sequence reward or reward-to-go; unbiased per-token losses plus the
    # score term of the future KL.
    for e, pl in [
        ("k1", "reward"),
        ("k1", "reward_to_go"),
        ("k1_st", "loss+future"),
        ("k3_st", "loss+future"),
        ("k1_st", "reward_to_go"),
    ]:
        assert close(g(e, pl), rev), (e, pl)
    # Per-token losses alone: biased, including those exact at the token level.
    for e in ("k2", "k1_st", "k3_st", "k3"):
        assert not close(g(e, "loss"), rev, 1e-2), e
        assert not close(g(e, "loss"), res["grad_forward"], 1e-2), e
    assert np.linalg.norm(g("k1", "loss")) < 1e-12
    # Reward-to-go drops the past terms: same mean, less variance than the whole reward.
    rtg = audit.find_row(res, estimator="k1", placement="reward_to_go", sampling="on")
    whole = audit.find_row(res, estimator="k1", placement="reward", sampling="on")
    assert rtg["grad_var"] < whole["grad_var"]
    # Per-token weights do not correct the prefix distribution: off policy stays biased.
    assert not close(g("k3", "loss", "off_is"), rev, 1e-2)
    # Sequence values: E[sum_t k1_t] = E[sum_t k3_t] = sequence KL_rev.
    for e in ("k1", "k3"):
        row = audit.find_row(res, estimator=e, placement="loss", sampling="on")
        np.testing.assert_allclose(row["value_mean"], res["kl_reverse"], rtol=1e-10)
    # Sequence KL by enumeration matches the chain rule of per-position exact KLs.
    with jax.enable_x64(True):
        seqs = audit.enumerate_sequences(3, 3)
        logp = audit.sequence_logprobs(p["logits"], seqs)
        prefix_prob = jnp.exp(jnp.cumsum(logp, -1) - logp)  # P(prefix before t)
        chain = 0.0
        for t in range(3):
            prefix = jnp.zeros(27, jnp.int32)
            for u in range(t):
                prefix = prefix * 3 + seqs[:, u]
            kl_t = kl.exact(p["logits"][t], p["ref_logits"][t], "reverse")[prefix]
            # Sum each distinct prefix once: divide by the V**(T-t) completions after it...
            chain += jnp.sum(prefix_prob[:, t] * kl_t) / 3 ** (3 - t)
        np.testing.assert_allclose(chain, res["kl_reverse"], rtol=1e-10)


def test_audit_errors():
    x = jnp.zeros(4)
    with pytest.raises(ValueError, match="logits and ref_logits must both be"):
        audit.token_audit(x, jnp.zeros(5))
    with pytest.raises(ValueError, match="valid names"):
        audit.token_audit(x, x, estimators=("k9",))
    with pytest.raises(ValueError, match="valid names: loss, reward"):
        audit.token_surrogates(x, x, "k1", "penalty", "on")
    with pytest.raises(ValueError, match="needs old_logp"):
        audit.token_surrogates(x, x, "k1", "loss", "off")
    with pytest.raises(ValueError, match="needs old_tables"):
        audit.sequence_audit([jnp.zeros((1, 2))], [jnp.zeros((1, 2))], samplings=("off",))
