"""Sampling throughput: KV-cache sampler vs a naive no-cache loop (DESIGN.md §5 workloads).

    PYTHONPATH=. python benchmarks/sampling.py            # W1 (or `pip install -e .` first)
    PYTHONPATH=. python benchmarks/sampling.py --workload w2 --repeats 20

Both paths are one jit each, float32, temperature 1, the 4 specials banned, no EOS:
* cached: ``grpo_jax.sampling.sample`` (prefill + lax.scan of single-token decode steps);
* naive:  a lax.fori_loop that recomputes the full teacher-forced forward over the whole
  [B, P+T] buffer at every step and reads the row it needs (O(T) times the work).
Compile time (lower + compile) is reported separately; run time is the median of
``--repeats`` calls after one warm-up (``--naive_repeats`` for the naive loop, which is
~T times slower: on 2 CPU cores one W1 naive call takes tens of seconds). Both use the same per-step keys, so their tokens agree
up to float32 near-ties; the agreement fraction is printed as a sanity check.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from grpo_jax import model as M
from grpo_jax import sampling as S

WORKLOADS = {
    # layers, width, heads, mlp, prompts x G, prompt len, new tokens
    "w1": dict(num_layers=4, width=256, num_heads=4, mlp_width=1024, batch=16 * 8,
               prompt_len=16, new_tokens=32),
    "w2": dict(num_layers=2, width=64, num_heads=2, mlp_width=256, batch=8 * 8,
               prompt_len=8, new_tokens=8),
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
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="w1")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--naive_repeats", type=int, default=2)
    parser.add_argument("--skip_naive", action="store_true")
    args = parser.parse_args()

    w = WORKLOADS[args.workload]
    b, p, t = w["batch"], w["prompt_len"], w["new_tokens"]
    config = M.ModelConfig(vocab_size=VOCAB, num_layers=w["num_layers"], width=w["width"],
                           num_heads=w["num_heads"], mlp_width=w["mlp_width"], max_len=p + t)
    params = jax.jit(M.init, static_argnums=0)(config, jax.random.key(0))
    prompts = jax.random.randint(jax.random.key(1), (b, p), 0, VOCAB - len(SPECIALS))
    key = jax.random.key(2)

    dev = jax.devices()[0]
    print(f"machine: platform={jax.default_backend()} device_kind={dev.device_kind} "
          f"devices={jax.device_count()} cpu_count={os.cpu_count()} "
          f"host={platform.machine()} jax={jax.__version__}")
    print(f"workload {args.workload}: {M.num_params(params) / 1e6:.2f} M params, batch {b}, "
          f"prompt {p}, new tokens {t}, float32, temperature 1, specials banned")

    cached = jax.jit(functools.partial(S.sample, config, max_new_tokens=t,
                                       banned_tokens=SPECIALS))
    naive = jax.jit(functools.partial(naive_sample, config, max_new_tokens=t,
                                      banned_tokens=SPECIALS))
    results = {}
    for name, fn in [("cached", cached), ("naive", naive)]:
        if name == "naive" and args.skip_naive:
            continue
        start = time.perf_counter()
        compiled = fn.lower(params, prompts, key).compile()
        compile_s = time.perf_counter() - start
        repeats = args.naive_repeats if name == "naive" else args.repeats
        median, times = _time(compiled, (params, prompts, key), repeats)
        results[name] = compiled(params, prompts, key)
        print(f"{name:>6}: compile {compile_s:6.2f} s | run median {median * 1e3:8.1f} ms "
              f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}) | "
              f"{b * t / median:10.0f} tokens/s ({repeats} repeats)")
        results[name + "_s"] = median
    if "naive" in results:
        agree = float(jnp.mean(results["cached"].tokens == results["naive"][0]))
        print(f"speed-up cached / naive: {results['naive_s'] / results['cached_s']:.2f}x; "
              f"token agreement {agree:.4f}")


if __name__ == "__main__":
    main()
