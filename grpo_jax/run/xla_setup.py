"""The process settings' primitives: host memory reuse and the persistent compilation cache.

Nothing here runs on import, and no library function calls these: entry points apply them
through `launch.configure` (which does so only on the CPU and says what it set), the test
conftest directly.

    reuse_host_memory()        # before jax creates its CPU backend (glibc malloc, sync dispatch)
    enable_compilation_cache() # any time before the first compile

`enable_compilation_cache` points `jax_compilation_cache_dir` at
`$GRPO_JAX_CACHE_DIR` or `~/.cache/grpo_jax/jax_cache` (XDG_CACHE_HOME respected) and lowers
the thresholds so every compile of the small programs here is cached. A second run of the
same program loads the executable instead of recompiling it. `GRPO_JAX_COMPILATION_CACHE=0`
(or `enable=False`) turns it off. Cached executables are keyed by jax/jaxlib version, the
program, the flags and the devices, so results are the same with the cache on or off
(tests/test_xla_setup.py checks this).

On top of it, `program_cache_dir` (`<cache dir>/programs`, on whenever the compilation cache
is) keeps whole serialized executables of the population chunk programs
(`programs.ProgramCache`): jax's cache still traces and lowers a program to find its key (about
1.2 s for each of the study's 12 programs, a tenth of a second run), while these are keyed
without tracing, by `program_key`: a fingerprint of the grpo_jax sources, the versions of
the libraries that build the program, the jax configuration, XLA_FLAGS, the devices and the
program's own static setup and abstract arguments. Change any of them and the key changes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import warnings
from typing import Callable

_FALSE = ("0", "false", "no", "off")


def _flag_name(flag: str) -> str:
    return flag.lstrip("-").split("=", 1)[0]


def xla_flags_with_defaults(current: str, flags: tuple[str, ...]) -> str:
    """`current` XLA_FLAGS plus each of `flags` whose name `current` does not set already."""
    present = {_flag_name(f) for f in current.split()}
    extra = [f for f in flags if _flag_name(f) not in present]
    return " ".join([current.strip(), *extra]).strip()


def backends_initialised() -> bool:
    """Whether jax has created its backends already (then XLA_FLAGS are fixed)."""
    import sys  # noqa: PLC0415

    xb = sys.modules.get("jax._src.xla_bridge")
    return bool(xb is not None and getattr(xb, "_backends", None))


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_host_memory(enable: bool | None = None) -> bool:
    """Keep the host memory XLA frees for its next call instead of handing it back to the OS.

    XLA's CPU runtime allocates each call's temporary buffers (733 MB for the W1 step) and
    frees them when the call ends. glibc maps blocks that large with mmap and unmaps them on
    free, so every call page-faults its temporaries in afresh as zeroed pages: 179,000 minor
    faults and 0.3 CPU seconds of kernel time per W1 step on 2 cores. Here glibc
    serves large blocks from the heap (`M_MMAP_MAX` 0) and never trims it
    (`M_TRIM_THRESHOLD` at its maximum), and jax runs CPU programs on the calling thread
    (`jax_cpu_enable_async_dispatch` False): the allocation then comes from the main thread's
    heap, since glibc's other threads' arenas map large blocks whatever the settings (one
    arena for all threads, `M_ARENA_MAX` 1, instead costs more in lock contention than it
    saves). W1 step on the 2-core Xeon: 1.18 -> 1.02 s, no page faults
    (benchmarks/README.md).

    The cost: the process keeps the memory of its largest call (it would be mapped again at
    the next call anyway), for every host allocation of the process (numpy, torch, also on a
    GPU run, where it gains nothing), and Python waits for each CPU program instead of
    running ahead (the runner calls one chunk of steps at a time). Computations and results
    do not change. Linux with glibc only, and not with another allocator in `LD_PRELOAD`
    (elsewhere nothing happens); call before jax creates its CPU backend. Returns True if
    all three settings took effect.

    Args:
      enable: force on/off; None reads `GRPO_JAX_REUSE_MEMORY` (default on; "0" = off).
    """
    import ctypes  # noqa: PLC0415

    if enable is None:
        enable = os.environ.get("GRPO_JAX_REUSE_MEMORY", "1").lower() not in _FALSE
    if not enable or backends_initialised():
        return False
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        glibc = ""
    preload = os.environ.get("LD_PRELOAD", "")
    if not glibc.startswith("glibc") or "malloc" in preload:  # tcmalloc, jemalloc, ...
        return False
    libc = ctypes.CDLL(None)
    # Trim first: if the second call failed, large blocks would still be unmapped as before.
    if not (libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) and libc.mallopt(_M_MMAP_MAX, 0)):
        return False
    import jax  # noqa: PLC0415

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


def default_cache_dir() -> str:
    """`$GRPO_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/grpo_jax/jax_cache`, else
    `~/.cache/grpo_jax/jax_cache`."""
    if os.environ.get("GRPO_JAX_CACHE_DIR"):
        return os.environ["GRPO_JAX_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "grpo_jax", "jax_cache")


def enable_compilation_cache(
    cache_dir: str | None = None,
    enable: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> str | None:
    """Turn on jax's persistent compilation cache; returns the directory, or None when off.

    A directory that cannot be created or written (a file in its place, no permission) is
    no reason to stop a run: the cache stays off and one line says why. Entries that a full
    disk left empty, or that cannot be read, are deleted here, once, with one line, instead
    of jax warning about each of them at every compile of every later run
    (`discard_broken_entries`).

    Args:
      cache_dir: where to keep compiled executables (default `default_cache_dir()`).
      enable: force on/off; None reads `GRPO_JAX_COMPILATION_CACHE` (default on; "0" = off).
      log: where those lines go (default: `warnings.warn`).
    """
    import jax  # noqa: PLC0415

    say = log or (lambda line: warnings.warn(line, stacklevel=3))
    if enable is None:
        enable = os.environ.get("GRPO_JAX_COMPILATION_CACHE", "1").lower() not in _FALSE
    if not enable:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    cache_dir = cache_dir or default_cache_dir()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        if not os.access(cache_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), cache_dir)
    except OSError as e:
        what = "a file is in its place" if isinstance(e, FileExistsError) else e.strerror
        say(
            f"compilation cache off: cannot use the directory {cache_dir} ({what}); set "
            f"GRPO_JAX_CACHE_DIR to a writable directory (or --nocompilation_cache)"
        )
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    removed = discard_broken_entries(cache_dir)
    if removed:
        say(
            f"{cache_dir}: deleted {removed} empty or unreadable compilation cache "
            f"entr{'y' if removed == 1 else 'ies'} (a full disk?); they are compiled again"
        )
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    # Cache every program, however small or quick to compile (tests compile many small ones).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache_dir


def discard_broken_entries(cache_dir: str) -> int:
    """Delete jax cache entries (`*-cache` files, with their `*-atime` files) of `cache_dir`
    that are empty or not readable; returns how many. jax writes an entry in place, so a
    full disk leaves it empty or cut; an empty one is found by its size without reading it
    (a cut one is not: jax then warns when it reads it, and compiles afresh)."""
    removed = 0
    try:
        entries = list(os.scandir(cache_dir))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.endswith("-cache"):
            continue
        try:
            if not entry.is_file() or (entry.stat().st_size > 0 and os.access(entry.path, os.R_OK)):
                continue
            os.remove(entry.path)
        except OSError:
            continue  # gone meanwhile, or not ours to delete
        removed += 1
        with contextlib.suppress(OSError):
            os.remove(entry.path[: -len("-cache")] + "-atime")
    return removed


def disable_compilation_cache() -> None:
    """Turn the persistent compilation cache off for this process."""
    import jax  # noqa: PLC0415

    jax.config.update("jax_enable_compilation_cache", False)


_LIBRARIES = ("jax", "jaxlib", "numpy", "optax", "flax", "chex")
_FINGERPRINT: list[str] = []


def code_fingerprint() -> str:
    """sha256 of every .py file of the grpo_jax package (relative path and contents), computed
    once per process."""
    import hashlib  # noqa: PLC0415

    if not _FINGERPRINT:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # grpo_jax/
        h = hashlib.sha256()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(f for f in filenames if f.endswith(".py")):
                path = os.path.join(dirpath, name)
                h.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    h.update(f.read() + b"\0")
        _FINGERPRINT.append(h.hexdigest())
    return _FINGERPRINT[0]


def program_cache_dir() -> str | None:
    """`<jax compilation cache dir>/programs` when the compilation cache is on, this is a
    single-process run and `GRPO_JAX_PROGRAM_CACHE` is not "0"; else None (serialized
    executables are neither kept nor loaded)."""
    import jax  # noqa: PLC0415

    if os.environ.get("GRPO_JAX_PROGRAM_CACHE", "1").lower() in _FALSE:
        return None
    cache_dir = jax.config.jax_compilation_cache_dir
    if not (jax.config.jax_enable_compilation_cache and cache_dir) or jax.process_count() > 1:
        return None
    return os.path.join(cache_dir, "programs")


@contextlib.contextmanager
def persistent_cache_off():
    """Compile inside this context without jax's persistent cache (restored afterwards).

    For programs that `programs.ProgramCache` serializes: an executable that jax loaded from
    its own cache serializes without its compiled kernels on the CPU (jaxlib 0.10.2: the
    reloaded program fails with "Function ... not found"), so those are compiled afresh.
    """
    import jax  # noqa: PLC0415
    from jax.experimental.compilation_cache import compilation_cache  # noqa: PLC0415

    was = jax.config.jax_enable_compilation_cache
    disable_compilation_cache()
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", was)
        compilation_cache.reset_cache()


def program_key(*parts) -> str:
    """sha256 key of a program built from `parts` (reprs of its static inputs), with the code
    fingerprint, library versions, jax configuration, XLA_FLAGS and devices added. NumPy
    arrays inside `parts` are printed in full, every float round-trip exact."""
    import hashlib  # noqa: PLC0415
    import importlib.metadata as md  # noqa: PLC0415
    import sys  # noqa: PLC0415

    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    config = {k: v for k, v in jax.config.values.items() if "compilation_cache" not in k}
    devices = [(d.platform, d.device_kind, d.id, d.process_index) for d in jax.devices()]
    with np.printoptions(threshold=sys.maxsize, floatmode="unique"):
        text = repr(
            (
                code_fingerprint(),
                {name: version(name) for name in _LIBRARIES},
                sorted(config.items(), key=lambda kv: kv[0]),
                os.environ.get("XLA_FLAGS", ""),
                devices,
                parts,
            )
        )
    return hashlib.sha256(text.encode()).hexdigest()
