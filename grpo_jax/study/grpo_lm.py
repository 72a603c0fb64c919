"""GRPO on the real model: SmolLM2-135M-Instruct names primes, under four regularisers.

Entry point: experiments/grpo_lm.py (config grpo_jax/configs/grpo_lm.py).

Task: ``tasks.number_text.prime_task`` ("Name a prime number between lo and hi", the reply
written up to the number; reward 1 for a prime inside the range; several valid answers).
Policy and reference: the GGUF model (``gguf.load``; grouped-query attention, tied
embeddings). Regularisers (``config.choices``): exact forward KL, exact reverse KL, k3 and k2
in the loss, beta ``config.beta``: one vmapped population, a member per choice, trained by
the shared host loop (``runner.run_population`` with the GGUF model and the task given).

Logged per step and member (``<workdir>/metrics.jsonl``, the runner's rows): reward, exact
per-position full-vocabulary KL of pi_old against the reference in both directions and entropy
(``train.step_metrics``), and the share of each valid answer among the samples. Before and
after training, the exact answer distribution of each prompt (the policy's probability of
every number 0..99 as the 2-token completion, by enumeration): the mass on valid answers,
the share of each valid answer, and the effective number of valid answers exp(H).
Writes ``<workdir>/report.md`` and ``answers.json``; no checkpoints by default
(``config.checkpoint_every_chunks``).
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.models import gguf, model as model_lib, tokenizer
from grpo_jax.run import runner
from grpo_jax.study.report import grpo_lm as report_lib
from grpo_jax.tasks import number_text


@functools.partial(jax.jit, static_argnames=("config",))
def answer_probs(config, params, prompts, digit_ids, special_ids):
    """Exact probability of each number 0..99 as the 2-token completion (the task's parse),
    under the sampling distribution (specials banned): ``prompts [N, P]`` -> ``[N, 100]``."""
    n, p = prompts.shape
    rows = jnp.concatenate(
        [jnp.repeat(prompts, 10, axis=0), jnp.tile(digit_ids, n)[:, None]], axis=1
    )  # [10N, P+1]
    logits = model_lib.forward(config, params, rows)[:, -2:]  # [10N, 2, V]
    ban = jnp.zeros((config.vocab_size,), bool).at[special_ids].set(True)
    logp = jax.nn.log_softmax(jnp.where(ban, -1e9, logits), axis=-1)
    first = logp[::10, 0][:, digit_ids]  # [N, 10]
    second = logp[:, 1].reshape(n, 10, -1)  # [N, 10, V]
    p_digit2 = jnp.exp(second[:, :, digit_ids])  # [N, 10, 10]
    p1 = jnp.exp(first)
    one = p1 * (1.0 - p_digit2.sum(-1))  # "d" + non-digit
    two = p1[:, 1:, None] * p_digit2[:, 1:]  # "d1 d2", d1 > 0
    return jnp.concatenate([one, two.reshape(n, 90)], axis=1)


def answer_summary(probs: np.ndarray, task) -> dict:
    """Per prompt: valid mass, shares of each valid answer, exp(H) over valid answers."""
    out = []
    for i, valid in enumerate(task.valid):
        p = probs[i]
        pv = p[list(valid)]
        q = pv / pv.sum()
        out.append(
            {
                "valid_mass": float(pv.sum()),
                "shares": {int(v): float(s) for v, s in zip(valid, q)},
                "effective_valid": float(np.exp(-np.sum(q[q > 0] * np.log(q[q > 0])))),
                "top": int(valid[int(np.argmax(pv))]),
                "top_share": float(q.max()),
            }
        )
    return out


def run(config, grpo_config, workdir: str) -> str:
    """Train the regularisers' population on the config's GGUF model (`config`:
    grpo_jax/configs/grpo_lm.py; `grpo_config`: its GRPO fields, `grpo_lm.grpo_config(config)`
    there); write report.md and answers.json in `workdir`; return the report."""
    t0 = time.time()
    path = config.gguf_path or gguf.fetch_smollm2(config.cache_dir or None)
    task = number_text.prime_task(
        tokenizer.from_gguf(path), ranges=tuple(tuple(r) for r in config.ranges)
    )
    cfg, params, _ = gguf.load(
        path, max_len=task.prompt_len + task.completion_len, dtype=config.dtype
    )
    print(f"loaded in {time.time() - t0:.1f} s; prompt length {task.prompt_len}")
    digit_ids = jnp.asarray(task.digit_ids, jnp.int32)
    special = jnp.asarray(task.special_ids, jnp.int32)
    prompts = task.all_prompts()
    answers = lambda p: answer_summary(
        np.asarray(answer_probs(cfg, p, prompts, digit_ids, special)), task
    )
    ref_answers = answers(params)
    cells = [{"loss.kl_choice": choice} for choice in config.choices]
    out = runner.run_population(
        grpo_config, cells, workdir, ref_params=params, task=task, model_config=cfg
    )
    member = lambda m: model_lib.merge_adapters(  # LoRA: adapters folded into the base
        out.setup.model, jax.tree.map(lambda x: x[m], out.state.params)
    )
    results = {name: answers(member(m)) for m, name in enumerate(config.choices)}
    text = report_lib.report(config, task, out.history, ref_answers, results, time.time() - t0)
    with open(os.path.join(workdir, "report.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(workdir, "answers.json"), "w") as fh:
        json.dump({"reference": ref_answers, **results}, fh)
    return text
