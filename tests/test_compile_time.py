"""Compile time at the optimisation level users get.

The rest of the suite compiles at LLVM optimisation level 0 (conftest.py), which would hide a
program that only the default level takes minutes to compile: XLA:CPU once spent over 15
minutes on an argmax in the sampler (benchmarks/README.md). This guard compiles a small but
representative population program (grpo_jax/configs/transformer_population.py:small: a transformer
policy, 3 KL choices as data, a chunk of 50 steps) in a fresh process with XLA's default
flags and no compilation cache, and fails when it has not finished within `BOUND_S`: loose
enough for a slow machine (it takes about 10 s on 2 cores), far below such a pathology.
"""

import os
import subprocess
import sys

import pytest

BOUND_S = 120

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = """
import time
from grpo_jax.configs import transformer_population as pop
from grpo_jax.rl import train
from grpo_jax.run import build

config = pop.get_config("small")
ref = build.random_reference(config)
setup, _, state, hp = build.build_population(config, pop.member_cells(config), ref_params=ref)
chunk = train.make_rl_chunk(setup, int(config.train.chunk_steps), population=True)
lowered = chunk.lower(state, hp)
t0 = time.perf_counter()
lowered.compile()
print("COMPILE_S", time.perf_counter() - t0, "MEMBERS", len(config.kl_choices))
"""


def default_level_env() -> dict:
    """This process's environment without any XLA optimisation-level flag (so XLA's default
    applies), on one CPU device, with the persistent compilation cache off."""
    env = dict(os.environ)
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if "optimization_level" not in f and "host_platform_device_count" not in f
    ]
    env["XLA_FLAGS"] = " ".join(flags)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.update(JAX_ENABLE_COMPILATION_CACHE="false", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return env


def test_transformer_population_compiles_at_the_default_level():
    try:
        out = subprocess.run(
            [sys.executable, "-c", PROGRAM],
            env=default_level_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BOUND_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"the transformer population program did not compile within {BOUND_S} s at "
            f"XLA's default optimisation level (benchmarks/compile_time.py finds which part)"
        )
    assert out.returncode == 0, out.stderr[-2000:]
    fields = out.stdout.split()
    seconds = float(fields[fields.index("COMPILE_S") + 1])
    assert fields[fields.index("MEMBERS") + 1] == "3"
    assert 0 < seconds < BOUND_S
