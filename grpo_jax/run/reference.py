"""Where a frozen reference comes from, and the one format every reference is saved in.

    save_reference(directory, step, params, task_config=..., model_config=..., report=...)
    task, model_config, params, metadata = restore_reference(directory)
    params = load_or_pretrain_reference(config, task, model_config, directory)
    model_config = safetensors_model_config(config, task)   # config.reference.safetensors_dir

A saved reference is an orbax checkpoint (checkpoint.py) whose JSON metadata is
`reference_metadata(...)`: {"task": task config (name + fields), "model": ModelConfig
fields, "pretrain": the pretraining settings, "report": the fit (rl/reference_fit.py)}.
The GRPO runner's cached references and experiments/pretrain.py both write it, and
`restore_reference` reads either. A damaged reference (truncated, or bytes that no longer
match the checksums saved with it, checkpoint.py) is a `DamagedReferenceError` naming it and
the way out, never trained against.

A reference may also be a Hugging Face Llama checkpoint (`config.reference.safetensors_dir`:
config.json + safetensors, read by models/hf_llama.py, the safetensors counterpart of the
GGUF loader models/gguf.py): its config.json is then the run's model
(`safetensors_model_config`, which `build.make_model_config` calls) and its weights the
reference, loaded on every start, never cached.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping

import jax

from grpo_jax.models import hf_llama, model as model_lib, policies
from grpo_jax.rl import pretrain
from grpo_jax.run import checkpoint, config_utils, rundir


class DamagedReferenceError(RuntimeError):
    """A saved reference cannot be read back intact (truncated files, bytes that do not
    match their checksums); the message names it and the way out."""


def _restore_intact(directory: str, target, step=None, way_out: str = ""):
    """`checkpoint.restore`, a damaged reference (any storage error, a checksum mismatch)
    re-raised as `DamagedReferenceError` naming `directory` and `way_out`."""
    try:
        return checkpoint.restore(directory, target, step)
    except (checkpoint.CheckpointMismatchError, FileNotFoundError):
        raise
    except Exception as e:  # noqa: BLE001  orbax / tensorstore raise many types
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DamagedReferenceError(
            f"the reference in {directory} is damaged ({type(e).__name__}: {first}); "
            f"{way_out or 'save it again'}"
        ) from e


def reference_metadata(
    task_config: Mapping[str, Any],
    model_config: model_lib.ModelConfig,
    report: Mapping[str, Any] | None = None,
    pretrain: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata every saved reference carries (see the module docstring)."""
    task_config = dict(task_config.to_dict() if hasattr(task_config, "to_dict") else task_config)
    return {
        "task": task_config,
        "model": dataclasses.asdict(model_config),
        "pretrain": dict(pretrain or {}),
        "report": dict(report or {}),
    }


def save_reference(
    directory: str, step: int, params, *, task_config, model_config, report=None, pretrain=None
) -> dict[str, Any]:
    """Save a reference with `reference_metadata`; returns the metadata written."""
    meta = reference_metadata(task_config, model_config, report, pretrain)
    checkpoint.save(directory, int(step), params, meta)
    return meta


def restore_reference(directory: str, step: int | None = None):
    """Load a reference saved by `save_reference` (runner cache or experiments/pretrain.py).

    Returns (task, model_config, params, metadata). A checkpoint without the reference
    metadata is a ValueError naming the directory and the keys it does have.
    """
    meta = checkpoint.read_metadata(directory, step)
    missing = [k for k in ("task", "model") if k not in meta]
    if missing:
        raise ValueError(
            f"{directory}: not a reference checkpoint (metadata lacks "
            f"{missing}; has {sorted(meta)})"
        )
    task = config_utils.make_task(meta["task"])
    model_config = model_lib.ModelConfig(**meta["model"])
    target = model_lib.abstract_params(model_config)
    params, meta = _restore_intact(
        directory, target, step, "save it again (e.g. rerun experiments/pretrain.py)"
    )
    return task, model_config, params, meta


def safetensors_dir(config) -> str:
    """`config.reference.safetensors_dir`, "" when unset (or absent from an older config)."""
    return str(config.reference.get("safetensors_dir", "") or "")


def safetensors_model_config(config, task) -> model_lib.ModelConfig:
    """The model of the Hugging Face checkpoint in `config.reference.safetensors_dir`, sized
    for `task` (max_len = prompt + completion length; compute dtype `config.model.dtype`).
    A vocabulary other than the task's, or a task longer than the checkpoint's
    max_position_embeddings, is a ValueError naming the field."""
    directory = safetensors_dir(config)
    hf = hf_llama.read_config(directory)
    where = f"config.reference.safetensors_dir {directory!r}"
    length = task.prompt_len + task.completion_len
    mcfg = hf_llama.model_config_from_hf(
        hf, where=where, max_len=length, dtype=config.model.get("dtype", "float32")
    )
    if mcfg.vocab_size != task.vocab_size:
        raise ValueError(
            f"{where}: vocab_size {mcfg.vocab_size} is not the task's {task.vocab_size}"
        )
    if length > int(hf["max_position_embeddings"]):
        raise ValueError(
            f"{where}: the task's prompt + completion length {length} exceeds "
            f"max_position_embeddings {hf['max_position_embeddings']}"
        )
    return mcfg


def _pretrain_settings(config) -> dict[str, Any]:
    r = config.reference
    return {k: r[k] for k in ("steps", "batch_size", "lr", "chunk_steps", "seed")}


def _check_reference(directory: str, config, model_config, cached: bool, way_out: str = "") -> None:
    """Refuse a saved reference whose task or model differs from the run's, with a diff
    (and, for the run's own cache, whose pretraining settings differ), or whose metadata
    does not read back (`DamagedReferenceError` with `way_out`)."""
    try:
        meta = checkpoint.read_metadata(directory)
    except Exception as e:  # noqa: BLE001  orbax / tensorstore raise many types
        raise DamagedReferenceError(
            f"the reference in {directory} is damaged (its metadata does not read back: "
            f"{type(e).__name__}); {way_out or 'save it again'}"
        ) from e
    if "task" not in meta or "model" not in meta:
        raise ValueError(
            f"{directory}: not a reference checkpoint (metadata keys "
            f"{sorted(meta)}; want task, model)"
        )
    want = reference_metadata(config.task, model_config, pretrain=_pretrain_settings(config))
    saved = dict(meta)
    try:  # fields added to ModelConfig later take their defaults in an older reference
        saved["model"] = dataclasses.asdict(model_lib.ModelConfig(**meta["model"]))
    except TypeError:
        pass  # an unknown field: left as saved, so the diff shows it
    keys = ("task", "model", "pretrain") if cached else ("task", "model")
    diff = rundir.config_diff({k: saved.get(k, {}) for k in keys}, {k: want[k] for k in keys})
    if diff:
        raise rundir.ConfigMismatchError(
            f"the reference in {directory} was made for another run:\n"
            f"{rundir.format_diff(diff)}\n"
            + (
                "Use a new --workdir (or --overwrite) for a different task or model."
                if cached
                else "Point config.reference.checkpoint at a reference of this "
                "task and model, or leave it empty to pretrain one."
            )
        )


def load_or_pretrain_reference(config, task, model_config, directory: str | None, log=print) -> Any:
    """Reference parameters: loaded from `config.reference.safetensors_dir` (a Hugging Face
    checkpoint) or restored from `config.reference.checkpoint` (or the cache
    `directory`), else pretrained on the task's reference data and saved in `directory`.
    A saved reference of another task, model or pretraining is refused with a diff.
    One-token policies ("tabular", "gaussian") need none of this: their reference is the
    task's exact distribution (`policies.reference_params`)."""
    if config.policy != "transformer":
        return policies.reference_params(task)
    if safetensors_dir(config):
        directory = safetensors_dir(config)
        loaded, params, _ = hf_llama.load(
            directory, max_len=model_config.max_len, dtype=model_config.dtype
        )
        if loaded != model_config:
            raise ValueError(
                f"config.reference.safetensors_dir {directory!r} holds {loaded}, not the "
                f"run's model {model_config}"
            )
        log(f"reference loaded from {directory}")
        return params
    target = jax.eval_shape(lambda: model_lib.init(model_config, jax.random.PRNGKey(0)))
    explicit = config.reference.checkpoint
    for path, cached in ((explicit, False), (directory, True)):
        if path and checkpoint.latest_step(path) is not None:
            way_out = (
                f"delete {path} (or pass --overwrite) and rerun: the reference is "
                f"pretrained again"
                if cached
                else f"point config.reference.checkpoint at an intact reference (or leave "
                f"it empty to pretrain one)"
            )
            _check_reference(path, config, model_config, cached, way_out)
            params, _ = _restore_intact(path, target, way_out=way_out)
            log(f"reference restored from {path}")
            return params
        if path and not cached:
            raise FileNotFoundError(f"config.reference.checkpoint {path!r} holds no " f"checkpoint")
    t0 = time.time()
    settings = _pretrain_settings(config)
    params, report = pretrain.pretrain_reference(
        model_config,
        task,
        jax.random.PRNGKey(int(settings["seed"])),
        steps=int(settings["steps"]),
        batch_size=int(settings["batch_size"]),
        lr=float(settings["lr"]),
        chunk_steps=int(settings["chunk_steps"]),
    )
    log(f"reference pretrained in {time.time() - t0:.1f}s: {report}")
    if directory and jax.process_index() == 0:
        save_reference(
            directory,
            report["steps"],
            params,
            task_config=config.task,
            model_config=model_config,
            report=report,
            pretrain=settings,
        )
    return params
