"""KL estimators, exact KL from logits, and clamps.

Notation, per sampled token y (all arrays share one shape, e.g. ``[B, T]``)::

    logp     = log pi_theta(y | ctx)        the policy being trained
    ref_logp = log pi_ref(y | ctx)          the reference policy
    old_logp = log pi_old(y | ctx)          the policy that sampled y (off-policy)
    delta    = logp - ref_logp              log-ratio
    r        = exp(-delta) = pi_ref / pi    ratio
    s        = grad log pi_theta(y)         score

Estimators (Schulman, "Approximating KL divergence", 2020; docs/design.md, 'The math'), from samples
of pi, registered by name in ``ESTIMATORS``:

=============  =============================  ================  ==========================
name           value                          E_pi[value]       expected grad as a *loss*
=============  =============================  ================  ==========================
``k1``         delta                          KL_rev            0
``k2``         delta**2 / 2                   ~KL_rev (2nd ord) grad KL_rev
``k3``         expm1(-delta) + delta          KL_rev            grad KL_fwd (!)
``fwd_rlogr``  r * log r = -delta * r         KL_fwd            biased
``fwd_nonneg`` r*(-delta) - (r - 1)           KL_fwd            biased
``k1_st``      value of k1, gradient of k2    KL_rev            grad KL_rev
``k3_st``      value of k3, gradient of k2    KL_rev            grad KL_rev
=============  =============================  ================  ==========================

``KL_rev = KL[pi || pi_ref]``, ``KL_fwd = KL[pi_ref || pi]``. Straight-through ("_st")
variants are ``sg(kX) + k2 - sg(k2)``: they report kX's value and descend the unbiased
reverse-KL gradient ``delta * s`` (the idea behind verl's ``k3+``). Expected gradients in
every placement are checked by exact enumeration in ``grpo_jax.audit``.

Off-policy correction (DeepSeek-V3.2; TRL ``use_bias_correction_kl``): with ``old_logp``,
the value is multiplied by ``w = exp(logp - sg(old_logp))``; the weight carries gradient,
so ``E_old[grad(w * k3)] = grad KL_rev`` (on policy too: k3 with the weight is unbiased).
For the straight-through variants the weight multiplies the value, while the gradient
part is ``sg(w) * (k2 - sg(k2))``: per sample this has exactly the gradient of ``w * k3``
(``w * delta * s``), so they stay unbiased for the reverse KL on and off policy.

Clamps (as verl / OpenRLHF do; both default off):

* ``clamp_log_ratio=c``: ``delta`` (and the importance log-ratio ``logp - old_logp``) are
  clipped to ``[-c, c]`` before anything else. Past the clamp the gradient is **zero**
  (``jnp.clip``, like ``torch.clamp``): such tokens stop contributing to the KL gradient.
* ``clamp_value=v``: the estimator's value (before the importance weight) is clipped to
  ``[-v, v]``; past the clamp the gradient through the value is **zero** (the weight's
  own score term ``w * v * s`` remains off policy).

With ``clamp_log_ratio`` set (say 20), values and gradients are finite for any finite
inputs. With the clamps off, values and gradients may be +-inf (e.g. k3 at ``delta=-100``
overflows ``exp``), but never NaN: the derivative is written out (``custom_jvp``) from
stable forms of f' and f + f', so ``inf - inf`` and ``0 * inf`` cannot occur. Math runs
in float32 (float64 if the inputs are float64 under x64), whatever the input dtype
(bfloat16 inputs are upcast first). Inputs of -inf (e.g. masked tokens) are not
supported: mask the outputs instead.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from grpo_jax.core import checks

__all__ = [
    "ESTIMATORS",
    "DIRECTIONS",
    "ABBREV",
    "validate_estimator",
    "validate_direction",
    "VALUE_TARGET",
    "estimate",
    "exact",
    "clamp_fraction",
]

Array = jax.Array
sg = jax.lax.stop_gradient


# --------------------------------------------------------------------------------------
# The formulas: elementwise functions of delta = logp - ref_logp, each with its
# derivative f' and the combination f + f' (the derivative of w * f(delta) divided by w
# when w = exp(logp - old_logp) carries gradient), written so that none of them
# produces NaN for any finite delta (overflow gives +-inf).
# --------------------------------------------------------------------------------------


def _k1(d):
    """k1 = delta = log(pi / pi_ref)."""
    return d


def _k2(d):
    """k2 = delta**2 / 2."""
    return 0.5 * jnp.square(d)


def _k3(d):
    """k3 = r - 1 - log r = expm1(-delta) + delta  (>= 0)."""
    return jnp.expm1(-d) + d


def _fwd_rlogr(d):
    """r log r = -delta * exp(-delta); E_pi[r log r] = KL[pi_ref || pi]."""
    return -d * jnp.exp(-d)


def _fwd_nonneg(d):
    """r log r - (r - 1) = 1 + (x - 1) e^x with x = -delta  (>= 0).

    ``x e^x - expm1(x)`` for x <= 1 (accurate near 0) and ``1 + (x - 1) e^x`` for x > 1
    (no ``inf - inf`` when e^x overflows).
    """
    x = -d
    small = x <= 1.0
    x_lo = jnp.where(small, x, 0.0)
    x_hi = jnp.where(small, 2.0, x)
    lo = x_lo * jnp.exp(x_lo) - jnp.expm1(x_lo)
    hi = 1.0 + (x_hi - 1.0) * jnp.exp(x_hi)
    return jnp.where(small, lo, hi)


class _Formula(NamedTuple):
    value: Callable[[Array], Array]  # f(delta)
    grad: Callable[[Array], Array]  # f'(delta)
    value_plus_grad: Callable[[Array], Array]  # f(delta) + f'(delta), stable
    straight_through: bool = False  # gradient of k2 instead of f'


_K1 = _Formula(_k1, jnp.ones_like, lambda d: d + 1.0)
_K2 = _Formula(_k2, lambda d: d, lambda d: _k2(d) + d)
_K3 = _Formula(_k3, lambda d: -jnp.expm1(-d), lambda d: d)
_FWD_RLOGR = _Formula(_fwd_rlogr, lambda d: (d - 1.0) * jnp.exp(-d), lambda d: -jnp.exp(-d))
_FWD_NONNEG = _Formula(_fwd_nonneg, lambda d: d * jnp.exp(-d), lambda d: -jnp.expm1(-d))

_FORMULAS: dict[str, _Formula] = {
    "k1": _K1,
    "k2": _K2,
    "k3": _K3,
    "fwd_rlogr": _FWD_RLOGR,
    "fwd_nonneg": _FWD_NONNEG,
    "k1_st": _K1._replace(straight_through=True),
    "k3_st": _K3._replace(straight_through=True),
}

#: Every valid estimator name.
ESTIMATORS: tuple[str, ...] = tuple(_FORMULAS)

#: Which KL each estimator's value estimates (in expectation under pi); k2 only
#: approximately (second order in delta).
VALUE_TARGET: dict[str, str] = {
    "k1": "reverse",
    "k2": "reverse",
    "k3": "reverse",
    "fwd_rlogr": "forward",
    "fwd_nonneg": "forward",
    "k1_st": "reverse",
    "k3_st": "reverse",
}

#: Valid directions of ``exact``: reverse = KL[pi || pi_ref], forward = KL[pi_ref || pi].
DIRECTIONS: tuple[str, ...] = ("reverse", "forward")

#: Short names of the directions, as in the names ``exact_rev`` / ``exact_fwd`` and the
#: metric keys ``exact_kl_rev`` / ``exact_kl_fwd``.
ABBREV: dict[str, str] = {"reverse": "rev", "forward": "fwd"}


def validate_estimator(estimator: str) -> str:
    """Returns ``estimator`` or raises ValueError listing ``ESTIMATORS``."""
    return checks.check_name("KL estimator", estimator, ESTIMATORS)


def validate_direction(direction: str) -> str:
    """Returns ``direction`` or raises ValueError listing ``DIRECTIONS``."""
    return checks.check_name("KL direction", direction, DIRECTIONS, noun="directions")


def _compute_dtype(*arrays) -> jnp.dtype:
    """float32, or float64 when an input is float64 (tests); never lower than float32."""
    dtype = jnp.dtype(jnp.float32)
    for a in arrays:
        if a is not None:
            dtype = jnp.promote_types(dtype, jnp.result_type(a))
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.dtype(jnp.float32)
    return dtype


def _safe_mul(a: Array, b: Array) -> Array:
    """a * b with 0 * inf := 0 (primal use only: the zero test is not differentiated)."""
    return jnp.where((a == 0) | (b == 0), jnp.zeros_like(a * b), a * b)


def _value_and_coefs(logp, ref_logp, old_logp, estimator, has_old, clamp_lr, clamp_v):
    """Value and the partial derivatives d value / d logp, d value / d ref_logp."""
    form = _FORMULAS[estimator]
    delta = logp - ref_logp
    live_d = jnp.ones(delta.shape, bool)  # gradient flows through delta
    if clamp_lr is not None:
        live_d = jnp.abs(delta) <= clamp_lr
        delta = jnp.clip(delta, -clamp_lr, clamp_lr)
    f = form.value(delta)
    if clamp_v is not None:
        hit = jnp.abs(f) > clamp_v
        live_d = live_d & ~hit
        f = jnp.clip(f, -clamp_v, clamp_v)
    # Derivative of the (unweighted) value w.r.t. delta: f', or k2's for straight-through.
    fprime = delta if form.straight_through else form.grad(delta)
    fprime = jnp.where(live_d, fprime, jnp.zeros_like(fprime))
    if not has_old:
        return f, fprime, -fprime
    log_w = logp - old_logp
    live_w = jnp.ones(delta.shape, bool)
    if clamp_lr is not None:
        live_w = jnp.abs(log_w) <= clamp_lr
        log_w = jnp.clip(log_w, -clamp_lr, clamp_lr)
    if form.straight_through:
        live_w = jnp.zeros(delta.shape, bool)  # gradient sg(w) * delta * s
    w = jnp.exp(log_w)
    # d(w f)/dlogp = w * (live_w * f + live_d * f'), with f + f' in its stable form.
    both = live_w & live_d
    g = jnp.where(both, form.value_plus_grad(delta), jnp.where(live_w, f, fprime))
    return _safe_mul(w, f), _safe_mul(w, g), -_safe_mul(w, fprime)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5, 6))
def _estimate(logp, ref_logp, old_logp, estimator, has_old, clamp_lr, clamp_v):
    return _value_and_coefs(logp, ref_logp, old_logp, estimator, has_old, clamp_lr, clamp_v)[0]


@_estimate.defjvp
def _estimate_jvp(estimator, has_old, clamp_lr, clamp_v, primals, tangents):
    logp, ref_logp, old_logp = primals
    dlogp, dref, _ = tangents  # old_logp is stop-gradient
    value, c_logp, c_ref = _value_and_coefs(
        logp, ref_logp, old_logp, estimator, has_old, clamp_lr, clamp_v
    )
    return value, c_logp * dlogp + c_ref * dref


# --------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------


def estimate(
    logp: Array,
    ref_logp: Array,
    estimator: str,
    *,
    old_logp: Array | None = None,
    clamp_log_ratio: float | None = None,
    clamp_value: float | None = None,
) -> Array:
    """Per-token KL estimate from sampled tokens' log-probs.

    The value is ``w * f(delta)`` (``w = 1`` without ``old_logp``), and the derivative is
    written out explicitly (a ``custom_jvp``) from ``f'`` and ``f + f'`` in stable forms,
    so that no ``inf - inf`` or ``0 * inf`` can appear even when ``exp`` overflows:

    * ``d value / d logp = w * f'(delta)`` (on policy; ``f' := delta`` for "_st"),
      plus ``w * f(delta)`` off policy from the weight (not for "_st");
    * ``d value / d ref_logp = -w * f'(delta)``; ``old_logp`` gets no gradient.

    Args:
      logp: ``[...]`` log pi_theta(y) of the sampled tokens (differentiable).
      ref_logp: ``[...]`` log pi_ref(y).
      estimator: one of ``ESTIMATORS`` (see the module docstring for the formulas).
      old_logp: optional ``[...]`` log pi_old(y) of the sampling policy. Given, the value is
        multiplied by ``w = exp(logp - sg(old_logp))`` (DeepSeek-V3.2 off-policy correction;
        the weight carries gradient). Straight-through variants: value ``w * kX``,
        gradient ``sg(w) * grad k2``.
      clamp_log_ratio: optional c > 0: clip ``delta`` and ``logp - old_logp`` to ``[-c, c]``
        (zero gradient through a clipped log-ratio).
      clamp_value: optional v > 0: clip the estimator value to ``[-v, v]`` before the
        importance weight (zero gradient through a clipped value).

    Returns:
      ``[...]`` per-token values (float32; float64 for float64 inputs), same shape as logp.

    Raises:
      ValueError: unknown estimator, mismatched shapes, non-positive clamps.
    """
    validate_estimator(estimator)
    checks.assert_same_shape("KL inputs", logp=logp, ref_logp=ref_logp, old_logp=old_logp)
    for name, c in (("clamp_log_ratio", clamp_log_ratio), ("clamp_value", clamp_value)):
        if c is not None and not c > 0:
            raise ValueError(f"{name} must be positive or None; got {c!r}.")
    dtype = _compute_dtype(logp, ref_logp, old_logp)
    logp = jnp.asarray(logp, dtype)
    ref_logp = jnp.asarray(ref_logp, dtype)
    has_old = old_logp is not None
    old = sg(jnp.asarray(old_logp, dtype)) if has_old else jnp.zeros_like(logp)
    clamp_lr = None if clamp_log_ratio is None else float(clamp_log_ratio)
    clamp_v = None if clamp_value is None else float(clamp_value)
    return _estimate(logp, ref_logp, old, estimator, has_old, clamp_lr, clamp_v)


def exact(logits: Array, ref_logits: Array, direction: str) -> Array:
    """Exact KL per position from logits, reducing the last (vocabulary) axis.

    ``reverse``: ``KL[pi || pi_ref] = sum_v pi_v (log pi_v - log pi_ref_v)``;
    ``forward``: ``KL[pi_ref || pi] = sum_v pi_ref_v (log pi_ref_v - log pi_v)``,
    with ``pi = softmax(logits)``, ``pi_ref = softmax(ref_logits)`` computed by
    ``log_softmax`` (stable for any finite logits). The gradient is the true gradient, so
    this serves as a regulariser as well as the ground truth for the estimators.

    Why there is no vocabulary chunking: both inputs are already materialised ``[..., V]``
    arrays, and the computation is two log-sum-exps and one weighted sum over V, which XLA
    fuses into reductions over the inputs; the only other ``[..., V]`` arrays are the
    gradients with respect to the logits, which are as large as the logits and unavoidable.
    Chunking over V only pays when the logits themselves are never materialised (hidden
    states times the output head, computed chunk by chunk), which is the caller's choice.

    Args:
      logits: ``[..., V]`` policy logits.
      ref_logits: ``[..., V]`` reference logits.
      direction: ``"reverse"`` or ``"forward"``.

    Returns:
      ``[...]`` KL per position (float32; float64 for float64 inputs).
    """
    validate_direction(direction)
    checks.assert_same_shape("KL inputs", logits=logits, ref_logits=ref_logits)
    if jnp.ndim(logits) < 1:
        raise ValueError("logits must have a vocabulary axis; got a scalar.")
    dtype = _compute_dtype(logits, ref_logits)
    logq = jax.nn.log_softmax(jnp.asarray(logits, dtype), axis=-1)
    logp_ref = jax.nn.log_softmax(jnp.asarray(ref_logits, dtype), axis=-1)
    if direction == "reverse":
        return jnp.sum(jnp.exp(logq) * (logq - logp_ref), axis=-1)
    return jnp.sum(jnp.exp(logp_ref) * (logp_ref - logq), axis=-1)


def clamp_fraction(
    logp: Array,
    ref_logp: Array,
    clamp_log_ratio: float | None = None,
    *,
    mask: Array | None = None,
    clamp_value: float | None = None,
    estimator: str = "k3",
) -> Array:
    """Fraction of tokens that hit a clamp (a diagnostic; no gradient).

    A token hits the clamp when ``|logp - ref_logp| > clamp_log_ratio`` or, with
    ``clamp_value``, when ``|estimator value| > clamp_value`` (value computed after the
    log-ratio clamp, as in ``estimate``).

    Args:
      logp, ref_logp: ``[...]`` sampled tokens' log-probs.
      clamp_log_ratio: the log-ratio clamp (None: not checked).
      mask: optional ``[...]`` weights (1 = real token); the fraction is
        ``checks.masked_mean(hit, mask) = sum(mask * hit) / max(sum(mask), 1)``.
      clamp_value: the value clamp (None: not checked).
      estimator: estimator whose value the value clamp applies to.

    Returns:
      scalar float32 in [0, 1].
    """
    validate_estimator(estimator)
    checks.assert_same_shape("KL inputs", logp=logp, ref_logp=ref_logp, mask=mask)
    dtype = _compute_dtype(logp, ref_logp)
    delta = sg(jnp.asarray(logp, dtype) - jnp.asarray(ref_logp, dtype))
    hit = jnp.zeros(delta.shape, bool)
    if clamp_log_ratio is not None:
        hit = hit | (jnp.abs(delta) > clamp_log_ratio)
        delta = jnp.clip(delta, -clamp_log_ratio, clamp_log_ratio)
    if clamp_value is not None:
        hit = hit | (jnp.abs(_FORMULAS[estimator].value(delta)) > clamp_value)
    mask = None if mask is None else sg(jnp.asarray(mask, jnp.float32))
    return checks.masked_mean(hit.astype(jnp.float32), mask)
