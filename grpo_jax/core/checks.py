"""Shared checks and the one masked mean.

* ``check_name(kind, name, valid)``: names of estimators, placements, aggregations,
  directions, tasks ... are strings validated at config time; a bad one is a ``ValueError``
  that lists the valid ones (docs/design.md, 'Conventions').
* ``assert_shape`` / ``assert_rank`` / ``assert_same_shape``: thin wrappers of chex's
  assertions (as rlax uses them) that raise ``ValueError`` and name the arrays. Shapes are
  static under ``jax.jit``, so the checks run once at trace time and cost nothing after.
* ``masked_mean``: ``sum(x * mask) / max(sum(mask), 1)``, the masked mean every module uses.
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp


def check_name(kind: str, name, valid: Sequence[str], *, noun: str = "names") -> str:
    """Returns ``name`` if it is in ``valid``; else raises ValueError listing ``valid``.

    The message reads ``unknown <kind> <name>; valid <noun>: a, b, c``.
    """
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; valid {noun}: {', '.join(valid)}")
    return name


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def assert_shape(name: str, x, shape, what: str | None = None) -> None:
    """``x.shape`` matches ``shape`` (``None`` entries match any size), else ValueError.

    ``what`` describes the expected shape in the message (default: the shape itself).
    """
    chex.assert_shape(
        x,
        tuple(shape),
        exception_type=ValueError,
        custom_message=f"{name} has shape {_fmt(jnp.shape(x))}, expected "
        f"{what or _fmt('*' if d is None else d for d in shape)}",
    )


def assert_rank(name: str, x, rank, what: str) -> None:
    """``x.ndim`` is ``rank`` (an int or a set of ints), else ValueError: ``name must be
    <what>``."""
    chex.assert_rank(
        x,
        rank,
        exception_type=ValueError,
        custom_message=f"{name} must be {what}, got shape {_fmt(jnp.shape(x))}",
    )


def assert_same_shape(what: str = "inputs", **arrays) -> None:
    """All given arrays (``None`` entries skipped) share one shape, else ValueError naming
    each array with its shape: ``<what> must have the same shape; got a[2, 3], b[3, 2].``"""
    named = {k: v for k, v in arrays.items() if v is not None}
    if len(named) < 2:
        return
    shapes = ", ".join(f"{k}{_fmt(jnp.shape(v))}" for k, v in named.items())
    chex.assert_equal_shape(
        list(named.values()),
        exception_type=ValueError,
        custom_message=f"{what} must have the same shape; got {shapes}.",
    )


def masked_mean(x: jax.Array, mask: jax.Array | None = None, axis=None) -> jax.Array:
    """``sum(x * mask) / max(sum(mask), 1)`` over ``axis`` (all axes by default), float32.

    Args:
      x: ``[...]`` values; entries where ``mask`` is 0 must be finite (callers clean them).
      mask: ``[...]`` weights of the same shape (1 = real token), or None for a plain mean.
      axis: axes to reduce.

    Returns:
      the mean over ``axis``; 0 where the mask is empty.
    """
    x = jnp.asarray(x, jnp.float32)
    if mask is None:
        return jnp.mean(x, axis=axis)
    assert_same_shape(x=x, mask=mask)
    m = jnp.asarray(mask, jnp.float32)
    return jnp.sum(x * m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1.0)
