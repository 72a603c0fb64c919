"""Tests for grpo_jax.advantages: explicit-loop transcriptions of each formula."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.core import advantages as A

G = 4
B = 16


def _rewards(seed=0):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=B).astype(np.float32)
    r[4:8] = np.float32(0.1)  # a zero-variance group (mean has rounding error)
    r[8:12] = rng.integers(0, 2, size=4).astype(np.float32)
    r[8] = 1.0
    r[9] = 0.0
    return r


def _np_advantages(r, G, estimator, eps, batch_std_norm=False, ddof=0):
    r = np.asarray(r, np.float64)
    out = np.zeros_like(r)
    batch_std = math.sqrt(sum((x - r.mean()) ** 2 for x in r) / (len(r) - ddof))
    for g in range(len(r) // G):
        idx = list(range(g * G, (g + 1) * G))
        vals = [r[i] for i in idx]
        mean = sum(vals) / G
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (G - ddof))
        for i in idx:
            if max(vals) == min(vals):
                out[i] = 0.0
                continue
            if estimator == "grpo":
                a, s = r[i] - mean, std + eps
            elif estimator == "drgrpo":
                a, s = r[i] - mean, 1.0
            elif estimator == "grpo_passk":
                best = idx[vals.index(max(vals))]  # first index of the maximum
                second = max(r[j] for j in idx if j != best)
                a, s = (r[i] - second if i == best else 0.0), std + eps
            else:
                a, s = r[i] - (sum(vals) - r[i]) / (G - 1), 1.0
            if batch_std_norm:
                s = batch_std + eps
            out[i] = a / s
    return out


@pytest.mark.parametrize("estimator", A.ESTIMATORS)
@pytest.mark.parametrize("batch_std_norm,ddof", [(False, 0), (True, 0), (False, 1)])
def test_group_advantages_match_loops(estimator, batch_std_norm, ddof):
    r = _rewards()
    adv, aux = A.group_advantages(
        jnp.asarray(r), G, estimator, eps=1e-6, batch_std_norm=batch_std_norm, std_ddof=ddof
    )
    want = _np_advantages(r, G, estimator, 1e-6, batch_std_norm, ddof)
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-6)
    # The all-equal group is exactly zero, not rounding / eps.
    assert np.all(np.asarray(adv[4:8]) == 0.0)
    assert float(aux["zero_var_group_frac"]) == pytest.approx(0.25)
    assert float(aux["adv_mean"]) == pytest.approx(np.mean(want), abs=1e-6)
    assert float(aux["adv_std"]) == pytest.approx(np.std(want), rel=1e-5)


def test_registry_names():
    assert A.ESTIMATORS == tuple(A.REGISTRY) == ("grpo", "drgrpo", "rloo", "grpo_passk")
    assert A.validate_estimator("rloo") == "rloo"
    with pytest.raises(ValueError, match="valid names: grpo, drgrpo, rloo, grpo_passk"):
        A.validate_estimator("ppo")


@pytest.mark.parametrize("name", A.ESTIMATORS)
@pytest.mark.parametrize("ddof", [0, 1])
def test_every_registered_estimator(name, ddof):
    """Each registry entry's baseline and scale, on [n, G] rewards, against the loops."""
    r = _rewards(5).reshape(-1, G)
    baseline, scale = A.REGISTRY[name](jnp.asarray(r), eps=1e-6, std_ddof=ddof)
    assert baseline.shape == scale.shape == r.shape
    for g in range(r.shape[0]):
        vals = [float(v) for v in r[g]]
        mean = sum(vals) / G
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (G - ddof))
        for i in range(G):
            best = vals.index(max(vals))
            passk = max(v for j, v in enumerate(vals) if j != best) if i == best else vals[i]
            want_b = {
                "grpo": mean,
                "drgrpo": mean,
                "rloo": (sum(vals) - vals[i]) / (G - 1),
                "grpo_passk": passk,
            }[name]
            want_s = std + 1e-6 if name in ("grpo", "grpo_passk") else 1.0
            assert float(baseline[g, i]) == pytest.approx(want_b, abs=1e-6)
            assert float(scale[g, i]) == pytest.approx(want_s, rel=1e-5)


def test_group_properties():
    r = jnp.asarray(_rewards(1))
    adv, _ = A.group_advantages(r, G, "rloo")
    np.testing.assert_allclose(adv.reshape(-1, G).sum(1), 0.0, atol=1e-5)
    adv, _ = A.group_advantages(r, G, "grpo")
    per_group = np.asarray(adv).reshape(-1, G)
    nonzero = per_group[np.abs(per_group).sum(1) > 0]
    np.testing.assert_allclose(nonzero.mean(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(nonzero.std(1), 1.0, rtol=1e-4)


def test_reward_to_go_matches_loops():
    rng = np.random.default_rng(2)
    r = _rewards(3)
    T = 5
    pen = rng.normal(size=(B, T)).astype(np.float32)
    mask = (np.arange(T)[None] < rng.integers(1, T + 1, size=B)[:, None]).astype(np.float32)
    pen_garbage = np.where(mask > 0, pen, np.nan).astype(np.float32)
    adv, aux = A.reward_to_go_advantages(
        jnp.asarray(r), jnp.asarray(pen_garbage), jnp.asarray(mask), G, "grpo"
    )
    totals = np.array(
        [r[i] - sum(pen[i, t] for t in range(T) if mask[i, t]) for i in range(B)], np.float64
    )
    want = np.zeros((B, T))
    for g in range(B // G):
        idx = range(g * G, (g + 1) * G)
        z = [totals[i] for i in idx]
        mean = sum(z) / G
        std = math.sqrt(sum((v - mean) ** 2 for v in z) / G)
        for i in idx:
            for t in range(T):
                if mask[i, t] and max(z) != min(z):
                    ret = r[i] - sum(pen[i, u] for u in range(t, T) if mask[i, u])
                    want[i, t] = (ret - mean) / (std + 1e-6)
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-5)
    # At t = 0 the advantage is the sequence-level advantage of the totals.
    seq, _ = A.group_advantages(jnp.asarray(totals, jnp.float32), G, "grpo")
    np.testing.assert_allclose(adv[:, 0], seq, rtol=1e-5, atol=1e-5)
    assert np.isfinite(float(aux["adv_std"]))


def test_process_supervision_matches_loops():
    rng = np.random.default_rng(4)
    T = 6
    step_rewards = rng.normal(size=(B, T)).astype(np.float32)
    step_mask = (rng.random((B, T)) < 0.4).astype(np.float32)
    step_mask[:, -1] = 1.0
    step_rewards[4:8] = 0.5  # a group whose step rewards are all equal
    mask = np.ones((B, T), np.float32)
    mask[0, 4:] = 0.0
    garbage = np.where(step_mask > 0, step_rewards, np.inf).astype(np.float32)
    adv, aux = A.process_advantages(
        jnp.asarray(garbage), jnp.asarray(step_mask), G, mask=jnp.asarray(mask)
    )
    want = np.zeros((B, T))
    for g in range(B // G):
        idx = range(g * G, (g + 1) * G)
        vals = [step_rewards[i, t] for i in idx for t in range(T) if step_mask[i, t]]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
        for i in idx:
            for t in range(T):
                if not mask[i, t] or max(vals) == min(vals):
                    continue
                want[i, t] = sum(
                    (step_rewards[i, u] - mean) / (std + 1e-6)
                    for u in range(t, T)
                    if step_mask[i, u]
                )
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-5)
    assert float(aux["zero_var_group_frac"]) == pytest.approx(0.25)


def test_jit_vmap_and_finite_grad():
    r = jnp.asarray(_rewards())
    f = jax.jit(lambda x: A.group_advantages(x, G, "grpo")[0])
    np.testing.assert_allclose(f(r), A.group_advantages(r, G)[0], atol=1e-6)
    stacked = jnp.stack([r, 2.0 * r])
    out = jax.vmap(f)(stacked)
    np.testing.assert_allclose(out[0], f(r), atol=1e-6)
    # Gradient through a zero-variance group stays finite (safe sqrt).
    g = jax.grad(lambda x: jnp.sum(A.group_advantages(x, G, "grpo")[0] ** 2))(r)
    assert np.all(np.isfinite(g))


def test_bad_inputs_raise():
    r = jnp.zeros(B)
    with pytest.raises(ValueError, match="grpo, drgrpo, rloo"):
        A.group_advantages(r, G, "ppo")
    with pytest.raises(ValueError, match="multiple of group_size"):
        A.group_advantages(jnp.zeros(10), G)
    with pytest.raises(ValueError, match="static Python int"):
        A.group_advantages(r, jnp.int32(4))
    with pytest.raises(ValueError, match="rloo"):
        A.group_advantages(r, 1, "rloo")
    with pytest.raises(ValueError, match=r"\[B\]"):
        A.group_advantages(jnp.zeros((B, 2)), G)


def test_grpo_passk_only_the_best_learns():
    """Pass@k: the best response gets (r_max - r_second) / (std + eps), every other exactly 0;
    a tie at the top gives 0 to everyone (documented rule: r_second is the best among the
    others, so it equals r_max)."""
    r = jnp.asarray(
        [
            [0.0, 3.0, 1.0, 2.0],  # unique best at index 1: A = (3 - 2) / std
            [1.0, 1.0, 0.0, 0.5],  # tie at the top: all zero
            [2.0, 2.0, 2.0, 2.0],  # all equal: all zero
            [-1.0, -3.0, -2.0, -1.5],  # negative rewards, best at index 0
        ],
        jnp.float32,
    ).reshape(-1)
    adv, aux = A.group_advantages(r, 4, "grpo_passk", eps=1e-6)
    adv = np.asarray(adv).reshape(4, 4)
    std0 = np.std([0.0, 3.0, 1.0, 2.0])
    assert adv[0, 1] == pytest.approx(1.0 / (std0 + 1e-6), rel=1e-5)
    assert adv[3, 0] == pytest.approx(0.5 / (np.std([-1.0, -3.0, -2.0, -1.5]) + 1e-6), rel=1e-5)
    others = np.ones((4, 4), bool)
    others[0, 1] = others[3, 0] = False
    assert np.all(adv[others] == 0.0)  # exactly zero, not rounding
    assert float(aux["zero_var_group_frac"]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="grpo_passk.*group_size >= 2"):
        A.group_advantages(r, 1, "grpo_passk")
    with pytest.raises(ValueError, match="no per-token returns"):
        A.reward_to_go_advantages(r, jnp.zeros((16, 3)), jnp.ones((16, 3)), 4, "grpo_passk")


def test_grpo_passk_through_losses():
    """Selectable by name in LossConfig / compute_advantages (KL in the reward too); a bad
    name lists the valid ones."""
    from grpo_jax.core import losses

    r = jnp.asarray([0.0, 3.0, 1.0, 2.0, 1.0, 1.0, 0.0, 0.5])
    cfg = losses.make_config(advantage_estimator="grpo_passk")
    adv, _ = losses.compute_advantages(r, 4, cfg)
    np.testing.assert_array_equal(np.asarray(adv) != 0, [0, 1, 0, 0, 0, 0, 0, 0])
    cfg = losses.make_config(advantage_estimator="grpo_passk", kl_placement="reward", beta=1.0)
    old = jnp.zeros((8, 2))
    ref = jnp.zeros((8, 2)).at[1].set(5.0)  # k3 penalty on row 1 makes row 3 the best
    adv, _ = losses.compute_advantages(r, 4, cfg, old_logp=old, ref_logp=ref, mask=jnp.ones((8, 2)))
    assert np.flatnonzero(np.asarray(adv)).tolist() == [3]
    with pytest.raises(ValueError, match="grpo, drgrpo, rloo, grpo_passk"):
        losses.LossConfig(advantage_estimator="pass_at_k")
    with pytest.raises(ValueError, match="kl_reward_to_go"):
        losses.LossConfig(
            advantage_estimator="grpo_passk", kl_placement="reward", kl_reward_to_go=True
        )
