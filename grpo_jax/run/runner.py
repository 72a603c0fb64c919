"""The host loop of GRPO runs: a population, chunked jitted training, the run directory.

`run_population(config, cells, workdir)`: validate the config (build.py, before anything
compiles), build the population (task, model, mesh, hyperparameters, the reference from
reference.py or the caller), get its compiled chunk program (programs.py), then run the RL
steps in chunks of `config.train.chunk_steps` (one `lax.scan` per jit call) and, between
chunks, write metrics (writers.py), save checkpoints (checkpoint.py) and move the progress
bar. The chunk loop itself reads no config: `LoopSettings` holds what it needs.

Every run is a *population*: `S >= 1` members (seeds and numeric hyperparameters) vmapped
into one compiled program. A single run is the population of one.

The run directory (rundir.py) records its config and cells (`config.json`), is locked
while a process runs in it, and resumes only a run of the same computation. Checkpoints
hold the policy state of every member; the frozen reference is saved once per run
(`<workdir>/reference`, or wherever `config.reference.checkpoint` points), not per member.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.core.kl_choice import KLChoice
from grpo_jax.models import policies
from grpo_jax.rl import evaluate, train
from grpo_jax.run import build, checkpoint, jsonio, programs, rundir, sharding, writers


class NonFiniteError(RuntimeError):
    """Raised when a loss or gradient, or the parameters or optimiser state an update would
    give, are NaN/inf and `train.on_nonfinite == "stop"`."""


class TooManySkippedError(RuntimeError):
    """Raised after a run in which a member skipped more than `train.max_skipped_frac` of its
    updates (non-finite loss or gradient): its numbers would look normal but mean little."""


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
        f"non-finite loss or gradient, or non-finite parameters or optimiser state after the "
        f"update, at step {step} (member {member}, cell {dict(cell)}); stopped; {kept}"
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
    task=None,
    model_config=None,
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
      task, model_config: the task object and the policy's model (a transformer
        `ModelConfig`, e.g. a GGUF model's, with `ref_params` its weights) when they do not
        come from `config.task` and `config.model`.

    Multi-host (`config.mesh.multihost`): every process runs this same function; the mesh
    spans all processes' devices. `workdir` must be on a filesystem all processes share:
    orbax checkpoints are collective (each process writes its shards, all take the same
    resume branch), while metrics, the run config, the lock, TensorBoard and the progress
    bar belong to process 0.
    """
    sharding.maybe_initialize_distributed(config.mesh)  # before any other JAX call
    build.validate_config(config, task_given=task is not None)
    lead = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    given = dict(ref_params=ref_params, task=task, model_config=model_config)
    if not lead:
        return _run_locked(config, cells, workdir, given, log, overwrite, lead)
    with rundir.lock(workdir, log=log):
        return _run_locked(config, cells, workdir, given, log, overwrite, lead)


def _run_locked(config, cells, workdir, given, log, overwrite, lead) -> PopulationResult:
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
    setup, task, state, hp = build.build_population(
        config, cells, reference_dir=reference_dir, log=log, **given
    )
    total, chunk = int(config.train.num_steps), int(config.train.chunk_steps)
    state, start = _resume(ckpt_dir, state, total, log)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if lead:
        writers.truncate_jsonl(metrics_path, start, log=log)

    t0 = time.perf_counter()
    run_chunk, cached = programs.PROGRAMS.get(setup, chunk, state, hp)
    compile_s = time.perf_counter() - t0
    log(
        f"{'reused' if cached else 'compiled'} a {len(cells)}-member population program, "
        f"{chunk} steps per chunk, in {compile_s:.1f}s"
    )
    meta = {"config": config.to_dict(), "cells": [dict(c) for c in cells]}
    seeds = [int(build.cell_value(config, cell, "train.seed")) for cell in cells]
    state, history = _train_chunks(
        LoopSettings.of(config), meta, seeds, setup, state, hp, run_chunk, start, workdir, lead
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


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """What the chunk loop needs from a config (`of(config)`), and nothing else."""

    total: int  # train.num_steps
    chunk: int  # train.chunk_steps
    checkpoint_every: int  # chunks (0: never)
    log_every: int  # steps
    max_to_keep: int | None
    on_nonfinite: str
    tensorboard: bool
    progress: bool

    @classmethod
    def of(cls, config) -> "LoopSettings":
        t = config.train
        return cls(
            total=int(t.num_steps),
            chunk=int(t.chunk_steps),
            checkpoint_every=int(t.checkpoint_every_chunks),
            log_every=int(t.log_every_steps),
            max_to_keep=int(t.max_to_keep) or None,
            on_nonfinite=str(t.on_nonfinite),
            tensorboard=bool(t.tensorboard),
            progress=bool(t.progress),
        )


def _train_chunks(
    loop: LoopSettings, meta, seeds, setup, state, hp, run_chunk, start, workdir, lead
):
    """The chunk loop: run, check finiteness, log, checkpoint, progress. -> (state, history).
    `meta`: what each checkpoint records ({"config", "cells"}); `seeds`: one per member."""
    total, chunk, every, log_every = loop.total, loop.chunk, loop.checkpoint_every, loop.log_every
    ckpt_dir = os.path.join(workdir, "checkpoints")
    cells = meta["cells"]
    history: list[dict[str, np.ndarray]] = []
    bar = writers.Progress(
        total,
        initial=start,
        desc=f"grpo {setup.task.name}",
        disable=not (loop.progress and lead),
    )
    writer = (
        writers.MetricWriter(workdir, tensorboard=loop.tensorboard)
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
            if loop.on_nonfinite == "stop" and not ok.all():
                member, bad = np.argwhere(~ok)[0]
                bar.close()
                raise NonFiniteError(
                    _nonfinite_message(step + int(bad), member, cells[member], ckpt_dir)
                )
            state = new_state
            tokens = len(cells) * setup.batch_size * setup.task.completion_len * chunk
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
            if every and ((step // chunk) % every == 0 or step >= total):
                checkpoint.save(
                    ckpt_dir,
                    step,
                    _policy_part(state),
                    dict(meta, step=step),
                    max_to_keep=loop.max_to_keep,
                    require_finite=True,
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
    """Train `config`'s population (`train.num_seeds` seeds), evaluate every member's final
    policy (`final_evaluation`) and write both to `summary.json`."""
    out = run_population(
        config,
        build.population_cells(config),
        workdir,
        ref_params=ref_params,
        log=log,
        overwrite=overwrite,
    )
    hist = out.history
    summary = {
        "task": config.task.name,
        "kl": str(KLChoice.of(build.kl_choice_of(config), config.loss.beta)),
        "beta": float(config.loss.beta),
        "num_steps": int(config.train.num_steps),
        "steps_run": int(np.asarray(out.state.step)[0]),
        "final": {k: np.asarray(v)[:, -1].tolist() for k, v in hist.items()} if hist else {},
    }
    summary["evaluation"] = final_evaluation(out)
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


def final_evaluation(out: PopulationResult, ks: Sequence[int] = (1, 4)) -> dict | None:
    """Every member's final policy against the reference at the sequence level
    (`rl.evaluate`: exact over an enumerable task, else exact pass@k and Rao-Blackwellised
    reward, KL and entropy): ``{metric: [S] or [S, ...] lists, "eval_method": str}``. None for
    one-token policies (their exact outcomes are the study's, `grpo_jax.study.groups`) and
    when the population spans several processes (its parameters are not all here)."""
    if policies.is_policy(out.setup.model) or jax.process_count() > 1:
        return None
    params = out.state.params
    s = jax.tree.leaves(params)[0].shape[0]
    ref = jax.tree.map(
        lambda r, p: r if r.shape == p.shape else jnp.broadcast_to(r, p.shape),
        out.state.ref_params,
        params,
    )
    result = evaluate.evaluate_population(out.setup.model, out.task, params, ref, ks)
    return {
        k: (v if isinstance(v, str) else np.asarray(v).tolist())
        for k, v in result.items()
        if k not in ("logp", "ref_logp")
    } | {"ks": list(ks), "members": s}
