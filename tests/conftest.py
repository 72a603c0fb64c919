"""Test set-up: CPU with 8 virtual devices, so sharded code runs in CI, and the persistent
compilation cache, so a second run of the suite loads its compiled programs instead of
recompiling them (`GRPO_JAX_COMPILATION_CACHE=0` turns it off; `GRPO_JAX_CACHE_DIR` moves it,
default ~/.cache/grpo_jax/jax_cache; see grpo_jax/run/xla_setup.py).

The tests compile the CPU code with LLVM optimisation level 0
(`--xla_backend_optimization_level=0`; XLA's own HLO passes run as usual): the suite is mostly
compiles of programs that then run a few steps, and this makes it ~40 % faster (test_runner.py
+ test_evaluate.py, cache off: 98 -> 57 s). `GRPO_JAX_TEST_FULL_OPT=1` compiles at the
default level, as the entry points and benchmarks do. The XLA flags must be set before jax is
first imported, which is why they live here.
"""

import os

from grpo_jax.run.xla_setup import xla_flags_with_defaults  # noqa: E402  (does not import jax)

_flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
if os.environ.get("GRPO_JAX_TEST_FULL_OPT", "0").lower() in ("0", "false", "no", "off", ""):
    # An optimisation level the user set in XLA_FLAGS wins.
    _flags = xla_flags_with_defaults(_flags, ("--xla_backend_optimization_level=0",))
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from grpo_jax.run import xla_setup  # noqa: E402

# Fail loudly on accidental broadcasting between ranks (rlax's habit).
jax.config.update("jax_numpy_rank_promotion", "raise")
xla_setup.enable_compilation_cache()
xla_setup.reuse_host_memory()  # as the entry points do


@pytest.fixture(scope="module")
def tiny_gguf_path(tmp_path_factory):
    """A tiny GGUF file (tests/test_gguf.py's writer: grouped-query attention, tied
    embeddings, byte-level BPE with single-token digits and a chat template)."""
    from test_gguf import hf_weights, write_tiny  # noqa: PLC0415

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny(path, hf_weights())
    return str(path)
