"""Host-side orchestration of GRPO runs: config -> objects -> chunked jitted training.

This is the thin layer between a `grpo_jax/configs/grpo.py` ConfigDict and the pure functions of
`train.py`. It owns the host loop: validate the config (before anything compiles), build the
task, model, mesh and hyperparameters, restore or pretrain the reference, then run the RL
steps in chunks of `config.train.chunk_steps` (one `lax.scan` per jit call) and, between
chunks, write metrics (writers.py), save checkpoints (checkpoint.py) and move the progress bar.

Every run is a *population*: `S >= 1` members (seeds and numeric hyperparameters) vmapped
into one compiled program. A single run is the population of one.

The run directory (rundir.py) records its config and cells (`config.json`), is locked
while a process runs in it, and resumes only a run of the same computation. Checkpoints
hold the policy state of every member; the frozen reference is saved once per run
(`<workdir>/reference`, or wherever `config.reference.checkpoint` points), not per member.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import pickle
import shutil
import tempfile
import time
import warnings
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import serialize_executable

from grpo_jax.run import checkpoint, config_utils, jsonio, reference, rundir, sharding
from grpo_jax.core import losses
from grpo_jax.rl import pretrain
from grpo_jax.models import policies
from grpo_jax import tasks
from grpo_jax.rl import train
from grpo_jax.run import writers, xla_setup
from grpo_jax.models import model as model_lib
from grpo_jax.core.kl_choice import KLChoice

# Keys of a config that may differ between members of one population (pytree leaves of the
# train state / hyperparameters); everything else changes the compiled program.
VMAPPABLE_KEYS = (
    "train.seed",
    "loss.beta",
    "loss.eps_low",
    "loss.eps_high",
    "optim.lr",
    "loss.kl_choice",
    "loss.entropy_coef",
)

NONFINITE_MODES = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """Raised when a loss or gradient is NaN/inf and `train.on_nonfinite == "stop"`."""


class TooManySkippedError(RuntimeError):
    """Raised after a run in which a member skipped more than `train.max_skipped_frac` of its
    updates (non-finite loss or gradient): its numbers would look normal but mean little."""


# ------------------------------------------------------------------------------------------
# Config -> objects
# ------------------------------------------------------------------------------------------


def _require(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"config.{field}: {msg}")


def _require_number(
    config, field: str, low: float, high: float = math.inf, low_open: bool = False
) -> None:
    """config.<field> is a finite number in [low, high] ((low, high] with low_open)."""
    v = config_utils.get_value(config, field)
    bound = f"{'(' if low_open else '['}{low}, {high}{']' if math.isfinite(high) else ')'}"
    ok = (
        isinstance(v, (int, float))
        and math.isfinite(v)
        and v <= high
        and (v > low if low_open else v >= low)
    )
    _require(ok, field, f"{v!r} is not a finite number in {bound}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Check every field a run depends on; raise `ValueError` naming the bad field and its
    valid values or range. Runs before anything is traced or compiled."""
    _require(
        config.task.name in tasks.TASKS,
        "task.name",
        f"{config.task.name!r} is not a task; valid: {', '.join(tasks.TASKS)}",
    )
    _require_number(config, "loss.beta", 0.0)
    _require_number(config, "loss.entropy_coef", 0.0)
    _require_number(config, "loss.eps_low", 0.0, 1.0)
    _require_number(config, "loss.eps_high", 0.0)
    try:
        make_loss_config(config)
        kl_choice_of(config)
    except ValueError as e:  # re-raise with the config path
        raise ValueError(f"config.loss: {e}") from None
    _require(
        config.policy in ("transformer",) + tuple(policies.POLICIES),
        "policy",
        f"{config.policy!r}; valid: transformer, {', '.join(policies.POLICIES)}",
    )
    if config.policy != "transformer":
        _require(
            config.task.name == "bandit",
            "policy",
            f"{config.policy!r} is for one-token tasks (bandit), not {config.task.name!r}",
        )
    for field in ("num_layers", "width", "num_heads", "mlp_width"):
        _require(int(config.model[field]) >= 1, f"model.{field}", "must be >= 1")
    _require(
        config.model.width % config.model.num_heads == 0,
        "model.width",
        f"{config.model.width} is not divisible by model.num_heads " f"{config.model.num_heads}",
    )
    _require(
        config.model.dtype in ("float32", "bfloat16"),
        "model.dtype",
        f"{config.model.dtype!r}; valid: float32, bfloat16",
    )
    for field in ("num_prompts", "group_size", "inner_steps"):
        _require(int(config.grpo[field]) >= 1, f"grpo.{field}", "must be >= 1")
    _require(
        config.grpo.group_size >= 2,
        "grpo.group_size",
        "group-relative advantages need at least 2 completions per prompt",
    )
    _require_number(config, "grpo.temperature", 0.0, low_open=True)
    _require(
        config.grpo.get("one_token_draw", "gumbel") in policies.DRAWS,
        "grpo.one_token_draw",
        f"{config.grpo.get('one_token_draw')!r}; valid: {', '.join(policies.DRAWS)}",
    )
    _require_number(config, "optim.lr", 0.0, low_open=True)
    t = config.train
    for field in (
        "num_steps",
        "chunk_steps",
        "num_seeds",
        "checkpoint_every_chunks",
        "log_every_steps",
    ):
        _require(int(t[field]) >= 1, f"train.{field}", f"{t[field]!r}; must be >= 1")
    _require(
        int(t.num_steps) % int(t.chunk_steps) == 0,
        "train.num_steps",
        f"{t.num_steps} is not a multiple of "
        f"train.chunk_steps {t.chunk_steps} (every jit call runs a whole chunk)",
    )
    _require(
        int(t.max_to_keep) >= 0,
        "train.max_to_keep",
        f"{t.max_to_keep!r}; must be >= 0 (0 keeps every checkpoint)",
    )
    _require_number(config, "train.max_skipped_frac", 0.0, 1.0)
    _require(
        t.on_nonfinite in NONFINITE_MODES,
        "train.on_nonfinite",
        f"{t.on_nonfinite!r}; valid: {', '.join(NONFINITE_MODES)}",
    )
    ref = config.reference.checkpoint
    _require(
        not ref or checkpoint.latest_step(ref) is not None,
        "reference.checkpoint",
        f"{ref!r} holds no checkpoint (a typo? leave it empty to pretrain one)",
    )
    n_dev = len(jax.devices())
    data = int(config.mesh.data)
    _require(
        data == -1 or 1 <= data <= n_dev,
        "mesh.data",
        f"{data}; must be -1 (all) or between 1 and {n_dev}",
    )
    size = n_dev if data == -1 else data
    batch = config.grpo.num_prompts * config.grpo.group_size
    _require(
        batch % size == 0,
        "grpo.num_prompts",
        f"batch num_prompts*group_size = {batch} must be divisible by the {size} "
        f"devices of the data axis (config.mesh.data)",
    )


def make_task(config) -> Any:
    return config_utils.make_task(config.task)


def make_model_config(config, task):
    """The policy's model: a transformer `ModelConfig` (`config.policy == "transformer"`) or
    a one-token policy of policies.py ("tabular", "gaussian")."""
    if config.policy != "transformer":
        return policies.make(config.policy, task)
    return pretrain.model_config_for(task, **dict(config.model))


def initial_params(config, task, model_config, ref_params):
    """Where the policy starts: the reference itself (transformer, tabular), or for the
    Gaussian policy the maximum-likelihood fit to the reference (moment matching)."""
    if config.policy == "gaussian":
        probs = np.exp(np.asarray(ref_params["logits"], np.float64))[list(task.ordinary_ids)]
        return model_config.fit_to(probs / probs.sum())
    return ref_params


def kl_choice_of(config, cell: Mapping[str, Any] | None = None) -> KLChoice:
    """The KL choice of a cell: its `loss.kl_choice`, else the config's, else the config's
    `loss.kl_estimator`/`loss.kl_placement` names. (beta = 0 is still this choice here;
    `KLChoice.of(choice, beta)` names what the run actually does.)"""
    cell = cell or {}
    choice = cell.get("loss.kl_choice", config.loss.get("kl_choice", ""))
    return (
        KLChoice.parse(choice)
        if choice
        else KLChoice(config.loss.kl_estimator, config.loss.kl_placement)
    )


def make_loss_config(config, choice: KLChoice | None = None, **numeric) -> losses.LossConfig:
    """`losses.LossConfig` from `config.loss` with the KL choice `choice` (default: the
    config's); `numeric` overrides leaves (e.g. beta=array)."""
    fields = dict(config.loss)
    fields.pop("kl_choice", None)
    fields.update((choice or kl_choice_of(config)).loss_fields())
    fields.update(numeric)
    return losses.make_config(**fields)


def population_kl_choices(config, cells) -> tuple[KLChoice, ...]:
    """The distinct KL choices of a population, in first-seen order; () when there is only
    one (then the choice stays static and no switch is compiled)."""
    choices = tuple(dict.fromkeys(kl_choice_of(config, c) for c in cells))
    return () if len(choices) == 1 else choices


def make_setup(config, task, model_config, mesh=None, kl_choices=()) -> train.RLSetup:
    g, o = config.grpo, config.optim
    return train.RLSetup(
        model=model_config,
        task=task,
        num_prompts=int(g.num_prompts),
        group_size=int(g.group_size),
        inner_steps=int(g.inner_steps),
        temperature=float(g.temperature),
        one_token_draw=str(g.get("one_token_draw", "gumbel")),  # absent: as before the key
        grad_clip=float(o.grad_clip),
        adam_b1=float(o.b1),
        adam_b2=float(o.b2),
        adam_eps=float(o.eps),
        skip_zero_grad=bool(config.train.skip_zero_grad),
        data_sharding=None if mesh is None else sharding.data_sharding(mesh),
        kl_choices=tuple(kl_choices),
        ref_model=(None if config.policy == "transformer" else policies.make("tabular", task)),
    )


def cell_value(config, cell: Mapping[str, Any], key: str):
    """A cell's value for the dotted `key`, else the config's (looked up only then)."""
    return cell[key] if key in cell else config_utils.get_value(config, key)


def population_cells(config) -> list[dict[str, Any]]:
    """The members of `config`'s own population: `num_seeds` consecutive seeds."""
    base = {k: config_utils.get_value(config, k) for k in VMAPPABLE_KEYS}
    return [
        dict(base, **{"train.seed": int(config.train.seed) + i})
        for i in range(int(config.train.num_seeds))
    ]


MEMBER_RANGES = (
    ("loss.beta", 0.0, math.inf),
    ("loss.entropy_coef", 0.0, math.inf),
    ("loss.eps_low", 0.0, 1.0),
    ("loss.eps_high", 0.0, math.inf),
    ("optim.lr", 0.0, math.inf),
)


def check_member(cell: Mapping[str, Any], value: Callable[[str], float]) -> None:
    """A population member's numeric values are finite and in range (as `validate_config`
    checks the config's own): a ValueError names the cell, the key and the range."""
    for key, low, high in MEMBER_RANGES:
        v = value(key)
        if not (math.isfinite(v) and low <= v <= high) or (key == "optim.lr" and v <= 0):
            raise ValueError(
                f"cell {dict(cell)}: {key} = {v!r} is not a finite number in "
                f"[{low}, {high}]" + (" (and > 0)" if key == "optim.lr" else "")
            )


def population_hparams(config, cells: Sequence[Mapping[str, Any]]) -> train.Hparams:
    """Numeric hyperparameters of `cells`, every leaf stacked along a leading axis [S]."""
    choices = population_kl_choices(config, cells)
    # Every member's LossConfig has the same static names (a stacked pytree); with a switch
    # they are those of the first choice, and `kl_choice` indexes the member's own.
    static_choice = choices[0] if choices else kl_choice_of(config, cells[0])

    def one(cell):
        value = lambda k: float(cell_value(config, cell, k))
        check_member(cell, value)
        choice = kl_choice_of(config, cell)
        loss_cfg = make_loss_config(
            config,
            static_choice,
            beta=value("loss.beta"),
            eps_low=value("loss.eps_low"),
            eps_high=value("loss.eps_high"),
            entropy_coef=value("loss.entropy_coef"),
        )
        return train.Hparams(
            loss=loss_cfg,
            lr=np.float32(value("optim.lr")),
            kl_choice=np.int32(choices.index(choice) if choices else 0),
        )

    def stack(*xs):  # on the host, one transfer per leaf (not one per member and leaf)
        dtype = jnp.asarray(xs[0]).dtype  # the leaf's jax dtype (Python float -> float32)
        return jnp.asarray(np.stack([np.asarray(x, dtype) for x in xs]))

    return jax.tree.map(stack, *[one(c) for c in cells])


# ------------------------------------------------------------------------------------------
# Compiled programs
# ------------------------------------------------------------------------------------------


class ProgramCache:
    """Compiled chunk programs, least recently used dropped beyond `max_size`.

    Keyed by everything that determines a program: the static setup, the chunk length and
    the abstract arguments (shapes, dtypes, shardings). Host-side only, like jax's own jit
    cache; it lets a resumed run or a repeated population skip recompilation.

    On disk too, when `xla_setup.program_cache_dir()` is set (the compilation cache is on):
    each compiled program is serialized (`jax.experimental.serialize_executable`) under a
    `xla_setup.program_key` of the same inputs plus the code and library fingerprints, and a
    later process loads it without tracing or lowering (0.1 s instead of ~1.2 s with jax's
    cache alone, ~3.5 s cold, for a study program). A file that fails to load is recompiled
    and replaced.
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


def _load_program(path: str):
    """The executable serialized at `path` on the devices it was compiled for, or None
    (absent, or unreadable: then it is compiled again)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            payload, in_tree, out_tree, device_ids = pickle.load(f)
        by_id = {d.id: d for d in jax.devices()}
        devices = [by_id[i] for i in device_ids]
        return serialize_executable.deserialize_and_load(
            payload, in_tree, out_tree, execution_devices=devices
        )
    except Exception as e:  # pylint: disable=broad-except  # any failure: compile afresh
        warnings.warn(f"{path}: cached program not loaded ({e!r}); compiling it again")
        return None


def _save_program(path: str, program) -> None:
    """Serialize `program` and its execution devices, in order, to `path` atomically (a
    cache: a failure warns and leaves no file)."""
    tmp = None
    try:
        # The executable's device assignment (private API): loading on any other device
        # list, even in another order, gives a program that fails or aborts when called.
        device_ids = [d.id for d in program._executable.xla_executable.local_devices()]
        blob = pickle.dumps((*serialize_executable.serialize(program), device_ids))
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


# ------------------------------------------------------------------------------------------
# The host loop
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PopulationResult:
    """What `run_population` returns.

    state: the final population `train.RLState` (leaves carry a leading [S] axis).
    history: {metric: [S, steps, ...]} over every step of the run (read back from
      metrics.jsonl when the run was resumed).
    """

    state: train.RLState
    history: dict[str, np.ndarray]
    setup: train.RLSetup
    task: Any
    hparams: train.Hparams
    cells: list[dict[str, Any]]
    start_step: int
    compile_s: float


def _init_population(setup, config, cells, init_params, ref_params, mesh):
    def init(start, ref, keys):
        return jax.vmap(lambda k: train.init_rl_state(setup, start, ref, k))(keys)

    keys = jnp.stack([jax.random.PRNGKey(int(cell_value(config, c, "train.seed"))) for c in cells])
    shape = jax.eval_shape(init, init_params, ref_params, keys)
    shardings = sharding.param_shardings(
        shape, mesh, bool(config.mesh.shard_params), leading_axes=1
    )
    return jax.jit(init, out_shardings=shardings)(init_params, ref_params, keys)


def build_population(config, cells, ref_params=None, reference_dir=None, log=print):
    """(setup, task, initial population state, stacked hparams) of `config` and its member
    `cells`: what the chunk program is compiled for. `ref_params` default:
    `reference.load_or_pretrain_reference` (cached in `reference_dir`)."""
    task = make_task(config)
    mcfg = make_model_config(config, task)
    mesh = sharding.make_mesh(config.mesh)
    setup = make_setup(config, task, mcfg, mesh, population_kl_choices(config, cells))
    hp = population_hparams(config, cells)
    if ref_params is None:
        ref_params = reference.load_or_pretrain_reference(
            config, task, mcfg, reference_dir, log=log
        )
    start = initial_params(config, task, mcfg, ref_params)
    state = _init_population(setup, config, cells, start, ref_params, mesh)
    return setup, task, state, hp


def _policy_part(state: train.RLState) -> train.RLState:
    """The state without the frozen reference: what a checkpoint holds."""
    return state.replace(ref_params=None)


def _resume(ckpt_dir: str, state: train.RLState, total: int, log) -> tuple[Any, int]:
    """Restore the newest intact checkpoint into `state` (reference kept); (state, step)."""
    if not checkpoint.all_steps(ckpt_dir):
        return state, 0
    restored, _, step = checkpoint.restore_newest_intact(ckpt_dir, _policy_part(state), log)
    if step > total:
        raise rundir.ConfigMismatchError(
            f"{ckpt_dir} holds step {step}, beyond train.num_steps = {total}; use a new "
            f"--workdir, or --overwrite to discard the run"
        )
    log(f"resumed from {ckpt_dir} at step {step}")
    return restored.replace(ref_params=state.ref_params), step


def _nonfinite_message(step, member, cell, ckpt_dir) -> str:
    last = checkpoint.latest_step(ckpt_dir)
    kept = (
        f"the last good checkpoint, step {last}, is kept in {ckpt_dir}"
        if last is not None
        else "no checkpoint exists yet (it failed in the first chunk)"
    )
    return (
        f"non-finite loss or gradient at step {step} (member {member}, cell {dict(cell)}); "
        f"stopped; {kept}"
    )


def _check_skipped(
    state: train.RLState, cells, steps_run: int, inner_steps: int, max_frac: float
) -> None:
    skipped = np.asarray(state.num_skipped, np.float64)
    frac = skipped / max(1, steps_run * inner_steps)
    bad = [(i, int(skipped[i]), frac[i]) for i in range(len(cells)) if frac[i] > max_frac]
    if bad:
        i, n, f = bad[0]
        raise TooManySkippedError(
            f"{len(bad)} of {len(cells)} members skipped more than train.max_skipped_frac = "
            f"{max_frac:g} of their updates as non-finite (member {i}, cell {dict(cells[i])}: "
            f"{n} of {steps_run * inner_steps}, {f:.0%}); its results mean little"
        )


def run_population(
    config,
    cells: Sequence[Mapping[str, Any]],
    workdir: str,
    ref_params=None,
    log=print,
    overwrite: bool = False,
) -> PopulationResult:
    """Train one vmapped population (one compiled program); return a `PopulationResult`.

    Args:
      config: a GRPO config (the static part of every member); validated here.
      cells: per-member overrides of `VMAPPABLE_KEYS` (missing keys come from `config`).
      workdir: run directory: `config.json`, `metrics.jsonl` (one line per step and
        member), `tb/`, `checkpoints/` (resumed from if present), `reference/` (when
        pretrained here).
      ref_params: reference parameters (default: `reference.load_or_pretrain_reference`).
      overwrite: discard a run of another config in `workdir` instead of refusing it.

    Multi-host (`config.mesh.multihost`): every process runs this same function; the mesh
    spans all processes' devices. `workdir` must be on a filesystem all processes share:
    orbax checkpoints are collective (each process writes its shards, all take the same
    resume branch), while metrics, the run config, the lock, TensorBoard and the progress
    bar belong to process 0.
    """
    sharding.maybe_initialize_distributed(config.mesh)  # before any other JAX call
    validate_config(config)
    lead = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if not lead:
        return _run_locked(config, cells, workdir, ref_params, log, overwrite, lead)
    with rundir.lock(workdir, log=log):
        return _run_locked(config, cells, workdir, ref_params, log, overwrite, lead)


def _run_locked(config, cells, workdir, ref_params, log, overwrite, lead) -> PopulationResult:
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if lead:
        rundir.check_config(
            workdir,
            {"config": config, "cells": [dict(c) for c in cells]},
            overwrite=overwrite,
            log=log,
        )
        if overwrite:
            for name in ("checkpoints", "metrics.jsonl", "tb", "reference"):
                _remove(os.path.join(workdir, name))
    reference_dir = os.path.join(workdir, "reference")
    setup, task, state, hp = build_population(config, cells, ref_params, reference_dir, log)
    total, chunk = int(config.train.num_steps), int(config.train.chunk_steps)
    state, start = _resume(ckpt_dir, state, total, log)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if lead:
        writers.truncate_jsonl(metrics_path, start, log=log)

    t0 = time.perf_counter()
    run_chunk, cached = PROGRAMS.get(setup, chunk, state, hp)
    compile_s = time.perf_counter() - t0
    log(
        f"{'reused' if cached else 'compiled'} a {len(cells)}-member population program, "
        f"{chunk} steps per chunk, in {compile_s:.1f}s"
    )
    state, history = _train_chunks(
        config, cells, setup, task, state, hp, run_chunk, start, workdir, lead
    )
    if start > 0 and lead:  # resumed: the whole history is in the JSONL
        hist = writers.stacked_history(workdir, len(cells))
    else:
        hist = (
            {k: np.concatenate([h[k] for h in history], axis=1) for k in history[0]}
            if history
            else {}
        )
    _check_skipped(state, cells, total, setup.inner_steps, float(config.train.max_skipped_frac))
    return PopulationResult(
        state=state,
        history=hist,
        setup=setup,
        task=task,
        hparams=hp,
        cells=[dict(c) for c in cells],
        start_step=start,
        compile_s=compile_s,
    )


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def _train_chunks(config, cells, setup, task, state, hp, run_chunk, start, workdir, lead):
    """The chunk loop: run, check finiteness, log, checkpoint, progress. -> (state, history)."""
    total, chunk = int(config.train.num_steps), int(config.train.chunk_steps)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    every = int(config.train.checkpoint_every_chunks)
    log_every = int(config.train.log_every_steps)
    keep = int(config.train.max_to_keep) or None
    meta = {"config": config.to_dict(), "cells": [dict(c) for c in cells]}
    history: list[dict[str, np.ndarray]] = []
    seeds = [int(cell_value(config, cell, "train.seed")) for cell in cells]
    bar = writers.Progress(
        total,
        initial=start,
        desc=f"grpo {config.task.name}",
        disable=not (config.train.progress and lead),
    )
    writer = (
        writers.MetricWriter(workdir, tensorboard=config.train.tensorboard)
        if lead
        else writers.NullWriter()
    )
    with writer:
        step = start
        while step < total:
            t0 = time.perf_counter()
            new_state, metrics = run_chunk(state, hp)
            metrics = jax.device_get(metrics)  # [S, chunk, ...]
            seconds = time.perf_counter() - t0
            ok = np.asarray(metrics["nonfinite"]) == 0
            if config.train.on_nonfinite == "stop" and not ok.all():
                member, bad = np.argwhere(~ok)[0]
                bar.close()
                raise NonFiniteError(
                    _nonfinite_message(step + int(bad), member, cells[member], ckpt_dir)
                )
            state = new_state
            tokens = len(cells) * setup.batch_size * task.completion_len * chunk
            metrics["step_time"] = np.full(ok.shape, seconds / chunk)
            metrics["tokens_per_s"] = np.full(ok.shape, tokens / seconds)
            history.append(metrics)
            logged = [
                i for i in range(chunk) if (step + i + 1) % log_every == 0 or step + i + 1 == total
            ]
            if logged and lead:  # (the other processes write nothing)
                rows = writers.member_rows(metrics, logged)  # [member][logged step]
                for m, seed in enumerate(seeds):
                    for i, row in zip(logged, rows[m]):
                        writer.write(step + i, dict(row, member=m, seed=seed))
            writer.flush()
            step += chunk
            if (step // chunk) % every == 0 or step >= total:
                checkpoint.save(
                    ckpt_dir, step, _policy_part(state), dict(meta, step=step), max_to_keep=keep
                )
            bar.update(
                chunk,
                {
                    "reward": float(np.mean(metrics["reward_mean"][:, -1])),
                    "kl_rev": float(np.mean(metrics["exact_kl_rev"][:, -1])),
                    "s/step": seconds / chunk,
                },
            )
    bar.close()
    return state, history


def train_and_evaluate(
    config, workdir: str, ref_params=None, log=print, overwrite: bool = False
) -> PopulationResult:
    """Train `config`'s population (`train.num_seeds` seeds) and write `summary.json`."""
    out = run_population(
        config,
        population_cells(config),
        workdir,
        ref_params=ref_params,
        log=log,
        overwrite=overwrite,
    )
    hist = out.history
    summary = {
        "task": config.task.name,
        "kl": str(KLChoice.of(kl_choice_of(config), config.loss.beta)),
        "beta": float(config.loss.beta),
        "num_steps": int(config.train.num_steps),
        "steps_run": int(np.asarray(out.state.step)[0]),
        "final": {k: np.asarray(v)[:, -1].tolist() for k, v in hist.items()} if hist else {},
    }
    if jax.process_index() == 0:
        jsonio.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    if hist:
        log(
            "final (mean over seeds): "
            + ", ".join(
                f"{k}={np.mean(np.asarray(hist[k])[:, -1]):.4g}"
                for k in ("reward_mean", "exact_kl_rev", "exact_kl_fwd", "entropy")
            )
        )
    return out
