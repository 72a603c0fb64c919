"""Phase breakdown of the grpo_jax W1 (or W2) RL step: where do the seconds go?

    PYTHONPATH=. python benchmarks/phases.py                       # W1, float32
    PYTHONPATH=. python benchmarks/phases.py --compute_dtype=bfloat16 --repeats=5

Each phase of `grpo_jax.train.rl_step` runs as its own jitted function on the inputs the
step would give it, and the whole step (`make_rl_chunk`, one step per call) runs beside
them:

* sampling: `sampling.sample` (one prompt pass per group + `lax.scan` of T - 1 cached
  decode steps, logits and, when the step replays, the matmul records returned);
* reference forward: teacher-forced grouped `completion_logits` of the reference +
  `token_logprobs`;
* policy forward + backward: `jax.value_and_grad` of the GRPO loss (k3 in the loss, beta
  0.04, eps 0.2) through the policy forward (replayed from the sampler's records when
  `setup.replays`), as in `rl_step`'s `loss_fn`;
* optimiser: Adam direction (`setup.optimizer()`) + parameter update.

For each: compile seconds, median run seconds, the workload's FLOPs as TRL runs it
(`rl_step.step_flops`), the FLOPs grpo_jax executes (`rl_step.executed_flops`: shared
prompts, replay), and executed GFLOP/s against the measured float32 and bf16 matmul peaks
(`common.matmul_peak`, 2048^2 on the CPU).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings

from absl import app, flags

import common  # noqa: E402  (applies grpo_jax.xla_setup's XLA flags before jax starts)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import rl_step  # noqa: E402
from grpo_jax.core import losses, stats  # noqa: E402
from grpo_jax.models import model as model_lib
from grpo_jax.models import sampling  # noqa: E402
from grpo_jax.rl.train import make_rl_chunk  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("workload", "W1", ["W1", "W2"], "Workload.")
flags.DEFINE_integer("repeats", 3, "Timed calls per phase after one warm-up.")
flags.DEFINE_enum("compute_dtype", "float32", list(model_lib.DTYPES), "Model compute dtype.")
flags.DEFINE_bool("skip_step", False, "Skip the whole-step timing.")
flags.DEFINE_bool("skip_peaks", False, "Skip the matmul peak measurements.")


def phase_functions(setup):
    mcfg, task = setup.model, setup.task
    banned = tuple(task.special_ids)
    cfg = rl_step.make_hparams().loss
    opt = setup.optimizer()
    g = setup.group_size

    @jax.jit
    def sample(params, group_prompts, key):
        out = sampling.sample(
            mcfg,
            params,
            group_prompts,
            key,
            max_new_tokens=task.completion_len,
            temperature=1.0,
            banned_tokens=banned,
            return_logits=True,
            group_size=g,
            record=setup.replays,
        )
        return out.tokens, out.logp, out.logits, out.record

    def logits_of(params, group_prompts, tokens, record=None):
        logits = model_lib.completion_logits(mcfg, params, group_prompts, tokens, record)
        return stats.ban_tokens(logits, banned)

    @jax.jit
    def reference(ref_params, group_prompts, tokens):
        logits = logits_of(ref_params, group_prompts, tokens)
        return logits, model_lib.token_logprobs(logits, tokens)

    @jax.jit
    def policy_grad(params, group_prompts, tokens, old_logp, ref_logp, ref_logits, adv, record):
        mask = jnp.ones(tokens.shape, jnp.float32)

        def loss_fn(p):
            logits = logits_of(p, group_prompts, tokens, record)
            logp = model_lib.token_logprobs(logits, tokens)
            return losses.grpo_loss(
                logp, old_logp, ref_logp, adv, mask, cfg, logits=logits, ref_logits=ref_logits
            )

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    @jax.jit
    def optimiser(params, opt_state, grads):
        direction, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, jax.tree.map(lambda u: -1e-4 * u, direction)), opt_state

    return sample, reference, policy_grad, optimiser


def main(argv):
    del argv
    warnings.filterwarnings("ignore", message=".*donated buffers.*")
    print("machine:", common.describe_machine())
    setup = rl_step.make_setup(FLAGS.workload, compute_dtype=FLAGS.compute_dtype)
    task, b = setup.task, setup.batch_size
    ref = model_lib.init(setup.model, jax.random.PRNGKey(1234))
    params = jax.tree.map(jnp.copy, ref)
    prompts = task.sample_prompts(jax.random.PRNGKey(0), setup.num_prompts)  # one per group
    key = jax.random.PRNGKey(1)
    sample, reference, policy_grad, optimiser = phase_functions(setup)
    flops = rl_step.step_flops(setup)
    done = rl_step.executed_flops(setup)

    rows = []

    def run(name, fn, args, key):
        compiled, compile_s = common.compile_seconds(fn, *args)
        out = compiled(*args)
        sec, _ = common.time_calls(lambda: jax.block_until_ready(compiled(*args)), FLAGS.repeats)
        rows.append((name, compile_s, sec, flops.get(key, 0.0), done.get(key, 0.0)))
        return out

    tokens, old_logp, _, record = run(
        "sampling (prompt pass + decode)", sample, (params, prompts, key), "generation"
    )
    ref_logits, ref_logp = run("reference forward", reference, (ref, prompts, tokens), "reference")
    adv = jax.random.normal(jax.random.PRNGKey(2), (b,), jnp.float32)
    (_, _), grads = run(
        "policy forward + backward",
        policy_grad,
        (params, prompts, tokens, old_logp, ref_logp, ref_logits, adv, record),
        "policy_fwd_bwd",
    )
    opt_state = setup.optimizer().init(params)
    run("optimiser (Adam)", optimiser, (params, opt_state, grads), "optimiser")

    if not FLAGS.skip_step:
        state, hp = rl_step.init_population(setup, 0)
        chunk, compile_s = common.compile_seconds(make_rl_chunk(setup, 1), state, hp)
        box = [state]

        def call():
            box[0], m = chunk(box[0], hp)
            jax.block_until_ready((box[0], m))

        sec, _ = common.time_calls(call, FLAGS.repeats)
        rows.append(("whole step (make_rl_chunk)", compile_s, sec, flops["total"], done["total"]))

    peaks = {}
    if not FLAGS.skip_peaks:
        n = common.peak_size()
        peaks = {
            "f32": common.matmul_peak(n, jnp.float32),
            "bf16": common.matmul_peak(n, jnp.bfloat16),
        }
        print(
            f"matmul peaks ({n}^2): "
            + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items())
        )
    print(f"{FLAGS.workload} compute_dtype={FLAGS.compute_dtype}, median of {FLAGS.repeats}")
    print(
        f"{'phase':32s} {'compile s':>9s} {'run s':>8s} {'GFLOP TRL':>9s} {'GFLOP run':>9s} "
        f"{'GFLOP/s':>8s} " + " ".join(f"{'%' + k + ' peak':>9s}" for k in peaks)
    )
    for name, c, sec, gflop, executed in rows:
        rate = executed / sec
        print(
            f"{name:32s} {c:9.2f} {sec:8.4f} {gflop / 1e9:9.1f} {executed / 1e9:9.1f} "
            f"{rate / 1e9:8.1f} " + " ".join(f"{100 * rate / p:8.1f}%" for p in peaks.values())
        )
    parts = sum(sec for name, _, sec, _, _ in rows if not name.startswith("whole"))
    print(f"sum of phases {parts:.4f} s; {common.load_average()}")


if __name__ == "__main__":
    app.run(main)
