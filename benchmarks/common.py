"""Shared helpers of the benchmark scripts: one machine description, one timer, one peak.

Every script prints `describe_machine()` before its figures and times with `time_calls`
(median after warm-up), so figures from different scripts compare. Scripts run as
`python benchmarks/<name>.py` (the repository root on the path, or `pip install -e .`);
this module is imported as `common` from the script's own directory.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

# The process settings the entry points use (CPU: host memory reuse), before jax starts its
# backends; no compilation cache, so compile times are measured.
from grpo_jax.run import launch  # noqa: E402

launch.configure(compilation_cache=False)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def cpu_description() -> str:
    """CPU model and its vector extensions (AVX2 / AVX-512 / AMX), from /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                if model and flags:
                    break
    except OSError:
        pass
    simd = [
        f
        for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
        if f in flags
    ]
    return f"{model} [{' '.join(simd) or 'no avx2'}]"


def load_average() -> str:
    try:
        return "load %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load n/a"


def describe_machine(extra: dict | None = None) -> str:
    """One line: backend, device, CPU model + SIMD flags, core count, load, versions."""
    dev = jax.devices()[0]
    import jaxlib  # noqa: PLC0415

    parts = [
        f"platform={jax.default_backend()}",
        f"device_kind={dev.device_kind}",
        f"devices={jax.device_count()}",
        f"cpu_count={os.cpu_count()}",
        f"cpu={cpu_description()}",
        load_average(),
        f"python={platform.python_version()}",
        f"jax={jax.__version__}",
        f"jaxlib={jaxlib.__version__}",
        f"xla_flags={os.environ.get('XLA_FLAGS', '')!r}",
    ]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(__file__),
            timeout=5,
        )
        if rev.returncode == 0:
            parts.append(f"git={rev.stdout.strip()}")
    except (OSError, subprocess.SubprocessError):
        pass
    for k, v in (extra or {}).items():
        parts.append(f"{k}={v}")
    return " ".join(parts)


def time_calls(
    fn: Callable[[], object], repeats: int, warmup: int = 1
) -> tuple[float, list[float]]:
    """Median wall seconds of `fn()` over `repeats` calls after `warmup` calls, and all the
    timed calls. `fn` must block until its result is ready (e.g. `jax.block_until_ready`)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def compile_seconds(jitted, *args) -> tuple[object, float]:
    """(compiled executable, lower + compile seconds) of a `jax.jit` function."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def matmul_peak(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
    """Measured FLOP/s of an n x n @ n x n `jnp.dot` in `dtype` (median of `repeats`).
    float32 runs at precision HIGHEST (no TF32 on GPUs); bf16 accumulates in float32."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    if jnp.dtype(dtype) == jnp.float32:
        dot = jax.jit(lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST))
    else:
        dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    sec, _ = time_calls(lambda: jax.block_until_ready(dot(a, b)), repeats)
    return 2 * n**3 / sec


def peak_size() -> int:
    return 2048 if jax.default_backend() == "cpu" else 8192


def fmt_times(times: list[float], digits: int = 3) -> str:
    return ", ".join(f"{t:.{digits}f}" for t in times)
