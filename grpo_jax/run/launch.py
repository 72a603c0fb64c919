"""Process settings for entry points: the CPU tuning, applied visibly and only on the CPU.

Importing grpo_jax, or calling any library function, changes nothing process-wide. An entry
point calls `configure` first (`config_utils.run_app` does, with the flags
`--host_memory_reuse` and `--compilation_cache`); it prints one line saying what it set:

    from grpo_jax.run import launch
    launch.configure(host_memory_reuse=True, compilation_cache=True)

On the CPU backend (JAX_PLATFORMS names cpu first, or no accelerator plugin is installed):
  host memory reuse   glibc keeps the memory XLA frees for the next call (no page faults
                      on every call's temporaries) and CPU programs run on the calling
                      thread (`xla_setup.reuse_host_memory`; the process keeps the memory of
                      its largest call, and Python waits for each program)
  compilation cache   jax's persistent cache and the runner's serialized programs under
                      ~/.cache/grpo_jax (`xla_setup.enable_compilation_cache`)
On an accelerator neither is set. The environment switches GRPO_JAX_REUSE_MEMORY=0 and
GRPO_JAX_COMPILATION_CACHE=0 turn each off as well.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable

from grpo_jax.run import xla_setup

# Python modules of the accelerator plugins jax loads when they are installed.
_ACCELERATOR_PLUGINS = (
    "jax_cuda12_plugin",
    "jax_cuda13_plugin",
    "jax_rocm60_plugin",
    "jax_rocm7_plugin",
    "libtpu",
)


def on_cpu() -> bool:
    """Whether jax will run on the CPU, decided without creating a backend (the host memory
    setting must come before that): JAX_PLATFORMS's first platform if set, else whether no
    accelerator plugin is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def configure(
    host_memory_reuse: bool = True,
    compilation_cache: bool = True,
    log: Callable[[str], None] = _stderr,
) -> dict[str, object]:
    """Apply the CPU tuning an entry point asked for; returns what took effect and logs it in
    one line. Call before the first JAX computation."""
    cpu = on_cpu()
    memory = bool(cpu and host_memory_reuse and xla_setup.reuse_host_memory())
    cache = None
    notes: list[str] = []  # why the cache is off, or what was cleaned: in the same line
    if cpu:
        cache = xla_setup.enable_compilation_cache(
            enable=None if compilation_cache else False, log=notes.append
        )
    if cpu:
        log(
            "process settings (CPU): host memory reuse "
            + ("on" if memory else "off")
            + ", compilation cache "
            + (cache or "off")
            + " (--nohost_memory_reuse, --nocompilation_cache turn them off)"
            + "".join(f"; {note}" for note in notes)
        )
    else:
        log("process settings: none (not on the CPU)")
    return {"cpu": cpu, "host_memory_reuse": memory, "compilation_cache": cache}
