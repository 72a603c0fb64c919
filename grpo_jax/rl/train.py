"""GRPO as one pure function of (state, hparams), run as chunked `lax.scan`s (purejaxrl's
make_train).

    setup = RLSetup(model=..., task=..., num_prompts=N, group_size=G)   # static
    state = init_rl_state(setup, params, ref_params, key)               # pytree
    run = make_rl_chunk(setup, chunk_steps=K)                           # jitted
    state, metrics = run(state, Hparams(loss=LossConfig(...), lr=1e-3))

One step (DeepSeekMath, Alg. 1, one iteration of the inner loop) is a composition of named
parts:

    rollout        prompts ~ task [N, P] -> repeated G times [B, P]; completions, old_logp,
                   mask ~ pi_old (cached sampling, one jit); rewards = task.reward [B]
                   (rl/rollout.py, with the prompts' own lengths when the task pads them)
    reference      ref_logits, ref_logp = pi_ref(completions)     [B, T, V], [B, T]
    loss function  advantages (KL-in-reward goes here), then grpo_loss (KL-in-loss goes
                   here) as a function of the policy parameters; with several KL choices in
                   one program, a `lax.switch` over the element-wise math only
    inner updates  mu optimiser updates (Adam direction times -lr), each skipped when the
                   loss, gradient or updated parameters / Adam state are not finite, or (`skip_zero_grad`) when the gradient
                   is exactly zero, so Adam's momentum cannot drift the policy
    step metrics   reward, exact KL both ways and entropy of pi_old on this batch, norms

The reference parameters travel in the state and are never updated. Host orchestration
(config, checkpoints, writers) is runner.py; reference pretraining is pretrain.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from grpo_jax.core import kl_choice as kl_choice_lib, kl_control as kl_control_lib, losses
from grpo_jax.models import lora, model as model_lib, policies, sampling, trainable as trainable_lib
from grpo_jax.rl import answer_tree, rollout as rollout_lib

# The rollout part of the step lives in rl/rollout.py; its names stay importable from here.
Rollout = rollout_lib.Rollout
_constrain = rollout_lib._constrain  # pylint: disable=protected-access
step_logits = rollout_lib.step_logits
completion_logits = rollout_lib.completion_logits
policy_logits = rollout_lib.policy_logits
rollout = rollout_lib.rollout
needs_ref_samples = rollout_lib.needs_ref_samples
reference_rollout = rollout_lib.reference_rollout


@flax.struct.dataclass
class Hparams:
    """Numeric hyperparameters: pytree leaves, so a population vmaps over them.

    loss: a `losses.LossConfig` (beta, eps_low, eps_high, ... are leaves; names are static).
    lr:   learning rate (scalar).
    kl_index: index into `RLSetup.kl_choices` (ignored when that is empty).
    """

    loss: Any
    lr: jax.Array
    kl_index: jax.Array = 0
    # The target-KL controller (`RLSetup.kl_control`; None when it is off): the KL per token
    # to hold (<= 0: this member keeps its beta) and the rate of its steps on log beta.
    kl_target: Any = None
    kl_rate: Any = None


@flax.struct.dataclass
class RLState:
    """The GRPO train state. `ref_params` is carried but never updated."""

    step: jax.Array  # int32 scalar: RL steps done
    params: Any  # policy parameters
    opt_state: Any  # optax state of the trainable part of `params` (RLSetup.trainable)
    ref_params: Any  # frozen reference parameters
    key: jax.Array  # base PRNG key; step keys are fold_in(key, step)
    num_skipped: jax.Array  # int32: inner updates skipped as non-finite (loss, grads or result)
    beta: Any = None  # float32: the controlled beta (`RLSetup.kl_control`); None when fixed


@dataclasses.dataclass(frozen=True)
class RLSetup:
    """Static description of one compiled GRPO program (hashable, never traced).

    Attributes:
      model: the policy: a transformer `model.ModelConfig`, or a tabular / Gaussian policy of
        policies.py (TabularPolicy, GaussianPolicy).
      ref_model: the reference's model when it differs from the policy's (e.g. a tabular
        reference holding a task's exact distribution under a Gaussian policy); None = model.
      task: the `tasks.Task` (prompts, reward, mode labels).
      num_prompts: prompts per step N; the batch is B = N * group_size.
      group_size: G completions per prompt.
      inner_steps: mu, optimiser updates per batch of samples (pi_old = params at sampling).
      temperature: sampling and training temperature (logits / temperature).
      one_token_draw: how a policy of policies.py draws its tokens (`policies.DRAWS`).
      grad_clip: global-norm clip before Adam (<= 0 disables).
      adam_b1, adam_b2, adam_eps: Adam moments.
      replay: transformer policies with one inner step (mu = 1): the loss's policy forward
        replays the sampler's matmul outputs (`model.Tape`; pi_theta = pi_old there) instead
        of recomputing them, so only the backward's matmuls run. Same values up to
        rounding; off recomputes the forward (as mu > 1 always does).
      skip_zero_grad: skip the optimiser update (parameters *and* Adam moments unchanged)
        when the gradient is exactly zero, e.g. every group's rewards are equal and there is
        no KL gradient. Off, Adam keeps moving the parameters on momentum alone.
      data_sharding: a `NamedSharding` for `[B, ...]` arrays (batch split along the mesh's data
        axis), or None for no constraint.
      decode_plan: the sampler's decode layout (`sampling.DecodePlan`): chains and
        segments of the decode loop, each one more loop body to compile.
      kl_control: "" (beta fixed by `Hparams.loss.beta`), or what a target-KL controller
        holds at `Hparams.kl_target` by moving beta (`RLState.beta`) each step
        (`core.kl_control.update`): "exact_rev" / "exact_fwd", the exact per-token KL of the
        sampling policy on the step's batch, or "estimate", the KL choice's own estimate.
      kl_choices: optional tuple of `kl_choice.KLChoice`. Non-empty, the KL choice becomes
        data: `Hparams.kl_index` indexes it through `lax.switch` (a select under vmap), so
        runs with different estimators and placements share one compiled program and one
        population. Empty, `Hparams.loss` names the choice statically.
      trainable: which parameters train (`grpo_jax/models/trainable.py`): "all" (default),
        "last:K" (the last K blocks) or "lora" (the adapters of `model.lora` only). The
        gradient and the optimiser state cover only those leaves; the rest stay as they
        started.
    """

    model: Any
    task: Any
    num_prompts: int
    group_size: int
    inner_steps: int = 1
    temperature: float = 1.0
    one_token_draw: str = "gumbel"
    grad_clip: float = 1.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    skip_zero_grad: bool = False
    replay: bool = True
    data_sharding: Any = None
    decode_plan: sampling.DecodePlan = sampling.DecodePlan()
    kl_choices: tuple = ()
    ref_model: Any = None
    kl_control: str = ""
    trainable: str = "all"

    def __post_init__(self):
        trainable_lib.check(self.trainable, self.model)
        choices = tuple(
            (
                kl_choice_lib.KLChoice.parse(c)
                if isinstance(c, str)
                else kl_choice_lib.KLChoice(*c) if isinstance(c, tuple) else c
            )
            for c in self.kl_choices
        )
        if any(c.is_none for c in choices):
            raise ValueError(
                "RLSetup.kl_choices: run the 'none' baseline as beta = 0 with "
                "any estimator, not as a KL choice"
            )
        object.__setattr__(self, "kl_choices", choices)
        if self.kl_control not in kl_control_lib.KL_CONTROL:
            raise ValueError(
                f"RLSetup.kl_control {self.kl_control!r}; valid: '' (off), "
                f"{', '.join(repr(k) for k in kl_control_lib.KL_CONTROL if k)}"
            )

    @property
    def batch_size(self) -> int:
        return self.num_prompts * self.group_size

    @property
    def replays(self) -> bool:
        """Whether the step replays the sampler's forward (see `replay`)."""
        return self.replay and self.inner_steps == 1 and not policies.is_policy(self.model)

    def optimizer(self) -> optax.GradientTransformation:
        """Adam *direction* only; the step applies `-lr * update`, so lr can be a traced leaf."""
        parts = [optax.clip_by_global_norm(self.grad_clip)] if self.grad_clip > 0 else []
        parts.append(optax.scale_by_adam(b1=self.adam_b1, b2=self.adam_b2, eps=self.adam_eps))
        return optax.chain(*parts)


def _adapter_init_key(key):
    return jax.random.fold_in(key, 0x10AA)


def init_rl_state(setup: RLSetup, params, ref_params, key, beta=None) -> RLState:
    """Policy starts at `params` (usually the reference itself). The policy gets its own
    buffers, so the state can be donated even when `params is ref_params`.

    A LoRA policy (`setup.model.lora`) given its base model's parameters gets fresh adapters
    (`model.add_adapters`, ``a`` from `key`, ``b`` = 0), and a reference of the same model
    gets all-zero ones: both compute the base model's logits exactly. The optimiser state
    covers only the trainable leaves (`setup.trainable`). With `setup.kl_control`, `beta`
    is the controlled beta's start (the member's `loss.beta`)."""
    if setup.kl_control and beta is None:
        raise ValueError("RLSetup.kl_control needs the starting beta (init_rl_state beta=)")
    mcfg = setup.model
    if isinstance(mcfg, model_lib.ModelConfig) and mcfg.lora is not None:
        if not lora.has_adapters(params):  # the base model's parameters
            params = model_lib.add_adapters(mcfg, params, _adapter_init_key(key))
        if setup.ref_model is None and not lora.has_adapters(ref_params):
            ref_params = model_lib.add_adapters(mcfg, ref_params, None)
    return RLState(
        step=jnp.zeros((), jnp.int32),
        params=jax.tree.map(jnp.copy, params),
        opt_state=setup.optimizer().init(
            trainable_lib.trainable_part(setup.trainable, mcfg, params)
        ),
        ref_params=ref_params,
        key=key,
        num_skipped=jnp.zeros((), jnp.int32),
        beta=jnp.asarray(beta, jnp.float32) if setup.kl_control else None,
    )


# ------------------------------------------------------------------------------------------
# The parts of one step
# ------------------------------------------------------------------------------------------


def _loss_of_logits(setup: RLSetup, hp: Hparams, batch: Rollout, ref_logits, ref_logp):
    """`(loss_of_logits(logp, logits, ref_sample) -> (loss, aux), zero_var_group_frac)` for
    the step's KL choice: static (`hp.loss`), or `hp.kl_index` of `setup.kl_choices` by
    `lax.switch`. `ref_sample`: (policy logits, reference logits, mask) on completions
    sampled from the reference, or None when no choice has placement "ref_samples".

    The KL path in one place: placement "reward" shapes the rewards inside
    `losses.compute_advantages`; placements "loss" and "ref_samples" add beta * D inside
    `losses.grpo_loss`.
    """

    def advantages_for(loss_cfg):  # [B, T], []
        adv, aux = losses.compute_advantages(
            batch.rewards,
            setup.group_size,
            loss_cfg,
            old_logp=batch.old_logp,
            ref_logp=ref_logp,
            mask=batch.mask,
            old_logits=batch.old_logits,
            ref_logits=ref_logits,
        )
        adv = jnp.broadcast_to(adv if adv.ndim == 2 else adv[:, None], batch.tokens.shape)
        return adv, aux["zero_var_group_frac"]

    def loss_for(loss_cfg, advantages, logp, logits, ref_sample):
        return losses.grpo_loss(
            logp,
            batch.old_logp,
            ref_logp,
            advantages,
            batch.mask,
            loss_cfg,
            logits=logits,
            ref_logits=ref_logits,
            ref_sample=ref_sample if loss_cfg.kl_placement == "ref_samples" else None,
        )

    if not setup.kl_choices:
        advantages, zero_var = advantages_for(hp.loss)
        return (lambda *args: loss_for(hp.loss, advantages, *args)), zero_var
    return _switch_kl_choice(
        advantages_for, loss_for, setup.kl_choices, hp, ref_logits, batch.tokens
    )


def _switch_kl_choice(advantages_for, loss_for, kl_choices, hp: Hparams, logits_like, tokens_like):
    """Loss as a function of (logp, logits) for the KL choice `hp.kl_index`, by `lax.switch`.

    The switch covers only the element-wise advantage and loss math; the model forward and
    backward stay outside it and are shared. Under vmap the switch becomes a select, so a
    population mixing choices evaluates every branch's cheap math once per member. Aux keys
    are cut to those common to all branches so the branches return one structure.
    Returns (loss_of_logits(logp, logits, ref_sample) -> (loss, aux), zero_var_group_frac).
    """
    cfgs = [hp.loss.replace(**c.loss_fields()) for c in kl_choices]
    index = jnp.clip(jnp.asarray(hp.kl_index, jnp.int32), 0, len(cfgs) - 1)
    advs, zero_vars = zip(*(advantages_for(c) for c in cfgs))
    logp_like = jax.ShapeDtypeStruct(tokens_like.shape, jnp.float32)
    mask_like = jax.ShapeDtypeStruct(tokens_like.shape, jnp.float32)
    sample_like = (logits_like, logits_like, mask_like)  # shapes only: the aux keys
    aux_keys = [
        set(
            jax.eval_shape(
                lambda lp, lg, rs, c=c, a=a: loss_for(c, a, lp, lg, rs)[1],
                logp_like,
                logits_like,
                sample_like,
            )
        )
        for c, a in zip(cfgs, advs)
    ]
    common = sorted(set.intersection(*aux_keys))

    def branch(i):
        def f(logp, logits, ref_sample):
            loss, aux = loss_for(cfgs[i], advs[i], logp, logits, ref_sample)
            return loss, {k: aux[k] for k in common}

        return f

    branches = [branch(i) for i in range(len(cfgs))]

    def loss_of_logits(logp, logits, ref_sample):
        return jax.lax.switch(index, branches, logp, logits, ref_sample)

    return loss_of_logits, jnp.stack(zero_vars)[index]


def _tree_all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _computed_once(flag: jax.Array) -> jax.Array:
    """`flag` (bool), computed once for all its consumers. XLA fuses a cheap scalar chain
    (here the and over every gradient leaf) into each consumer, a program quadratic in the
    leaves (5x the instructions of the 30-layer SmolLM2 step), and the CPU pipeline drops
    optimisation barriers; a sort is never fused, so a sort of two copies stops it."""
    x = flag.astype(jnp.float32)
    return jnp.sort(jnp.stack([x, x]))[0] > 0


def _global_norm(tree) -> jax.Array:
    return optax.global_norm(tree).astype(jnp.float32)


def inner_updates(
    setup: RLSetup, hp: Hparams, loss_fn: Callable, params, opt_state, num_skipped: jax.Array
):
    """`setup.inner_steps` optimiser updates of `loss_fn(params) -> (loss, aux)` in a scan.

    An update is skipped (parameters and optimiser state unchanged) when the loss, a
    gradient, or the updated parameters or optimiser state are not finite (counted in
    `num_skipped` and `nonfinite`), and, with
    `setup.skip_zero_grad`, when the gradient is exactly zero (`zero_grad_skipped`).
    Only the trainable leaves (`setup.trainable`, `trainable.split`) are differentiated and
    updated; with "all" they are `params` itself.
    Returns (params, opt_state, num_skipped, per-inner-step stats [inner_steps]).
    """
    opt = setup.optimizer()

    def inner(carry, _):
        all_params, opt_state, skipped = carry
        params, frozen = trainable_lib.split(setup.trainable, setup.model, all_params)
        of_trainable = lambda p: loss_fn(trainable_lib.join(p, frozen))
        (loss, aux), grads = jax.value_and_grad(of_trainable, has_aux=True)(params)
        direction, new_opt_state = opt.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: -hp.lr * u, direction)
        grad_norm = _global_norm(grads)
        new_params = optax.apply_updates(params, updates)
        # Finite gradients can still give non-finite parameters or moments (e.g. Adam with
        # b2 outside [0, 1)): the update's result is checked too.
        finite = (
            jnp.isfinite(loss)
            & _tree_all_finite(grads)
            & _tree_all_finite(new_params)
            & _tree_all_finite(new_opt_state)
        )
        zero = (grad_norm == 0) if setup.skip_zero_grad else jnp.zeros((), bool)
        apply = _computed_once(finite & ~zero)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)
        step_stats = dict(
            aux,
            loss=loss,
            grad_norm=grad_norm,
            update_norm=jnp.where(apply, _global_norm(updates), 0.0),
            nonfinite=1.0 - finite.astype(jnp.float32),
            zero_grad_skipped=(finite & zero).astype(jnp.float32),
        )
        carry = (
            trainable_lib.join(keep(new_params, params), frozen),
            keep(new_opt_state, opt_state),
            skipped + (1 - finite.astype(jnp.int32)),
        )
        return carry, step_stats

    carry = (params, opt_state, num_skipped)
    if setup.inner_steps == 1:  # no loop of one iteration (a smaller program to compile)
        carry, per_step = inner(carry, None)
        per_step = jax.tree.map(lambda x: x[None], per_step)
    else:
        carry, per_step = jax.lax.scan(inner, carry, None, length=setup.inner_steps)
    params, opt_state, num_skipped = carry
    return params, opt_state, num_skipped, per_step


# Taken at the first inner step, where params = pi_old: they describe the sampling policy.
_PI_OLD_AUX = ("exact_kl_rev", "exact_kl_fwd", "entropy")


def step_metrics(
    setup: RLSetup, batch: Rollout, inner_stats: dict, params, zero_var_group_frac
) -> dict[str, jax.Array]:
    """Scalars of the loss averaged over the inner steps; exact per-token KL (both
    directions) and entropy of pi_old on this batch; rewards, norms, mode shares [K]."""
    metrics = {
        k: jnp.mean(v) for k, v in inner_stats.items() if jnp.ndim(v) == 1 and k not in _PI_OLD_AUX
    }
    metrics.update({k: inner_stats[k][0] for k in _PI_OLD_AUX if k in inner_stats})
    labels = setup.task.mode_labels(batch.prompts, batch.tokens)
    metrics.update(
        reward_mean=batch.rewards.mean(),
        reward_std=batch.rewards.std(),
        mode_shares=jnp.mean(jax.nn.one_hot(labels, setup.task.num_modes), axis=0),
        param_norm=_global_norm(params),
        completion_len=batch.mask.sum(-1).mean(),
        zero_var_group_frac=zero_var_group_frac,
    )
    return metrics


# fold_in index of the reference-sample stream (placement "ref_samples"), apart from the
# policy's samples, which use the step key itself.
_REF_SAMPLE_STREAM = 0x5EF


def rl_step(setup: RLSetup, state: RLState, hp: Hparams) -> tuple[RLState, dict]:
    """One GRPO step: rollout, reference, loss function, inner updates, metrics. Pure.

    Returns the new state and a dict of scalar metrics (plus `mode_shares [num_modes]`).
    An answer-tree task (``task.exact_tree``) takes the exact step of rl/answer_tree.py.
    """
    if getattr(setup.task, "exact_tree", False):
        return answer_tree.exact_step(setup, state, hp, inner_updates)
    if setup.kl_control:  # the controlled beta replaces the fixed one
        hp = hp.replace(loss=hp.loss.replace(beta=state.beta))
    batch = rollout(setup, state.params, jax.random.fold_in(state.key, state.step))
    lengths = batch.lengths  # [N] for right-padded prompts, else None (rl/rollout.py)
    ref_model = setup.model if setup.ref_model is None else setup.ref_model
    ref_logits = jax.lax.stop_gradient(
        policy_logits(
            setup,
            state.ref_params,
            batch.group_prompts,
            batch.tokens,
            ref_model,
            prompt_lengths=lengths,
        )
    )
    ref_logp = model_lib.token_logprobs(ref_logits, batch.tokens)  # [B, T]
    loss_of_logits, zero_var = _loss_of_logits(setup, hp, batch, ref_logits, ref_logp)
    ref_tokens = None
    if needs_ref_samples(setup, hp):  # a second batch, sampled from the reference
        key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), _REF_SAMPLE_STREAM)
        ref_tokens, ref_mask = reference_rollout(
            setup, state.ref_params, batch.group_prompts, key, lengths
        )
        ref_on_ref = jax.lax.stop_gradient(
            policy_logits(
                setup, state.ref_params, batch.group_prompts, ref_tokens, ref_model, None, lengths
            )
        )

    def loss_fn(params):  # one model forward per inner step (two with "ref_samples")
        logits = policy_logits(
            setup, params, batch.group_prompts, batch.tokens, None, batch.record, lengths
        )
        ref_sample = None
        if ref_tokens is not None:
            on_ref = policy_logits(
                setup, params, batch.group_prompts, ref_tokens, None, None, lengths
            )
            ref_sample = (on_ref, ref_on_ref, ref_mask)
        return loss_of_logits(model_lib.token_logprobs(logits, batch.tokens), logits, ref_sample)

    params, opt_state, skipped, per_step = inner_updates(
        setup, hp, loss_fn, state.params, state.opt_state, state.num_skipped
    )
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, num_skipped=skipped
    )
    metrics = step_metrics(setup, batch, per_step, params, zero_var)
    if setup.kl_control:
        measured = metrics[kl_control_lib.KL_CONTROL[setup.kl_control]]
        metrics["beta"] = state.beta  # the beta this step used
        beta = kl_control_lib.update(state.beta, measured, hp.kl_target, hp.kl_rate)
        new_state = new_state.replace(beta=beta)
    return new_state, metrics


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
