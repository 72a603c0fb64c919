"""The transformer's kernels: 2D dense matmuls, the gated MLP's hand-written VJP, replayed
matmuls (`Tape`: the sampler's matmul outputs reused by the policy forward), rotary
position embeddings and causal attention (over a shared prefix too). Pure functions of arrays; `model.py` builds the modules on them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def dense(x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """``x [..., K] @ w [K, N]`` in ``dtype`` as ONE 2D matmul over ``[prod(...), K]``.

    The same products as ``jnp.dot(x, w)``; flattening the leading axes first makes the
    weight gradient a plain ``x2d.T @ g2d`` that XLA CPU runs as one GEMM, without first
    copying (transposing) the activation gradient, as it does for a 3D ``x``.
    """
    lead = x.shape[:-1]
    y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(dtype), w.astype(dtype))
    return y.reshape(*lead, w.shape[-1])


@jax.custom_vjp
def gated_mlp(x: jax.Array, w_gate_up: jax.Array, w_down: jax.Array) -> jax.Array:
    """``silu(x @ W_gate) * (x @ W_up) @ W_down`` for ``x [N, D]``, ``w_gate_up [D, 2M]`` (the
    gate and up kernels side by side), ``w_down [M, D]``, all in one dtype.

    A custom VJP with the backward written out as 2D GEMMs: ``d_gate_up`` is built by ONE
    elementwise pass straight into the ``[N, 2M]`` layout (autodiff of ``split`` writes the
    two halves and then copies them into a concatenation), and only ``x @ W_gate_up`` is kept
    for the backward (the SiLU product is recomputed from it).
    """
    return _gated_mlp_fwd(x, w_gate_up, w_down)[0]


def _gated_mlp_fwd(x, w_gate_up, w_down):
    gu = jnp.dot(x, w_gate_up)
    gate, up = jnp.split(gu, 2, axis=-1)
    return jnp.dot(jax.nn.silu(gate) * up, w_down), (x, w_gate_up, w_down, gu)


def _gated_mlp_bwd(res, dy):
    x, w_gate_up, w_down, gu = res
    gate, up = jnp.split(gu, 2, axis=-1)
    sig = jax.nn.sigmoid(gate)
    act = gate * sig  # silu(gate)
    dh = jnp.dot(dy, w_down.T)
    dw_down = jnp.dot((act * up).T, dy)
    d_gate = dh * up * (sig * (1 + gate * (1 - sig)))
    # One concatenation fusion writes d_gate and d_up side by side: the [N, 2M] layout of
    # d_gu (13% faster on the W1 shapes than a select over an [N, 2, M] view).
    d_gu = jnp.concatenate([d_gate, dh * act], axis=-1)
    return jnp.dot(d_gu, w_gate_up.T), jnp.dot(x.T, d_gu), dw_down


gated_mlp.defvjp(_gated_mlp_fwd, _gated_mlp_bwd)


@jax.custom_vjp
def replayed_dense(x2d: jax.Array, w: jax.Array, y: jax.Array) -> jax.Array:
    """``x2d @ w`` whose value ``y`` was computed before (by the sampler, on the same ``x2d``
    and ``w``): returns ``y`` at no cost; the gradient is that of the matmul,
    ``(g w^T, x2d^T g)`` (none flows into ``y``)."""
    del x2d, w
    return y


def _replayed_dense_fwd(x2d, w, y):
    return y, (x2d, w, y)


def _replayed_dense_bwd(res, g):
    x2d, w, y = res
    return jnp.dot(g, w.T), jnp.dot(x2d.T, g), jnp.zeros_like(y)


replayed_dense.defvjp(_replayed_dense_fwd, _replayed_dense_bwd)


@jax.custom_vjp
def replayed_gated_mlp(x, w_gate_up, w_down, gu, y):
    """``gated_mlp(x, w_gate_up, w_down)`` whose ``x @ w_gate_up`` (``gu``) and output ``y``
    were computed before: returns ``y``; the backward is ``gated_mlp``'s."""
    del x, w_gate_up, w_down, gu
    return y


def _replayed_gated_mlp_fwd(x, w_gate_up, w_down, gu, y):
    return y, ((x, w_gate_up, w_down, gu), y)


def _replayed_gated_mlp_bwd(res, dy):
    mlp_res, y = res
    gu = mlp_res[3]
    return (*_gated_mlp_bwd(mlp_res, dy), jnp.zeros_like(gu), jnp.zeros_like(y))


replayed_gated_mlp.defvjp(_replayed_gated_mlp_fwd, _replayed_gated_mlp_bwd)


class Tape:
    """The outputs of every matmul of one pass, by site name: recorded, or replayed.

    ``Tape()`` records: each site computes its matmul and keeps the output in ``records``
    (``"{layer}.qkv"``, ``"{layer}.o"``, ``"{layer}.gu"``, ``"{layer}.down"``, ``"head"``;
    2D ``[rows, N]`` in the compute dtype). ``Tape(replay=records)`` replays: each site
    returns the recorded output without computing it (`replayed_dense`,
    `replayed_gated_mlp`), while its gradient is the matmul's. A pass replayed with the
    parameters and inputs it was recorded with therefore computes the same values as a
    plain pass, up to rounding, without the matmul FLOPs of its forward: the policy
    forward of an on-policy GRPO step replays the sampler's (docs/design.md,
    "Shared prompts and replay").
    """

    def __init__(self, replay: dict | None = None, prefix: str = "", records=None):
        self.replay = replay
        self.prefix = prefix
        self.records = {} if records is None else records

    def sub(self, name: str) -> "Tape":
        """The same tape, its site names prefixed with ``name + "."``."""
        return Tape(self.replay, f"{self.prefix}{name}.", self.records)

    def dense(self, name: str, x: jax.Array, w: jax.Array, dtype) -> jax.Array:
        lead, key = x.shape[:-1], self.prefix + name
        x2d, w = x.reshape(-1, x.shape[-1]).astype(dtype), w.astype(dtype)
        if self.replay is None:
            y = jnp.dot(x2d, w)
            self.records[key] = y
        else:
            y = replayed_dense(x2d, w, self.replay[key])
        return y.reshape(*lead, w.shape[-1])

    def gated_mlp(self, name: str, x2d, w_gate_up, w_down) -> jax.Array:
        key = self.prefix + name
        if self.replay is not None:
            return replayed_gated_mlp(
                x2d, w_gate_up, w_down, self.replay[key + ".gu"], self.replay[key + ".down"]
            )
        y, (_, _, _, gu) = _gated_mlp_fwd(x2d, w_gate_up, w_down)  # gated_mlp's forward
        self.records[key + ".gu"], self.records[key + ".down"] = gu, y
        return y


def _sub(tape: Tape | None, name) -> Tape | None:
    return None if tape is None else tape.sub(str(name))


def _dense_site(tape: Tape | None, name: str, x, w, dtype):
    return dense(x, w, dtype) if tape is None else tape.dense(name, x, w, dtype)


@functools.lru_cache(maxsize=16)
def rope_table(max_len: int, head_dim: int, theta: float):
    """``(cos, sin)`` of the rotary angles ``pos * theta^(-2i/Dh)`` for ``pos < max_len``:
    NumPy float32 ``[max_len, Dh/2]`` each, computed once in float64.

    A table read by position instead of ``jnp.cos``/``jnp.sin`` in the program: XLA fuses the
    angle's cosine into every consumer, recomputing it per element of q and k (a third of
    the W1 decode step's elementwise time).
    """
    half = head_dim // 2
    freq = float(theta) ** (-np.arange(half, dtype=np.float64) * 2.0 / head_dim)
    angle = np.arange(max_len, dtype=np.float64)[:, None] * freq[None, :]
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def rope(x: jax.Array, positions: jax.Array, theta: float, max_len: int | None = None) -> jax.Array:
    """Rotary embedding, rotate-half form (Su et al. 2021; Llama).

    ``x [B, L, H, Dh]``, ``positions [B, L]`` (int) -> ``[B, L, H, Dh]`` in x's dtype.
    With ``f_i = theta^(-2i/Dh)``, ``a = pos * f``:
    ``out = [x1 cos a - x2 sin a, x2 cos a + x1 sin a]`` for the halves ``x = [x1, x2]``.
    With ``max_len`` (positions ``< max_len``) cos and sin are read from `rope_table`;
    without, computed in float32.
    """
    half = x.shape[-1] // 2
    if max_len is None:
        freq = theta ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / x.shape[-1])  # [Dh/2]
        angle = positions.astype(jnp.float32)[:, :, None, None] * freq[None, None, None, :]
        cos, sin = jnp.cos(angle), jnp.sin(angle)  # [B, L, 1, Dh/2]
    else:
        cos_t, sin_t = rope_table(int(max_len), x.shape[-1], float(theta))
        cos = jnp.asarray(cos_t)[positions][:, :, None, :]  # [B, L, 1, Dh/2]
        sin = jnp.asarray(sin_t)[positions][:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., :half], xf[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def attend(
    config,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    index: jax.Array | int = 0,
    prefix: dict | None = None,
    prefix_lengths: jax.Array | None = None,
) -> jax.Array:
    """Causal softmax attention, optionally over a shared prefix as well (`config`: the
    model's `ModelConfig`).

    ``q [B, L, H, Dh]`` (rotated) at self slots ``index .. index+L-1``; ``k, v
    [B, Hkv, S, Dh]`` at slots ``0 .. S-1``; query l sees the slots ``<= index + l``, and every
    key of ``prefix`` (``{"k", "v"}: [N, Hkv, P, Dh]``, row n shared by the ``G = B // N``
    rows ``n G .. n G + G - 1``; with ``prefix_lengths [B]``, query row b sees only the first
    ``prefix_lengths[b]`` keys of its prefix: prompts of different lengths, right-padded).
    Grouped-query: query head ``h`` reads key/value head
    ``h // (H / Hkv)``. Scores and softmax in float32. Returns ``y [B, L, H Dh]`` in the
    compute dtype.
    """
    c = config
    dt = c.compute_dtype
    b, l = q.shape[:2]
    hkv, grp, dh = c.kv_heads, c.num_heads // c.kv_heads, c.head_dim
    qh = jnp.swapaxes(q, 1, 2).reshape(b, hkv, grp, l, dh)  # [B, Hkv, grp, L, Dh]
    scale = jnp.sqrt(jnp.float32(dh))
    p = 0
    prefix_ok = None  # [B, 1, 1, 1, P]: which prefix keys each row may see
    if prefix is not None and prefix_lengths is not None:
        keys = jnp.arange(prefix["k"].shape[2])[None]
        prefix_ok = (keys < prefix_lengths[:, None])[:, None, None, None, :]
    if prefix is not None and l > 1:
        # Teacher-forced: each row's prefix copied in front of its own keys (the copy is
        # small next to the separate prefix attention's transposes and score concatenation).
        n, p = prefix["k"].shape[0], prefix["k"].shape[2]
        if b % n:
            raise ValueError(f"attend: {b} query rows are not a multiple of {n} prefix rows.")
        k, v = (
            jnp.concatenate([jnp.repeat(prefix[x].astype(t.dtype), b // n, axis=0), t], axis=2)
            for x, t in (("k", k), ("v", v))
        )
        prefix = None
    scores = (
        jnp.einsum("bkgld,bksd->bkgls", qh, k.astype(qh.dtype), preferred_element_type=jnp.float32)
        / scale
    )
    slots = jnp.arange(k.shape[2]) - p  # prefix slots < 0: always visible
    allowed = slots[None, :] <= (index + jnp.arange(l))[:, None]  # [L, S]
    if prefix_ok is not None and p:  # the prefix keys are the first p of the S slots
        self_ok = jnp.ones(prefix_ok.shape[:-1] + (k.shape[2] - p,), bool)
        allowed = allowed[None, None, None] & jnp.concatenate([prefix_ok, self_ok], axis=-1)
    scores = jnp.where(allowed, scores, -jnp.inf)
    if prefix is None:
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)
        y = jnp.einsum("bkgls,bksd->blkgd", probs, v.astype(dt))
        return y.reshape(b, l, c.width)
    kp, vp = prefix["k"], prefix["v"]
    n, p = kp.shape[0], kp.shape[2]
    if b % n:  # a decode step: the prefix attended apart (no per-step copy of it)
        raise ValueError(f"attend: {b} query rows are not a multiple of {n} prefix rows.")
    qn = qh.reshape(n, b // n, hkv, grp, l, dh)
    pre = (
        jnp.einsum(
            "njkgld,nkpd->njkglp", qn, kp.astype(qh.dtype), preferred_element_type=jnp.float32
        )
        / scale
    ).reshape(b, hkv, grp, l, p)
    if prefix_ok is not None:
        pre = jnp.where(prefix_ok, pre, -jnp.inf)
    probs = jax.nn.softmax(jnp.concatenate([pre, scores], axis=-1), axis=-1).astype(dt)
    p_pre = probs[..., :p].reshape(n, b // n, hkv, grp, l, p)
    y_pre = jnp.einsum("njkglp,nkpd->njlkgd", p_pre, vp.astype(dt)).reshape(b, l, hkv, grp, dh)
    y = jnp.einsum("bkgls,bksd->blkgd", probs[..., p:], v.astype(dt)) + y_pre
    return y.reshape(b, l, c.width)
