"""Tests for grpo_jax.xla_setup: flag merging, cache directory, results that are the same
with the persistent compilation cache off, cold and warm, and host memory reuse."""

import os
import platform
import resource
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from grpo_jax.run import xla_setup


def test_flags_merge_keeps_user_choices():
    merged = xla_setup.xla_flags_with_defaults(
        "--xla_force_host_platform_device_count=8 --a=1", ("--a=2", "--b=3")
    )
    assert merged.split() == ["--xla_force_host_platform_device_count=8", "--a=1", "--b=3"]
    assert xla_setup.xla_flags_with_defaults("", ()) == ""


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GRPO_JAX_CACHE_DIR", str(tmp_path / "c"))
    assert xla_setup.default_cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv("GRPO_JAX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert xla_setup.default_cache_dir() == str(tmp_path / "grpo_jax" / "jax_cache")


_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from grpo_jax.run import xla_setup
    cache = xla_setup.enable_compilation_cache(sys.argv[2] or None,
                                               enable=bool(sys.argv[2]))
    import jax, jax.numpy as jnp
    from grpo_jax.models import model as M, sampling as S
    cfg = M.ModelConfig(vocab_size=11, num_layers=2, width=16, num_heads=2, mlp_width=24,
                        max_len=12)
    params = M.init(cfg, jax.random.key(0))
    prompts = jax.random.randint(jax.random.key(1), (4, 4), 0, 11)
    out = S.sample(cfg, params, prompts, jax.random.key(2), max_new_tokens=6,
                   return_logits=True)

    def loss(p):
        logits = M.completion_logits(cfg, p, prompts, out.tokens)
        return -jnp.mean(M.token_logprobs(logits, out.tokens))

    grads = jax.jit(jax.grad(loss))(params)
    np.savez(sys.argv[1], tokens=out.tokens, logp=out.logp, logits=out.logits,
             *[np.asarray(g) for g in jax.tree.leaves(grads)])
""")


def _run(tmp_path, name, cache_dir):
    out = tmp_path / f"{name}.npz"
    # Level 0, as the rest of the suite: what is cached does not depend on the level.
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
    env.pop("GRPO_JAX_COMPILATION_CACHE", None)
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(out), cache_dir], check=True, env=env, timeout=300
    )
    return dict(np.load(out))


def test_results_equal_with_cache_off_cold_and_warm(tmp_path):
    """Sampling and a gradient give bit-identical results without the cache, with an empty
    cache (compile and store) and with a full one (load the stored executables)."""
    cache_dir = str(tmp_path / "jax_cache")
    off = _run(tmp_path, "off", "")
    cold = _run(tmp_path, "cold", cache_dir)
    entries = os.listdir(cache_dir)
    assert entries, "the cache stored nothing"
    warm = _run(tmp_path, "warm", cache_dir)
    assert sorted(os.listdir(cache_dir)) == sorted(entries)  # all hits, nothing new
    for other in (cold, warm):
        assert off.keys() == other.keys()
        for k in off:
            np.testing.assert_array_equal(off[k], other[k], err_msg=k)


def test_empty_cache_entries_are_discarded_once_with_one_warning(tmp_path):
    """A full disk leaves empty entries in jax's cache: the next start deletes them with one
    warning naming the directory, and no compile warns "Error reading persistent compilation
    cache entry" (each entry is compiled and stored again)."""
    import warnings  # noqa: PLC0415

    from jax.experimental.compilation_cache import compilation_cache  # noqa: PLC0415

    keys = ("jax_enable_compilation_cache", "jax_compilation_cache_dir")
    was = {k: jax.config.values[k] for k in keys}
    x = np.arange(3, dtype=np.float32)
    try:
        xla_setup.enable_compilation_cache(str(tmp_path), enable=True)
        compilation_cache.reset_cache()
        jax.jit(lambda v: v * 3.0 + 17.0)(x)  # compiled and stored
        entries = [p for p in tmp_path.iterdir() if p.name.endswith("-cache")]
        assert entries
        for p in entries:
            p.write_bytes(b"")
        with warnings.catch_warnings(record=True) as caught:  # the next run
            warnings.simplefilter("always")
            xla_setup.enable_compilation_cache(str(tmp_path), enable=True)
            compilation_cache.reset_cache()
            jax.jit(lambda v: v * 3.0 + 17.0)(x)  # a new function: not in memory
        messages = [str(w.message) for w in caught]
        assert not [m for m in messages if "Error reading persistent compilation" in m]
        (line,) = [m for m in messages if str(tmp_path) in m]
        assert f"deleted {len(entries)} empty or unreadable" in line
        assert all(p.stat().st_size > 0 for p in entries)
    finally:
        for k, v in was.items():
            jax.config.update(k, v)
        compilation_cache.reset_cache()


def _tiny_population():
    import ml_collections  # noqa: PLC0415

    from grpo_jax.configs import grpo as grpo_config  # noqa: PLC0415

    c = grpo_config.get_config("task=bandit")
    c.task = ml_collections.ConfigDict(dict(name="bandit", num_tokens=16, sigma=2.0))
    c.policy = "tabular"
    c.grpo.update(num_prompts=2, group_size=8)
    c.train.update(num_steps=4, chunk_steps=2, progress=False, tensorboard=False)
    c.mesh.data = 1
    cells = [{"train.seed": s, "loss.beta": b} for s, b in ((0, 0.1), (1, 0.5))]
    return c, cells


def test_program_cache_on_disk_loads_the_same_program(tmp_path, monkeypatch):
    """A population run with the serialized-program cache off, cold (compile + store) and
    warm (load, no tracing): the same final state and metrics, bit for bit; a damaged file
    is recompiled with a warning."""
    import jax  # noqa: PLC0415
    import pytest  # noqa: PLC0415

    from grpo_jax.run import build
    from grpo_jax.run import programs, runner  # noqa: PLC0415

    c, cells = _tiny_population()
    program_dir = tmp_path / "programs"
    logs = []

    def run(name, directory):
        monkeypatch.setattr(xla_setup, "program_cache_dir", lambda: directory)
        programs.PROGRAMS.clear()  # forget the in-memory programs: only the disk remains
        logs.clear()
        out = runner.run_population(c, cells, str(tmp_path / name), log=logs.append)
        return out, [line.split()[0] for line in logs if "population program" in line]

    off, off_log = run("off", None)
    cold, cold_log = run("cold", str(program_dir))
    (stored,) = os.listdir(program_dir)
    warm, warm_log = run("warm", str(program_dir))
    assert (off_log, cold_log, warm_log) == (["compiled"], ["compiled"], ["reused"])
    for other in (cold, warm):
        for a, b in zip(jax.tree.leaves(off.state), jax.tree.leaves(other.state)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert off.history.keys() == other.history.keys()
        for k in set(off.history) - {"step_time", "tokens_per_s"}:  # not the clocks
            np.testing.assert_array_equal(off.history[k], other.history[k], err_msg=k)
    (program_dir / stored).write_bytes(b"not a program")
    with pytest.warns(UserWarning, match="cached program not loaded"):
        again, again_log = run("again", str(program_dir))
    assert again_log == ["compiled"] and (program_dir / stored).read_bytes() != b"not a program"
    np.testing.assert_array_equal(again.history["loss"], off.history["loss"])


def test_damaged_program_file_is_discarded_before_it_runs(tmp_path):
    """Bytes flipped inside a stored program are caught by its checksum before anything is
    unpickled or loaded: a warning naming the file, the file deleted, and the caller
    compiles again. (Unchecked, flipping the middle of this file aborts the process inside
    LLVM while the executable loads.)"""
    from grpo_jax.run import programs  # noqa: PLC0415

    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    path = str(tmp_path / "chunk-test.pkl")
    for where in (0.5, 0.78):
        with xla_setup.persistent_cache_off():  # as ProgramCache.get compiles what it stores
            programs._save_program(path, jax.jit(lambda a: a @ a.T + 1.0).lower(x).compile())
        np.testing.assert_array_equal(programs._load_program(path)(x), x @ x.T + 1.0)
        blob = bytearray(open(path, "rb").read())
        at = int(where * len(blob))
        blob[at : at + 8] = bytes(b ^ 0xFF for b in blob[at : at + 8])
        open(path, "wb").write(bytes(blob))
        with pytest.warns(UserWarning, match=r"chunk-test.pkl: cached program not loaded \(chec"):
            assert programs._load_program(path) is None
        assert not os.path.exists(path)


def test_program_key_covers_its_inputs(monkeypatch):
    import numpy as np  # noqa: PLC0415

    key = xla_setup.program_key("setup", 4, np.arange(3.0))
    assert key == xla_setup.program_key("setup", 4, np.arange(3.0))
    assert key != xla_setup.program_key("setup", 5, np.arange(3.0))
    # Arrays are printed in full and exactly: a change far inside a long array counts.
    big = np.linspace(0.0, 1.0, 5000)
    bumped = big.copy()
    bumped[2500] = np.nextafter(bumped[2500], 2.0)
    assert xla_setup.program_key(big) != xla_setup.program_key(bumped)
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_fake=1")
    assert xla_setup.program_key("setup", 4, np.arange(3.0)) != key
    assert len(xla_setup.code_fingerprint()) == 64
    monkeypatch.setenv("GRPO_JAX_PROGRAM_CACHE", "0")  # the switch for this cache alone
    assert xla_setup.program_cache_dir() is None


_KEY_CHILD = textwrap.dedent("""
    import sys
    from grpo_jax.run import xla_setup
    xla_setup.enable_compilation_cache(sys.argv[1], enable=True)  # whatever the caller's env
    import jax
    from grpo_jax.run import build, programs
    from test_xla_setup import _tiny_population  # tests/ is on PYTHONPATH

    c, cells = _tiny_population()
    setup, _, state, hp = build.build_population(c, cells, reference_dir=sys.argv[1] + "/ref")
    key = programs.ProgramCache.key(setup, 2, state, hp)
    print("PATH", programs.ProgramCache.disk_path(key, state, hp))
""")


def test_program_key_is_the_same_in_another_process(tmp_path):
    """The disk key must not depend on the process (an address in a repr, hash
    randomisation): two processes with different hash seeds name the same file."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = []
    for seed in ("1", "2"):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONHASHSEED=seed)
        env["PYTHONPATH"] = os.pathsep.join([here, os.path.dirname(here)])
        env.pop("GRPO_JAX_PROGRAM_CACHE", None)
        out = subprocess.run(
            [sys.executable, "-c", _KEY_CHILD, str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        paths += [line.split(" ", 1)[1] for line in out.stdout.splitlines() if line[:5] == "PATH "]
    assert len(paths) == 2 and paths[0] == paths[1] and paths[0].endswith(".pkl"), paths


_MEMORY_CHILD = textwrap.dedent("""
    import resource
    from grpo_jax.run import xla_setup
    on = xla_setup.reuse_host_memory()
    import jax, jax.numpy as jnp

    @jax.jit
    def f(x):  # 135 MB of temporaries (the matmul's and the cumsum's outputs)
        y = x.reshape(4096, 4096) @ x.reshape(4096, 4096)[:, :64]
        return y.sum() + jnp.cumsum(x * 2.0)[::5].sum()

    x = jnp.arange(1 << 24, dtype=jnp.float32) / (1 << 24)
    for _ in range(6):  # the heaps grow to the program's size over the first calls
        f(x).block_until_ready()
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ys = [float(f(x)) for _ in range(3)]
    print("ON", on, "FAULTS", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0, "Y", *ys)
""")


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_reuse_host_memory_stops_page_faults_and_keeps_results():
    """With `reuse_host_memory` a program's temporaries come back from the heap on later calls
    (after a few calls: a few hundred page faults for 3 calls) instead of being mapped afresh
    (~33,000 4 KiB faults per call); the results are the same, and `GRPO_JAX_REUSE_MEMORY=0`
    turns it off."""
    runs = {}
    for setting in ("1", "0"):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", GRPO_JAX_REUSE_MEMORY=setting)
        env.pop("LD_PRELOAD", None)
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        fields = out.stdout.split()
        runs[setting] = (fields[1], int(fields[3]), fields[5:])
    (on, faults_on, y_on), (off, faults_off, y_off) = runs["1"], runs["0"]
    assert (on, off) == ("True", "False")
    assert y_on == y_off
    if faults_off * resource.getpagesize() < 3 * 100e6:
        # Huge pages (transparent_hugepage "always") or large base pages: the default
        # faults too little for the difference to show.
        pytest.skip(f"the default run faulted only {faults_off} pages of 3 x 135 MB")
    # Usually a few hundred against ~100,000; but a call that runs on a thread whose glibc
    # arena has not held the program yet maps it afresh (~33,000) when the machine is busy,
    # so the bound allows one such call in three.
    assert faults_on < faults_off / 2, (faults_on, faults_off)


def test_reuse_host_memory_is_refused_once_backends_exist(monkeypatch):
    """After jax created its backends the settings cannot reach the CPU client: False, and
    neither glibc nor jax's configuration is touched."""
    import ctypes  # noqa: PLC0415

    jax.devices()
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: pytest.fail("mallopt called"))
    before = jax.config.values["jax_cpu_enable_async_dispatch"]
    monkeypatch.setenv("GRPO_JAX_REUSE_MEMORY", "1")
    assert xla_setup.reuse_host_memory() is False
    assert jax.config.values["jax_cpu_enable_async_dispatch"] == before
