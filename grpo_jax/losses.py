"""The GRPO objective: KL-shaped advantages, then the clipped policy loss.

The whole path, in order (DeepSeekMath, Shao et al. 2024, eq. 3; DESIGN.md §2):

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

   with ``rho = exp(logp - old_logp)`` (``is_level="token"``) or GSPO's length-normalised
   sequence ratio ``s_i = exp(mean_t (logp - old_logp))`` (``is_level="sequence"``, Zheng
   et al. 2025, GSPO-token form ``sg(s_i) * pi/sg(pi)`` so per-token advantages work too).
   Optional dual clip (Ye et al. 2020; TRL's ``delta``): for ``A < 0`` the unclipped ratio is
   capped at ``dual_clip``, so the loss is at most ``-dual_clip * A``.
   The KL term is never added in the loss for ``kl_placement="reward"``.

   Aggregation, as ``loss = sum_it w_it l_it / den``:
     - "seq_mean_token_mean" (GRPO): ``w = m / |o_i|``, ``den = #{i : |o_i| > 0}``;
     - "token_mean" (DAPO / BNPO):   ``w = m``,         ``den = sum m``;
     - "seq_mean_token_sum_norm" (Dr. GRPO): ``w = m / L`` (``L = norm_len`` or T),
       ``den = B``.
   ``aux`` carries ``loss_num`` and ``loss_den`` (and per-term numerators) so means stay right
   when a batch is split across devices or accumulated: ``sum(num) / sum(den)``.

``grpo_objective`` runs both steps. ``LossConfig`` is a ``flax.struct.dataclass``: names and
flags are static fields, numeric hyperparameters are pytree leaves, so a population can
``jax.vmap`` over e.g. ``beta [S]``.

Masked positions may hold anything (garbage, inf, NaN): inputs are sanitised with
``where`` before any arithmetic (the double-where trick), so the loss and gradients stay
finite and unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import advantages as adv_lib
from grpo_jax import kl

PLACEMENTS: tuple[str, ...] = ("loss", "reward")
AGGREGATIONS: tuple[str, ...] = (
    "seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")
IS_LEVELS: tuple[str, ...] = ("token", "sequence")
EXACT_KL: dict[str, str] = {"exact_reverse": "reverse", "exact_forward": "forward"}
# Every valid ``kl_estimator``: the sample estimators of grpo_jax.kl, plus the exact
# per-position KL from logits (needs ``logits`` and ``ref_logits``).
KL_ESTIMATORS: tuple[str, ...] = tuple(kl.ESTIMATORS) + tuple(EXACT_KL)
ADVANTAGE_ESTIMATORS: tuple[str, ...] = adv_lib.ESTIMATORS


def _check_name(kind: str, name, valid) -> None:
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")


def _static(default):
    return flax.struct.field(pytree_node=False, default=default)


@flax.struct.dataclass
class LossConfig:
    """GRPO loss / advantage configuration.

    Numeric leaves (vmappable, e.g. ``beta`` of shape ``[S]`` under ``jax.vmap``):
      beta: KL coefficient.
      eps_low, eps_high: clip range ``[1 - eps_low, 1 + eps_high]`` (DAPO clip-higher).
      dual_clip: cap on the ratio for negative advantages; ``inf`` (vmappable) or ``None``
        (structurally off) disables it. Should be > 1 + eps_high; then it equals TRL's
        ``delta`` (which caps the ratio for every token, a no-op for A > 0).
      adv_eps: added to the std in the advantage normalisation.
      norm_len: Dr. GRPO length constant L; ``None`` uses T (the mask's second axis).

    Static fields (names validated at construction, ValueError lists the valid ones):
      kl_estimator: one of ``KL_ESTIMATORS``.
      kl_placement: "loss" | "reward".
      aggregation: one of ``AGGREGATIONS``.
      is_level: "token" | "sequence" (GSPO).
      advantage_estimator: "grpo" | "drgrpo" | "rloo".
      batch_std_norm: scale advantages by the batch std instead of the group std.
      std_ddof: 0 (population std) or 1 (unbiased std, as torch in TRL / verl).
      kl_reward_to_go: reward placement only: per-token future-KL returns -> ``[B, T]``.
      kl_importance_weight: loss placement only: multiply the estimate by
        ``exp(logp - sg(old_logp))`` (DeepSeek-V3.2 off-policy correction).
      kl_clamp_log_ratio, kl_clamp_value: passed to ``kl.estimate`` (None = off).
    """

    beta: Any = 0.04
    eps_low: Any = 0.2
    eps_high: Any = 0.2
    dual_clip: Any = math.inf
    adv_eps: Any = 1e-6
    norm_len: Any = None
    kl_estimator: str = _static("k3")
    kl_placement: str = _static("loss")
    aggregation: str = _static("seq_mean_token_mean")
    is_level: str = _static("token")
    advantage_estimator: str = _static("grpo")
    batch_std_norm: bool = _static(False)
    std_ddof: int = _static(0)
    kl_reward_to_go: bool = _static(False)
    kl_importance_weight: bool = _static(False)
    kl_clamp_log_ratio: float | None = _static(None)
    kl_clamp_value: float | None = _static(None)

    def __post_init__(self):
        # Runs on every unflatten too (with tracers / placeholders as leaves), so only the
        # static fields are checked here; ``validate`` also checks concrete numbers.
        self._validate_static()

    def _validate_static(self):
        _check_name("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _check_name("kl_placement", self.kl_placement, PLACEMENTS)
        _check_name("aggregation", self.aggregation, AGGREGATIONS)
        _check_name("is_level", self.is_level, IS_LEVELS)
        _check_name("advantage_estimator", self.advantage_estimator, ADVANTAGE_ESTIMATORS)
        if self.std_ddof not in (0, 1):
            raise ValueError(f"std_ddof must be 0 or 1, got {self.std_ddof!r}")
        if self.kl_reward_to_go and self.kl_placement != "reward":
            raise ValueError("kl_reward_to_go=True needs kl_placement='reward'")
        if self.kl_importance_weight and self.kl_placement != "loss":
            raise ValueError("kl_importance_weight=True needs kl_placement='loss'")
        if self.kl_importance_weight and self.kl_estimator in EXACT_KL:
            raise ValueError("kl_importance_weight does not apply to exact KL estimators")

    def validate(self) -> "LossConfig":
        """Checks names and every concrete (non-traced) numeric value; returns self."""
        self._validate_static()

        def concrete(name):
            v = getattr(self, name)
            if v is None or isinstance(v, jax.core.Tracer):
                return None
            return np.asarray(v, np.float64)

        checks = {
            "beta": lambda v: np.all(v >= 0),
            "eps_low": lambda v: np.all((v >= 0) & (v < 1)),
            "eps_high": lambda v: np.all(v >= 0),
            "dual_clip": lambda v: np.all(v > 1),
            "adv_eps": lambda v: np.all(v >= 0),
            "norm_len": lambda v: np.all(v > 0),
        }
        for name, ok in checks.items():
            v = concrete(name)
            if v is not None and not ok(v):
                raise ValueError(f"invalid LossConfig.{name} = {getattr(self, name)!r}")
        return self


def make_config(**kwargs) -> LossConfig:
    """``LossConfig(**kwargs).validate()``: the checked way to build a config."""
    return LossConfig(**kwargs).validate()


# ----------------------------------------------------------------------------- helpers


def _check_2d(name, x, shape):
    if x is None:
        return
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")


def _clean(x, valid, fill=0.0):
    """``where(valid, x, fill)`` in float32 (first half of the double-where trick)."""
    return jnp.where(valid, jnp.asarray(x, jnp.float32), fill)


def _clean_logits(logits, valid):
    return jnp.where(valid[..., None], jnp.asarray(logits, jnp.float32), 0.0)


def _masked_mean(x, w):
    return jnp.sum(w * x) / jnp.maximum(jnp.sum(w), 1.0)


def _token_kl(cfg: LossConfig, logp, ref_logp, valid, *, old_logp=None, logits=None,
              ref_logits=None, where="loss"):
    """Per-token KL term ``D [B, T]`` (0 at masked positions) for ``cfg.kl_estimator``."""
    if cfg.kl_estimator in EXACT_KL:
        if logits is None or ref_logits is None:
            raise ValueError(
                f"kl_estimator={cfg.kl_estimator!r} needs logits and ref_logits ({where})")
        d = kl.exact(_clean_logits(logits, valid), _clean_logits(ref_logits, valid),
                     EXACT_KL[cfg.kl_estimator])
    else:
        if ref_logp is None:
            raise ValueError(f"kl_estimator={cfg.kl_estimator!r} needs ref_logp ({where})")
        d = kl.estimate(logp, ref_logp, cfg.kl_estimator, old_logp=old_logp,
                        clamp_log_ratio=cfg.kl_clamp_log_ratio,
                        clamp_value=cfg.kl_clamp_value)
    return jnp.where(valid, jnp.asarray(d, jnp.float32), 0.0)


def aggregation_weights(mask, aggregation: str, norm_len=None):
    """``(w [B, T], den [])`` with ``loss = sum(w * l) / den`` for the given aggregation."""
    _check_name("aggregation", aggregation, AGGREGATIONS)
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


def _divide(num, den):
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


# ------------------------------------------------------------------ step 1: advantages


def compute_advantages(rewards, group_size: int, cfg: LossConfig, *, old_logp=None,
                       ref_logp=None, mask=None, old_logits=None, ref_logits=None):
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
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be [B], got shape {rewards.shape}")
    kw = dict(eps=cfg.adv_eps, batch_std_norm=cfg.batch_std_norm, std_ddof=cfg.std_ddof)
    if cfg.kl_placement != "reward":
        adv, aux = adv_lib.group_advantages(rewards, group_size, cfg.advantage_estimator, **kw)
        return jax.lax.stop_gradient(adv), aux

    if mask is None:
        raise ValueError("kl_placement='reward' needs mask")
    B, T = mask.shape
    if B != rewards.shape[0]:
        raise ValueError(f"mask has {B} rows but rewards has {rewards.shape[0]}")
    _check_2d("old_logp", old_logp, (B, T))
    _check_2d("ref_logp", ref_logp, (B, T))
    valid = mask > 0
    if cfg.kl_estimator not in EXACT_KL and old_logp is None:
        raise ValueError("kl_placement='reward' needs old_logp (the sampling log-probs)")
    d = _token_kl(cfg, None if old_logp is None else _clean(old_logp, valid),
                  None if ref_logp is None else _clean(ref_logp, valid), valid,
                  logits=old_logits, ref_logits=ref_logits, where="compute_advantages")
    d = jax.lax.stop_gradient(d)                                                 # [B, T]
    penalty = cfg.beta * d
    if cfg.kl_reward_to_go:
        adv, aux = adv_lib.reward_to_go_advantages(
            rewards, penalty, mask, group_size, cfg.advantage_estimator, **kw)
    else:
        adv, aux = adv_lib.group_advantages(
            rewards - jnp.sum(penalty, axis=1), group_size, cfg.advantage_estimator, **kw)
    aux["kl_reward_mean"] = jnp.mean(jnp.sum(d, axis=1))
    return jax.lax.stop_gradient(adv), aux


# ------------------------------------------------------------------- step 2: the loss


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, cfg: LossConfig, *,
              logits=None, ref_logits=None):
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

    Returns:
      ``(loss [], aux)``. aux: ``loss, loss_num, loss_den, pg_loss, pg_num, kl_loss, kl_num``
      (``loss = (pg_num + beta * kl_num) / loss_den`` for placement "loss"; the KL term is
      reported, not added, for "reward"), ``token_count, clip_frac_low, clip_frac_high,
      dual_clip_frac, ratio_min, ratio_mean, ratio_max, kl_mean, adv_mean, adv_std`` and,
      with logits, ``entropy`` and with both logits ``exact_kl_reverse, exact_kl_forward``.
    """
    if logp.ndim != 2:
        raise ValueError(f"logp must be [B, T], got shape {logp.shape}")
    B, T = logp.shape
    _check_2d("old_logp", old_logp, (B, T))
    _check_2d("ref_logp", ref_logp, (B, T))
    _check_2d("mask", mask, (B, T))
    if advantages.shape not in ((B,), (B, T)):
        raise ValueError(
            f"advantages has shape {advantages.shape}, expected {(B,)} or {(B, T)}")
    for name, x in (("logits", logits), ("ref_logits", ref_logits)):
        if x is not None and (x.ndim != 3 or x.shape[:2] != (B, T)):
            raise ValueError(f"{name} has shape {x.shape}, expected {(B, T)} + (V,)")

    valid = mask > 0
    m = valid.astype(jnp.float32)
    logp = _clean(logp, valid)
    old_logp = jax.lax.stop_gradient(_clean(old_logp, valid))
    ref_logp = None if ref_logp is None else jax.lax.stop_gradient(_clean(ref_logp, valid))
    adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))
    if adv.ndim == 1:
        adv = jnp.broadcast_to(adv[:, None], (B, T))
    adv = jnp.where(valid, adv, 0.0)

    # Importance ratio.
    log_ratio = logp - old_logp
    if cfg.is_level == "token":
        rho = jnp.exp(log_ratio)
    else:  # GSPO: s_i = exp(mean_t log_ratio), GSPO-token form sg(s_i) * pi / sg(pi)
        n = jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1.0)
        seq_log_ratio = jnp.sum(m * log_ratio, axis=1, keepdims=True) / n
        rho = (jax.lax.stop_gradient(jnp.exp(seq_log_ratio)) * jnp.ones((1, T))
               * jnp.exp(logp - jax.lax.stop_gradient(logp)))
    lo, hi = 1.0 - cfg.eps_low, 1.0 + cfg.eps_high
    rho_clipped = jnp.clip(rho, lo, hi)
    negative = adv < 0
    if cfg.dual_clip is None:
        rho_unclipped = rho
        dual_active = jnp.zeros_like(valid)
    else:
        rho_unclipped = jnp.where(negative, jnp.minimum(rho, cfg.dual_clip), rho)
        dual_active = negative & (rho > cfg.dual_clip)
    pg = -jnp.minimum(rho_unclipped * adv, rho_clipped * adv)
    pg = jnp.where(valid, pg, 0.0)

    # KL term D_t.
    need_kl = cfg.kl_placement == "loss"
    have_inputs = (ref_logp is not None if cfg.kl_estimator not in EXACT_KL
                   else logits is not None and ref_logits is not None)
    if need_kl or have_inputs:
        iw_old = old_logp if (need_kl and cfg.kl_importance_weight) else None
        d = _token_kl(cfg, logp, ref_logp, valid, old_logp=iw_old, logits=logits,
                      ref_logits=ref_logits, where="grpo_loss")
        if not need_kl:
            d = jax.lax.stop_gradient(d)
    else:
        d = jnp.zeros((B, T), jnp.float32)

    # Aggregation as a sum and a denominator.
    w, den = aggregation_weights(m, cfg.aggregation, cfg.norm_len)
    pg_num = jnp.sum(w * pg)
    kl_num = jnp.sum(w * d)
    num = pg_num + cfg.beta * kl_num if need_kl else pg_num
    loss = _divide(num, den)

    sg = jax.lax.stop_gradient
    rho_d = sg(rho)
    count = jnp.sum(m)
    aux = dict(
        loss=loss, loss_num=num, loss_den=den,
        pg_loss=_divide(pg_num, den), pg_num=pg_num,
        kl_loss=_divide(kl_num, den), kl_num=kl_num,
        token_count=count,
        clip_frac_low=_masked_mean((negative & (rho_d < lo)).astype(jnp.float32), m),
        clip_frac_high=_masked_mean(((adv > 0) & (rho_d > hi)).astype(jnp.float32), m),
        dual_clip_frac=_masked_mean(dual_active.astype(jnp.float32), m),
        ratio_min=jnp.min(jnp.where(valid, rho_d, jnp.inf)),
        ratio_mean=_masked_mean(rho_d, m),
        ratio_max=jnp.max(jnp.where(valid, rho_d, -jnp.inf)),
        kl_mean=_masked_mean(sg(d), m),
    )
    aux.update(adv_lib.advantage_stats(adv, m))
    if logits is not None:
        lg = sg(_clean_logits(logits, valid))
        logq = jax.nn.log_softmax(lg, axis=-1)
        ent = -jnp.sum(jnp.exp(logq) * logq, axis=-1)
        aux["entropy"] = _masked_mean(ent, m)
        if ref_logits is not None:
            rl = sg(_clean_logits(ref_logits, valid))
            for direction in kl.DIRECTIONS:
                aux[f"exact_kl_{direction}"] = _masked_mean(
                    jnp.where(valid, kl.exact(lg, rl, direction), 0.0), m)
    return loss, aux


# --------------------------------------------------------------------- both together


def grpo_objective(logp, old_logp, ref_logp, rewards, mask, group_size: int,
                   cfg: LossConfig, *, logits=None, ref_logits=None, old_logits=None):
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
        rewards, group_size, cfg, old_logp=old_logp, ref_logp=ref_logp, mask=mask,
        old_logits=old_logits, ref_logits=ref_logits)
    loss, aux = grpo_loss(logp, old_logp, ref_logp, advantages, mask, cfg,
                          logits=logits, ref_logits=ref_logits)
    aux.update({f"adv/{k}": v for k, v in adv_aux.items()})
    aux["zero_var_group_frac"] = adv_aux["zero_var_group_frac"]
    return loss, aux
