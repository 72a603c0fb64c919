"""Final evaluation of a trained GRPO population: exact where the completions can be listed.

Evaluation (pure, jitted, vmapped over the population):

* **Enumerable tasks** (every completion can be listed: `task.num_completions() <= max`;
  bandit, arithmetic): for every prompt x and completion y the exact log-probabilities
  log pi(y|x), log pi_ref(y|x) (`enumeration.enumerated_logprobs`, specials banned), and with
  prompt weights w_x (`task.prompt_probs()`):

    reward       = sum_x w_x sum_y pi(y|x) R(x, y)
    exact_kl_rev = sum_x w_x sum_y pi(y|x) (log pi(y|x) - log pi_ref(y|x))   (sequence level)
    exact_kl_fwd = sum_x w_x sum_y pi_ref(y|x) (log pi_ref(y|x) - log pi(y|x))
    entropy      = sum_x w_x H(pi(.|x))                                       (sequence level)
    mode_shares  = exact mode masses (`enumeration.enumerated_mode_shares`)
    pass@k       = sum_x w_x (1 - (1 - p_x)^k),  p_x = sum_y pi(y|x) [R(x, y) > 0]

* **Other tasks** (format: 13^5 completions per prompt): p_x is exact, summing pi over the
  distinct correct completions listed in the task's answer table; reward, KL and entropy are
  Rao-Blackwellised Monte-Carlo estimates along `num_samples` sampled completions, each
  position contributing its *exact* per-position quantity over the vocabulary (chain rule:
  KL_rev = E_{y~pi} sum_t KL(pi_t || ref_t), KL_fwd = E_{y~ref} sum_t KL(ref_t || pi_t),
  H = E_{y~pi} sum_t H(pi_t)); mode shares are the sample shares. `eval_method` in the
  result says which was used.

mode_coverage compares the policy's mode shares with the *reference model's* (not the data's),
via `stats.mode_coverage(tau, eps)`.

Pure evaluation only; `run.runner.final_evaluation` runs it on a trained population.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.models import model as model_lib, sampling
from grpo_jax.core import stats
from grpo_jax.tasks import enumeration

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
        rewards = np.asarray(
            task.reward(
                jnp.asarray(np.repeat(prompts, a, axis=0)), jnp.asarray(ans.reshape(n * a, t))
            )
        ).reshape(n, a)
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
    return jnp.stack([jnp.sum(weights * stats.pass_at_k_exact(p_success, k)) for k in ks])


def evaluate_enumerated(
    model_config, task, params, ref_params, ks: Sequence[int], tau: float = 0.05, eps: float = 0.1
) -> dict[str, jax.Array]:
    """Exact evaluation of one policy on an enumerable task (see module docstring).

    Returns float32 {reward, exact_kl_rev, exact_kl_fwd, entropy (scalars),
    mode_shares [M], ref_mode_shares [M], mode_coverage, pass_at_k [len(ks)],
    logp [Np, C], ref_logp [Np, C]}. Pure; vmap it over (params, ref_params).
    """
    logp = enumeration.enumerated_logprobs(model_config, params, task)  # [Np, C]
    ref_logp = enumeration.enumerated_logprobs(model_config, ref_params, task)  # [Np, C]
    prompts, comps = task.all_prompts(), task.enumerate_completions()
    n, c = logp.shape
    w = task.prompt_probs()  # [Np]
    r = task.reward(jnp.repeat(prompts, c, axis=0), jnp.tile(comps, (n, 1))).reshape(n, c)
    p = jnp.exp(logp)
    p_success = jnp.sum(p * (r > 0).astype(jnp.float32), axis=-1)  # [Np]
    shares = enumeration.enumerated_mode_shares(task, logp)
    ref_shares = enumeration.enumerated_mode_shares(task, ref_logp)
    coverage, _ = stats.mode_coverage(shares, ref_shares, tau, eps)
    ent = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
    return {
        "reward": jnp.sum(w * jnp.sum(p * r, axis=-1)),
        "exact_kl_rev": jnp.sum(w * stats.sequence_kl(logp, ref_logp, "reverse")),
        "exact_kl_fwd": jnp.sum(w * stats.sequence_kl(logp, ref_logp, "forward")),
        "entropy": jnp.sum(w * ent),
        "mode_shares": shares,
        "ref_mode_shares": ref_shares,
        "mode_coverage": coverage,
        "pass_at_k": _pass_at_k(p_success, w, ks),
        "logp": logp,
        "ref_logp": ref_logp,
    }


def evaluate_sampled(
    model_config,
    task,
    params,
    ref_params,
    key,
    ks: Sequence[int],
    num_samples: int = 512,
    tau: float = 0.05,
    eps: float = 0.1,
) -> dict[str, jax.Array]:
    """Evaluation of one policy on a task too large to enumerate (see module docstring):
    exact pass@k over the table's correct answers; Rao-Blackwellised MC reward/KL/entropy
    from `num_samples` completions; sample mode shares. Same keys as `evaluate_enumerated`
    minus logp/ref_logp. Pure; vmap over (params, ref_params, key)."""
    banned = tuple(task.special_ids)
    k_p, k_pi, k_ref, k_rp = jax.random.split(key, 4)
    t_len = task.completion_len

    def logits_of(p, prompts, comps):
        return stats.ban_tokens(
            model_lib.completion_logits(model_config, p, prompts, comps), banned
        )

    def rollout(p_sample, k_prompt, k_tok):
        prompts = task.sample_prompts(k_prompt, num_samples)
        out = sampling.sample(
            model_config, p_sample, prompts, k_tok, max_new_tokens=t_len, banned_tokens=banned
        )
        return prompts, out.tokens

    prompts, comps = rollout(params, k_p, k_pi)
    # per-position exact quantities along samples of pi
    lg, rlg = logits_of(params, prompts, comps), logits_of(ref_params, prompts, comps)
    kl_rev = jnp.mean(jnp.sum(stats.token_kl(lg, rlg, "reverse"), axis=-1))
    ent = jnp.mean(jnp.sum(stats.entropy(lg), axis=-1))
    reward = jnp.mean(task.reward(prompts, comps))
    shares = stats.mode_shares(task.mode_labels(prompts, comps), task.num_modes)
    r_prompts, r_comps = rollout(ref_params, k_rp, k_ref)
    lg_r, rlg_r = logits_of(params, r_prompts, r_comps), logits_of(ref_params, r_prompts, r_comps)
    kl_fwd = jnp.mean(jnp.sum(stats.token_kl(lg_r, rlg_r, "forward"), axis=-1))
    ref_shares = stats.mode_shares(task.mode_labels(r_prompts, r_comps), task.num_modes)
    coverage, _ = stats.mode_coverage(shares, ref_shares, tau, eps)

    answers, valid = correct_answers(task)  # [Np, A, T]
    n, a, _ = answers.shape
    all_prompts = task.all_prompts()
    seq = enumeration.completion_logprobs(
        model_config,
        params,
        jnp.repeat(all_prompts, a, axis=0),
        jnp.asarray(answers.reshape(n * a, t_len)),
        banned,
    )
    p_success = jnp.sum(jnp.where(jnp.asarray(valid), jnp.exp(seq.reshape(n, a)), 0.0), -1)
    return {
        "reward": reward,
        "exact_kl_rev": kl_rev,
        "exact_kl_fwd": kl_fwd,
        "entropy": ent,
        "mode_shares": shares,
        "ref_mode_shares": ref_shares,
        "mode_coverage": coverage,
        "pass_at_k": _pass_at_k(p_success, task.prompt_probs(), ks),
    }


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _evaluate_population_jit(model_config, task, ks, num_samples, params, ref_params, keys):
    if is_enumerable(task):
        fn = lambda p, r, k: evaluate_enumerated(model_config, task, p, r, ks)
    else:
        fn = lambda p, r, k: evaluate_sampled(model_config, task, p, r, k, ks, num_samples)
    return jax.vmap(fn)(params, ref_params, keys)


def evaluate_population(
    model_config, task, params, ref_params, ks: Sequence[int], key=None, num_samples: int = 512
) -> dict[str, np.ndarray]:
    """Evaluate every member of a population (leaves of params/ref_params carry [S]).

    One jitted, vmapped program. Returns host numpy arrays with a leading [S] axis (keys of
    `evaluate_enumerated` / `evaluate_sampled`) plus "eval_method" ("exact" | "sampled").
    """
    s = jax.tree.leaves(params)[0].shape[0]
    key = jax.random.PRNGKey(0) if key is None else key
    keys = jax.random.split(key, s)
    out = _evaluate_population_jit(
        model_config, task, tuple(int(k) for k in ks), int(num_samples), params, ref_params, keys
    )
    out = {k: np.asarray(v) for k, v in jax.device_get(out).items()}
    out["eval_method"] = "exact" if is_enumerable(task) else "sampled"
    return out
