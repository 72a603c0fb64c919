"""Throughput of the whole GRPO RL step on the W1 / W2 workloads (docs/design.md, 'Benchmark
workloads').

    PYTHONPATH=. python benchmarks/rl_step.py --workload=all --quick   # CPU-sized run
    PYTHONPATH=. python benchmarks/rl_step.py --workload=W1 --steps=10 --repeats=5
    PYTHONPATH=. python benchmarks/rl_step.py --workload=W2
    PYTHONPATH=. python benchmarks/rl_step.py --workload=W1 --compute_dtype=bfloat16

Workloads: Llama-style decoder (grpo_jax.model), float32, vocabulary 68 = 64 ordinary tokens +
4 specials that are never sampled, full-length completions (no EOS), temperature 1, GRPO with
beta 0.04, k3 in the loss, eps 0.2, one Adam step (lr 1e-4, no gradient clipping) per batch,
reward = fraction of completion tokens equal to token 7; the reference is a random init (its
values do not change the cost) and the policy starts as a copy of it.

    W1: 4 layers, width 256, 4 heads, MLP 1024, 16 prompts x 8, prompt 16, 32 new tokens
    W2: 2 layers, width 64,  2 heads, MLP 256,  8 prompts x 8,  prompt 8,  8 new tokens

Timing: `--steps` RL steps run as one `lax.scan` per jit call (`make_rl_chunk`); compile time
(lower + compile) is reported apart; after one warm-up call, `--repeats` calls are timed and
the median seconds per call divided by `--steps` is the time per RL step. tokens/s counts the
generated completion tokens (B x T per step and member).

W1 also reports the fraction of this machine's float32 matmul peak (a large `jnp.dot`,
measured here) that the step's FLOPs reach; the FLOPs come from the model sizes (matmul
weights 2 FLOP per weight per token, plus attention scores and values), see `step_flops`.
W2 also reports seed-steps/s for vmapped populations of 1, 4 and 16 seeds, and the issue's
question: a population that mixes KL choices through `RLSetup.kl_choices` + `lax.switch`
(one program) versus one program per choice (total compile + run time).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from typing import ClassVar

from absl import app, flags

import common  # noqa: E402  (applies grpo_jax.xla_setup's XLA flags before jax starts)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from grpo_jax.core import losses  # noqa: E402
from grpo_jax.models import model

# The GRPO step API.
from grpo_jax.rl.train import Hparams, RLSetup, init_rl_state, make_rl_chunk  # noqa: E402

VOCAB = 68
SPECIALS = (64, 65, 66, 67)
REWARD_TOKEN = 7

WORKLOADS = {
    "W1": dict(
        num_layers=4,
        width=256,
        num_heads=4,
        mlp_width=1024,
        num_prompts=16,
        group_size=8,
        prompt_len=16,
        completion_len=32,
    ),
    "W2": dict(
        num_layers=2,
        width=64,
        num_heads=2,
        mlp_width=256,
        num_prompts=8,
        group_size=8,
        prompt_len=8,
        completion_len=8,
    ),
}
# The mixed-KL population of the switch question: 4 choices x 4 seeds.
KL_CHOICES = (("k1", "reward"), ("k2", "loss"), ("k3", "loss"), ("k3", "reward"))


@dataclasses.dataclass(frozen=True)
class TokenCountTask:
    """Benchmark task: prompts are uniform ordinary tokens; reward = fraction of completion
    tokens equal to `target` (docs/design.md, 'Benchmark workloads'). One mode (every
    completion is labelled 0).
    """

    prompt_len: int
    completion_len: int
    target: int = REWARD_TOKEN

    name: ClassVar[str] = "token_count"
    vocab_size: ClassVar[int] = VOCAB
    num_modes: ClassVar[int] = 1
    bos_id: ClassVar[int] = SPECIALS[0]
    special_ids: ClassVar[tuple[int, ...]] = SPECIALS

    def sample_prompts(self, key: jax.Array, n: int) -> jax.Array:
        """int32 [n, P], uniform over the ordinary tokens 0..63."""
        return jax.random.randint(key, (n, self.prompt_len), 0, SPECIALS[0], jnp.int32)

    def reward(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """float32 [B]: mean over t of 1[completions[:, t] == target]."""
        del prompts
        return jnp.mean((completions == self.target).astype(jnp.float32), axis=-1)

    def mode_labels(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """int32 [B], all 0."""
        del prompts
        return jnp.zeros(completions.shape[:1], jnp.int32)


def make_setup(name: str, kl_choices: tuple = (), compute_dtype: str = "float32") -> RLSetup:
    w = WORKLOADS[name]
    task = TokenCountTask(prompt_len=w["prompt_len"], completion_len=w["completion_len"])
    mcfg = model.ModelConfig(
        vocab_size=VOCAB,
        num_layers=w["num_layers"],
        width=w["width"],
        num_heads=w["num_heads"],
        mlp_width=w["mlp_width"],
        max_len=w["prompt_len"] + w["completion_len"],
        dtype=compute_dtype,
    )
    return RLSetup(
        model=mcfg,
        task=task,
        num_prompts=w["num_prompts"],
        group_size=w["group_size"],
        inner_steps=1,
        temperature=1.0,
        grad_clip=0.0,
        kl_choices=tuple(kl_choices),
    )


def make_hparams(estimator: str = "k3", placement: str = "loss", kl_choice: int = 0) -> Hparams:
    loss = losses.make_config(
        kl_estimator=estimator, kl_placement=placement, beta=0.04, eps_low=0.2, eps_high=0.2
    )
    loss = jax.tree.map(jnp.float32, loss)
    return Hparams(loss=loss, lr=jnp.float32(1e-4), kl_index=jnp.int32(kl_choice))


def init_population(setup: RLSetup, seeds, hparams: list[Hparams] | None = None):
    """(state, hp) with a leading population axis [S] (`seeds` a list) or none (an int)."""
    ref = model.init(setup.model, jax.random.PRNGKey(1234))
    if isinstance(seeds, int):
        # A copy for the policy: the chunk donates the state, and params aliasing ref_params
        # would donate one buffer twice.
        policy = jax.tree.map(jnp.copy, ref)
        return (
            init_rl_state(setup, policy, ref, jax.random.PRNGKey(seeds)),
            hparams[0] if hparams else make_hparams(),
        )
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    state = jax.jit(jax.vmap(lambda k: init_rl_state(setup, ref, ref, k)))(keys)
    hps = hparams or [make_hparams()] * len(seeds)
    hp = jax.tree.map(lambda *xs: jnp.stack(xs), *hps)
    return state, hp


def compile_and_time(setup, state, hp, steps: int, repeats: int, population: bool):
    """(compile_s, median seconds per call, all call times, final metrics)."""
    run, compile_s = common.compile_seconds(
        make_rl_chunk(setup, steps, population=population), state, hp
    )
    box = [state, None]

    def call():
        box[0], box[1] = run(box[0], hp)
        jax.block_until_ready(box)

    sec, times = common.time_calls(call, repeats, warmup=1)
    return compile_s, sec, times, box[1]


# ------------------------------------------------------------------------------------------
# FLOPs and the machine's matmul peak
# ------------------------------------------------------------------------------------------


def forward_flops(mcfg: model.ModelConfig, batch: int, seq: int, causal_ctx: float) -> float:
    """FLOPs of one teacher-forced forward of `batch` sequences of `seq` tokens: 2 per matmul
    weight per token (attention q, k, v, o; gated MLP; output head; the embedding is a lookup)
    plus attention scores and values, 2 * 2 * ctx * width per token and layer (ctx: average
    number of keys a query attends to as computed)."""
    d, m, layers, v = mcfg.width, mcfg.mlp_width, mcfg.num_layers, mcfg.vocab_size
    weights = layers * (4 * d * d + 3 * d * m) + d * v
    attention = layers * 4 * causal_ctx * d
    return batch * seq * (2 * weights + attention)


def step_flops(setup: RLSetup) -> dict[str, float]:
    """FLOPs of one RL step (inner_steps = 1): generation (prefill P tokens + T - 1 cached
    decode steps, attention over the whole cache of P + T positions), reference forward over
    P + T tokens, and policy forward + backward (3x a forward)."""
    task, b = setup.task, setup.batch_size
    p, t = task.prompt_len, task.completion_len
    full = forward_flops(setup.model, b, p + t, causal_ctx=p + t)  # dense (masked) attention
    gen = forward_flops(setup.model, b, p + t - 1, causal_ctx=p + t)
    out = dict(generation=gen, reference=full, policy_fwd_bwd=3 * full)
    out["total"] = sum(out.values())
    return out


def executed_flops(setup: RLSetup) -> dict[str, float]:
    """The FLOPs grpo_jax's step executes (same keys as `step_flops`, which counts the
    workload as TRL runs it): each prompt passes once per group (N P tokens, not B P), the
    completions' last token feeds no logit (T - 1 tokens), and with `setup.replays` the
    policy forward's matmuls are the sampler's, replayed: only its backward (2x) runs."""
    task, n, b = setup.task, setup.num_prompts, setup.batch_size
    p, t = task.prompt_len, task.completion_len
    once = forward_flops(setup.model, n, p, causal_ctx=p) + forward_flops(
        setup.model, b, t - 1, causal_ctx=p + t
    )
    out = dict(generation=once, reference=once, policy_fwd_bwd=(2 if setup.replays else 3) * once)
    out["total"] = sum(out.values())
    return out


def matmul_peak(n: int, repeats: int = 5) -> float:
    """Measured float32 FLOP/s of an n x n `jnp.dot` (see `common.matmul_peak`)."""
    return common.matmul_peak(n, jnp.float32, repeats)


# ------------------------------------------------------------------------------------------
# Workloads
# ------------------------------------------------------------------------------------------


def bench_w1(steps: int, repeats: int, compute_dtype: str = "float32") -> dict:
    setup = make_setup("W1", compute_dtype=compute_dtype)
    state, hp = init_population(setup, 0)
    n_params = model.num_params(state.params)
    compile_s, sec, times, metrics = compile_and_time(setup, state, hp, steps, repeats, False)
    per_step = sec / steps
    flops = step_flops(setup)
    n = common.peak_size()
    peak = matmul_peak(n)
    tokens = setup.batch_size * setup.task.completion_len
    print(
        f"W1 ({compute_dtype}): params {n_params / 1e6:.2f} M, batch {setup.batch_size}, "
        f"{steps} steps per scan, {repeats} timed calls"
    )
    print(
        f"  compile {compile_s:.1f} s; {per_step:.4f} s/step (median; calls "
        f"{', '.join(f'{x:.2f}' for x in times)} s); {tokens / per_step:,.0f} tokens/s"
    )
    print(
        "  FLOPs per step (from the model sizes): "
        + ", ".join(f"{k} {v / 1e9:.1f} G" for k, v in flops.items())
        + " (docs/design.md, 'Benchmark workloads': ~258 G)"
    )
    print(
        f"  float32 matmul peak ({n}x{n} jnp.dot): {peak / 1e9:.1f} GFLOP/s; step reaches "
        f"{flops['total'] / per_step / 1e9:.1f} GFLOP/s = "
        f"{100 * flops['total'] / per_step / peak:.1f}% of it"
    )
    print(f"  reward_mean at the last step: {float(metrics['reward_mean'][-1]):.4f}")
    return dict(
        compile_s=compile_s,
        s_per_step=per_step,
        tokens_per_s=tokens / per_step,
        gflop=flops["total"] / 1e9,
        peak_gflops=peak / 1e9,
        peak_fraction=flops["total"] / per_step / peak,
    )


def bench_w2(
    steps: int, repeats: int, populations=(1, 4, 16), compute_dtype: str = "float32"
) -> dict:
    setup = make_setup("W2", compute_dtype=compute_dtype)
    tokens = setup.batch_size * setup.task.completion_len
    out = {}
    print(f"W2: batch {setup.batch_size}, {steps} steps per scan, {repeats} timed calls")
    for s in populations:
        state, hp = init_population(setup, list(range(s)))
        compile_s, sec, times, _ = compile_and_time(setup, state, hp, steps, repeats, True)
        per_step = sec / steps
        out[s] = dict(
            compile_s=compile_s,
            s_per_step=per_step,
            seed_steps_per_s=s / per_step,
            tokens_per_s=s * tokens / per_step,
        )
        print(
            f"  population {s:2d}: compile {compile_s:.1f} s; {per_step:.5f} s/step; "
            f"{s / per_step:,.1f} seed-steps/s; {s * tokens / per_step:,.0f} tokens/s"
        )
    return out


def bench_switch(steps: int, repeats: int, seeds_per_choice: int = 4) -> dict:
    """Mixed KL choices on W2: one `lax.switch` program for the whole population vs one
    program per choice. Both run every member for (1 + repeats) * steps steps."""
    seeds = list(range(seeds_per_choice))
    print(f"W2 KL choices {['/'.join(c) for c in KL_CHOICES]} x {seeds_per_choice} seeds:")
    # One program: kl_choices in the setup, the index as data.
    setup = make_setup("W2", kl_choices=KL_CHOICES)
    hps = [make_hparams(kl_choice=i) for i in range(len(KL_CHOICES)) for _ in seeds]
    state, hp = init_population(setup, seeds * len(KL_CHOICES), hps)
    t0 = time.perf_counter()
    c_one, sec_one, _, _ = compile_and_time(setup, state, hp, steps, repeats, True)
    total_one = time.perf_counter() - t0
    # Separate programs, each choice static.
    c_sep, sec_sep, t0 = 0.0, 0.0, time.perf_counter()
    for est, place in KL_CHOICES:
        setup_c = make_setup("W2")
        state, hp = init_population(setup_c, seeds, [make_hparams(est, place)] * len(seeds))
        c, sec, _, _ = compile_and_time(setup_c, state, hp, steps, repeats, True)
        c_sep += c
        sec_sep += sec
    total_sep = time.perf_counter() - t0
    members = len(KL_CHOICES) * seeds_per_choice
    print(
        f"  one switch program : compile {c_one:.1f} s, {sec_one / steps:.5f} s per step of "
        f"all {members} members, total wall {total_one:.1f} s"
    )
    print(
        f"  {len(KL_CHOICES)} programs        : compile {c_sep:.1f} s, {sec_sep / steps:.5f} s "
        f"per step of all members, total wall {total_sep:.1f} s"
    )
    faster = "one switch program" if total_one < total_sep else "separate programs"
    print(
        f"  faster in total (compile + {(1 + repeats) * steps} steps): {faster}; per step "
        f"alone: {'switch' if sec_one < sec_sep else 'separate'}"
    )
    return dict(
        switch_compile_s=c_one,
        switch_s_per_step=sec_one / steps,
        switch_total_s=total_one,
        separate_compile_s=c_sep,
        separate_s_per_step=sec_sep / steps,
        separate_total_s=total_sep,
    )


FLAGS = flags.FLAGS


def define_flags():
    """The script's flags (defined only when it runs as a script: other benchmarks import
    this module for its workloads)."""
    flags.DEFINE_enum("workload", "all", ["W1", "W2", "all"], "Workload(s) to run.")
    flags.DEFINE_integer(
        "steps", None, "RL steps per lax.scan call (default W1 4, W2 20; " "--quick 1 / 5)."
    )
    flags.DEFINE_integer("repeats", None, "Timed calls after the warm-up (default 5; --quick 2).")
    flags.DEFINE_bool("quick", False, "Small counts (slow CPUs).")
    flags.DEFINE_bool(
        "skip_switch", False, "W2: skip the lax.switch vs separate programs comparison."
    )
    flags.DEFINE_enum(
        "compute_dtype",
        "float32",
        list(model.DTYPES),
        "Model compute dtype (parameters stay float32).",
    )


def main(argv):
    del argv
    warnings.filterwarnings("ignore", message=".*donated buffers.*")
    repeats = FLAGS.repeats or (2 if FLAGS.quick else 5)
    print("machine:", common.describe_machine())
    print(
        f"settings: workload={FLAGS.workload} steps={FLAGS.steps} repeats={repeats} "
        f"quick={FLAGS.quick} compute_dtype={FLAGS.compute_dtype}"
    )
    if FLAGS.workload in ("W1", "all"):
        bench_w1(FLAGS.steps or (1 if FLAGS.quick else 4), repeats, FLAGS.compute_dtype)
    if FLAGS.workload in ("W2", "all"):
        steps = FLAGS.steps or (5 if FLAGS.quick else 20)
        bench_w2(steps, repeats, compute_dtype=FLAGS.compute_dtype)
        if not FLAGS.skip_switch:
            bench_switch(steps, repeats)


if __name__ == "__main__":
    define_flags()
    app.run(main)
