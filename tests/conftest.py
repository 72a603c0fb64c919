"""Test set-up: CPU with 8 virtual devices, so sharded code runs in CI, and the persistent
compilation cache, so a second run of the suite loads its compiled programs instead of
recompiling them (`GRPO_JAX_COMPILATION_CACHE=0` turns it off; `GRPO_JAX_CACHE_DIR` moves it,
default ~/.cache/grpo_jax/jax_cache; see grpo_jax/xla_setup.py).

The XLA flag must be set before jax is first imported, which is why it lives here.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from grpo_jax import xla_setup  # noqa: E402

# Fail loudly on accidental broadcasting between ranks (rlax's habit).
jax.config.update("jax_numpy_rank_promotion", "raise")
xla_setup.enable_compilation_cache()
