"""Sweeps: expand a grid of configs, group cells that share a compiled program, cache results.

A sweep definition is a Python file (conventionally ``grpo_jax/configs/sweeps/NAME.py``) with::

    def get_sweep(arg=None) -> tuple[ConfigDict, list[Axis]]:
        ...

An axis is ``(key, values)`` with ``key`` a dotted config key (``"loss.beta"``), or a zipped
axis ``((key1, key2, ...), [(v1, v2, ...), ...])`` whose keys move together (build one with
:func:`zip_axis`). Cells are the cartesian product of the axes, the last axis varying fastest
(``itertools.product`` order). Every swept key must already exist in the base config: a typo
is a ``KeyError``, not a silently added field.

Grouping: cells that differ only in *vmappable* keys (numeric hyper-parameters that a runner
can batch with ``jax.vmap``: seed, beta, learning rate, ...) share one compiled program, so a
runner receives them together as one population (purejaxrl's ``jax.vmap(train)``).

Caching: each cell's result lives in ``<workdir>/cells/<hash>.json``, ``hash`` being
:func:`cell_hash` of the resolved config (sha256 of its sorted JSON). Files are written
atomically (temporary file + ``os.replace``), so a crash never leaves a half-written result,
and a re-run of :func:`run_sweep` only runs the cells that have no result yet. The hash
covers the config only, not the code: change the code, change the workdir.

Runners have the signature ``run_group_fn(static_config, cells) -> list[dict]``: one
JSON-serialisable result per cell, in the order given. A runner may carry a
``vmappable_keys`` attribute, used by ``experiments/sweep.py`` when no keys are given.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import datetime
import hashlib
import importlib
import importlib.util
import itertools
import json
import os
import pickle
import time
from typing import Any, Callable, Iterable, Sequence

import ml_collections

from grpo_jax.run import jsonio, rundir
from grpo_jax.run.config_utils import delete_value, get_value, set_value
from grpo_jax.run.jsonio import write_json_atomic

Axis = tuple  # (key, values) or ((key, ...), [(value, ...), ...])
RunGroupFn = Callable[[ml_collections.ConfigDict, list], list]

CELLS_DIR = "cells"
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------- grid expansion


def zip_axis(values_by_key: dict[str, Sequence[Any]]) -> Axis:
    """Zipped axis from ``{dotted_key: values}``; all value lists must have the same length.

    ``zip_axis({"optim.lr": [1e-3, 3e-4], "optim.warmup": [10, 100]})`` gives two cells'
    worth of values, ``(1e-3, 10)`` and ``(3e-4, 100)``, not four.
    """
    if not values_by_key:
        raise ValueError("zip_axis needs at least one key.")
    lengths = {k: len(v) for k, v in values_by_key.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"zip_axis: value lists differ in length: {lengths}")
    keys = tuple(values_by_key)
    return keys, list(zip(*(values_by_key[k] for k in keys)))


def _normalise_axis(axis: Axis) -> tuple[tuple[str, ...], list[tuple]]:
    """``(key, values)`` or ``((keys...), [(values...), ...])`` -> (keys, list of value tuples)."""
    if not (isinstance(axis, (tuple, list)) and len(axis) == 2):
        raise ValueError(f"An axis is (key, values) or ((keys...), [(values...)...]); got {axis!r}")
    key, values = axis
    values = list(values)
    if not values:
        raise ValueError(f"Axis {key!r} has no values.")
    if isinstance(key, str):
        return (key,), [(v,) for v in values]
    keys = tuple(key)
    if not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"Axis keys must be dotted strings; got {key!r}")
    for v in values:
        if not isinstance(v, (tuple, list)) or len(v) != len(keys):
            raise ValueError(f"Zipped axis {keys}: value {v!r} does not have {len(keys)} entries.")
    return keys, [tuple(v) for v in values]


def expand(
    base: ml_collections.ConfigDict, axes: Sequence[Axis]
) -> list[ml_collections.ConfigDict]:
    """Cartesian product of ``axes`` applied to ``base`` -> list of resolved cell configs.

    Each cell is a deep copy of ``base`` with the axis values set (field references are kept
    while setting, so derived fields follow), then resolved with
    ``copy_and_resolve_references``. With no axes the single cell is ``base`` itself.
    A key that appears on two axes is a ``ValueError``.
    """
    norm = [_normalise_axis(a) for a in axes]
    seen: set[str] = set()
    for keys, _ in norm:
        for k in keys:
            if k in seen:
                raise ValueError(f"Key {k!r} appears on more than one axis.")
            seen.add(k)
            get_value(base, k)  # fail early, naming the key
    # Each cell starts from a deep copy of `base`: unpickling one pickle of it is ~4x faster
    # than `copy.deepcopy` of a ConfigDict (FieldReferences included); deepcopy remains
    # for a base that does not pickle (e.g. a lambda in a reference).
    try:
        blob = pickle.dumps(base)
        fresh = lambda: pickle.loads(blob)  # noqa: E731
    except (pickle.PicklingError, AttributeError, TypeError):
        fresh = lambda: copy.deepcopy(base)  # noqa: E731
    cells = []
    for combo in itertools.product(*(vals for _, vals in norm)):
        cell = fresh()
        for (keys, _), values in zip(norm, combo):
            for k, v in zip(keys, values):
                set_value(cell, k, v)
        cells.append(cell.copy_and_resolve_references())
    return cells


# --------------------------------------------------------------------------- hashing


def canonical_json(config: ml_collections.ConfigDict | dict) -> str:
    """Sorted, whitespace-free JSON of a config: the exact text that :func:`cell_hash` hashes."""
    return json.dumps(
        jsonio.to_jsonable(config), sort_keys=True, separators=(",", ":"), allow_nan=True
    )


def cell_hash(config: ml_collections.ConfigDict | dict, length: int = 16) -> str:
    """Stable hash of a config: ``sha256(canonical_json(config))[:length]`` in hex.

    Independent of key insertion order and of Python's hash randomisation; an int and a float
    of equal value (``1`` vs ``1.0``) hash differently, as they are different configs.
    """
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()[:length]


# --------------------------------------------------------------------------- grouping


@dataclasses.dataclass
class Group:
    """Cells that share one compiled program.

    Attributes:
      static_config: the cells' common config with the vmappable keys removed, so that a
        runner cannot silently use one cell's value for the whole population.
      cells: the cell configs, in sweep order.
      indices: positions of ``cells`` in the list given to :func:`group_cells`.
      key: hash of ``static_config``.
    """

    static_config: ml_collections.ConfigDict
    cells: list
    indices: list
    key: str


def static_part(
    config: ml_collections.ConfigDict, vmappable_keys: Iterable[str]
) -> ml_collections.ConfigDict:
    """Copy of ``config`` without the vmappable keys (keys absent from ``config`` are ignored)."""
    out = copy.deepcopy(config)
    for k in sorted(set(vmappable_keys)):
        delete_value(out, k)
    return out


def _static_dict(config: ml_collections.ConfigDict, vmappable_keys: Iterable[str]) -> dict:
    """`static_part(config, vmappable_keys).to_dict()` without copying the ConfigDict (a
    ConfigDict deep copy costs ~0.5 ms; grouping a 7,680-cell sweep did 15,360 of them).

    A key is removed where `static_part` removes it: when every level above it is a
    ConfigDict holding the next name (the levels of `to_dict()` that are fresh dicts, so
    `config` itself is never changed; a plain dict inside a config keeps its keys)."""
    out = config.to_dict()
    for k in vmappable_keys:
        *path, name = k.split(".")
        node, parent = config, out
        for p in path:
            if not isinstance(node, ml_collections.ConfigDict) or p not in node or p not in parent:
                break  # (not in `parent`: removed as a key of its own)
            node, parent = node[p], parent[p]
        else:
            if isinstance(node, ml_collections.ConfigDict) and name in node:
                parent.pop(name, None)
    return out


def group_cells(
    cells: Sequence[ml_collections.ConfigDict],
    vmappable_keys: Iterable[str],
    max_group_size: int | None = None,
) -> list[Group]:
    """Group cells that differ only in ``vmappable_keys``.

    Groups come in order of their first cell; cells within a group keep sweep order. With
    ``max_group_size`` a large group is split into consecutive chunks of at most that many
    cells (to bound a population's memory).
    """
    if max_group_size is not None and max_group_size < 1:
        raise ValueError(f"max_group_size must be >= 1; got {max_group_size}")
    vmappable_keys = set(vmappable_keys)
    by_key: dict[str, Group] = {}
    for i, cell in enumerate(cells):
        key = cell_hash(_static_dict(cell, vmappable_keys))  # == cell_hash(static_part(...))
        if key not in by_key:
            static = static_part(cell, vmappable_keys)
            by_key[key] = Group(static_config=static, cells=[], indices=[], key=key)
        by_key[key].cells.append(cell)
        by_key[key].indices.append(i)
    groups = list(by_key.values())
    if max_group_size is None:
        return groups
    out = []
    for g in groups:
        for s in range(0, len(g.cells), max_group_size):
            out.append(
                Group(
                    g.static_config,
                    g.cells[s : s + max_group_size],
                    g.indices[s : s + max_group_size],
                    g.key,
                )
            )
    return out


# --------------------------------------------------------------------------- cache + runner


def cell_path(workdir: str, h: str) -> str:
    return os.path.join(workdir, CELLS_DIR, f"{h}.json")


def load_cell(workdir: str, h: str, log: Callable[[str], Any] = print) -> dict | None:
    """The stored record ``{"hash", "config", "result", ...}`` of a cell, or None if absent.

    A damaged record (unparsable, or without a result) counts as absent, so the cell is run
    again; a warning names the file.
    """
    path = cell_path(workdir, h)
    if not os.path.exists(path):
        return None
    try:
        stored = jsonio.read_json(path)
    except jsonio.CorruptFileError as e:
        log(f"warning: {e}; the cell will be run again")
        return None
    if not isinstance(stored, dict) or "result" not in stored:
        log(f"warning: {path}: no result in the stored cell; the cell will be run again")
        return None
    return stored


def run_sweep(
    cells: Sequence[ml_collections.ConfigDict],
    run_group_fn: RunGroupFn,
    workdir: str,
    vmappable_keys: Iterable[str] = (),
    log: Callable[[str], Any] = print,
    max_group_size: int | None = None,
    whole_groups: bool = False,
) -> list[dict]:
    """Run every unfinished cell, group by group, and return all results in cell order.

    1. Writes ``<workdir>/manifest.json``: every cell's index, hash and config, the vmappable
       keys, and the group of each cell.
    2. Cells whose ``<workdir>/cells/<hash>.json`` exists are finished and skipped.
    3. The remaining cells are grouped (:func:`group_cells`) and each group is run with
       ``run_group_fn(group.static_config, group.cells)``, which must return one JSON-serialisable
       dict per cell in the same order. Each group's results are written (atomically) as soon
       as it returns, so an exception in a later group loses nothing already finished; the
       exception propagates, and a re-run redoes only the unfinished cells.

    A second process on the same ``workdir`` fails at once (``rundir.lock``); a damaged cell
    file is run again with a warning naming it.

    ``whole_groups``: a group with any unfinished cell is run again whole, its finished cells
    recomputed (and rewritten) too. For runners whose numbers depend on which cells share
    the group's program: a vmapped population compiled for one member is not the program
    compiled for many, and its floating-point rounding can differ (on the tiny study,
    one-member reruns differed, five-member subsets did not), which training amplifies; run
    whole, a cell's result is the same whatever was interrupted.

    Returns:
      ``results[i]`` is the result dict of ``cells[i]`` (read back from JSON, cached or new).
    """
    with rundir.lock(workdir, log=log):
        return _run_sweep(
            cells, run_group_fn, workdir, vmappable_keys, log, max_group_size, whole_groups
        )


def _run_sweep(cells, run_group_fn, workdir, vmappable_keys, log, max_group_size, whole_groups):
    vmappable_keys = sorted(set(vmappable_keys))
    hashes = [cell_hash(c) for c in cells]
    dupes = sorted(h for h, k in collections.Counter(hashes).items() if k > 1)
    if dupes:
        idx = [[i for i, h in enumerate(hashes) if h == d] for d in dupes]
        raise ValueError(f"Identical cells in the sweep (same config) at indices {idx}.")
    all_groups = group_cells(cells, vmappable_keys)
    group_of = {i: g.key for g in all_groups for i in g.indices}
    os.makedirs(os.path.join(workdir, CELLS_DIR), exist_ok=True)
    write_json_atomic(
        os.path.join(workdir, MANIFEST),
        {
            "vmappable_keys": vmappable_keys,
            "num_cells": len(cells),
            "num_groups": len(all_groups),
            "cells": [
                {"index": i, "hash": h, "group": group_of[i], "config": c.to_dict()}
                for i, (c, h) in enumerate(zip(cells, hashes))
            ],
        },
    )

    results: list[dict | None] = [None] * len(cells)
    pending = []
    for i, h in enumerate(hashes):
        stored = load_cell(workdir, h, log)
        if stored is not None:
            results[i] = stored["result"]
        else:
            pending.append(i)
    log(
        f"sweep: {len(cells)} cells in {len(all_groups)} groups; "
        f"{len(cells) - len(pending)} cached, {len(pending)} to run"
    )
    if whole_groups:
        unfinished = {group_of[i] for i in pending}
        whole = [i for i in range(len(cells)) if group_of[i] in unfinished]
        if len(whole) > len(pending):
            log(f"sweep: {len(whole) - len(pending)} finished cells run again with their groups")
        pending = whole

    groups = group_cells([cells[i] for i in pending], vmappable_keys, max_group_size)
    for gi, group in enumerate(groups):
        idx = [pending[j] for j in group.indices]
        log(f"sweep: group {gi + 1}/{len(groups)} ({len(idx)} cells, program {group.key})")
        t0 = time.perf_counter()
        out = run_group_fn(group.static_config, list(group.cells))
        seconds = time.perf_counter() - t0
        out = list(out)
        if len(out) != len(idx):
            raise ValueError(f"run_group_fn returned {len(out)} results for {len(idx)} cells.")
        # Serialise the whole group first: a bad result fails before any file of it is written.
        out = [json.loads(json.dumps(jsonio.to_jsonable(r), allow_nan=True)) for r in out]
        for i, r in zip(idx, out):
            if not isinstance(r, dict):
                raise TypeError(f"run_group_fn must return dicts; cell {i} got {type(r).__name__}.")
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat()
        for i, r in zip(idx, out):
            write_json_atomic(
                cell_path(workdir, hashes[i]),
                {
                    "hash": hashes[i],
                    "index": i,
                    "config": cells[i].to_dict(),
                    "result": r,
                    "group": group.key,
                    "group_seconds": seconds,
                    "group_size": len(idx),
                    "finished": stamp,
                },
            )
            results[i] = r
        log(f"sweep: group {gi + 1}/{len(groups)} done in {seconds:.2f}s")
    return results  # type: ignore[return-value]


def load_results(workdir: str) -> tuple[list[dict], int]:
    """Results of the sweep in ``workdir``, in manifest order, without running anything.

    Returns ``(results, n_missing)``: the result dicts of the finished cells and the number
    of manifest cells that have no result yet (e.g. to write a report of a partial sweep).
    """
    manifest = jsonio.read_json(os.path.join(workdir, MANIFEST))
    results, missing = [], 0
    for entry in manifest["cells"]:
        stored = load_cell(workdir, entry["hash"])
        if stored is None:
            missing += 1
        else:
            results.append(stored["result"])
    return results, missing


# --------------------------------------------------------------------------- loading by name


def load_sweep(spec: str):
    """``"path/to/sweep.py[:arg]"`` -> ``(base, axes)`` from the file's ``get_sweep(arg)``.

    Without ``:arg``, ``get_sweep()`` is called with no argument.
    """
    path, arg = spec, None
    if ":" in spec and not os.path.exists(spec):
        path, arg = spec.split(":", 1)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Sweep file {path!r} not found.")
    name = "sweep_def_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise AttributeError(f"Sweep file {path!r} defines no get_sweep(arg=None).")
    out = module.get_sweep() if arg is None else module.get_sweep(arg)
    if not (
        isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], ml_collections.ConfigDict)
    ):
        raise TypeError(f"{path}: get_sweep must return (ConfigDict, list_of_axes).")
    return out


def load_runner(spec: str) -> RunGroupFn:
    """``"package.module:function"`` -> the function (imported by name)."""
    if ":" not in spec:
        raise ValueError(f"Runner must be 'module:function'; got {spec!r}")
    module_name, fn_name = spec.split(":", 1)
    module = importlib.import_module(module_name)
    try:
        return getattr(module, fn_name)
    except AttributeError:
        raise AttributeError(f"Module {module_name!r} has no function {fn_name!r}.") from None
