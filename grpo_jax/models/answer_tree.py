"""A transformer's next-token distributions on a two-level answer tree, split at a layer.

The answer tree of a prompt is its last row (the first answer token's distribution, the
*root*) and, for each of K candidate first tokens (the digits 0..9 for numbers), the row
after it (the second token's distribution). One prompt pass and K one-token extensions
give all of them (`model.Transformer.prompt_pass` / `extend`'s attention), so the tree of
N prompts costs N x P + N x K token rows, not N x K x (P + 1).

The pass can be cut at block ``depth``: `trunk` runs the embedding and blocks ``[0,
depth)`` and returns the hidden states entering block ``depth``; `tree_logits` runs blocks
``[depth, L)``, the final norm and the head on them. When everything before ``depth`` is
frozen (trainable subsets "last:K" with ``depth = L - K``), the trunk is a constant that a
training loop computes once; ``depth = 0`` is the whole model (the trunk is then the
embeddings). ``trunk`` followed by ``tree_logits`` equals the uncut pass (tested).

Prompts are right-padded to a common length P with their lengths given (row n's last token
at ``lengths[n] - 1``; causal attention keeps the padding out of every row that is read).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from grpo_jax.models import model as model_lib


class Trunk(NamedTuple):
    """Hidden states entering block ``depth``: ``prompt [N, P, D]`` and ``next [N*K, 1, D]``
    (the K candidate tokens of prompt n are rows ``n*K .. n*K + K - 1``)."""

    prompt: jax.Array
    next: jax.Array


def _check(prompts, lengths, next_ids) -> None:
    if prompts.ndim != 2:
        raise ValueError(f"prompts must be [N, P], got shape {prompts.shape}")
    if lengths.shape != prompts.shape[:1]:
        raise ValueError(f"lengths {lengths.shape} must be [N] for prompts {prompts.shape}")
    if next_ids.ndim != 1:
        raise ValueError(f"next_ids must be [K], got shape {next_ids.shape}")


def _blocks(m, x_prompt, x_next, lengths, layers: range):
    """Run ``m.blocks[layers]`` on the prompt rows, then on the one-token extensions
    attending to each layer's prompt keys/values (as `extend` does)."""
    n, p = x_prompt.shape[:2]
    k = x_next.shape[0] // n
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[None, :], (n, p))
    row_lengths = jnp.repeat(lengths, k)
    next_positions = row_lengths[:, None]
    for i in layers:
        block = m.blocks[i]
        x_prompt, pre = block(x_prompt, positions)
        x_next, _ = block(x_next, next_positions, None, 0, pre, None, row_lengths)
    return x_prompt, x_next


def trunk(config, params, prompts, lengths, next_ids, depth: int) -> Trunk:
    """The hidden states entering block ``depth`` (module docstring). ``prompts [N, P]``
    int, ``lengths [N]``, ``next_ids [K]`` (the candidate first tokens)."""
    prompts, lengths = jnp.asarray(prompts, jnp.int32), jnp.asarray(lengths, jnp.int32)
    next_ids = jnp.asarray(next_ids, jnp.int32)
    _check(prompts, lengths, next_ids)
    if not 0 <= depth <= config.num_layers:
        raise ValueError(f"depth {depth} outside 0..{config.num_layers}")
    m = model_lib.module(config, params)
    n = prompts.shape[0]
    x_prompt = m.embed(prompts)
    x_next = m.embed(jnp.tile(next_ids, n)[:, None])
    return Trunk(*_blocks(m, x_prompt, x_next, lengths, range(depth)))


def tree_logits(config, params, hidden: Trunk, lengths, depth: int):
    """``(root [N, V], second [N, K, V])`` float32 logits from the trunk at block
    ``depth``: the root is row ``lengths[n] - 1`` of prompt n; ``second[n, k]`` the row
    after candidate token k."""
    lengths = jnp.asarray(lengths, jnp.int32)
    m = model_lib.module(config, params)
    x_prompt, x_next = _blocks(
        m, hidden.prompt, hidden.next, lengths, range(depth, config.num_layers)
    )
    n = x_prompt.shape[0]
    last = jnp.take_along_axis(x_prompt, (lengths - 1)[:, None, None], axis=1)  # [N, 1, D]
    root = m._logits(last)[:, 0]  # pylint: disable=protected-access
    second = m._logits(x_next)[:, 0]  # pylint: disable=protected-access
    return root, second.reshape(n, -1, second.shape[-1])
