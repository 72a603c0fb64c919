"""Stage 2 of the answer-level study (grpo_jax/study/answer_level_sampled.py) on the tiny
GGUF of tests/test_gguf.py (single-token digits, a chat template): sampled GRPO on padded
prompts through the shared population loop, in segments that resume from checkpoints,
evaluated exactly, with its report."""

import json

import numpy as np
import pytest


def test_sampled_stage_runs_in_resumed_segments_and_reports(tiny_gguf_path, tmp_path):
    """``:sampled_smoke``: 4 members (both exact KLs x 2 seeds) on two prompts of different
    token lengths, evaluated at steps 0, 2, 4; the second segment resumes from the first's
    checkpoint and ends where one uninterrupted run does; a rerun skips what is done."""
    from grpo_jax.configs import answer_level as al_config  # noqa: PLC0415
    from grpo_jax.study import answer_level, answer_level_sampled as sampled  # noqa: PLC0415
    from grpo_jax.tasks import number_text  # noqa: PLC0415

    config = al_config.get_config("sampled_smoke")
    config.gguf_path = tiny_gguf_path
    loaded = answer_level.load(config, new_tokens=2)
    assert number_text.from_tree(loaded[2]).padded  # the prompts have two token lengths
    logs = []
    work = tmp_path / "segments"
    result = sampled.run_sampled(
        config, al_config.sampled_grpo_config, str(work), loaded, log=logs.append
    )
    members = len(result["cells"])
    assert members == 4 and [e["step"] for e in result["evaluations"]] == [0, 2, 4]
    assert any("resumed from" in line and "at step 2" in line for line in logs)
    for e in result["evaluations"]:
        for split in ("train", "held_out"):
            assert len(e[split]) == members
            for m in e[split]:
                assert 0 <= m["reward"] <= 1 and 0 <= m["tv_to_target"] <= 1, m
    rows = [json.loads(line) for line in open(work / "sampled" / "metrics.jsonl")]
    assert sorted((r["step"], r["member"]) for r in rows) == [
        (s, m) for s in range(4) for m in range(members)
    ]
    for k in ("loss", "exact_kl_fwd", "exact_kl_rev", "entropy", "reward_mean", "grad_norm"):
        assert all(np.isfinite(r[k]) for r in rows), k
    assert max(r["update_norm"] for r in rows) > 0
    report = (work / "sampled.md").read_text()
    for text in ("exact_fwd/loss", "exact_rev/loss", "Held-out prompts", "0 → 2 → 4"):
        assert text in report, text
    assert json.load(open(work / "sampled.json"))["logged_steps"] == [1, 2, 3, 4]

    # One uninterrupted run of 4 steps ends where the two segments did.
    config.sampled.eval_steps = (4,)
    whole = sampled.run_sampled(
        config, al_config.sampled_grpo_config, str(tmp_path / "whole"), loaded, log=print
    )
    for split in ("train", "held_out"):
        for a, b in zip(whole["evaluations"][-1][split], result["evaluations"][-1][split]):
            np.testing.assert_allclose(a["tv_to_target"], b["tv_to_target"], atol=1e-6)

    # A rerun: the segment at step 2 is not run again, the run is already at step 4.
    config.sampled.eval_steps = (2, 4)
    logs.clear()
    again = sampled.run_sampled(
        config, al_config.sampled_grpo_config, str(work), loaded, log=logs.append
    )
    assert any("step 2: evaluated by an earlier run" in line for line in logs)
    assert again["evaluations"] == result["evaluations"]


def test_sampled_members_and_their_targets():
    """The GPU variant's members (KL choices x betas x seeds), the per-node target each is
    set against, and valid GRPO configs for every segment."""
    from grpo_jax.configs import answer_level as al_config  # noqa: PLC0415
    from grpo_jax.run import build  # noqa: PLC0415
    from grpo_jax.study import answer_level_sampled as sampled  # noqa: PLC0415

    config = al_config.get_config("sampled")
    cells = sampled.cells_of(config)
    assert len(cells) == 2 * 3 * 3  # KL choices x betas x seeds
    assert {c["loss.beta"] for c in cells} == {0.2, 0.4, 0.8}
    assert sampled.target_direction("k3/loss") == "forward"
    assert sampled.target_direction("exact_rev/loss") == "reverse"
    with pytest.raises(ValueError, match="KL in the loss"):
        sampled.target_direction("k3/reward")
    assert config.sampled.eval_steps[-1] == 200 and config.sampled.group_size == 8
    for steps in config.sampled.eval_steps:  # every segment's config is valid
        grpo = al_config.sampled_grpo_config(config, steps)
        build.validate_config(grpo, task_given=True)
        assert grpo.train.num_steps == steps and grpo.loss.advantage_estimator == "rloo"
        assert grpo.train.checkpoint_every_chunks >= 1 and grpo.train.trainable == "last:1"
