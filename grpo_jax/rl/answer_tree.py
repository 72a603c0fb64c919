"""Exact-gradient training on answer trees: GRPO's objective without sampling.

For a task `tasks.answer_tree.AnswerTree` (prompts whose answers are the lumped two-level
trees of that module), the step's objective per prompt is

    J(theta) = E_pi[R] - beta * ( D(pi(.|root), ref(.|root))
                                  + sum_d pi_old(d | root) D(pi(.|d), ref(.|d)) )

with D the exact per-position full-vocabulary KL in the member's direction (``exact_rev``:
KL(pi || ref), ``exact_fwd``: KL(ref || pi)), the second-position KL weighted by the
*sampling* policy's probability of each digit prefix and not differentiated through it:
exactly the expectation, on completions drawn from pi_old, of the policy-gradient objective
with the exact KL in the loss (placement "loss"; GRPO's per-group scaling of the reward
aside, which RLOO advantages leave out), whose stationary points are the per-node targets
(tasks/sequence_optima.py). E_pi[R] is summed over the tree's 121 leaves, so its gradient is
the exact policy gradient. Positions after a non-digit first token ("other") are outside
the tree: the answer is already decided (no number), and their KL is left out here and in
`sampled_objective`, its Monte Carlo counterpart. J is averaged over the prompts.

`exact_step` is `train.rl_step` for such a task (rl/train.py dispatches on the task's
``exact_tree``): the same state, optimiser, trainable subsets, finiteness checks and
population loop; its metrics are exact (reward = E_pi[R] of pi_old, the tree's KL in both
directions, the root entropy).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from grpo_jax.core import kl
from grpo_jax.models import answer_tree as tree_model
from grpo_jax.tasks import answer_tree as tree_task

_BANNED = -1e9  # logit of a special token (never written), as the sampler bans them


def _directions(setup, hp) -> jax.Array:
    """Whether the member's KL is the forward one (bool scalar): from `setup.kl_choices`
    indexed by ``hp.kl_index``, else the static estimator of ``hp.loss``."""
    choices = setup.kl_choices or (None,)
    names = []
    for c in choices:
        est, place = (
            (hp.loss.kl_estimator, hp.loss.kl_placement)
            if c is None
            else (c.estimator, c.placement)
        )
        if est not in ("exact_fwd", "exact_rev") or place != "loss":
            raise ValueError(
                f"exact answer-tree training needs exact_fwd/loss or exact_rev/loss, got "
                f"{est}/{place}"
            )
        names.append(est == "exact_fwd")
    return jnp.asarray(names)[hp.kl_index if setup.kl_choices else 0]


def tree_logits(task, model, params):
    """``(root [N, V], second [N, 10, V])`` logits of ``params`` on the task's trees, the
    special tokens banned."""
    arrays = task.arrays()
    if task.trunk is None:
        hidden = tree_model.trunk(
            model, params, arrays["prompts"], arrays["lengths"], arrays["digit_ids"], 0
        )
    else:
        hidden = tree_model.Trunk(*(jnp.asarray(c.value) for c in task.trunk))
    root, second = tree_model.tree_logits(model, params, hidden, arrays["lengths"], task.depth)
    if task.special_ids:
        ban = jnp.zeros((root.shape[-1],), bool).at[jnp.asarray(task.special_ids)].set(True)
        root, second = (jnp.where(ban, _BANNED, x) for x in (root, second))
    return root, second


def lumped(logits: jax.Array, digit_ids: jax.Array) -> jax.Array:
    """``[..., V]`` logits -> ``[..., 11]`` log-probabilities of the 10 digits and of any
    other token (index 10)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    is_digit = jnp.zeros((logits.shape[-1],), bool).at[digit_ids].set(True)
    other = jax.nn.logsumexp(jnp.where(is_digit, -jnp.inf, logp), axis=-1)
    return jnp.concatenate([logp[..., digit_ids], other[..., None]], axis=-1)


def leaf_logprobs(task, root, second) -> jax.Array:
    """``[N, 11, 11]`` log-probabilities of the lumped leaves (the row after "other" is the
    first symbol's alone, spread uniformly: no answer depends on it)."""
    digits = task.arrays()["digit_ids"]
    return _leaves(lumped(root, digits), lumped(second, digits))


def _leaves(l0: jax.Array, l1: jax.Array) -> jax.Array:
    """`leaf_logprobs` from the lumped root ``[N, 11]`` and second ``[N, 10, 11]``."""
    after_other = jnp.full(l1.shape[:1] + (1, 11), -jnp.log(11.0))
    return l0[:, :, None] + jnp.concatenate([l1, after_other], axis=1)


def tree_kl(root, second, ref_root, ref_second, weights, direction: str) -> jax.Array:
    """``[N]``: root KL + sum_d weights[n, d] KL at digit prefix d (exact, full vocabulary)."""
    return kl.exact(root, ref_root, direction) + jnp.sum(
        weights * kl.exact(second, ref_second, direction), axis=-1
    )


def objective(task, root, second, ref_root, ref_second, beta, forward, old=None) -> tuple:
    """(J averaged over prompts, aux) for logits of the policy and the reference (module
    docstring); ``forward`` a bool (scalar) choosing the KL's direction; ``old [N, 10]``
    the sampling policy's digit probabilities (default: the policy's own, not
    differentiated, i.e. theta_old = theta)."""
    arrays = task.arrays()
    l0 = lumped(root, arrays["digit_ids"])  # [N, 11]
    leaves = jnp.exp(_leaves(l0, lumped(second, arrays["digit_ids"])))  # [N, 11, 11]
    expected = jnp.sum(leaves * arrays["rewards"], axis=(1, 2))  # [N]
    if old is None:
        old = jax.lax.stop_gradient(jnp.exp(l0[:, :10]))
    kls = {d: tree_kl(root, second, ref_root, ref_second, old, d) for d in kl.DIRECTIONS}
    penalty = jnp.where(forward, kls["forward"], kls["reverse"])
    root_logp = jax.nn.log_softmax(root, axis=-1)
    aux = dict(
        reward_mean=jnp.mean(expected),
        exact_kl_rev=jnp.mean(kls["reverse"]),
        exact_kl_fwd=jnp.mean(kls["forward"]),
        entropy=jnp.mean(-jnp.sum(jnp.exp(root_logp) * root_logp, axis=-1)),
        kl_penalty=jnp.mean(penalty),
    )
    return jnp.mean(expected - beta * penalty), aux


def sampled_objective(task, model, params, ref_params, beta, forward, key, num_samples: int):
    """A Monte Carlo estimate of `objective` at theta = theta_old (per prompt ``[N]``, and
    its standard error): ``num_samples`` leaves drawn from pi per prompt, each scored
    R(leaf) - beta (root KL + the KL at its digit prefix, when the first token is a digit).
    The test of `objective`'s value against sampling."""
    root, second = tree_logits(task, model, params)
    ref_root, ref_second = tree_logits(task, model, ref_params)
    direction = "forward" if forward else "reverse"
    leaves = leaf_logprobs(task, root, second).reshape(root.shape[0], -1)  # [N, 121]
    draws = jax.random.categorical(key, leaves, axis=-1, shape=(num_samples, root.shape[0]))
    first, sec = draws // 11, draws % 11  # [S, N]
    rewards = task.arrays()["rewards"]
    n = jnp.arange(root.shape[0])
    r = rewards[n, first, sec]
    kl_root = kl.exact(root, ref_root, direction)  # [N]
    kl_d = kl.exact(second, ref_second, direction)  # [N, 10]
    kl_first = jnp.where(first < 10, kl_d[n, jnp.minimum(first, 9)], 0.0)
    score = r - beta * (kl_root[None, :] + kl_first)  # [S, N]
    return score.mean(0), score.std(0) / jnp.sqrt(num_samples)


def exact_step(setup, state, hp, inner_updates: Callable):
    """`train.rl_step` for an answer-tree task (module docstring): ``inner_updates`` is
    `train.inner_updates` (passed in: rl/train.py imports this module)."""
    if setup.kl_control or setup.inner_steps != 1:
        raise ValueError("exact answer-tree training runs one inner step and a fixed beta")
    task, model = setup.task, setup.model
    forward = _directions(setup, hp)
    ref_model = model if setup.ref_model is None else setup.ref_model
    ref_root, ref_second = jax.lax.stop_gradient(tree_logits(task, ref_model, state.ref_params))

    def loss_fn(params):
        root, second = tree_logits(task, model, params)
        value, aux = objective(task, root, second, ref_root, ref_second, hp.loss.beta, forward)
        return -value, aux

    params, opt_state, skipped, per_step = inner_updates(
        setup, hp, loss_fn, state.params, state.opt_state, state.num_skipped
    )
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, num_skipped=skipped
    )
    metrics = {k: v[0] for k, v in per_step.items()}  # one inner step: pi_old's values
    metrics["objective"] = -metrics["loss"]
    return new_state, metrics


def answer_probs(task, model, params) -> jax.Array:
    """``[N, 101]`` exact answer distribution of ``params`` on the task's prompts (0..99,
    100 = other)."""
    root, second = tree_logits(task, model, params)
    leaves = jnp.exp(leaf_logprobs(task, root, second)).reshape(root.shape[0], -1)
    onehot = jax.nn.one_hot(jnp.asarray(tree_task.ANSWER.reshape(-1)), 101)
    return leaves @ onehot
