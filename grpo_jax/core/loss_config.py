"""`LossConfig`, the GRPO loss's configuration, and the vocabularies it validates against
(placements, aggregations, importance-ratio levels, KL and advantage estimators); the loss
itself is core/losses.py, which re-exports these names.
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import numpy as np

from grpo_jax.core import advantages as adv_lib, kl
from grpo_jax.core.checks import check_name

# "ref_samples": an exact_* KL evaluated along completions sampled from the *reference*
# (``ref_sample_kl``), added to the loss; with exact_fwd its expected gradient is the sequence
# forward KL's (maximum likelihood on reference samples), which "loss" placement, on the
# policy's own prefixes, is not.
PLACEMENTS: tuple[str, ...] = ("loss", "reward", "ref_samples")
AGGREGATIONS: tuple[str, ...] = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")
IS_LEVELS: tuple[str, ...] = ("token", "sequence")
#: The exact per-position KL regularisers: name -> ``kl.exact`` direction
#: (``{"exact_rev": "reverse", "exact_fwd": "forward"}``).
EXACT_KL: dict[str, str] = {f"exact_{kl.ABBREV[d]}": d for d in kl.DIRECTIONS}
# Every valid ``kl_estimator``: the sample estimators of grpo_jax.kl, plus the exact
# per-position KL from logits (needs ``logits`` and ``ref_logits``).
KL_ESTIMATORS: tuple[str, ...] = tuple(kl.ESTIMATORS) + tuple(EXACT_KL)
ADVANTAGE_ESTIMATORS: tuple[str, ...] = adv_lib.ESTIMATORS


def _static(default):
    return flax.struct.field(pytree_node=False, default=default)


@flax.struct.dataclass
class LossConfig:
    """GRPO loss / advantage configuration.

    Numeric leaves (vmappable, e.g. ``beta`` of shape ``[S]`` under ``jax.vmap``):
      beta: KL coefficient.
      entropy_coef: coefficient of an entropy bonus ``- entropy_coef * H(pi_t)`` per token in
        the loss (exact, from the logits; 0 = off; no effect without logits).
      eps_low, eps_high: clip range ``[1 - eps_low, 1 + eps_high]`` (DAPO clip-higher).
      dual_clip: cap on the ratio for negative advantages; ``inf`` (vmappable) or ``None``
        (structurally off) disables it. Should be > 1 + eps_high; then it equals TRL's
        ``delta`` (which caps the ratio for every token, a no-op for A > 0).
      adv_eps: added to the std in the advantage normalisation.
      norm_len: Dr. GRPO length constant L; ``None`` uses T (the mask's second axis).

    Static fields (names validated at construction, ValueError lists the valid ones):
      kl_estimator: one of ``KL_ESTIMATORS``.
      kl_placement: "loss" | "reward" | "ref_samples" (an exact_* estimator on completions
        sampled from the reference, ``ref_sample_kl``).
      aggregation: one of ``AGGREGATIONS``.
      is_level: "token" | "sequence" (GSPO).
      advantage_estimator: one of ``ADVANTAGE_ESTIMATORS`` ("grpo", "drgrpo", "rloo",
        "grpo_passk"; ``grpo_jax/core/advantages.py``).
      batch_std_norm: scale advantages by the batch std instead of the group std.
      std_ddof: 0 (population std) or 1 (unbiased std, as torch in TRL / verl).
      kl_reward_to_go: reward placement only: per-token future-KL returns -> ``[B, T]``.
      kl_importance_weight: loss placement only: multiply the estimate by
        ``exp(logp - sg(old_logp))`` (DeepSeek-V3.2 off-policy correction).
      kl_clamp_log_ratio, kl_clamp_value: passed to ``kl.estimate`` (None = off).
    """

    beta: Any = 0.04
    entropy_coef: Any = 0.0
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
        check_name("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        check_name("kl_placement", self.kl_placement, PLACEMENTS)
        check_name("aggregation", self.aggregation, AGGREGATIONS)
        check_name("is_level", self.is_level, IS_LEVELS)
        check_name("advantage_estimator", self.advantage_estimator, ADVANTAGE_ESTIMATORS)
        if self.std_ddof not in (0, 1):
            raise ValueError(f"std_ddof must be 0 or 1, got {self.std_ddof!r}")
        if self.kl_reward_to_go and self.kl_placement != "reward":
            raise ValueError("kl_reward_to_go=True needs kl_placement='reward'")
        if self.kl_reward_to_go and self.advantage_estimator in adv_lib.NO_REWARD_TO_GO:
            raise ValueError(
                f"kl_reward_to_go=True does not apply to advantage_estimator="
                f"{self.advantage_estimator!r}"
            )
        if self.kl_importance_weight and self.kl_placement != "loss":
            raise ValueError("kl_importance_weight=True needs kl_placement='loss'")
        if self.kl_placement == "ref_samples" and self.kl_estimator not in EXACT_KL:
            raise ValueError(
                f"kl_placement='ref_samples' needs an exact KL estimator "
                f"({', '.join(EXACT_KL)}; exact_fwd: the sequence forward KL), got "
                f"{self.kl_estimator!r}"
            )
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
            "entropy_coef": lambda v: np.all(v >= 0),
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
