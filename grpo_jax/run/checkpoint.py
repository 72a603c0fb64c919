"""Orbax save / restore of any pytree plus JSON metadata (the only file I/O of the library,
with writers.py).

Layout: `<directory>/<step>/state` (the pytree, orbax StandardSave) and
`<directory>/<step>/metadata` (JSON). The pytree is stored as a flat dict
`{"000000": leaf, ...}` in `jax.tree_util` flattening order, so any pytree (nnx.State,
NamedTuples, dataclasses, optax states, integer-keyed dicts) round-trips; `restore` rebuilds
it with the structure of `target`. Typed PRNG keys (`jax.random.key`) are stored as their
raw key data and re-wrapped. Restoring is exact: bit-for-bit identical leaves.

Integrity: `save` stores a CRC-32 of every leaf's bytes (with its dtype and shape) in the
metadata under `INTEGRITY_KEY`, and `restore` recomputes them: a checkpoint whose bytes
changed while its files kept their size (which orbax/OCDBT reads back without complaint)
is a `CorruptCheckpointError`, and `restore_newest_intact` falls back past it as past a
truncated one. Leaves that span several processes are not checksummed. The key is
stripped from the metadata callers get back. `save(..., require_finite=True)` refuses a
pytree with a NaN or infinite floating leaf before anything is written.

    save(directory, step, pytree, metadata)                   # blocks until written
    pytree, metadata = restore(directory, target, step=None)  # latest step by default
    latest_step(directory) -> int | None
    read_metadata(directory, step=None) -> dict
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from grpo_jax.run import jsonio

INTEGRITY_KEY = "_integrity"  # metadata key of the leaves' checksums (see the docstring)


class CheckpointMismatchError(ValueError):
    """A checkpoint's structure or shapes differ from the restore target's."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint reads back, but its bytes differ from the ones saved (checksum)."""


class NonFiniteCheckpointError(ValueError):
    """`save(..., require_finite=True)` was given a NaN or infinite leaf."""


def _manager(directory: str, read_only: bool = False) -> ocp.CheckpointManager:
    directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(create=not read_only, enable_async_checkpointing=False)
    handlers = {"state": ocp.StandardCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _is_key(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _flatten(pytree) -> dict[str, Any]:
    leaves = jax.tree_util.tree_leaves(pytree)
    return {f"{i:06d}": (jax.random.key_data(x) if _is_key(x) else x) for i, x in enumerate(leaves)}


def _host(x) -> np.ndarray | None:
    """The leaf's bytes on this host, or None when it spans several processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None
    return np.asarray(x)


def _checksum(arr: np.ndarray) -> dict[str, Any]:
    arr = np.ascontiguousarray(arr)
    return {"crc32": zlib.crc32(arr.tobytes()), "dtype": str(arr.dtype), "shape": list(arr.shape)}


def _check_finite(directory: str, step: int, pytree: Any) -> None:
    for path, x in jax.tree_util.tree_flatten_with_path(pytree)[0]:
        if _is_key(x) or not jnp.issubdtype(getattr(x, "dtype", np.int32), jnp.inexact):
            continue
        arr = _host(x)
        if arr is not None and not np.isfinite(arr).all():
            raise NonFiniteCheckpointError(
                f"not saving checkpoint step {step} under {directory}: leaf "
                f"{jax.tree_util.keystr(path)} holds {int((~np.isfinite(arr)).sum())} NaN or "
                f"infinite values"
            )


def save(
    directory: str,
    step: int,
    pytree: Any,
    metadata: dict | None = None,
    max_to_keep: int | None = None,
    require_finite: bool = False,
) -> None:
    """Write `pytree` and JSON `metadata` as checkpoint `step` under `directory` (created if
    needed; an existing checkpoint with the same step is replaced). Blocks until done.
    With `max_to_keep`, older steps beyond the newest `max_to_keep` are deleted afterwards
    (orbax writes a step to a temporary directory and renames it, so a crash mid-save
    leaves the previous steps intact). Every leaf's checksum goes into the metadata (see
    the module docstring); `require_finite` refuses (`NonFiniteCheckpointError`, nothing
    written) a pytree with a non-finite floating leaf."""
    metadata = jsonio.to_jsonable(dict(metadata or {}))
    json.dumps(metadata)  # fail here, before anything is written, if not serialisable
    step = int(step)
    if require_finite:
        _check_finite(directory, step, pytree)
    flat = _flatten(pytree)
    sums = {}
    for k, x in flat.items():
        arr = _host(x)
        if arr is not None:
            sums[k] = _checksum(arr)
    metadata[INTEGRITY_KEY] = {"leaves": sums}
    with _manager(directory) as mngr:
        if step in mngr.all_steps():
            mngr.delete(step)
        saved = mngr.save(
            step,
            force=True,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(flat), metadata=ocp.args.JsonSave(metadata)
            ),
        )
        mngr.wait_until_finished()
        if saved and max_to_keep is not None:
            for old in sorted(mngr.all_steps())[: -int(max_to_keep)]:
                mngr.delete(old)
    if not saved:
        raise RuntimeError(f"orbax did not save step {step} under {directory!r}")


def latest_step(directory: str) -> int | None:
    """The largest saved step under `directory`, or None (also when it does not exist)."""
    if not directory or not os.path.isdir(directory):
        return None
    with _manager(directory, read_only=True) as mngr:
        return mngr.latest_step()


def all_steps(directory: str) -> list[int]:
    """Every saved step under `directory`, ascending ([] if none)."""
    if not directory or not os.path.isdir(directory):
        return []
    with _manager(directory, read_only=True) as mngr:
        return sorted(mngr.all_steps())


def read_metadata(directory: str, step: int | None = None) -> dict:
    """The JSON metadata of checkpoint `step` (default: the latest) without the pytree."""
    step = latest_step(directory) if step is None else int(step)
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {directory!r}")
    with _manager(directory, read_only=True) as mngr:
        out = mngr.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    meta = dict(out["metadata"] or {})
    meta.pop(INTEGRITY_KEY, None)
    return meta


def _abstract(x):
    if _is_key(x):
        x = jax.eval_shape(jax.random.key_data, x)
    sharding = getattr(x, "sharding", None)
    if not isinstance(sharding, jax.sharding.Sharding):
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def _read_every_array(directory: str, step: int) -> None:
    """Read every array of step `step`'s OCDBT item directly with tensorstore, waiting for
    each read, before orbax restores it: a damaged step fails here with the array named.

    Orbax reads the arrays concurrently on an event loop of its own and closes the loop at
    the first failure while the other reads are still in flight; each of them then printed
    "RuntimeError: Event loop is closed" when it finished (dozens of tracebacks in a run
    that fell back to an older checkpoint and succeeded). Here no read is left running."""
    path = os.path.join(directory, str(step), "state")
    if not os.path.exists(os.path.join(path, "manifest.ocdbt")):
        return  # not OCDBT (an older layout): orbax alone
    import tensorstore as ts  # pylint: disable=import-outside-toplevel

    context = ts.Context()
    kvstore = {"driver": "ocdbt", "base": f"file://{os.path.abspath(path)}"}
    reads, name = [], "the index"
    try:
        keys = [
            k.decode() for k in ts.KvStore.open(kvstore, context=context).result().list().result()
        ]
        for key in sorted(keys):
            for meta_name, driver in ((".zarray", "zarr"), ("zarr.json", "zarr3")):
                if key == meta_name or key.endswith("/" + meta_name):
                    name = key[: -len(meta_name)]
                    spec = {"driver": driver, "kvstore": dict(kvstore, path=name)}
                    reads.append((name, ts.open(spec, context=context, open=True).result().read()))
    except Exception as e:  # noqa: BLE001  tensorstore raises several types
        for _, read in reads:
            with contextlib.suppress(Exception):
                read.result()
        raise CorruptCheckpointError(
            f"checkpoint step {step} in {directory} is unreadable ({name}: {_first_line(e)})"
        ) from e
    errors = []
    for name, read in reads:  # wait for every read, failed or not
        try:
            read.result()
        except Exception as e:  # noqa: BLE001
            errors.append(f"{name.rstrip('/')}: {_first_line(e)}")
    if errors:
        raise CorruptCheckpointError(
            f"checkpoint step {step} in {directory} is unreadable ({len(errors)} of "
            f"{len(reads)} arrays; {errors[0]})"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def restore(directory: str, target: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restore checkpoint `step` (default: the latest) into the structure of `target`.

    target: a pytree of arrays or `jax.ShapeDtypeStruct`s (e.g. `jax.eval_shape(init)`) with
    the saved structure; leaves come back with target's dtypes and, where target leaves carry
    one, their sharding. Returns (pytree, metadata dict). Raises FileNotFoundError if there
    is no checkpoint, ValueError if the structure or shapes differ.
    """
    step = latest_step(directory) if step is None else int(step)
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {directory!r}")
    leaves, treedef = jax.tree_util.tree_flatten(target)
    abstract = {f"{i:06d}": _abstract(x) for i, x in enumerate(leaves)}
    with _manager(directory, read_only=True) as mngr:
        if step not in mngr.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} under {directory!r}; "
                f"saved steps: {sorted(mngr.all_steps())}"
            )
        saved = mngr.item_metadata(step)["state"]
        if saved is not None:
            saved_keys = set(saved.keys())
            if saved_keys != set(abstract):
                raise CheckpointMismatchError(
                    f"checkpoint {directory!r} step {step} has {len(saved_keys)} "
                    f"leaves but target has {len(abstract)}"
                )
            for k, a in abstract.items():
                if tuple(saved[k].shape) != tuple(a.shape):
                    raise CheckpointMismatchError(
                        f"leaf {k} ({jax.tree_util.keystr(_paths(target)[int(k)])})"
                        f": saved shape {tuple(saved[k].shape)} != target "
                        f"{tuple(a.shape)}"
                    )
        _read_every_array(directory, step)
        out = mngr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()
            ),
        )
    restored = [out["state"][f"{i:06d}"] for i in range(len(leaves))]
    meta = dict(out["metadata"] or {})
    _verify(directory, step, restored, meta.pop(INTEGRITY_KEY, None), target)
    restored = [
        jax.random.wrap_key_data(r, impl=t.dtype._impl) if _is_key(t) else r
        for r, t in zip(restored, leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, restored), meta


def _verify(directory, step, restored, integrity, target) -> None:
    """Compare the restored leaves with the checksums saved with them (checkpoints written
    before checksums existed have none: nothing to compare)."""
    sums = (integrity or {}).get("leaves", {})
    for i, x in enumerate(restored):
        want = sums.get(f"{i:06d}")
        arr = _host(x) if want is not None else None
        if arr is None or str(arr.dtype) != want["dtype"]:
            continue  # spans processes, or restored into another dtype
        got = _checksum(arr)
        if got != want:
            raise CorruptCheckpointError(
                f"checkpoint step {step} in {directory} is damaged: leaf {i:06d} "
                f"({jax.tree_util.keystr(_paths(target)[i])}) does not match the checksum "
                f"saved with it"
            )


def _paths(tree):
    return [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def restore_newest_intact(
    directory: str, target: Any, log: Callable[[str], Any] = print, max_step: int | None = None
) -> tuple[Any, dict, int]:
    """Restore the newest checkpoint under `directory` that reads back, newest first.

    An unreadable step (truncated files, a crash mid-write) or a damaged one (checksum) is
    skipped with a warning naming it. With `max_step`, newer steps are not considered.
    Returns (pytree, metadata, step). If no step is intact, raises `RuntimeError` with
    one paragraph naming the directory and the steps tried (shape mismatches, i.e. a
    different model, still raise `ValueError` at once).
    """
    steps = [s for s in all_steps(directory) if max_step is None or s <= max_step]
    errors = []
    for step in reversed(steps):
        try:
            pytree, meta = restore(directory, target, step)
            return pytree, meta, step
        except CheckpointMismatchError:
            raise
        except Exception as e:  # noqa: BLE001  orbax/tensorstore raise many types
            first = _first_line(e)
            errors.append(f"step {step}: {type(e).__name__}: {first}")
            if isinstance(e, CorruptCheckpointError):  # its message names the step already
                log(f"warning: {first}; trying the previous step")
            else:
                log(
                    f"warning: checkpoint step {step} in {directory} is unreadable ({first}); "
                    f"trying the previous step"
                )
    raise RuntimeError(
        f"no intact checkpoint in {directory}: tried steps {list(reversed(steps))} and none "
        f"could be read ({'; '.join(errors) or 'no steps'}). Delete the directory (or use a "
        f"new workdir) to start the run afresh."
    )
