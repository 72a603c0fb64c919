"""Train state and pure train steps, run as chunked `lax.scan`s (purejaxrl's make_train).

Sections:
  1. Reference pretraining (issue 5): supervised next-token cross-entropy on the task's
     reference data, its exact fit report, and restoring a pretrained reference.
  2. GRPO: `RLSetup` (static), `Hparams` and `RLState` (pytrees), `rl_step` (sample ->
     reward -> advantages -> mu optimiser updates), `make_rl_chunk` (K steps in one
     lax.scan, optionally vmapped over a population). Host orchestration is runner.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from grpo_jax import checkpoint
from grpo_jax import losses
from grpo_jax import metrics as metrics_lib
from grpo_jax import model as model_lib
from grpo_jax import sampling
from grpo_jax import tasks as tasks_lib

# ==========================================================================================
# 1. Reference pretraining (issue 5)
# ==========================================================================================


def pretrain_loss(model_config: model_lib.ModelConfig, params, prompts: jax.Array,
                  completions: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Next-token cross-entropy masked to the answer.

    prompts [B, P], completions [B, T] -> (loss, aux) with
    loss = -(1 / (B T)) sum_{b,t} log pi(y_bt | x_b, y_b,<t) (float32; only completion tokens
    are predicted, the prompt is context), aux = {"token_accuracy": argmax hit rate}.
    """
    logits = model_lib.completion_logits(model_config, params, prompts, completions)  # [B,T,V]
    logp = model_lib.token_logprobs(logits, completions)  # [B, T]
    acc = jnp.mean((jnp.argmax(logits, axis=-1) == completions).astype(jnp.float32))
    return -jnp.mean(logp), {"token_accuracy": acc}


def make_pretrain(model_config: model_lib.ModelConfig, task, optimizer:
                  optax.GradientTransformation, chunk_steps: int, batch_size: int
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
        out = {"loss": loss, "token_accuracy": aux["token_accuracy"],
               "grad_norm": optax.global_norm(grads)}
        return (params, opt_state, key), out

    @jax.jit
    def run_chunk(params, opt_state, key):
        (params, opt_state, key), out = jax.lax.scan(
            step, (params, opt_state, key), None, length=chunk_steps)
        return params, opt_state, key, out

    return run_chunk


def pretrain_optimizer(lr: float, steps: int, warmup: int | None = None,
                       grad_clip: float = 1.0) -> optax.GradientTransformation:
    """Adam with linear warm-up (default 5% of steps) and cosine decay to 0.1 lr, clipped."""
    warmup = max(1, steps // 20) if warmup is None else warmup
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=warmup, decay_steps=max(steps, warmup + 1), end_value=0.1 * lr)
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(schedule))


def pretrain_reference(model_config: model_lib.ModelConfig, task, key: jax.Array, *,
                       steps: int, batch_size: int, lr: float, chunk_steps: int,
                       log: Callable[[str], None] | None = None,
                       writer=None, eval_key: jax.Array | None = None,
                       mode_share_tolerance: float = 0.05,
                       num_eval_samples: int = 4096) -> tuple[Any, dict[str, Any]]:
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
        last = float(np.mean(out["loss"][-max(1, chunk_steps // 10):]))
        if writer is not None:
            writer.write_many(c * chunk_steps + 1,
                              [{k: v[i] for k, v in out.items()} for i in range(chunk_steps)])
        if log is not None:
            log(f"pretrain step {(c + 1) * chunk_steps}/{total}: loss {last:.4f} "
                f"token_acc {float(out['token_accuracy'][-1]):.3f}")
    report = fit_report(model_config, params, task, eval_key,
                        mode_share_tolerance=mode_share_tolerance,
                        num_samples=num_eval_samples)
    report.update(steps=total, initial_loss=first, final_loss=last)
    return params, report


@functools.partial(jax.jit, static_argnums=(0, 2))
def _answer_table_logprobs(model_config, params, task):
    """Model log-probs of every reference answer and per-position entropies there.

    -> (seq_logp [Np, A], entropy [Np, A, T]) with specials banned (sampling distribution).
    """
    answers, _ = task.reference_answers()  # [Np, A, T]
    prompts = task.all_prompts()  # [Np, P]
    n, a, t = answers.shape
    flat_p = jnp.repeat(prompts, a, axis=0)
    flat_c = answers.reshape(n * a, t)
    logits = metrics_lib.ban_tokens(
        model_lib.completion_logits(model_config, params, flat_p, flat_c), task.special_ids)
    logp = model_lib.token_logprobs(logits, flat_c).sum(-1).reshape(n, a)
    ent = metrics_lib.entropy(logits).reshape(n, a, t)
    return logp, ent


@functools.partial(jax.jit, static_argnums=(0, 2))
def _enumerated_mode_shares(model_config, params, task):
    logp = metrics_lib.enumerated_logprobs(model_config, params, task)
    return metrics_lib.enumerated_mode_shares(task, logp)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _pattern_mode_shares(model_config, params, task):
    prompts, w = task.all_prompts(), task.prompt_probs()
    return jnp.stack([jnp.sum(w * metrics_lib.pattern_mass(model_config, params, prompts, pat,
                                                           task.special_ids))
                      for pat in task.mode_patterns()])


def model_mode_shares(model_config, params, task, key: jax.Array, num_samples: int = 4096,
                      max_enumerate: int = 20_000) -> tuple[np.ndarray | None, str]:
    """The policy's mode shares (specials banned, as the sampler does), by the first of
      1. "exact": enumerating all C completions of all Np prompts, if Np * C <= max_enumerate;
      2. "exact": if the task has `mode_patterns()` (modes as product sets), summing
         `metrics.pattern_mass` over all prompts, if that enumerates <= max_enumerate prefixes;
      3. "sampled:<n>": labels of `num_samples` samples, if num_samples > 0;
      4. "none".
    Returns (shares [num_modes] float or None, method)."""
    n_prompts = int(task.table()["prompts"].shape[0])
    if n_prompts * task.num_completions() <= max_enumerate:
        return np.asarray(_enumerated_mode_shares(model_config, params, task)), "exact"
    if hasattr(task, "mode_patterns"):
        sizes = [math.prod(len(s) for s in pat[:-1]) for pat in task.mode_patterns()]
        if n_prompts * sum(sizes) <= max_enumerate:
            return np.asarray(_pattern_mode_shares(model_config, params, task)), "exact"
    if num_samples <= 0:
        return None, "none"
    k_p, k_s = jax.random.split(key)
    prompts = task.sample_prompts(k_p, num_samples)
    out = sampling.sample(model_config, params, prompts, k_s,
                          max_new_tokens=task.completion_len, banned_tokens=task.special_ids)
    labels = task.mode_labels(prompts, out.tokens)
    return np.asarray(metrics_lib.mode_shares(labels, task.num_modes)), f"sampled:{num_samples}"


def fit_report(model_config, params, task, key: jax.Array, *,
               mode_share_tolerance: float = 0.05, num_samples: int = 4096) -> dict[str, Any]:
    """How well a pretrained reference reproduces its data (JSON-serialisable dict).

    Exact, for every task (the data support is enumerable; specials banned, i.e. the
    distribution a sampler draws from):
      data_kl_seq           KL[data || model] per sequence (nats), averaged over prompts;
      data_entropy_seq      entropy of the data per sequence (loss floor times T);
      entropy_per_position_data / _model   E_{x, y ~ data} of the per-position entropy
                            (the model's at the data's prefixes);
      mode_mass_on_support  [K] sum_x w_x sum_{a in data support, mode k} q(a | x);
      off_support_mass      model mass outside the data support. The model's true share s_k
                            lies in [on_k, on_k + off], so |s_k - d_k| <= |on_k - d_k| + off:
      mode_share_err_bound  max_k of that bound (rigorous, no sampling).
    Model mode shares (`model_mode_shares`): mode_shares_model, mode_shares_method.
    mode_share_max_abs_err  max_k |mode_shares_model - data| (exact, or estimated from
                            samples), or the bound when method is "none";
    mode_shares_ok          mode_share_max_abs_err <= mode_share_tolerance.
    """
    t = task.table()
    seq_logp, ent = _answer_table_logprobs(model_config, params, task)
    data_probs = jnp.asarray(t["answer_probs"], jnp.float32)
    prompt_probs = jnp.asarray(t["prompt_probs"], jnp.float32)
    kl = metrics_lib.data_kl(data_probs, seq_logp, prompt_probs)
    w = t["prompt_probs"][:, None] * t["answer_probs"]  # [Np, A]
    ent_model = np.sum(w[..., None] * np.asarray(ent, np.float64), axis=(0, 1))
    support = t["answer_probs"] > 0
    q = np.where(support, np.exp(np.asarray(seq_logp, np.float64)), 0.0)
    q = q * t["prompt_probs"][:, None]
    on_support = np.asarray([q[t["answer_modes"] == k].sum() for k in range(task.num_modes)])
    off_support = max(0.0, 1.0 - float(q.sum()))
    shares_data = np.asarray(task.reference_mode_shares(), np.float64)
    bound = float(np.max(np.abs(on_support - shares_data)) + off_support)
    shares_model, method = model_mode_shares(model_config, params, task, key, num_samples)
    if shares_model is None:
        err = bound
    else:
        err = float(np.max(np.abs(shares_model - shares_data)))
    ent_data = task.reference_entropy()
    floats = lambda xs: None if xs is None else [float(x) for x in xs]
    return {
        "data_kl_seq": float(kl),
        "data_entropy_seq": float(np.sum(ent_data)),
        "entropy_per_position_data": floats(ent_data),
        "entropy_per_position_model": floats(ent_model),
        "mode_shares_data": floats(shares_data),
        "mode_mass_on_support": floats(on_support),
        "off_support_mass": off_support,
        "mode_share_err_bound": bound,
        "mode_shares_model": floats(shares_model),
        "mode_shares_method": method,
        "mode_share_max_abs_err": err,
        "mode_share_tolerance": float(mode_share_tolerance),
        "mode_shares_ok": bool(err <= mode_share_tolerance),
    }


def model_config_for(task, num_layers: int = 2, width: int = 64, num_heads: int = 2,
                     mlp_width: int = 256, dtype: str = "float32") -> model_lib.ModelConfig:
    """A `ModelConfig` sized for `task` (vocab_size and max_len = P + T from the task)."""
    return model_lib.ModelConfig(
        vocab_size=task.vocab_size, num_layers=num_layers, width=width, num_heads=num_heads,
        mlp_width=mlp_width, max_len=task.prompt_len + task.completion_len, dtype=dtype)


def restore_reference(directory: str, step: int | None = None):
    """Load a reference saved by experiments/pretrain.py.

    The checkpoint metadata holds {"task": {"name", ...fields}, "model": ModelConfig fields};
    returns (task, model_config, params, metadata).
    """
    meta = checkpoint.read_metadata(directory, step)
    task_kwargs = dict(meta["task"])
    task = tasks_lib.make(task_kwargs.pop("name"), **task_kwargs)
    model_config = model_lib.ModelConfig(**meta["model"])
    target = model_lib.abstract_params(model_config)
    params, meta = checkpoint.restore(directory, target, step)
    return task, model_config, params, meta


# ==========================================================================================
# 2. GRPO: the whole RL step as one pure function of (state, hparams), chunked under lax.scan
# ==========================================================================================
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
    """Policy starts at `params` (usually the reference itself). The policy gets its own
    buffers, so the state can be donated even when `params is ref_params`."""
    return RLState(
        step=jnp.zeros((), jnp.int32),
        params=jax.tree.map(jnp.copy, params),
        opt_state=setup.optimizer().init(params),
        ref_params=ref_params,
        key=key,
        num_skipped=jnp.zeros((), jnp.int32),
    )


_PI_OLD_AUX = ("exact_kl_reverse", "exact_kl_forward", "entropy")


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
        logits = model_lib.completion_logits(mcfg, params, prompts, tokens)
        return metrics_lib.ban_tokens(logits / setup.temperature, banned)

    sample_logits = metrics_lib.ban_tokens(out.logits / setup.temperature, banned)
    ref_logits = jax.lax.stop_gradient(policy_logits(state.ref_params))
    ref_logp = model_lib.token_logprobs(ref_logits, tokens)                       # [B, T]

    # The whole KL path, in one place: placement "reward" shapes the rewards inside
    # compute_advantages; placement "loss" adds beta * D_t inside grpo_loss; never both.
    def advantages_for(loss_cfg):                                             # [B, T], []
        adv, aux = losses.compute_advantages(
            rewards, setup.group_size, loss_cfg, old_logp=old_logp, ref_logp=ref_logp,
            mask=mask, old_logits=sample_logits, ref_logits=ref_logits)
        adv = jnp.broadcast_to(adv if adv.ndim == 2 else adv[:, None], tokens.shape)
        return adv, aux["zero_var_group_frac"]

    def loss_for(loss_cfg, advantages, logp, logits):
        return losses.grpo_loss(logp, old_logp, ref_logp, advantages, mask, loss_cfg,
                                logits=logits, ref_logits=ref_logits)

    if setup.kl_choices:
        loss_of_logits, zero_var_frac = _switch_kl_choice(
            advantages_for, loss_for, setup.kl_choices, hp, ref_logits, tokens)
    else:
        advantages, zero_var_frac = advantages_for(hp.loss)
        loss_of_logits = lambda logp, logits: loss_for(hp.loss, advantages, logp, logits)

    def loss_fn(params):  # one model forward per inner step, whatever the KL choice
        logits = policy_logits(params)
        return loss_of_logits(model_lib.token_logprobs(logits, tokens), logits)

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

    labels = task.mode_labels(prompts, tokens)
    # Scalars of the loss averaged over the inner steps; the exact per-token KL (both
    # directions) and entropy are taken at the first inner step, where params = pi_old, so
    # they describe the sampling policy on this batch (the loss computes them already).
    metrics = {k: jnp.mean(v) for k, v in inner_stats.items()
               if jnp.ndim(v) == 1 and k not in _PI_OLD_AUX}
    metrics.update(
        reward_mean=rewards.mean(),
        reward_std=rewards.std(),
        exact_kl_rev=inner_stats["exact_kl_reverse"][0],
        exact_kl_fwd=inner_stats["exact_kl_forward"][0],
        entropy=inner_stats["entropy"][0],
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


def _switch_kl_choice(advantages_for, loss_for, kl_choices, hp: Hparams, logits_like,
                      tokens_like):
    """Loss as a function of (logp, logits) for the KL choice `hp.kl_choice`, by `lax.switch`.

    The switch covers only the element-wise advantage and loss math; the model forward and
    backward stay outside it and are shared. Under vmap the switch becomes a select, so a
    population mixing choices evaluates every branch's cheap math once per member. Aux keys
    are cut to those common to all branches so the branches return one structure.
    Returns (loss_of_logits(logp, logits) -> (loss, aux), zero_var_group_frac).
    """
    cfgs = [hp.loss.replace(kl_estimator=e, kl_placement=p) for e, p in kl_choices]
    index = jnp.clip(jnp.asarray(hp.kl_choice, jnp.int32), 0, len(cfgs) - 1)
    advs, zero_vars = zip(*(advantages_for(c) for c in cfgs))
    logp_like = jax.ShapeDtypeStruct(tokens_like.shape, jnp.float32)
    aux_keys = [set(jax.eval_shape(lambda lp, lg, c=c, a=a: loss_for(c, a, lp, lg)[1],
                                   logp_like, logits_like))
                for c, a in zip(cfgs, advs)]
    common = sorted(set.intersection(*aux_keys))

    def branch(i):
        def f(logp, logits):
            loss, aux = loss_for(cfgs[i], advs[i], logp, logits)
            return loss, {k: aux[k] for k in common}
        return f

    branches = [branch(i) for i in range(len(cfgs))]
    loss_of_logits = lambda logp, logits: jax.lax.switch(index, branches, logp, logits)
    return loss_of_logits, jnp.stack(zero_vars)[index]


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
