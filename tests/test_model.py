"""Tests for grpo_jax.model: shapes, parameter count, cache == teacher forcing, causality,
RoPE, vmap populations, gradients, compute dtype, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.models import kernels, lora, model as M

CFG = M.ModelConfig(vocab_size=11, num_layers=2, width=16, num_heads=2, mlp_width=24, max_len=16)
forward = jax.jit(M.forward, static_argnums=0)


@pytest.fixture(scope="module")
def params():
    return M.init(CFG, jax.random.key(0))


def _expected_num_params(c):
    per_layer = 4 * c.width * c.width + 3 * c.width * c.mlp_width + 2 * c.width
    return 2 * c.vocab_size * c.width + c.num_layers * per_layer + c.width


def test_param_count_and_init_statistics(params):
    w1 = M.ModelConfig(
        vocab_size=68, num_layers=4, width=256, num_heads=4, mlp_width=1024, max_len=48
    )
    assert M.num_params(M.abstract_params(w1)) == _expected_num_params(w1) == 4_231_424
    assert M.num_params(params) == _expected_num_params(CFG)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    for path, x in leaves:
        name = jax.tree_util.keystr(path)
        assert x.dtype == jnp.float32, name
        if "scale" in name:  # RMSNorm
            np.testing.assert_array_equal(x, 1.0)
    emb = np.asarray(params["embed"]["embedding"][...])
    assert emb.shape == (CFG.vocab_size, CFG.width)
    assert 0.015 < emb.std() < 0.025 and abs(emb.mean()) < 0.005


def test_init_matches_module_structure():
    """init's pytree has the module's structure; weights N(0, 0.02^2); keys give new draws."""
    mod_state = M.nnx.split(M.nnx.eval_shape(lambda: M.Transformer(CFG, M.nnx.Rngs(0))))[1]
    a, b = M.init(CFG, jax.random.key(0)), M.init(CFG, jax.random.key(1))
    assert jax.tree.structure(mod_state) == jax.tree.structure(a)
    for x, y, z in zip(jax.tree.leaves(mod_state), jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert not np.array_equal(y, z) or np.all(y == 1.0)


def test_shapes_and_dtype(params):
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, CFG.vocab_size)
    logits = forward(CFG, params, tokens)
    assert logits.shape == (2, 8, CFG.vocab_size) and logits.dtype == jnp.float32


def test_cached_decode_matches_teacher_forcing(params):
    """Prefill 5 tokens, then 4 single-token steps: logits equal the full forward (1e-5)."""
    tokens = jax.random.randint(jax.random.key(2), (3, 9), 0, CFG.vocab_size)
    full = forward(CFG, params, tokens)
    decode = jax.jit(M.decode, static_argnums=0)
    cache = M.init_cache(CFG, 3, 9)
    logits, cache = decode(CFG, params, tokens[:, :5], cache, 0)
    rows = [logits]
    for i in range(5, 9):
        logits, cache = decode(CFG, params, tokens[:, i : i + 1], cache, jnp.int32(i))
        rows.append(logits)
    np.testing.assert_allclose(jnp.concatenate(rows, axis=1), full, atol=1e-5, rtol=0)


def test_causal(params):
    """Changing token j changes no logits at rows < j, but does change rows >= j."""
    tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, CFG.vocab_size)
    changed = tokens.at[:, 5].set((tokens[:, 5] + 1) % CFG.vocab_size)
    a, b = forward(CFG, params, tokens), forward(CFG, params, changed)
    np.testing.assert_array_equal(a[:, :5], b[:, :5])
    assert np.all(np.abs(a[:, 5:] - b[:, 5:]).max(axis=-1) > 1e-6)


def test_rope_is_relative_and_norm_preserving():
    """<R(m) q, R(n) k> depends only on m - n; rotations keep norms."""
    q = jax.random.normal(jax.random.key(4), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.key(5), (1, 1, 1, 8))

    def dot(m, n):
        rq = M.rope(q, jnp.array([[m]]), 10000.0)
        rk = M.rope(k, jnp.array([[n]]), 10000.0)
        return float(jnp.sum(rq * rk))

    np.testing.assert_allclose(dot(3, 1), dot(9, 7), rtol=1e-5)
    np.testing.assert_allclose(dot(0, 0), float(jnp.sum(q * k)), rtol=1e-6)
    assert abs(dot(3, 1) - dot(1, 3)) > 1e-4  # not symmetric: direction matters
    rq = M.rope(q, jnp.array([[7]]), 10000.0)
    np.testing.assert_allclose(jnp.linalg.norm(rq), jnp.linalg.norm(q), rtol=1e-6)


def test_completion_logits_and_token_logprobs(params):
    prompts = jax.random.randint(jax.random.key(6), (2, 5), 0, CFG.vocab_size)
    comps = jax.random.randint(jax.random.key(7), (2, 3), 0, CFG.vocab_size)
    logits = jax.jit(M.completion_logits, static_argnums=0)(CFG, params, prompts, comps)
    full = forward(CFG, params, jnp.concatenate([prompts, comps], axis=1))
    assert logits.shape == (2, 3, CFG.vocab_size)
    np.testing.assert_allclose(logits, full[:, 4:7], atol=1e-6)
    # token_logprobs on a hand case: logits log([.5, .25, .25]) -> log probs of the tokens.
    lg = jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]])) + 3.0
    np.testing.assert_allclose(
        M.token_logprobs(lg, jnp.array([0, 2])), np.log([0.5, 0.3]), rtol=1e-6
    )
    with pytest.raises(ValueError, match="logits"):
        M.token_logprobs(lg, jnp.array([0, 1, 2]))


def test_vmap_population(params):
    """jax.vmap(init) gives distinct members; vmapped forward equals per-member forward."""
    keys = jax.random.split(jax.random.key(8), 3)
    pop = jax.jit(jax.vmap(M.init, in_axes=(None, 0)), static_argnums=0)(CFG, keys)
    tokens = jax.random.randint(jax.random.key(9), (2, 8), 0, CFG.vocab_size)
    out = jax.jit(jax.vmap(M.forward, in_axes=(None, 0, None)), static_argnums=0)(CFG, pop, tokens)
    assert out.shape == (3, 2, 8, CFG.vocab_size)
    for i in range(3):
        member = jax.tree.map(lambda x: x[i], pop)
        np.testing.assert_allclose(out[i], forward(CFG, member, tokens), atol=1e-6)
    np.testing.assert_allclose(out[2], forward(CFG, M.init(CFG, keys[2]), tokens), atol=1e-6)
    assert float(jnp.abs(out[0] - out[1]).max()) > 1e-4


def test_gradient_matches_finite_difference(params):
    """Directional derivative of a log-likelihood: grad . d == (f(p + e d) - f(p - e d)) / 2e."""
    tokens = jax.random.randint(jax.random.key(10), (2, 8), 0, CFG.vocab_size)
    direction = M.init(CFG, jax.random.key(11))  # N(0, 0.02^2) weights, ones for scales
    eps = 0.05

    def loss(p):
        return jnp.sum(M.token_logprobs(M.forward(CFG, p, tokens)[:, :-1], tokens[:, 1:]))

    @jax.jit
    def check(p, d):
        g = jax.grad(loss)(p)
        analytic = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(d)))
        plus = jax.tree.map(lambda x, y: x + eps * y, p, d)
        minus = jax.tree.map(lambda x, y: x - eps * y, p, d)
        numeric = (loss(plus) - loss(minus)) / (2 * eps)
        return analytic, numeric, [jnp.abs(x).max() for x in jax.tree.leaves(g)]

    analytic, numeric, grad_max = check(params, direction)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2)
    assert abs(float(analytic)) > 1e-3
    assert all(float(x) > 0 for x in grad_max)


def test_bfloat16_compute(params):
    """bfloat16 compute: float32 params, float32 logits, close to the float32 model."""
    cfg16 = M.ModelConfig(**{**CFG.__dict__, "dtype": "bfloat16"})
    tokens = jax.random.randint(jax.random.key(12), (2, 8), 0, CFG.vocab_size)
    lo16 = forward(cfg16, params, tokens)
    assert lo16.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(M.abstract_params(cfg16)))
    lo32 = forward(CFG, params, tokens)
    err = float(jnp.abs(lo16 - lo32).max())
    assert 0 < err < 2e-2


def test_config_validation():
    with pytest.raises(ValueError, match="float32"):
        M.ModelConfig(5, 1, 8, 2, 8, 8, dtype="float16")
    with pytest.raises(ValueError, match="divisible"):
        M.ModelConfig(5, 1, 9, 2, 8, 8)
    with pytest.raises(ValueError, match="even"):
        M.ModelConfig(5, 1, 6, 2, 8, 8)
    assert hash(CFG) == hash(M.ModelConfig(**CFG.__dict__))
    with pytest.raises(ValueError, match="max_len"):
        M.forward(CFG, M.abstract_params(CFG), jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match="completions"):
        M.completion_logits(
            CFG, M.abstract_params(CFG), jnp.zeros((2, 3), jnp.int32), jnp.zeros((3, 2), jnp.int32)
        )


# bf16 compute (ModelConfig.dtype = "bfloat16"): matmuls in bf16, float32 master weights,
# float32 residual stream, softmax, logits and log-probs. Stated tolerance: on a W1-shaped
# model at init (4 layers, width 256), per-token log-probs within BF16_LOGP_ATOL of float32.
BF16_LOGP_ATOL = 2e-2


def test_bfloat16_logprobs_close_to_float32_and_float32_typed():
    cfg32 = M.ModelConfig(
        vocab_size=68, num_layers=4, width=256, num_heads=4, mlp_width=1024, max_len=48
    )
    cfg16 = M.ModelConfig(**{**cfg32.__dict__, "dtype": "bfloat16"})
    params = M.init(cfg32, jax.random.key(20))
    prompts = jax.random.randint(jax.random.key(21), (8, 16), 0, 64)
    comps = jax.random.randint(jax.random.key(22), (8, 32), 0, 64)

    @jax.jit
    def logp_and_grad(p):
        def f(cfg):
            def loss(p):
                lp = M.token_logprobs(M.completion_logits(cfg, p, prompts, comps), comps)
                return jnp.mean(lp), lp

            return jax.value_and_grad(loss, has_aux=True)(p)

        return f(cfg32), f(cfg16)

    ((_, lp32), g32), ((_, lp16), g16) = logp_and_grad(params)
    assert lp16.dtype == lp32.dtype == jnp.float32
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
    err = float(jnp.abs(lp16 - lp32).max())
    assert 0 < err < BF16_LOGP_ATOL, err
    # Gradients point the same way (cosine > 0.99).
    dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)))
    n16 = jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree.leaves(g16)))
    n32 = jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree.leaves(g32)))
    assert float(dot / (n16 * n32)) > 0.99


def test_bfloat16_cache_and_decode_dtypes(params):
    """bf16: the KV cache is bf16 (half the memory); decoded logits stay float32 and close to
    the float32 model's."""
    cfg16 = M.ModelConfig(**{**CFG.__dict__, "dtype": "bfloat16"})
    cache = M.init_cache(cfg16, 2, 6)
    assert all(c["k"].dtype == jnp.bfloat16 for c in cache)
    tokens = jax.random.randint(jax.random.key(23), (2, 6), 0, CFG.vocab_size)
    logits, _ = jax.jit(M.decode, static_argnums=0)(cfg16, params, tokens, cache, 0)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, forward(CFG, params, tokens), atol=2e-2)


# Grouped-query attention, tied embeddings, norm_eps (options for pretrained checkpoints;
# their GGUF round trip against a NumPy forward is tests/test_gguf.py).
GQA = M.ModelConfig(
    vocab_size=11,
    num_layers=2,
    width=24,
    num_heads=6,
    mlp_width=24,
    max_len=16,
    num_kv_heads=2,
    tie_embeddings=True,
    norm_eps=1e-5,
)


def test_gqa_tied_params_cache_and_mha_equivalence():
    p = M.init(GQA, jax.random.key(1))
    names = {
        "/".join(lora.path_names(path)) for path, _ in jax.tree_util.tree_flatten_with_path(p)[0]
    }
    assert not any(n.startswith("head") for n in names)
    assert p["blocks"][0]["attn"]["k"]["kernel"].shape == (24, 2 * 4)
    assert M.init_cache(GQA, 3, 8)[0]["k"].shape == (3, 2, 8, 4)
    tokens = jax.random.randint(jax.random.key(2), (3, 9), 0, 11)
    full = forward(GQA, p, tokens)
    cache = M.init_cache(GQA, 3, 9)
    pre, cache = M.decode(GQA, p, tokens[:, :5], cache, 0)
    rows = [pre]
    for i in range(5, 9):
        lg, cache = M.decode(GQA, p, tokens[:, i : i + 1], cache, i)
        rows.append(lg)
    np.testing.assert_allclose(np.concatenate(rows, 1), full, atol=1e-5)
    # GQA == multi-head attention whose k/v heads are the GQA heads repeated per group.
    mha = M.ModelConfig(**{**GQA.__dict__, "num_kv_heads": None, "tie_embeddings": False})
    q = jax.tree.map(lambda x: x, M.init(mha, jax.random.key(3)))
    q["embed"]["embedding"] = p["embed"]["embedding"]
    q["head"]["kernel"] = p["embed"]["embedding"][...].T
    for b in range(GQA.num_layers):
        for name in ("q", "o"):
            q["blocks"][b]["attn"][name]["kernel"] = p["blocks"][b]["attn"][name]["kernel"]
        for name in ("k", "v"):
            w = p["blocks"][b]["attn"][name]["kernel"][...].reshape(24, 2, 1, 4)
            q["blocks"][b]["attn"][name]["kernel"] = jnp.broadcast_to(w, (24, 2, 3, 4)).reshape(
                24, 24
            )
        for part in ("attn_norm", "mlp_norm", "mlp"):
            q["blocks"][b][part] = p["blocks"][b][part]
    q["final_norm"] = p["final_norm"]
    np.testing.assert_allclose(forward(mha, q, tokens), full, atol=1e-5)


def test_gqa_config_validation():
    with pytest.raises(ValueError, match="num_kv_heads"):
        M.ModelConfig(5, 1, 12, 6, 8, 8, num_kv_heads=4)
    with pytest.raises(ValueError, match="norm_eps"):
        M.ModelConfig(5, 1, 12, 6, 8, 8, norm_eps=0.0)


def test_dense_and_gated_mlp_match_autodiff():
    """The 2D `dense` helper equals `jnp.dot`, and `gated_mlp`'s hand-written VJP (the backward as 2D GEMMs, d_gate_up written in one pass) equals autodiff of the plain
    formula, for the value and all three gradients, under jit and vmap."""
    k = jax.random.split(jax.random.key(7), 5)
    n, d, m = 10, 16, 24
    x = jax.random.normal(k[0], (n, d))
    w_gu = 0.3 * jax.random.normal(k[1], (d, 2 * m))
    w_down = 0.3 * jax.random.normal(k[2], (m, d))
    dy = jax.random.normal(k[3], (n, d))

    def plain(x, w_gu, w_down):
        gate, up = jnp.split(x @ w_gu, 2, axis=-1)
        return (jax.nn.silu(gate) * up) @ w_down

    x3 = x.reshape(2, 5, d)
    np.testing.assert_allclose(kernels.dense(x3, w_gu, jnp.float32), jnp.dot(x3, w_gu), atol=1e-6)

    def vjp_of(f):
        return jax.jit(lambda *a: jax.vjp(f, *a)[1](dy))

    want_y = plain(x, w_gu, w_down)
    np.testing.assert_allclose(jax.jit(M.gated_mlp)(x, w_gu, w_down), want_y, atol=1e-5)
    for got, want in zip(vjp_of(M.gated_mlp)(x, w_gu, w_down), vjp_of(plain)(x, w_gu, w_down)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # A population axis (jax.vmap over everything) goes through the custom VJP too.
    xs = jnp.stack([x, 2 * x])

    def loss(f):
        return lambda xs: jax.vmap(lambda x: (f(x, w_gu, w_down) * dy).sum())(xs).sum()

    np.testing.assert_allclose(
        jax.grad(loss(M.gated_mlp))(xs), jax.grad(loss(plain))(xs), rtol=1e-5, atol=1e-5
    )
