"""Final evaluation of a trained GRPO population, report records, and the sweep runner.

Evaluation (pure, jitted, vmapped over the population):

* **Enumerable tasks** (every completion can be listed: `task.num_completions() <= max`;
  bandit, arithmetic): for every prompt x and completion y the exact log-probabilities
  log pi(y|x), log pi_ref(y|x) (`metrics.enumerated_logprobs`, specials banned), and with
  prompt weights w_x (`task.prompt_probs()`):

    reward       = sum_x w_x sum_y pi(y|x) R(x, y)
    exact_kl_rev = sum_x w_x sum_y pi(y|x) (log pi(y|x) - log pi_ref(y|x))   (sequence level)
    exact_kl_fwd = sum_x w_x sum_y pi_ref(y|x) (log pi_ref(y|x) - log pi(y|x))
    entropy      = sum_x w_x H(pi(.|x))                                       (sequence level)
    mode_shares  = exact mode masses (`metrics.enumerated_mode_shares`)
    pass@k       = sum_x w_x (1 - (1 - p_x)^k),  p_x = sum_y pi(y|x) [R(x, y) > 0]

* **Other tasks** (format: 13^5 completions per prompt): p_x is exact, summing pi over the
  distinct correct completions listed in the task's answer table; reward, KL and entropy are
  Rao-Blackwellised Monte-Carlo estimates along `num_samples` sampled completions, each
  position contributing its *exact* per-position quantity over the vocabulary (chain rule:
  KL_rev = E_{y~pi} sum_t KL(pi_t || ref_t), KL_fwd = E_{y~ref} sum_t KL(ref_t || pi_t),
  H = E_{y~pi} sum_t H(pi_t)); mode shares are the sample shares. `eval_method` in the
  result says which was used.

mode_coverage compares the policy's mode shares with the *reference model's* (not the data's),
via `metrics.mode_coverage(tau, eps)`.

Records and runner: `make_records` turns one `runner.run_population` output plus its
evaluation into the run records of `grpo_jax.report` (KL choice names mapped to the report's:
beta 0 -> "none", exact_forward -> exact_fwd, exact_reverse -> exact_rev); `run_group` is a
`sweep.run_sweep` runner (`run_group(static_config, cells) -> list[record]`).
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import metrics, model as model_lib, runner, sampling

MAX_ENUMERATED = 20_000  # completions per prompt enumerated exactly; above that, table + MC


# ------------------------------------------------------------------------------------------
# Exact / Rao-Blackwellised evaluation of one member
# ------------------------------------------------------------------------------------------


def is_enumerable(task, max_completions: int = MAX_ENUMERATED) -> bool:
    """True when every completion of every prompt is listed exactly (C <= max_completions)."""
    return task.num_completions() <= max_completions


def correct_answers(task) -> tuple[np.ndarray, np.ndarray]:
    """Distinct correct completions per prompt from the task's answer table.

    -> (answers int32 [Np, A, T], valid bool [Np, A]); duplicates (table padding) and
    answers with reward 0 are marked invalid. Host numpy (called once, outside jit).
    """
    ans = np.asarray(task.table()["answers"])
    prompts = np.asarray(task.table()["prompts"])
    n, a, t = ans.shape
    with jax.ensure_compile_time_eval():  # constants, also when called while tracing
        rewards = np.asarray(task.reward(jnp.asarray(np.repeat(prompts, a, axis=0)),
                                         jnp.asarray(ans.reshape(n * a, t)))).reshape(n, a)
    valid = np.zeros((n, a), bool)
    for i in range(n):
        seen = set()
        for j in range(a):
            key = tuple(int(v) for v in ans[i, j])
            if rewards[i, j] > 0 and key not in seen:
                valid[i, j] = True
                seen.add(key)
    return ans.astype(np.int32), valid


def _pass_at_k(p_success, weights, ks):
    """p_success [Np], weights [Np] -> [len(ks)]: sum_x w_x (1 - (1 - p_x)^k)."""
    return jnp.stack([jnp.sum(weights * metrics.pass_at_k_exact(p_success, k)) for k in ks])


def evaluate_enumerated(model_config, task, params, ref_params, ks: Sequence[int],
                        tau: float = 0.05, eps: float = 0.1) -> dict[str, jax.Array]:
    """Exact evaluation of one policy on an enumerable task (see module docstring).

    Returns float32 {reward, exact_kl_rev, exact_kl_fwd, entropy (scalars),
    mode_shares [M], ref_mode_shares [M], mode_coverage, pass_at_k [len(ks)],
    logp [Np, C], ref_logp [Np, C]}. Pure; vmap it over (params, ref_params).
    """
    logp = metrics.enumerated_logprobs(model_config, params, task)          # [Np, C]
    ref_logp = metrics.enumerated_logprobs(model_config, ref_params, task)  # [Np, C]
    prompts, comps = task.all_prompts(), task.enumerate_completions()
    n, c = logp.shape
    w = task.prompt_probs()                                                  # [Np]
    r = task.reward(jnp.repeat(prompts, c, axis=0), jnp.tile(comps, (n, 1))).reshape(n, c)
    p = jnp.exp(logp)
    p_success = jnp.sum(p * (r > 0).astype(jnp.float32), axis=-1)           # [Np]
    shares = metrics.enumerated_mode_shares(task, logp)
    ref_shares = metrics.enumerated_mode_shares(task, ref_logp)
    coverage, _ = metrics.mode_coverage(shares, ref_shares, tau, eps)
    ent = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
    return {
        "reward": jnp.sum(w * jnp.sum(p * r, axis=-1)),
        "exact_kl_rev": jnp.sum(w * metrics.sequence_kl(logp, ref_logp, "reverse")),
        "exact_kl_fwd": jnp.sum(w * metrics.sequence_kl(logp, ref_logp, "forward")),
        "entropy": jnp.sum(w * ent),
        "mode_shares": shares, "ref_mode_shares": ref_shares, "mode_coverage": coverage,
        "pass_at_k": _pass_at_k(p_success, w, ks), "logp": logp, "ref_logp": ref_logp,
    }


def evaluate_sampled(model_config, task, params, ref_params, key, ks: Sequence[int],
                     num_samples: int = 512, tau: float = 0.05,
                     eps: float = 0.1) -> dict[str, jax.Array]:
    """Evaluation of one policy on a task too large to enumerate (see module docstring):
    exact pass@k over the table's correct answers; Rao-Blackwellised MC reward/KL/entropy
    from `num_samples` completions; sample mode shares. Same keys as `evaluate_enumerated`
    minus logp/ref_logp. Pure; vmap over (params, ref_params, key)."""
    banned = tuple(task.special_ids)
    k_p, k_pi, k_ref, k_rp = jax.random.split(key, 4)
    t_len = task.completion_len

    def logits_of(p, prompts, comps):
        return metrics.ban_tokens(model_lib.completion_logits(model_config, p, prompts, comps),
                                  banned)

    def rollout(p_sample, k_prompt, k_tok):
        prompts = task.sample_prompts(k_prompt, num_samples)
        out = sampling.sample(model_config, p_sample, prompts, k_tok, max_new_tokens=t_len,
                              banned_tokens=banned)
        return prompts, out.tokens

    prompts, comps = rollout(params, k_p, k_pi)
        # per-position exact quantities along samples of pi
    lg, rlg = logits_of(params, prompts, comps), logits_of(ref_params, prompts, comps)
    kl_rev = jnp.mean(jnp.sum(metrics.token_kl(lg, rlg, "reverse"), axis=-1))
    ent = jnp.mean(jnp.sum(metrics.entropy(lg), axis=-1))
    reward = jnp.mean(task.reward(prompts, comps))
    shares = metrics.mode_shares(task.mode_labels(prompts, comps), task.num_modes)
    r_prompts, r_comps = rollout(ref_params, k_rp, k_ref)
    lg_r, rlg_r = logits_of(params, r_prompts, r_comps), logits_of(ref_params, r_prompts, r_comps)
    kl_fwd = jnp.mean(jnp.sum(metrics.token_kl(lg_r, rlg_r, "forward"), axis=-1))
    ref_shares = metrics.mode_shares(task.mode_labels(r_prompts, r_comps), task.num_modes)
    coverage, _ = metrics.mode_coverage(shares, ref_shares, tau, eps)

    answers, valid = correct_answers(task)                                   # [Np, A, T]
    n, a, _ = answers.shape
    all_prompts = task.all_prompts()
    seq = metrics.sequence_logprobs(model_config, params, jnp.repeat(all_prompts, a, axis=0),
                                    jnp.asarray(answers.reshape(n * a, t_len)), banned)
    p_success = jnp.sum(jnp.where(jnp.asarray(valid), jnp.exp(seq.reshape(n, a)), 0.0), -1)
    return {
        "reward": reward, "exact_kl_rev": kl_rev, "exact_kl_fwd": kl_fwd, "entropy": ent,
        "mode_shares": shares, "ref_mode_shares": ref_shares, "mode_coverage": coverage,
        "pass_at_k": _pass_at_k(p_success, task.prompt_probs(), ks),
    }


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _evaluate_population_jit(model_config, task, ks, num_samples, params, ref_params, keys):
    if is_enumerable(task):
        fn = lambda p, r, k: evaluate_enumerated(model_config, task, p, r, ks)
    else:
        fn = lambda p, r, k: evaluate_sampled(model_config, task, p, r, k, ks, num_samples)
    return jax.vmap(fn)(params, ref_params, keys)


def evaluate_population(model_config, task, params, ref_params, ks: Sequence[int],
                        key=None, num_samples: int = 512) -> dict[str, np.ndarray]:
    """Evaluate every member of a population (leaves of params/ref_params carry [S]).

    One jitted, vmapped program. Returns host numpy arrays with a leading [S] axis (keys of
    `evaluate_enumerated` / `evaluate_sampled`) plus "eval_method" ("exact" | "sampled").
    """
    s = jax.tree.leaves(params)[0].shape[0]
    key = jax.random.PRNGKey(0) if key is None else key
    keys = jax.random.split(key, s)
    out = _evaluate_population_jit(model_config, task, tuple(int(k) for k in ks),
                                   int(num_samples), params, ref_params, keys)
    out = {k: np.asarray(v) for k, v in jax.device_get(out).items()}
    out["eval_method"] = "exact" if is_enumerable(task) else "sampled"
    return out


# ------------------------------------------------------------------------------------------
# Report records
# ------------------------------------------------------------------------------------------

CHOICE_NAMES = {"exact_forward": "exact_fwd", "exact_reverse": "exact_rev"}


def report_choice_name(kl_choice: str, beta: float) -> str:
    """Name of a KL choice in the report: "none" when beta == 0, exact_forward/.. ->
    exact_fwd/.. and exact_reverse/.. -> exact_rev/.. (the prefixes `report` looks for)."""
    if float(beta) == 0.0:
        return "none"
    est, _, place = kl_choice.partition("/")
    return f"{CHOICE_NAMES.get(est, est)}/{place or 'loss'}"


def _history(hist: Mapping[str, np.ndarray], member: int, max_points: int) -> dict:
    steps = np.asarray(hist["reward_mean"]).shape[1]
    idx = np.unique(np.linspace(0, steps - 1, min(max_points, steps)).round().astype(int))
    get = lambda k: np.asarray(hist[k])[member, idx]
    return {"step": (idx + 1).tolist(), "reward": get("reward_mean").tolist(),
            "exact_kl_rev": get("exact_kl_rev").tolist(),
            "exact_kl_fwd": get("exact_kl_fwd").tolist(), "entropy": get("entropy").tolist(),
            "mode_shares": get("mode_shares").tolist()}


def make_records(out: Mapping[str, Any], evaluation: Mapping[str, Any],
                 cells: Sequence[Mapping[str, Any]], *, task_label: str, modality: str,
                 multimodal: bool, ks: Sequence[int], max_points: int = 40) -> list[dict]:
    """`grpo_jax.report` records, one per member of a `runner.run_population` output.

    cells: the per-member dicts given to run_population ("loss.kl_choice", "loss.beta",
    "train.seed"). For a bandit (one prompt), adds {"bandit": {final_policy, reference,
    optimum_reverse, optimum_forward}} with the closed-form optima of E[R] - beta KL taken
    w.r.t. the *pretrained reference model's* probabilities (`sweep.bandit_optimum`).
    """
    from grpo_jax import sweep  # pylint: disable=import-outside-toplevel
    task, hist = out["task"], out["history"]
    records = []
    for m, cell in enumerate(cells):
        beta = float(cell["loss.beta"])
        final = {k: float(evaluation[k][m]) for k in
                 ("reward", "exact_kl_rev", "exact_kl_fwd", "entropy", "mode_coverage")}
        final["pass_at_k"] = np.asarray(evaluation["pass_at_k"][m], float).tolist()
        final["mode_shares"] = np.asarray(evaluation["mode_shares"][m], float).tolist()
        rec = {"task": task_label, "modality": modality, "multimodal": bool(multimodal),
               "kl_choice": report_choice_name(cell["loss.kl_choice"], beta),
               "kl_choice_config": cell["loss.kl_choice"], "beta": beta,
               "seed": int(cell["train.seed"]), "final": final,
               "history": _history(hist, m, max_points), "ks": [int(k) for k in ks],
               "ref_mode_shares": np.asarray(evaluation["ref_mode_shares"][m], float).tolist(),
               "eval_method": evaluation["eval_method"],
               "nonfinite_updates": int(np.sum(np.asarray(hist["nonfinite"])[m]))}
        if task.name == "bandit" and "logp" in evaluation:
            ordinary = list(task.ordinary_ids)
            pol = np.exp(np.asarray(evaluation["logp"][m], np.float64)[0])
            ref = np.exp(np.asarray(evaluation["ref_logp"][m], np.float64)[0])
            comps = np.asarray(task.enumerate_completions())[:, 0]
            rewards = np.asarray(task.reward_vector())[comps]
            ref = ref / ref.sum()
            b = np.asarray([beta if beta > 0 else 1e-3])
            rec["bandit"] = {
                "final_policy": pol.tolist(), "reference": ref.tolist(),
                "tokens": [int(ordinary[i]) for i in range(len(ordinary))],
                "optimum_reverse": sweep.bandit_optimum(rewards, ref, b, "reverse")[0].tolist(),
                "optimum_forward": sweep.bandit_optimum(rewards, ref, b, "forward")[0].tolist()}
        records.append(rec)
    return records


# ------------------------------------------------------------------------------------------
# Sweep runner
# ------------------------------------------------------------------------------------------

# Cells differing only in these share one compiled population (the runner's own list).
VMAPPABLE_KEYS = runner.VMAPPABLE_KEYS


def run_group(static_config, cells, workdir: str | None = None, log=print) -> list[dict]:
    """`sweep.run_sweep` runner: one vmapped GRPO population per group, evaluated exactly.

    static_config: the group's config without the vmappable keys; cells: full cell configs
    (a `configs/hypothesis.py`-style GRPO config with an `eval` section: task_label,
    modality, multimodal, ks, num_samples, workdir). Working files go to `workdir` (default
    `static_config.eval.workdir`, else a temporary directory): the reference under
    `references/<hash>`, the population's metrics and checkpoints under `groups/<hash>`.
    Returns one report record per cell (`make_records`).
    """
    from grpo_jax import sweep  # pylint: disable=import-outside-toplevel
    config = cells[0]  # a full config: carries every key run_population needs
    workdir = workdir or static_config.eval.get("workdir", "") or tempfile.mkdtemp("hyp")
    members = [{k: sweep.get_value(c, k) for k in runner.VMAPPABLE_KEYS} for c in cells]
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
    evaluation = evaluate_population(mcfg, task, out["state"].params, out["state"].ref_params,
                                     tuple(ev.ks), jax.random.PRNGKey(int(ev.get("seed", 0))),
                                     int(ev.num_samples))
    return make_records(out, evaluation, members, task_label=ev.task_label,
                        modality=ev.modality, multimodal=bool(ev.multimodal), ks=ev.ks)


run_group.vmappable_keys = VMAPPABLE_KEYS
