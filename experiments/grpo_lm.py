"""GRPO on the real model: SmolLM2-135M-Instruct names primes, under four regularisers.

  python experiments/grpo_lm.py --config grpo_jax/configs/grpo_lm.py --workdir runs/grpo_lm
  (``grpo_jax/configs/grpo_lm.py:full`` for a GPU)

Task: ``tasks.number_text.prime_task`` ("Name a prime number between lo and hi", the reply
written up to the number; reward 1 for a prime inside the range; several valid answers).
Policy and reference: the GGUF model (``gguf.load``; grouped-query attention, tied
embeddings). Regularisers (``config.choices``): exact forward KL, exact reverse KL, k3 and k2
in the loss, beta ``config.beta``; one compiled ``train.make_rl_chunk`` with the choice as
data (``RLSetup.kl_choices``), run per choice (CPU) or as one vmapped population (``full``).

Logged per step and regulariser (``<workdir>/metrics.jsonl``): reward, exact per-position
full-vocabulary KL of pi_old against the reference in both directions and entropy
(``train.step_metrics``), and the share of each valid answer among the samples. Before and
after training, the exact answer distribution of each prompt (the policy's probability of
every number 0..99 as the 2-token completion, by enumeration): the mass on valid answers,
the share of each valid answer, and the effective number of valid answers exp(H).
Writes ``<workdir>/report.md``. Disk: under 1 MB.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
import time


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from grpo_jax.models import gguf  # noqa: E402
from grpo_jax.core import losses
from grpo_jax.rl import train
from grpo_jax.models import model as model_lib  # noqa: E402
from grpo_jax.tasks import number_text  # noqa: E402


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


def main(argv):
    del argv
    config = _CONFIG.value
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    path = gguf.fetch_smollm2(config.cache_dir or None)
    from grpo_jax.models import tokenizer  # pylint: disable=import-outside-toplevel

    tok = tokenizer.from_gguf(path)
    task = number_text.prime_task(tok, ranges=tuple(tuple(r) for r in config.ranges))
    cfg, params, _ = gguf.load(
        path, max_len=task.prompt_len + task.completion_len, dtype=config.dtype
    )
    print(
        f"loaded in {time.time() - t0:.1f} s; prompt length {task.prompt_len}; "
        f"{task.num_modes} valid answers overall"
    )
    choices = tuple(config.choices)
    setup = train.RLSetup(
        model=cfg,
        task=task,
        num_prompts=config.num_prompts,
        group_size=config.group_size,
        kl_choices=choices,
    )
    digit_ids = jnp.asarray(task.digit_ids, jnp.int32)
    special = jnp.asarray(task.special_ids, jnp.int32)
    prompts = task.all_prompts()
    ref_answers = answer_summary(
        np.asarray(answer_probs(cfg, params, prompts, digit_ids, special)), task
    )
    run = train.make_rl_chunk(setup, config.chunk_steps, population=config.population)
    loss_cfg = losses.LossConfig(beta=config.beta)
    results = {}
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    open(metrics_path, "w").close()

    def log_chunk(names, metrics, offset):
        with open(metrics_path, "a") as fh:
            for m, name in enumerate(names):
                for s in range(config.chunk_steps):
                    row = {"choice": name, "step": offset + s + 1}
                    for k in ("reward_mean", "exact_kl_fwd", "exact_kl_rev", "entropy", "loss"):
                        row[k] = float(metrics[k][m, s])
                    shares = np.asarray(metrics["mode_shares"][m, s])
                    row["answer_shares"] = {
                        int(a): float(x) for a, x in zip(task.answers, shares) if x > 0
                    }
                    fh.write(json.dumps(row) + "\n")
                    print(json.dumps(row))

    timing = {}
    if config.population:
        s = len(choices)
        stack = lambda t: jax.tree.map(lambda x: jnp.stack([x] * s), t)
        keys = jax.random.split(jax.random.key(config.seed), s)
        state = jax.vmap(lambda p, r, k: train.init_rl_state(setup, p, r, k))(
            stack(params), stack(params), keys
        )
        hp = train.Hparams(
            loss=stack(loss_cfg), lr=jnp.full((s,), config.lr, jnp.float32), kl_choice=jnp.arange(s)
        )
        t1 = time.time()
        for c in range(config.steps // config.chunk_steps):
            state, metrics = run(state, hp)
            log_chunk(choices, jax.device_get(metrics), c * config.chunk_steps)
        timing["all"] = time.time() - t1
        for m, name in enumerate(choices):
            final = jax.tree.map(lambda x: x[m], state.params)
            results[name] = answer_summary(
                np.asarray(answer_probs(cfg, final, prompts, digit_ids, special)), task
            )
    else:
        for m, name in enumerate(choices):
            # The state is donated: the reference gets its own buffers each run.
            ref = jax.tree.map(jnp.copy, params)
            state = train.init_rl_state(setup, params, ref, jax.random.key(config.seed))
            hp = train.Hparams(loss=loss_cfg, lr=jnp.float32(config.lr), kl_choice=jnp.int32(m))
            t1 = time.time()
            for c in range(config.steps // config.chunk_steps):
                state, metrics = run(state, hp)
                log_chunk(
                    [name],
                    jax.device_get(jax.tree.map(lambda x: x[None], metrics)),
                    c * config.chunk_steps,
                )
            timing[name] = time.time() - t1
            results[name] = answer_summary(
                np.asarray(answer_probs(cfg, state.params, prompts, digit_ids, special)), task
            )
            del state
    rows = [json.loads(line) for line in open(metrics_path)]
    lines = [
        "# GRPO on SmolLM2-135M-Instruct: prime numbers, four regularisers",
        "",
        f"`experiments/grpo_lm.py` ({platform.machine()} CPU, {os.cpu_count()} cores, "
        f"jax {jax.__version__}, devices {jax.devices()[0].platform}); {config.steps} steps, "
        f"{config.num_prompts} prompts x {config.group_size} samples, beta {config.beta}, "
        f"lr {config.lr}; wall time {time.time() - t0:.0f} s ({timing}).",
        "",
        "Prompts: " + "; ".join(repr(t) for t in task.texts),
        "",
        "| regulariser | reward (last step) | exact KL fwd | exact KL rev | entropy | "
        "valid mass (exact, mean over prompts) | effective valid answers exp(H) | "
        "top answer share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    mean = lambda rs, k: float(np.mean([r[k] for r in rs]))
    lines.append(
        f"| reference | - | 0 | 0 | - | {mean(ref_answers, 'valid_mass'):.3f} | "
        f"{mean(ref_answers, 'effective_valid'):.2f} | "
        f"{mean(ref_answers, 'top_share'):.3f} |"
    )
    for name in choices:
        last = [r for r in rows if r["choice"] == name][-1]
        rs = results[name]
        lines.append(
            f"| {name} | {last['reward_mean']:.3f} | {last['exact_kl_fwd']:.2e} | "
            f"{last['exact_kl_rev']:.2e} | {last['entropy']:.3f} | "
            f"{mean(rs, 'valid_mass'):.3f} | {mean(rs, 'effective_valid'):.2f} | "
            f"{mean(rs, 'top_share'):.3f} |"
        )
    lines += [
        "",
        "KL and entropy: exact per position over the full vocabulary (pi_old vs the "
        "reference on that step's batch, nats per token). Answer columns: exact, by "
        "enumerating every number 0..99 as the 2-token completion.",
        "",
        "Reference answer shares (first prompt): "
        + ", ".join(f"{a}: {s:.3f}" for a, s in ref_answers[0]["shares"].items()),
    ]
    for name in choices:
        lines.append(
            f"{name} answer shares (first prompt): "
            + ", ".join(f"{a}: {s:.3f}" for a, s in results[name][0]["shares"].items())
        )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(workdir, "report.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(workdir, "answers.json"), "w") as fh:
        json.dump({"reference": ref_answers, **results}, fh)
    print(text)


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from grpo_jax.run import config_utils

    _CONFIG = config_flags.DEFINE_config_file(
        "config", "grpo_jax/configs/grpo_lm.py", "GRPO-on-SmolLM2 config file.", lock_config=True
    )
    _WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
    config_utils.run_app(main)
