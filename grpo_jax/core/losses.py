"""The GRPO objective: KL-shaped advantages, then the clipped policy loss.

The whole path, in order (DeepSeekMath, Shao et al. 2024, eq. 3; docs/design.md, 'The
math'):

1. ``compute_advantages(rewards, G, cfg, old_logp=, ref_logp=, mask=)`` -- group-relative
   advantages. With ``kl_placement="reward"`` the detached per-token KL estimate
   ``D_t`` (of the *sampling* policy, ``old_logp`` vs ``ref_logp``) is subtracted from the
   rewards **before** the group normalisation:
     - default: ``R_i <- R_i - beta * sum_t D_it`` then ``A_i = norm_g(R)``  -> ``[B]``;
     - ``kl_reward_to_go=True``: per-token returns ``R_i - beta * sum_{u >= t} D_iu``
       normalised with the group statistics of the totals -> ``[B, T]`` (future-KL
       reward-to-go: with k1 this is the full sequence reverse-KL gradient).
2. ``grpo_loss(logp, old_logp, ref_logp, advantages, mask, cfg)`` -- per token

       l_it = -min(rho_it A_it, clip(rho_it, 1 - eps_low, 1 + eps_high) A_it)
              [+ beta * D_it   only for kl_placement="loss"]

   composed, rlax-style, from small pure functions, each documented with its formula:

     ``importance_ratio``   rho (token level, or GSPO's sequence level);
     ``clipped_surrogate``  the clipped term, with the optional dual clip;
     ``kl_term``            D (a ``kl.estimate`` estimator, optionally importance-weighted,
                            or the exact per-position KL ``kl.exact`` from logits);
     ``aggregate``          ``loss = sum_it w_it l_it / den`` as a sum and a denominator;
     ``stats.ratio_diagnostics``, ``logit_diagnostics``  clip fractions, ratio range, entropy
                            and exact KL both ways.

   The KL term is never added in the loss for ``kl_placement="reward"``.

``grpo_objective`` runs both steps. ``LossConfig`` is a ``flax.struct.dataclass``: names and
flags are static fields, numeric hyperparameters are pytree leaves, so a population can
``jax.vmap`` over e.g. ``beta [S]``.

Masked positions may hold anything (garbage, inf, NaN): inputs are sanitised with
``where`` before any arithmetic (the double-where trick), so the loss and gradients stay
finite and unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grpo_jax.core import advantages as adv_lib, checks, kl, stats
from grpo_jax.core.checks import check_name, masked_mean

__all__ = [  # the loss, and the config names it re-exports from loss_config
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "EXACT_KL",
    "IS_LEVELS",
    "KL_ESTIMATORS",
    "PLACEMENTS",
    "LossConfig",
    "make_config",
    "importance_ratio",
    "clipped_surrogate",
    "exact_token_kl",
    "ref_sample_kl",
    "kl_term",
    "aggregation_weights",
    "aggregate",
    "logit_diagnostics",
    "compute_advantages",
    "grpo_loss",
    "grpo_objective",
]

sg = jax.lax.stop_gradient

from grpo_jax.core.loss_config import (  # the config and its vocabularies
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    EXACT_KL,
    IS_LEVELS,
    KL_ESTIMATORS,
    PLACEMENTS,
    LossConfig,
    make_config,
)

# ------------------------------------------------------------------- building blocks


def _clean(x, valid, fill=0.0):
    """``where(valid, x, fill)`` in float32 (first half of the double-where trick)."""
    return jnp.where(valid, jnp.asarray(x, jnp.float32), fill)


def _clean_logits(logits, valid):
    return jnp.where(valid[..., None], jnp.asarray(logits, jnp.float32), 0.0)


def _divide(num, den):
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def importance_ratio(logp, old_logp, mask, level: str = "token"):
    """Importance ratio between the policy and the sampling policy, per token.

    token (PPO / GRPO):  ``rho_it = exp(logp_it - old_logp_it)``.
    sequence (GSPO, Zheng et al. 2025): the length-normalised sequence ratio
    ``s_i = exp(sum_t m_it (logp_it - old_logp_it) / max(|o_i|, 1))`` in the GSPO-token form
    ``rho_it = sg(s_i) * pi_it / sg(pi_it)``: its value is ``s_i`` at every token, its
    gradient ``s_i * grad log pi_it``, so per-token advantages work too.

    Args:
      logp: ``[B, T]`` log pi_theta of the sampled tokens (differentiated), finite.
      old_logp: ``[B, T]`` log pi_old (detached), finite.
      mask: ``[B, T]`` float 1 on completion tokens (``|o_i| = sum_t m_it``).
      level: one of ``IS_LEVELS``.

    Returns:
      ``rho [B, T]``.
    """
    check_name("is_level", level, IS_LEVELS)
    log_ratio = logp - old_logp
    if level == "token":
        return jnp.exp(log_ratio)
    seq_log_ratio = masked_mean(log_ratio, mask, axis=1)[:, None]  # [B, 1]
    return sg(jnp.exp(seq_log_ratio)) * jnp.ones((1, logp.shape[1])) * jnp.exp(logp - sg(logp))


def clipped_surrogate(rho, advantages, eps_low, eps_high, dual_clip=None):
    """Per-token clipped surrogate loss (PPO, Schulman et al. 2017; dual clip, Ye et al. 2020).

        l = -min(rho' A, clip(rho, 1 - eps_low, 1 + eps_high) A),
        rho' = min(rho, dual_clip) where A < 0, else rho.

    The dual clip caps the loss of a negative advantage at ``-dual_clip * A`` (TRL's
    ``delta``); ``dual_clip=None`` (or ``inf``) disables it.

    Args:
      rho: ``[B, T]`` importance ratios (``importance_ratio``).
      advantages: ``[B, T]`` advantages (detached).
      eps_low, eps_high: the clip range (DAPO's clip-higher when they differ).
      dual_clip: ``None`` or a cap > 1 + eps_high.

    Returns:
      ``[B, T]`` per-token losses (not masked).
    """
    rho_clipped = jnp.clip(rho, 1.0 - eps_low, 1.0 + eps_high)
    if dual_clip is not None:
        rho = jnp.where(advantages < 0, jnp.minimum(rho, dual_clip), rho)
    return -jnp.minimum(rho * advantages, rho_clipped * advantages)


def exact_token_kl(logits, ref_logits, valid, direction: str):
    """Exact per-position KL ``kl.exact(logits, ref_logits, direction)`` over the vocabulary,
    ``[B, T, V] -> [B, T]`` float32, with masked positions (``valid`` False) cleaned before
    and zeroed after (garbage there changes nothing)."""
    d = kl.exact(_clean_logits(logits, valid), _clean_logits(ref_logits, valid), direction)
    return jnp.where(valid, jnp.asarray(d, jnp.float32), 0.0)


def ref_sample_kl(cfg: LossConfig, logits, ref_logits, mask):
    """The KL term of placement "ref_samples": the exact per-position KL of
    ``cfg.kl_estimator`` along completions sampled from the reference, aggregated as the
    loss is (``aggregation_weights``). ``logits`` ``[B', T, V]`` (the policy's on those
    completions, differentiated), ``ref_logits`` (detached), ``mask`` ``[B', T]``.

    With exact_fwd and a sum over positions this is, in expectation, the sequence forward
    KL(ref || pi) = sum_t E_{y<t ~ ref}[KL(ref_t || pi_t)] (its gradient exactly: maximum
    likelihood on reference samples); the "loss" placement evaluates the same per-position
    term on the policy's prefixes, whose gradient is not the sequence KL's."""
    valid = mask > 0
    d = exact_token_kl(logits, sg(ref_logits), valid, EXACT_KL[cfg.kl_estimator])
    w, den = aggregation_weights(valid.astype(jnp.float32), cfg.aggregation, cfg.norm_len)
    return _divide(jnp.sum(w * d), den)


def kl_term(
    cfg: LossConfig,
    logp,
    ref_logp,
    valid,
    *,
    old_logp=None,
    logits=None,
    ref_logits=None,
    caller: str = "grpo_loss",
):
    """Per-token KL term ``D [B, T]`` of ``cfg.kl_estimator`` (0 at masked positions).

    * a sample estimator of ``kl.ESTIMATORS`` (k1, k2, k3, ...):
      ``D = kl.estimate(logp, ref_logp)``; with ``old_logp`` the importance-weighted
      ``w * D``, ``w = exp(logp - sg(old_logp))`` (DeepSeek-V3.2's off-policy correction);
      ``cfg.kl_clamp_log_ratio`` and ``cfg.kl_clamp_value`` are passed on;
    * ``exact_rev`` / ``exact_fwd``: ``D = kl.exact(logits, ref_logits, direction)``, the
      exact KL over the vocabulary (``exact_token_kl``).

    Args:
      cfg: ``LossConfig`` (estimator name and clamps).
      logp, ref_logp: ``[B, T]`` cleaned log-probs (sample estimators; ref_logp required).
      valid: ``[B, T]`` bool mask.
      old_logp: ``[B, T]`` detached sampling log-probs, for the importance weight only.
      logits, ref_logits: ``[B, T, V]`` (exact estimators; both required).
      caller: named in the error when an input is missing.
    """
    if cfg.kl_estimator in EXACT_KL:
        if logits is None or ref_logits is None:
            raise ValueError(
                f"kl_estimator={cfg.kl_estimator!r} needs logits and ref_logits ({caller})"
            )
        return exact_token_kl(logits, ref_logits, valid, EXACT_KL[cfg.kl_estimator])
    if ref_logp is None:
        raise ValueError(f"kl_estimator={cfg.kl_estimator!r} needs ref_logp ({caller})")
    d = kl.estimate(
        logp,
        ref_logp,
        cfg.kl_estimator,
        old_logp=old_logp,
        clamp_log_ratio=cfg.kl_clamp_log_ratio,
        clamp_value=cfg.kl_clamp_value,
    )
    return jnp.where(valid, jnp.asarray(d, jnp.float32), 0.0)


def aggregation_weights(mask, aggregation: str, norm_len=None):
    """``(w [B, T], den [])`` with ``loss = sum(w * l) / den`` for the given aggregation.

    * "seq_mean_token_mean" (GRPO): ``w = m / |o_i|``, ``den = #{i : |o_i| > 0}``;
    * "token_mean" (DAPO / BNPO):   ``w = m``,         ``den = sum m``;
    * "seq_mean_token_sum_norm" (Dr. GRPO): ``w = m / L`` (``L = norm_len`` or T), ``den = B``.
    """
    check_name("aggregation", aggregation, AGGREGATIONS)
    m = jnp.asarray(mask, jnp.float32)
    B, T = m.shape
    if aggregation == "seq_mean_token_mean":
        n = jnp.sum(m, axis=1, keepdims=True)
        w = m / jnp.maximum(n, 1.0)
        den = jnp.sum((n > 0).astype(jnp.float32))
    elif aggregation == "token_mean":
        w = m
        den = jnp.sum(m)
    else:  # seq_mean_token_sum_norm
        L = T if norm_len is None else norm_len
        w = m / L
        den = jnp.asarray(B, jnp.float32)
    return w, den


def aggregate(pg, d, mask, cfg: LossConfig, add_kl: bool, h=None):
    """The loss as a sum and a denominator (so means stay right when a batch is split
    across devices or accumulated: ``sum(num) / sum(den)``).

        pg_num = sum_it w_it pg_it,   kl_num = sum_it w_it D_it,   ent_num = sum_it w_it h_it
        loss_num = pg_num + beta * kl_num (``add_kl``) or pg_num,   - entropy_coef * ent_num
        loss = loss_num / den,

    with ``(w, den) = aggregation_weights(mask, cfg.aggregation, cfg.norm_len)``.

    Args:
      pg, d: ``[B, T]`` per-token policy-gradient losses and KL terms (0 where masked).
      mask: ``[B, T]`` float mask.
      cfg: ``LossConfig``.
      add_kl: whether the KL term enters the loss (placement "loss").
      h: optional ``[B, T]`` per-token policy entropies (differentiable) for the entropy
        bonus ``entropy_coef`` (a regulariser with no reference: the study's control arm).

    Returns:
      dict ``loss, loss_num, loss_den, pg_loss, pg_num, kl_loss, kl_num, token_count``.
    """
    w, den = aggregation_weights(mask, cfg.aggregation, cfg.norm_len)
    pg_num = jnp.sum(w * pg)
    kl_num = jnp.sum(w * d)
    num = pg_num + cfg.beta * kl_num if add_kl else pg_num
    if h is not None:
        num = num - cfg.entropy_coef * jnp.sum(w * h)
    return dict(
        loss=_divide(num, den),
        loss_num=num,
        loss_den=den,
        pg_loss=_divide(pg_num, den),
        pg_num=pg_num,
        kl_loss=_divide(kl_num, den),
        kl_num=kl_num,
        token_count=jnp.sum(mask),
    )


def logit_diagnostics(logits, ref_logits, mask):
    """Token-mean entropy of the policy (``stats.entropy``) and, given ``ref_logits``, the
    token-mean exact KL in both directions (``kl.exact``), all detached.

    Args:
      logits: ``[B, T, V]`` policy logits; ref_logits: ``[B, T, V]`` or None.
      mask: ``[B, T]`` float mask (garbage in masked logits is ignored).

    Returns:
      dict ``entropy`` and, with ``ref_logits``, ``exact_kl_rev, exact_kl_fwd``.
    """
    valid = mask > 0
    lg = sg(logits)
    out = dict(entropy=masked_mean(stats.entropy(_clean_logits(lg, valid)), mask))
    if ref_logits is not None:
        for direction in kl.DIRECTIONS:
            out[f"exact_kl_{kl.ABBREV[direction]}"] = masked_mean(
                exact_token_kl(lg, sg(ref_logits), valid, direction), mask
            )
    return out


# ------------------------------------------------------------------ step 1: advantages


def compute_advantages(
    rewards,
    group_size: int,
    cfg: LossConfig,
    *,
    old_logp=None,
    ref_logp=None,
    mask=None,
    old_logits=None,
    ref_logits=None,
):
    """Advantages with the KL penalty in the reward when ``cfg.kl_placement == "reward"``.

    Args:
      rewards: ``[B]`` sequence rewards, group-major (B = prompts x G).
      group_size: G, a static Python int.
      cfg: ``LossConfig``.
      old_logp: ``[B, T]`` log-probs of the sampled tokens under the sampling policy.
      ref_logp: ``[B, T]`` log-probs under the reference policy.
      mask: ``[B, T]`` 1 on completion tokens (garbage elsewhere is ignored).
      old_logits, ref_logits: ``[B, T, V]``, only for ``exact_*`` estimators.

    Returns:
      ``(advantages, aux)``: advantages ``[B]`` (or ``[B, T]`` with ``kl_reward_to_go``),
      detached. For placement "reward" the penalty is ``beta * sg(D_t)`` with ``D_t`` the
      estimate of ``cfg.kl_estimator`` at ``old_logp`` vs ``ref_logp``, summed into the
      reward (``R - beta * sum_t D_t``) before the group normalisation, or turned into
      future-KL returns. ``aux``: ``adv_mean, adv_std, reward_mean, reward_std,
      zero_var_group_frac`` and, for placement "reward", ``kl_reward_mean`` (mean over
      sequences of ``sum_t D_t``).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    checks.assert_rank("rewards", rewards, 1, "[B]")
    kw = dict(eps=cfg.adv_eps, batch_std_norm=cfg.batch_std_norm, std_ddof=cfg.std_ddof)
    if cfg.kl_placement != "reward":
        adv, aux = adv_lib.group_advantages(rewards, group_size, cfg.advantage_estimator, **kw)
        return sg(adv), aux

    if mask is None:
        raise ValueError("kl_placement='reward' needs mask")
    checks.assert_shape(
        "mask", mask, (rewards.shape[0], None), f"[B, T] with B = len(rewards) = {rewards.shape[0]}"
    )
    B, T = mask.shape
    for name, x in (("old_logp", old_logp), ("ref_logp", ref_logp)):
        if x is not None:
            checks.assert_shape(name, x, (B, T))
    valid = mask > 0
    if cfg.kl_estimator not in EXACT_KL and old_logp is None:
        raise ValueError("kl_placement='reward' needs old_logp (the sampling log-probs)")
    d = kl_term(
        cfg,
        None if old_logp is None else _clean(old_logp, valid),
        None if ref_logp is None else _clean(ref_logp, valid),
        valid,
        logits=old_logits,
        ref_logits=ref_logits,
        caller="compute_advantages",
    )
    d = sg(d)  # [B, T]
    penalty = cfg.beta * d
    if cfg.kl_reward_to_go:
        adv, aux = adv_lib.reward_to_go_advantages(
            rewards, penalty, mask, group_size, cfg.advantage_estimator, **kw
        )
    else:
        adv, aux = adv_lib.group_advantages(
            rewards - jnp.sum(penalty, axis=1), group_size, cfg.advantage_estimator, **kw
        )
    aux["kl_reward_mean"] = jnp.mean(jnp.sum(d, axis=1))
    return sg(adv), aux


# ------------------------------------------------------------------- step 2: the loss


def _check_loss_inputs(logp, old_logp, ref_logp, advantages, mask, logits, ref_logits):
    checks.assert_rank("logp", logp, 2, "[B, T]")
    B, T = logp.shape
    for name, x in (("old_logp", old_logp), ("ref_logp", ref_logp), ("mask", mask)):
        if x is not None:
            checks.assert_shape(name, x, (B, T))
    checks.assert_rank("advantages", advantages, {1, 2}, f"[B] or [B, T] = {[B]} or {[B, T]}")
    checks.assert_shape("advantages", advantages, (B, T)[: advantages.ndim], f"{[B]} or {[B, T]}")
    for name, x in (("logits", logits), ("ref_logits", ref_logits)):
        if x is not None:
            checks.assert_shape(name, x, (B, T, None), f"{[B, T]} + [V]")
    return B, T


def _add_ref_sample_kl(aux, cfg: LossConfig, ref_sample) -> None:
    """Placement "ref_samples": ``loss += beta * ref_sample_kl`` in `aux` (in place), its
    numerator kept consistent, the term reported as ``kl_ref_samples``."""
    if ref_sample is None:
        raise ValueError(
            "kl_placement='ref_samples' needs ref_sample=(logits, ref_logits, mask) on "
            "completions sampled from the reference"
        )
    kl_ref = ref_sample_kl(cfg, *ref_sample)
    aux["loss"] = aux["loss"] + cfg.beta * kl_ref
    aux["loss_num"] = aux["loss"] * aux["loss_den"]
    aux["kl_ref_samples"] = sg(kl_ref)


def _loss_kl(cfg: LossConfig, logp, ref_logp, valid, old_logp, logits, ref_logits):
    """The per-token KL term ``[B, T]``: in the loss for placement "loss"; otherwise only
    reported (detached) when its inputs are there, else zeros."""
    add_kl = cfg.kl_placement == "loss"
    have_inputs = (
        ref_logp is not None
        if cfg.kl_estimator not in EXACT_KL
        else logits is not None and ref_logits is not None
    )
    if not (add_kl or have_inputs):
        return jnp.zeros(logp.shape, jnp.float32)
    iw_old = old_logp if (add_kl and cfg.kl_importance_weight) else None
    d = kl_term(cfg, logp, ref_logp, valid, old_logp=iw_old, logits=logits, ref_logits=ref_logits)
    return d if add_kl else sg(d)


def grpo_loss(
    logp,
    old_logp,
    ref_logp,
    advantages,
    mask,
    cfg: LossConfig,
    *,
    logits=None,
    ref_logits=None,
    ref_sample=None,
):
    """GRPO clipped policy loss (see module docstring for the formula and aggregations).

    Args:
      logp: ``[B, T]`` log pi_theta of the sampled tokens (differentiated).
      old_logp: ``[B, T]`` log pi_old (sampling policy); detached.
      ref_logp: ``[B, T]`` log pi_ref, or None when no sample-estimated KL is needed
        (placement "reward", or an ``exact_*`` estimator with logits).
      advantages: ``[B]`` or ``[B, T]``; detached.
      mask: ``[B, T]`` 1 on completion tokens; anything (inf / NaN) may sit elsewhere.
      cfg: ``LossConfig``.
      logits: optional ``[B, T, V]`` policy logits (differentiated; needed by the exact KL
        regulariser; also gives entropy and exact-KL diagnostics).
      ref_logits: optional ``[B, T, V]`` reference logits.
      ref_sample: placement "ref_samples" only: ``(logits, ref_logits, mask)`` of the policy
        and the reference on completions sampled from the reference (``ref_sample_kl``).

    Returns:
      ``(loss [], aux)``. aux: ``loss, loss_num, loss_den, pg_loss, pg_num, kl_loss, kl_num``
      (``loss = (pg_num + beta * kl_num) / loss_den`` for placement "loss"; the KL term is
      reported, not added, for "reward"), ``token_count, clip_frac_low, clip_frac_high,
      dual_clip_frac, ratio_min, ratio_mean, ratio_max, kl_mean, adv_mean, adv_std`` and,
      with logits, ``entropy`` and with both logits ``exact_kl_rev, exact_kl_fwd``.
    """
    B, T = _check_loss_inputs(logp, old_logp, ref_logp, advantages, mask, logits, ref_logits)
    valid = mask > 0
    m = valid.astype(jnp.float32)
    logp = _clean(logp, valid)
    old_logp = sg(_clean(old_logp, valid))
    ref_logp = None if ref_logp is None else sg(_clean(ref_logp, valid))
    adv = sg(jnp.asarray(advantages, jnp.float32))
    if adv.ndim == 1:
        adv = jnp.broadcast_to(adv[:, None], (B, T))
    adv = jnp.where(valid, adv, 0.0)

    rho = importance_ratio(logp, old_logp, m, cfg.is_level)
    pg = clipped_surrogate(rho, adv, cfg.eps_low, cfg.eps_high, cfg.dual_clip)
    pg = jnp.where(valid, pg, 0.0)

    add_kl = cfg.kl_placement == "loss"
    d = _loss_kl(cfg, logp, ref_logp, valid, old_logp, logits, ref_logits)

    # The entropy bonus (exact per-position entropy, differentiated) needs the logits.
    h = (
        None
        if logits is None
        else jnp.where(valid, stats.entropy(_clean_logits(logits, valid)), 0.0)
    )
    aux = aggregate(pg, d, m, cfg, add_kl, h)
    if cfg.kl_placement == "ref_samples":
        _add_ref_sample_kl(aux, cfg, ref_sample)
    aux.update(stats.ratio_diagnostics(sg(rho), adv, m, cfg.eps_low, cfg.eps_high, cfg.dual_clip))
    aux["kl_mean"] = masked_mean(sg(d), m)
    aux.update(adv_lib.advantage_stats(adv, m))
    if logits is not None:
        aux.update(logit_diagnostics(logits, ref_logits, m))
    return aux["loss"], aux


# --------------------------------------------------------------------- both together


def grpo_objective(
    logp,
    old_logp,
    ref_logp,
    rewards,
    mask,
    group_size: int,
    cfg: LossConfig,
    *,
    logits=None,
    ref_logits=None,
    old_logits=None,
):
    """The whole GRPO path: ``compute_advantages`` then ``grpo_loss``.

    ``advantages = compute_advantages(rewards, G, cfg, old_logp, ref_logp, mask)`` puts
    ``-beta * sg(D)`` into the rewards for placement "reward"; ``grpo_loss`` adds
    ``+beta * D`` to the per-token loss for placement "loss"; never both.

    Args:
      logp, old_logp, ref_logp, mask: ``[B, T]`` as in ``grpo_loss``.
      rewards: ``[B]`` group-major.
      group_size: G (static int).
      cfg: ``LossConfig``.
      logits, ref_logits, old_logits: optional ``[B, T, V]`` (``old_logits`` feeds an
        ``exact_*`` estimator in the reward).

    Returns:
      ``(loss, aux)``: aux of ``grpo_loss`` plus the advantage aux under ``"adv/"`` keys
      (``adv/zero_var_group_frac`` ...), and ``zero_var_group_frac`` at top level.
    """
    advantages, adv_aux = compute_advantages(
        rewards,
        group_size,
        cfg,
        old_logp=old_logp,
        ref_logp=ref_logp,
        mask=mask,
        old_logits=old_logits,
        ref_logits=ref_logits,
    )
    loss, aux = grpo_loss(
        logp, old_logp, ref_logp, advantages, mask, cfg, logits=logits, ref_logits=ref_logits
    )
    aux.update({f"adv/{k}": v for k, v in adv_aux.items()})
    aux["zero_var_group_frac"] = adv_aux["zero_var_group_frac"]
    return loss, aux
