"""Host-side orchestration of GRPO runs: config -> objects -> chunked jitted training.

This is the thin layer between a `configs/grpo.py` ConfigDict and the pure functions of
`train.py`. It owns the host loop: validate the config (before anything compiles), build the
task, model, mesh and hyperparameters, restore or pretrain the reference, then run the RL
steps in chunks of `config.train.chunk_steps` (one `lax.scan` per jit call) and, between
chunks, write metrics (writers.py), save checkpoints (checkpoint.py) and move the progress bar.

Every run is a *population*: `S >= 1` members (seeds and numeric hyperparameters) vmapped
into one compiled program. A single run is the population of one.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from grpo_jax import checkpoint, losses, model, sharding, tasks, train, writers
from grpo_jax.sweep import get_value

# Keys of a config that may differ between members of one population (pytree leaves of the
# train state / hyperparameters); everything else changes the compiled program.
VMAPPABLE_KEYS = ("train.seed", "loss.beta", "loss.eps_low", "loss.eps_high", "optim.lr",
                  "loss.kl_choice")

NONFINITE_MODES = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """Raised when a loss or gradient is NaN/inf and `train.on_nonfinite == "stop"`."""


# ------------------------------------------------------------------------------------------
# Config -> objects
# ------------------------------------------------------------------------------------------


def _require(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"config.{field}: {msg}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Check every field a run depends on; raise `ValueError` naming the bad field.

    Runs before anything is traced or compiled, so a typo costs milliseconds.
    """
    _require(config.task.name in tasks.TASKS, "task.name",
             f"{config.task.name!r} is not a task; valid: {', '.join(tasks.TASKS)}")
    try:
        make_loss_config(config)
        train.parse_kl_choice(kl_choice_of(config))
    except ValueError as e:  # re-raise with the config path
        raise ValueError(f"config.loss: {e}") from None
    for field in ("num_layers", "width", "num_heads", "mlp_width"):
        _require(int(config.model[field]) >= 1, f"model.{field}", "must be >= 1")
    _require(config.model.width % config.model.num_heads == 0, "model.width",
             f"{config.model.width} is not divisible by model.num_heads "
             f"{config.model.num_heads}")
    _require(config.model.dtype in ("float32", "bfloat16"), "model.dtype",
             f"{config.model.dtype!r}; valid: float32, bfloat16")
    for field in ("num_prompts", "group_size", "inner_steps"):
        _require(int(config.grpo[field]) >= 1, f"grpo.{field}", "must be >= 1")
    _require(config.grpo.group_size >= 2, "grpo.group_size",
             "group-relative advantages need at least 2 completions per prompt")
    _require(config.grpo.temperature > 0, "grpo.temperature", "must be > 0")
    _require(config.optim.lr > 0, "optim.lr", "must be > 0")
    _require(int(config.train.num_steps) >= 1, "train.num_steps", "must be >= 1")
    _require(int(config.train.chunk_steps) >= 1, "train.chunk_steps", "must be >= 1")
    _require(int(config.train.num_steps) % int(config.train.chunk_steps) == 0,
             "train.num_steps", f"{config.train.num_steps} is not a multiple of "
             f"train.chunk_steps {config.train.chunk_steps} (every jit call runs a whole chunk)")
    _require(int(config.train.num_seeds) >= 1, "train.num_seeds", "must be >= 1")
    _require(config.train.on_nonfinite in NONFINITE_MODES, "train.on_nonfinite",
             f"{config.train.on_nonfinite!r}; valid: {', '.join(NONFINITE_MODES)}")
    n_dev = len(jax.devices())
    data = int(config.mesh.data)
    _require(data == -1 or 1 <= data <= n_dev, "mesh.data",
             f"{data}; must be -1 (all) or between 1 and {n_dev}")
    size = n_dev if data == -1 else data
    batch = config.grpo.num_prompts * config.grpo.group_size
    _require(batch % size == 0, "grpo.num_prompts",
             f"batch num_prompts*group_size = {batch} must be divisible by the {size} "
             f"devices of the data axis (config.mesh.data)")


def make_task(config) -> Any:
    kwargs = dict(config.task)
    return tasks.make(kwargs.pop("name"), **kwargs)


def make_model_config(config, task) -> model.ModelConfig:
    m = config.model
    return model.ModelConfig(
        vocab_size=task.vocab_size, num_layers=int(m.num_layers), width=int(m.width),
        num_heads=int(m.num_heads), mlp_width=int(m.mlp_width),
        max_len=task.prompt_len + task.completion_len, dtype=m.dtype)


def make_loss_config(config, **numeric) -> losses.LossConfig:
    """`losses.LossConfig` from `config.loss`; `numeric` overrides leaves (e.g. beta=array).

    A non-empty `loss.kl_choice` ('ESTIMATOR/PLACEMENT') overrides the two names."""
    fields = dict(config.loss)
    choice = fields.pop("kl_choice", "")
    if choice:
        fields["kl_estimator"], fields["kl_placement"] = train.parse_kl_choice(choice)
    fields.update(numeric)
    return losses.make_config(**fields)


def kl_choice_of(config, cell: Mapping[str, Any] | None = None) -> str:
    """'ESTIMATOR/PLACEMENT' of a cell: its `loss.kl_choice`, else the config's names."""
    cell = cell or {}
    choice = cell["loss.kl_choice"] if "loss.kl_choice" in cell else config.loss.get(
        "kl_choice", "")
    return choice or f"{config.loss.kl_estimator}/{config.loss.kl_placement}"


def population_kl_choices(config, cells) -> tuple[tuple[str, str], ...]:
    """The distinct KL choices of a population, in first-seen order; () when there is only
    one (then the choice stays static and no switch is compiled)."""
    choices = list(dict.fromkeys(kl_choice_of(config, c) for c in cells))
    if len(choices) == 1:
        return ()
    return tuple(train.parse_kl_choice(c) for c in choices)


def make_setup(config, task, model_config, mesh=None, kl_choices=()) -> train.RLSetup:
    g = config.grpo
    return train.RLSetup(
        model=model_config, task=task, num_prompts=int(g.num_prompts),
        group_size=int(g.group_size), inner_steps=int(g.inner_steps),
        temperature=float(g.temperature), grad_clip=float(config.optim.grad_clip),
        adam_b1=float(config.optim.b1), adam_b2=float(config.optim.b2),
        adam_eps=float(config.optim.eps),
        data_sharding=None if mesh is None else sharding.data_sharding(mesh),
        kl_choices=tuple(kl_choices))


def cell_value(config, cell: Mapping[str, Any], key: str):
    """A cell's value for the dotted `key`, else the config's (looked up only then)."""
    return cell[key] if key in cell else get_value(config, key)


def population_cells(config) -> list[dict[str, Any]]:
    """The members of `config`'s own population: `num_seeds` consecutive seeds."""
    base = {k: get_value(config, k) for k in VMAPPABLE_KEYS}
    return [dict(base, **{"train.seed": int(config.train.seed) + i})
            for i in range(int(config.train.num_seeds))]


def population_hparams(config, cells: Sequence[Mapping[str, Any]]) -> train.Hparams:
    """Numeric hyperparameters of `cells`, every leaf stacked along a leading axis [S]."""

    choices = ["/".join(c) for c in population_kl_choices(config, cells)]

    def one(cell):
        value = lambda k: float(cell_value(config, cell, k))
        loss_cfg = make_loss_config(config, beta=value("loss.beta"),
                                    eps_low=value("loss.eps_low"),
                                    eps_high=value("loss.eps_high"))
        choice = choices.index(kl_choice_of(config, cell)) if choices else 0
        return train.Hparams(loss=loss_cfg, lr=jnp.float32(value("optim.lr")),
                             kl_choice=jnp.int32(choice))

    members = [one(c) for c in cells]
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *members)


# ------------------------------------------------------------------------------------------
# Reference
# ------------------------------------------------------------------------------------------


def load_or_pretrain_reference(config, task, model_config, workdir: str | None,
                               log=print) -> Any:
    """Reference parameters: restored from `config.reference.checkpoint` (or a cached
    `<workdir>/reference`), else pretrained on the task's reference data and saved there."""
    target = jax.eval_shape(lambda: model.init(model_config, jax.random.PRNGKey(0)))
    for directory in (config.reference.checkpoint,
                      os.path.join(workdir, "reference") if workdir else ""):
        if directory and checkpoint.latest_step(directory) is not None:
            params, _ = checkpoint.restore(directory, target)
            log(f"reference restored from {directory}")
            return params
    r = config.reference
    t0 = time.time()
    params, report = train.pretrain_reference(
        model_config, task, jax.random.PRNGKey(int(r.seed)), steps=int(r.steps),
        batch_size=int(r.batch_size), lr=float(r.lr), chunk_steps=int(r.chunk_steps))
    log(f"reference pretrained in {time.time() - t0:.1f}s: {report}")
    if workdir:
        checkpoint.save(os.path.join(workdir, "reference"), int(r.steps), params,
                        {"report": report, "task": config.task.to_dict()})
    return params


# ------------------------------------------------------------------------------------------
# The host loop
# ------------------------------------------------------------------------------------------


def _all_finite(metrics: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per step (and member): True where no inner update was skipped as non-finite."""
    return np.asarray(metrics["nonfinite"]) == 0


def _member_rows(metrics: Mapping[str, Any], member: int) -> list[dict[str, Any]]:
    return writers.unstack_steps({k: np.asarray(v)[member] for k, v in metrics.items()})


def run_population(config, cells: Sequence[Mapping[str, Any]], workdir: str,
                   ref_params=None, log=print) -> dict[str, Any]:
    """Train one vmapped population (one compiled program) and return its history.

    Args:
      config: a validated GRPO config (the static part of every member).
      cells: per-member overrides of `VMAPPABLE_KEYS` (missing keys come from `config`).
      workdir: run directory: `metrics.jsonl` (one line per step and member), `tb/`,
        `checkpoints/` (resumed from if present), `summary.json`.
      ref_params: reference parameters (default: `load_or_pretrain_reference`).

    Multi-host (`config.mesh.multihost`): every process runs this same function; the mesh
    spans all processes' devices. `workdir` must be on a filesystem all processes share:
    orbax checkpoints are collective (each process writes its shards, all take the same
    resume branch), while metrics, TensorBoard and the progress bar come from process 0 only.

    Returns:
      {"state": final population state, "history": {metric: [S, steps, ...]} over all steps
       (read back from metrics.jsonl when the run was resumed),
       "setup": RLSetup, "task": Task, "hparams": Hparams, "cells": cells}
    """
    sharding.maybe_initialize_distributed(config.mesh)  # before any other JAX call
    validate_config(config)
    lead = jax.process_index() == 0  # only process 0 writes metrics and shows progress
    os.makedirs(workdir, exist_ok=True)
    task = make_task(config)
    mcfg = make_model_config(config, task)
    mesh = sharding.make_mesh(config.mesh)
    setup = make_setup(config, task, mcfg, mesh, population_kl_choices(config, cells))
    hp = population_hparams(config, cells)
    num = len(cells)
    if ref_params is None:
        ref_params = load_or_pretrain_reference(config, task, mcfg, workdir, log=log)

    def init_population(ref, keys):
        return jax.vmap(lambda k: train.init_rl_state(setup, ref, ref, k))(keys)

    keys = jnp.stack([jax.random.PRNGKey(int(cell_value(config, c, "train.seed")))
                      for c in cells])
    state_shape = jax.eval_shape(init_population, ref_params, keys)
    state_sharding = _state_shardings(state_shape, mesh, config.mesh.shard_params)
    state = jax.jit(init_population, out_shardings=state_sharding)(ref_params, keys)

    ckpt_dir = os.path.join(workdir, "checkpoints")
    start = 0
    if checkpoint.latest_step(ckpt_dir) is not None:
        state, meta = checkpoint.restore(ckpt_dir, state)
        start = int(meta["step"])
        log(f"resumed from {ckpt_dir} at step {start}")
    if lead:
        _truncate_metrics(workdir, start)

    total, chunk = int(config.train.num_steps), int(config.train.chunk_steps)
    t0 = time.perf_counter()
    run_chunk, cached = compiled_chunk(setup, chunk, state, hp)
    compile_s = time.perf_counter() - t0
    log(f"{'reused' if cached else 'compiled'} a {num}-member population program, {chunk} "
        f"steps per chunk, in {compile_s:.1f}s")
    meta = {"config": config.to_dict(), "cells": [dict(c) for c in cells]}
    history: list[dict[str, np.ndarray]] = []
    bar = writers.Progress(total, initial=start, desc=f"grpo {config.task.name}",
                           disable=not (config.train.progress and lead))
    writer = (writers.MetricWriter(workdir, tensorboard=config.train.tensorboard) if lead
              else writers.NullWriter())
    with writer:
        step, chunk_index = start, start // chunk
        while step < total:
            t0 = time.perf_counter()
            new_state, metrics = run_chunk(state, hp)
            metrics = jax.device_get(metrics)  # [S, chunk, ...]
            seconds = time.perf_counter() - t0
            ok = _all_finite(metrics)
            if config.train.on_nonfinite == "stop" and not ok.all():
                member, bad = np.argwhere(~ok)[0]
                bar.close()
                raise NonFiniteError(
                    f"non-finite loss or gradient at step {step + int(bad)} (member {member}, "
                    f"cell {dict(cells[member])}); stopped; the last good checkpoint "
                    f"(step {checkpoint.latest_step(ckpt_dir)}) is kept in {ckpt_dir}")
            state = new_state
            tokens = num * setup.batch_size * task.completion_len * chunk
            metrics["step_time"] = np.full(ok.shape, seconds / chunk)
            metrics["tokens_per_s"] = np.full(ok.shape, tokens / seconds)
            history.append(metrics)
            for m in range(num):
                seed = int(cell_value(config, cells[m], "train.seed"))
                writer.write_many(step, [dict(r, member=m, seed=seed)
                                         for r in _member_rows(metrics, m)])
            step += chunk
            chunk_index += 1
            if chunk_index % int(config.train.checkpoint_every_chunks) == 0 or step >= total:
                checkpoint.save(ckpt_dir, step, state, dict(meta, step=step))
            bar.update(chunk, {"reward": float(np.mean(metrics["reward_mean"][:, -1])),
                               "kl_rev": float(np.mean(metrics["exact_kl_rev"][:, -1])),
                               "s/step": seconds / chunk})
    bar.close()
    if start > 0 and lead:  # resumed: the whole history is in the JSONL
        hist = writers.stacked_history(workdir, num)
    else:
        hist = ({k: np.concatenate([h[k] for h in history], axis=1) for k in history[0]}
                if history else {})
    return {"state": state, "history": hist, "setup": setup, "task": task, "hparams": hp,
            "cells": list(cells), "start_step": start, "compile_s": compile_s}


# Compiled chunk programs, keyed by everything that determines them (the static setup, the
# chunk length and the abstract arguments, shardings included). Host-side only, like jax's
# own jit cache; it lets a resumed run or a repeated population skip recompilation.
_COMPILED: dict[Any, Any] = {}


def compiled_chunk(setup: train.RLSetup, chunk_steps: int, state, hp):
    """(ahead-of-time compiled `make_rl_chunk(setup, chunk_steps, population=True)`, whether
    it came from the cache). Compile time is thereby measured apart from step time."""
    spec = lambda x: (x.shape, str(x.dtype), getattr(x, "sharding", None))
    key = (setup, chunk_steps, jax.tree.structure((state, hp)),
           tuple(spec(x) for x in jax.tree.leaves((state, hp))))
    if key in _COMPILED:
        return _COMPILED[key], True
    program = train.make_rl_chunk(setup, chunk_steps, population=True).lower(state, hp).compile()
    _COMPILED[key] = program
    return program, False


def _state_shardings(state_shape, mesh, shard_params: bool):
    """Population state: params/opt sharded by the FSDP rule (or replicated), rest replicated.

    Leaves carry a leading population axis, which stays unsharded.
    """
    return sharding.param_shardings(state_shape, mesh, bool(shard_params), leading_axes=1)


def _truncate_metrics(workdir: str, step: int) -> None:
    """On resume, drop JSONL lines at or after the restored step (they will be rewritten)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] < step]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(keep)


def train_and_evaluate(config, workdir: str, ref_params=None, log=print) -> dict[str, Any]:
    """Train `config`'s population (`train.num_seeds` seeds) and write `summary.json`."""
    out = run_population(config, population_cells(config), workdir, ref_params=ref_params,
                         log=log)
    hist = out["history"]
    summary = {
        "task": config.task.name,
        "kl": f"{config.loss.kl_estimator}/{config.loss.kl_placement}",
        "beta": float(config.loss.beta),
        "num_steps": int(config.train.num_steps),
        "final": {k: np.asarray(v)[:, -1].tolist() for k, v in hist.items()} if hist else {},
    }
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    if hist:
        log("final (mean over seeds): " + ", ".join(
            f"{k}={np.mean(np.asarray(hist[k])[:, -1]):.4g}"
            for k in ("reward_mean", "exact_kl_rev", "exact_kl_fwd", "entropy")))
    return out
