"""Config switches: options parse, bad options are named, variants change what they say."""

import pytest

from configs import grpo as grpo_config
from configs import hypothesis as hyp_config


def test_grpo_parse_arg():
    assert grpo_config.parse_arg("task=arithmetic, quick", task="bandit", quick=False) == {
        "task": "arithmetic", "quick": True}
    quick = grpo_config.get_config("task=bandit,quick")
    assert quick.train.num_steps % quick.train.chunk_steps == 0
    assert quick.train.num_steps < grpo_config.get_config("task=bandit").train.num_steps


def test_hypothesis_variants():
    default, std, full_std = (hyp_config.get_config(a) for a in ("", "std", "full,std"))
    assert default.loss.advantage_estimator == "rloo"
    assert std.loss.advantage_estimator == "grpo" and std.num_seeds == default.num_seeds
    assert full_std.num_seeds > default.num_seeds and full_std.name == "full,std"
    assert default.num_seeds >= 5  # the issue asks for at least 5 seeds in the default
    with pytest.raises(ValueError, match="fast.*valid: full, std, tiny"):
        hyp_config.get_config("fast")
