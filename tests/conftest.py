"""Test set-up: CPU with 8 virtual devices, so sharded code runs in CI.

The XLA flag must be set before jax is first imported, which is why it lives here.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Fail loudly on accidental broadcasting between ranks (rlax's habit).
jax.config.update("jax_numpy_rank_promotion", "raise")
