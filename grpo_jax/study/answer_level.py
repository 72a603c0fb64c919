"""The real model at answer level: closed-form predictions (Stage 0) and exact-gradient
training against them (Stage 1).

**Stage 0.** For each prompt, the model's exact lumped answer tree (tasks/answer_tree.py:
the root's 10 digits + "other", then 11 symbols after each digit) and the 0/1 reward give
four closed-form policies along beta, per direction:

* ``answer`` level: the maximiser of E[R] - beta D over *answers* (the sequence optimum,
  tasks/sequence_optima.py `sequence_optimum`), what a KL on whole answers would reach;
* ``node`` level: the per-node target of the exact KL per token in the loss
  (`per_node_optimum`), what GRPO with ``exact_*/loss`` reaches on a policy that can put
  any mass anywhere, and what Stage 1 trains towards.

At matched reward (each prompt's r* = E_ref[R] + f (1 - E_ref[R]) for the declared
fractions f, beta found by bisection per direction), the outcomes (`outcomes`) of forward
and reverse are compared. A 0/1 reward makes every answer-level optimum a reweighting of
the valid and the invalid answers as two blocks (ratios within each block kept), so at
matched reward the two *answer-level* optima coincide whatever Z0 (checked, not assumed:
the table prints their difference); at node level they need not.

**Stage 1.** `train` runs exact-gradient training (rl/answer_tree.py) through the shared
population loop (`runner.run_population`): both directions x the declared betas, one
population per trainable subset; `evaluate` reads each member's exact answer distribution
on the training and the held-out prompts and sets it against the per-node target at its
beta (total variation: the capacity diagnostic).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from grpo_jax.models import (
    answer_tree as tree_model,
    gguf,
    model as model_lib,
    tokenizer,
    trainable,
)
from grpo_jax.rl import answer_tree as tree_rl
from grpo_jax.run import build, runner
from grpo_jax.tasks import answer_tree as tree_task, sequence_optima

LEVELS = ("answer", "node")
DIRECTIONS = ("forward", "reverse")
OUTCOMES = {
    "off_target": "mass on zero-reward answers (invalid numbers and other)",
    "other": "mass on no number at all",
    "valid_entropy": "entropy of the shares among valid answers (nats)",
    "valid_tv_to_ref": "TV between the valid answers' shares and the reference's",
    "answer_entropy": "entropy of the whole answer distribution (nats)",
}
_V = tree_task.NUM_SYMBOLS

# One compiled program per (task, model), whatever the caller (tasks and model configs are
# hashable): evaluating a population after each of several segments compiles it once.
_tree_logits = jax.jit(tree_rl.tree_logits, static_argnums=(0, 1))
_answer_probs = jax.jit(tree_rl.answer_probs, static_argnums=(0, 1))


def reference_tables(task, model, params) -> list[np.ndarray]:
    """The reference's lumped conditionals, float64: ``[root [N, 1, 11], second [N, 11,
    11]]`` (the row after "other" is uniform; nothing depends on it)."""
    root, second = _tree_logits(task, model, params)
    digits = task.arrays()["digit_ids"]
    l0 = np.asarray(tree_rl.lumped(root, digits), np.float64)
    l1 = np.asarray(tree_rl.lumped(second, digits), np.float64)
    p0, p1 = np.exp(l0), np.exp(l1)
    p0 /= p0.sum(-1, keepdims=True)
    p1 /= p1.sum(-1, keepdims=True)
    after_other = np.full(p1.shape[:1] + (1, _V), 1.0 / _V)
    return [p0[:, None, :], np.concatenate([p1, after_other], axis=1)]


def leaves(tables, rewards, beta, direction: str, level: str) -> np.ndarray:
    """Leaf probabilities ``[..., N, 11, 11]`` of the closed form at ``level`` (``beta`` a
    number or ``[B]``) for reference ``tables`` and ``rewards [N, 11, 11]``."""
    r = np.asarray(rewards, np.float64).reshape(rewards.shape[:-2] + (-1,))
    if level == "answer":
        joint = sequence_optima.joint_from_tables(tables)
        out = sequence_optima.sequence_optimum(r, joint, beta, direction)
    elif level == "node":
        out = sequence_optima.joint_from_tables(
            sequence_optima.per_node_optimum(r, tables, beta, direction)
        )
    else:
        raise ValueError(f"level {level!r}; valid: {', '.join(LEVELS)}")
    return out.reshape(out.shape[:-1] + (_V, _V))


def outcomes(answer_probs: np.ndarray, valid: np.ndarray, ref_probs: np.ndarray) -> dict:
    """`OUTCOMES` of one answer distribution ``[101]`` (100 = other) for ``valid [100]``,
    against the reference's ``[101]``."""
    p, ref = np.asarray(answer_probs, np.float64), np.asarray(ref_probs, np.float64)
    v = np.asarray(valid, bool)
    share, ref_share = p[:100][v] / p[:100][v].sum(), ref[:100][v] / ref[:100][v].sum()
    ent = lambda q: float(-np.sum(q[q > 0] * np.log(q[q > 0])))
    return dict(
        off_target=float(1.0 - p[:100][v].sum()),
        other=float(p[100]),
        valid_entropy=ent(share),
        valid_tv_to_ref=float(0.5 * np.abs(share - ref_share).sum()),
        answer_entropy=ent(p),
    )


def expected_reward(leaf_probs, rewards) -> np.ndarray:
    return np.sum(leaf_probs * rewards, axis=(-2, -1))


def matched_beta(tables, rewards, target, direction: str, level: str, iters: int = 60):
    """Per prompt, the beta whose closed form at ``level`` has expected reward ``target
    [N]`` (bisection on log beta in [1e-4, 1e4]; reward falls as beta grows)."""
    lo, hi = np.full(len(target), -4.0), np.full(len(target), 4.0)
    n = np.arange(len(target))
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        r = np.array(
            [
                expected_reward(
                    leaves(
                        [t[i : i + 1] for t in tables],
                        rewards[i : i + 1],
                        10 ** mid[i],
                        direction,
                        level,
                    )[0],
                    rewards[i],
                )
                for i in n
            ]
        )
        lo, hi = np.where(r > target, mid, lo), np.where(r > target, hi, mid)
    return 10 ** (0.5 * (lo + hi))


def predict(task, tables, fractions: Sequence[float]) -> list[dict[str, Any]]:
    """Stage 0: one row per prompt and fraction: Z0, E_ref[R], and per level and direction
    the matched beta and the outcomes, with forward - reverse per level."""
    rewards = tree_task.tree_rewards(task.valid_table())
    ref_leaves = sequence_optima.joint_from_tables(tables).reshape(-1, _V, _V)
    ref_answers = tree_task.answer_distribution(ref_leaves)
    ref_r = expected_reward(ref_leaves, rewards)
    valid = task.valid_table()
    rows = []
    for f in fractions:
        target = ref_r + f * (1.0 - ref_r)
        found = {}
        for level in LEVELS:
            for d in DIRECTIONS:
                beta = matched_beta(tables, rewards, target, d, level)
                probs = np.stack(
                    [
                        leaves(
                            [t[i : i + 1] for t in tables], rewards[i : i + 1], beta[i], d, level
                        )[0]
                        for i in range(len(beta))
                    ]
                )
                found[level, d] = (beta, tree_task.answer_distribution(probs))
        for i in range(len(target)):
            row = dict(
                prompt=task.texts[i] if task.texts else str(i),
                fraction=float(f),
                z0=float(1.0 - ref_r[i]),
                ref_reward=float(ref_r[i]),
                ref=outcomes(ref_answers[i], valid[i], ref_answers[i]),
            )
            for (level, d), (beta, answers) in found.items():
                row[f"{level}/{d}"] = dict(
                    beta=float(beta[i]), **outcomes(answers[i], valid[i], ref_answers[i])
                )
            for level in LEVELS:
                row[f"{level}/delta"] = {
                    k: row[f"{level}/forward"][k] - row[f"{level}/reverse"][k] for k in OUTCOMES
                }
            rows.append(row)
    return rows


def target_answers(tables, rewards, beta: float, direction: str) -> np.ndarray:
    """``[N, 101]``: the per-node target's answer distribution at ``beta`` (what an
    ``exact_*/loss`` member trained at ``beta`` reaches at full capacity)."""
    return tree_task.answer_distribution(leaves(tables, rewards, beta, direction, "node"))


def tv(p, q) -> np.ndarray:
    return 0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum(-1)


def member_answers(params_stacked, task, model) -> np.ndarray:
    """``[S, N, 101]`` exact answer distributions of every member on ``task``'s prompts."""
    n = jax.tree.leaves(params_stacked)[0].shape[0]
    member = lambda m: jax.tree.map(lambda x: x[m], params_stacked)
    return np.stack(
        [np.asarray(_answer_probs(task, model, member(m)), np.float64) for m in range(n)]
    )


def summarize_members(
    answers: np.ndarray, cells: Sequence[Mapping[str, Any]], tables, task
) -> list[dict[str, Any]]:
    """Per member: its direction and beta, mean reward, mean outcomes and the mean TV to its
    per-node target over ``task``'s prompts."""
    rewards = tree_task.tree_rewards(task.valid_table())
    ref_answers = tree_task.answer_distribution(
        sequence_optima.joint_from_tables(tables).reshape(-1, _V, _V)
    )
    valid = task.valid_table()
    out = []
    for m, cell in enumerate(cells):
        direction = "forward" if cell["loss.kl_choice"].startswith("exact_fwd") else "reverse"
        beta = float(cell["loss.beta"])
        target = target_answers(tables, rewards, beta, direction)
        per = [outcomes(answers[m, i], valid[i], ref_answers[i]) for i in range(len(valid))]
        out.append(
            dict(
                direction=direction,
                beta=beta,
                reward=float(np.mean(1.0 - np.array([o["off_target"] for o in per]))),
                tv_to_target=float(np.mean(tv(answers[m], target))),
                target_reward=float(np.mean(np.sum(target[:, :100] * valid, -1))),
                **{k: float(np.mean([o[k] for o in per])) for k in OUTCOMES},
            )
        )
    return out


# ------------------------------------------------------------------------------------------
# Stage 1: exact-gradient training through the population loop
# ------------------------------------------------------------------------------------------


def with_trunk(task, model, params, spec: str):
    """``task`` with the constant trunk of trainable subset ``spec`` (`trainable.frozen_depth`
    blocks computed once from ``params``), or as it is when nothing before the first block
    is frozen."""
    depth = trainable.frozen_depth(spec, model)
    if not depth:
        return task
    a = task.arrays()
    hidden = tree_model.trunk(model, params, a["prompts"], a["lengths"], a["digit_ids"], depth)
    constants = tuple(tree_task.Constant(np.asarray(h, np.float32)) for h in hidden)
    return dataclasses.replace(task, depth=depth, trunk=constants)


def load(config, new_tokens: int = 1):
    """``(model config, params, training task, held-out task)`` of ``config``'s GGUF model
    (SmolLM2-135M-Instruct unless ``gguf_path``) and prompts; the model holds the longest
    prompt and ``new_tokens`` more (1: the answer tree's digit; 2: a sampled answer)."""
    path = config.gguf_path or gguf.fetch_smollm2(config.cache_dir or None)
    tok = tokenizer.from_gguf(path)
    tasks = [
        tree_task.make(tok, config.train_prompts),
        tree_task.make(tok, config.held_out_prompts),
    ]
    max_len = max(t.prompt_len for t in tasks) + int(new_tokens)
    cfg, params, _ = gguf.load(path, max_len=max_len, dtype=config.dtype)
    return cfg, params, tasks[0], tasks[1]


def train_subset(config, grpo_config, spec: str, loaded, workdir: str, log=print) -> dict:
    """Stage 1 for one trainable subset: the population of `cells` (``grpo_config``, from
    grpo_jax/configs/answer_level.py) trained in ``workdir``; returns ``{"train": members,
    "held_out": members}`` (`summarize_members`) and the per-step history."""
    cfg, params, train_task, held_task = loaded
    cells = [dict(c) for c in cells_of(config)]
    out = runner.run_population(
        grpo_config,
        cells,
        workdir,
        ref_params=params,
        task=with_trunk(train_task, cfg, params, spec),
        model_config=cfg,
        log=log,
    )
    result = {"history": {k: np.asarray(v).tolist() for k, v in out.history.items()}}
    for name, task in (("train", train_task), ("held_out", held_task)):
        trunked = with_trunk(task, cfg, params, spec)
        answers = member_answers(out.state.params, trunked, out.setup.model)
        result[name] = summarize_members(
            answers, cells, reference_tables(trunked, cfg, params), task
        )
    return result


def cells_of(config) -> list[dict[str, Any]]:
    """One member per (direction, beta) of ``config`` (grpo_jax/configs/answer_level.py)."""
    return [
        {"loss.kl_choice": d, "loss.beta": float(b)}
        for d in config.directions
        for b in config.betas
    ]


def closed_form_curve(tables, task, betas) -> dict[str, dict[str, np.ndarray]]:
    """Per direction, the per-node targets' mean reward and mean outcomes over ``task``'s
    prompts along ``betas`` (`summarize_members` of the closed forms)."""
    rewards = tree_task.tree_rewards(task.valid_table())
    out = {}
    for d in DIRECTIONS:
        cells = [
            {"loss.kl_choice": "exact_fwd" if d == "forward" else "exact_rev", "loss.beta": b}
            for b in betas
        ]
        answers = np.stack([target_answers(tables, rewards, b, d) for b in betas])
        rows = summarize_members(answers, cells, tables, task)
        out[d] = {k: np.asarray([r[k] for r in rows]) for k in ("reward", *OUTCOMES)}
    return out


def at_reward(rewards, values, target) -> float:
    """``values`` linearly interpolated at reward ``target`` (rewards sorted; NaN outside
    their range)."""
    r, v = np.asarray(rewards, float), np.asarray(values, float)
    order = np.argsort(r)
    r, v = r[order], v[order]
    if not r[0] <= target <= r[-1]:
        return float("nan")
    return float(np.interp(target, r, v))


def contrast(members: Sequence[Mapping[str, Any]], curve, outcome: str, config) -> dict:
    """Forward - reverse in ``outcome`` at the matched reward r* (the middle of the two
    directions' common reward range), trained and closed-form, and the decision rule of
    grpo_jax/configs/answer_level.py."""
    by = {
        d: sorted((m for m in members if m["direction"] == d), key=lambda m: m["beta"])
        for d in DIRECTIONS
    }
    rs = {d: [m["reward"] for m in by[d]] for d in DIRECTIONS}
    lo, hi = max(min(r) for r in rs.values()), min(max(r) for r in rs.values())
    if lo > hi:
        return dict(r_star=float("nan"), decision="not comparable (no common reward range)")
    r_star = 0.5 * (lo + hi)
    trained = {d: at_reward(rs[d], [m[outcome] for m in by[d]], r_star) for d in DIRECTIONS}
    closed = {d: at_reward(curve[d]["reward"], curve[d][outcome], r_star) for d in DIRECTIONS}
    near = {d: min(by[d], key=lambda m: abs(m["reward"] - r_star)) for d in DIRECTIONS}
    reached = all(near[d]["tv_to_target"] <= config.capacity_tv for d in DIRECTIONS)
    delta, closed_delta = (
        trained["forward"] - trained["reverse"],
        closed["forward"] - closed["reverse"],
    )
    if not reached:
        decision = "capacity-limited"
    else:
        decision = "agrees" if abs(delta - closed_delta) <= config.margin else "differs"
    return dict(
        r_star=r_star,
        trained=trained,
        closed=closed,
        delta=delta,
        closed_delta=closed_delta,
        reached=reached,
        decision=decision,
    )


CURVE_BETAS = tuple(float(b) for b in np.geomspace(0.02, 5.0, 41))


def run_predictions(config, workdir: str, loaded=None, log=print) -> list[dict]:
    """Stage 0 on the training and held-out prompts: writes ``predictions.json``,
    ``predictions.md`` (the table at the middle fraction) and ``predictions.png``."""
    t0 = time.time()
    cfg, params, train_task, held_task = loaded or load(config)
    rows = []
    for split, task in (("train", train_task), ("held_out", held_task)):
        for r in predict(task, reference_tables(task, cfg, params), config.fractions):
            rows.append(dict(r, split=split))
    os.makedirs(workdir, exist_ok=True)
    _write(workdir, "predictions.json", json.dumps(rows, indent=1))
    write_reports(config, workdir, parts=("predictions",))
    log(f"Stage 0: {len(rows)} rows in {time.time() - t0:.1f} s -> {workdir}/predictions.*")
    return rows


def run_training(config, make_grpo_config, workdir: str, loaded=None, log=print) -> dict:
    """Stage 1: one population per trainable subset (``config.trainable``) in
    ``<workdir>/<subset>``; ``make_grpo_config(config, subset, num_prompts)`` is
    grpo_jax/configs/answer_level.py's `grpo_config`. Writes ``training.json``,
    ``training.md`` and ``training.png``."""
    loaded = loaded or load(config)
    cfg, params, train_task, _ = loaded
    curves = closed_form_curve(reference_tables(train_task, cfg, params), train_task, CURVE_BETAS)
    results = {}
    for spec in config.trainable:
        t0 = time.time()
        grpo_config = make_grpo_config(config, spec, len(train_task.prompts))
        sub = os.path.join(workdir, spec.replace(":", "_"))
        res = train_subset(config, grpo_config, spec, loaded, sub, log=log)
        res["trainable_params"] = trainable_count(spec, cfg, params, grpo_config)
        res["seconds"] = time.time() - t0
        res["contrast"] = contrast(res["train"], curves, config.primary_outcome, config)
        results[spec] = res
        log(f"{spec}: {res['contrast']['decision']} in {res['seconds']:.0f} s")
    _write(workdir, "training.json", json.dumps({"results": results}, indent=1, default=float))
    write_reports(config, workdir, parts=("training",), curves=curves)
    return results


def write_reports(
    config, workdir: str, parts=("predictions", "training"), loaded=None, curves=None
):
    """``<part>.md`` and ``<part>.png`` from ``<part>.json`` in ``workdir``, for each of
    ``parts`` whose json is there (``--stage=report`` redraws them without rerunning);
    the training figure's closed-form curves are computed from the model unless given."""
    from grpo_jax.study.report import (
        answer_level as report,
    )  # pylint: disable=import-outside-toplevel

    path = lambda name: os.path.join(workdir, name)
    if "predictions" in parts and os.path.exists(path("predictions.json")):
        with open(path("predictions.json")) as fh:
            rows = json.load(fh)
        middle = sorted(config.fractions)[len(config.fractions) // 2]
        _write(workdir, "predictions.md", report.predictions_markdown(rows, middle))
        report.predictions_figure(rows, path("predictions.png"))
    if "training" in parts and os.path.exists(path("training.json")):
        with open(path("training.json")) as fh:
            results = json.load(fh)["results"]
        if curves is None:
            cfg, params, task, _ = loaded or load(config)
            curves = closed_form_curve(reference_tables(task, cfg, params), task, CURVE_BETAS)
        _write(workdir, "training.md", report.training_markdown(results, config))
        report.training_figure(results, curves, config, path("training.png"))


def trainable_count(spec, cfg, params, grpo_config) -> int:
    """Trainable parameters per member of subset ``spec`` under ``grpo_config``'s policy."""
    policy = build.policy_model_config(grpo_config, cfg)
    if policy.lora is not None:
        params = model_lib.add_adapters(policy, params, jax.random.PRNGKey(0))
    return trainable.count(spec, policy, params)[0]


def _write(workdir: str, name: str, text: str) -> None:
    with open(os.path.join(workdir, name), "w") as fh:
        fh.write(text)
