"""Group-relative advantages (GRPO and its variants).

Notation: B = prompts x G completions, laid out group-major (rows ``g*G .. g*G+G-1`` share a
prompt), T = completion length. ``G`` (``group_size``) is a static Python int.

Outcome supervision, for rewards ``R [B]`` and group ``g(i)``:

    grpo    A_i = (R_i - mean_g R) / (std_g R + eps)           (DeepSeekMath, Shao et al. 2024)
    drgrpo  A_i =  R_i - mean_g R                              (Dr. GRPO, Liu et al. 2025)
    rloo    A_i =  R_i - mean_{j in g, j != i} R_j
               = G/(G-1) (R_i - mean_g R)                       (Ahmadian et al. 2024)
    grpo_passk  A_i = (R_max - R_second) / (std_g R + eps) for the best response i of the
               group (the first index of the maximum), A_j = 0 for every other j
               (pass@k training, Chen et al. 2025, arXiv 2503.19595; verl's "grpo_passk")

``batch_std_norm=True`` divides the centred rewards by the std of the whole batch instead of
the group std (and adds it to drgrpo / rloo), as in Hu et al.'s REINFORCE++ and "Lite PPO".
Groups whose rewards are all exactly equal get advantage exactly 0 (not ``rounding / eps``);
their fraction is reported as ``zero_var_group_frac``.

Per-token returns (used for a KL penalty in the reward with future-KL reward-to-go): with
per-token penalties ``p [B, T]`` and total return ``Z_i = R_i - sum_t p_it``,

    A_it = (R_i - sum_{u >= t} p_iu - b_i) / s_i

where the baseline ``b_i`` and scale ``s_i`` are the estimator's group statistics of ``Z``.
Since ``b_i`` does not depend on the tokens of completion i (up to the usual leave-in term of
GRPO), ``E[sum_t A_it grad log pi(y_t)]`` is, up to the scale, the gradient of
``E[R] - E[sum_t p_t]`` *including* the future-penalty terms the sequence-level advantage
also has, but with the past (already decided) penalties removed, lowering the variance.

Process supervision (DeepSeekMath §4.1.3): per-step rewards placed at the last token of
each step, ``step_rewards [B, T]`` with ``step_mask [B, T]`` marking step ends. Each step
reward is normalised with the mean and std of all step rewards of its group, and
``A_it = sum_{steps j ending at u >= t} r~_j``.

Everything here is pure and jit/vmap-safe; advantages are constants for the policy loss,
callers should not differentiate through them (``grpo_jax.losses`` stops gradients).
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from grpo_jax.core import checks


def _safe_sqrt(x):
    """sqrt with a finite gradient at 0 (double-where)."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


# ------------------------------------------------------------------ the estimators
# Each maps the rewards of the groups, ``r [n, G]``, to a baseline and a scale ``[n, G]``
# with ``A = (r - baseline) / scale``.


def grpo_baseline_scale(r, *, eps=1e-6, std_ddof: int = 0):
    """GRPO: ``b = mean_g r``, ``s = std_g r + eps`` (``std_ddof`` 0 or 1). ``[n, G]`` ->
    ``([n, G], [n, G])``."""
    G = r.shape[1]
    mean = jnp.mean(r, axis=1, keepdims=True)  # [n, 1]
    dev = r - mean
    var = jnp.sum(dev * dev, axis=1, keepdims=True) / (G - std_ddof)
    ones = jnp.ones_like(r)
    return mean * ones, (_safe_sqrt(var) + eps) * ones


def drgrpo_baseline_scale(r, *, eps=1e-6, std_ddof: int = 0):
    """Dr. GRPO: ``b = mean_g r``, ``s = 1`` (``eps``, ``std_ddof`` unused)."""
    del eps, std_ddof
    ones = jnp.ones_like(r)
    return jnp.mean(r, axis=1, keepdims=True) * ones, ones


def rloo_baseline_scale(r, *, eps=1e-6, std_ddof: int = 0):
    """RLOO: ``b_i = mean_{j != i} r_j = (sum_g r - r_i) / (G - 1)``, ``s = 1``; G >= 2."""
    del eps, std_ddof
    G = r.shape[1]
    if G < 2:
        raise ValueError("the rloo estimator needs group_size >= 2")
    return (jnp.sum(r, axis=1, keepdims=True) - r) / (G - 1), jnp.ones_like(r)


def grpo_passk_baseline_scale(r, *, eps=1e-6, std_ddof: int = 0):
    """Pass@k: only the best response of a group learns, ``A = r_max - r_second``.

    The best response is the first index of the group maximum; its baseline is the
    second-largest reward ``r_second`` (the largest among the *other* responses, so a tie at
    the top gives ``r_second = r_max`` and advantage 0 for everyone). Every other response
    has baseline ``r_i`` itself, so its advantage is exactly 0. The scale is GRPO's
    ``std_g r + eps`` (``std_ddof`` 0 or 1). G >= 2.
    """
    G = r.shape[1]
    if G < 2:
        raise ValueError("the grpo_passk estimator needs group_size >= 2")
    best = jnp.argmax(r, axis=1)  # first index of the maximum
    is_best = jnp.arange(G)[None, :] == best[:, None]  # [n, G]
    second = jnp.max(jnp.where(is_best, -jnp.inf, r), axis=1, keepdims=True)  # [n, 1]
    baseline = jnp.where(is_best, second, r)
    _, scale = grpo_baseline_scale(r, eps=eps, std_ddof=std_ddof)
    return baseline, scale


#: name -> ``fn(r [n, G], *, eps, std_ddof) -> (baseline [n, G], scale [n, G])``.
REGISTRY: dict[str, Callable] = {
    "grpo": grpo_baseline_scale,
    "drgrpo": drgrpo_baseline_scale,
    "rloo": rloo_baseline_scale,
    "grpo_passk": grpo_passk_baseline_scale,
}
#: Estimators whose baseline is per response (not a group statistic of the totals), so
#: per-token future-KL returns do not apply to them (``reward_to_go_advantages`` refuses).
NO_REWARD_TO_GO: tuple[str, ...] = ("grpo_passk",)
#: Every valid advantage estimator name.
ESTIMATORS: tuple[str, ...] = tuple(REGISTRY)


def validate_estimator(name: str) -> str:
    """Returns ``name`` or raises ValueError listing the valid advantage estimators."""
    return checks.check_name("advantage estimator", name, ESTIMATORS)


def _check_group(batch: int, group_size, what: str = "rewards") -> int:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be a static Python int >= 1, got {group_size!r}")
    if batch % group_size:
        raise ValueError(
            f"{what} has batch size {batch}, not a multiple of group_size={group_size}"
        )
    return batch // group_size


def group_baseline_scale(
    totals,
    group_size: int,
    estimator: str = "grpo",
    *,
    eps=1e-6,
    batch_std_norm: bool = False,
    std_ddof: int = 0,
):
    """Baseline and scale per row, from the group statistics of ``totals``.

    Args:
      totals: ``[B]`` float rewards (group-major, B = prompts x G).
      group_size: G, a static Python int.
      estimator: one of ``ESTIMATORS`` (its ``REGISTRY`` entry gives baseline and scale).
      eps: added to the std (grpo, or any estimator with ``batch_std_norm``).
      batch_std_norm: scale by the std of the whole batch instead of the group std.
      std_ddof: 0 (population std, default) or 1 (unbiased, as torch.std in TRL/verl).

    Returns:
      ``(baseline [B], scale [B], zero_var [B] bool)`` so that ``A = (x - baseline) / scale``
      (and 0 where ``zero_var``: all rewards of the group are exactly equal).
    """
    validate_estimator(estimator)
    totals = jnp.asarray(totals, jnp.float32)
    checks.assert_rank("totals/rewards", totals, 1, "[B]")
    G = group_size
    num_groups = _check_group(totals.shape[0], G)
    if std_ddof not in (0, 1) or (std_ddof == 1 and G < 2):
        raise ValueError(f"std_ddof must be 0 or 1 (1 needs group_size >= 2), got {std_ddof}")
    r = totals.reshape(num_groups, G)
    zero_var = jnp.max(r, axis=1, keepdims=True) == jnp.min(r, axis=1, keepdims=True)
    baseline, scale = REGISTRY[estimator](r, eps=eps, std_ddof=std_ddof)
    if batch_std_norm:
        dev = totals - jnp.mean(totals)
        n = totals.shape[0]
        var = jnp.sum(dev * dev) / max(n - std_ddof, 1)
        scale = (_safe_sqrt(var) + eps) * jnp.ones_like(r)
    zero_var = jnp.broadcast_to(zero_var, r.shape)
    return baseline.reshape(-1), scale.reshape(-1), zero_var.reshape(-1)


def group_advantages(
    rewards,
    group_size: int,
    estimator: str = "grpo",
    *,
    eps=1e-6,
    batch_std_norm: bool = False,
    std_ddof: int = 0,
):
    """Outcome-supervised group-relative advantages.

    Args:
      rewards: ``[B]`` per-completion rewards, group-major.
      group_size: G (static int).
      estimator: one of ``ESTIMATORS`` (see module docstring for the formulas).
      eps, batch_std_norm, std_ddof: see ``group_baseline_scale``.

    Returns:
      ``(advantages [B] float32, aux)`` with aux keys ``adv_mean, adv_std, reward_mean,
      reward_std, zero_var_group_frac``.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    baseline, scale, zero_var = group_baseline_scale(
        rewards, group_size, estimator, eps=eps, batch_std_norm=batch_std_norm, std_ddof=std_ddof
    )
    adv = jnp.where(zero_var, 0.0, (rewards - baseline) / scale)
    aux = advantage_stats(adv)
    aux.update(
        reward_mean=jnp.mean(rewards),
        reward_std=jnp.std(rewards),
        zero_var_group_frac=zero_var_group_frac(zero_var, group_size),
    )
    return adv, aux


def returns_to_go(x, mask=None):
    """``out[..., t] = sum_{u >= t} mask[..., u] * x[..., u]`` for ``x [..., T]`` (reverse
    cumsum along the last axis), in float32 (float64 for float64 inputs).

    Masked entries are replaced by 0 before summing, so garbage (inf/NaN) there is harmless.
    """
    x = jnp.asarray(x, jnp.promote_types(jnp.result_type(x), jnp.float32))
    if mask is not None:
        checks.assert_same_shape(x=x, mask=mask)
        x = jnp.where(mask > 0, x, 0.0)
    return jnp.flip(jnp.cumsum(jnp.flip(x, axis=-1), axis=-1), axis=-1)


def reward_to_go_advantages(
    rewards,
    token_penalty,
    mask,
    group_size: int,
    estimator: str = "grpo",
    *,
    eps=1e-6,
    batch_std_norm: bool = False,
    std_ddof: int = 0,
):
    """Per-token advantages for a sequence reward minus per-token penalties (future-KL).

    ``A_it = mask_it * (R_i - sum_{u >= t} mask_iu p_iu - b_i) / s_i`` with ``b, s`` the
    estimator's group baseline and scale of the totals ``Z_i = R_i - sum_t mask_it p_it``;
    rows of groups whose ``Z`` are all equal get 0.

    Args:
      rewards: ``[B]`` sequence rewards.
      token_penalty: ``[B, T]`` per-token penalties (e.g. ``beta * KL_t``), already detached.
      mask: ``[B, T]`` 1 on completion tokens.
      group_size, estimator, eps, batch_std_norm, std_ddof: as ``group_advantages``.

    Returns:
      ``(advantages [B, T], aux)``; ``aux`` as ``group_advantages`` (stats over valid tokens),
      computed on the totals ``Z``.
    """
    validate_estimator(estimator)
    if estimator in NO_REWARD_TO_GO:
        raise ValueError(
            f"advantage estimator {estimator!r} has no per-token returns (its baseline is "
            "the response's own total for all but the best response); use the sequence reward"
        )
    rewards = jnp.asarray(rewards, jnp.float32)
    token_penalty = jnp.asarray(token_penalty, jnp.float32)
    checks.assert_shape(
        "token_penalty",
        token_penalty,
        (rewards.shape[0], None),
        f"[B, T] with B = len(rewards) = {rewards.shape[0]}",
    )
    penalty_to_go = returns_to_go(token_penalty, mask)  # [B, T]
    totals = rewards - penalty_to_go[:, 0]
    baseline, scale, zero_var = group_baseline_scale(
        totals, group_size, estimator, eps=eps, batch_std_norm=batch_std_norm, std_ddof=std_ddof
    )
    returns = rewards[:, None] - penalty_to_go  # [B, T]
    adv = (returns - baseline[:, None]) / scale[:, None]
    valid = (mask > 0) & ~zero_var[:, None]
    adv = jnp.where(valid, adv, 0.0)
    aux = advantage_stats(adv, mask)
    aux.update(
        reward_mean=jnp.mean(totals),
        reward_std=jnp.std(totals),
        zero_var_group_frac=zero_var_group_frac(zero_var, group_size),
    )
    return adv, aux


def process_advantages(step_rewards, step_mask, group_size: int, *, eps=1e-6, mask=None):
    """Process-supervised advantages (DeepSeekMath §4.1.3).

    ``r~_j = (r_j - mean(R_g)) / (std(R_g) + eps)`` where ``R_g`` are all step rewards of the
    G completions of the group (population std); ``A_it = sum_{u >= t} step_mask_iu r~_iu``.
    Groups whose step rewards are all equal (or that have no steps) get 0.

    Args:
      step_rewards: ``[B, T]`` reward of the step ending at token t (ignored where
        ``step_mask`` is 0, garbage allowed there).
      step_mask: ``[B, T]`` 1 at the last token of each step.
      group_size: G (static int).
      eps: added to the group std.
      mask: optional ``[B, T]`` token mask; advantages are zeroed outside it.

    Returns:
      ``(advantages [B, T], aux)`` with ``adv_mean, adv_std, zero_var_group_frac``.
    """
    step_rewards = jnp.asarray(step_rewards, jnp.float32)
    checks.assert_rank("step_rewards", step_rewards, 2, "[B, T]")
    checks.assert_same_shape(step_rewards=step_rewards, step_mask=step_mask)
    B, T = step_rewards.shape
    num_groups = _check_group(B, group_size, "step_rewards")
    m = step_mask > 0
    r = jnp.where(m, step_rewards, 0.0).reshape(num_groups, group_size * T)
    mg = m.reshape(num_groups, group_size * T)
    mean = checks.masked_mean(r, mg, axis=1)[:, None]
    dev = jnp.where(mg, r - mean, 0.0)
    std = _safe_sqrt(checks.masked_mean(dev * dev, mg, axis=1)[:, None])
    rmax = jnp.max(jnp.where(mg, r, -jnp.inf), axis=1, keepdims=True)
    rmin = jnp.min(jnp.where(mg, r, jnp.inf), axis=1, keepdims=True)
    zero_var = rmax <= rmin  # [n, 1]
    norm = jnp.where(mg & ~zero_var, dev / (std + eps), 0.0).reshape(B, T)
    adv = returns_to_go(norm)
    if mask is not None:
        checks.assert_shape("mask", mask, (B, T))
        adv = jnp.where(mask > 0, adv, 0.0)
    aux = advantage_stats(adv, mask)
    aux["zero_var_group_frac"] = jnp.mean(zero_var.astype(jnp.float32))
    return adv, aux


def zero_var_group_frac(zero_var_rows, group_size: int):
    """Fraction of groups flagged zero-variance, from the per-row flags ``[B]``."""
    return jnp.mean(zero_var_rows.reshape(-1, group_size)[:, 0].astype(jnp.float32))


def advantage_stats(adv, mask=None):
    """``{adv_mean, adv_std}`` of ``adv [B]`` or ``[B, T]`` (over ``mask`` tokens if given)."""
    adv = jnp.asarray(adv, jnp.float32)
    if mask is None:
        return dict(adv_mean=jnp.mean(adv), adv_std=jnp.std(adv))
    w = jnp.broadcast_to((mask > 0).astype(jnp.float32), adv.shape)
    a = jnp.where(w > 0, adv, 0.0)
    mean = checks.masked_mean(a, w)
    var = checks.masked_mean((a - mean) ** 2, w)
    return dict(adv_mean=mean, adv_std=_safe_sqrt(var))
