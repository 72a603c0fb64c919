"""One vocabulary for KL choices: parsing, printing, the none baseline, errors."""

import pytest

from grpo_jax.core import losses
from grpo_jax.core.kl_choice import KLChoice


def test_round_trip_every_choice():
    for est in losses.KL_ESTIMATORS:
        for place in losses.PLACEMENTS:
            text = f"{est}/{place}"
            assert str(KLChoice.parse(text)) == text
            assert KLChoice.parse(text) == KLChoice(est, place)
    assert str(KLChoice.parse("k2")) == "k2/loss"  # placement defaults to the loss
    assert str(KLChoice.none()) == "none" and KLChoice.parse("none").is_none


def test_beta_zero_is_none():
    assert str(KLChoice.of("exact_fwd/loss", 0.1)) == "exact_fwd/loss"
    assert str(KLChoice.of("exact_rev/loss", 0.1)) == "exact_rev/loss"
    assert str(KLChoice.of("k3/reward", 0.1)) == "k3/reward"
    assert str(KLChoice.of("k3/loss", 0.0)) == "none"
    assert KLChoice.parse("none").is_none and not KLChoice.parse("k1/loss").is_none


@pytest.mark.parametrize(
    "text,match",
    [
        ("k4/loss", "unknown KL estimator 'k4'.*valid: k1"),
        ("k3/everywhere", "unknown KL placement 'everywhere'.*valid: loss, reward"),
        ("k3/", "empty placement"),
        ("", "bad KL choice"),
        ("exact_forward/loss", "unknown KL estimator 'exact_forward'.*exact_fwd"),
    ],
)
def test_bad_names_list_the_valid_ones(text, match):
    with pytest.raises(ValueError, match=match):
        KLChoice.parse(text)


def test_none_has_no_loss_fields():
    with pytest.raises(ValueError, match="beta = 0"):
        KLChoice.none().loss_fields()
    assert KLChoice.parse("k2/reward").loss_fields() == {
        "kl_estimator": "k2",
        "kl_placement": "reward",
    }
