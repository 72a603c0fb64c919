"""The study's group runner and records: one vmapped GRPO population per (task, modality),
evaluated exactly, turned into the records `grpo_jax.report` reads.

`run_group(static_config, cells) -> list[record]` is a `sweep.run_sweep` runner: the cells
of one group differ only in `runner.VMAPPABLE_KEYS` (seed, beta, KL choice, ...), so they
train as one population of one compiled program. The reference of each (task, model,
pretraining) is pretrained once and cached under `<workdir>/references/<hash>`.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from grpo_jax import config_utils, evaluate, runner, sweep
from grpo_jax.kl_choice import KLChoice
from grpo_jax.tasks.bandit import bandit_optimum

VMAPPABLE_KEYS = runner.VMAPPABLE_KEYS


def _history(hist: Mapping[str, np.ndarray], member: int, max_points: int) -> dict:
    steps = np.asarray(hist["reward_mean"]).shape[1]
    idx = np.unique(np.linspace(0, steps - 1, min(max_points, steps)).round().astype(int))
    get = lambda k: np.asarray(hist[k])[member, idx]
    return {"step": (idx + 1).tolist(), "reward": get("reward_mean").tolist(),
            "exact_kl_rev": get("exact_kl_rev").tolist(),
            "exact_kl_fwd": get("exact_kl_fwd").tolist(), "entropy": get("entropy").tolist(),
            "mode_shares": get("mode_shares").tolist()}


def _bandit_record(task, evaluation, member: int, beta: float) -> dict[str, Any]:
    """Final policy, reference and the closed-form optima of E[R] - beta KL taken w.r.t. the
    *pretrained reference model's* probabilities."""
    ordinary = list(task.ordinary_ids)
    pol = np.exp(np.asarray(evaluation["logp"][member], np.float64)[0])
    ref = np.exp(np.asarray(evaluation["ref_logp"][member], np.float64)[0])
    comps = np.asarray(task.enumerate_completions())[:, 0]
    rewards = np.asarray(task.reward_vector())[comps]
    ref = ref / ref.sum()
    b = np.asarray([beta if beta > 0 else 1e-3])
    return {"final_policy": pol.tolist(), "reference": ref.tolist(),
            "tokens": [int(t) for t in ordinary],
            "optimum_reverse": bandit_optimum(rewards, ref, b, "reverse")[0].tolist(),
            "optimum_forward": bandit_optimum(rewards, ref, b, "forward")[0].tolist()}


def make_records(task, history: Mapping[str, np.ndarray], evaluation: Mapping[str, Any],
                 cells: Sequence[Mapping[str, Any]], *, task_label: str, modality: str,
                 multimodal: bool, ks: Sequence[int], max_points: int = 40) -> list[dict]:
    """`grpo_jax.report` records, one per member of a population: its task, its training
    `history` ({metric: [S, steps, ...]}) and its final `evaluation` (evaluate.py).

    cells: the per-member dicts given to run_population ("loss.kl_choice", "loss.beta",
    "train.seed"). The record's `kl_choice` is what the run did (`KLChoice.of`: "none" at
    beta 0). For a bandit (one prompt), adds {"bandit": {...}} (`_bandit_record`).
    """
    hist = history
    records = []
    for m, cell in enumerate(cells):
        beta = float(cell["loss.beta"])
        final = {k: float(evaluation[k][m]) for k in
                 ("reward", "exact_kl_rev", "exact_kl_fwd", "entropy", "mode_coverage")}
        final["pass_at_k"] = np.asarray(evaluation["pass_at_k"][m], float).tolist()
        final["mode_shares"] = np.asarray(evaluation["mode_shares"][m], float).tolist()
        rec = {"task": task_label, "modality": modality, "multimodal": bool(multimodal),
               "kl_choice": str(KLChoice.of(cell["loss.kl_choice"], beta)),
               "kl_choice_config": cell["loss.kl_choice"], "beta": beta,
               "seed": int(cell["train.seed"]), "final": final,
               "history": _history(hist, m, max_points), "ks": [int(k) for k in ks],
               "ref_mode_shares": np.asarray(evaluation["ref_mode_shares"][m], float).tolist(),
               "eval_method": evaluation["eval_method"],
               "nonfinite_updates": int(np.sum(np.asarray(hist["nonfinite"])[m]))}
        if task.name == "bandit" and "logp" in evaluation:
            rec["bandit"] = _bandit_record(task, evaluation, m, beta)
        records.append(rec)
    return records


def run_group(static_config, cells, workdir: str | None = None, log=print) -> list[dict]:
    """`sweep.run_sweep` runner: one vmapped GRPO population per group, evaluated exactly.

    static_config: the group's config without the vmappable keys; cells: full cell configs
    (a `configs/hypothesis.py`-style GRPO config with an `eval` section: task_label,
    modality, multimodal, ks, num_samples, workdir). Working files go to `workdir` (default
    `static_config.eval.workdir`, else a temporary directory): the reference under
    `references/<hash>`, the population's metrics and checkpoints under `groups/<hash>`.
    Returns one report record per cell (`make_records`).
    """
    config = cells[0]  # a full config: carries every key run_population needs
    workdir = workdir or static_config.eval.get("workdir", "") or tempfile.mkdtemp("hyp")
    members = [{k: config_utils.get_value(c, k) for k in VMAPPABLE_KEYS} for c in cells]
    task = runner.make_task(config)
    mcfg = runner.make_model_config(config, task)
    ref_key = sweep.cell_hash({"task": config.task, "model": config.model,
                               "reference": config.reference})
    ref = runner.load_or_pretrain_reference(
        config, task, mcfg, os.path.join(workdir, "references", ref_key), log=log)
    group_key = sweep.cell_hash({"static": static_config, "members": members})
    out = runner.run_population(config, members, os.path.join(workdir, "groups", group_key),
                                ref_params=ref, log=log)
    ev = config.eval
    evaluation = evaluate.evaluate_population(
        mcfg, task, out.state.params, out.state.ref_params, tuple(ev.ks),
        jax.random.PRNGKey(int(ev.get("seed", 0))), int(ev.num_samples))
    return make_records(out.task, out.history, evaluation, members, task_label=ev.task_label,
                        modality=ev.modality, multimodal=bool(ev.multimodal), ks=ev.ks)


run_group.vmappable_keys = VMAPPABLE_KEYS
