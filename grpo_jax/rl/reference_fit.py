"""How well a pretrained reference reproduces its task's data: the exact fit report.

`fit_report(model_config, params, task, key)` enumerates the data support (every task's
reference answers are listed in its table), so the KL[data || model], the per-position
entropies and the mode masses are exact; the model's own mode shares are exact where the
completions (or the modes' prefix patterns) can be enumerated and sampled otherwise.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.core import stats
from grpo_jax.tasks import enumeration
from grpo_jax.models import model as model_lib, sampling


def _answer_table_logprobs(model_config, params, task):
    """Model log-probs of every reference answer and per-position entropies there.

    -> (seq_logp [Np, A], entropy [Np, A, T]) with specials banned (sampling distribution).
    """
    answers, _ = task.reference_answers()  # [Np, A, T]
    prompts = task.all_prompts()  # [Np, P]
    n, a, t = answers.shape
    flat_p = jnp.repeat(prompts, a, axis=0)
    flat_c = answers.reshape(n * a, t)
    logits = stats.ban_tokens(
        model_lib.completion_logits(model_config, params, flat_p, flat_c), task.special_ids
    )
    logp = model_lib.token_logprobs(logits, flat_c).sum(-1).reshape(n, a)
    ent = stats.entropy(logits).reshape(n, a, t)
    return logp, ent


@functools.partial(jax.jit, static_argnums=(0, 2))
def _enumerated_mode_shares(model_config, params, task):
    logp = enumeration.enumerated_logprobs(model_config, params, task)
    return enumeration.enumerated_mode_shares(task, logp)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _pattern_mode_shares(model_config, params, task):
    prompts, w = task.all_prompts(), task.prompt_probs()
    return jnp.stack(
        [
            jnp.sum(
                w * enumeration.pattern_mass(model_config, params, prompts, pat, task.special_ids)
            )
            for pat in task.mode_patterns()
        ]
    )


def model_mode_shares(
    model_config, params, task, key: jax.Array, num_samples: int = 4096, max_enumerate: int = 20_000
) -> tuple[np.ndarray | None, str]:
    """The policy's mode shares (specials banned, as the sampler does), by the first of
      1. "exact": enumerating all C completions of all Np prompts, if Np * C <= max_enumerate;
      2. "exact": if the task has `mode_patterns()` (modes as product sets), summing
         `enumeration.pattern_mass` over all prompts, if that enumerates <= max_enumerate prefixes;
      3. "sampled:<n>": labels of `num_samples` samples, if num_samples > 0;
      4. "none".
    Returns (shares [num_modes] float or None, method)."""
    n_prompts = int(task.table()["prompts"].shape[0])
    if n_prompts * task.num_completions() <= max_enumerate:
        return np.asarray(_enumerated_mode_shares(model_config, params, task)), "exact"
    if hasattr(task, "mode_patterns"):
        sizes = [math.prod(len(s) for s in pat[:-1]) for pat in task.mode_patterns()]
        if n_prompts * sum(sizes) <= max_enumerate:
            return np.asarray(_pattern_mode_shares(model_config, params, task)), "exact"
    if num_samples <= 0:
        return None, "none"
    k_p, k_s = jax.random.split(key)
    prompts = task.sample_prompts(k_p, num_samples)
    out = sampling.sample(
        model_config,
        params,
        prompts,
        k_s,
        max_new_tokens=task.completion_len,
        banned_tokens=task.special_ids,
    )
    labels = task.mode_labels(prompts, out.tokens)
    return np.asarray(stats.mode_shares(labels, task.num_modes)), f"sampled:{num_samples}"


def fit_report(
    model_config,
    params,
    task,
    key: jax.Array,
    *,
    mode_share_tolerance: float = 0.05,
    num_samples: int = 4096,
) -> dict[str, Any]:
    """How well a pretrained reference reproduces its data (JSON-serialisable dict).

    Exact, for every task (the data support is enumerable; specials banned, i.e. the
    distribution a sampler draws from):
      data_kl_seq           KL[data || model] per sequence (nats), averaged over prompts;
      data_entropy_seq      entropy of the data per sequence (loss floor times T);
      entropy_per_position_data / _model   E_{x, y ~ data} of the per-position entropy
                            (the model's at the data's prefixes);
      mode_mass_on_support  [K] sum_x w_x sum_{a in data support, mode k} q(a | x);
      off_support_mass      model mass outside the data support. The model's true share s_k
                            lies in [on_k, on_k + off], so |s_k - d_k| <= |on_k - d_k| + off:
      mode_share_err_bound  max_k of that bound (rigorous, no sampling).
    Model mode shares (`model_mode_shares`): mode_shares_model, mode_shares_method.
    mode_share_max_abs_err  max_k |mode_shares_model - data| (exact, or estimated from
                            samples), or the bound when method is "none";
    mode_shares_ok          mode_share_max_abs_err <= mode_share_tolerance.
    """
    t = task.table()
    seq_logp, ent = _answer_table_logprobs(model_config, params, task)
    data_probs = jnp.asarray(t["answer_probs"], jnp.float32)
    prompt_probs = jnp.asarray(t["prompt_probs"], jnp.float32)
    kl = stats.data_kl(data_probs, seq_logp, prompt_probs)
    w = t["prompt_probs"][:, None] * t["answer_probs"]  # [Np, A]
    ent_model = np.sum(w[..., None] * np.asarray(ent, np.float64), axis=(0, 1))
    support = t["answer_probs"] > 0
    q = np.where(support, np.exp(np.asarray(seq_logp, np.float64)), 0.0)
    q = q * t["prompt_probs"][:, None]
    on_support = np.asarray([q[t["answer_modes"] == k].sum() for k in range(task.num_modes)])
    off_support = max(0.0, 1.0 - float(q.sum()))
    shares_data = np.asarray(task.reference_mode_shares(), np.float64)
    bound = float(np.max(np.abs(on_support - shares_data)) + off_support)
    shares_model, method = model_mode_shares(model_config, params, task, key, num_samples)
    if shares_model is None:
        err = bound
    else:
        err = float(np.max(np.abs(shares_model - shares_data)))
    ent_data = task.reference_entropy()
    floats = lambda xs: None if xs is None else [float(x) for x in xs]
    return {
        "data_kl_seq": float(kl),
        "data_entropy_seq": float(np.sum(ent_data)),
        "entropy_per_position_data": floats(ent_data),
        "entropy_per_position_model": floats(ent_model),
        "mode_shares_data": floats(shares_data),
        "mode_mass_on_support": floats(on_support),
        "off_support_mass": off_support,
        "mode_share_err_bound": bound,
        "mode_shares_model": floats(shares_model),
        "mode_shares_method": method,
        "mode_share_max_abs_err": err,
        "mode_share_tolerance": float(mode_share_tolerance),
        "mode_shares_ok": bool(err <= mode_share_tolerance),
    }
