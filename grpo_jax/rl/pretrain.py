"""Reference pretraining: supervised next-token cross-entropy on a task's reference data.

    params, report = pretrain_reference(model_config, task, key, steps=..., ...)

Saving and restoring a reference (files) is `grpo_jax.run.reference`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grpo_jax.models import model as model_lib
from grpo_jax.rl import reference_fit


def pretrain_loss(
    model_config: model_lib.ModelConfig, params, prompts: jax.Array, completions: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Next-token cross-entropy masked to the answer.

    prompts [B, P], completions [B, T] -> (loss, aux) with
    loss = -(1 / (B T)) sum_{b,t} log pi(y_bt | x_b, y_b,<t) (float32; only completion tokens
    are predicted, the prompt is context), aux = {"token_accuracy": argmax hit rate}.
    """
    logits = model_lib.completion_logits(model_config, params, prompts, completions)  # [B,T,V]
    logp = model_lib.token_logprobs(logits, completions)  # [B, T]
    acc = jnp.mean((jnp.argmax(logits, axis=-1) == completions).astype(jnp.float32))
    return -jnp.mean(logp), {"token_accuracy": acc}


def make_pretrain(
    model_config: model_lib.ModelConfig,
    task,
    optimizer: optax.GradientTransformation,
    chunk_steps: int,
    batch_size: int,
) -> Callable[..., tuple[Any, Any, jax.Array, dict[str, jax.Array]]]:
    """A jitted `run_chunk(params, opt_state, key) -> (params, opt_state, key, metrics)` that
    runs `chunk_steps` supervised steps in one `lax.scan`.

    Each step draws `batch_size` prompts (`task.sample_prompts`) and reference completions
    (`task.sample_reference`), takes the gradient of `pretrain_loss` and applies `optimizer`.
    metrics: {"loss", "token_accuracy", "grad_norm"}, each float32 [chunk_steps]. Pure: the
    same inputs give the same outputs; vmappable over (params, opt_state, key).
    """
    if chunk_steps < 1 or batch_size < 1:
        raise ValueError(f"chunk_steps ({chunk_steps}) and batch_size ({batch_size}) must be >= 1")
    grad_fn = jax.value_and_grad(pretrain_loss, argnums=1, has_aux=True)

    def step(carry, _):
        params, opt_state, key = carry
        key, k_prompt, k_ref = jax.random.split(key, 3)
        prompts = task.sample_prompts(k_prompt, batch_size)
        completions = task.sample_reference(k_ref, prompts)
        (loss, aux), grads = grad_fn(model_config, params, prompts, completions)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        out = {
            "loss": loss,
            "token_accuracy": aux["token_accuracy"],
            "grad_norm": optax.global_norm(grads),
        }
        return (params, opt_state, key), out

    @jax.jit
    def run_chunk(params, opt_state, key):
        (params, opt_state, key), out = jax.lax.scan(
            step, (params, opt_state, key), None, length=chunk_steps
        )
        return params, opt_state, key, out

    return run_chunk


def pretrain_optimizer(
    lr: float, steps: int, warmup: int | None = None, grad_clip: float = 1.0
) -> optax.GradientTransformation:
    """Adam with linear warm-up (default 5% of steps) and cosine decay to 0.1 lr, clipped."""
    warmup = max(1, steps // 20) if warmup is None else warmup
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=warmup, decay_steps=max(steps, warmup + 1), end_value=0.1 * lr
    )
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(schedule))


def pretrain_reference(
    model_config: model_lib.ModelConfig,
    task,
    key: jax.Array,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    chunk_steps: int,
    log: Callable[[str], None] | None = None,
    writer=None,
    eval_key: jax.Array | None = None,
    mode_share_tolerance: float = 0.05,
    num_eval_samples: int = 4096,
) -> tuple[Any, dict[str, Any]]:
    """Pretrain a reference on `task`'s data and report its fit.

    Runs ceil(steps / chunk_steps) chunks of `make_pretrain` with `pretrain_optimizer(lr,
    steps)` (so the step count is rounded up to a multiple of chunk_steps). `writer`
    (optional, a `writers.MetricWriter`) receives per-step metrics; `log` one line per chunk.
    Returns (params, report) with report = `fit_report(...)` plus {"steps", "final_loss",
    "initial_loss"} (JSON-serialisable).
    """
    k_init, k_train, k_eval = jax.random.split(key, 3)
    eval_key = k_eval if eval_key is None else eval_key
    num_chunks = max(1, math.ceil(steps / chunk_steps))
    total = num_chunks * chunk_steps
    optimizer = pretrain_optimizer(lr, total)
    params = jax.jit(model_lib.init, static_argnums=0)(model_config, k_init)
    opt_state = optimizer.init(params)
    run_chunk = make_pretrain(model_config, task, optimizer, chunk_steps, batch_size)
    first = last = None
    for c in range(num_chunks):
        params, opt_state, k_train, out = run_chunk(params, opt_state, k_train)
        out = jax.device_get(out)
        if first is None:
            first = float(np.mean(out["loss"][: max(1, chunk_steps // 10)]))
        last = float(np.mean(out["loss"][-max(1, chunk_steps // 10) :]))
        if writer is not None:
            writer.write_many(
                c * chunk_steps + 1, [{k: v[i] for k, v in out.items()} for i in range(chunk_steps)]
            )
        if log is not None:
            log(
                f"pretrain step {(c + 1) * chunk_steps}/{total}: loss {last:.4f} "
                f"token_acc {float(out['token_accuracy'][-1]):.3f}"
            )
    report = reference_fit.fit_report(
        model_config,
        params,
        task,
        eval_key,
        mode_share_tolerance=mode_share_tolerance,
        num_samples=num_eval_samples,
    )
    report.update(steps=total, initial_loss=first, final_loss=last)
    return params, report


def model_config_for(
    task, num_layers: int = 2, width: int = 64, num_heads: int = 2, mlp_width: int = 256, **fields
) -> model_lib.ModelConfig:
    """A `ModelConfig` sized for `task` (vocab_size and max_len = P + T from the task);
    `fields` are further ModelConfig fields (e.g. dtype)."""
    return model_lib.ModelConfig(
        vocab_size=task.vocab_size,
        num_layers=int(num_layers),
        width=int(width),
        num_heads=int(num_heads),
        mlp_width=int(mlp_width),
        max_len=task.prompt_len + task.completion_len,
        **fields,
    )
