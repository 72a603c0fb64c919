"""The sampler's input checks (models/sampling.py, whose module docstring says which run
where): static arguments and concrete values on the host, refused with a ValueError naming
the argument; values traced inside a caller's jit marked per row (`bad_values`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.models import model as model_lib


def _concrete(x) -> np.ndarray | None:
    """`x` as a NumPy array, or None when it is traced inside a caller's jit."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_values(config, prompts, temperature, top_p) -> None:
    """The host-side checks of the values that are not static (module doc): temperature
    finite, top_p in (0, 1], prompt ids in [0, V); skipped for traced values."""
    t = _concrete(temperature)
    if t is not None and not np.all(np.isfinite(t)):
        raise ValueError(
            f"temperature must be a finite number (<= 0: greedy), got {temperature!r}."
        )
    p = None if top_p is None else _concrete(top_p)
    if p is not None and not np.all((p > 0) & (p <= 1)):
        raise ValueError(f"top_p must be in (0, 1] (None: no nucleus cut), got {top_p!r}.")
    ids = _concrete(prompts)
    v = config.vocab_size
    if ids is not None and ids.size and not (ids.min() >= 0 and ids.max() < v):
        row = int(np.argmax(np.any((ids < 0) | (ids >= v), axis=1)))
        bad = ids[row][(ids[row] < 0) | (ids[row] >= v)]
        raise ValueError(
            f"prompts must hold token ids in [0, vocab_size={v}) (padding included); row "
            f"{row} has {bad[:5].tolist()}: encode them with this model's tokenizer."
        )


def bad_values(config, prompts, temperature, top_p, group_size) -> jax.Array:
    """[B] bool, inside the jit: rows whose logp is made NaN (module doc)."""
    temperature = jnp.asarray(temperature, jnp.float32)
    bad = ~jnp.isfinite(temperature)
    if top_p is not None:
        top_p = jnp.asarray(top_p, jnp.float32)
        bad = bad | ~((top_p > 0) & (top_p <= 1))
    rows = jnp.any((prompts < 0) | (prompts >= config.vocab_size), axis=1)  # [N]
    return jnp.repeat(rows, group_size) | bad


def validate(config, prompts, max_new_tokens, top_k, eos_id, banned_tokens, prompt_lengths):
    if not isinstance(config, model_lib.ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}.")
    if prompts.ndim != 2 or prompts.shape[1] < 1:
        raise ValueError(f"prompts must be [B, P] with P >= 1, got shape {prompts.shape}.")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if prompts.shape[1] + max_new_tokens > config.max_len:
        raise ValueError(
            f"prompt length {prompts.shape[1]} + max_new_tokens {max_new_tokens} "
            f"exceeds config.max_len {config.max_len}."
        )
    v = config.vocab_size
    if top_k is not None and not 1 <= top_k <= v:
        raise ValueError(f"top_k must be in [1, vocab_size={v}], got {top_k}.")
    if eos_id is not None and not 0 <= eos_id < v:
        raise ValueError(f"eos_id must be in [0, {v}), got {eos_id}.")
    if any(not 0 <= t < v for t in banned_tokens):
        raise ValueError(f"banned_tokens must be in [0, {v}), got {banned_tokens}.")
    if len(set(banned_tokens)) >= v:
        raise ValueError("banned_tokens exclude the whole vocabulary.")
    if prompt_lengths is not None:
        if jnp.shape(prompt_lengths) != prompts.shape[:1]:
            raise ValueError(
                f"prompt_lengths must be [N] for prompts [N, P]; got prompt_lengths "
                f"{jnp.shape(prompt_lengths)}, prompts {prompts.shape}."
            )
        try:
            lengths = np.asarray(prompt_lengths)
        except jax.errors.TracerArrayConversionError:
            lengths = None  # traced: checked by the caller
        if lengths is not None and lengths.size:
            if not (lengths.min() >= 1 and lengths.max() <= prompts.shape[1]):
                raise ValueError(
                    f"prompt_lengths must be in [1, P={prompts.shape[1]}], got "
                    f"{lengths.min()} .. {lengths.max()}."
                )
