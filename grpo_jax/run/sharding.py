"""Mesh and sharding rules from the config; multi-host start-up.

Sharding is data, not code scattered through modules (big_vision's habit): the config's
`mesh` block says how many devices sit on the `data` axis and whether parameters are sharded
too; this module turns that into a `Mesh` and `NamedSharding`s, and the train step only calls
`with_sharding_constraint` with what it is given.

- Batch arrays `[B, ...]` are split along `data` (B must be divisible by the axis size).
- Parameters are replicated, or (`shard_params=True`, FSDP-style) each parameter's largest
  dimension divisible by the axis size is split along `data`; XLA inserts the all-gathers.
- Multi-host: JAX's own runtime, `jax.distributed.initialize`, before any other JAX call.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(mesh_config) -> None:
    """Start JAX's multi-host runtime when the config asks for it (idempotent).

    With `coordinator_address` empty, JAX auto-detects the cluster (SLURM, TPU pods, ...);
    otherwise the address, process count and id come from the config (e.g. two processes on
    127.0.0.1 with CPU collectives, as in tests/test_multihost.py).
    """
    if not mesh_config.get("multihost", False):
        return
    if jax.distributed.is_initialized():
        return
    kwargs: dict[str, Any] = {}
    if mesh_config.get("coordinator_address"):
        kwargs = dict(
            coordinator_address=mesh_config.coordinator_address,
            num_processes=int(mesh_config.num_processes),
            process_id=int(mesh_config.process_id),
        )
    jax.distributed.initialize(**kwargs)


def make_mesh(mesh_config) -> Mesh:
    """A 1-D mesh over `data` devices (-1: all devices of all processes)."""
    devices = jax.devices()
    n = int(mesh_config.get("data", -1))
    if n == -1:
        n = len(devices)
    if n < 1 or n > len(devices):
        raise ValueError(
            f"config.mesh.data={n}: must be -1 or in [1, {len(devices)}] "
            f"(devices available: {len(devices)})"
        )
    return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split along `data`, the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def param_spec(shape: tuple[int, ...], axis_size: int, shard: bool) -> P:
    """FSDP rule: split the largest dimension divisible by `axis_size`; else replicate."""
    if not shard or axis_size == 1:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % axis_size == 0 and shape[d] >= axis_size:
            spec = [None] * len(shape)
            spec[d] = DATA_AXIS
            return P(*spec)
    return P()


def param_shardings(params: Any, mesh: Mesh, shard: bool, leading_axes: int = 0) -> Any:
    """A pytree of `NamedSharding`s for `params` (arrays or ShapeDtypeStructs).

    `leading_axes` skips population axes (they stay unsharded).
    """
    size = mesh.shape[DATA_AXIS]

    def one(x):
        shape = tuple(x.shape)
        spec = param_spec(shape[leading_axes:], size, shard)
        return NamedSharding(mesh, P(*([None] * leading_axes), *spec))

    return jax.tree.map(one, params)
