"""Compiled population chunk programs, kept in memory and (opt-in) serialized on disk.

`PROGRAMS.get(setup, chunk_steps, state, hp)` returns the ahead-of-time compiled
`train.make_rl_chunk(setup, chunk_steps, population=True)` for these arguments, compiling it
only when neither the in-memory cache nor the disk cache (`xla_setup.program_cache_dir`,
on when the compilation cache is) has it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import pickle
import tempfile
import warnings
from typing import Any

import jax
import numpy as np
from jax.experimental import serialize_executable

from grpo_jax.rl import train
from grpo_jax.run import xla_setup


class ProgramCache:
    """Compiled chunk programs, least recently used dropped beyond `max_size`.

    Keyed by everything that determines a program: the static setup, the chunk length and
    the abstract arguments (shapes, dtypes, shardings). Host-side only, like jax's own jit
    cache; it lets a resumed run or a repeated population skip recompilation.

    On disk too, when `xla_setup.program_cache_dir()` is set (the compilation cache is on):
    each compiled program is serialized (`jax.experimental.serialize_executable`) under a
    `xla_setup.program_key` of the same inputs plus the code and library fingerprints, and a
    later process loads it without tracing or lowering (0.1 s instead of ~1.2 s with jax's
    cache alone, ~3.5 s cold, for a study program). Each file carries the sha256 of its
    contents, checked before anything in it is unpickled or run; a damaged file, or one that
    fails to load, is deleted with a warning, recompiled and replaced (docs/design.md, 'Data
    flow').
    """

    def __init__(self, max_size: int = 8):
        self.max_size = int(max_size)
        self._programs: collections.OrderedDict = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._programs)

    def clear(self) -> None:
        self._programs.clear()

    @staticmethod
    def key(setup: train.RLSetup, chunk_steps: int, state, hp) -> tuple:
        """The in-memory key: setup, chunk length, tree structure and each leaf's shape,
        dtype, weak type and sharding."""
        spec = lambda x: (
            x.shape,
            str(x.dtype),
            bool(getattr(x, "weak_type", False)),
            getattr(x, "sharding", None),
        )
        leaves = jax.tree.leaves((state, hp))
        return (setup, chunk_steps, jax.tree.structure((state, hp)), tuple(map(spec, leaves)))

    @staticmethod
    def disk_path(key: tuple, state, hp) -> str | None:
        """`<program cache dir>/chunk-<program_key>.pkl` of an in-memory `key` (the mesh's
        device ids added: a sharding's repr omits them), or None when the disk cache is off."""
        directory = xla_setup.program_cache_dir()
        if not directory:
            return None
        devices = [
            _sharding_devices(getattr(x, "sharding", None)) for x in jax.tree.leaves((state, hp))
        ]
        return os.path.join(directory, f"chunk-{xla_setup.program_key(*key, devices)}.pkl")

    def get(self, setup: train.RLSetup, chunk_steps: int, state, hp) -> tuple[Any, bool]:
        """(ahead-of-time compiled population chunk program, whether it was cached, in
        memory or on disk)."""
        key = self.key(setup, chunk_steps, state, hp)
        if key in self._programs:
            self._programs.move_to_end(key)
            return self._programs[key], True
        path = self.disk_path(key, state, hp)
        program = _load_program(path) if path else None
        cached = program is not None
        if program is None:
            lowered = train.make_rl_chunk(setup, chunk_steps, population=True).lower(state, hp)
            if path:  # compiled afresh, as one reloaded by jax's cache serializes incomplete
                with xla_setup.persistent_cache_off():
                    program = lowered.compile()
                _save_program(path, program)
            else:
                program = lowered.compile()
        self._programs[key] = program
        while len(self._programs) > self.max_size:
            self._programs.popitem(last=False)
        return program, cached


def _sharding_devices(sharding) -> tuple[int, ...]:
    """Device ids of a sharding in its mesh's order (its repr does not show them)."""
    if sharding is None:
        return ()
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None and hasattr(mesh, "devices"):
        return tuple(int(d.id) for d in np.asarray(mesh.devices).flat)
    return tuple(sorted(int(d.id) for d in sharding.device_set))


# The first line of a program file, then the sha256 (hex) of the pickle that follows it.
_MAGIC = b"grpo_jax program v1\n"


def _discard(path: str, why: str) -> None:
    """Warn that the program at `path` is not used, and delete it (recompiled, then stored)."""
    warnings.warn(f"{path}: cached program not loaded ({why}); deleted, compiling it again")
    with contextlib.suppress(OSError):
        os.remove(path)


def _load_program(path: str):
    """The executable serialized at `path` on the devices it was compiled for, or None
    (absent; or damaged, unreadable: then it is deleted with a warning and compiled again).

    Nothing is unpickled or handed to the runtime before the file's checksum matches its
    contents: a damaged executable could crash the process in native code."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        _discard(path, f"unreadable: {e.strerror}")
        return None
    digest_end = len(_MAGIC) + 65  # 64 hex digits and a newline
    if not blob.startswith(_MAGIC) or blob[digest_end - 1 : digest_end] != b"\n":
        _discard(path, f"not a program file of this version ({len(blob)} bytes)")
        return None
    body = blob[digest_end:]
    if hashlib.sha256(body).hexdigest().encode() != blob[len(_MAGIC) : digest_end - 1]:
        _discard(path, "checksum mismatch: the file is damaged")
        return None
    try:
        payload, in_tree, out_tree, device_ids = pickle.loads(body)
        by_id = {d.id: d for d in jax.devices()}
        devices = [by_id[i] for i in device_ids]
        return serialize_executable.deserialize_and_load(
            payload, in_tree, out_tree, execution_devices=devices
        )
    except Exception as e:  # pylint: disable=broad-except  # any failure: compile afresh
        _discard(path, repr(e))
        return None


def _save_program(path: str, program) -> None:
    """Serialize `program` and its execution devices, in order, to `path` atomically, behind
    the checksum `_load_program` verifies (a cache: a failure warns and leaves no file)."""
    tmp = None
    try:
        # The executable's device assignment (private API): loading on any other device
        # list, even in another order, gives a program that fails or aborts when called.
        device_ids = [d.id for d in program._executable.xla_executable.local_devices()]
        body = pickle.dumps((*serialize_executable.serialize(program), device_ids))
        blob = _MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except Exception as e:  # pylint: disable=broad-except
        warnings.warn(f"{path}: program not cached ({e!r})")
        if tmp and os.path.exists(tmp):
            os.remove(tmp)


PROGRAMS = ProgramCache()
