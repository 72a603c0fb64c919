"""Tests for grpo_jax.kl: estimator values, exact KL, clamps, transformations, errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from grpo_jax.core import kl

sg = jax.lax.stop_gradient

# Naive reference formulas (plain autodiff, no stability tricks), as functions of delta.
NAIVE = {
    "k1": lambda d: d,
    "k2": lambda d: 0.5 * d * d,
    "k3": lambda d: jnp.exp(-d) - 1.0 - (-d),
    "fwd_rlogr": lambda d: jnp.exp(-d) * (-d),
    "fwd_nonneg": lambda d: jnp.exp(-d) * (-d) - (jnp.exp(-d) - 1.0),
}
NAIVE["k1_st"] = lambda d: sg(NAIVE["k1"](d)) + NAIVE["k2"](d) - sg(NAIVE["k2"](d))
NAIVE["k3_st"] = lambda d: sg(NAIVE["k3"](d)) + NAIVE["k2"](d) - sg(NAIVE["k2"](d))


def naive_estimate(logp, ref_logp, name, old_logp=None):
    value = NAIVE[name](logp - ref_logp)
    if old_logp is None:
        return value
    w = jnp.exp(logp - sg(old_logp))
    if name.endswith("_st"):
        return sg(w * value) + sg(w) * (value - sg(value))
    return w * value


def test_registry_names():
    assert {"k1", "k2", "k3", "fwd_rlogr", "fwd_nonneg", "k1_st", "k3_st"} <= set(kl.ESTIMATORS)
    assert set(kl.VALUE_TARGET) == set(kl.ESTIMATORS)
    assert kl.DIRECTIONS == ("reverse", "forward")
    assert tuple(kl.ABBREV) == kl.DIRECTIONS and tuple(kl.ABBREV.values()) == ("rev", "fwd")
    assert kl.validate_estimator("k3") == "k3" and kl.validate_direction("forward") == "forward"


@pytest.mark.parametrize("name", kl.ESTIMATORS)
def test_every_estimator(name):
    """Per entry: value and gradient equal the naive formula; E_pi[value] is the right KL."""
    with jax.enable_x64(True):
        logits, ref_logits, old_logits = jax.random.normal(jax.random.key(0), (3, 7), jnp.float64)

        @jax.jit
        def compute(logits, ref_logits, old_logits):
            logp, ref, old = (jax.nn.log_softmax(x) for x in (logits, ref_logits, old_logits))
            out = {}
            for tag, o in (("on", None), ("off", old)):
                out["got_" + tag] = jax.value_and_grad(
                    lambda a, b: kl.estimate(a, b, name, old_logp=o).sum(), argnums=(0, 1)
                )(logp, ref)
                out["want_" + tag] = jax.value_and_grad(
                    lambda a, b: naive_estimate(a, b, name, o).sum(), argnums=(0, 1)
                )(logp, ref)
            out["exact"] = {d: kl.exact(logits, ref_logits, d) for d in kl.DIRECTIONS}
            out["e_on"] = jnp.sum(jnp.exp(logp) * kl.estimate(logp, ref, name))
            out["e_off"] = jnp.sum(jnp.exp(old) * kl.estimate(logp, ref, name, old_logp=old))
            out["e_k2"] = 0.5 * jnp.sum(jnp.exp(logp) * (logp - ref) ** 2)
            return out

        out = compute(logits, ref_logits, old_logits)
        for tag in ("on", "off"):
            (got, got_g), (want, want_g) = out["got_" + tag], out["want_" + tag]
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
            for g1, g2 in zip(got_g, want_g):
                np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-12)
        # E_old[w * value] = E_pi[value]; E_pi[value] is the target KL (k2: E[delta^2]/2).
        np.testing.assert_allclose(out["e_off"], out["e_on"], rtol=1e-12)
        if name == "k2":
            np.testing.assert_allclose(out["e_on"], out["e_k2"], rtol=1e-12)
            assert abs(out["e_on"] - out["exact"]["reverse"]) > 1e-3
        else:
            np.testing.assert_allclose(out["e_on"], out["exact"][kl.VALUE_TARGET[name]], rtol=1e-12)


def test_hand_computed_values():
    logp = jnp.array([np.log(0.5)], jnp.float32)
    ref = jnp.array([np.log(0.25)], jnp.float32)  # delta = log 2, r = 1/2
    old = logp - np.log(2.0)  # importance weight w = 2
    d, r = np.log(2.0), 0.5
    expected = {
        "k1": d,
        "k2": d * d / 2,
        "k3": r - 1 + d,
        "fwd_rlogr": r * np.log(r),
        "fwd_nonneg": r * np.log(r) - (r - 1),
        "k1_st": d,
        "k3_st": r - 1 + d,
    }

    @jax.jit
    def compute(logp, ref, old):
        return {
            n: (
                kl.estimate(logp, ref, n)[0],
                jax.grad(lambda x: kl.estimate(x, ref, n)[0])(logp)[0],
                jax.value_and_grad(lambda x: kl.estimate(x, ref, n, old_logp=old)[0])(logp),
            )
            for n in kl.ESTIMATORS
        }

    out = compute(logp, ref, old)
    for name, want in expected.items():
        np.testing.assert_allclose(out[name][0], want, rtol=1e-6)
        # The weight w = 2 multiplies the value.
        np.testing.assert_allclose(out[name][2][0], 2 * want, rtol=1e-6)
    # Straight-through gradient is k2's: d/dlogp = delta (with the weight: sg(w) * delta).
    for name in ("k1_st", "k3_st", "k2"):
        np.testing.assert_allclose(out[name][1], d, rtol=1e-6)
    for name in ("k1_st", "k3_st"):
        np.testing.assert_allclose(out[name][2][1][0], 2 * d, rtol=1e-6)
    # k3's gradient 1 - r; with the weight, w * (k3 + 1 - r) = w * delta.
    np.testing.assert_allclose(out["k3"][1], 1 - r, rtol=1e-6)
    np.testing.assert_allclose(out["k3"][2][1][0], 2 * d, rtol=1e-6)


def test_exact_matches_naive_and_finite_differences():
    with jax.enable_x64(True):
        logits, ref_logits = 2.0 * jax.random.normal(jax.random.key(1), (2, 3, 4, 9), jnp.float64)
        direction = jax.random.normal(jax.random.key(2), (2,) + logits.shape, jnp.float64)
        weights = jnp.arange(12.0).reshape(3, 4)
        eps = 1e-6

        @jax.jit
        def compute(logits, ref_logits, direction):
            out = {}
            for d in kl.DIRECTIONS:
                f = lambda a, b: jnp.sum(kl.exact(a, b, d) * weights)
                ga, gb = jax.grad(f, argnums=(0, 1))(logits, ref_logits)
                fd = f(logits + eps * direction[0], ref_logits + eps * direction[1]) - f(
                    logits - eps * direction[0], ref_logits - eps * direction[1]
                )
                out[d] = (
                    kl.exact(logits, ref_logits, d),
                    jnp.sum(ga * direction[0]) + jnp.sum(gb * direction[1]),
                    fd / (2 * eps),
                    ga,
                )
            return out

        out = compute(logits, ref_logits, direction)
        p, q = np.asarray(jax.nn.softmax(logits)), np.asarray(jax.nn.softmax(ref_logits))
        naive = {"reverse": np.zeros((3, 4)), "forward": np.zeros((3, 4))}
        for i, j in itertools.product(range(3), range(4)):
            for v in range(9):
                naive["reverse"][i, j] += p[i, j, v] * np.log(p[i, j, v] / q[i, j, v])
                naive["forward"][i, j] += q[i, j, v] * np.log(q[i, j, v] / p[i, j, v])
        for d in kl.DIRECTIONS:
            value, directional, fd, _ = out[d]
            assert value.shape == (3, 4)
            np.testing.assert_allclose(value, naive[d], rtol=1e-12)
            np.testing.assert_allclose(directional, fd, rtol=1e-7)
        # Closed form: grad_logits KL_fwd = w * (pi - pi_ref).
        np.testing.assert_allclose(
            out["forward"][3], np.asarray(weights)[..., None] * (p - q), atol=1e-12
        )


def test_exact_is_stable_for_large_logits_and_bfloat16():
    logits = jnp.array([[1000.0, -1000.0, 0.0]], jnp.bfloat16)
    ref = jnp.array([[-1000.0, 1000.0, 0.0]], jnp.bfloat16)
    for d in kl.DIRECTIONS:
        out, g = jax.value_and_grad(lambda a: kl.exact(a, ref, d).sum())(logits)
        assert out.dtype == jnp.float32
        assert np.isfinite(out) and np.all(np.isfinite(g))
        np.testing.assert_allclose(out, 2000.0, rtol=1e-2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_extreme_log_ratios(dtype):
    """|delta| and |logp - old_logp| up to 100: clamp on -> finite; off -> never NaN."""
    delta = jnp.array([-100.0, -90.0, -30.0, -1.0, 0.0, 1e-3, 1.0, 30.0, 90.0, 100.0])
    shifts = jnp.array([-100.0, 0.0, 100.0])  # logp - old_logp
    combos = list(itertools.product(kl.ESTIMATORS, (False, True), (None, 20.0), (None, 10.0)))

    @jax.jit
    def run(delta, shifts):
        out = []
        for name, has_old, clamp_lr, clamp_v in combos:

            def f(lp, shift):
                old = (lp - shift).astype(dtype) if has_old else None
                return kl.estimate(
                    lp.astype(dtype),
                    jnp.zeros_like(lp, dtype),
                    name,
                    old_logp=old,
                    clamp_log_ratio=clamp_lr,
                    clamp_value=clamp_v,
                )

            vg = jax.vmap(jax.value_and_grad(f), (0, None))
            out.append(jax.vmap(vg, (None, 0))(delta, shifts))  # 2 x [shifts, deltas]
        return out

    for (name, has_old, clamp_lr, clamp_v), (value, grad) in zip(combos, run(delta, shifts)):
        label = (name, has_old, clamp_lr, clamp_v)
        assert value.dtype == jnp.float32, label
        assert not np.any(np.isnan(value)) and not np.any(np.isnan(grad)), label
        if clamp_lr is not None or (clamp_v is not None and not has_old):
            assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), label
    # Overflow is visible: k3 at delta = -100 is +inf, its gradient -inf.
    v, g = jax.value_and_grad(lambda x: kl.estimate(x, jnp.zeros(()), "k3"))(jnp.float32(-100))
    assert v == np.inf and g == -np.inf


def test_clamps_and_clamp_fraction():
    logp = jnp.array([-30.0, -5.0, 0.0, 5.0, 30.0])
    ref = jnp.zeros(5)
    # Log-ratio clamp: value at the clamp, zero gradient past it, untouched inside.
    v, g = jax.vmap(jax.value_and_grad(lambda x, r: kl.estimate(x, r, "k3", clamp_log_ratio=10.0)))(
        logp, ref
    )
    np.testing.assert_allclose(v[0], np.expm1(10.0) - 10.0, rtol=1e-6)
    np.testing.assert_allclose(v[4], np.expm1(-10.0) + 10.0, rtol=1e-6)
    np.testing.assert_allclose(g[jnp.array([0, 4])], 0.0)
    np.testing.assert_allclose(g[1], -np.expm1(5.0), rtol=1e-6)
    # Value clamp.
    v, g = jax.vmap(jax.value_and_grad(lambda x, r: kl.estimate(x, r, "k3", clamp_value=10.0)))(
        logp, ref
    )
    np.testing.assert_allclose(v, [10.0, 10.0, 0.0, np.expm1(-5.0) + 5.0, 10.0], rtol=1e-6)
    np.testing.assert_allclose(g[jnp.array([0, 1, 4])], 0.0)
    np.testing.assert_allclose(g[3], -np.expm1(-5.0), rtol=1e-6)
    # Fractions: |delta| > 10 on 2 of 5; masked: 1 of 3 real tokens.
    np.testing.assert_allclose(kl.clamp_fraction(logp, ref, 10.0), 0.4)
    mask = jnp.array([1.0, 1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(kl.clamp_fraction(logp, ref, 10.0, mask=mask), 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(kl.clamp_fraction(logp, ref, clamp_value=10.0), 0.6)


def test_jit_vmap_and_sharded_inputs():
    key = jax.random.key(3)
    logits, ref_logits = jax.random.normal(key, (2, 8, 4, 5))
    logp = jax.nn.log_softmax(logits)[..., 0]  # [8, 4]
    ref = jax.nn.log_softmax(ref_logits)[..., 0]
    eager = {n: kl.estimate(logp, ref, n) for n in kl.ESTIMATORS}
    jitted = jax.jit(kl.estimate, static_argnames=("estimator",))
    for n in kl.ESTIMATORS:
        np.testing.assert_allclose(jitted(logp, ref, estimator=n), eager[n], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            jax.vmap(lambda a, b: kl.estimate(a, b, n))(logp, ref),
            eager[n],
            rtol=1e-5,
            atol=1e-6,
        )
    exact_eager = kl.exact(logits, ref_logits, "reverse")
    np.testing.assert_allclose(
        jax.vmap(lambda a, b: kl.exact(a, b, "reverse"))(logits, ref_logits),
        exact_eager,
        rtol=1e-6,
    )
    # Sharded over the 8 test devices along the batch axis.
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    tok = NamedSharding(mesh, P("data", None))
    full = NamedSharding(mesh, P("data", None, None))
    logp_s, ref_s = jax.device_put(logp, tok), jax.device_put(ref, tok)
    logits_s, ref_logits_s = jax.device_put(logits, full), jax.device_put(ref_logits, full)

    @jax.jit
    def step(lp, rf, lg, rlg):
        v = kl.estimate(lp, rf, "k3", old_logp=lp, clamp_log_ratio=20.0)
        g = jax.grad(lambda x: kl.exact(x, rlg, "forward").sum())(lg)
        return v, kl.exact(lg, rlg, "reverse"), g

    v, ex, g = step(logp_s, ref_s, logits_s, ref_logits_s)
    np.testing.assert_allclose(v, eager["k3"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ex, exact_eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, jax.nn.softmax(logits) - jax.nn.softmax(ref_logits), atol=1e-6)
    assert len(v.sharding.device_set) == 8


def test_errors_are_clear():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="valid names: k1, k2, k3"):
        kl.estimate(x, x, "k4")
    with pytest.raises(ValueError, match=r"logp\[2, 3\], ref_logp\[3, 2\]"):
        kl.estimate(x, x.T, "k1")
    with pytest.raises(ValueError, match=r"old_logp\[3\]"):
        kl.estimate(x, x, "k1", old_logp=jnp.zeros(3))
    with pytest.raises(ValueError, match="clamp_log_ratio must be positive"):
        kl.estimate(x, x, "k1", clamp_log_ratio=0.0)
    with pytest.raises(ValueError, match="valid directions: reverse, forward"):
        kl.exact(x, x, "backward")
    with pytest.raises(ValueError, match=r"logits\[2, 3\], ref_logits\[2, 4\]"):
        kl.exact(x, jnp.zeros((2, 4)), "reverse")
    with pytest.raises(ValueError, match="valid names"):
        kl.clamp_fraction(x, x, 1.0, clamp_value=1.0, estimator="nope")
    with pytest.raises(ValueError, match=r"mask\[3\]"):
        kl.clamp_fraction(x, x, 1.0, mask=jnp.ones(3))
