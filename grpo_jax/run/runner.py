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

Nothing lost, nothing silent (docs/design.md, 'The run directory'): the metrics rows up to a
checkpoint are made durable before it is saved, and a resume starts from a checkpoint the
rows cover; a checkpoint records its run's config, and another config cannot continue it;
SIGTERM checkpoints, releases the lock and exits (`Terminated`); a full disk is a
`rundir.DiskFullError` naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import threading
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.core.kl_choice import KLChoice
from grpo_jax.rl import evaluate, train
from grpo_jax.run import build, checkpoint, jsonio, programs, rundir, sharding, writers


class NonFiniteError(RuntimeError):
    """Raised when a loss or gradient, or the parameters or optimiser state an update would
    give, are NaN/inf and `train.on_nonfinite == "stop"`."""


class Terminated(SystemExit):
    """SIGTERM reached a run: it saved a checkpoint (unless checkpoints are off), released
    its lock and stopped. A `SystemExit` with status 128 + SIGTERM, so an entry point exits
    as a terminated process does, and `except Exception` (e.g. around one group of a
    study) does not swallow it."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(128 + int(signum))
        self.message = message

    def __str__(self) -> str:
        return self.message


class _StopOnSignal:
    """While active (a `with` block, main thread only), SIGTERM sets `requested` and the
    chunk loop checkpoints and stops at the next chunk boundary; a second SIGTERM raises
    `Terminated` at once. The previous handler is restored on exit; elsewhere (another
    thread, or outside the block) nothing is installed."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.signals = tuple(signals)
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        del frame
        if self.requested is not None:
            raise Terminated(f"{signal.Signals(signum).name} received twice: stopped at once")
        self.requested = signum

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous = {}

    def agreed(self) -> int | None:
        """The signal to stop on, agreed by every process (one stops, all stop)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

        got = multihost_utils.process_allgather(np.int32(self.requested or 0))
        return int(np.max(got)) or None


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
    history: {metric: [S, steps, ...]} over the logged steps of the run (`logged_steps`:
      every `train.log_every_steps`-th and the last; read back from metrics.jsonl when the
      run was resumed, the same either way).
    """

    state: train.RLState
    history: dict[str, np.ndarray]
    setup: train.RLSetup
    task: Any
    hparams: train.Hparams
    cells: list[dict[str, Any]]
    start_step: int
    compile_s: float


def logged_steps(total: int, log_every: int) -> list[int]:
    """The steps (1-based) with a metrics row: every `log_every`-th, and the last."""
    return [s for s in range(1, total + 1) if s % log_every == 0 or s == total]


def _policy_part(state: train.RLState) -> train.RLState:
    """The state without the frozen reference: what a checkpoint holds."""
    return state.replace(ref_params=None)


def _resume(
    ckpt_dir: str, state: train.RLState, total: int, log, max_step: int | None = None
) -> tuple[Any, int]:
    """Restore the newest intact checkpoint (at most `max_step`) into `state` (reference
    kept); (state, step). No checkpoint (or none at most `max_step`): (state, 0)."""
    steps = checkpoint.all_steps(ckpt_dir)
    if not any(max_step is None or s <= max_step for s in steps):
        return state, 0
    restored, _, step = checkpoint.restore_newest_intact(
        ckpt_dir, _policy_part(state), log, max_step=max_step
    )
    if step > total:
        raise rundir.ConfigMismatchError(
            f"{ckpt_dir} holds step {step}, beyond train.num_steps = {total}; use a new "
            f"--workdir, or --overwrite to discard the run"
        )
    log(f"resumed from {ckpt_dir} at step {step}")
    return restored.replace(ref_params=state.ref_params), step


def _readable_metadata(ckpt_dir: str):
    """(step, metadata) of every checkpoint whose metadata reads back, newest first."""
    for step in reversed(checkpoint.all_steps(ckpt_dir)):
        try:
            yield step, checkpoint.read_metadata(ckpt_dir, step)
        except Exception:  # noqa: BLE001  damaged: restore_newest_intact skips it too
            continue


def _check_checkpoint_config(ckpt_dir: str, run: Mapping[str, Any]) -> None:
    """Refuse checkpoints made under another computational config than `run` ({"config",
    "cells"}), whatever config.json says (it may be gone)."""
    for step, meta in _readable_metadata(ckpt_dir):
        if "config" not in meta:
            continue
        saved = {"config": meta["config"], "cells": meta.get("cells", [])}
        hard = rundir.computational_diff(saved, run)
        if hard:
            raise rundir.ConfigMismatchError(
                f"{ckpt_dir} holds checkpoints (step {step}) of a run with a different "
                f"config; these keys change the computation:\n{rundir.format_diff(hard)}\n"
                f"Use a new --workdir, or pass --overwrite to discard the old run."
            )
        return  # the newest readable one decides


def _covered_step(ckpt_dir: str, metrics_path: str, log) -> int | None:
    """The newest checkpoint step whose metrics rows are all in `metrics_path` (None: no
    limit; -1: none is covered, start afresh). A checkpoint records how many rows the file
    held when it was saved (`metrics_rows`); a file cut or damaged since (a torn last line
    is cut here) holds fewer, and resuming there would lose them for good."""
    steps = checkpoint.all_steps(ckpt_dir)
    if not steps:
        return None
    rows = rundir.recover_jsonl(metrics_path, log)
    uncovered = False
    for step, meta in _readable_metadata(ckpt_dir):
        need = meta.get("metrics_rows")
        have = sum(1 for r in rows if int(r.get("step", -1)) < step)
        if need is None or have >= int(need):
            return step
        log(
            f"warning: {metrics_path} holds {have} of the {need} rows written before "
            f"checkpoint step {step} (cut or damaged since); resuming from an earlier "
            f"checkpoint so that the missing rows are computed again"
        )
        uncovered = True
    return -1 if uncovered else None  # (None: no metadata reads back; the restore says so)


def _from_lead(value: int | None) -> int | None:
    """Process 0's `value`, on every process (they must all resume from the same step)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    got = int(multihost_utils.broadcast_one_to_all(np.int32(-2 if value is None else value)))
    return None if got == -2 else got


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
    with _StopOnSignal() as stop, rundir.disk_full(f"the run in {workdir}"):
        if not lead:
            return _run_locked(config, cells, workdir, given, log, overwrite, lead, stop)
        with rundir.lock(workdir, log=log):
            return _run_locked(config, cells, workdir, given, log, overwrite, lead, stop)


def _run_locked(config, cells, workdir, given, log, overwrite, lead, stop) -> PopulationResult:
    ckpt_dir = os.path.join(workdir, "checkpoints")
    run = {"config": config.to_dict(), "cells": [dict(c) for c in cells]}
    if lead:
        if not overwrite:
            _check_checkpoint_config(ckpt_dir, run)
        path = os.path.join(workdir, rundir.CONFIG_FILE)
        with rundir.disk_full(path):
            rundir.check_config(workdir, run, overwrite=overwrite, log=log)
        if overwrite:
            for name in ("checkpoints", "metrics.jsonl", "tb", "reference"):
                _remove(os.path.join(workdir, name))
    reference_dir = os.path.join(workdir, "reference")
    setup, task, state, hp = build.build_population(
        config, cells, reference_dir=reference_dir, log=log, **given
    )
    total, chunk = int(config.train.num_steps), int(config.train.chunk_steps)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    limit = _from_lead(_covered_step(ckpt_dir, metrics_path, log) if lead else None)
    state, start = _resume(ckpt_dir, state, total, log, max_step=limit)
    if lead:
        with rundir.disk_full(metrics_path):
            writers.truncate_jsonl(metrics_path, start, log=log)

    t0 = time.perf_counter()
    run_chunk, cached = programs.PROGRAMS.get(setup, chunk, state, hp)
    compile_s = time.perf_counter() - t0
    log(
        f"{'reused' if cached else 'compiled'} a {len(cells)}-member population program, "
        f"{chunk} steps per chunk, in {compile_s:.1f}s"
    )
    seeds = [int(build.cell_value(config, cell, "train.seed")) for cell in cells]
    state, history = _train_chunks(
        LoopSettings.of(config),
        run,
        seeds,
        setup,
        state,
        hp,
        run_chunk,
        start,
        workdir,
        lead,
        stop=stop,
        log=log,
    )
    if start > 0 and lead:  # resumed: the whole history is in the JSONL
        hist = writers.stacked_history(workdir, len(cells))
    else:  # the same logged steps as the JSONL holds, so a resumed run returns the same
        keep = [s - start - 1 for s in logged_steps(total, int(config.train.log_every_steps))]
        keep = np.asarray([i for i in keep if i >= 0], np.int64)
        hist = (
            {k: np.concatenate([h[k] for h in history], axis=1)[:, keep] for k in history[0]}
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


def _stop_message(signum: int, step: int, total: int, saved: int, ckpt_dir: str) -> str:
    """What a run stopped by a signal at `step` says (`saved`: its newest checkpoint, 0:
    none)."""
    if saved > 0:
        where = f"checkpoint step {saved} is in {ckpt_dir}; rerun the same command to resume"
    else:
        where = "no checkpoint exists (a rerun starts afresh)"
    return f"{signal.Signals(signum).name}: stopped at step {step} of {total}; {where}"


def _write_rows(writer, metrics, seeds, step: int, chunk: int, total: int, log_every: int):
    """The chunk's logged steps (`logged_steps`), one metrics row per member each."""
    logged = [s - step - 1 for s in logged_steps(total, log_every) if step < s <= step + chunk]
    if logged:
        rows = writers.member_rows(metrics, logged)  # [member][logged step]
        for m, seed in enumerate(seeds):
            for i, row in zip(logged, rows[m]):
                writer.write(step + i, dict(row, member=m, seed=seed))


def _raise_nonfinite(ok: np.ndarray, step: int, cells, ckpt_dir: str) -> None:
    """`NonFiniteError` naming the first member and step of a chunk whose `ok` [S, chunk]
    is False."""
    member, bad = np.argwhere(~ok)[0]
    raise NonFiniteError(_nonfinite_message(step + int(bad), member, cells[member], ckpt_dir))


def _postfix(metrics, seconds_per_step: float) -> dict[str, float]:
    """The progress bar's figures after a chunk (means over members, last step)."""
    return {
        "reward": float(np.mean(metrics["reward_mean"][:, -1])),
        "kl_rev": float(np.mean(metrics["exact_kl_rev"][:, -1])),
        "s/step": seconds_per_step,
    }


_WAY_OUT = "free space (or use another --workdir) and rerun the same command to resume"


def _terminate(signum: int, step: int, total: int, saved: int, ckpt_dir: str, log):
    """Say where a stopped run stands and raise `Terminated`."""
    message = _stop_message(signum, step, total, saved, ckpt_dir)
    log(message)
    raise Terminated(message, signum)


def _add_timing(metrics, shape, seconds: float, chunk: int, members: int, setup) -> None:
    """The chunk's seconds per step and generated tokens per second, one per member-step."""
    tokens = members * setup.batch_size * setup.task.completion_len * chunk
    metrics["step_time"] = np.full(shape, seconds / chunk)
    metrics["tokens_per_s"] = np.full(shape, tokens / seconds)


def _train_chunks(
    loop: LoopSettings,
    meta,
    seeds,
    setup,
    state,
    hp,
    run_chunk,
    start,
    workdir,
    lead,
    stop: _StopOnSignal | None = None,
    log=print,
):
    """The chunk loop: run, check finiteness, log, checkpoint, progress. -> (state, history).
    `meta`: what each checkpoint records ({"config", "cells"}, plus the step and how many
    metrics rows precede it); `seeds`: one per member. The rows are fsynced before each
    checkpoint. When `stop` says a SIGTERM came, the loop checkpoints the current step (if
    not saved yet) at the next chunk boundary and raises `Terminated`."""
    total, chunk, every, log_every = loop.total, loop.chunk, loop.checkpoint_every, loop.log_every
    ckpt_dir = os.path.join(workdir, "checkpoints")
    metrics_path = os.path.join(workdir, "metrics.jsonl")

    def save(step: int) -> None:
        with rundir.disk_full(f"checkpoint step {step} in {ckpt_dir}", _WAY_OUT):
            writer.sync()  # every row before the checkpoint is on disk first
            checkpoint.save(
                ckpt_dir,
                step,
                _policy_part(state),
                dict(meta, step=step, metrics_rows=writer.rows),
                max_to_keep=loop.max_to_keep,
                require_finite=True,
            )

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
        step, saved = start, start
        while step < total:
            signum = stop.agreed() if stop is not None else None
            if signum is not None:
                bar.close()
                if every and step > saved:
                    save(step)
                    saved = step
                _terminate(signum, step, total, saved if every else 0, ckpt_dir, log)
            t0 = time.perf_counter()
            new_state, metrics = run_chunk(state, hp)
            metrics = jax.device_get(metrics)  # [S, chunk, ...]
            seconds = time.perf_counter() - t0
            ok = np.asarray(metrics["nonfinite"]) == 0
            if loop.on_nonfinite == "stop" and not ok.all():
                bar.close()
                _raise_nonfinite(ok, step, cells, ckpt_dir)
            state = new_state
            _add_timing(metrics, ok.shape, seconds, chunk, len(cells), setup)
            history.append(metrics)
            with rundir.disk_full(f"{metrics_path} (step {step})", _WAY_OUT):
                if lead:  # (the other processes write nothing)
                    _write_rows(writer, metrics, seeds, step, chunk, total, log_every)
                writer.flush()
            step += chunk
            if every and ((step // chunk) % every == 0 or step >= total):
                save(step)
                saved = step
            bar.update(chunk, _postfix(metrics, seconds / chunk))
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
    one-token policies and a transformer regularised towards the task's exact table
    (`reference.exact`; their exact outcomes are the study's, `grpo_jax.study.groups`) and
    when the population spans several processes (its parameters are not all here)."""
    if out.setup.ref_model is not None or jax.process_count() > 1:
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
