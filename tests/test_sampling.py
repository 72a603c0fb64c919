"""Tests for grpo_jax.sampling: cached log-probs == teacher forcing, exact sampling
frequencies, determinism, greedy limit, EOS masking, vmap over parameter sets, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grpo_jax.models import model as M, sampling as S

CFG = M.ModelConfig(vocab_size=6, num_layers=2, width=16, num_heads=2, mlp_width=32, max_len=12)
forward = jax.jit(M.forward, static_argnums=0)
completion_logits = jax.jit(M.completion_logits, static_argnums=0)
B, P, T = 8, 3, 6


def _peaky(params, scale=3.0, head=4.0):
    """Scale the init so the tiny model has far-from-uniform, context-dependent outputs."""

    def f(path, x):
        names = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
        return x * scale * (head if "head" in names else 1.0)

    return jax.tree_util.tree_map_with_path(f, params)


@pytest.fixture(scope="module")
def params():
    return _peaky(M.init(CFG, jax.random.key(0)))


@pytest.fixture(scope="module")
def prompts():
    return jax.random.randint(jax.random.key(1), (B, P), 0, CFG.vocab_size)


def _sample(params, prompts, key, **kw):
    return S.sample(CFG, params, prompts, key, max_new_tokens=T, return_logits=True, **kw)


def test_cached_logprobs_equal_teacher_forced(params, prompts):
    out = _sample(params, prompts, jax.random.key(2))
    assert out.tokens.shape == (B, T) and out.tokens.dtype == jnp.int32
    assert out.logp.dtype == out.mask.dtype == out.logits.dtype == jnp.float32
    assert out.logits.shape == (B, T, CFG.vocab_size)
    tf_logits = completion_logits(CFG, params, prompts, out.tokens)
    # float32 rounding: the cached step's matmuls ([B, 1] rows) and the teacher-forced ones
    # ([B, P + T] rows) sum in different orders; logits here reach ~10, so allow 1e-5 relative.
    np.testing.assert_allclose(out.logits, tf_logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(
        out.logp, M.token_logprobs(tf_logits, out.tokens), atol=1e-5, rtol=1e-5
    )
    np.testing.assert_array_equal(out.mask, 1.0)


def _exact_first_two(params, prompt, **kw):
    """Exact joint distribution [V, V] of the first two tokens after ``prompt [P]`` under the
    sampling distribution (teacher-forced logits, then sampling_logits)."""
    v = CFG.vocab_size
    ctx = jnp.concatenate([jnp.tile(prompt[None], (v, 1)), jnp.arange(v)[:, None]], axis=1)
    logits = forward(CFG, params, ctx)  # [V, P+1, V]
    q1 = jax.nn.softmax(S.sampling_logits(logits[0, P - 1], **kw))
    q2 = jax.nn.softmax(S.sampling_logits(logits[:, P], **kw), axis=-1)  # [V(y1), V(y2)]
    return np.asarray(q1[:, None] * q2, np.float64)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(temperature=0.7, top_k=4, top_p=0.9, banned_tokens=(5,)),
    ],
    ids=["plain", "temp_topk_topp_banned"],
)
def test_first_two_token_frequencies_match_exact(params, prompts, kw):
    """Empirical joint of (y1, y2) over N samples vs the exact product of conditionals.

    Per cell |freq - p| <= 5 sigma + 2/N: ~6e-7 per cell two-sided, so this cannot flake,
    yet it rejects a sampler that ignores y1 when drawing y2 (checked below) or that
    samples a banned / cut token (p = 0 cells must stay empty).
    """
    n = 20000
    prompt = prompts[0]
    joint = _exact_first_two(params, prompt, **kw)
    out = S.sample(
        CFG, params, jnp.tile(prompt[None], (n, 1)), jax.random.key(3), max_new_tokens=2, **kw
    )
    y = np.asarray(out.tokens)
    counts = np.zeros_like(joint)
    np.add.at(counts, (y[:, 0], y[:, 1]), 1)
    freq = counts / n
    bound = 5 * np.sqrt(joint * (1 - joint) / n) + 2 / n
    assert np.all(np.abs(freq - joint) <= bound), (freq, joint)
    assert np.all(counts[joint == 0] == 0)
    # The sampler's logp is the log of the exact sampling probability of what it drew.
    np.testing.assert_allclose(
        np.asarray(out.logp.sum(-1)), np.log(joint[y[:, 0], y[:, 1]]), atol=1e-4
    )
    # Sensitivity: sampling y2 from its marginal (ignoring y1) would fail the bound.
    independent = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    assert np.any(np.abs(independent - joint) > 3 * bound)
    if kw:  # top-k / top-p / bans remove mass somewhere beyond the banned token
        assert np.all(counts[:, 5] == 0) and np.all(counts[5, :] == 0)
        assert np.sum(joint[:5, :5] == 0) > 0


def test_same_key_same_output_other_key_other_output(params, prompts):
    a = _sample(params, prompts, jax.random.key(4))
    b = _sample(params, prompts, jax.random.key(4))
    c = _sample(params, prompts, jax.random.key(5))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.tokens, c.tokens)


def test_greedy_and_zero_temperature_limit(params, prompts):
    """temperature=0 picks the argmax of the teacher-forced logits at every step (logp 0);
    a tiny positive temperature gives the same tokens."""
    greedy = _sample(params, prompts, jax.random.key(6), temperature=0.0)
    tf_logits = completion_logits(CFG, params, prompts, greedy.tokens)
    np.testing.assert_array_equal(greedy.tokens, jnp.argmax(tf_logits, axis=-1))
    np.testing.assert_array_equal(greedy.logp, 0.0)
    cold = _sample(params, prompts, jax.random.key(7), temperature=1e-3)
    np.testing.assert_array_equal(cold.tokens, greedy.tokens)
    np.testing.assert_allclose(cold.logp, 0.0, atol=1e-4)
    warm = _sample(params, prompts, jax.random.key(7), temperature=1.0)
    assert not np.array_equal(warm.tokens, greedy.tokens)


def test_nothing_after_eos_counts(params, prompts):
    eos = 1
    out = _sample(params, prompts, jax.random.key(9), eos_id=eos)
    tok, mask, logp = map(np.asarray, (out.tokens, out.mask, out.logp))
    first = np.where((tok == eos).any(1), (tok == eos).argmax(1), T)  # first EOS or T
    expected = (np.arange(T)[None, :] <= first[:, None]).astype(np.float32)
    np.testing.assert_array_equal(mask, expected)
    after = mask == 0
    assert after.any() and (first == T).any() and (first < T - 1).any()  # test is sensitive
    np.testing.assert_array_equal(tok[after], eos)  # padded with EOS
    np.testing.assert_array_equal(logp[after], 0.0)  # contribute nothing
    # Up to the EOS the log-probs are the model's; the sequence log-prob is the masked sum.
    tf_logits = completion_logits(CFG, params, prompts, out.tokens)
    np.testing.assert_allclose(out.logits, tf_logits, atol=1e-5)
    tf_logp = np.asarray(M.token_logprobs(tf_logits, out.tokens))
    np.testing.assert_allclose(logp * mask, tf_logp * mask, atol=1e-5)
    # Hand case of the mask itself.
    np.testing.assert_array_equal(
        S.completion_mask(jnp.array([[1, 3, 2, 3], [3, 3, 1, 1], [1, 1, 1, 1]]), 3),
        [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]],
    )


def test_vmap_over_stacked_params(params, prompts):
    pop = jax.tree.map(lambda x: jnp.stack([x, 0.8 * x, x[::-1]]), params)  # 3 distinct sets
    skeys = jax.random.split(jax.random.key(11), 3)
    outs = jax.vmap(lambda p, k: _sample(p, prompts, k))(pop, skeys)
    assert outs.tokens.shape == (3, B, T) and outs.logits.shape == (3, B, T, CFG.vocab_size)
    for i in range(3):
        single = _sample(jax.tree.map(lambda x: x[i], pop), prompts, skeys[i])
        np.testing.assert_array_equal(outs.tokens[i], single.tokens)
        np.testing.assert_allclose(outs.logp[i], single.logp, atol=1e-5)


def test_batch_sharded_over_devices(params, prompts):
    devices = jax.devices()
    assert len(devices) == 8
    mesh = Mesh(np.array(devices), ("data",))
    sharded = jax.device_put(prompts, NamedSharding(mesh, PartitionSpec("data")))
    replicated = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    out = _sample(replicated, sharded, jax.random.key(12))
    ref = _sample(params, prompts, jax.random.key(12))
    assert len(out.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logp, ref.logp, atol=1e-5)
    # Same math, different reduction order across shards: float32 reassociation only.
    np.testing.assert_allclose(out.logits, ref.logits, atol=1e-4)


def test_inverse_cdf_covers_each_token_its_probability():
    """Enumerate u on a fine grid of (0, 1]: each token's share of the grid is its
    probability; zero-probability tokens (first, middle, last) are never chosen."""
    p = np.array([0.0, 0.1, 0.35, 0.0, 0.05, 0.5, 0.0])
    logits = jnp.log(jnp.asarray(p, jnp.float32))  # -inf for the zeros
    n = 200_000
    u = jnp.arange(1, n + 1, dtype=jnp.float32) / n
    tok = np.asarray(jax.jit(S.inverse_cdf_index)(jnp.broadcast_to(logits, (n, 7)), u))
    np.testing.assert_allclose(np.bincount(tok, minlength=7) / n, p, atol=2e-5)
    assert tok[0] == 1 and tok[-1] == 5  # the ends fall on the first / last positive token
    # Random draws: same distribution (4 sigma per token), batch axes kept, int32.
    draws = S.inverse_cdf_categorical(jax.random.key(3), jnp.broadcast_to(logits, (50, 400, 7)))
    assert draws.shape == (50, 400) and draws.dtype == jnp.int32
    freq = np.bincount(np.asarray(draws).ravel(), minlength=7) / draws.size
    np.testing.assert_array_less(np.abs(freq - p), 4 * np.sqrt(p * (1 - p) / draws.size) + 1e-9)


def test_one_token_policy_draws_by_its_named_method():
    """`policies.sample(draw=...)`: "inverse_cdf" and "gumbel" are exactly those draws on the
    sampling logits; a bad name lists the valid ones."""
    from grpo_jax.models import policies  # noqa: PLC0415
    from grpo_jax import tasks

    task = tasks.make("bandit", num_tokens=16, sigma=2.0)
    policy = policies.make("tabular", task)
    params = policies.reference_params(task)
    prompts = jnp.full((64, 1), task.bos_id, jnp.int32)
    key = jax.random.key(5)
    z = S.sampling_logits(
        policy.completion_logits(params, prompts, jnp.zeros((64, 1), jnp.int32))[:, 0],
        banned_tokens=tuple(task.special_ids),
    )
    expected = {
        "inverse_cdf": S.inverse_cdf_categorical(key, z),
        "gumbel": jax.random.categorical(key, z, axis=-1),
    }
    for draw, tokens in expected.items():
        out = policies.sample(
            policy, params, prompts, key, banned_tokens=tuple(task.special_ids), draw=draw
        )
        np.testing.assert_array_equal(out.tokens[:, 0], tokens, err_msg=draw)
    with pytest.raises(ValueError, match="inverse_cdf.*gumbel"):
        policies.sample(policy, params, prompts, key, draw="exact")


def test_sampling_logits_hand_cases():
    z = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
    inf = -np.inf

    def kept(**kw):
        return np.isfinite(np.asarray(S.sampling_logits(z, **kw)))

    np.testing.assert_array_equal(kept(top_k=2), [1, 1, 0, 0])
    np.testing.assert_array_equal(kept(top_p=0.7), [1, 1, 0, 0])
    np.testing.assert_array_equal(kept(top_p=0.85), [1, 1, 1, 0])
    np.testing.assert_array_equal(kept(top_p=0.1), [1, 0, 0, 0])
    np.testing.assert_array_equal(kept(banned_tokens=(0,), top_k=2), [0, 1, 1, 0])
    np.testing.assert_array_equal(kept(banned_tokens=(0,), top_p=0.7), [0, 1, 1, 0])
    # Temperature 2 on the kept set: pi ∝ p^(1/2), renormalised.
    q = jax.nn.softmax(S.sampling_logits(z, temperature=2.0, top_k=3))
    expected = np.sqrt([0.5, 0.3, 0.15]) / np.sqrt([0.5, 0.3, 0.15]).sum()
    np.testing.assert_allclose(q, [*expected, 0.0], rtol=1e-5)
    assert S.sampling_logits(z, banned_tokens=(1,))[1] == inf


def test_validation(params, prompts):
    with pytest.raises(ValueError, match="top_k"):
        S.sample(CFG, params, prompts, jax.random.key(0), max_new_tokens=2, top_k=0)
    with pytest.raises(ValueError, match="eos_id"):
        S.sample(CFG, params, prompts, jax.random.key(0), max_new_tokens=2, eos_id=6)
    with pytest.raises(ValueError, match="max_len"):
        S.sample(CFG, params, prompts, jax.random.key(0), max_new_tokens=10)
    with pytest.raises(ValueError, match="whole vocabulary"):
        S.sample(
            CFG, params, prompts, jax.random.key(0), max_new_tokens=2, banned_tokens=tuple(range(6))
        )
    with pytest.raises(ValueError, match="prompts"):
        S.sample(CFG, params, prompts[0], jax.random.key(0), max_new_tokens=2)


def test_bad_temperature_top_p_and_token_ids_are_refused(params, prompts):
    """No silent greedy / T = 1 / NaN logits: concrete bad values are a ValueError naming the
    setting and its range; traced ones (inside a caller's jit) make the affected rows' logp
    NaN, and only those."""
    key = jax.random.key(2)
    for kw, match in [
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=-0.5), r"top_p must be in \(0, 1\]"),
        (dict(top_p=float("nan")), r"top_p must be in \(0, 1\]"),
        (dict(temperature=float("nan")), "temperature must be a finite number"),
    ]:
        with pytest.raises(ValueError, match=match):
            _sample(params, prompts, key, **kw)
    for bad_id in (CFG.vocab_size, -1):
        with pytest.raises(ValueError, match=r"token ids in \[0, vocab_size=6\).*row 1"):
            _sample(params, prompts.at[1, 2].set(bad_id), key)

    @jax.jit
    def traced(prompts, temperature, top_p):
        return _sample(params, prompts, key, temperature=temperature, top_p=top_p).logp

    good = np.asarray(traced(prompts, 1.0, 0.9))
    assert np.isfinite(good).all()
    for t, p in ((float("nan"), 0.9), (1.0, 0.0), (1.0, float("nan"))):
        assert np.isnan(np.asarray(traced(prompts, t, p))).all(), (t, p)
    rows = np.isnan(np.asarray(traced(prompts.at[1, 2].set(CFG.vocab_size), 1.0, 0.9)))
    np.testing.assert_array_equal(rows.any(axis=1), np.arange(B) == 1)


def test_bfloat16_compute_samples_float32_logprobs(params, prompts):
    """bf16 compute: log-probs and logits come back float32 and equal the bf16 model's own
    teacher-forced log-probs (up to bf16 cache rounding)."""
    cfg16 = M.ModelConfig(**{**CFG.__dict__, "dtype": "bfloat16"})
    out = S.sample(cfg16, params, prompts, jax.random.key(2), max_new_tokens=T, return_logits=True)
    assert out.logp.dtype == out.logits.dtype == jnp.float32
    tf = M.token_logprobs(completion_logits(cfg16, params, prompts, out.tokens), out.tokens)
    np.testing.assert_allclose(out.logp, tf, atol=5e-2)


# Shared prompts (group_size) and replay (record=True): the GRPO step computes each prompt
# once per group and replays the sampler's matmuls in the policy forward (model.Tape).
GQA_CFG = M.ModelConfig(
    vocab_size=6, num_layers=2, width=24, num_heads=6, mlp_width=16, max_len=12, num_kv_heads=2
)


@pytest.mark.parametrize("cfg", [CFG, GQA_CFG], ids=["mha", "gqa"])
def test_grouped_prompts_and_replay_equal_plain_forward(cfg):
    """Per group of G rows: logits equal one teacher-forced pass over each row's
    concatenation (prompt repeated); the replayed forward gives the sampler's logits exactly
    and the recomputed forward's gradient (1e-5 of each leaf's largest entry)."""
    g, n = 3, 2
    params = _peaky(M.init(cfg, jax.random.key(5)))
    other = M.init(cfg, jax.random.key(9))
    group_prompts = jax.random.randint(jax.random.key(6), (n, P), 0, cfg.vocab_size)
    weights = jax.random.normal(jax.random.key(8), (n * g, T))

    @jax.jit
    def everything(params, other):
        out = S.sample(
            cfg,
            params,
            group_prompts,
            jax.random.key(7),
            max_new_tokens=T,
            return_logits=True,
            group_size=g,
            record=True,
        )
        prompts = jnp.repeat(group_prompts, g, axis=0)
        full = M.forward(cfg, params, jnp.concatenate([prompts, out.tokens], 1))
        logits_of = lambda p, replay: M.completion_logits(cfg, p, group_prompts, out.tokens, replay)
        loss = lambda p, replay: jnp.sum(
            weights * M.token_logprobs(logits_of(p, replay), out.tokens)
        )
        return dict(
            out=out,
            full=full[:, P - 1 : P + T - 1],
            grouped=logits_of(params, None),
            replayed=logits_of(params, out.record),
            # The replay really skips the forward: with other parameters it still returns
            # the recorded logits (so the step only replays with the parameters that sampled).
            replayed_other=logits_of(other, out.record),
            g_replay=jax.grad(loss)(params, out.record),
            g_plain=jax.grad(loss)(params, None),
        )

    r = everything(params, other)
    out = r["out"]
    assert out.tokens.shape == (n * g, T)
    np.testing.assert_allclose(out.logits, r["full"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(r["grouped"], r["full"], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(r["replayed"], out.logits)  # the sampler's values
    np.testing.assert_array_equal(r["replayed_other"], out.logits)
    for a, b in zip(jax.tree.leaves(r["g_replay"]), jax.tree.leaves(r["g_plain"])):
        scale = float(jnp.abs(b).max())  # float32 rounding, relative to the leaf's size
        np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=0)


def test_group_size_validation(params):
    with pytest.raises(ValueError, match="group_size"):
        S.sample(
            CFG,
            params,
            jnp.zeros((2, 3), jnp.int32),
            jax.random.key(0),
            max_new_tokens=2,
            group_size=0,
        )
    with pytest.raises(ValueError, match="multiple of prompts rows"):
        M.completion_logits(CFG, params, jnp.zeros((2, 3), jnp.int32), jnp.zeros((3, 2), jnp.int32))


def _fresh_sample(cfg, prompts, **kw):
    """`(params, key) -> SampleOutput` of the sampler's body under a new `jax.jit`, so it is
    traced afresh (with whatever module settings a test has patched): `sample`'s own jit
    would reuse an earlier trace."""
    kw = {
        **dict(temperature=1.0, top_k=None, top_p=None, eos_id=None, banned_tokens=()),
        **dict(return_logits=True, group_size=1, record=False, decode_plan=S.DecodePlan()),
        **kw,
    }
    return jax.jit(lambda p, k: S._sample.__wrapped__(cfg, p, prompts, k, **kw))


def test_decode_segments_and_chains_change_only_rounding():
    """The decode split into chains (rows) and segments (a self cache growing by segments)
    samples the same tokens as one chain over one segment, with the same log-probs, logits
    and matmul records up to float32 rounding; the segments tile the steps."""
    assert S.DecodePlan(2, 4).segment_bounds(31) == [(0, 8), (8, 16), (16, 23), (23, 31)]
    for steps in (1, 5, 15, 16, 31, 40):
        for segments in (1, 2, 4, 8):
            bounds = S.DecodePlan(1, segments).segment_bounds(steps)
            assert len(bounds) == min(segments, steps)
            assert bounds[0][0] == 0 and bounds[-1][1] == steps
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert all(start < stop for start, stop in bounds)
    assert S.DecodePlan(2, 1).num_streams(4) == 2 and S.DecodePlan(2, 1).num_streams(3) == 1
    with pytest.raises(ValueError, match="DecodePlan.streams"):
        S.DecodePlan(0, 1)
    cfg = M.ModelConfig(vocab_size=9, num_layers=2, width=16, num_heads=2, mlp_width=32, max_len=16)
    params = _peaky(M.init(cfg, jax.random.key(3)))
    group_prompts = jax.random.randint(jax.random.key(4), (4, 3), 0, cfg.vocab_size)
    outs = []
    for plan in (S.DecodePlan(1, 1), S.DecodePlan(2, 4)):
        run = _fresh_sample(
            cfg,
            group_prompts,
            max_new_tokens=12,
            temperature=0.8,
            top_k=6,
            top_p=0.95,
            eos_id=2,
            banned_tokens=(8,),
            group_size=4,
            record=True,
            decode_plan=plan,
        )
        outs.append(run(params, jax.random.key(5)))
    one, split = outs
    np.testing.assert_array_equal(one.tokens, split.tokens)
    np.testing.assert_allclose(one.logp, split.logp, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(one.logits, split.logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one.record), jax.tree.leaves(split.record)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert len(jax.tree.leaves(one.record)) == len(jax.tree.leaves(split.record)) > 0


def test_noise_drawn_before_or_inside_the_loop_is_categoricals(params, prompts, monkeypatch):
    """`gumbel_draws` row t + logits has its argmax where `jax.random.categorical(keys[t], z)`
    draws; the sampler gives the same tokens with the noise drawn before its loop or inside
    it (`NOISE_BEFORE_LOOP_BYTES` 0)."""
    keys = jax.random.split(jax.random.key(11), 7)
    z = jax.random.normal(jax.random.key(12), (64, 9)) * 2.0
    draws = S.gumbel_draws(keys, z.shape)
    for t in range(7):
        np.testing.assert_array_equal(
            jnp.argmax(draws[t] + z, axis=-1), jax.random.categorical(keys[t], z, axis=-1)
        )
    outs = []
    for limit in (S.NOISE_BEFORE_LOOP_BYTES, 0):
        monkeypatch.setattr(S, "NOISE_BEFORE_LOOP_BYTES", limit)
        run = _fresh_sample(CFG, prompts, max_new_tokens=T)
        outs.append(run(params, jax.random.key(13)))
    np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
    np.testing.assert_array_equal(outs[0].logp, outs[1].logp)


def test_prompts_of_different_lengths_equal_each_prompt_alone(params):
    """Right-padded prompts with `prompt_lengths`: every row's logits equal one teacher-forced
    pass over its own prompt (padding dropped) and its completion; whatever the padding holds,
    the same tokens; `step_stats` equals the statistics of the returned logits."""
    from grpo_jax.core import stats  # pylint: disable=import-outside-toplevel

    lengths, g = np.array([2, 4, 3]), 2
    real = np.asarray(jax.random.randint(jax.random.key(11), (3, 4), 0, CFG.vocab_size))
    padded = {}
    for fill in (0, 5):
        padded[fill] = np.where(np.arange(4)[None] < lengths[:, None], real, fill)
    outs = {
        fill: S.sample(
            CFG,
            params,
            jnp.asarray(p),
            jax.random.key(12),
            max_new_tokens=T,
            return_logits=True,
            group_size=g,
            prompt_lengths=lengths,
            step_stats=stats.next_token_stats,
        )
        for fill, p in padded.items()
    }
    out = outs[0]
    np.testing.assert_array_equal(out.tokens, outs[5].tokens)
    tf = completion_logits(CFG, params, jnp.asarray(padded[5]), out.tokens, None, lengths)
    for row in range(3 * g):
        n = row // g
        seq = jnp.concatenate([real[n, : lengths[n]], out.tokens[row]])[None]
        full = forward(CFG, params, seq)[0, lengths[n] - 1 : lengths[n] + T - 1]
        np.testing.assert_allclose(out.logits[row], full, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(tf[row], full, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(
            out.logp[row], M.token_logprobs(full, out.tokens[row]), atol=1e-5, rtol=1e-5
        )
    want = stats.next_token_stats(out.logits)
    for k in ("entropy", "top1", "ratio21"):
        np.testing.assert_allclose(out.stats[k], want[k], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(out.stats["top_ids"][..., 0], want["top_ids"][..., 0])
    for bad, match in (
        (lengths[:2], r"prompt_lengths must be \[N\]"),
        (np.array([0, 4, 3]), r"prompt_lengths must be in \[1, P=4\]"),
    ):
        with pytest.raises(ValueError, match=match):
            S.sample(
                CFG,
                params,
                jnp.asarray(real),
                jax.random.key(0),
                max_new_tokens=2,
                prompt_lengths=bad,
            )
