"""Stage 2 of the real model at answer level: sampled GRPO on the answer-level prompts,
evaluated exactly against the per-node targets.

Stage 1 (grpo_jax/study/answer_level.py) trains by the exact gradient of GRPO's objective;
here the same model trains by GRPO itself: G completions of 2 tokens per prompt, sampled
from pi_old (`tasks.number_text.from_tree`: the training prompts right-padded, each with its
own length through the step, rl/rollout.py), through the shared population loop
(`runner.run_population`). Members: every KL choice x beta x seed of ``config.sampled``
(grpo_jax/configs/answer_level.py), one vmapped program.

Exact evaluation: each member's answer distribution on the answer trees of the training and
the held-out prompts (rl/answer_tree.py `answer_probs`), summarised against the per-node
target of its beta and direction (`answer_level.summarize_members`; `target_direction`),
before training (every member is the reference) and after each of ``eval_steps``. Each
evaluation step ends one *segment*: one `run_population` call with ``train.num_steps`` that
step, in one run directory; ``train.num_steps`` is not computational, so the next call
resumes from the checkpoint the previous one saved at its last step. The evaluations are
saved as they come (``sampled_evaluations.json``), so a rerun after an interruption skips
the segments already evaluated whose checkpoint the run has passed, and resumes the rest.

Writes ``<workdir>/sampled.json`` (cells, evaluations, history), ``<workdir>/sampled.md``
(study/report/answer_level.py `sampled_markdown`); the run directory is
``<workdir>/sampled``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from grpo_jax.run import checkpoint, jsonio, runner
from grpo_jax.study import answer_level
from grpo_jax.tasks import number_text

# KL estimators in the loss by the KL whose gradient theirs is in expectation on pi_old's
# samples: k3's (1 - ref/pi) grad log pi averages to grad KL(ref || pi), k2's
# (log pi - log ref) grad log pi to grad KL(pi || ref).
TARGET_DIRECTIONS = {
    "exact_fwd": "forward",
    "k3": "forward",
    "exact_rev": "reverse",
    "k2": "reverse",
}
EVALUATIONS_FILE = "sampled_evaluations.json"
SPLITS = ("train", "held_out")


def target_direction(kl_choice: str) -> str:
    """ "forward" or "reverse": the per-node target a member of ``kl_choice`` trains towards
    (`TARGET_DIRECTIONS`; the KL must be in the loss)."""
    estimator, _, placement = kl_choice.partition("/")
    if placement != "loss" or estimator not in TARGET_DIRECTIONS:
        raise ValueError(
            f"sampled answer-level members need a KL in the loss of "
            f"{', '.join(TARGET_DIRECTIONS)}; got {kl_choice!r}"
        )
    return TARGET_DIRECTIONS[estimator]


def cells_of(config) -> list[dict[str, Any]]:
    """One member per KL choice x beta x seed of ``config`` (``config.sampled``)."""
    s = config.sampled
    for choice in s.kl_choices:
        target_direction(choice)
    return [
        {"loss.kl_choice": str(c), "loss.beta": float(b), "train.seed": int(config.seed) + k}
        for c in s.kl_choices
        for b in config.betas
        for k in range(int(s.seeds))
    ]


def evaluate(answers: Mapping[str, np.ndarray], cells, trees, tables) -> dict[str, list]:
    """Per split, `answer_level.summarize_members` of the members' answer distributions
    ``answers[split] [S, N, 101]`` against their per-node targets, with each member's KL
    choice and seed."""
    exact = {"forward": "exact_fwd/loss", "reverse": "exact_rev/loss"}
    targets = [
        {
            "loss.kl_choice": exact[target_direction(c["loss.kl_choice"])],
            "loss.beta": c["loss.beta"],
        }
        for c in cells
    ]
    out = {}
    for split in SPLITS:
        rows = answer_level.summarize_members(answers[split], targets, tables[split], trees[split])
        out[split] = [
            dict(row, kl_choice=c["loss.kl_choice"], seed=c["train.seed"])
            for row, c in zip(rows, cells)
        ]
    return out


def _reference_answers(trees, cfg, params, members: int) -> dict[str, np.ndarray]:
    """Every member before training: the reference's answers, ``[S, N, 101]`` per split."""
    one = jax.tree.map(lambda x: x[None], params)
    return {
        split: np.repeat(answer_level.member_answers(one, trees[split], cfg), members, axis=0)
        for split in SPLITS
    }


def _saved_evaluations(path: str, cells) -> dict[int, dict]:
    """The evaluations a previous run of the same cells saved, by step ({} if none)."""
    if not os.path.exists(path):
        return {}
    saved = jsonio.read_json(path)
    if saved.get("cells") != [dict(c) for c in cells]:
        return {}
    return {int(e["step"]): e for e in saved.get("evaluations", [])}


def _check_steps(steps: Sequence[int], every: int) -> None:
    if not steps or any(b <= a for a, b in zip(steps, steps[1:])) or steps[0] < 1:
        raise ValueError(f"config.sampled.eval_steps {tuple(steps)}: increasing steps >= 1")
    if len(steps) > 1 and every < 1:
        raise ValueError(
            "config.sampled.checkpoint_every_chunks must be >= 1: each evaluation step after "
            "the first resumes the run from its checkpoint"
        )


def run_sampled(
    config,
    make_grpo_config: Callable[[Any, int], Any],
    workdir: str,
    loaded=None,
    log=print,
) -> dict[str, Any]:
    """Stage 2 (module docstring). ``make_grpo_config(config, num_steps)`` is
    grpo_jax/configs/answer_level.py's `sampled_grpo_config`; ``loaded``:
    `answer_level.load(config, new_tokens=2)` if already done. Returns what sampled.json
    holds."""
    from grpo_jax.study.report import (  # pylint: disable=import-outside-toplevel
        answer_level as report,
    )

    t0 = time.time()
    cfg, params, train_tree, held_tree = loaded or answer_level.load(config, new_tokens=2)
    trees = {"train": train_tree, "held_out": held_tree}
    tables = {s: answer_level.reference_tables(trees[s], cfg, params) for s in SPLITS}
    task = number_text.from_tree(train_tree)
    cells = cells_of(config)
    steps = [int(s) for s in config.sampled.eval_steps]
    _check_steps(steps, int(config.sampled.checkpoint_every_chunks))
    os.makedirs(workdir, exist_ok=True)
    run_dir = os.path.join(workdir, "sampled")
    progress = os.path.join(workdir, EVALUATIONS_FILE)
    saved = _saved_evaluations(progress, cells)
    passed = checkpoint.latest_step(os.path.join(run_dir, "checkpoints")) or 0
    answers = _reference_answers(trees, cfg, params, len(cells))
    evaluations = [dict(step=0, **evaluate(answers, cells, trees, tables))]
    log(f"Stage 2: {len(cells)} members; reference evaluated in {time.time() - t0:.0f} s")
    history, compile_s = {}, 0.0
    for k, n in enumerate(steps):
        if n in saved and passed >= n and k < len(steps) - 1:
            evaluations.append(saved[n])  # evaluated by an earlier run, which went past it
            log(f"step {n}: evaluated by an earlier run (its checkpoint is at {passed})")
            continue
        grpo_config = make_grpo_config(config, n)
        out = runner.run_population(
            grpo_config, cells, run_dir, ref_params=params, task=task, model_config=cfg, log=log
        )
        compile_s += out.compile_s
        answers = {
            s: answer_level.member_answers(out.state.params, trees[s], out.setup.model)
            for s in SPLITS
        }
        history, out = out.history, None  # the population goes before the next one is built
        evaluations.append(dict(step=n, **evaluate(answers, cells, trees, tables)))
        jsonio.write_json_atomic(progress, {"cells": cells, "evaluations": evaluations[1:]})
        mean = lambda split, key: np.mean([m[key] for m in evaluations[-1][split]])
        log(
            f"step {n}: reward {mean('train', 'reward'):.3f}, TV to target "
            f"{mean('train', 'tv_to_target'):.3f} (held out {mean('held_out', 'reward'):.3f}, "
            f"{mean('held_out', 'tv_to_target'):.3f}); {time.time() - t0:.0f} s"
        )
    spec = str(config.sampled.trainable)
    result = dict(
        cells=cells,
        evaluations=evaluations,
        history={k: np.asarray(v).tolist() for k, v in history.items()},
        logged_steps=runner.logged_steps(steps[-1], int(config.sampled.log_every_steps)),
        trainable=spec,
        trainable_params=answer_level.trainable_count(spec, cfg, params, grpo_config),
        compile_s=compile_s,
        seconds=time.time() - t0,
    )
    jsonio.write_json_atomic(os.path.join(workdir, "sampled.json"), result)
    jsonio.write_text_atomic(
        os.path.join(workdir, "sampled.md"), report.sampled_markdown(result, config)
    )
    return result
