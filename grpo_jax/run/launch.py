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

`run_main` runs an entry point's main (`config_utils.run_app` uses it): a full disk (ENOSPC
or EDQUOT anywhere in the exception's chain) ends the process with exit status 1 and one
last line naming the file and the error, instead of a traceback followed by those of every
thread and exit handler that then fails on the same disk.
"""

from __future__ import annotations

import errno
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


_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def full_disk_error(error: BaseException | None) -> OSError | None:
    """The ENOSPC / EDQUOT `OSError` in `error`'s chain (itself, its cause or context), or
    None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL_DISK:
            return error
        error = error.__cause__ or error.__context__
    return None


def run_main(main: Callable, argv, log: Callable[[str], None] = _stderr):
    """`main(argv)`; on a full disk, one line (the file, ENOSPC) and `SystemExit(1)`.

    The line is the last thing the process writes to stderr: the shutdown that follows
    (threads, exit handlers, which fail on the full disk as well) writes to /dev/null."""
    try:
        return main(argv)
    except Exception as e:  # pylint: disable=broad-except  # re-raised unless a full disk
        full = full_disk_error(e)
        if full is None:
            raise
        where = full.filename or "a file it did not name"
        log(
            f"FATAL: {where}: {full.strerror or 'No space left on device'} "
            f"({errno.errorcode.get(full.errno, full.errno)}); free space there, or point "
            f"--workdir (or GRPO_JAX_CACHE_DIR) at another disk, and run again"
        )
        sys.stdout.flush()
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # pylint: disable=consider-using-with
        raise SystemExit(1) from None
