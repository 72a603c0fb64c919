"""Process settings belong to entry points: importing the library changes nothing
process-wide, and `launch.configure` sets the CPU tuning only on the CPU, saying so."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_IMPORT_ALL = textwrap.dedent("""
    import ctypes, importlib, json, os, pkgutil
    calls = []
    class Recorder:  # any glibc call through ctypes (mallopt) is recorded, not made
        def __init__(self, *a, **k): pass
        def __getattr__(self, name):
            return lambda *a: calls.append(name) or 1
    ctypes.CDLL = Recorder
    import jax
    keys = ("jax_cpu_enable_async_dispatch", "jax_enable_compilation_cache",
            "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    def state():
        return {"XLA_FLAGS": os.environ.get("XLA_FLAGS"),
                **{k: jax.config.values.get(k) for k in keys}}
    before = state()
    calls.clear()  # only what importing grpo_jax does counts
    import grpo_jax
    names = [m.name for m in pkgutil.walk_packages(grpo_jax.__path__, "grpo_jax.")]
    for name in names:
        importlib.import_module(name)
    print(json.dumps({"before": before, "after": state(), "calls": calls,
                      "modules": len(names)}))
""")


def _child(code: str, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_cpu_fake_probe=1")
    full.update(env)
    full.pop("GRPO_JAX_COMPILATION_CACHE", None)
    full.pop("GRPO_JAX_REUSE_MEMORY", None)
    return subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=240
    )


def test_importing_every_module_changes_no_process_setting():
    import json  # noqa: PLC0415

    out = _child(_IMPORT_ALL, JAX_PLATFORMS="cpu")
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["modules"] > 40  # every subpackage and module was imported
    assert got["after"] == got["before"]
    assert got["calls"] == []  # no mallopt (nor any other glibc call) on import


_CONFIGURE = textwrap.dedent("""
    import jax
    from grpo_jax.run import launch
    got = launch.configure(host_memory_reuse={memory}, compilation_cache={cache})
    print("GOT", got["cpu"], got["host_memory_reuse"], bool(got["compilation_cache"]),
          jax.config.values["jax_cpu_enable_async_dispatch"],
          jax.config.values["jax_enable_compilation_cache"])
""")


def test_configure_sets_the_cpu_tuning_and_says_so(tmp_path):
    out = _child(
        _CONFIGURE.format(memory=True, cache=True),
        JAX_PLATFORMS="cpu",
        GRPO_JAX_CACHE_DIR=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("process settings")]
    assert len(lines) == 1 and "host memory reuse on" in lines[0] and str(tmp_path) in lines[0]
    assert "GOT True True True False True" in out.stdout


def test_a_cache_directory_that_cannot_be_created_turns_the_cache_off(tmp_path):
    """A file where the cache directory should be: the run goes on without the cache, and
    the settings line (the only one) says so, naming the path and the way out."""
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    code = _CONFIGURE.format(memory=False, cache=True) + "print('RAN', int(jax.jit(abs)(-3)))\n"
    for cache_dir in (blocker, blocker / "jax_cache"):  # the directory itself, its parent
        env = dict(JAX_PLATFORMS="cpu", GRPO_JAX_CACHE_DIR=str(cache_dir), XLA_FLAGS="")
        out = _child(code, **env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "GOT True False False True False" in out.stdout and "RAN 3" in out.stdout
        lines = [ln for ln in out.stderr.splitlines() if str(cache_dir) in ln]
        assert len(lines) == 1 and lines[0].startswith("process settings"), out.stderr
        assert "compilation cache off" in lines[0] and "GRPO_JAX_CACHE_DIR" in lines[0]


_FULL_DISK = textwrap.dedent("""
    import atexit, errno, os, sys, threading
    from grpo_jax.run import config_utils, jsonio

    def main(argv):
        # What a full disk brings at shutdown: exit handlers and threads failing as well.
        atexit.register(lambda: print("Traceback (most recent call last): AT EXIT",
                                      file=sys.stderr))
        def late():
            raise OSError(errno.ENOSPC, "No space left on device (IN A THREAD)")
        threading.Timer(0.3, late).start()
        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync = full  # the disk fills while the summary is written
        jsonio.write_json_atomic(os.environ["SUMMARY"], {"reward": 1.0})

    config_utils.run_app(main)
""")


def test_a_full_disk_ends_the_run_with_one_line_naming_the_file(tmp_path):
    """ENOSPC while writing a run's file: exit status 1 and the last line on stderr names
    the file and ENOSPC; nothing of the failing shutdown (exit handlers, threads) follows,
    and no temporary file is left."""
    summary = tmp_path / "run" / "summary.json"
    out = _child(
        _FULL_DISK,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="",
        SUMMARY=str(summary),
        GRPO_JAX_COMPILATION_CACHE="0",
        GRPO_JAX_REUSE_MEMORY="0",
    )
    assert out.returncode == 1, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"FATAL: {summary}: No space left on device (ENOSPC)"), out.stderr
    assert "AT EXIT" not in out.stderr and "IN A THREAD" not in out.stderr, out.stderr
    assert os.listdir(summary.parent) == []


def test_configure_flags_turn_each_setting_off():
    out = _child(_CONFIGURE.format(memory=False, cache=False), JAX_PLATFORMS="cpu")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "host memory reuse off, compilation cache off" in out.stderr
    assert "GOT True False False True False" in out.stdout


def test_configure_sets_nothing_off_the_cpu():
    """JAX_PLATFORMS naming an accelerator first: nothing is set (the backend is never
    created here, so no accelerator is needed)."""
    code = textwrap.dedent("""
        import jax
        from grpo_jax.run import launch
        before = dict(jax.config.values)
        got = launch.configure()
        print("GOT", got["cpu"], got["host_memory_reuse"], got["compilation_cache"],
              dict(jax.config.values) == before)
    """)
    out = _child(code, JAX_PLATFORMS="cuda,cpu")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "process settings: none (not on the CPU)" in out.stderr
    assert "GOT False False None True" in out.stdout
