"""Jitted autoregressive sampling with a KV cache (flax gemma / tunix sampler pattern).

One ``jax.jit``: the prompts ``[N, P]`` pass once (`model.Transformer.prompt_pass`: their
keys/values are the shared prefix of the ``G = group_size`` completions of each prompt), the
first token of each of the ``B = N G`` rows is sampled from its prompt's last row, then
``lax.scan`` runs ``T - 1`` decode steps (`model.Transformer.extend`) with the completions'
KV cache ``[B, Hkv, S, Dh]`` in the carry (XLA updates it in place; the cache is created
inside the jit, so there is nothing for the caller to donate). The caller's `DecodePlan` may
split the decode into independent chains of rows (the runtime can overlap their small ops)
and into segments whose cache holds only the slots filled by the segment's end (one scan per
segment, the cache zero-padded between them, so a step does not attend over empty slots);
each chain and segment is one more loop body to compile. With ``record=True`` every
matmul output of the prompt pass and of the decode steps is kept (`model.Tape`), laid out
as a teacher-forced pass over the same tokens would compute it, so that the GRPO step can
replay the policy's forward instead of recomputing it.

Sampling distribution at each step, from the raw model logits ``z [B, V]`` (float32):

1. banned tokens: ``z_i = -inf``;
2. temperature: ``z / tau`` (``tau <= 0`` means greedy: a point mass on ``argmax z``);
3. top-k: keep the k largest (ties at the k-th value are kept);
4. top-p (nucleus, Holtzman et al. 2020): keep the smallest prefix of the sorted
   distribution whose mass reaches p (always at least the most likely token);
5. ``pi = softmax`` of what is left; ``y ~ pi``, ``logp = log pi(y)`` (0 for greedy).

``logp`` is thus the log-prob under the distribution actually sampled from; for
``temperature=1`` with no top-k/top-p/bans it equals the model's teacher-forced log-prob
(``model.token_logprobs(model.completion_logits(...), tokens)``).

EOS: once a row has produced ``eos_id``, every later token is ``eos_id`` (fed back as is, so
teacher-forced recomputation on the returned tokens sees exactly what the sampler saw), its
``logp`` is 0 and its mask is 0. ``mask[b, t] = 1`` up to and including the first EOS.

Bad settings are refused, never replaced by greedy or T = 1: a NaN or infinite temperature,
a ``top_p`` outside (0, 1], and prompt token ids outside ``[0, V)`` (the embedding would read
NaN rows for ids >= V and wrap negative ones). ``sample`` checks them on the host, a
``ValueError``, whenever they are concrete values (the entry point's prompts and settings).
Inside a caller's jit they are tracers and cannot be checked there without checkify, so the
jitted body marks them instead: every ``logp`` of a sample with a bad temperature or
``top_p``, and of each row whose prompt holds a bad id, is NaN, which the training loop
stops on (or skips) like any other non-finite value.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Callable, NamedTuple

import numpy as np

import jax
import jax.numpy as jnp

from grpo_jax.models import model as model_lib, sampling_checks


class SampleOutput(NamedTuple):
    """Result of ``sample``.

    Attributes:
      tokens: ``[B, T]`` int32 completions (``eos_id`` after the first EOS).
      logp: ``[B, T]`` float32 log-probs under the sampling distribution (0 where mask is 0).
      mask: ``[B, T]`` float32, 1 up to and including the first EOS, 0 after.
      logits: ``[B, T, V]`` float32 raw model logits at each sampled position (row t is the
        model's prediction for ``tokens[:, t]``), or None unless ``return_logits``.
      stats: ``step_stats`` of those raw logits, each leaf ``[B, T, ...]``, or None.
      record: ``{"prompt": records, "completion": records}`` (`model.Tape` records, the
        argument ``replay`` of `model.completion_logits`), or None unless ``record``.
    """

    tokens: jax.Array
    logp: jax.Array
    mask: jax.Array
    logits: jax.Array | None
    record: dict | None = None
    stats: Any = None


def sampling_logits(
    logits: jax.Array,
    temperature: jax.Array | float = 1.0,
    top_k: int | None = None,
    top_p: jax.Array | float | None = None,
    banned_tokens: tuple[int, ...] = (),
) -> jax.Array:
    """Logits of the distribution actually sampled from (steps 1-4 of the module doc).

    ``logits [..., V]`` -> ``[..., V]`` float32, ``-inf`` for excluded tokens; ``softmax`` of
    the result is the sampling distribution. For ``temperature <= 0`` this returns the
    (masked) logits unscaled; ``sample`` then takes the argmax.
    """
    z = logits.astype(jnp.float32)
    v = z.shape[-1]
    if banned_tokens:
        banned = jnp.zeros((v,), bool).at[jnp.asarray(banned_tokens, jnp.int32)].set(True)
        z = jnp.where(banned, -jnp.inf, z)
    temperature = jnp.asarray(temperature, jnp.float32)
    z = jnp.where(temperature > 0, z / jnp.where(temperature > 0, temperature, 1.0), z)
    if top_k is not None:
        kth = jax.lax.top_k(z, top_k)[0][..., -1:]  # [..., 1]
        z = jnp.where(z >= kth, z, -jnp.inf)
    if top_p is not None:
        sorted_z = -jnp.sort(-z, axis=-1)  # descending
        probs = jax.nn.softmax(sorted_z, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < jnp.asarray(top_p, jnp.float32)
        keep = keep.at[..., 0].set(True)
        cutoff = jnp.min(jnp.where(keep, sorted_z, jnp.inf), axis=-1, keepdims=True)
        z = jnp.where(z >= cutoff, z, -jnp.inf)
    return z


def inverse_cdf_categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
    """One draw per row from ``softmax(logits [..., V])`` -> ``[...]`` int32, by inverting
    the CDF at one uniform ``u ~ U(0, 1]`` per row (`inverse_cdf_index`).

    `jax.random.categorical` draws V Gumbels per row and takes two logs of each; this draws
    one number (about half the study's chunk time; benchmarks/README.md). The price is
    resolution in the tails: ``u`` lies on a grid of 2^-23 and the
    CDF is float32 (spacing ~6e-8 near 1), so a token's probability is represented only to
    ~1.2e-7: a token far below that is drawn either never or at ~1.2e-7 (e.g. 100x too often
    at p = 1e-9), where Gumbels draw it about right down to ~1e-8 of the largest. Sampled
    tail-sensitive estimators (k3 with a tiny pi) can then see rare huge ratios, so the
    one-token policies keep Gumbels by default (`policies.sample`, config key
    `grpo.one_token_draw`); use this where tokens below ~1e-7 do not matter.
    """
    u = 1.0 - jax.random.uniform(key, logits.shape[:-1], jnp.float32)  # (0, 1]
    return inverse_cdf_index(logits, u)


def inverse_cdf_index(logits: jax.Array, u: jax.Array) -> jax.Array:
    """The token whose CDF interval holds ``u [...]`` in (0, 1]: the first ``k`` with
    ``p_k > 0`` and ``cdf[k] >= u * total`` for ``cdf = cumsum(p)``, ``p = softmax(logits
    [..., V])``, ``total`` the largest CDF value of a token with ``p > 0``.

    So token k covers a fraction ``p_k`` of (0, 1] (up to float32 rounding) and a token of
    probability 0 (a ``-inf`` logit) is never chosen, even if the matmul's rounding made the
    CDF non-monotone. The CDF is a matmul with an upper-triangular ones matrix at full
    float32 precision (on the CPU faster than ``cumsum``, which lowers to a reduce-window).
    """
    v = logits.shape[-1]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    upper = jnp.triu(jnp.ones((v, v), jnp.float32))
    cdf = jnp.matmul(probs, upper, precision=jax.lax.Precision.HIGHEST)
    live = probs > 0
    total = jnp.max(jnp.where(live, cdf, 0.0), axis=-1)
    hit = live & (cdf >= (u * total)[..., None])
    return jnp.argmax(hit, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """How the decode loop is laid out (static; the same tokens whatever the plan, float32
    rounding aside). `streams`: independent chains of rows, whole groups each (a batch whose
    prompts do not split evenly runs as one chain). `segments`: loops over consecutive steps
    whose self cache holds only the slots filled by the segment's end (at most one per step).
    Every chain and segment is one more copy of the decode body to compile; the default, one
    of each, compiles fastest (benchmarks/README.md has what the others bought on the CPU)."""

    streams: int = 1
    segments: int = 1

    def __post_init__(self):
        for name in ("streams", "segments"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DecodePlan.{name} must be an int >= 1, got {value!r}.")

    def num_streams(self, num_prompts: int) -> int:
        """Chains for `num_prompts` prompts: `streams` if they split evenly, else 1."""
        return self.streams if num_prompts % self.streams == 0 else 1

    def segment_bounds(self, steps: int) -> list[tuple[int, int]]:
        """Decode steps ``[start, stop)`` of each segment: near-equal, tiling ``0..steps``."""
        n = min(self.segments, steps)
        bounds = [round(i * steps / n) for i in range(n + 1)]
        return list(zip(bounds[:-1], bounds[1:]))


def sample(
    config: model_lib.ModelConfig,
    params,
    prompts: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    temperature: jax.Array | float = 1.0,
    top_k: int | None = None,
    top_p: jax.Array | float | None = None,
    eos_id: int | None = None,
    banned_tokens: tuple[int, ...] = (),
    return_logits: bool = False,
    group_size: int = 1,
    record: bool = False,
    decode_plan: DecodePlan = DecodePlan(),
    prompt_lengths: jax.Array | None = None,
    step_stats: Callable[[jax.Array], Any] | None = None,
) -> SampleOutput:
    """Sample ``T = max_new_tokens`` tokens after ``prompts [N, P]``, ``group_size`` rows per
    prompt, with a KV cache.

    Args:
      config: the model's ``ModelConfig`` (static).
      params: parameter pytree from ``model.init``.
      prompts: ``[N, P]`` int tokens in ``[0, V)``; all rows share the length P unless
        ``prompt_lengths``.
      key: PRNG key; the same key gives the same output.
      max_new_tokens: T (static); every row runs the full T steps.
      temperature: finite scalar; ``<= 0`` is greedy decoding (logp 0).
      top_k: keep the k most likely tokens (static), or None.
      top_p: nucleus mass in (0, 1], or None.
      eos_id: end-of-sequence id (static), or None.
      banned_tokens: tuple of ids never sampled (static), e.g. special tokens.
      return_logits: also return the raw logits ``[B, T, V]`` (static).
      group_size: G completions per prompt (static); ``B = N G``, rows ``n G .. n G + G - 1``
        continue prompt n (its prompt pass is computed once).
      record: also return the matmul records for `model.completion_logits(replay=...)`
        (static).
      decode_plan: the decode loop's layout (`DecodePlan`, static).
      prompt_lengths: ``[N]`` int, prompts of different lengths right-padded to P (row n's
        completion starts after its ``prompt_lengths[n]`` tokens), or None.
      step_stats: a function of one step's raw logits ``[B, V]`` -> a pytree of ``[B, ...]``
        (static; e.g. `stats.next_token_stats`), collected as ``stats`` without the ``[B, T,
        V]`` logits leaving the jit; or None.

    Returns:
      ``SampleOutput(tokens [B, T] int32, logp [B, T] f32, mask [B, T] f32, logits, record)``.
    Pure and jitted; vmappable over (params, key), and the batch may be sharded.
    """
    banned_tokens = tuple(sorted(set(int(t) for t in banned_tokens)))
    sampling_checks.validate(
        config, prompts, max_new_tokens, top_k, eos_id, banned_tokens, prompt_lengths
    )
    sampling_checks.check_values(config, prompts, temperature, top_p)
    if int(group_size) < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}.")
    return _sample(
        config,
        params,
        prompts,
        key,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=eos_id,
        banned_tokens=banned_tokens,
        return_logits=return_logits,
        group_size=int(group_size),
        record=bool(record),
        decode_plan=decode_plan,
        prompt_lengths=None if prompt_lengths is None else jnp.asarray(prompt_lengths, jnp.int32),
        step_stats=step_stats,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "config",
        "max_new_tokens",
        "top_k",
        "eos_id",
        "banned_tokens",
        "return_logits",
        "group_size",
        "record",
        "decode_plan",
        "step_stats",
    ),
)
def _sample(
    config,
    params,
    prompts,
    key,
    *,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    eos_id,
    banned_tokens,
    return_logits,
    group_size,
    record,
    decode_plan,
    prompt_lengths=None,
    step_stats=None,
) -> SampleOutput:
    """The jitted body of ``sample`` (arguments already validated)."""
    n = prompts.shape[0]
    b = n * group_size
    t_len = max_new_tokens
    model = model_lib.module(config, params)
    temperature = jnp.asarray(temperature, jnp.float32)
    choose = functools.partial(
        _choose,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        banned_tokens=banned_tokens,
        eos_id=eos_id,
    )
    prompt_tape = model_lib.Tape() if record else None
    first, prefix = model.prompt_pass(prompts.astype(jnp.int32), prompt_tape, prompt_lengths)
    raw0 = jnp.repeat(first, group_size, axis=0)  # [B, V]
    draws, noise_of = _step_noise(key, t_len, raw0.shape)

    def observe(raw):  # what a step keeps of its raw logits [B, V]
        return (raw if return_logits else None, step_stats(raw) if step_stats else None)

    tok0, lp0, done0 = choose(raw0, noise_of(draws[0]), jnp.zeros((b,), bool))
    tokens, logp = tok0[:, None], lp0[:, None]
    observed = jax.tree.map(lambda x: x[:, None], observe(raw0))  # [B, 1, ...]
    completion = {}
    if t_len > 1:
        toks, lps, rest, completion = _decode(
            model,
            config,
            prefix,
            (tok0, done0),
            draws,
            lambda raw, draw, done: choose(raw, noise_of(draw), done),
            num_prompts=n,
            decode_plan=decode_plan,
            record=record,
            observe=observe,
            prompt_lengths=prompt_lengths,
        )
        tokens = jnp.concatenate([tokens, toks.T], axis=1)  # [B, T]
        logp = jnp.concatenate([logp, lps.T], axis=1)
        observed = jax.tree.map(
            lambda a, r: jnp.concatenate([a, jnp.swapaxes(r, 0, 1)], axis=1), observed, rest
        )
    bad = sampling_checks.bad_values(
        config, prompts, temperature, top_p, group_size
    )  # traced values
    logp = jnp.where(bad[:, None], jnp.nan, logp)
    rec = {"prompt": prompt_tape.records, "completion": completion} if record else None
    logits, stats = observed
    return SampleOutput(
        tokens=tokens,
        logp=logp,
        mask=completion_mask(tokens, eos_id),
        logits=logits,
        record=rec,
        stats=stats,
    )


def _step_noise(key, steps: int, shape: tuple[int, ...]):
    """(draws [T, ...], noise_of(draw) -> the step's Gumbel noise of `shape`). Step t draws
    with key t, as `jax.random.categorical(keys[t], z)` would. While small
    (`NOISE_BEFORE_LOOP_BYTES`), every step's noise is drawn before the loop (one vectorised
    draw; the loop body keeps no RNG of its own), else each step draws its own: the same
    noise either way."""
    draws = jax.random.split(key, steps)
    before = steps * int(np.prod(shape)) * 4 <= NOISE_BEFORE_LOOP_BYTES
    if before:
        draws = gumbel_draws(draws, shape)  # [T, B, V]
    return draws, lambda draw: draw if before else jax.random.gumbel(draw, shape, jnp.float32)


def _choose(raw, noise, done, *, temperature, top_k, top_p, banned_tokens, eos_id):
    """raw [B, V], noise [B, V] (the step's Gumbel draws) -> (token [B] int32, logp [B] f32,
    done [B] bool) for one step."""
    greedy = temperature <= 0
    z = sampling_logits(raw, temperature, top_k, top_p, banned_tokens)
    logpi = jax.nn.log_softmax(z, axis=-1)
    # = jax.random.categorical(step_key, z): argmax of Gumbel noise + logits (greedy: of the
    # logits alone). One argmax, never of `z` alone: at step 0 `z` is a broadcast of the N
    # prompt rows to B, and XLA:CPU's LLVM backend takes many minutes to compile an argmax of
    # such a broadcast when V is not a power of two (benchmarks/README.md, compile time).
    tok = jnp.argmax(z + jnp.where(greedy, 0.0, noise), axis=-1).astype(jnp.int32)
    lp = jnp.take_along_axis(logpi, tok[:, None], axis=-1)[:, 0]
    lp = jnp.where(greedy, 0.0, lp)
    if eos_id is not None:
        tok = jnp.where(done, eos_id, tok)
        lp = jnp.where(done, 0.0, lp)
        done = done | (tok == eos_id)
    return tok, lp, done


def _decode(
    model,
    config,
    prefix,
    first,
    draws,
    choose,
    *,
    num_prompts,
    decode_plan,
    record,
    observe,
    prompt_lengths,
):
    """Decode steps 1..T-1 after the first token: `first` = (token [B], done [B]), `draws`
    [T, ...] the steps' draws, `choose(raw, draw, done)` one step's choice, `observe(raw)`
    what a step keeps of its raw logits. Returns (tokens [T-1, B], logp [T-1, B], what
    `observe` kept, each leaf [T-1, B, ...], completion records)."""
    tok0, done0 = first
    b, steps = tok0.shape[0], draws.shape[0] - 1
    # The decode runs as `streams` independent chains of B / streams rows (whole groups
    # each; the runtime can overlap one chain's small ops with the other's). Sampling
    # draws once for all rows, so the tokens are the same.
    streams = decode_plan.num_streams(num_prompts)
    rows, groups = b // streams, num_prompts // streams
    chain = lambda x, i: None if x is None else x[i * groups : (i + 1) * groups]
    prefixes = [jax.tree.map(functools.partial(chain, i=i), prefix) for i in range(streams)]
    lengths = [chain(prompt_lengths, i) for i in range(streams)]
    # The self cache grows by segments: steps a..z-1 attend over z slots, not all T-1
    # (masked slots cost as much as used ones).
    segments = decode_plan.segment_bounds(steps)
    cache = tuple(model_lib.init_cache(config, rows, segments[0][1]) for _ in range(streams))
    names, widths, buffers = [], [], ()
    if record:
        step_records = lambda: _step_records(model, tok0[:rows], prefixes[0], cache[0], lengths[0])
        names, widths, buffers = _record_buffers(jax.eval_shape(step_records), steps, streams)

    def step(carry, xs):
        caches, tok, done, records = carry
        index, step_draw = xs
        raws, new_caches, new_records = [], [], []
        for i in range(streams):
            tape = model_lib.Tape() if record else None
            raw, c = model.extend(
                tok[i * rows : (i + 1) * rows, None],
                prefixes[i],
                caches[i],
                index,
                tape,
                lengths[i],
            )
            raws.append(raw[:, 0])
            new_caches.append(c)
            if record:  # all sites side by side, written in place at the step's slot
                update = jnp.concatenate([tape.records[k] for k in names], axis=1)
                new_records.append(
                    jax.lax.dynamic_update_slice(records[i], update[:, None], (0, index, 0))
                )
        raw = jnp.concatenate(raws, axis=0) if streams > 1 else raws[0]
        tok, lp, done = choose(raw, step_draw, done)
        carry = (tuple(new_caches), tok, done, tuple(new_records))
        return carry, (tok, lp, observe(raw))

    carry = (cache, tok0, done0, buffers)
    ys = []
    for start, stop in segments:
        caches = tuple(_grow_cache(c, stop) for c in carry[0])
        xs = (jnp.arange(start, stop, dtype=jnp.int32), draws[1 + start : 1 + stop])
        carry, y = jax.lax.scan(step, (caches, *carry[1:]), xs)
        ys.append(y)
    toks, lps, kept = jax.tree.map(lambda *y: jnp.concatenate(y, axis=0), *ys)  # [T-1, B, ..]
    completion = _split_records(carry[3], names, widths) if record else {}
    return toks, lps, kept, completion


def _record_buffers(shapes: dict, steps: int, streams: int):
    """ONE record buffer per chain, [rows, T-1, sum of widths], every site side by side, so
    that a decode step writes one slab per chain (fewer in-place updates; a buffer per chain
    lets the chains' writes run side by side); split per site afterwards (`_split_records`).
    `shapes`: one step's records. Returns (site names, their widths, the buffers)."""
    names = sorted(shapes)
    widths = [shapes[k].shape[-1] for k in names]
    rows, dtype = shapes[names[0]].shape[0], shapes[names[0]].dtype
    buffers = tuple(jnp.zeros((rows, steps, sum(widths)), dtype) for _ in range(streams))
    return names, widths, buffers


def _split_records(buffers, names, widths) -> dict:
    """Each chain's record buffer [rows, T-1, sum(widths)] split into its sites, chains one
    after the other: {name: [B (T-1), width]}, the row order of a teacher-forced pass over
    tokens[:, :T-1] (`model.completion_logits`). One copy per site: concatenating the chains'
    buffers first would be a second copy of them all."""
    columns = [
        jnp.split(
            chain.reshape(-1, chain.shape[-1]), list(itertools.accumulate(widths))[:-1], axis=1
        )
        for chain in buffers
    ]
    return {k: jnp.concatenate([c[j] for c in columns], axis=0) for j, k in enumerate(names)}


# The sampler draws every step's Gumbel noise before its decode loop while it takes at most
# this many bytes (W1: 1.1 MB), else inside the loop (a large vocabulary and long completions).
NOISE_BEFORE_LOOP_BYTES = 64 << 20


def gumbel_draws(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``[len(keys), *shape]`` float32: row t is the Gumbel noise that
    ``jax.random.categorical(keys[t], z)`` adds to float32 logits ``z`` of ``shape`` before
    its argmax (``jax.random.gumbel(keys[t], shape)``), all rows in one vectorised draw."""
    return jax.vmap(lambda k: jax.random.gumbel(k, shape, jnp.float32))(keys)


def _grow_cache(cache, length: int):
    """Each layer's ``{"k", "v"}: [B, Hkv, S, Dh]`` zero-padded to ``length`` slots."""
    return tuple(
        {k: jnp.pad(v, ((0, 0), (0, 0), (0, length - v.shape[2]), (0, 0))) for k, v in kv.items()}
        for kv in cache
    )


def _step_records(model, tok, prefix, cache, prefix_lengths) -> dict:
    """The `model.Tape` records of one decode step (for their shapes)."""
    tape = model_lib.Tape()
    model.extend(tok[:, None], prefix, cache, 0, tape, prefix_lengths)
    return tape.records


def completion_mask(tokens: jax.Array, eos_id: int | None) -> jax.Array:
    """``[B, T]`` float32: 1 up to and including the first ``eos_id`` in each row, 0 after
    (all ones if ``eos_id`` is None)."""
    if eos_id is None:
        return jnp.ones(tokens.shape, jnp.float32)
    is_eos = (tokens == eos_id).astype(jnp.int32)
    eos_before = jnp.cumsum(is_eos, axis=-1) - is_eos  # number of EOS strictly before t
    return (eos_before == 0).astype(jnp.float32)


def pad_prompts(token_lists, pad_id: int = 0, length: int | None = None):
    """``(prompts [N, P] int32, lengths [N] int32)``: token lists right-padded with ``pad_id``
    to ``length`` (default: the longest), for `sample(..., prompt_lengths=lengths)`."""
    pmax = max(len(t) for t in token_lists) if length is None else length
    if any(len(t) > pmax or not t for t in token_lists):
        raise ValueError(
            f"every prompt needs 1..{pmax} tokens; got lengths " f"{[len(t) for t in token_lists]}."
        )
    out = np.full((len(token_lists), pmax), pad_id, np.int32)
    for i, t in enumerate(token_lists):
        out[i, : len(t)] = t
    return jnp.asarray(out), jnp.asarray([len(t) for t in token_lists], jnp.int32)
