"""Exact metrics: KL both ways, entropy, mode shares and coverage, pass@k, distinct answers,
and the loss's clip diagnostics.

Pure functions of arrays (float32 math), safe under jit / vmap. What runs a model over an
enumerable completion space is `grpo_jax.tasks.enumeration`.

Notation: pi = the policy, pi_ref = the reference; KL_rev = KL[pi || pi_ref],
KL_fwd = KL[pi_ref || pi] (docs/design.md, 'The math'). Exact per-position KL is
`grpo_jax.kl.exact` (re-exported here as `token_kl`); the masked mean is
`grpo_jax.checks.masked_mean` (re-exported here as `masked_mean`).
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp

from grpo_jax.core import checks, kl as kl_lib
from grpo_jax.core.checks import masked_mean  # noqa: F401  (re-exported)

Array = jax.Array
_NEG = -1e9  # logit of a banned token: softmax gives exactly 0 and 0 * (-1e9) = 0, not NaN


# ------------------------------------------------------------------------------------------
# Per-token quantities from logits
# ------------------------------------------------------------------------------------------


def ban_tokens(logits: Array, banned: Sequence[int]) -> Array:
    """Logits [..., V] -> [..., V] float32 with `banned` ids at -1e9 (probability exactly 0), so
    softmax is the renormalised distribution a sampler with `banned_tokens` draws from."""
    z = jnp.asarray(logits, jnp.float32)
    if not banned:
        return z
    mask = jnp.zeros((z.shape[-1],), bool).at[jnp.asarray(tuple(banned), jnp.int32)].set(True)
    return jnp.where(mask, _NEG, z)


#: Exact KL per position over the vocabulary, logits [..., V] -> [...] float32: the one
#: implementation, `grpo_jax.kl.exact(logits, ref_logits, direction)`.
token_kl = kl_lib.exact


def entropy(logits: Array) -> Array:
    """Entropy (nats) per position: logits [..., V] -> [...] float32, -sum_v p_v log p_v."""
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def next_token_stats(logits: Array, top: int = 8) -> dict[str, Array]:
    """How spread one position's distribution is: logits [..., V] -> per position the
    entropy (nats), the top-1 mass ``top1``, ``ratio21`` = p2 / p1, ``within10x`` = the
    number of tokens with p >= 0.1 p1, and the ``top`` most likely ids and masses
    (``top_ids``, ``top_p`` [..., min(top, V)])."""
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    p = jnp.exp(logp)
    top_p, top_ids = jax.lax.top_k(p, min(top, p.shape[-1]))
    return {
        "entropy": -jnp.sum(p * logp, axis=-1),
        "top1": top_p[..., 0],
        "ratio21": top_p[..., 1] / top_p[..., 0],
        "within10x": jnp.sum(p >= 0.1 * top_p[..., :1], axis=-1).astype(jnp.int32),
        "top_ids": top_ids.astype(jnp.int32),
        "top_p": top_p,
    }


# ------------------------------------------------------------------------------------------
# Sequence-level quantities over an enumerated completion space
# ------------------------------------------------------------------------------------------


def sequence_kl(logp: Array, ref_logp: Array, direction: str) -> Array:
    """Exact sequence-level KL from log-probabilities of every completion.

    logp, ref_logp: [..., C] log pi(y | x), log pi_ref(y | x) for all C completions y of each
    prompt (each row a distribution, e.g. from `enumerated_logprobs`) -> [...] float32:
      reverse: sum_y pi(y) (log pi(y) - log pi_ref(y)); forward: the same with pi <-> pi_ref.
    Terms with zero weight (log-prob <= -1e9 or -inf) contribute 0.
    """
    kl_lib.validate_direction(direction)
    checks.assert_same_shape(logp=logp, ref_logp=ref_logp)
    a = jnp.asarray(logp, jnp.float32)
    b = jnp.asarray(ref_logp, jnp.float32)
    if direction == "forward":
        a, b = b, a
    w = jnp.exp(a)
    safe = w > 0
    return jnp.sum(jnp.where(safe, w * (a - jnp.where(safe, b, 0.0)), 0.0), axis=-1)


def data_kl(data_probs: Array, model_logp: Array, prompt_probs: Array | None = None) -> Array:
    """KL[data || model] over completions listed with their data probabilities.

    data_probs [N, A] (rows sum to 1; zero entries are padding), model_logp [N, A] the model's
    log-probabilities of the same completions, prompt_probs [N] (default uniform) ->
    float32 scalar  sum_n w_n sum_a p_na (log p_na - log q_na).
    Exact when the data support is listed in full (the tasks' `reference_answers()`).
    """
    checks.assert_same_shape(data_probs=data_probs, model_logp=model_logp)
    p = jnp.asarray(data_probs, jnp.float32)
    q = jnp.asarray(model_logp, jnp.float32)
    pos = p > 0
    per_prompt = jnp.sum(
        jnp.where(pos, p * (jnp.log(jnp.where(pos, p, 1.0)) - jnp.where(pos, q, 0.0)), 0.0), -1
    )
    if prompt_probs is None:
        return jnp.mean(per_prompt)
    checks.assert_shape("prompt_probs", prompt_probs, per_prompt.shape)
    return jnp.sum(jnp.asarray(prompt_probs, jnp.float32) * per_prompt)


# ------------------------------------------------------------------------------------------
# Modes
# ------------------------------------------------------------------------------------------


def mode_shares(labels: Array, num_modes: int, weights: Array | None = None) -> Array:
    """Share of each mode: labels int [...] in [0, num_modes) or -1, optional weights [...]
    (probabilities, or a mask; default uniform 1/count) -> float32 [num_modes].

    With weights = exact probabilities of enumerated completions (times prompt probabilities)
    this is the exact mode mass; with labels of samples it is the empirical share. Shares sum
    to 1 minus the share of unlabelled (-1) items.
    """
    labels = jnp.asarray(labels).reshape(-1)
    if weights is None:
        w = jnp.full(labels.shape, 1.0 / max(labels.shape[0], 1), jnp.float32)
    else:
        chex.assert_size(
            weights,
            labels.shape[0],
            exception_type=ValueError,
            custom_message=f"weights and labels {labels.shape} differ in size",
        )
        w = jnp.asarray(weights, jnp.float32).reshape(-1)
    onehot = labels[:, None] == jnp.arange(num_modes)[None, :]  # [N, K]
    return jnp.sum(jnp.where(onehot, w[:, None], 0.0), axis=0)


def mode_coverage(
    policy_shares: Array, ref_shares: Array, tau: float = 0.05, eps: float = 0.1
) -> tuple[Array, Array]:
    """Which reference modes the policy keeps.

    A mode is *eligible* if ref_share >= tau and *covered* if in addition
    policy_share >= eps * ref_share. policy_shares, ref_shares [..., K] ->
    (coverage [...] float32 = #covered / #eligible (1 if none eligible), covered [..., K] bool).
    """
    checks.assert_same_shape(policy_shares=policy_shares, ref_shares=ref_shares)
    pol = jnp.asarray(policy_shares, jnp.float32)
    ref = jnp.asarray(ref_shares, jnp.float32)
    eligible = ref >= tau
    covered = eligible & (pol >= eps * ref)
    n_el = jnp.sum(eligible, axis=-1)
    frac = jnp.where(n_el > 0, jnp.sum(covered, axis=-1) / jnp.maximum(n_el, 1), 1.0)
    return frac.astype(jnp.float32), covered


# ------------------------------------------------------------------------------------------
# pass@k and distinct answers
# ------------------------------------------------------------------------------------------


def pass_at_k_exact(p_success: Array, k: int | Array) -> Array:
    """Exact pass@k from per-prompt success probabilities: 1 - (1 - p)^k, elementwise
    (p [...] -> [...] float32). Average over prompts for the usual metric."""
    p = jnp.clip(jnp.asarray(p_success, jnp.float32), 0.0, 1.0)
    k = jnp.asarray(k, jnp.float32)
    return -jnp.expm1(k * jnp.log1p(-p))


def pass_at_k_unbiased(n: Array, c: Array, k: int | Array) -> Array:
    """Unbiased pass@k estimator from n samples with c correct (Chen et al. 2021, Codex):
    1 - C(n - c, k) / C(n, k)  (= 1 when n - c < k), elementwise over [...] -> float32.
    Computed as 1 - exp(lgamma(n-c+1) + lgamma(n-k+1) - lgamma(n-c-k+1) - lgamma(n+1)).
    Requires k <= n."""
    n = jnp.asarray(n, jnp.float32)
    c = jnp.asarray(c, jnp.float32)
    k = jnp.asarray(k, jnp.float32)
    lg = jax.lax.lgamma
    fail = n - c
    ok = fail >= k
    safe = jnp.where(ok, fail, k)
    log_ratio = lg(safe + 1.0) + lg(n - k + 1.0) - lg(safe - k + 1.0) - lg(n + 1.0)
    return jnp.where(ok, -jnp.expm1(log_ratio), 1.0)


def distinct_correct(completions: Array, correct: Array) -> Array:
    """Number of distinct correct completions among k samples per prompt.

    completions int [N, k, T], correct bool [N, k] -> int32 [N]. A sample counts if it is
    correct and no earlier correct sample of the same prompt is identical.
    """
    checks.assert_rank("completions", completions, 3, "[N, k, T]")
    checks.assert_shape("correct", correct, completions.shape[:2], "[N, k]")
    k = completions.shape[1]
    same = jnp.all(completions[:, :, None, :] == completions[:, None, :, :], axis=-1)  # [N,k,k]
    earlier = jnp.arange(k)[None, :] < jnp.arange(k)[:, None]  # [i, j]: j < i
    dup = jnp.any(same & earlier[None] & correct[:, None, :], axis=-1)  # [N, k]
    return jnp.sum(correct & ~dup, axis=-1).astype(jnp.int32)


# ------------------------------------------------------------------------------------------
# Loss diagnostics
# ------------------------------------------------------------------------------------------


def ratio_diagnostics(rho, advantages, mask, eps_low, eps_high, dual_clip=None):
    """Clip fractions and the range of the (detached) ratio over the masked tokens.

    ``clip_frac_low``: fraction of tokens with ``A < 0`` and ``rho < 1 - eps_low``;
    ``clip_frac_high``: ``A > 0`` and ``rho > 1 + eps_high``; ``dual_clip_frac``: ``A < 0``
    and ``rho > dual_clip``; ``ratio_min``, ``ratio_mean``, ``ratio_max``.

    Args:
      rho, advantages, mask: ``[B, T]`` (mask float; rho finite everywhere).
      eps_low, eps_high, dual_clip: as ``losses.clipped_surrogate``.
    """
    valid = mask > 0
    negative = advantages < 0
    if dual_clip is None:
        dual_active = jnp.zeros_like(valid)
    else:
        dual_active = negative & (rho > dual_clip)
    frac = lambda x: masked_mean(x.astype(jnp.float32), mask)
    return dict(
        clip_frac_low=frac(negative & (rho < 1.0 - eps_low)),
        clip_frac_high=frac((advantages > 0) & (rho > 1.0 + eps_high)),
        dual_clip_frac=frac(dual_active),
        ratio_min=jnp.min(jnp.where(valid, rho, jnp.inf)),
        ratio_mean=masked_mean(rho, mask),
        ratio_max=jnp.max(jnp.where(valid, rho, -jnp.inf)),
    )
