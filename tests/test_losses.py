"""Tests for grpo_jax.losses against a loop-by-loop NumPy transcription of DeepSeekMath."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from grpo_jax.core import kl, losses as L, stats
from test_advantages import _np_advantages

G, B, T, V = 4, 16, 6, 5


def _inputs(seed=0):
    """Random [B, T] log-probs with ragged masks (one empty row) and garbage outside."""
    rng = np.random.default_rng(seed)
    old = -rng.uniform(0.1, 3.0, size=(B, T)).astype(np.float32)
    logp = (old + 0.3 * rng.normal(size=(B, T))).astype(np.float32)
    ref = (old + 0.5 * rng.normal(size=(B, T))).astype(np.float32)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[5] = 0
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    rewards = rng.integers(0, 3, size=B).astype(np.float32)
    rewards[0:4] = 1.0  # one zero-variance group
    return dict(logp=logp, old=old, ref=ref, mask=mask, rewards=rewards)


def _np_kl(est, logp, ref):
    d = logp - ref
    return {"k1": d, "k2": 0.5 * d * d, "k3": math.exp(-d) - 1.0 + d}[est]


def _np_objective(
    x,
    *,
    beta,
    eps_low,
    eps_high,
    aggregation,
    placement,
    est,
    adv_est,
    dual_clip=None,
    is_level="token",
    norm_len=None,
    adv_eps=1e-6,
):
    """DeepSeekMath GRPO with explicit loops over i and t (float64)."""
    logp, old, ref, mask = (np.asarray(x[k], np.float64) for k in ("logp", "old", "ref", "mask"))
    R = np.asarray(x["rewards"], np.float64).copy()
    if placement == "reward":
        for i in range(B):
            for t in range(T):
                if mask[i, t]:
                    R[i] -= beta * _np_kl(est, old[i, t], ref[i, t])
    adv = _np_advantages(R, G, adv_est, adv_eps)
    num, den = 0.0, 0.0
    for i in range(B):
        n_i = sum(mask[i, t] for t in range(T))
        if is_level == "sequence" and n_i > 0:
            s_i = math.exp(sum(logp[i, t] - old[i, t] for t in range(T) if mask[i, t]) / n_i)
        seq = 0.0
        for t in range(T):
            if not mask[i, t]:
                continue
            rho = math.exp(logp[i, t] - old[i, t]) if is_level == "token" else s_i
            a = adv[i]
            unclipped = rho * a
            if dual_clip is not None and a < 0:
                unclipped = min(rho, dual_clip) * a
            clipped = min(max(rho, 1 - eps_low), 1 + eps_high) * a
            term = min(unclipped, clipped)
            if placement == "loss":
                term -= beta * _np_kl(est, logp[i, t], ref[i, t])
            seq += -term
        if aggregation == "seq_mean_token_mean":
            if n_i > 0:
                num += seq / n_i
                den += 1
        elif aggregation == "token_mean":
            num += seq
            den += n_i
        else:
            num += seq / (T if norm_len is None else norm_len)
            den += 1
    return num / den, adv


def _j(x):
    return {k: jnp.asarray(v) for k, v in x.items()}


CASES = [
    # "ref_samples" takes exact estimators only: its own test below.
    (agg, pl, "k3", "grpo", None, "token")
    for agg in L.AGGREGATIONS
    for pl in L.PLACEMENTS
    if pl != "ref_samples"
] + [
    ("seq_mean_token_mean", "loss", "k1", "drgrpo", 1.5, "token"),
    ("token_mean", "reward", "k1", "rloo", 1.5, "token"),
    ("seq_mean_token_mean", "loss", "k2", "grpo", None, "sequence"),
    ("seq_mean_token_sum_norm", "reward", "k3", "drgrpo", None, "sequence"),
]


@pytest.mark.parametrize("aggregation,placement,est,adv_est,dual_clip,is_level", CASES)
def test_matches_numpy_transcription(aggregation, placement, est, adv_est, dual_clip, is_level):
    x = _inputs(1)
    norm_len = 8.0 if aggregation == "seq_mean_token_sum_norm" and is_level == "token" else None
    eps = 0.2 if is_level == "token" else 0.05
    cfg = L.make_config(
        beta=0.1,
        eps_low=eps,
        eps_high=eps + 0.08,
        dual_clip=math.inf if dual_clip is None else dual_clip,
        norm_len=norm_len,
        aggregation=aggregation,
        kl_placement=placement,
        kl_estimator=est,
        advantage_estimator=adv_est,
        is_level=is_level,
    )
    want, want_adv = _np_objective(
        x,
        beta=0.1,
        eps_low=eps,
        eps_high=eps + 0.08,
        aggregation=aggregation,
        placement=placement,
        est=est,
        adv_est=adv_est,
        dual_clip=dual_clip,
        is_level=is_level,
        norm_len=norm_len,
    )
    j = _j(x)
    adv, _ = L.compute_advantages(
        j["rewards"], G, cfg, old_logp=j["old"], ref_logp=j["ref"], mask=j["mask"]
    )
    np.testing.assert_allclose(adv, want_adv, rtol=1e-6, atol=1e-6)
    loss, aux = L.grpo_objective(j["logp"], j["old"], j["ref"], j["rewards"], j["mask"], G, cfg)
    np.testing.assert_allclose(float(loss), want, rtol=1e-6, atol=1e-6)
    assert float(aux["loss_num"] / aux["loss_den"]) == pytest.approx(float(loss), rel=1e-6)
    # Group 0 has equal rewards; in the reward placement the KL makes them differ.
    want_frac = 0.25 if placement == "loss" else 0.0
    assert float(aux["zero_var_group_frac"]) == pytest.approx(want_frac)
    # The inputs produce some clipping both ways, so the test exercises both branches.
    if is_level == "token":
        assert 0 < float(aux["clip_frac_low"]) < 1 and 0 < float(aux["clip_frac_high"]) < 1
    if placement == "reward":  # KL reported, not added
        assert float(aux["loss"]) == pytest.approx(float(aux["pg_loss"]))
    else:
        assert float(aux["loss"]) == pytest.approx(
            float(aux["pg_loss"] + 0.1 * aux["kl_loss"]), rel=1e-6
        )


def test_reward_to_go_path():
    """kl_reward_to_go: A_it from returns R_i - beta * sum_{u>=t} D_iu, normalised by totals."""
    x = _inputs(2)
    j = _j(x)
    cfg = L.make_config(beta=0.3, kl_placement="reward", kl_estimator="k1", kl_reward_to_go=True)
    adv, _ = L.compute_advantages(
        j["rewards"], G, cfg, old_logp=j["old"], ref_logp=j["ref"], mask=j["mask"]
    )
    assert adv.shape == (B, T)
    d = (x["old"] - x["ref"]).astype(np.float64) * x["mask"]
    totals = x["rewards"] - 0.3 * d.sum(1)
    for g in range(B // G):
        z = totals[g * G : (g + 1) * G]
        mean, std = z.mean(), z.std()
        for i in range(g * G, (g + 1) * G):
            for t in range(T):
                want = 0.0
                if x["mask"][i, t]:
                    want = (x["rewards"][i] - 0.3 * d[i, t:].sum() - mean) / (std + 1e-6)
                assert float(adv[i, t]) == pytest.approx(want, abs=1e-5)
    # The loss accepts [B, T] advantages and, at logp = old, equals -mean A.
    loss, _ = L.grpo_loss(
        j["old"], j["old"], j["ref"], adv, j["mask"], cfg.replace(aggregation="token_mean")
    )
    want = -np.sum(np.asarray(adv) * x["mask"]) / x["mask"].sum()
    assert float(loss) == pytest.approx(want, abs=1e-6)


def _softmax_policy(seed=3):
    rng = np.random.default_rng(seed)
    theta = jnp.asarray(rng.normal(size=(B, T, V)).astype(np.float32))
    tokens = jnp.asarray(rng.integers(0, V, size=(B, T)))
    return theta, tokens


def _logp_of(theta, tokens):
    return jnp.take_along_axis(jax.nn.log_softmax(theta, -1), tokens[..., None], -1)[..., 0]


@pytest.mark.parametrize("aggregation", L.AGGREGATIONS)
@pytest.mark.parametrize("is_level", L.IS_LEVELS)
def test_gradient_is_policy_gradient_at_rho_one(aggregation, is_level):
    theta, tokens = _softmax_policy()
    x = _inputs(4)
    mask, adv = jnp.asarray(x["mask"]), jnp.asarray(
        np.random.default_rng(5).normal(size=B), jnp.float32
    )
    old = _logp_of(theta, tokens)
    cfg = L.make_config(beta=0.0, aggregation=aggregation, is_level=is_level)

    def loss_fn(th):
        return L.grpo_loss(_logp_of(th, tokens), old, old, adv, mask, cfg)[0]

    grad = np.asarray(jax.grad(loss_fn)(theta), np.float64)
    # -E[A grad log pi] by hand: grad_theta log softmax(theta)[y] = onehot(y) - softmax.
    th, y, m, a = (np.asarray(v, np.float64) for v in (theta, tokens, mask, adv))
    p = np.exp(th - th.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    n = m.sum(1)
    want = np.zeros_like(th)
    den = {
        "seq_mean_token_mean": (n > 0).sum(),
        "token_mean": m.sum(),
        "seq_mean_token_sum_norm": B,
    }[aggregation]
    for i in range(B):
        for t in range(T):
            if not m[i, t]:
                continue
            w = {
                "seq_mean_token_mean": 1.0 / max(n[i], 1),
                "token_mean": 1.0,
                "seq_mean_token_sum_norm": 1.0 / T,
            }[aggregation]
            score = -p[i, t].copy()
            score[int(y[i, t])] += 1.0
            want[i, t] = -a[i] * w * score / den
    np.testing.assert_allclose(grad, want, atol=1e-6)


def test_clipped_branch_has_zero_gradient():
    old = jnp.full((1, 6), -1.0)
    up, down = math.log(1.5), math.log(0.5)
    shift = jnp.asarray([[up, down, up, down, math.log(3.0), math.log(1.1)]])
    adv = jnp.asarray([[1.0, -1.0, -1.0, 1.0, -1.0, -1.0]])
    mask = jnp.ones((1, 6))
    cfg = L.make_config(
        beta=0.0, eps_low=0.2, eps_high=0.28, dual_clip=2.0, aggregation="token_mean"
    )
    g, aux = jax.grad(lambda lp: L.grpo_loss(lp, old, old, adv, mask, cfg), has_aux=True)(
        old + shift
    )
    g = np.asarray(g)[0]
    # rho=1.5, A>0: clipped high -> 0.  rho=0.5, A<0: clipped low -> 0.
    assert g[0] == 0.0 and g[1] == 0.0
    # Unclipped branches (pessimistic min picks rho*A): gradient -A*rho/N.
    np.testing.assert_allclose(g[2], 1.5 / 6, rtol=1e-6)
    np.testing.assert_allclose(g[3], -0.5 / 6, rtol=1e-6)
    # rho=3 > dual_clip=2 with A<0: capped -> 0; rho=1.1 < 2: ordinary gradient.
    assert g[4] == 0.0
    np.testing.assert_allclose(g[5], 1.1 / 6, rtol=1e-6)
    assert float(aux["clip_frac_high"]) == pytest.approx(1 / 6)
    assert float(aux["clip_frac_low"]) == pytest.approx(1 / 6)
    assert float(aux["dual_clip_frac"]) == pytest.approx(1 / 6)
    np.testing.assert_allclose(float(aux["ratio_max"]), 3.0, rtol=1e-6)
    np.testing.assert_allclose(float(aux["ratio_min"]), 0.5, rtol=1e-6)


def _logits_inputs(seed=6):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(B, T, V)).astype(np.float32)
    ref_logits = rng.normal(size=(B, T, V)).astype(np.float32)
    return logits, ref_logits


@pytest.mark.parametrize(
    "placement,est,is_level",
    [("loss", "k3", "token"), ("reward", "k1", "sequence"), ("loss", "exact_fwd", "token")],
)
def test_masked_garbage_changes_nothing(placement, est, is_level):
    """Garbage sits directly in the differentiated inputs (logp, logits) and in the rest."""
    x = _inputs(7)
    logits, ref_logits = _logits_inputs()
    m = x["mask"] > 0
    cfg = L.make_config(
        beta=0.1,
        kl_placement=placement,
        kl_estimator=est,
        is_level=is_level,
        aggregation="token_mean",
        dual_clip=3.0,
    )
    rewards, mask = jnp.asarray(x["rewards"]), jnp.asarray(x["mask"])

    def run(bad):
        def fill(a, sign=1.0):
            mm = m if a.ndim == 2 else m[..., None]
            return jnp.asarray(np.where(mm, a, sign * bad).astype(np.float32))

        def f(logp, lg):
            return L.grpo_objective(
                logp,
                fill(x["old"]),
                fill(x["ref"], -1.0),
                rewards,
                mask,
                G,
                cfg,
                logits=lg,
                ref_logits=fill(ref_logits),
                old_logits=fill(logits),
            )

        return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(fill(x["logp"]), fill(logits))

    (loss0, aux0), g0 = run(0.0)
    assert np.isfinite(float(loss0)) and all(np.all(np.isfinite(g)) for g in g0)
    assert np.any(np.asarray(g0[0]) != 0)
    for bad in (np.nan, np.inf, -np.inf, 1e30):
        (loss, aux), g = run(bad)
        assert float(loss) == float(loss0)
        for a, b in zip(g, g0):
            np.testing.assert_array_equal(a, b)
        for k in ("loss", "kl_mean", "ratio_max", "entropy", "exact_kl_rev", "adv/adv_mean"):
            assert float(aux[k]) == float(aux0[k]), k


def test_exact_kl_regulariser():
    """exact_rev in the loss: value = beta * mean exact KL at rho=1, grad via kl.exact."""
    x = _inputs(9)
    logits, ref_logits = (jnp.asarray(a) for a in _logits_inputs(10))
    mask = jnp.asarray(x["mask"])
    old = jnp.asarray(x["old"])
    cfg = L.make_config(beta=0.5, kl_estimator="exact_rev", aggregation="token_mean")
    zero_adv = jnp.zeros(B)

    def f(lg):
        return L.grpo_loss(old, old, None, zero_adv, mask, cfg, logits=lg, ref_logits=ref_logits)

    (loss, aux), g = jax.value_and_grad(f, has_aux=True)(logits)
    lq = np.asarray(jax.nn.log_softmax(logits), np.float64)
    lr = np.asarray(jax.nn.log_softmax(ref_logits), np.float64)
    kl_rev = np.zeros((B, T))
    kl_fwd = np.zeros((B, T))
    for i in range(B):
        for t in range(T):
            for v in range(V):
                kl_rev[i, t] += math.exp(lq[i, t, v]) * (lq[i, t, v] - lr[i, t, v])
                kl_fwd[i, t] += math.exp(lr[i, t, v]) * (lr[i, t, v] - lq[i, t, v])
    mk = x["mask"]
    np.testing.assert_allclose(float(loss), 0.5 * (kl_rev * mk).sum() / mk.sum(), rtol=1e-5)
    np.testing.assert_allclose(
        float(aux["exact_kl_fwd"]), (kl_fwd * mk).sum() / mk.sum(), rtol=1e-5
    )
    # Gradient wrt logits of sum(w * KL_rev): zero at masked rows, nonzero elsewhere.
    gn = np.asarray(g)
    assert np.all(gn[mk == 0] == 0.0) and np.all(np.abs(gn[mk > 0]).sum(-1) > 0)
    with pytest.raises(ValueError, match="logits and ref_logits"):
        L.grpo_loss(old, old, None, zero_adv, mask, cfg)
    # In the reward placement the exact KL of the sampling logits is the per-token penalty.
    cfg_r = L.make_config(
        beta=0.5, kl_estimator="exact_rev", kl_placement="reward", advantage_estimator="drgrpo"
    )
    adv, aux_r = L.compute_advantages(
        jnp.asarray(x["rewards"]), G, cfg_r, mask=mask, old_logits=logits, ref_logits=ref_logits
    )
    totals = x["rewards"] - 0.5 * (kl_rev * mk).sum(1)
    want = totals - np.repeat(totals.reshape(-1, G).mean(1), G)
    np.testing.assert_allclose(adv, want, atol=1e-5)
    np.testing.assert_allclose(
        float(aux_r["kl_reward_mean"]), (kl_rev * mk).sum(1).mean(), rtol=1e-5
    )


def test_ref_samples_placement_adds_beta_times_the_exact_kl_on_reference_samples():
    """Placement "ref_samples": the loss is the policy-gradient loss on the policy's
    samples (no KL there) plus beta times the exact per-position KL aggregated over the
    completions sampled from the reference; only exact estimators; the samples required."""
    x = _inputs(11)
    logits, ref_logits = (jnp.asarray(a) for a in _logits_inputs(12))
    on_ref, ref_on_ref = (jnp.asarray(a) for a in _logits_inputs(13))
    mask, old = jnp.asarray(x["mask"]), jnp.asarray(x["old"])
    adv = jnp.asarray(x["rewards"])
    common = dict(aggregation="token_mean", kl_estimator="exact_fwd")
    cfg = L.make_config(beta=0.5, kl_placement="ref_samples", **common)
    plain = L.make_config(beta=0.0, **common)
    sample = (on_ref, ref_on_ref, mask)
    loss, aux = L.grpo_loss(old, old, None, adv, mask, cfg, logits=logits, ref_logits=ref_logits,
                            ref_sample=sample)  # fmt: skip
    pg, _ = L.grpo_loss(old, old, None, adv, mask, plain, logits=logits, ref_logits=ref_logits)
    lq = np.asarray(jax.nn.log_softmax(on_ref), np.float64)
    lr = np.asarray(jax.nn.log_softmax(ref_on_ref), np.float64)
    kl_fwd = (np.exp(lr) * (lr - lq)).sum(-1)
    mk = x["mask"]
    want = float(pg) + 0.5 * (kl_fwd * mk).sum() / mk.sum()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(
        float(aux["kl_ref_samples"]), (kl_fwd * mk).sum() / mk.sum(), rtol=1e-5
    )
    # Its gradient reaches the policy's logits on the reference samples.
    g = jax.grad(lambda z: L.grpo_loss(old, old, None, adv, mask, cfg, logits=logits,
                 ref_logits=ref_logits, ref_sample=(z, ref_on_ref, mask))[0])(on_ref)  # fmt: skip
    assert np.abs(np.asarray(g)[mk > 0]).sum() > 0
    with pytest.raises(ValueError, match="ref_sample"):
        L.grpo_loss(old, old, None, adv, mask, cfg, logits=logits, ref_logits=ref_logits)
    with pytest.raises(ValueError, match="exact KL estimator"):
        L.make_config(kl_estimator="k3", kl_placement="ref_samples")


def test_importance_weighted_kl():
    x = _inputs(11)
    j = _j(x)
    cfg = L.make_config(beta=1.0, kl_importance_weight=True, aggregation="token_mean")
    _, aux = L.grpo_loss(j["logp"], j["old"], j["ref"], jnp.zeros(B), j["mask"], cfg)
    d = x["logp"].astype(np.float64) - x["ref"]
    k3 = np.expm1(-d) + d
    w = np.exp(x["logp"].astype(np.float64) - x["old"])
    want = (w * k3 * x["mask"]).sum() / x["mask"].sum()
    assert float(aux["kl_loss"]) == pytest.approx(want, rel=1e-5)


def test_split_over_eight_devices():
    assert jax.device_count() == 8
    x = _inputs(12)
    j = _j(x)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    shard = NamedSharding(mesh, P("data"))
    for agg in L.AGGREGATIONS:
        cfg = L.make_config(beta=0.1, aggregation=agg)
        adv, _ = L.compute_advantages(j["rewards"], G, cfg)
        args = (j["logp"], j["old"], j["ref"], adv, j["mask"])
        full, _ = L.grpo_loss(*args, cfg)
        f = jax.jit(lambda *a: L.grpo_loss(*a, cfg)[0])
        sharded = f(*(jax.device_put(a, shard) for a in args))
        np.testing.assert_allclose(float(sharded), float(full), rtol=1e-6)
        # Accumulated over 8 micro-batches of 2 rows: sum(num) / sum(den).
        nums, dens = [], []
        for k in range(8):
            part = tuple(a[2 * k : 2 * k + 2] for a in args)
            _, aux = L.grpo_loss(*part, cfg)
            nums.append(float(aux["loss_num"]))
            dens.append(float(aux["loss_den"]))
        np.testing.assert_allclose(sum(nums) / sum(dens), float(full), rtol=1e-6)


def test_jit_vmap_grad_population():
    x = _inputs(13)
    j = _j(x)
    betas = jnp.asarray([0.0, 0.04, 0.3])
    cfg = L.make_config(
        kl_placement="reward", kl_estimator="k1", aggregation="token_mean", beta=betas
    )

    def objective(cfg):
        return L.grpo_objective(j["logp"], j["old"], j["ref"], j["rewards"], j["mask"], G, cfg)[0]

    axes = jax.tree.map(lambda _: None, cfg).replace(beta=0)
    pop = jax.jit(jax.vmap(objective, in_axes=(axes,)))(cfg)
    for s in range(3):
        single = objective(cfg.replace(beta=float(betas[s])))
        np.testing.assert_allclose(pop[s], single, rtol=1e-6)
    # grad wrt logp, under jit and vmap over beta (loss placement).
    cfg2 = L.make_config(aggregation="seq_mean_token_mean")
    g = jax.jit(
        jax.vmap(
            jax.grad(
                lambda lp, b: L.grpo_objective(
                    lp, j["old"], j["ref"], j["rewards"], j["mask"], G, cfg2.replace(beta=b)
                )[0]
            ),
            in_axes=(None, 0),
        )
    )(j["logp"], betas)
    assert g.shape == (3, B, T) and np.all(np.isfinite(g))
    assert np.all(np.asarray(g)[:, x["mask"] == 0] == 0.0)
    assert not np.allclose(g[0], g[2])


def test_building_blocks_hand_computed():
    """The pieces grpo_loss is made of, on hand-worked numbers."""
    rho = jnp.asarray([[1.5, 0.5, 3.0, 1.1]])
    adv = jnp.asarray([[1.0, -1.0, -1.0, -1.0]])
    # -min(rho' A, clip(rho, 0.8, 1.28) A); the dual clip caps rho' at 2 where A < 0.
    np.testing.assert_allclose(
        L.clipped_surrogate(rho, adv, 0.2, 0.28, 2.0), [[-1.28, 0.8, 2.0, 1.1]], rtol=1e-6
    )
    np.testing.assert_allclose(
        L.clipped_surrogate(rho, adv, 0.2, 0.28), [[-1.28, 0.8, 3.0, 1.1]], rtol=1e-6
    )
    diag = stats.ratio_diagnostics(rho, adv, jnp.ones((1, 4)), 0.2, 0.28, 2.0)
    assert float(diag["clip_frac_high"]) == pytest.approx(0.25)
    assert float(diag["clip_frac_low"]) == pytest.approx(0.25)
    assert float(diag["dual_clip_frac"]) == pytest.approx(0.25)
    # Token ratio exp(logp - old); GSPO: exp of the masked mean log-ratio, at every token.
    logp = jnp.log(jnp.asarray([[0.5, 0.25, 0.9]]))
    old = jnp.log(jnp.asarray([[0.25, 0.25, 0.1]]))
    mask = jnp.asarray([[1.0, 1.0, 0.0]])
    np.testing.assert_allclose(L.importance_ratio(logp, old, mask), [[2.0, 1.0, 9.0]], rtol=1e-6)
    np.testing.assert_allclose(
        L.importance_ratio(logp, old, mask, "sequence"), [[math.sqrt(2.0)] * 3], rtol=1e-6
    )
    # Sum and denominator.
    cfg = L.make_config(beta=0.5, aggregation="token_mean")
    out = L.aggregate(
        jnp.asarray([[1.0, 2.0, 0.0]]), jnp.asarray([[4.0, 0.0, 0.0]]), mask, cfg, add_kl=True
    )
    assert float(out["loss_den"]) == 2.0 and float(out["loss_num"]) == 5.0
    assert float(out["loss"]) == 2.5 and float(out["kl_loss"]) == 2.0
    # The exact regularisers' names and the directions they use.
    assert L.EXACT_KL == {"exact_rev": "reverse", "exact_fwd": "forward"}
    assert L.KL_ESTIMATORS == tuple(kl.ESTIMATORS) + ("exact_rev", "exact_fwd")


def test_bad_names_and_shapes_raise():
    for field, valid in [
        ("kl_estimator", "k3, fwd_rlogr"),
        ("kl_placement", "loss, reward"),
        ("aggregation", "token_mean"),
        ("is_level", "token, sequence"),
        ("advantage_estimator", "grpo, drgrpo, rloo"),
    ]:
        with pytest.raises(ValueError, match=valid):
            L.LossConfig(**{field: "nope"})
    with pytest.raises(ValueError, match="exact_rev, exact_fwd"):
        L.make_config(kl_estimator="k4")
    with pytest.raises(ValueError, match="kl_reward_to_go"):
        L.LossConfig(kl_reward_to_go=True)
    with pytest.raises(ValueError, match="eps_low"):
        L.make_config(eps_low=1.5)
    with pytest.raises(ValueError, match="dual_clip"):
        L.make_config(dual_clip=0.5)
    z = jnp.zeros((B, T))
    cfg = L.LossConfig()
    with pytest.raises(ValueError, match="old_logp"):
        L.grpo_loss(z, jnp.zeros((B, T + 1)), z, jnp.zeros(B), z, cfg)
    with pytest.raises(ValueError, match="advantages"):
        L.grpo_loss(z, z, z, jnp.zeros(B + 1), z, cfg)
    with pytest.raises(ValueError, match="ref_logp"):
        L.grpo_loss(z, z, None, jnp.zeros(B), z, cfg)
    with pytest.raises(ValueError, match="logp must be"):
        L.grpo_loss(jnp.zeros(B), z, z, jnp.zeros(B), z, cfg)
    with pytest.raises(ValueError, match="mask"):
        L.grpo_loss(z, z, z, jnp.zeros(B), jnp.zeros((B, T + 1)), cfg)
    with pytest.raises(ValueError, match="ref_logits"):
        L.grpo_loss(
            z,
            z,
            z,
            jnp.zeros(B),
            z,
            cfg,
            logits=jnp.zeros((B, T, V)),
            ref_logits=jnp.zeros((B, T + 1, V)),
        )
    with pytest.raises(ValueError, match="rewards must be"):
        L.compute_advantages(z, G, cfg)
    with pytest.raises(ValueError, match="old_logp"):
        L.compute_advantages(jnp.zeros(B), G, cfg.replace(kl_placement="reward"), mask=z)
