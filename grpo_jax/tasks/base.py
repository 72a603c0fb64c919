"""Shared machinery of the synthetic tasks: exact answer tables and the samplers built on them.

Every task here has a finite prompt set and, per prompt, a finite set of reference answers
with exact probabilities (the *answer table*). The table is built once in numpy (float64,
cached per task instance; tasks are frozen and hashable) and turned into JAX constants, so the
reference sampler, the exact mode shares and the exact per-position entropy all derive from
one object and cannot drift apart.

Table layout (numpy):
  prompts       int32   [Np, P]     every prompt, in `prompt_index` order
  prompt_probs  float64 [Np]        the prompt distribution (uniform here)
  answers       int32   [Np, A, T]  reference answers per prompt (padded with copies)
  answer_probs  float64 [Np, A]     reference probabilities (0 for padding); rows sum to 1
  answer_modes  int32   [Np, A]     mode label of each answer (-1: no mode)
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.core import checks

_NEG = -1e30  # "log 0" that stays finite, so 0 * log 0 terms vanish instead of giving NaN


@functools.lru_cache(maxsize=64)
def _cached_table(task) -> dict[str, np.ndarray]:
    table = task._build_table()  # pylint: disable=protected-access
    probs = table["answer_probs"]
    if not np.allclose(probs.sum(-1), 1.0, atol=1e-9):
        raise AssertionError(f"{task.name}: answer probabilities must sum to 1 per prompt")
    if not np.isclose(table["prompt_probs"].sum(), 1.0):
        raise AssertionError(f"{task.name}: prompt probabilities must sum to 1")
    for value in table.values():
        value.setflags(write=False)
    return table


def _entropy_nats(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


class TableTask:
    """Mixin for frozen task dataclasses. Subclasses define the fields

    `name, vocab_size, prompt_len, completion_len, num_modes, bos_id, special_ids`

    (as dataclass fields or properties) and the methods `_build_table()`,
    `prompt_index(prompts)`, `reward(prompts, completions)` and
    `mode_labels(prompts, completions)`.
    """

    # ---------------------------------------------------------------- exact tables
    def table(self) -> dict[str, np.ndarray]:
        """The exact answer table (numpy, read-only); see the module docstring."""
        return _cached_table(self)

    def all_prompts(self) -> jax.Array:
        """Every prompt: int32 [Np, P]."""
        return jnp.asarray(self.table()["prompts"], jnp.int32)

    def prompt_probs(self) -> jax.Array:
        """The prompt distribution: float32 [Np]."""
        return jnp.asarray(self.table()["prompt_probs"], jnp.float32)

    def reference_answers(self) -> tuple[jax.Array, jax.Array]:
        """(answers int32 [Np, A, T], probs float32 [Np, A]): the reference's exact distribution
        over completions for each prompt of `all_prompts()` (padding rows have probability 0)."""
        t = self.table()
        return jnp.asarray(t["answers"], jnp.int32), jnp.asarray(t["answer_probs"], jnp.float32)

    @property
    def ordinary_ids(self) -> tuple[int, ...]:
        """Tokens a policy may emit (the vocabulary minus `special_ids`)."""
        return tuple(i for i in range(self.vocab_size) if i not in self.special_ids)

    def num_completions(self) -> int:
        """Size of the completion space a policy samples from: len(ordinary_ids) ** T."""
        return len(self.ordinary_ids) ** self.completion_len

    def enumerate_completions(self, max_count: int = 100_000) -> jax.Array:
        """Every completion made of ordinary tokens: int32 [C, T], C = len(ordinary_ids) ** T,
        in lexicographic order. Raises ValueError if C > max_count (not enumerable)."""
        count = self.num_completions()
        if count > max_count:
            raise ValueError(
                f"{self.name}: {count} completions exceed max_count={max_count}; not enumerable"
            )
        ids = self.ordinary_ids
        rows = list(itertools.product(ids, repeat=self.completion_len))
        return jnp.asarray(np.asarray(rows, np.int32).reshape(count, self.completion_len))

    # ---------------------------------------------------------------- samplers
    def sample_prompts(self, key: jax.Array, n: int) -> jax.Array:
        """n prompts from the prompt distribution: int32 [n, P]."""
        t = self.table()
        logits = jnp.asarray(np.log(t["prompt_probs"]), jnp.float32)
        idx = jax.random.categorical(key, logits, shape=(n,))
        return jnp.asarray(t["prompts"], jnp.int32)[idx]

    def sample_reference(self, key: jax.Array, prompts: jax.Array) -> jax.Array:
        """Reference (pretraining) completions for `prompts` [n, P]: int32 [n, T]."""
        self._check_prompts(prompts)
        t = self.table()
        idx = self.prompt_index(prompts)  # [n]
        probs = t["answer_probs"]
        logp = np.where(probs > 0, np.log(np.where(probs > 0, probs, 1.0)), _NEG)
        logits = jnp.asarray(logp, jnp.float32)[idx]  # [n, A]
        choice = jax.random.categorical(key, logits, axis=-1)  # [n]
        answers = jnp.asarray(t["answers"], jnp.int32)[idx]  # [n, A, T]
        return jnp.take_along_axis(answers, choice[:, None, None], axis=1)[:, 0, :]

    # ---------------------------------------------------------------- reference statistics
    def reference_mode_shares(self) -> jax.Array:
        """Exact share of each mode under the data distribution: float32 [num_modes]
        (sums to 1 minus the mass of unlabelled answers)."""
        return jnp.asarray(self._mode_shares_np(), jnp.float32)

    def _mode_shares_np(self) -> np.ndarray:
        t = self.table()
        w = t["prompt_probs"][:, None] * t["answer_probs"]  # [Np, A]
        shares = np.zeros(self.num_modes)
        for k in range(self.num_modes):
            shares[k] = w[t["answer_modes"] == k].sum()
        return shares

    def reference_entropy(self) -> np.ndarray:
        """Exact per-position entropy (nats) of the data distribution: float64 [T] with
        H_t = E_x H(y_t | x, y_<t) = H(y_<=t | x) - H(y_<t | x) (chain rule), averaged over
        prompts. This is the mean per-token entropy a perfectly pretrained reference has."""
        t = self.table()
        T = self.completion_len
        cond = np.zeros(T + 1)  # cond[t] = E_x H(y_<t | x)
        for i in range(t["prompts"].shape[0]):
            for length in range(1, T + 1):
                mass: dict[tuple[int, ...], float] = {}
                for a in range(t["answers"].shape[1]):
                    p = t["answer_probs"][i, a]
                    if p > 0:
                        key = tuple(int(v) for v in t["answers"][i, a, :length])
                        mass[key] = mass.get(key, 0.0) + p
                h = _entropy_nats(np.asarray(list(mass.values())))
                cond[length] += t["prompt_probs"][i] * h
        return np.diff(cond)

    def reference_stats(self) -> dict[str, Any]:
        """Summary of the reference's modality: per-position entropy (nats), sequence entropy,
        declared number of modes, exact mode shares, the number of modes with share >= 1%, and
        the effective number of modes exp(H(mode shares))."""
        shares = self._mode_shares_np()
        ent = self.reference_entropy()
        return {
            "entropy_per_position": ent.tolist(),
            "sequence_entropy": float(ent.sum()),
            "num_modes": int(self.num_modes),
            "mode_shares": shares.tolist(),
            "modes_above_1pct": int((shares >= 0.01).sum()),
            "effective_modes": float(np.exp(_entropy_nats(shares / shares.sum()))),
        }

    # ---------------------------------------------------------------- helpers
    def _check_prompts(self, prompts) -> None:
        checks.assert_shape(
            f"{self.name}: prompts", prompts, (None, self.prompt_len), f"[B, {self.prompt_len}]"
        )

    def _check_completions(self, prompts, completions) -> None:
        self._check_prompts(prompts)
        checks.assert_shape(
            f"{self.name}: completions",
            completions,
            (prompts.shape[0], self.completion_len),
            f"[B, {self.completion_len}] with B = {prompts.shape[0]} (prompts)",
        )


class MixtureWeights:
    """Mixin for tasks with fields ``num_modes`` and ``weights`` (mixture weights of the
    reference's modes, normalised; None = uniform)."""

    def _check_weights(self) -> None:
        if self.weights is not None:
            if len(self.weights) != self.num_modes or min(self.weights) <= 0:
                raise ValueError(
                    f"weights {self.weights} must be {self.num_modes} positive numbers"
                )

    @property
    def mixture_weights(self) -> tuple[float, ...]:
        """The normalised mixture weights ``w_k``, one per mode."""
        w = (1.0,) * self.num_modes if self.weights is None else tuple(self.weights)
        s = sum(w)
        return tuple(x / s for x in w)


class TokensThenBOS:
    """Mixin for tasks whose vocabulary is the ordinary tokens 0..num_tokens-1 followed by
    BOS = num_tokens, the only special token (field ``num_tokens``)."""

    @property
    def vocab_size(self) -> int:
        return self.num_tokens + 1

    @property
    def bos_id(self) -> int:
        return self.num_tokens

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.num_tokens,)
