"""Config switches: options parse, bad options are named, variants change what they say."""

import pytest

from grpo_jax.configs import grpo as grpo_config, study as study_config


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


def test_sequence_study_declares_matched_z0_and_a_reward_that_treats_references_alike():
    from grpo_jax.configs import sequence_study  # noqa: PLC0415
    from grpo_jax.run import config_utils  # noqa: PLC0415

    c, tiny = sequence_study.get_config(), sequence_study.get_config("tiny")
    assert c.policies == ["tabular"] and "between" not in c.outcomes
    assert c.primary_outcome in c.outcomes and set(c.baselines) <= {
        m["label"] for m in c.modalities
    }
    z0 = {}
    for m in c.modalities:
        task = config_utils.make_task(dict(m["task"]))
        assert task.reward_kind == "near" and task.partial_reward == 0.5
        z0[m["label"]] = task.zero_reward_mass()
    # The matched-Z0 control abandons what the early forks abandon.
    for fork in ("2 branches, d=0", "2 branches, d=1", "4 branches, d=1"):
        assert abs(z0[fork] - z0["1 branch, Z0 0.5"]) < 0.01
    assert len(tiny.modalities) == 2 and tiny.num_seeds < c.num_seeds
    with pytest.raises(ValueError, match="valid: full, tiny, transformer"):
        sequence_study.get_config("fast")
    with pytest.raises(ValueError, match="exclude each other"):
        sequence_study.get_config("tiny,full")


_APP = """
import sys
from absl import flags
from ml_collections import config_flags
from grpo_jax.run import config_utils

_CONFIG = config_flags.DEFINE_config_file("config", sys.argv.pop(1), "config", lock_config=True)


def main(argv):
    print("lr", _CONFIG.value.optim.lr, "task", _CONFIG.value.task.name)


config_utils.run_app(main)
"""


def _run_app(tmp_path, *args):
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "app.py"
    script.write_text(_APP)
    env = dict(os.environ, PYTHONPATH=root, GRPO_JAX_COMPILATION_CACHE="0")
    cmd = [sys.executable, str(script), "grpo_jax/configs/grpo.py", *args]
    return subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=120)


def test_entry_point_takes_a_config_file_and_overrides(tmp_path):
    """`--config FILE:ARG` and `--config.KEY=VALUE` together (the flags are parsed once: a
    second parse defined the override flags twice and every such command failed), and a
    misspelt key names the valid ones."""
    out = _run_app(
        tmp_path, "--config", "grpo_jax/configs/grpo.py:task=bandit", "--config.optim.lr=0.5"
    )
    assert out.returncode == 0, out.stderr
    assert "lr 0.5 task bandit" in out.stdout
    bad = _run_app(
        tmp_path, "--config=grpo_jax/configs/grpo.py:task=bandit", "--config.optim.lrr=0.5"
    )
    assert bad.returncode != 0
    assert "FATAL config error: --config.optim.lrr" in bad.stderr and "'lr'" in bad.stderr
