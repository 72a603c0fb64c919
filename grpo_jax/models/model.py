"""A small Llama-style decoder-only transformer in flax.nnx, with a KV cache.

Architecture (docs/design.md, 'Benchmark workloads'): token embedding -> ``num_layers``
pre-norm blocks
``x += Attn(RMSNorm(x)); x += MLP(RMSNorm(x))`` -> RMSNorm -> untied linear head.
RMSNorm eps 1e-6, rotary position embeddings (theta 10000, rotate-half form), SiLU-gated
MLP ``W_down(silu(W_gate x) * W_up x)``, no biases anywhere, every weight initialised
N(0, 0.02^2) (RMSNorm scales start at 1).

Options for pretrained Llama-family checkpoints (``grpo_jax/models/gguf.py``,
``grpo_jax/models/hf_llama.py``), each off by default
so the defaults are the model above bit for bit: grouped-query attention
(``num_kv_heads < num_heads``: each key/value head serves ``num_heads // num_kv_heads``
consecutive query heads), tied embeddings (``tie_embeddings``: the head is the embedding
matrix transposed, no ``head`` parameter), ``norm_eps`` and ``rope_theta``.

LoRA adapters (``ModelConfig.lora``, a `LoRAConfig`; None by default): each adapted
projection (q, k, v, o, gate, up, down) gets ``a [D_in, r]`` and ``b [r, D_out]`` beside its
kernel, and computes ``x (W + (alpha / r) a b)``, i.e. ``W x + (alpha/r) B A x`` (kernels
here are ``[D_in, D_out]``). ``b`` starts at zero, so an untrained adapter is the base model
bit for bit; the effective kernel is formed before the matmul, so the fused qkv and gate/up
matmuls, the sampler and the replayed forward (`Tape`) are unchanged. `add_adapters`,
`merge_adapters` and `base_config` move between a base model and its adapted one; which
leaves train is `grpo_jax/models/trainable.py`'s business.

Parameters are always float32; ``config.dtype`` is the *compute* dtype ("float32" or
"bfloat16"). Attention scores, softmax and the returned logits are float32.

Two ways to use it:

* the nnx module ``Transformer(config, rngs)``: ``model(tokens)`` (teacher-forced),
  ``model.decode(tokens, cache, index)`` (cached), and for groups sharing a prompt
  ``model.prompt_pass(prompts)`` + ``model.extend(tokens, prefix, cache, index)``;
* the functional API, which carries the parameters as a plain pytree (an ``nnx.State``)
  through ``jax.jit`` / ``jax.vmap`` / ``jax.grad`` / ``lax.scan``::

      params = init(config, key)                      # jax.vmap(init, (None, 0)) -> population
      logits = forward(config, params, tokens)        # [B, L, V] float32
      logits = completion_logits(config, params, prompts, completions)   # [B, T, V]
      # prompts [N, P], completions [N G, T]: each prompt computed once for its G rows;
      # replay=sample(..., record=True).record reuses the sampler's matmuls (`Tape`).
      logp = token_logprobs(logits, completions)      # [B, T]

  The graph definition is rebuilt from the (hashable, static) config by ``graphdef(config)``;
  no module object is stored anywhere.

KV cache: a tuple with one ``{"k", "v"}`` dict per layer, each ``[B, Hkv, S, Dh]`` (heads-major,
so attention reads it without a transpose) in the compute dtype. Slot ``s`` holds position
``s``; ``decode(tokens [B, L], cache, index)`` writes the new
keys/values at slots ``index .. index+L-1`` and attends causally to slots ``<= position``, so
slots not yet written are never read.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from grpo_jax.models.kernels import Tape, _dense_site, _sub, attend, gated_mlp, rope
from grpo_jax.models import lora
from grpo_jax.models.lora import LoRAConfig

DTYPES = ("float32", "bfloat16")

Cache = tuple  # tuple[dict[str, jax.Array], ...], one {"k", "v"} per layer.


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Size of the transformer. Frozen and hashable, so it can be a static jit argument.

    Attributes:
      vocab_size: V, including special tokens.
      num_layers: number of decoder blocks.
      width: model width D (= num_heads * head_dim).
      num_heads: H attention heads; head_dim = width // num_heads must be even (RoPE).
      mlp_width: hidden width of the SiLU-gated MLP.
      max_len: longest sequence (prompt + completion) the model accepts.
      dtype: compute dtype, one of ``DTYPES``; parameters are float32 regardless.
      rope_theta: rotary embedding base.
      num_kv_heads: key/value heads for grouped-query attention (must divide num_heads);
        None means num_heads (multi-head attention).
      tie_embeddings: the output head is the token embedding transposed (no head weight).
      norm_eps: RMSNorm epsilon.
      lora: LoRA adapters on some projections (`LoRAConfig`, or a dict of its fields);
        None (the default) is the plain model.
    """

    vocab_size: int
    num_layers: int
    width: int
    num_heads: int
    mlp_width: int
    max_len: int
    dtype: str = "float32"
    rope_theta: float = 10000.0
    num_kv_heads: int | None = None
    tie_embeddings: bool = False
    norm_eps: float = 1e-6
    lora: LoRAConfig | None = None

    def __post_init__(self):
        if isinstance(self.lora, dict):  # e.g. from JSON metadata
            object.__setattr__(self, "lora", LoRAConfig(**self.lora))
        if self.lora is not None and not isinstance(self.lora, LoRAConfig):
            raise ValueError(f"ModelConfig.lora must be a LoRAConfig or None, got {self.lora!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {self.dtype!r}; valid dtypes: {DTYPES}.")
        for name in ("vocab_size", "num_layers", "width", "num_heads", "mlp_width", "max_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.width % self.num_heads:
            raise ValueError(
                f"width ({self.width}) must be divisible by num_heads ({self.num_heads})."
            )
        if (self.width // self.num_heads) % 2:
            raise ValueError(
                f"head_dim = width // num_heads = {self.width // self.num_heads} "
                "must be even for rotary embeddings."
            )
        if self.num_kv_heads is not None and (
            int(self.num_kv_heads) < 1 or self.num_heads % self.num_kv_heads
        ):
            raise ValueError(
                f"num_kv_heads ({self.num_kv_heads}) must be >= 1 and divide "
                f"num_heads ({self.num_heads})."
            )
        if not self.norm_eps > 0:
            raise ValueError(f"ModelConfig.norm_eps must be > 0, got {self.norm_eps}.")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads (``num_kv_heads``, or ``num_heads`` when that is None)."""
        return self.num_heads if self.num_kv_heads is None else int(self.num_kv_heads)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


def _init(std: float = 0.02):
    return nnx.initializers.normal(stddev=std)


def _linear_kwargs(config: ModelConfig, rngs: nnx.Rngs) -> dict:
    """The keyword arguments of every `nnx.Linear` here: no bias, float32 parameters,
    computed in `config.compute_dtype`."""
    return dict(
        use_bias=False,
        kernel_init=_init(),
        dtype=config.compute_dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Multi-head (or grouped-query) causal self-attention with RoPE, no biases."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.config = config
        kw = _linear_kwargs(config, rngs)
        d = config.width
        d_kv = config.kv_heads * config.head_dim
        self.q = nnx.Linear(d, d, **kw)
        self.k = nnx.Linear(d, d_kv, **kw)
        self.v = nnx.Linear(d, d_kv, **kw)
        self.o = nnx.Linear(d, d, **kw)
        lora.add_loras(self, config, dict(q=(d, d), k=(d, d_kv), v=(d, d_kv), o=(d, d)), rngs)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        kv: dict | None = None,
        index: jax.Array | int = 0,
        prefix: dict | None = None,
        tape: Tape | None = None,
        prefix_lengths: jax.Array | None = None,
    ):
        """``x [B, L, D]`` at ``positions [B, L]`` (rotary angles only).

        Self keys: without ``kv``, this call's own (query l at slot l); with ``kv``
        (``{"k", "v"}: [B, Hkv, S, Dh]``), this step's keys/values are written at slots
        ``index .. index+L-1`` first. Query l (slot ``index + l``) attends to self slots
        ``<= index + l``, and to every key of ``prefix`` (``{"k", "v"}: [N, Hkv, P, Dh]``,
        shared by each run of ``B // N`` consecutive rows: a prompt's keys, computed once
        for its group; with ``prefix_lengths [B]``, row b sees only its first
        ``prefix_lengths[b]``).
        Returns ``(y [B, L, D], {"k", "v"} self keys/values)``.

        q, k and v come from ONE matmul with the three kernels side by side (``[D, 3D]``;
        ``[D, D + 2 Hkv Dh]`` with grouped-query attention): the same products as three
        ``nnx.Linear`` calls, fewer and larger matmuls (the single-token decode step's are
        small).
        """
        c = self.config
        b, l, _ = x.shape
        dt = c.compute_dtype
        hkv = c.kv_heads
        w_qkv = jnp.concatenate(
            [lora.kernel(self, n, c) for n in ("q", "k", "v")], axis=1
        )  # [D, 3D]
        qkv = _dense_site(tape, "qkv", x, w_qkv, dt)  # [B, L, 3D]
        if hkv == c.num_heads:
            qkv = qkv.reshape(b, l, 3, c.num_heads, c.head_dim)
            q_raw, k_raw, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            d, d_kv = c.width, hkv * c.head_dim
            q_raw = qkv[..., :d].reshape(b, l, c.num_heads, c.head_dim)
            k_raw = qkv[..., d : d + d_kv].reshape(b, l, hkv, c.head_dim)
            v = qkv[..., d + d_kv :].reshape(b, l, hkv, c.head_dim)
        q = rope(q_raw, positions, c.rope_theta, c.max_len)  # [B, L, H, Dh]
        k = rope(k_raw, positions, c.rope_theta, c.max_len)  # [B, L, Hkv, Dh]
        # Heads-major [B, Hkv, L, Dh]: the layout of the cache, so that no step transposes it.
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
        if kv is None:
            new_kv, index = {"k": k, "v": v}, 0
        else:
            start = (0, 0, index, 0)
            new_kv = {
                name: jax.lax.dynamic_update_slice(kv[name], t.astype(kv[name].dtype), start)
                for name, t in (("k", k), ("v", v))
            }
        y = attend(c, q, new_kv["k"], new_kv["v"], index, prefix, prefix_lengths)
        return _dense_site(tape, "o", y, lora.kernel(self, "o", c), dt), new_kv


class MLP(nnx.Module):
    """SiLU-gated MLP: ``W_down(silu(W_gate x) * W_up x)``, no biases."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.config = config
        kw = _linear_kwargs(config, rngs)
        d, m = config.width, config.mlp_width
        self.gate = nnx.Linear(d, m, **kw)
        self.up = nnx.Linear(d, m, **kw)
        self.down = nnx.Linear(m, d, **kw)
        lora.add_loras(self, config, dict(gate=(d, m), up=(d, m), down=(m, d)), rngs)

    def __call__(self, x: jax.Array, tape: Tape | None = None) -> jax.Array:
        # gate and up as ONE matmul with the kernels side by side ([D, 2M]).
        dt = self.down.dtype
        c = self.config
        w = jnp.concatenate([lora.kernel(self, "gate", c), lora.kernel(self, "up", c)], axis=1)
        lead = x.shape[:-1]
        x2d = x.reshape(-1, x.shape[-1]).astype(dt)
        args = (x2d, w.astype(dt), lora.kernel(self, "down", c).astype(dt))
        y = gated_mlp(*args) if tape is None else tape.gated_mlp("mlp", *args)
        return y.reshape(*lead, y.shape[-1])


class Block(nnx.Module):
    """Pre-norm decoder block: ``x + Attn(norm(x))``, then ``x + MLP(norm(x))``."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        kw = dict(
            epsilon=config.norm_eps, dtype=config.compute_dtype, param_dtype=jnp.float32, rngs=rngs
        )
        self.attn_norm = nnx.RMSNorm(config.width, **kw)
        self.attn = Attention(config, rngs)
        self.mlp_norm = nnx.RMSNorm(config.width, **kw)
        self.mlp = MLP(config, rngs)

    def __call__(self, x, positions, kv=None, index=0, prefix=None, tape=None, prefix_lengths=None):
        h, new_kv = self.attn(self.attn_norm(x), positions, kv, index, prefix, tape, prefix_lengths)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x), tape)
        return x, new_kv


class Transformer(nnx.Module):
    """Llama-style decoder-only transformer (see the module docstring)."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.config = config
        self.embed = nnx.Embed(
            config.vocab_size,
            config.width,
            embedding_init=_init(),
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        self.blocks = nnx.List([Block(config, rngs) for _ in range(config.num_layers)])
        self.final_norm = nnx.RMSNorm(
            config.width,
            epsilon=config.norm_eps,
            dtype=config.compute_dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        if not config.tie_embeddings:
            self.head = nnx.Linear(
                config.width,
                config.vocab_size,
                use_bias=False,
                kernel_init=_init(),
                dtype=config.compute_dtype,
                param_dtype=jnp.float32,
                rngs=rngs,
            )

    def _logits(self, x: jax.Array, tape: Tape | None = None) -> jax.Array:
        h = self.final_norm(x)
        if self.config.tie_embeddings:
            w = self.embed.embedding[...].T  # [D, V]
        else:
            w = self.head.kernel[...]
        return _dense_site(tape, "head", h, w, self.config.compute_dtype).astype(jnp.float32)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Teacher-forced: ``tokens [B, L]`` int -> logits ``[B, L, V]`` float32; row l
        predicts token l+1."""
        _check_tokens(tokens, self.config)
        b, l = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32)[None, :], (b, l))
        x = self.embed(tokens)
        for block in self.blocks:
            x, _ = block(x, positions)
        return self._logits(x)

    def decode(self, tokens: jax.Array, cache: Cache, index: jax.Array | int):
        """Cached step: ``tokens [B, L]`` at positions ``index .. index+L-1`` (L = prompt
        length for a prefill, 1 for a decode step) -> ``(logits [B, L, V] float32, cache)``.

        ``index`` may be traced (inside ``lax.scan``); the caller keeps
        ``index + L <= cache length``.
        """
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, L], got shape {tokens.shape}.")
        if len(cache) != self.config.num_layers:
            raise ValueError(
                f"cache has {len(cache)} layers, model has " f"{self.config.num_layers}."
            )
        b, l = tokens.shape
        index = jnp.asarray(index, jnp.int32)
        positions = jnp.broadcast_to((index + jnp.arange(l, dtype=jnp.int32))[None, :], (b, l))
        x = self.embed(tokens)
        new_cache = []
        for block, kv in zip(self.blocks, cache):
            x, kv = block(x, positions, kv, index)
            new_cache.append(kv)
        return self._logits(x), tuple(new_cache)

    def prompt_pass(self, prompts: jax.Array, tape: Tape | None = None, lengths=None):
        """The shared prefix of a group: ``prompts [N, P]`` -> ``(logits [N, V] float32 of
        the last prompt row (the first completion token's distribution), prefix)``, where
        ``prefix`` holds one ``{"k", "v"}: [N, Hkv, P, Dh]`` per layer for `extend`.
        ``lengths [N]``: prompts right-padded to P, row n's last token at ``lengths[n] - 1``
        (causal attention keeps the padding out of the rows before it)."""
        _check_tokens(prompts, self.config)
        n, p = prompts.shape
        positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[None, :], (n, p))
        x = self.embed(prompts)
        prefix = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, positions, tape=_sub(tape, i))
            prefix.append(kv)
        if lengths is None:
            last = x[:, -1:]
        else:
            rows = jnp.asarray(lengths, jnp.int32)[:, None, None] - 1
            last = jnp.take_along_axis(x, rows, axis=1)  # [N, 1, D]
        return self._logits(last, tape)[:, 0], tuple(prefix)

    def extend(
        self,
        tokens: jax.Array,
        prefix: Cache,
        cache: Cache | None = None,
        index: jax.Array | int = 0,
        tape: Tape | None = None,
        prefix_lengths: jax.Array | None = None,
    ):
        """Tokens after a shared prefix: ``tokens [B, L]`` at self slots ``index ..
        index+L-1`` (positions ``P + slot``) after ``prefix`` (from `prompt_pass`, N rows,
        each shared by ``B // N`` consecutive rows of ``tokens``; ``prefix_lengths [N]``: the
        prompts' own lengths when right-padded, the positions then ``prefix_lengths[n] +
        slot``).

        Without ``cache``: teacher-forced over the L tokens (``index`` 0). With ``cache``
        (`init_cache` of at least ``index + L`` slots): one cached decode step, as `decode`.
        Returns ``(logits [B, L, V] float32, self cache or per-layer keys/values)``.
        """
        b, l = tokens.shape
        p = prefix[0]["k"].shape[2]
        index = jnp.asarray(index, jnp.int32)
        start, row_lengths = p, None
        if prefix_lengths is not None:  # each row's prompt length, once for every layer
            n = prefix[0]["k"].shape[0]
            row_lengths = jnp.repeat(jnp.asarray(prefix_lengths, jnp.int32), b // n)
            start = row_lengths[:, None]
        positions = jnp.broadcast_to(start + index + jnp.arange(l, dtype=jnp.int32)[None], (b, l))
        x = self.embed(tokens)
        caches = (None,) * len(self.blocks) if cache is None else cache
        new_cache = []
        for i, (block, kv, pre) in enumerate(zip(self.blocks, caches, prefix)):
            x, kv = block(x, positions, kv, index, pre, _sub(tape, i), row_lengths)
            new_cache.append(kv)
        return self._logits(x, tape), tuple(new_cache)


def _check_tokens(tokens: jax.Array, config: ModelConfig) -> None:
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, L], got shape {tokens.shape}.")
    if tokens.shape[1] > config.max_len:
        raise ValueError(
            f"tokens length {tokens.shape[1]} exceeds config.max_len " f"{config.max_len}."
        )


# ----------------------------------------------------------------------------------------
# Functional API: parameters as a plain pytree (nnx.State of float32 arrays).
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def graphdef(config: ModelConfig) -> nnx.GraphDef:
    """The static graph definition for ``config``, built abstractly (no FLOPs, no memory)."""
    abstract = nnx.eval_shape(lambda: Transformer(config, nnx.Rngs(0)))
    return nnx.split(abstract)[0]


def init(config: ModelConfig, key: jax.Array) -> nnx.State:
    """Fresh parameters (float32 ``nnx.State``): weights N(0, 0.02^2), RMSNorm scales 1.

    ``jax.vmap(init, in_axes=(None, 0))(keys)`` stacks a population along a leading axis.
    All weights are slices of ONE flat normal draw: the same distribution as
    ``Transformer(config, rngs)``'s initialisers (different values), but a single RNG op, so
    ``jax.jit(init)`` compiles in well under a second instead of one threefry per tensor.
    With ``config.lora`` the base weights are those of ``init(base_config(config), key)``
    and the adapters are `add_adapters`'s (``a`` drawn from ``fold_in(key, 1)``, ``b`` = 0).
    """
    if config.lora is not None:
        return add_adapters(config, init(base_config(config), key), jax.random.fold_in(key, 1))
    abstract = abstract_params(config)
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    is_scale = ["scale" in lora.path_names(path) for path, _ in paths_and_leaves]  # RMSNorm
    sizes = [x.size for (_, x), s in zip(paths_and_leaves, is_scale) if not s]
    flat = 0.02 * jax.random.normal(key, (sum(sizes),), jnp.float32)
    leaves, offset = [], 0
    for (_, x), scale in zip(paths_and_leaves, is_scale):
        if scale:
            leaves.append(jnp.ones(x.shape, jnp.float32))
        else:
            leaves.append(flat[offset : offset + x.size].reshape(x.shape))
            offset += x.size
    return jax.tree.unflatten(treedef, leaves)


def base_config(config: ModelConfig) -> ModelConfig:
    """``config`` without its adapters (the model they adapt)."""
    return dataclasses.replace(config, lora=None)


def add_adapters(config: ModelConfig, base_params: nnx.State, key: jax.Array | None) -> nnx.State:
    """`lora.add_adapters` for ``config`` (the base leaves as given, fresh or zero adapters)."""
    return lora.add_adapters(config, base_params, key, abstract_params(config))


def merge_adapters(config: ModelConfig, params: nnx.State) -> nnx.State:
    """`lora.merge_adapters` into the parameters of ``base_config(config)``."""
    if config.lora is None:
        return params
    return lora.merge_adapters(config, params, abstract_params(base_config(config)))


def abstract_params(config: ModelConfig) -> nnx.State:
    """``jax.ShapeDtypeStruct`` pytree of the parameters (for shardings / checkpoints)."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(config, nnx.Rngs(0))))[1]


def num_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def module(config: ModelConfig, params: nnx.State) -> Transformer:
    """The nnx module for ``params`` (read-only use inside pure functions)."""
    return nnx.merge(graphdef(config), params)


def forward(config: ModelConfig, params: nnx.State, tokens: jax.Array) -> jax.Array:
    """Teacher-forced logits: ``tokens [B, L]`` -> ``[B, L, V]`` float32, row l predicting
    token l+1. Pure: jit (config static) / vmap / grad over params."""
    return module(config, params)(tokens)


def completion_logits(
    config: ModelConfig,
    params: nnx.State,
    prompts: jax.Array,
    completions: jax.Array,
    replay: dict | None = None,
    prompt_lengths: jax.Array | None = None,
) -> jax.Array:
    """Logits ``[B, T, V]`` (float32) whose row t predicts ``completions[:, t]``.

    ``prompts [N, P]`` (P >= 1), ``completions [B, T]`` with ``B = N G``: prompt n is shared
    by the G consecutive rows ``n G .. n G + G - 1`` (G = 1: one prompt per row; GRPO: a
    group). The prompt is computed once per group (`Transformer.prompt_pass`), then the
    completions' first T - 1 tokens attend to it (`Transformer.extend`); the same logits as
    one teacher-forced pass over each row's concatenation (rows ``P-1 .. P+T-2``), up to
    rounding, with ``(N P + B (T-1)) / (B (P+T))`` of its FLOPs.

    ``replay``: ``{"prompt": records, "completion": records}`` of `Tape`s recorded by
    `sampling.sample(record=True)` with these parameters on these tokens: the forward's
    matmuls are replayed instead of recomputed (gradients unchanged; see `Tape`).
    ``prompt_lengths [N]``: prompts of different lengths, right-padded to P.
    """
    if prompts.ndim != 2 or completions.ndim != 2:
        raise ValueError(
            f"prompts must be [N, P] and completions [B, T]; got prompts {prompts.shape}, "
            f"completions {completions.shape}."
        )
    n, b = prompts.shape[0], completions.shape[0]
    if n < 1 or b % n:
        raise ValueError(
            f"completions rows B must be a multiple of prompts rows N (B = N * group size); "
            f"got prompts {prompts.shape}, completions {completions.shape}."
        )
    if prompts.shape[1] < 1:
        raise ValueError("prompts must have at least one token (P >= 1).")
    p, t = prompts.shape[1], completions.shape[1]
    if p + t - 1 > config.max_len:
        raise ValueError(
            f"prompt length {p} + completion length {t} - 1 exceeds config.max_len "
            f"{config.max_len}."
        )
    tapes = {k: None if replay is None else Tape(replay[k]) for k in ("prompt", "completion")}
    mod = module(config, params)
    first, prefix = mod.prompt_pass(
        prompts.astype(jnp.int32), tapes["prompt"], prompt_lengths
    )  # [N, V]
    first = jnp.repeat(first, b // n, axis=0)[:, None]  # [B, 1, V]
    if t == 1:
        return first
    rest, _ = mod.extend(
        completions[:, :-1].astype(jnp.int32),
        prefix,
        tape=tapes["completion"],
        prefix_lengths=prompt_lengths,
    )
    return jnp.concatenate([first, rest], axis=1)


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """``log softmax(logits)[..., tokens]``: logits ``[..., V]``, tokens ``[...]`` -> ``[...]``
    float32."""
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(
            f"logits [..., V] and tokens [...] disagree: logits {logits.shape}, "
            f"tokens {tokens.shape}."
        )
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def init_cache(config: ModelConfig, batch: int, length: int) -> Cache:
    """Empty KV cache: one ``{"k", "v"}`` per layer, each ``[batch, Hkv, length, Dh]`` zeros
    in the compute dtype (Hkv = ``config.kv_heads``)."""
    if length > config.max_len:
        raise ValueError(f"cache length {length} exceeds config.max_len {config.max_len}.")
    shape = (batch, config.kv_heads, length, config.head_dim)
    return tuple(
        {"k": jnp.zeros(shape, config.compute_dtype), "v": jnp.zeros(shape, config.compute_dtype)}
        for _ in range(config.num_layers)
    )


def decode(
    config: ModelConfig, params: nnx.State, tokens: jax.Array, cache: Cache, index: jax.Array | int
):
    """Cached forward of ``tokens [B, L]`` at positions ``index ..`` ->
    ``(logits [B, L, V] float32, new cache)``. See ``Transformer.decode``."""
    return module(config, params).decode(tokens, cache, index)
