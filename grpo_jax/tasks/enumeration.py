"""Exact quantities of a model over a task's enumerable completion space.

For the small tasks of `grpo_jax.tasks`, sequence-level quantities are computed exactly by
running the model over every completion: `completion_logprobs` (teacher-forced
log pi(y | x)), `enumerated_logprobs` (every ordinary-token completion of every prompt),
`enumerated_mode_shares`, and `pattern_mass` for modes that are product sets of tokens.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import jax
import jax.numpy as jnp

from grpo_jax.core import checks
from grpo_jax.core.stats import ban_tokens, mode_shares
from grpo_jax.models import model as model_lib

Array = jax.Array


def completion_logprobs(
    model_config, params, prompts: Array, completions: Array, banned: Sequence[int] = ()
) -> Array:
    """log pi(completion | prompt) = sum_t log pi(y_t | x, y_<t): prompts [B, P],
    completions [B, T] -> float32 [B]. `banned` ids are renormalised away first (as a sampler
    with `banned_tokens` does)."""
    logits = ban_tokens(
        model_lib.completion_logits(model_config, params, prompts, completions), tuple(banned)
    )
    return jnp.sum(model_lib.token_logprobs(logits, completions), axis=-1)


def enumerated_logprobs(
    model_config, params, task, prompts: Array | None = None, banned: Sequence[int] | None = None
) -> Array:
    """log pi(y | x) for every ordinary-token completion y of every prompt x.

    prompts [N, P] (default `task.all_prompts()`) -> float32 [N, C], C = task.num_completions(),
    columns in `task.enumerate_completions()` order. `banned` defaults to task.special_ids (the
    distribution a sampler that never emits specials draws from); each row then sums to 1.
    Cost: N * C forward passes of length P + T (use only where that is small).
    """
    prompts = task.all_prompts() if prompts is None else prompts
    banned = task.special_ids if banned is None else banned
    comps = task.enumerate_completions()  # [C, T]
    n, c = prompts.shape[0], comps.shape[0]
    flat_p = jnp.repeat(prompts, c, axis=0)
    flat_c = jnp.tile(comps, (n, 1))
    return completion_logprobs(model_config, params, flat_p, flat_c, banned).reshape(n, c)


def enumerated_mode_shares(task, logp: Array, prompt_probs: Array | None = None) -> Array:
    """Exact mode shares of a policy from `enumerated_logprobs` output logp [N, C] (prompts =
    `task.all_prompts()`; prompt_probs default `task.prompt_probs()`) -> float32 [num_modes]."""
    prompts = task.all_prompts()
    comps = task.enumerate_completions()
    checks.assert_shape("logp", logp, (prompts.shape[0], comps.shape[0]))
    n, c = logp.shape
    w = task.prompt_probs() if prompt_probs is None else prompt_probs
    labels = task.mode_labels(jnp.repeat(prompts, c, axis=0), jnp.tile(comps, (n, 1)))
    probs = jnp.exp(logp) * w[:, None]
    return mode_shares(labels, task.num_modes, probs.reshape(-1))


def pattern_mass(
    model_config,
    params,
    prompts: Array,
    pattern: Sequence[Sequence[int]],
    banned: Sequence[int] = (),
) -> Array:
    """Exact probability that a completion falls in the product set S_1 x ... x S_T.

    pattern: T tuples of allowed token ids (S_t); prompts [N, P] -> float32 [N],
      P(y in S | x) = sum_{y_<T in S_1 x .. x S_{T-1}} prod_{t<T} q(y_t | x, y_<t)
                      * q(S_T | x, y_<T),
    enumerating only the first T-1 positions (prod_{t<T} |S_t| sequences per prompt) and
    summing the last position's allowed probabilities. `banned` ids are renormalised away.
    """
    t_len = len(pattern)
    rows = list(itertools.product(*[tuple(s) for s in pattern[:-1]], (pattern[-1][0],)))
    comps = jnp.asarray(rows, jnp.int32).reshape(len(rows), t_len)  # [M, T]
    n, m = prompts.shape[0], comps.shape[0]
    flat_p = jnp.repeat(prompts, m, axis=0)
    flat_c = jnp.tile(comps, (n, 1))
    logits = ban_tokens(
        model_lib.completion_logits(model_config, params, flat_p, flat_c), tuple(banned)
    )
    logq = jax.nn.log_softmax(logits, axis=-1)  # [N M, T, V]
    prefix = jnp.sum(model_lib.token_logprobs(logits[:, :-1], flat_c[:, :-1]), axis=-1)
    last = jax.nn.logsumexp(logq[:, -1, jnp.asarray(tuple(pattern[-1]), jnp.int32)], axis=-1)
    return jnp.sum(jnp.exp(prefix + last).reshape(n, m), axis=-1)
