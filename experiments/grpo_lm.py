"""GRPO on the real model: SmolLM2-135M-Instruct names primes, under four regularisers.

  python experiments/grpo_lm.py --config grpo_jax/configs/grpo_lm.py --workdir runs/grpo_lm
  (``grpo_jax/configs/grpo_lm.py:full`` for a GPU)

Task: ``tasks.number_text.prime_task`` ("Name a prime number between lo and hi", the reply
written up to the number; reward 1 for a prime inside the range; several valid answers).
Policy and reference: the GGUF model (``gguf.load``; grouped-query attention, tied
embeddings). Regularisers (``config.choices``): exact forward KL, exact reverse KL, k3 and k2
in the loss, beta ``config.beta``: one vmapped population, a member per choice, trained by
the shared host loop (``runner.run_population`` with the GGUF model and the task given).

Logged per step and member (``<workdir>/metrics.jsonl``, the runner's rows): reward, exact per-position
full-vocabulary KL of pi_old against the reference in both directions and entropy
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
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.configs import grpo as grpo_config
from grpo_jax.models import gguf, model as model_lib, tokenizer
from grpo_jax.run import runner
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


def lm_grpo_config(config):
    """The GRPO config (grpo_jax/configs/grpo.py's fields) of this experiment; the task and
    the model come from the GGUF file, not from it."""
    c = grpo_config.get_config()
    c.grpo.update(num_prompts=int(config.num_prompts), group_size=int(config.group_size))
    c.loss.beta = float(config.beta)
    c.optim.lr = float(config.lr)
    c.train.update(
        num_steps=int(config.steps),
        chunk_steps=int(config.chunk_steps),
        seed=int(config.seed),
        checkpoint_every_chunks=int(config.checkpoint_every_chunks),
        tensorboard=False,
        max_to_keep=1,
    )
    return c


def report(config, task, history, ref_answers, results, seconds) -> str:
    """report.md: the last step's metrics and the exact answer distributions per member."""
    mean = lambda rs, k: float(np.mean([r[k] for r in rs]))
    lines = [
        "# GRPO on SmolLM2-135M-Instruct: prime numbers, four regularisers",
        "",
        f"`experiments/grpo_lm.py` ({platform.machine()} CPU, {os.cpu_count()} cores, "
        f"jax {jax.__version__}, devices {jax.devices()[0].platform}); {config.steps} steps, "
        f"{config.num_prompts} prompts x {config.group_size} samples, beta {config.beta}, "
        f"lr {config.lr}; wall time {seconds:.0f} s.",
        "",
        "Prompts: " + "; ".join(repr(t) for t in task.texts),
        "",
        "| regulariser | reward (last step) | exact KL fwd | exact KL rev | entropy | "
        "valid mass (exact, mean over prompts) | effective valid answers exp(H) | "
        "top answer share |",
        "|---|---|---|---|---|---|---|---|",
        f"| reference | - | 0 | 0 | - | {mean(ref_answers, 'valid_mass'):.3f} | "
        f"{mean(ref_answers, 'effective_valid'):.2f} | {mean(ref_answers, 'top_share'):.3f} |",
    ]
    last = lambda k, m: float(np.asarray(history[k])[m, -1])
    for m, name in enumerate(config.choices):
        rs = results[name]
        lines.append(
            f"| {name} | {last('reward_mean', m):.3f} | {last('exact_kl_fwd', m):.2e} | "
            f"{last('exact_kl_rev', m):.2e} | {last('entropy', m):.3f} | "
            f"{mean(rs, 'valid_mass'):.3f} | {mean(rs, 'effective_valid'):.2f} | "
            f"{mean(rs, 'top_share'):.3f} |"
        )
    lines += [
        "",
        "KL and entropy: exact per position over the full vocabulary (pi_old vs the "
        "reference on that step's batch, nats per token). Answer columns: exact, by "
        "enumerating every number 0..99 as the 2-token completion.",
        "",
    ]
    for name, rs in [("reference", ref_answers)] + [(n, results[n]) for n in config.choices]:
        shares = ", ".join(f"{a}: {s:.3f}" for a, s in rs[0]["shares"].items())
        lines.append(f"{name} answer shares (first prompt): {shares}")
    return "\n".join(lines) + "\n"


def run(config, workdir: str) -> str:
    """Train the regularisers' population on the config's GGUF model; write report.md and
    answers.json in `workdir`; return the report."""
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
        lm_grpo_config(config), cells, workdir, ref_params=params, task=task, model_config=cfg
    )
    results = {
        name: answers(jax.tree.map(lambda x, m=m: x[m], out.state.params))
        for m, name in enumerate(config.choices)
    }
    text = report(config, task, out.history, ref_answers, results, time.time() - t0)
    with open(os.path.join(workdir, "report.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(workdir, "answers.json"), "w") as fh:
        json.dump({"reference": ref_answers, **results}, fh)
    return text


def main(argv):
    del argv
    print(run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from grpo_jax.run import config_utils

    _CONFIG = config_flags.DEFINE_config_file(
        "config", "grpo_jax/configs/grpo_lm.py", "GRPO-on-SmolLM2 config file.", lock_config=True
    )
    _WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
    config_utils.run_app(main)
