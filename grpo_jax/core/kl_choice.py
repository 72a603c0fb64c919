"""One vocabulary for KL choices: which estimator, placed where, or no KL at all.

A KL choice is written ``ESTIMATOR/PLACEMENT`` everywhere (configs, records, reports,
figures): ``k3/loss``, ``k1/reward``, ``exact_fwd/loss``. ``none`` is the unregularised
baseline (beta = 0, whatever estimator the config names). Parsing validates the names
against the loss module's registries, so a typo is a ``ValueError`` listing the valid ones.

    >>> KLChoice.parse("k3/loss")
    KLChoice(estimator='k3', placement='loss')
    >>> str(KLChoice.parse("k2"))           # placement defaults to the loss
    'k2/loss'
    >>> KLChoice.parse("none").is_none
    True
"""

from __future__ import annotations

import dataclasses

from grpo_jax.core import losses

NONE_NAME = "none"


# The study's control arm: an entropy bonus with no KL (swept like beta). Not a KL choice;
# a name in the same vocabulary of arms.
ENTROPY_ARM = "entropy"


@dataclasses.dataclass(frozen=True)
class KLChoice:
    """An (estimator, placement) pair; ``KLChoice.none()`` is the no-KL baseline."""

    estimator: str
    placement: str = "loss"

    def __post_init__(self):
        if self.is_none:
            return
        if self.estimator not in losses.KL_ESTIMATORS:
            raise ValueError(
                f"unknown KL estimator {self.estimator!r} in KL choice "
                f"{self.estimator}/{self.placement}; valid: "
                f"{', '.join(losses.KL_ESTIMATORS)} (or {NONE_NAME!r})"
            )
        if self.placement not in losses.PLACEMENTS:
            raise ValueError(
                f"unknown KL placement {self.placement!r} in KL choice "
                f"{self.estimator}/{self.placement}; valid: "
                f"{', '.join(losses.PLACEMENTS)}"
            )

    @classmethod
    def none(cls) -> "KLChoice":
        return cls(NONE_NAME, "loss")

    @classmethod
    def parse(cls, text: "str | KLChoice") -> "KLChoice":
        """'ESTIMATOR/PLACEMENT' (placement defaults to 'loss') or 'none' -> KLChoice."""
        if isinstance(text, KLChoice):
            return text
        if not isinstance(text, str) or not text:
            raise ValueError(
                f"bad KL choice {text!r}: want 'ESTIMATOR/PLACEMENT' or " f"{NONE_NAME!r}"
            )
        if text == NONE_NAME:
            return cls.none()
        est, sep, place = text.partition("/")
        if sep and not place:
            raise ValueError(
                f"bad KL choice {text!r}: empty placement; valid: "
                f"{', '.join(losses.PLACEMENTS)}"
            )
        return cls(est, place or "loss")

    @classmethod
    def of(cls, text: "str | KLChoice", beta: float) -> "KLChoice":
        """The choice a run actually makes: ``none`` when beta == 0 (no KL at all)."""
        return cls.none() if float(beta) == 0.0 else cls.parse(text)

    @property
    def is_none(self) -> bool:
        return self.estimator == NONE_NAME

    def __str__(self) -> str:
        return NONE_NAME if self.is_none else f"{self.estimator}/{self.placement}"

    def loss_fields(self) -> dict[str, str]:
        """``{"kl_estimator", "kl_placement"}`` for ``losses.LossConfig`` (not for none)."""
        if self.is_none:
            raise ValueError("the 'none' KL choice has no loss fields; run it as beta = 0")
        return {"kl_estimator": self.estimator, "kl_placement": self.placement}
