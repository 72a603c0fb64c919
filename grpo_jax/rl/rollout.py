"""The rollout part of the GRPO step (rl/train.py): sampling from pi_old, the teacher-forced
logits of the policy and the reference, and the reference's own samples.

    batch = rollout(setup, params, key)               # prompts, completions, old_logp, rewards
    logits = policy_logits(setup, params, batch.group_prompts, batch.tokens,
                           prompt_lengths=batch.lengths)

`setup` is a `train.RLSetup` (rl/train.py re-exports every name here, so callers keep using
``train.rollout``, ``train.policy_logits``, ...).

**Prompts of different lengths.** A task may right-pad its prompts to one length P and give
``task.prompt_lengths(group_prompts [N, P]) -> [N] int32`` (each prompt's own length), or
None when the prompts are not padded. The lengths then reach the sampler
(`sampling.sample(prompt_lengths=)`: row n's completion starts after its own prompt) and
every teacher-forced pass over the same completions (`model.completion_logits(
prompt_lengths=)`: the policy's, replayed or recomputed, and the reference's, on the
policy's and on the reference's samples), so each completion is scored after the prompt it
was sampled after. A task without ``prompt_lengths`` (or returning None) runs exactly the
programs it ran before lengths existed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from grpo_jax.core import stats
from grpo_jax.models import model as model_lib, policies, sampling


class Rollout(NamedTuple):
    """One batch sampled from pi_old. B = num_prompts * group_size."""

    group_prompts: jax.Array  # int32 [N, P], one row per group
    prompts: jax.Array  # int32 [B, P] (each prompt repeated group_size times)
    tokens: jax.Array  # int32 [B, T]
    mask: jax.Array  # float32 [B, T]
    old_logp: jax.Array  # float32 [B, T], stop-gradient
    old_logits: jax.Array  # float32 [B, T, V], the sampling distribution's logits
    rewards: jax.Array  # float32 [B]
    record: Any = None  # the sampler's matmul records (`RLSetup.replays`), or None
    lengths: Any = None  # int32 [N], each group's prompt length (padded prompts), or None


def prompt_lengths(task, group_prompts: jax.Array):
    """``[N]`` int32 lengths of the right-padded ``group_prompts [N, P]``
    (``task.prompt_lengths``), or None: the task has no such method, or its prompts are not
    padded."""
    of = getattr(task, "prompt_lengths", None)
    if of is None:
        return None
    lengths = of(group_prompts)
    return None if lengths is None else jnp.asarray(lengths, jnp.int32)


def _constrain(x, setup):
    if setup.data_sharding is None:
        return x
    return jax.lax.with_sharding_constraint(x, setup.data_sharding)


def step_logits(setup, logits: jax.Array) -> jax.Array:
    """The distribution the sampler draws from: logits / temperature, specials banned
    (-1e9: probability exactly 0). [B, T, V] float32."""
    return stats.ban_tokens(logits / setup.temperature, tuple(setup.task.special_ids))


def completion_logits(
    model, params, prompts: jax.Array, tokens: jax.Array, replay=None, prompt_lengths=None
):
    """Raw teacher-forced logits [B, T, V] of a transformer config or a policy of policies.py;
    `prompts` [N, P], one per group of B // N consecutive rows of `tokens` [B, T];
    `prompt_lengths` [N] when the prompts are right-padded (transformers only)."""
    if policies.is_policy(model):
        if prompt_lengths is not None:
            raise ValueError("prompt_lengths: the one-token policies take unpadded prompts")
        g = tokens.shape[0] // prompts.shape[0]
        return model.completion_logits(params, jnp.repeat(prompts, g, axis=0), tokens)
    return model_lib.completion_logits(model, params, prompts, tokens, replay, prompt_lengths)


def policy_logits(
    setup,
    params,
    prompts: jax.Array,
    tokens: jax.Array,
    model=None,
    replay=None,
    prompt_lengths=None,
) -> jax.Array:
    """Teacher-forced `step_logits` of `tokens` [B, T] under `model` (default: the
    policy's); `prompts` [N, P] holds one prompt per group of `setup.group_size` rows
    (right-padded to P when `prompt_lengths` [N] is given)."""
    model = setup.model if model is None else model
    if prompts.shape[0] * setup.group_size != tokens.shape[0]:
        raise ValueError(
            f"prompts [N, P] must have one row per group of {setup.group_size} rows of tokens "
            f"[B, T]; got prompts {prompts.shape}, tokens {tokens.shape}."
        )
    return step_logits(
        setup, completion_logits(model, params, prompts, tokens, replay, prompt_lengths)
    )


def rollout(setup, params, key: jax.Array) -> Rollout:
    """Sample prompts, G completions each from `params` (pi_old), and their rewards."""
    task = setup.task
    k_prompt, k_sample = jax.random.split(key)
    group_prompts = task.sample_prompts(k_prompt, setup.num_prompts)  # [N, P]
    lengths = prompt_lengths(task, group_prompts)  # [N] or None
    prompts = _constrain(jnp.repeat(group_prompts, setup.group_size, axis=0), setup)  # [B, P]
    if policies.is_policy(setup.model):
        if lengths is not None:
            raise ValueError(f"{task.name}: the one-token policies take unpadded prompts")
        out = policies.sample(
            setup.model,
            params,
            prompts,
            k_sample,
            temperature=setup.temperature,
            banned_tokens=tuple(task.special_ids),
            draw=setup.one_token_draw,
        )
    else:
        out = sampling.sample(
            setup.model,
            params,
            group_prompts,
            k_sample,
            max_new_tokens=task.completion_len,
            temperature=setup.temperature,
            banned_tokens=tuple(task.special_ids),
            return_logits=True,
            group_size=setup.group_size,
            record=setup.replays,
            decode_plan=setup.decode_plan,
            prompt_lengths=lengths,
        )
    tokens = _constrain(out.tokens, setup)
    return Rollout(
        group_prompts=group_prompts,
        prompts=prompts,
        tokens=tokens,
        mask=_constrain(out.mask.astype(jnp.float32), setup),
        old_logp=jax.lax.stop_gradient(out.logp),
        old_logits=step_logits(setup, out.logits),
        rewards=task.reward(prompts, tokens).astype(jnp.float32),
        record=out.record if setup.replays else None,
        lengths=lengths,
    )


def needs_ref_samples(setup, hp) -> bool:
    """Whether the step's KL choice (any of `setup.kl_choices`, else `hp.loss`'s) has
    placement "ref_samples", i.e. the step also samples completions from the reference."""
    if setup.kl_choices:
        return any(c.placement == "ref_samples" for c in setup.kl_choices)
    return hp.loss.kl_placement == "ref_samples"


def reference_rollout(setup, ref_params, group_prompts: jax.Array, key, prompt_lengths=None):
    """(tokens [B, T], mask [B, T] float32): G completions of each of `group_prompts` [N, P]
    (right-padded when `prompt_lengths` [N]) sampled from the reference (`setup.ref_model`,
    or the policy's model with `ref_params`), the prefixes along which placement
    "ref_samples" evaluates its KL."""
    task = setup.task
    model = setup.model if setup.ref_model is None else setup.ref_model
    common = dict(temperature=setup.temperature, banned_tokens=tuple(task.special_ids))
    if policies.is_policy(model):
        if prompt_lengths is not None:
            raise ValueError(f"{task.name}: the one-token policies take unpadded prompts")
        prompts = jnp.repeat(group_prompts, setup.group_size, axis=0)
        out = policies.sample(model, ref_params, prompts, key, draw=setup.one_token_draw, **common)
    else:
        out = sampling.sample(
            model,
            ref_params,
            group_prompts,
            key,
            max_new_tokens=task.completion_len,
            group_size=setup.group_size,
            **common,
            prompt_lengths=prompt_lengths,
        )
    return _constrain(out.tokens, setup), _constrain(out.mask.astype(jnp.float32), setup)
