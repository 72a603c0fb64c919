"""Tests for grpo_jax.xla_setup: flag merging, cache directory, and results that are the same
with the persistent compilation cache off, cold and warm."""

import os
import subprocess
import sys
import textwrap

import numpy as np

from grpo_jax import xla_setup


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
    from grpo_jax import xla_setup
    xla_setup.apply_xla_flags()
    cache = xla_setup.enable_compilation_cache(sys.argv[2] or None,
                                               enable=bool(sys.argv[2]))
    import jax, jax.numpy as jnp
    from grpo_jax import model as M, sampling as S
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
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
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
