"""Config switches: options parse, bad options are named, variants change what they say."""

import pytest

from configs import grpo as grpo_config
from configs import study as study_config


def test_grpo_parse_arg():
    assert grpo_config.parse_arg("task=arithmetic, quick", task="bandit", quick=False) == {
        "task": "arithmetic",
        "quick": True,
    }
    quick = grpo_config.get_config("task=bandit,quick")
    assert quick.train.num_steps % quick.train.chunk_steps == 0
    assert quick.train.num_steps < grpo_config.get_config("task=bandit").train.num_steps


def test_study_variants():
    default, full, tiny = (study_config.get_config(a) for a in ("", "full", "tiny"))
    assert default.num_seeds >= 8 and full.num_seeds >= 32  # the minimum seeds
    assert len(default.betas) == len(full.betas) == 8
    assert len(full.modalities) > len(default.modalities) > len(tiny.modalities)
    assert {m["label"] for m in default.modalities} >= {"1 mode", "1 mode + floor"}
    assert default.primary_outcome in default.outcomes
    for o in default.outcomes.values():  # every outcome has a declared margin and range
        assert o.margin > 0 and o.high > o.low
    with pytest.raises(ValueError, match="fast.*valid: full, tiny"):
        study_config.get_config("fast")
