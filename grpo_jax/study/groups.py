"""The study's grid, group runner and records (grpo_jax/configs/study.py declares the design).

    cells = configs.study.cells(study_config)           # the sweep (grpo_jax/configs/study.py)
    records = sweep.run_sweep(cells, study.run_group, ...)

One group = one (modality, policy class): every arm x strength x seed x replicate of it is a
member of one vmapped population (the KL choice is a `lax.switch` index, the entropy bonus
and beta are leaves), so a group is one compiled program. Arms:

  "exact_fwd/loss", "exact_rev/loss"     the primary contrast (KL choice, beta = strength)
  "k3/loss", "k2/loss", "k1/reward"...   the secondary contrast and Q2's arms
  "entropy"                              the control: an entropy bonus, no KL (beta = 0,
                                         loss.entropy_coef = strength)

Every member is evaluated exactly from its final policy over the 64 answers (a fork task:
over its completions, `sequence_vectors`) (`one_token_outcomes`); a record is one member:

  {"policy", "modality", "multimodal", "separation", "num_modes", "arm", "strength", "seed",
   "replicate", "start", "final": {outcome: float}, "tv_to_optimum": float | None,
   "zero_grad_frac": float, "policy_probs": [A] (final), "history": {"step", "reward",
   "mode_shares"}}
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from typing import Mapping, Sequence

import jax
import ml_collections
import numpy as np


from grpo_jax.run import build, config_utils, runner, sweep
from grpo_jax.core import tables
from grpo_jax.core.checks import check_name
from grpo_jax.core.kl_choice import ENTROPY_ARM
from grpo_jax.models import policies
from grpo_jax.tasks import enumeration, sequence_optima
from grpo_jax.tasks.bandit import bandit_optimum

# Cells of one group differ only in these: the population's members.
GROUP_KEYS = build.VMAPPABLE_KEYS + ("eval.arm", "eval.replicate", "eval.seed")


# ------------------------------------------------------------------------------------------
# Exact outcomes of a one-token policy
# ------------------------------------------------------------------------------------------


def task_vectors(task) -> dict[str, np.ndarray]:
    """Per-answer constants of a bandit: reward [A], reference [A], zero-reward, between-mode
    and best-answer masks [A], mode labels [A] and the reference's mode shares [K]. For the
    fork task an "answer" is a (prompt, completion) pair, weighted by the prompt's
    probability (`sequence_vectors`)."""
    if task.name == "fork":
        return sequence_vectors(task)
    a = task.num_tokens
    y = np.arange(a, dtype=np.float64)
    reward = np.asarray(task.reward_vector(), np.float64)[:a]
    ref = np.asarray(task.table()["answer_probs"], np.float64)[0]
    centres = np.asarray(task.centres)
    dist = np.abs(y[:, None] - centres[None, :]).min(axis=1)
    between = (dist > task.sigma) & (y > centres.min()) & (y < centres.max())
    labels = np.asarray(task.table()["answer_modes"])[0]
    ref_shares = np.asarray([ref[labels == k].sum() for k in range(task.num_modes)])
    return {
        "reward": reward,
        "ref": ref / ref.sum(),
        "zero": reward <= 0,
        "between": between,
        "best": reward >= reward.max(),
        "labels": labels,
        "ref_shares": ref_shares,
    }


def sequence_vectors(task) -> dict[str, np.ndarray]:
    """`task_vectors` of a fork task over its Np x V^T (prompt, completion) pairs: the
    reference is ``w_x ref(y | x)``, so the outcomes of a joint ``w_x pi(y | x)`` are the
    prompt-averaged sequence outcomes (KLs and off-target mass exactly; the entropy plus the
    constant H(x); pass@k from the prompt-averaged best mass, exact for one prompt, as the
    study uses). Nothing lies "between" branches (mask all False); the best answers are
    the target branch's paths; labels are branches."""
    w = np.asarray(task.table()["prompt_probs"], np.float64)
    reward = task.rewards_np().ravel()
    ref = (w[:, None] * task.reference_np()).ravel()
    labels = np.asarray(task.table()["answer_modes"]).ravel()
    return {
        "reward": reward,
        "ref": ref / ref.sum(),
        "zero": reward <= 0,
        "between": np.zeros(reward.shape, bool),
        "best": reward >= reward.max(),
        "labels": labels,
        "ref_shares": np.asarray([ref[labels == k].sum() for k in range(task.num_modes)]),
    }


def one_token_outcomes(logp: np.ndarray, vec: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Exact outcomes of a distribution over the answers given by its log-probabilities
    `logp` [A] (float64, normalised here; -inf allowed). Log-probabilities, not
    probabilities, so that a narrow policy's forward KL stays finite however small its
    mass on the reference's support."""
    logp = np.asarray(logp, np.float64)
    logp = logp - np.logaddexp.reduce(logp)
    p = np.exp(logp)
    ref = vec["ref"]
    reward = float(p @ vec["reward"])
    ref_reward = float(ref @ vec["reward"])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ref = np.log(ref)
        kl_rev = float(np.sum(np.where(p > 0, p * (logp - log_ref), 0.0)))
        kl_fwd = float(np.sum(np.where(ref > 0, ref * (log_ref - logp), 0.0)))
        entropy = float(-np.sum(np.where(p > 0, p * logp, 0.0)))
    p_best = float(p[vec["best"]].sum())
    shares = np.asarray([p[vec["labels"] == k].sum() for k in range(len(vec["ref_shares"]))])
    gain = reward - ref_reward
    return {
        "reward": reward,
        "exact_kl_rev": kl_rev,
        "exact_kl_fwd": kl_fwd,
        "entropy": entropy,
        "off_target": float(p[vec["zero"]].sum()),
        "between": float(p[vec["between"]].sum()),
        "pass_at_1": p_best,
        "pass_at_4": 1.0 - (1.0 - p_best) ** 4,
        "fwd_kl_per_reward": kl_fwd / gain if gain > 0.01 else float("nan"),
        # = stats.mode_coverage(shares, ref_shares, tau=0, eps=0.05), in float64: the share
        # of the reference's modes that keep >= 5% of their reference mass.
        "mode_coverage": float(np.mean(shares >= 0.05 * vec["ref_shares"])),
    }


def final_logprobs(model, params, task=None) -> np.ndarray:
    """[S, A] answer log-probabilities of a population of one-token policies over the
    ordinary tokens, normalised in float64 from the float32 logits; for a
    `SequenceTabularPolicy`, over its (prompt, completion) pairs (uniform prompts, as the
    fork task's), [S, Np V^T]; for a transformer on a fork `task`, the same pairs by
    enumeration (`tasks.enumeration.enumerated_logprobs`, specials banned as the sampler
    bans them), weighted by the prompts' probabilities."""
    if not policies.is_policy(model):
        logp = jax.jit(jax.vmap(lambda p: enumeration.enumerated_logprobs(model, p, task)))(params)
        w = np.log(np.asarray(task.prompt_probs(), np.float64))[None, :, None]
        logp = np.asarray(logp, np.float64)
        logp = logp - np.logaddexp.reduce(logp, axis=-1, keepdims=True) + w
        return logp.reshape(logp.shape[0], -1)
    if isinstance(model, policies.SequenceTabularPolicy):
        a, n = len(model.support), len(model.prompts)
        z = [np.asarray(params[f"t{t}"], np.float64)[..., :a] for t in range(model.length)]
        logp = [x - np.logaddexp.reduce(x, axis=-1, keepdims=True) for x in z]
        joint = tables.log_joint_from_tables(logp)  # [S, Np, A^T]
        return (joint - np.log(n)).reshape(joint.shape[0], -1)
    dummy = np.zeros((1, 1), np.int32)
    logits = jax.vmap(lambda p: model.completion_logits(p, dummy, dummy)[0, 0])(params)
    z = np.asarray(logits, np.float64)[:, list(model.support)]
    return z - np.logaddexp.reduce(z, axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------
# Records and the group runner
# ------------------------------------------------------------------------------------------


def arm_targets(task, betas, direction: str, vec=None, level: str = "node") -> np.ndarray:
    """[len(betas), A] closed-form targets in `direction` over the answers of
    `task_vectors`: the bandit's optima; for the fork task, prompt-weighted, the per-node
    targets of the exact KL in the loss (`level` "node", the primary arms' targets) or the
    sequence-level optima (`level` "sequence"; tasks.sequence_optima)."""
    vec = task_vectors(task) if vec is None else vec
    if task.name != "fork":
        return bandit_optimum(vec["reward"], vec["ref"], np.asarray(betas), direction)
    check_name("level", level, ("node", "sequence"))
    w = np.asarray(task.table()["prompt_probs"], np.float64)[:, None]
    ref = task.reference_np()
    ref_tables = sequence_optima.conditionals(ref, task.num_tokens, task.length)
    r = task.rewards_np()

    betas = np.asarray(betas, np.float64)
    if level == "sequence":
        joints = sequence_optima.sequence_optimum(r, ref, betas, direction)
    else:
        node_tables = sequence_optima.per_node_optimum(r, ref_tables, betas, direction)
        joints = sequence_optima.joint_from_tables(node_tables)  # [N, Np, V^T]
    return (w[None] * joints).reshape(len(betas), -1)


# The closed-form target of each arm that has one: (direction, level of `arm_targets`). The
# KL in the loss reaches the per-node targets; k1 in the reward (the sequence reverse KL's
# gradient) and the exact forward KL along reference samples reach the sequence optima.
ARM_TARGETS = {
    "exact_fwd/loss": ("forward", "node"),
    "exact_rev/loss": ("reverse", "node"),
    "k1/reward": ("reverse", "sequence"),
    "exact_fwd/ref_samples": ("forward", "sequence"),
}


def _optimum(task, vec, arm: str, beta: float) -> np.ndarray | None:
    if arm not in ARM_TARGETS or beta <= 0:
        return None
    direction, level = ARM_TARGETS[arm]
    return arm_targets(task, [beta], direction, vec, level)[0]


def make_records(config, cells: Sequence[ml_collections.ConfigDict], result, vec) -> list[dict]:
    """One record per population member (see the module docstring)."""
    logp = final_logprobs(result.setup.model, result.state.params, result.task)
    probs = np.exp(logp)
    hist = result.history  # the logged steps, resumed or not
    steps = runner.logged_steps(int(config.train.num_steps), int(config.train.log_every_steps))
    if hist["reward_mean"].shape[1] != len(steps):
        raise ValueError(
            f"history has {hist['reward_mean'].shape[1]} steps; the config logs {len(steps)}"
        )
    idx = np.unique(np.linspace(0, len(steps) - 1, 20).round().astype(int))
    records = []
    for m, cell in enumerate(cells):
        arm = str(cell.eval.arm)
        strength = float(cell.loss.entropy_coef if arm == ENTROPY_ARM else cell.loss.beta)
        opt = (
            _optimum(result.task, vec, arm, float(cell.loss.beta))
            if config.policy != "gaussian"  # a transformer's: the capacity diagnostic
            else None
        )
        records.append(
            {
                "policy": config.policy,
                "modality": str(cell.eval.label),
                "multimodal": bool(cell.eval.multimodal),
                "separation": float(cell.eval.separation),
                "num_modes": int(result.task.num_modes),
                "arm": arm,
                "strength": strength,
                "seed": int(cell.eval.seed),  # pairs the arms; train.seed is the RNG's
                "train_seed": int(cell.train.seed),
                "replicate": int(cell.eval.replicate),
                "start": str(cell.init.start),
                "final": one_token_outcomes(logp[m], vec),
                "tv_to_optimum": None if opt is None else float(0.5 * np.abs(probs[m] - opt).sum()),
                "zero_grad_frac": float(np.mean(hist["zero_grad_skipped"][m])),
                "policy_probs": probs[m].tolist(),
                "history": {
                    "step": [steps[i] for i in idx],
                    "reward": np.asarray(hist["reward_mean"])[m, idx].tolist(),
                    "mode_shares": np.asarray(hist["mode_shares"])[m, idx].tolist(),
                },
            }
        )
    return records


def run_group(
    static_config, cells, workdir: str | None = None, log=print, keep_checkpoints: bool = False
) -> list[dict]:
    """`sweep.run_sweep` runner: one population per (modality, policy), evaluated exactly.

    Working files go to `<workdir>/groups/<hash>` (metrics, checkpoints); the checkpoints
    are deleted once the records exist (they serve only a mid-run resume) unless
    `keep_checkpoints`."""
    config = copy.deepcopy(cells[0])
    if keep_checkpoints:  # every checkpoint kept; not part of the cells' config (hash)
        config_utils.set_value(config, "train.max_to_keep", 0)
    workdir = workdir or static_config.eval.get("workdir", "") or tempfile.mkdtemp("study")
    members = [{k: config_utils.get_value(c, k) for k in build.VMAPPABLE_KEYS} for c in cells]
    group_dir = os.path.join(
        workdir, "groups", sweep.cell_hash({"static": static_config, "members": members})
    )
    result = runner.run_population(config, members, group_dir, log=log)
    records = make_records(config, cells, result, task_vectors(result.task))
    if not keep_checkpoints:  # the records hold what the report needs
        shutil.rmtree(os.path.join(group_dir, "checkpoints"), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(group_dir, "metrics.jsonl"))
    return records


run_group.vmappable_keys = GROUP_KEYS


def optimum_curves(task, betas=None, level: str = "node") -> dict[str, dict[str, list[float]]]:
    """Closed-form KL-regularised optima of a bandit (or a fork task's targets at `level`,
    `arm_targets`) over a fine beta grid, as outcome curves: {"forward" | "reverse":
    {outcome: [len(betas)]}} (the figure's dashed lines)."""
    betas = np.geomspace(0.005, 5.0, 80) if betas is None else np.asarray(betas)
    vec = task_vectors(task)
    out = {}
    for direction in ("forward", "reverse"):
        probs = arm_targets(task, betas, direction, vec, level)
        with np.errstate(divide="ignore"):
            rows = [one_token_outcomes(np.log(p), vec) for p in probs]
        out[direction] = {k: [r[k] for r in rows] for k in rows[0]}
    return out
