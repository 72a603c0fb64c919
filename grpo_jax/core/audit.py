"""The gradient audit: exact expected gradients of KL estimators, by enumeration.

The facts it checks are listed in docs/design.md, 'The math'.

No sampling anywhere: a policy and a reference are given as logits over a small
vocabulary (token level) or as tables over every prefix of short sequences (sequence
level), every outcome is enumerated, and expectations are exact sums weighted by the
sampling distribution. For an outcome y drawn from a sampler q (pi itself on policy, or
a third policy pi_old off policy) and a per-sample *surrogate* ``L_y(theta)``, the
estimator's expected gradient is ``sum_y q(y) grad L_y(theta)`` with q held fixed
(samples are stop-gradient), and its per-sample variance is
``sum_y q(y) ||grad L_y - mean||^2`` (trace of the covariance).

Placements (token level), with ``v_y = kl.estimate(logp_y, ref_logp_y, estimator)``:

* ``loss``: ``L_y = v_y`` (with ``old_logp`` -> importance weight, for "off_is");
* ``reward``: score function with the value detached, ``L_y = sg(v_y) * rho_y`` where
  ``rho_y = exp(logp_y - sg(logq_y))`` is the policy-gradient ratio to the sampler
  (PPO's ratio for "off_is"; the plain score ``exp(logp - sg(logp))`` for "on"/"off").

Sampling regimes: ``on`` (q = pi), ``off`` (q = pi_old, no correction), ``off_is``
(q = pi_old with the importance weight ``exp(logp - sg(old_logp))``).

Targets: the exact gradients (autodiff of ``kl.exact``) of the reverse KL
``KL[pi || pi_ref]`` and the forward KL ``KL[pi_ref || pi]``; each row reports relative
error ``||g - t|| / ||t||`` and cosine against both.

Sequence level: a tabular autoregressive policy ``theta[t]: [V**t, V]`` (the logits of
token t given each prefix), all ``V**T`` sequences enumerated. Sequence KL
``KL_rev = E_pi[sum_t delta_t]``; its exact gradient is
``E[sum_t s_t * sum_{u>=t} delta_u]`` (future-KL reward-to-go), which per-token losses
only partly reproduce. Placements there, with per-token values ``v_t``:

* ``loss``: ``sum_t v_t`` (per-token losses, samples stop-gradient);
* ``reward``: ``sum_t rho_t * sg(sum_u v_u)`` (the sequence penalty as a reward);
* ``reward_to_go``: ``sum_t rho_t * sg(sum_{u>=t} v_u)``;
* ``loss+future``: ``sum_t [v_t + rho_t * sg(sum_{u>t} v_u)]`` (per-token loss plus the
  score term of the future KL).

KL terms as frameworks write them (``KLFormula``) are audited the same way in
``core.formula_audit``.

Every public function returns plain dicts of floats / arrays; the experiment formats them.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from grpo_jax.core import advantages as adv_lib, checks, kl
from grpo_jax.core.checks import check_name

__all__ = [
    "TOKEN_PLACEMENTS",
    "SEQUENCE_PLACEMENTS",
    "SAMPLINGS",
    "random_token_problem",
    "random_sequence_problem",
    "token_audit",
    "sequence_audit",
    "sequence_logprobs",
    "sequence_exact_kl",
    "enumerate_sequences",
    "find_row",
    "compare",
]

Array = jax.Array
sg = jax.lax.stop_gradient

TOKEN_PLACEMENTS: tuple[str, ...] = ("loss", "reward")
SEQUENCE_PLACEMENTS: tuple[str, ...] = ("loss", "reward", "reward_to_go", "loss+future")
SAMPLINGS: tuple[str, ...] = ("on", "off", "off_is")


# --------------------------------------------------------------------------------------
# Shared statistics.
# --------------------------------------------------------------------------------------


def _moments(q: Array, values: Array, grads: Array) -> dict[str, Any]:
    """Mean and per-sample variance under q of values [N] and gradients [N, P]."""
    value_mean = jnp.sum(q * values)
    value_var = jnp.sum(q * jnp.square(values - value_mean))
    grad_mean = jnp.einsum("n,np->p", q, grads)
    grad_var = jnp.sum(q * jnp.sum(jnp.square(grads - grad_mean[None, :]), axis=-1))
    return dict(value_mean=value_mean, value_var=value_var, grad_mean=grad_mean, grad_var=grad_var)


def compare(g: Array, target: Array, tol: float = 1e-7) -> tuple[float, float]:
    """(relative error ||g - t|| / ||t||, cosine(g, t)); cosine is nan when g or t ~ 0."""
    g = np.asarray(g, np.float64)
    t = np.asarray(target, np.float64)
    nt, ng = np.linalg.norm(t), np.linalg.norm(g)
    rel = float(np.linalg.norm(g - t) / max(nt, 1e-300))
    scale = max(nt, ng, 1e-300)
    cos = float(g @ t / (ng * nt)) if min(ng, nt) > tol * scale else float("nan")
    return rel, cos


def _result(exact_kl_fn, params, combos, stats, level: str) -> dict[str, Any]:
    """An audit's result: the exact KL both ways and its gradient in ``params``
    (``exact_kl_fn(params, direction)``), and one row per combination."""
    exact_kl, grads = {}, {}
    for d in kl.DIRECTIONS:
        exact_kl[d], grads[d] = jax.value_and_grad(exact_kl_fn)(params, d)
    rows = [
        _row(
            st,
            exact_kl,
            grads["reverse"],
            grads["forward"],
            level=level,
            estimator=e,
            placement=p,
            sampling=s,
        )
        for (e, p, s), st in zip(combos, stats)
    ]
    return dict(
        kl_reverse=float(exact_kl["reverse"]),
        kl_forward=float(exact_kl["forward"]),
        grad_reverse=np.asarray(grads["reverse"]),
        grad_forward=np.asarray(grads["forward"]),
        rows=rows,
    )


def _row(stats, exact_kl, grad_rev, grad_fwd, **labels) -> dict[str, Any]:
    rel_rev, cos_rev = compare(stats["grad_mean"], grad_rev)
    rel_fwd, cos_fwd = compare(stats["grad_mean"], grad_fwd)
    target = kl.VALUE_TARGET[labels["estimator"]]
    return dict(
        labels,
        value_target=target,
        value_mean=float(stats["value_mean"]),
        exact_kl=float(exact_kl[target]),
        value_var=float(stats["value_var"]),
        grad_mean=np.asarray(stats["grad_mean"]),
        grad_var=float(stats["grad_var"]),
        rel_err_rev=rel_rev,
        cos_rev=cos_rev,
        rel_err_fwd=rel_fwd,
        cos_fwd=cos_fwd,
    )


# --------------------------------------------------------------------------------------
# Token level.
# --------------------------------------------------------------------------------------


def random_token_problem(
    key: Array, vocab_size: int, scale: float = 1.0, old_scale: float = 0.3, dtype=None
) -> dict[str, Array]:
    """Random logits [V] for the policy, the reference, and pi_old = policy + noise."""
    k1, k2, k3 = jax.random.split(key, 3)
    dtype = dtype or jnp.result_type(float)
    logits = scale * jax.random.normal(k1, (vocab_size,), dtype)
    ref = scale * jax.random.normal(k2, (vocab_size,), dtype)
    old = logits + old_scale * jax.random.normal(k3, (vocab_size,), dtype)
    return dict(logits=logits, ref_logits=ref, old_logits=old)


def token_surrogates(
    logp: Array,
    ref_logp: Array,
    estimator: str,
    placement: str,
    sampling: str,
    old_logp: Array | None = None,
) -> tuple[Array, Array, Array]:
    """Per-sample surrogates, sampler probabilities and reported values, all ``[N]``.

    A single token is a sequence of length 1: this is ``sequence_surrogates`` on ``[N, 1]``
    for the ``TOKEN_PLACEMENTS``.

    Args:
      logp: ``[N]`` log pi_theta(y) of every outcome y (differentiable).
      ref_logp: ``[N]`` log pi_ref(y).
      estimator, placement, sampling: see the module docstring.
      old_logp: ``[N]`` log pi_old(y), needed for the off-policy samplings.

    Returns:
      ``(L [N], q [N], values [N])``: ``grad L_y`` is the gradient an implementation applies
      for sample y; q (stop-gradient) is the sampler; values are the KL values reported
      (importance-weighted for "off_is").
    """
    check_name("placement", placement, TOKEN_PLACEMENTS)
    column = lambda x: None if x is None else x[:, None]
    return sequence_surrogates(
        column(logp), column(ref_logp), estimator, placement, sampling, column(old_logp)
    )


def _estimator_surrogates(lp, ref_logp, old_logp, combo):
    """(estimator, placement, sampling) rows: token or sequence surrogates by rank."""
    surrogates = token_surrogates if lp.ndim == 1 else sequence_surrogates
    estimator, placement, sampling = combo
    return surrogates(lp, ref_logp, estimator, placement, sampling, old_logp)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _stats(logp_fn, params, ref_logp, old_logp, combos, surrogate_fn=_estimator_surrogates):
    """Moments of every combination; per-sample gradients by the chain rule through logp.

    ``surrogate_fn(logp, ref_logp, old_logp, combo) -> (L [N], q [N], values [N])``.
    The surrogate of sample n depends on theta only through ``logp[n, ...]``, so its
    gradient is ``sum_t dL_n/dlogp[n, t] * dlogp[n, t]/dtheta``: the Jacobian of logp is
    computed once and shared by every combination (one small compiled graph).
    """
    logp = logp_fn(params)
    jac = jax.jacrev(logp_fn)(params)  # [N, P] or [N, T, P]
    stats = []
    for combo in combos:

        def total(lp, c=combo):
            surrogate, q, values = surrogate_fn(lp, ref_logp, old_logp, c)
            return jnp.sum(surrogate), (q, values)

        dl, (q, values) = jax.grad(total, has_aux=True)(logp)
        if logp.ndim == 1:
            grads = dl[:, None] * jac
        else:
            grads = jnp.einsum("nt,ntp->np", dl, jac)
        stats.append(_moments(q, values, grads))
    return stats


def token_audit(
    logits: Array,
    ref_logits: Array,
    old_logits: Array | None = None,
    estimators: Sequence[str] = kl.ESTIMATORS,
) -> dict[str, Any]:
    """Expected value and gradient of every estimator x placement x sampling, exactly.

    Args:
      logits: ``[V]`` policy logits (the parameters theta).
      ref_logits: ``[V]`` reference logits.
      old_logits: optional ``[V]`` sampler logits for the off-policy rows.
      estimators: names from ``kl.ESTIMATORS``.

    Returns:
      dict with ``kl_reverse``, ``kl_forward`` (floats), ``grad_reverse``,
      ``grad_forward`` (``[V]`` arrays) and ``rows``: a list of dicts with keys
      ``level, estimator, placement, sampling, value_target, value_mean, exact_kl,
      value_var, grad_mean [V], grad_var, rel_err_rev, cos_rev, rel_err_fwd, cos_fwd``.
    """
    msg = (
        f"logits and ref_logits must both be [V]; got {jnp.shape(logits)} and "
        f"{jnp.shape(ref_logits)}"
    )
    chex.assert_rank([logits, ref_logits], 1, custom_message=msg, exception_type=ValueError)
    chex.assert_equal_shape([logits, ref_logits], custom_message=msg, exception_type=ValueError)
    if old_logits is not None:
        checks.assert_shape("old_logits", old_logits, jnp.shape(logits))
    for e in estimators:
        kl.validate_estimator(e)
    samplings = ("on",) if old_logits is None else SAMPLINGS
    combos = tuple((e, p, s) for e in estimators for p in TOKEN_PLACEMENTS for s in samplings)
    old_logp = None if old_logits is None else jax.nn.log_softmax(old_logits)
    stats = _stats(jax.nn.log_softmax, logits, jax.nn.log_softmax(ref_logits), old_logp, combos)
    exact_kl = lambda x, d: kl.exact(x, ref_logits, d)
    return _result(exact_kl, logits, combos, stats, "token")


# --------------------------------------------------------------------------------------
# Sequence level: tabular autoregressive policies.
# --------------------------------------------------------------------------------------


def enumerate_sequences(vocab_size: int, length: int) -> Array:
    """All ``V**T`` sequences, int32 ``[V**T, T]``, in lexicographic order."""
    grids = np.meshgrid(*([np.arange(vocab_size)] * length), indexing="ij")
    return jnp.asarray(np.stack([g.reshape(-1) for g in grids], axis=-1), jnp.int32)


def random_sequence_problem(
    key: Array,
    vocab_size: int,
    length: int,
    scale: float = 1.0,
    old_scale: float = 0.3,
    dtype=None,
) -> dict[str, list[Array]]:
    """Random tables ``theta[t]: [V**t, V]`` for the policy, reference and pi_old."""
    dtype = dtype or jnp.result_type(float)
    out = dict(logits=[], ref_logits=[], old_logits=[])
    for t in range(length):
        k1, k2, k3 = jax.random.split(jax.random.fold_in(key, t), 3)
        shape = (vocab_size**t, vocab_size)
        logits = scale * jax.random.normal(k1, shape, dtype)
        out["logits"].append(logits)
        out["ref_logits"].append(scale * jax.random.normal(k2, shape, dtype))
        out["old_logits"].append(logits + old_scale * jax.random.normal(k3, shape, dtype))
    return out


def sequence_logprobs(tables: Sequence[Array], sequences: Array) -> Array:
    """Per-token log-probs ``[N, T]`` of sequences ``[N, T]`` under tables ``[V**t, V]``."""
    vocab_size = tables[0].shape[-1]
    n, length = sequences.shape
    if len(tables) != length:
        raise ValueError(f"{len(tables)} tables for sequences of length {length}.")
    prefix = jnp.zeros((n,), jnp.int32)
    out = []
    for t in range(length):
        logp_t = jax.nn.log_softmax(tables[t], axis=-1)  # [V**t, V]
        out.append(logp_t[prefix, sequences[:, t]])
        prefix = prefix * vocab_size + sequences[:, t]
    return jnp.stack(out, axis=-1)


def sequence_exact_kl(tables, ref_tables, direction: str, sequences: Array | None = None):
    """Exact sequence-level KL by enumeration (differentiable in ``tables``).

    reverse: ``sum_y pi(y) (log pi(y) - log pi_ref(y))``; forward: the same with the roles
    swapped; ``log pi(y) = sum_t logp_t``.
    """
    kl.validate_direction(direction)
    if sequences is None:
        sequences = enumerate_sequences(tables[0].shape[-1], len(tables))
    logp = jnp.sum(sequence_logprobs(tables, sequences), axis=-1)
    ref = jnp.sum(sequence_logprobs(ref_tables, sequences), axis=-1)
    if direction == "reverse":
        return jnp.sum(jnp.exp(logp) * (logp - ref))
    return jnp.sum(jnp.exp(ref) * (ref - logp))


def sequence_surrogates(
    logp: Array,
    ref_logp: Array,
    estimator: str,
    placement: str,
    sampling: str,
    old_logp: Array | None = None,
) -> tuple[Array, Array, Array]:
    """Per-sequence surrogates, sampler probabilities and values, all ``[N]``.

    Args:
      logp: ``[N, T]`` per-token log-probs of every sequence under pi_theta.
      ref_logp: ``[N, T]`` under pi_ref.
      estimator, placement, sampling: see the module docstring.
      old_logp: ``[N, T]`` under pi_old (off-policy samplings). Off policy the importance
        weight and ratio are per token (as implementations use them), so the prefix
        distribution is not corrected.

    Returns:
      ``(L [N], q [N], values [N])`` with ``values = sum_t v_t`` (weighted for "off_is").
    """
    check_name("placement", placement, SEQUENCE_PLACEMENTS)
    check_name("sampling", sampling, SAMPLINGS)
    kl.validate_estimator(estimator)
    if sampling != "on" and old_logp is None:
        raise ValueError(f"sampling={sampling!r} needs old_logp.")
    logq = sg(logp) if sampling == "on" else sg(old_logp)
    old = logq if sampling == "off_is" else None
    values = kl.estimate(logp, ref_logp, estimator, old_logp=old)  # [N, T]
    rho = jnp.exp(logp - (logq if sampling == "off_is" else sg(logp)))  # [N, T]
    detached = sg(kl.estimate(logp, ref_logp, estimator))
    if placement == "loss":
        per_token = values
    elif placement == "reward":
        per_token = rho * jnp.sum(detached, axis=-1, keepdims=True)
    elif placement == "reward_to_go":
        per_token = rho * adv_lib.returns_to_go(detached)
    else:  # loss+future
        per_token = values + rho * (adv_lib.returns_to_go(detached) - detached)
    q = jnp.exp(jnp.sum(logq, axis=-1))
    return jnp.sum(per_token, axis=-1), q, sg(jnp.sum(values, axis=-1))


class _SequenceLogp:
    """flat params -> per-token log-probs ``[N, T]`` of all sequences (hashable by id)."""

    def __init__(self, unravel, sequences):
        self.unravel, self.sequences = unravel, sequences

    def __call__(self, flat):
        return sequence_logprobs(self.unravel(flat), self.sequences)


def sequence_audit(
    tables: Sequence[Array],
    ref_tables: Sequence[Array],
    old_tables: Sequence[Array] | None = None,
    estimators: Sequence[str] = kl.ESTIMATORS,
    samplings: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Sequence-level audit: every estimator x SEQUENCE_PLACEMENTS x sampling, exactly.

    Args:
      tables: list of T arrays ``[V**t, V]`` (policy logits per prefix), the parameters.
      ref_tables, old_tables: same structure (old only for off-policy rows).
      estimators: names from ``kl.ESTIMATORS``.
      samplings: subset of ``SAMPLINGS`` (default: all that the inputs allow).

    Returns:
      dict like ``token_audit``'s, with gradients flattened over all tables (``[P]``).
    """
    tables = list(tables)
    ref_tables = list(ref_tables)
    for name, other in (("ref_tables", ref_tables), ("old_tables", old_tables)):
        if other is not None:
            chex.assert_trees_all_equal_shapes(
                tables,
                list(other),
                exception_type=ValueError,
                custom_message=f"{name} must have the shapes of tables "
                f"{[jnp.shape(a) for a in tables]}",
            )
    for e in estimators:
        kl.validate_estimator(e)
    if samplings is None:
        samplings = ("on",) if old_tables is None else SAMPLINGS
    for s in samplings:
        check_name("sampling", s, SAMPLINGS)
        if s != "on" and old_tables is None:
            raise ValueError(f"sampling={s!r} needs old_tables.")
    combos = tuple((e, p, s) for e in estimators for p in SEQUENCE_PLACEMENTS for s in samplings)
    sequences = enumerate_sequences(tables[0].shape[-1], len(tables))
    flat, unravel = ravel_pytree(tables)
    ref_logp = sequence_logprobs(ref_tables, sequences)
    old_logp = None if old_tables is None else sequence_logprobs(old_tables, sequences)
    stats = _stats(_SequenceLogp(unravel, sequences), flat, ref_logp, old_logp, combos)
    exact_kl = lambda x, d: sequence_exact_kl(unravel(x), ref_tables, d, sequences)
    return _result(exact_kl, flat, combos, stats, "sequence")


def find_row(result: dict[str, Any], **labels) -> dict[str, Any]:
    """The unique row of an audit result matching the given labels."""
    hits = [r for r in result["rows"] if all(r[k] == v for k, v in labels.items())]
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} rows match {labels}.")
    return hits[0]
