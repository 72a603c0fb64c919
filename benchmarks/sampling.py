"""Sampling throughput: KV-cache sampler vs a naive no-cache loop (docs/design.md, 'Benchmark
workloads' workloads).

    PYTHONPATH=. python benchmarks/sampling.py            # W1 (or `pip install -e .` first)
    PYTHONPATH=. python benchmarks/sampling.py --workload=w2 --repeats=20

Both paths are one jit each, float32, temperature 1, the 4 specials banned, no EOS:
* cached: ``grpo_jax.sampling.sample`` (prefill + lax.scan of single-token decode steps);
* naive:  a lax.fori_loop that recomputes the full teacher-forced forward over the whole
  [B, P+T] buffer at every step and reads the row it needs (O(T) times the work).
Compile time (lower + compile) is reported separately; run time is the median of
``--repeats`` calls after one warm-up (``--naive_repeats`` for the naive loop, which is
~T times slower: on 2 CPU cores one W1 naive call takes tens of seconds). Both use the same
per-step keys, so their tokens agree
up to float32 near-ties; the agreement fraction is printed as a sanity check.
"""

from __future__ import annotations

import functools
import os
import sys

from absl import app, flags

import common  # noqa: E402  (applies grpo_jax.xla_setup's XLA flags before jax starts)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from grpo_jax.models import model as M  # noqa: E402
from grpo_jax.models import sampling as S  # noqa: E402

WORKLOADS = {
    # layers, width, heads, mlp, prompts x G, prompt len, new tokens
    "w1": dict(
        num_layers=4,
        width=256,
        num_heads=4,
        mlp_width=1024,
        batch=16 * 8,
        prompt_len=16,
        new_tokens=32,
    ),
    "w2": dict(
        num_layers=2, width=64, num_heads=2, mlp_width=256, batch=8 * 8, prompt_len=8, new_tokens=8
    ),
}
VOCAB, SPECIALS = 68, (64, 65, 66, 67)


def naive_sample(config, params, prompts, key, *, max_new_tokens, banned_tokens):
    """No cache: each step runs ``model.forward`` on the full [B, P+T] buffer (causal, so the
    not-yet-filled tail does not affect the row read). Returns (tokens [B, T], logp [B, T])."""
    b, p = prompts.shape
    t_len = max_new_tokens
    keys = jax.random.split(key, t_len)
    buf = jnp.concatenate([prompts, jnp.zeros((b, t_len), prompts.dtype)], axis=1)

    def body(t, carry):
        buf, logp = carry
        logits = M.forward(config, params, buf)  # [B, P+T, V], recomputed from scratch
        raw = jax.lax.dynamic_index_in_dim(logits, p + t - 1, axis=1, keepdims=False)
        z = S.sampling_logits(raw, 1.0, None, None, banned_tokens)
        tok = jax.random.categorical(keys[t], z, axis=-1).astype(buf.dtype)
        lp = jnp.take_along_axis(jax.nn.log_softmax(z, -1), tok[:, None], -1)[:, 0]
        buf = jax.lax.dynamic_update_index_in_dim(buf, tok, p + t, axis=1)
        logp = jax.lax.dynamic_update_index_in_dim(logp, lp, t, axis=1)
        return buf, logp

    buf, logp = jax.lax.fori_loop(0, t_len, body, (buf, jnp.zeros((b, t_len), jnp.float32)))
    return buf[:, p:], logp


def _time(compiled, args, repeats):
    return common.time_calls(lambda: jax.block_until_ready(compiled(*args)), repeats)


FLAGS = flags.FLAGS
flags.DEFINE_enum("workload", "w1", sorted(WORKLOADS), "Workload.")
flags.DEFINE_integer("repeats", 10, "Timed calls of the cached sampler.")
flags.DEFINE_integer("naive_repeats", 2, "Timed calls of the naive loop.")
flags.DEFINE_bool("skip_naive", False, "Skip the naive loop.")


def main(argv):
    del argv
    args = FLAGS

    w = WORKLOADS[args.workload]
    b, p, t = w["batch"], w["prompt_len"], w["new_tokens"]
    config = M.ModelConfig(
        vocab_size=VOCAB,
        num_layers=w["num_layers"],
        width=w["width"],
        num_heads=w["num_heads"],
        mlp_width=w["mlp_width"],
        max_len=p + t,
    )
    params = jax.jit(M.init, static_argnums=0)(config, jax.random.key(0))
    prompts = jax.random.randint(jax.random.key(1), (b, p), 0, VOCAB - len(SPECIALS))
    key = jax.random.key(2)

    print("machine:", common.describe_machine())
    print(
        f"workload {args.workload}: {M.num_params(params) / 1e6:.2f} M params, batch {b}, "
        f"prompt {p}, new tokens {t}, float32, temperature 1, specials banned"
    )

    cached = jax.jit(functools.partial(S.sample, config, max_new_tokens=t, banned_tokens=SPECIALS))
    naive = jax.jit(
        functools.partial(naive_sample, config, max_new_tokens=t, banned_tokens=SPECIALS)
    )
    results = {}
    for name, fn in [("cached", cached), ("naive", naive)]:
        if name == "naive" and args.skip_naive:
            continue
        compiled, compile_s = common.compile_seconds(fn, params, prompts, key)
        repeats = args.naive_repeats if name == "naive" else args.repeats
        median, times = _time(compiled, (params, prompts, key), repeats)
        results[name] = compiled(params, prompts, key)
        print(
            f"{name:>6}: compile {compile_s:6.2f} s | run median {median * 1e3:8.1f} ms "
            f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}) | "
            f"{b * t / median:10.0f} tokens/s ({repeats} repeats)"
        )
        results[name + "_s"] = median
    if "naive" in results:
        agree = float(jnp.mean(results["cached"].tokens == results["naive"][0]))
        print(
            f"speed-up cached / naive: {results['naive_s'] / results['cached_s']:.2f}x; "
            f"token agreement {agree:.4f}"
        )


if __name__ == "__main__":
    app.run(main)
