"""KL terms as frameworks write them, audited by exact enumeration (`core.audit`'s
machinery): estimator, clamps, weights and whether they carry gradient, placement (loss,
reward, reward-to-go), token or sequence ratios, on policy or from an older policy.

    res = formula_token_audit(logits, ref_logits, old_logits, formulas={"name": KLFormula(...)})
    res = formula_sequence_audit(tables, ref_tables, old_tables, formulas)
    verdict(g, grad_rev, grad_fwd)     # "reverse" | "forward" | "zero" | "mixed" | "biased"

The peer audit (`grpo_jax.study.report.peer_audit`) writes one `KLFormula` per framework
configuration.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from grpo_jax.core import advantages as adv_lib, kl
from grpo_jax.core.audit import (
    _SequenceLogp,
    _stats,
    compare,
    enumerate_sequences,
    sequence_exact_kl,
    sequence_logprobs,
)
from grpo_jax.core.checks import check_name

Array = jax.Array
sg = jax.lax.stop_gradient


# --------------------------------------------------------------------------------------
# KL terms as frameworks write them: estimator, clamps, weights, placement, ratio.
# --------------------------------------------------------------------------------------

#: Placements of a ``KLFormula``: added to the loss, summed into the sequence reward, or
#: per-token rewards turned into returns-to-go (discount 1).
FORMULA_PLACEMENTS: tuple[str, ...] = ("loss", "reward", "reward_to_go")
#: Importance weights on a KL term in the loss (carrying gradient): none, per token
#: ``exp(logp_t - sg(old_logp_t))``, per sequence ``exp(mean_t (logp_t - sg(old_logp_t)))``
#: broadcast onto every token, or ``token_self``: ``exp(logp_t - sg(logp_t))`` whatever
#: the sampler (value 1, gradient the score: the on-policy form applied to any samples).
KL_WEIGHTS: tuple[str, ...] = ("none", "token", "sequence", "token_self")
#: Policy-gradient ratios of the reward placements: per token ``exp(logp_t - logq_t)``, or
#: the whole sequence's ``exp(sum_t (logp_t - logq_t))`` on the sequence's loss.
PG_RATIOS: tuple[str, ...] = ("token", "sequence")
#: Sampling regimes of the formula audit: on policy, or samples from pi_old with the
#: formula exactly as written (its own weights and ratios are its only correction).
FORMULA_SAMPLINGS: tuple[str, ...] = ("on", "off")
#: Verdict words (``verdict``).
VERDICTS: tuple[str, ...] = ("reverse", "forward", "zero", "mixed", "biased")


@dataclasses.dataclass(frozen=True)
class KLFormula:
    """A KL term as an implementation writes it (hashable: a static argument of ``jit``).

    Attributes:
      estimator: a name of ``kl.ESTIMATORS`` (its value and gradient, ``kl.estimate``).
      placement: one of ``FORMULA_PLACEMENTS``.
      clamp_log_ratio, clamp_value: passed to ``kl.estimate`` (None = off).
      weight: loss placement: one of ``KL_WEIGHTS`` (the weight carries gradient).
      ratio: reward placements: one of ``PG_RATIOS``.
      clamp_value_after_weight: the value clamp applies to the weighted value ``w * v``
        (zero gradient past it), and the weight is detached where the log-ratio clamp
        bites; default False: the clamp applies to ``v`` before the weight.

    In the reward placements the value is the sampler's (``logq``: pi on policy, pi_old
    off policy), detached, as implementations compute it at rollout time; the advantage is
    the KL part alone (no baseline, no normalisation: a baseline changes only the variance)
    and the PPO clip is left out (the audit is the gradient at the sampling point).
    """

    estimator: str
    placement: str = "loss"
    clamp_log_ratio: float | None = None
    clamp_value: float | None = None
    weight: str = "none"
    ratio: str = "token"
    clamp_value_after_weight: bool = False

    def __post_init__(self):
        kl.validate_estimator(self.estimator)
        check_name("placement", self.placement, FORMULA_PLACEMENTS)
        check_name("KL weight", self.weight, KL_WEIGHTS)
        check_name("ratio", self.ratio, PG_RATIOS)
        if self.weight != "none" and self.placement != "loss":
            raise ValueError(f"weight={self.weight!r} applies to placement 'loss' only")
        if self.ratio == "sequence" and self.placement == "reward_to_go":
            raise ValueError("a sequence ratio has no per-token returns (reward_to_go)")
        if self.clamp_value_after_weight and (self.clamp_value is None or self.placement != "loss"):
            raise ValueError("clamp_value_after_weight needs clamp_value and placement 'loss'")


def formula_surrogates(
    logp: Array, ref_logp: Array, old_logp: Array | None, formula: KLFormula, sampling: str
) -> tuple[Array, Array, Array]:
    """Per-sequence surrogates of a ``KLFormula``, sampler probabilities and values ``[N]``.

    With ``logq = sg(logp)`` on policy and ``sg(old_logp)`` off policy,
    ``v_t = kl.estimate(., ref_logp, estimator, clamps)``:

    * loss: ``sum_t w_t v_t(logp)`` with ``w`` of ``formula.weight`` (1, ``exp(logp_t -
      logq_t)``, ``exp(mean_t (logp_t - logq_t))`` or ``exp(logp_t - sg(logp_t))``; value 1
      on policy, gradient not 0), clipped after the weight with ``clamp_value_after_weight``;
    * reward: ``sum_t rho_t * sum_u sg(v_u(logq))`` (token ratio) or
      ``exp(sum_t (logp_t - logq_t)) * sum_u sg(v_u(logq))`` (sequence ratio);
    * reward_to_go: ``sum_t rho_t * sum_{u >= t} sg(v_u(logq))``.

    Args:
      logp: ``[N, T]`` per-token log-probs under pi_theta (differentiable).
      ref_logp: ``[N, T]`` under pi_ref; old_logp: ``[N, T]`` under pi_old ("off" only).
      formula: the ``KLFormula``; sampling: one of ``FORMULA_SAMPLINGS``.

    Returns:
      ``(L [N], q [N], values [N])``; values are ``sum_t`` of the (weighted) KL values.
    """
    check_name("sampling", sampling, FORMULA_SAMPLINGS)
    if sampling == "off" and old_logp is None:
        raise ValueError("sampling='off' needs old_logp.")
    logq = sg(logp) if sampling == "on" else sg(old_logp)
    clamps = dict(clamp_log_ratio=formula.clamp_log_ratio, clamp_value=formula.clamp_value)
    if formula.placement == "loss":
        after = formula.clamp_value_after_weight
        if after:
            clamps = dict(clamp_log_ratio=formula.clamp_log_ratio)
        v = kl.estimate(logp, ref_logp, formula.estimator, **clamps)
        w = {
            "none": lambda: jnp.ones_like(logp),
            "token": lambda: jnp.exp(logp - logq),
            "sequence": lambda: jnp.exp(jnp.mean(logp - logq, axis=-1, keepdims=True)),
            "token_self": lambda: jnp.exp(logp - sg(logp)),
        }[formula.weight]()
        if after and formula.clamp_log_ratio is not None:
            w = jnp.where(jnp.abs(logp - ref_logp) <= formula.clamp_log_ratio, w, sg(w))
        v = w * v
        if after:
            v = jnp.clip(v, -formula.clamp_value, formula.clamp_value)
        per_seq = jnp.sum(v, axis=-1)
        values = jnp.sum(v, axis=-1)
    else:
        v = sg(kl.estimate(logq, ref_logp, formula.estimator, **clamps))
        values = jnp.sum(v, axis=-1)
        if formula.ratio == "sequence":
            per_seq = jnp.exp(jnp.sum(logp - logq, axis=-1)) * values
        elif formula.placement == "reward":
            per_seq = jnp.sum(jnp.exp(logp - logq), axis=-1) * values
        else:
            per_seq = jnp.sum(jnp.exp(logp - logq) * adv_lib.returns_to_go(v), axis=-1)
    q = jnp.exp(jnp.sum(logq, axis=-1))
    return per_seq, q, sg(values)


def _formula_surrogates(lp, ref_logp, old_logp, combo):
    formula, sampling = combo
    return formula_surrogates(lp, ref_logp, old_logp, formula, sampling)


def _token_logp_column(logits):
    """``[V]`` logits -> ``[V, 1]`` log-probs: one token is a sequence of length 1."""
    return jax.nn.log_softmax(logits)[:, None]


@functools.lru_cache(maxsize=None)
def _sequence_logp_fn(vocab_size: int, length: int, dtype: str) -> _SequenceLogp:
    """One ``_SequenceLogp`` per shape, so the compiled audit is reused across calls."""
    zeros = [jnp.zeros((vocab_size**t, vocab_size), dtype) for t in range(length)]
    _, unravel = ravel_pytree(zeros)
    return _SequenceLogp(unravel, enumerate_sequences(vocab_size, length))


def verdict(g, grad_rev, grad_fwd, tol: float = 1e-6) -> str:
    """Which gradient ``g`` is, as one word of ``VERDICTS``.

    ``zero``: ``||g|| <= tol ||grad_rev||``; ``reverse`` / ``forward``: relative error to
    that gradient ``<= tol``; ``mixed``: ``g`` is a combination ``a grad_rev + b grad_fwd``
    (least-squares residual ``<= tol ||g||``) but neither alone; ``biased``: otherwise.
    """
    g, rev, fwd = (np.asarray(x, np.float64) for x in (g, grad_rev, grad_fwd))
    if np.linalg.norm(g) <= tol * np.linalg.norm(rev):
        return "zero"
    if compare(g, rev)[0] <= tol:
        return "reverse"
    if compare(g, fwd)[0] <= tol:
        return "forward"
    basis = np.stack([rev, fwd], axis=1)
    coef, *_ = np.linalg.lstsq(basis, g, rcond=None)
    if np.linalg.norm(basis @ coef - g) <= tol * np.linalg.norm(g):
        return "mixed"
    return "biased"


def _formula_result(exact_kl_fn, params, names, combos, stats, level, tol):
    grads = {d: jax.grad(exact_kl_fn)(params, d) for d in kl.DIRECTIONS}
    rev, fwd = np.asarray(grads["reverse"]), np.asarray(grads["forward"])
    rows = []
    for (name, (_, sampling)), st in zip(zip(names, combos), stats):
        g = np.asarray(st["grad_mean"])
        rel_rev, cos_rev = compare(g, rev)
        rel_fwd, cos_fwd = compare(g, fwd)
        rows.append(
            dict(
                level=level,
                name=name,
                sampling=sampling,
                value_mean=float(st["value_mean"]),
                grad_mean=g,
                grad_var=float(st["grad_var"]),
                rel_err_rev=rel_rev,
                cos_rev=cos_rev,
                rel_err_fwd=rel_fwd,
                cos_fwd=cos_fwd,
                norm_rev=float(np.linalg.norm(g) / np.linalg.norm(rev)),
                verdict=verdict(g, rev, fwd, tol),
            )
        )
    return dict(grad_reverse=rev, grad_forward=fwd, rows=rows)


def _formula_combos(formulas, samplings, has_old):
    if not isinstance(formulas, dict):
        raise ValueError("formulas must be a dict name -> KLFormula")
    for s in samplings:
        check_name("sampling", s, FORMULA_SAMPLINGS)
        if s == "off" and not has_old:
            raise ValueError("sampling='off' needs the old policy")
    items = [(n, f) for n, f in formulas.items() for _ in samplings]
    combos = tuple((f, s) for f in formulas.values() for s in samplings)
    return [n for n, _ in items], combos


def formula_token_audit(
    logits: Array,
    ref_logits: Array,
    old_logits: Array | None,
    formulas: dict[str, KLFormula],
    samplings: Sequence[str] = FORMULA_SAMPLINGS,
    tol: float = 1e-6,
) -> dict[str, Any]:
    """Exact expected gradient of each ``KLFormula`` on one decision (logits ``[V]``).

    Returns:
      dict ``grad_reverse, grad_forward [V]`` and ``rows``: one per (formula, sampling) with
      ``level, name, sampling, value_mean, grad_mean, grad_var, rel_err_rev, cos_rev,
      rel_err_fwd, cos_fwd, norm_rev (||g|| / ||grad KL_rev||), verdict``.
    """
    names, combos = _formula_combos(formulas, samplings, old_logits is not None)
    ref_logp = jax.nn.log_softmax(ref_logits)[:, None]
    old_logp = None if old_logits is None else jax.nn.log_softmax(old_logits)[:, None]
    stats = _stats(_token_logp_column, logits, ref_logp, old_logp, combos, _formula_surrogates)
    exact_kl = lambda x, d: kl.exact(x, ref_logits, d)
    return _formula_result(exact_kl, logits, names, combos, stats, "token", tol)


def formula_sequence_audit(
    tables: Sequence[Array],
    ref_tables: Sequence[Array],
    old_tables: Sequence[Array] | None,
    formulas: dict[str, KLFormula],
    samplings: Sequence[str] = FORMULA_SAMPLINGS,
    tol: float = 1e-6,
) -> dict[str, Any]:
    """``formula_token_audit`` on a tabular autoregressive policy (``sequence_audit``'s
    tables), all ``V**T`` sequences enumerated; targets: the sequence KLs' gradients."""
    tables = list(tables)
    names, combos = _formula_combos(formulas, samplings, old_tables is not None)
    vocab_size, length = tables[0].shape[-1], len(tables)
    logp_fn = _sequence_logp_fn(vocab_size, length, str(jnp.result_type(tables[0])))
    flat, unravel = ravel_pytree(tables)
    ref_logp = sequence_logprobs(list(ref_tables), logp_fn.sequences)
    old_logp = (
        None if old_tables is None else sequence_logprobs(list(old_tables), logp_fn.sequences)
    )
    stats = _stats(logp_fn, flat, ref_logp, old_logp, combos, _formula_surrogates)
    exact_kl = lambda x, d: sequence_exact_kl(unravel(x), list(ref_tables), d, logp_fn.sequences)
    return _formula_result(exact_kl, flat, names, combos, stats, "sequence", tol)
