"""Tabular and Gaussian policies, trained by the same GRPO step as the transformer.

A policy here is a frozen dataclass (a static jit argument) with

    init(key) -> params                                   a pytree
    completion_logits(params, prompts [B, P], tokens [B, T]) -> [B, T, V] float32   (T = 1 here)

Two classes, the two ends of the capacity question (docs/design.md, 'The math'):

  TabularPolicy   a free softmax over the vocabulary: the full simplex. Its KL-regularised
                  optima are the closed forms (tasks.bandit.bandit_optimum); neither
                  direction locks onto a mode.
  GaussianPolicy  one discretised Gaussian over the ordinary tokens, two parameters (mean,
                  log-std): capacity-restricted, so that Le's lock-on transition (reverse KL
                  straddles two modes up to about 5.6 sigma of separation, then locks onto
                  one) can appear.

and, for short enumerable sequence tasks (tasks.fork), `SequenceTabularPolicy`: a free
softmax at every prefix of every prompt (the full simplex over completions; its targets
are tasks.sequence_optima's closed forms).

`reference_params(task)` gives the tabular params whose distribution *is* the task's exact
reference (no pretraining, no fit error), so the KL terms of a run are to the data itself.
`sample` draws one completion per row, with the log-probabilities and logits the GRPO step
needs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.core import tables

_NEG = -1e9  # logit of a token outside the policy's support


@dataclasses.dataclass(frozen=True)
class TabularPolicy:
    """A softmax over `vocab_size` tokens with one free logit each (the full simplex).

    `support`: the tokens that may carry mass (others get logit -1e9); None = all.
    """

    vocab_size: int
    support: tuple[int, ...] | None = None

    def init(self, key: jax.Array) -> dict[str, jax.Array]:
        del key
        return {"logits": jnp.zeros((self.vocab_size,), jnp.float32)}

    def _mask(self) -> jax.Array:
        if self.support is None:
            return jnp.zeros((self.vocab_size,), jnp.float32)
        m = np.full(self.vocab_size, _NEG, np.float32)
        m[list(self.support)] = 0.0
        return jnp.asarray(m)

    def completion_logits(self, params, prompts: jax.Array, tokens: jax.Array) -> jax.Array:
        b, t = tokens.shape
        if t != 1:
            raise ValueError(f"TabularPolicy is for one-token tasks; tokens {tokens.shape}")
        del prompts
        logits = params["logits"].astype(jnp.float32) + self._mask()
        return jnp.broadcast_to(logits, (b, 1, self.vocab_size))


@dataclasses.dataclass(frozen=True)
class GaussianPolicy:
    """One discretised Gaussian over `support` (token positions 0..A-1 of the ordinary
    tokens): p(y) ∝ exp(-(y - mean)^2 / (2 std^2)), params {"mean", "log_std"}.

    init: `init_mean` (default: the support's centre) and `init_std` (default: a quarter of
    the support's width), or `fit_to` a distribution by moment matching.
    """

    vocab_size: int
    support: tuple[int, ...]
    init_mean: float | None = None
    init_std: float | None = None

    def init(self, key: jax.Array) -> dict[str, jax.Array]:
        del key
        a = len(self.support)
        mean = (a - 1) / 2 if self.init_mean is None else self.init_mean
        std = a / 4 if self.init_std is None else self.init_std
        return {"mean": jnp.float32(mean), "log_std": jnp.float32(math.log(std))}

    def fit_to(self, probs) -> dict[str, jax.Array]:
        """Moment-matched parameters (the forward-KL fit of one Gaussian) to `probs` over
        the support."""
        p = np.asarray(probs, np.float64)
        y = np.arange(len(self.support), dtype=np.float64)
        m = float((p * y).sum())
        s = float(np.sqrt((p * (y - m) ** 2).sum()))
        return {"mean": jnp.float32(m), "log_std": jnp.float32(math.log(max(s, 0.3)))}

    def probs_logits(self, params) -> jax.Array:
        """Logits over the vocabulary (-1e9 outside the support). [V] float32."""
        y = jnp.arange(len(self.support), dtype=jnp.float32)
        std = jnp.exp(params["log_std"])
        z = -0.5 * ((y - params["mean"]) / std) ** 2
        out = jnp.full((self.vocab_size,), _NEG, jnp.float32)
        return out.at[jnp.asarray(self.support)].set(z)

    def completion_logits(self, params, prompts: jax.Array, tokens: jax.Array) -> jax.Array:
        b, t = tokens.shape
        if t != 1:
            raise ValueError(f"GaussianPolicy is for one-token tasks; tokens {tokens.shape}")
        del prompts
        return jnp.broadcast_to(self.probs_logits(params), (b, 1, self.vocab_size))


@dataclasses.dataclass(frozen=True)
class SequenceTabularPolicy:
    """A free softmax at every prefix of every prompt: the full simplex over the completions
    of a short sequence task (its one-token case is `TabularPolicy`).

    params ``{"t0": [Np, 1, V], "t1": [Np, A, V], ..., "t{T-1}": [Np, A^(T-1), V]}``: the
    logits of token t given the prompt and the prefix (row = the prefix's lexicographic
    index over the A = len(support) ordinary tokens, `core.tables`' layout). `prompts`: every
    prompt of the task (a row's prompt is found by matching it); `support`: the ordinary
    tokens 0..A-1 (others get logit -1e9).
    """

    vocab_size: int
    support: tuple[int, ...]
    prompts: tuple[tuple[int, ...], ...]
    length: int

    def __post_init__(self):
        if tuple(self.support) != tuple(range(len(self.support))):
            raise ValueError(f"support must be the tokens 0..A-1, got {self.support}")

    def init(self, key: jax.Array) -> dict[str, jax.Array]:
        del key
        a, n = len(self.support), len(self.prompts)
        return {
            f"t{t}": jnp.zeros((n, a**t, self.vocab_size), jnp.float32) for t in range(self.length)
        }

    def prompt_index(self, prompts: jax.Array) -> jax.Array:
        """[B] index of each row's prompt in `self.prompts` (0 where none matches: rows
        come from the task's own prompts, so none are unmatched in a GRPO step)."""
        table = jnp.asarray(self.prompts, jnp.int32)  # [Np, P]
        return jnp.argmax(jnp.all(prompts[:, None, :] == table[None, :, :], axis=-1), axis=-1)

    def completion_logits(self, params, prompts: jax.Array, tokens: jax.Array) -> jax.Array:
        b, t_len = tokens.shape
        if t_len != self.length:
            raise ValueError(
                f"SequenceTabularPolicy has length {self.length}; tokens {tokens.shape}"
            )
        a = len(self.support)
        mask = jnp.asarray(np.where(np.arange(self.vocab_size) < a, 0.0, _NEG), jnp.float32)
        x = self.prompt_index(prompts)
        prefix = jnp.zeros((b,), jnp.int32)
        out = []
        for t in range(self.length):
            out.append(params[f"t{t}"].astype(jnp.float32)[x, prefix] + mask[None, :])
            prefix = prefix * a + jnp.minimum(tokens[:, t], a - 1)
        return jnp.stack(out, axis=1)

    def tables(self, params) -> list[np.ndarray]:
        """The policy's conditionals (`core.tables` layout, [Np, A^t, A] each), float64."""
        a = len(self.support)
        return [
            np.asarray(jax.nn.softmax(params[f"t{t}"][..., :a].astype(jnp.float32), -1), np.float64)
            for t in range(self.length)
        ]


POLICIES = {"tabular": TabularPolicy, "gaussian": GaussianPolicy}


def is_policy(model: Any) -> bool:
    """True for the policies of this module (False for a transformer config)."""
    return isinstance(model, tuple(POLICIES.values()) + (SequenceTabularPolicy,))


def make(name: str, task, **kwargs):
    """The policy `name` ('tabular' | 'gaussian') for `task`: one-token tasks take either;
    a longer enumerable task takes 'tabular' as a `SequenceTabularPolicy`."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(POLICIES)}")
    if task.completion_len != 1 and name == "tabular":
        if task.num_completions() > 100_000:
            raise ValueError(
                f"a tabular policy over {task.name}'s {task.num_completions()} completions is "
                "not enumerable (at most 100000)"
            )
        prompts = tuple(tuple(int(v) for v in row) for row in task.table()["prompts"])
        return SequenceTabularPolicy(
            task.vocab_size, tuple(task.ordinary_ids), prompts, int(task.completion_len), **kwargs
        )
    if task.completion_len != 1:
        raise ValueError(
            f"policy {name!r} is for one-token tasks; {task.name} has "
            f"completion_len {task.completion_len}"
        )
    return POLICIES[name](vocab_size=task.vocab_size, support=tuple(task.ordinary_ids), **kwargs)


def reference_params(task) -> dict[str, jax.Array]:
    """Tabular params whose distribution is the task's exact reference: a `TabularPolicy`'s
    for a one-token task (one prompt), a `SequenceTabularPolicy`'s for a longer one (its
    table must hold every completion, in lexicographic order)."""
    t = task.table()
    if task.completion_len != 1:
        return _sequence_reference_params(task, t)
    if t["prompts"].shape[0] != 1:
        raise ValueError(
            f"{task.name} has {t['prompts'].shape[0]} prompts; the tabular reference needs one"
        )
    # Tokens outside the table keep logit 0 here: the policy's support mask removes them
    # (so the parameters carry no -1e9 and their norm means something).
    logits = np.zeros(task.vocab_size, np.float64)
    answers = np.asarray(t["answers"])[0, :, 0]
    probs = np.asarray(t["answer_probs"], np.float64)[0]
    logits[answers] = np.log(np.maximum(probs, 1e-30))
    return {"logits": jnp.asarray(logits, jnp.float32)}


def _sequence_reference_params(task, t) -> dict[str, jax.Array]:
    a, length = len(task.ordinary_ids), int(task.completion_len)
    answers = np.asarray(t["answers"])
    if answers.shape[1] != a ** length or not (answers == answers[:1]).all():
        raise ValueError(
            f"{task.name}: the sequence reference needs every one of the {a**length} completions "
            f"listed once per prompt in lexicographic order; its table has answers {answers.shape}"
        )
    order = np.ravel_multi_index(tuple(answers[0].T), (a,) * length)
    joint = np.zeros((answers.shape[0], a**length))
    joint[:, order] = np.asarray(t["answer_probs"], np.float64)
    out = {}
    for i, table in enumerate(tables.conditionals(joint, a, length)):
        logits = np.zeros(table.shape[:-1] + (task.vocab_size,))
        logits[..., :a] = np.log(np.maximum(table, 1e-30))
        out[f"t{i}"] = jnp.asarray(logits, jnp.float32)
    return out


DRAWS = ("inverse_cdf", "gumbel")  # how `sample` draws the token (RLSetup.one_token_draw)


def sample(
    policy,
    params,
    prompts: jax.Array,
    key: jax.Array,
    *,
    temperature: float = 1.0,
    banned_tokens=(),
    draw: str = "gumbel",
):
    """One completion per row: `sampling.SampleOutput(tokens [B,T], logp [B,T], mask [B,T],
    logits [B,T,V])` (T = 1 for the one-token policies), logits raw (before temperature and
    bans, as the transformer sampler); token t draws with `key` (t = 0) or fold_in(key, t).

    `draw` (static): "gumbel" (`jax.random.categorical`, V Gumbels per row; the default) or
    "inverse_cdf" (`sampling.inverse_cdf_categorical`, one uniform per row, 2x faster study
    populations, but token probabilities below ~1.2e-7 are not represented faithfully)."""
    from grpo_jax.models import sampling  # pylint: disable=import-outside-toplevel

    if draw not in DRAWS:
        raise ValueError(f"draw {draw!r} is not one of {DRAWS}.")
    b, length = prompts.shape[0], int(getattr(policy, "length", 1))
    tokens = jnp.zeros((b, length), jnp.int32)
    for t in range(length):  # logits at t depend on tokens before t only
        logits = policy.completion_logits(params, prompts, tokens)
        z = sampling.sampling_logits(logits[:, t], temperature, banned_tokens=banned_tokens)
        k = key if t == 0 else jax.random.fold_in(key, t)
        if draw == "inverse_cdf":
            tok = sampling.inverse_cdf_categorical(k, z)
        else:
            tok = jax.random.categorical(k, z, axis=-1)
        tokens = tokens.at[:, t].set(tok.astype(jnp.int32))
    z = sampling.sampling_logits(logits, temperature, banned_tokens=banned_tokens)
    logp = jnp.take_along_axis(jax.nn.log_softmax(z, -1), tokens[..., None], -1)[..., 0]
    return sampling.SampleOutput(
        tokens=tokens, logp=logp, mask=jnp.ones((b, length), jnp.float32), logits=logits
    )
