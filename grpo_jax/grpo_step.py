"""GRPO train step (temporary module; merged into train.py once the pretraining part lands)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from grpo_jax import kl, losses, metrics as metrics_lib, model, sampling

# ---------------------------------------------------------------------------------------------
# GRPO: the whole RL step as one pure function of (state, hparams), chunked under lax.scan.
# ---------------------------------------------------------------------------------------------
#
# One RL step (DeepSeekMath, Alg. 1, one iteration of the inner loop):
#   prompts ~ task                                   [N, P]   -> repeated G times -> [B, P]
#   completions, old_logp, mask ~ pi_old(.|prompt)   [B, T]   (cached sampling, one jit)
#   rewards = task.reward(prompts, completions)      [B]
#   ref_logits, ref_logp = pi_ref(completions)        [B, T, V], [B, T]
#   advantages = compute_advantages(rewards, ...)   [B] or [B, T]   (KL-in-reward goes here)
#   mu inner updates of grpo_loss (KL-in-loss goes here) with optax.
# The reference parameters travel in the state and are never updated.


@flax.struct.dataclass
class Hparams:
    """Numeric hyperparameters: pytree leaves, so a population vmaps over them.

    loss: a `losses.LossConfig` (beta, eps_low, eps_high, ... are leaves; names are static).
    lr:   learning rate (scalar).
    """

    loss: Any
    lr: jax.Array
    kl_choice: jax.Array = 0  # index into RLSetup.kl_choices (ignored when that is empty)


@flax.struct.dataclass
class RLState:
    """The GRPO train state. `ref_params` is carried but never updated."""

    step: jax.Array          # int32 scalar: RL steps done
    params: Any              # policy parameters
    opt_state: Any           # optax state of `params`
    ref_params: Any          # frozen reference parameters
    key: jax.Array           # base PRNG key; step keys are fold_in(key, step)
    num_skipped: jax.Array   # int32: inner updates skipped because loss or grads were not finite


@dataclasses.dataclass(frozen=True)
class RLSetup:
    """Static description of one compiled GRPO program (hashable, never traced).

    Attributes:
      model: the `model.ModelConfig` of policy and reference.
      task: the `tasks.Task` (prompts, reward, mode labels).
      num_prompts: prompts per step N; the batch is B = N * group_size.
      group_size: G completions per prompt.
      inner_steps: mu, optimiser updates per batch of samples (pi_old = params at sampling).
      temperature: sampling and training temperature (logits / temperature).
      grad_clip: global-norm clip before Adam (<= 0 disables).
      adam_b1, adam_b2, adam_eps: Adam moments.
      data_sharding: a `NamedSharding` for `[B, ...]` arrays (batch split along the mesh's data
        axis), or None for no constraint.
      kl_choices: optional tuple of (kl_estimator, kl_placement) pairs. Non-empty, the KL
        choice becomes data: `Hparams.kl_choice` indexes it through `lax.switch` (a select
        under vmap), so runs with different estimators and placements share one compiled
        program and one population. Empty, `Hparams.loss` names the choice statically.
    """

    model: Any
    task: Any
    num_prompts: int
    group_size: int
    inner_steps: int = 1
    temperature: float = 1.0
    grad_clip: float = 1.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    data_sharding: Any = None
    kl_choices: tuple = ()

    @property
    def batch_size(self) -> int:
        return self.num_prompts * self.group_size

    def optimizer(self) -> optax.GradientTransformation:
        """Adam *direction* only; the step applies `-lr * update`, so lr can be a traced leaf."""
        parts = [optax.clip_by_global_norm(self.grad_clip)] if self.grad_clip > 0 else []
        parts.append(optax.scale_by_adam(b1=self.adam_b1, b2=self.adam_b2, eps=self.adam_eps))
        return optax.chain(*parts)


def _constrain(x, setup: RLSetup):
    if setup.data_sharding is None:
        return x
    return jax.lax.with_sharding_constraint(x, setup.data_sharding)


def _tree_all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def _global_norm(tree) -> jax.Array:
    return optax.global_norm(tree).astype(jnp.float32)


def init_rl_state(setup: RLSetup, params, ref_params, key) -> RLState:
    """Policy starts at `params` (usually a copy of the reference)."""
    return RLState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=setup.optimizer().init(params),
        ref_params=ref_params,
        key=key,
        num_skipped=jnp.zeros((), jnp.int32),
    )


_DUPLICATE_AUX = ("exact_kl_reverse", "exact_kl_forward", "entropy")


def rl_step(setup: RLSetup, state: RLState, hp: Hparams) -> tuple[RLState, dict]:
    """One GRPO step: sample, score, advantages, `inner_steps` updates. Pure.

    Returns the new state and a dict of scalar metrics (plus `mode_shares [num_modes]`).
    """
    task, mcfg = setup.task, setup.model
    banned = tuple(task.special_ids)
    opt = setup.optimizer()
    key = jax.random.fold_in(state.key, state.step)
    k_prompt, k_sample = jax.random.split(key)

    prompts = task.sample_prompts(k_prompt, setup.num_prompts)              # [N, P]
    prompts = _constrain(jnp.repeat(prompts, setup.group_size, axis=0), setup)  # [B, P]
    out = sampling.sample(
        mcfg, state.params, prompts, k_sample,
        max_new_tokens=task.completion_len, temperature=setup.temperature,
        banned_tokens=banned, return_logits=True)
    tokens = _constrain(out.tokens, setup)                                    # [B, T]
    mask = _constrain(out.mask.astype(jnp.float32), setup)                    # [B, T]
    old_logp = jax.lax.stop_gradient(out.logp)                                # [B, T]
    rewards = task.reward(prompts, tokens).astype(jnp.float32)                # [B]

    def policy_logits(params):
        # The distribution the sampler draws from: specials banned (-1e9: probability 0),
        # logits / temperature; [B, T, V] float32.
        logits = model.completion_logits(mcfg, params, prompts, tokens)
        return metrics_lib.ban_tokens(logits / setup.temperature, banned)

    sample_logits = metrics_lib.ban_tokens(out.logits / setup.temperature, banned)
    ref_logits = jax.lax.stop_gradient(policy_logits(state.ref_params))
    ref_logp = model.token_logprobs(ref_logits, tokens)                       # [B, T]

    # The whole KL path: placement "reward" shapes the rewards inside compute_advantages,
    # placement "loss" adds beta * D_t inside grpo_loss; never both.
    def objective(loss_cfg):
        advantages, adv_aux = losses.compute_advantages(
            rewards, setup.group_size, loss_cfg, old_logp=old_logp, ref_logp=ref_logp,
            mask=mask, old_logits=sample_logits, ref_logits=ref_logits)
        advantages = jnp.broadcast_to(
            advantages if advantages.ndim == 2 else advantages[:, None], tokens.shape)

        def loss_fn(params):
            logits = policy_logits(params)
            logp = model.token_logprobs(logits, tokens)
            return losses.grpo_loss(logp, old_logp, ref_logp, advantages, mask, loss_cfg,
                                    logits=logits, ref_logits=ref_logits)

        return loss_fn, adv_aux["zero_var_group_frac"]

    if setup.kl_choices:
        loss_fn, zero_var_frac = _switch_objective(objective, setup.kl_choices, hp,
                                                   state.params)
    else:
        loss_fn, zero_var_frac = objective(hp.loss)

    def inner(carry, _):
        params, opt_state, skipped = carry
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        direction, new_opt_state = opt.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: -hp.lr * u, direction)
        ok = jnp.isfinite(loss) & _tree_all_finite(grads)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        new_params = keep(optax.apply_updates(params, updates), params)
        new_opt_state = keep(new_opt_state, opt_state)
        stats = dict(aux, loss=loss, grad_norm=_global_norm(grads),
                     update_norm=_global_norm(updates), nonfinite=1.0 - ok.astype(jnp.float32))
        return (new_params, new_opt_state, skipped + (1 - ok.astype(jnp.int32))), stats

    (params, opt_state, skipped), inner_stats = jax.lax.scan(
        inner, (state.params, state.opt_state, state.num_skipped), None,
        length=setup.inner_steps)

    # Metrics of the sampling policy pi_old on this batch (exact over the vocabulary).
    denom = jnp.maximum(mask.sum(), 1.0)
    masked_mean = lambda x: (x * mask).sum() / denom
    labels = task.mode_labels(prompts, tokens)
    # Scalars of the loss averaged over the inner steps (its exact KL and entropy duplicate
    # the pi_old metrics below at the first inner step, so they are left out).
    metrics = {k: jnp.mean(v) for k, v in inner_stats.items()
               if jnp.ndim(v) == 1 and k not in _DUPLICATE_AUX}
    metrics.update(
        reward_mean=rewards.mean(),
        reward_std=rewards.std(),
        exact_kl_rev=masked_mean(kl.exact(sample_logits, ref_logits, "reverse")),
        exact_kl_fwd=masked_mean(kl.exact(sample_logits, ref_logits, "forward")),
        entropy=masked_mean(metrics_lib.entropy(sample_logits)),
        mode_shares=jnp.mean(jax.nn.one_hot(labels, task.num_modes), axis=0),
        param_norm=_global_norm(params),
        completion_len=mask.sum(-1).mean(),
        adv_zero_var_frac=zero_var_frac,
    )
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              num_skipped=skipped)
    return new_state, metrics


def parse_kl_choice(choice: str) -> tuple[str, str]:
    """'k3/loss' -> ('k3', 'loss'); validated against the losses registries."""
    est, _, place = choice.partition("/")
    place = place or "loss"
    if est not in losses.KL_ESTIMATORS or place not in losses.PLACEMENTS:
        raise ValueError(f"bad KL choice {choice!r}: want 'ESTIMATOR/PLACEMENT' with ESTIMATOR "
                         f"in {losses.KL_ESTIMATORS} and PLACEMENT in {losses.PLACEMENTS}")
    return est, place


def _switch_objective(objective, kl_choices, hp: Hparams, params):
    """`objective` for the KL choice `hp.kl_choice` out of `kl_choices`, via `lax.switch`.

    Every branch computes its advantages and loss from the same logits; under vmap the switch
    becomes a select, so a population mixing choices runs every branch (cheap element-wise
    math next to the forward pass, which is shared). Aux keys are cut to those common to all
    branches so the branches return one structure.
    """
    cfgs = [hp.loss.replace(kl_estimator=e, kl_placement=p) for e, p in kl_choices]
    objectives = [objective(c) for c in cfgs]
    shapes = [jax.eval_shape(f, params)[1] for f, _ in objectives]
    common = sorted(set.intersection(*(set(a) for a in shapes)))

    def branch(i):
        def f(p):
            loss, aux = objectives[i][0](p)
            return loss, {k: aux[k] for k in common}
        return f

    index = jnp.clip(jnp.asarray(hp.kl_choice, jnp.int32), 0, len(cfgs) - 1)
    loss_fn = lambda p: jax.lax.switch(index, [branch(i) for i in range(len(cfgs))], p)
    zero_var = jnp.stack([z for _, z in objectives])[index]
    return loss_fn, zero_var


def make_rl_chunk(setup: RLSetup, chunk_steps: int, population: bool = False):
    """`run(state, hp) -> (state, metrics)` running `chunk_steps` RL steps in one lax.scan.

    With `population=True` every leaf of state and hp carries a leading population axis and the
    whole chunk is vmapped (one compiled program for all seeds / hyperparameters). The state is
    donated. Metrics are stacked `[chunk_steps]` (or `[S, chunk_steps]`).
    """

    def run(state, hp):
        return jax.lax.scan(lambda s, _: rl_step(setup, s, hp), state, None, length=chunk_steps)

    if population:
        run = jax.vmap(run)
    return jax.jit(run, donate_argnums=0)
