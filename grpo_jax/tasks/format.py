"""Format mixture: the digit sum mod 10, answered directly or in a short worked format.

Vocabulary: digits 0..9 = tokens 0..9, EQ "=" = 10, PLUS "+" = 11, DOT "." = 12 (ordinary:
a policy emits them), BOS = 13 (the only special). vocab_size = 14.
Prompt = [BOS, x_1, ..., x_n] (P = n + 1, n = num_digits, digits uniform);
answer s = (x_1 + ... + x_n) mod 10; completion length T = 5:
  mode 0, direct:  [EQ, s, DOT, DOT, DOT]          "= s ..."
  mode 1, worked:  [r, PLUS, x_n, EQ, s]           "r + x_n = s",  r = (x_1 + ... + x_{n-1}) mod 10
Reward = correctness only: 1 if the completion is the right answer in either format (strict:
the worked line must be right too; otherwise only its shape and s), else 0. Mode labels follow
the shape alone (a mode is a format, right or wrong):
  direct if c_0 = EQ and c_2..c_4 = DOT; worked if c_1 = PLUS and c_3 = EQ; else -1.

Reference: a format from the mixture `format_weights` w (the modality dial: (0.5, 0.5),
(0.9, 0.1), (1, 0)), written well with probability 1 - e and with a punctuation slip with
probability e = `error_mass`; the slip keeps the digits and breaks the format's shape:
  direct slip:  [EQ, s, DOT, DOT, EQ]   "= s ..=" (closed with EQ instead of DOT)
  worked slip:  [r, PLUS, x_n, DOT, s]  "r + x_n . s" (DOT where EQ goes)
Both slips are malformed: label -1 (no mode; outside `mode_patterns()`) and reward 0, strict
or not. So pi_ref = (1 - e) w_0 direct + (1 - e) w_1 worked + e w_0 direct slip + e w_1
worked slip (A = 4 rows per prompt in the answer table, all exactly enumerable).

Why the slips: a reference that only writes well-formed right answers already sits at the
reward ceiling, so every GRPO group has equal rewards, zero advantages, and training measures
optimiser drift, not the regulariser (docs/design.md, 'The math'). With them the reference's
exact expected reward is 1 - e against a ceiling of 1: 0.6 of it at the default e = 0.4, in
every preset of grpo_jax/configs/tasks.py. The dial is intact: the two formats keep the ratio
w_0 : w_1, each mode's share is (1 - e) w_k, and the slips branch off late, so the exact
per-position entropy is [h(w_0), 0, 0, w_1 h(e), w_0 h(e)] (h: binary entropy). e = 0 gives
back the all-well-formed reference (at the ceiling).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.tasks import base

EQ, PLUS, DOT, BOS = 10, 11, 12, 13


@dataclasses.dataclass(frozen=True)
class FormatMixture(base.TableTask):
    """Digit sum mod 10 in two answer formats (see module docstring)."""

    num_digits: int = 3
    format_weights: tuple[float, float] = (0.5, 0.5)
    strict: bool = True
    error_mass: float = 0.4  # probability of a malformed (punctuation-slip) output

    name: ClassVar[str] = "format"
    vocab_size: ClassVar[int] = 14
    completion_len: ClassVar[int] = 5
    num_modes: ClassVar[int] = 2
    bos_id: ClassVar[int] = BOS
    special_ids: ClassVar[tuple[int, ...]] = (BOS,)

    def __post_init__(self):
        if not 2 <= self.num_digits <= 4:
            raise ValueError(f"num_digits must be in [2, 4], got {self.num_digits}")
        w = self.format_weights
        if len(w) != 2 or min(w) < 0 or sum(w) <= 0:
            raise ValueError(f"format_weights {w} must be 2 non-negative numbers, not all 0")
        if not 0.0 <= self.error_mass < 1.0:
            raise ValueError(f"error_mass must be in [0, 1), got {self.error_mass}")

    @property
    def prompt_len(self) -> int:
        return self.num_digits + 1

    # ---------------------------------------------------------------- answers
    def _solutions(self, prompts):
        """(direct [B, T], worked [B, T]) correct completions for prompts [B, P] (jnp)."""
        x = prompts[:, 1:]
        s = jnp.sum(x, axis=-1) % 10
        r = jnp.sum(x[:, :-1], axis=-1) % 10
        const = lambda v: jnp.full_like(s, v)
        direct = jnp.stack([const(EQ), s, const(DOT), const(DOT), const(DOT)], axis=-1)
        worked = jnp.stack([r, const(PLUS), x[:, -1], const(EQ), s], axis=-1)
        return direct.astype(jnp.int32), worked.astype(jnp.int32)

    def _build_table(self):
        n = self.num_digits
        digits = np.asarray(list(itertools.product(range(10), repeat=n)), np.int32)  # [10^n, n]
        prompts = np.concatenate([np.full((digits.shape[0], 1), BOS, np.int32), digits], axis=1)
        s = digits.sum(-1) % 10
        r = digits[:, :-1].sum(-1) % 10
        direct = np.stack([np.full_like(s, EQ), s] + [np.full_like(s, DOT)] * 3, axis=-1)
        worked = np.stack([r, np.full_like(s, PLUS), digits[:, -1], np.full_like(s, EQ), s], -1)
        direct_slip = direct.copy()
        direct_slip[:, 4] = EQ
        worked_slip = worked.copy()
        worked_slip[:, 3] = DOT
        w = np.asarray(self.format_weights, np.float64) / sum(self.format_weights)
        e = self.error_mass
        row = np.concatenate([(1.0 - e) * w, e * w])  # direct, worked, their slips
        n_p = prompts.shape[0]
        return {
            "prompts": prompts,
            "prompt_probs": np.full(n_p, 1.0 / n_p),
            "answers": np.stack([direct, worked, direct_slip, worked_slip], axis=1).astype(
                np.int32
            ),
            "answer_probs": np.tile(row[None, :], (n_p, 1)),
            "answer_modes": np.tile(np.asarray([[0, 1, -1, -1]], np.int32), (n_p, 1)),
        }

    def prompt_index(self, prompts: jax.Array) -> jax.Array:
        """Index of each prompt in `all_prompts()` (digits read as a base-10 number): int32 [B]."""
        place = 10 ** jnp.arange(self.num_digits - 1, -1, -1, dtype=jnp.int32)
        return jnp.sum(prompts[:, 1:] * place[None, :], axis=-1).astype(jnp.int32)

    def mode_patterns(self) -> tuple[tuple[tuple[int, ...], ...], ...]:
        """Each mode as a product set of allowed tokens per position (the labelling is by
        shape): direct = {EQ} x digits/ordinary x {DOT}^3, worked = ordinary x {PLUS} x
        ordinary x {EQ} x ordinary. Lets `metrics.pattern_mass` compute exact mode mass."""
        o = self.ordinary_ids
        return (((EQ,), o, (DOT,), (DOT,), (DOT,)), (o, (PLUS,), o, (EQ,), o))

    # ---------------------------------------------------------------- reward and modes
    def mode_labels(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """0 = direct shape, 1 = worked shape, -1 = neither: int32 [B]."""
        self._check_completions(prompts, completions)
        c = completions
        direct = (c[:, 0] == EQ) & jnp.all(c[:, 2:] == DOT, axis=-1)
        worked = (c[:, 1] == PLUS) & (c[:, 3] == EQ)
        return jnp.where(direct, 0, jnp.where(worked, 1, -1)).astype(jnp.int32)

    def correct(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """bool [B]: the right answer in either format (see `strict`)."""
        self._check_completions(prompts, completions)
        direct, worked = self._solutions(prompts)
        ok_direct = jnp.all(completions == direct, axis=-1)
        if self.strict:
            ok_worked = jnp.all(completions == worked, axis=-1)
        else:
            ok_worked = (
                (completions[:, 1] == PLUS)
                & (completions[:, 3] == EQ)
                & (completions[:, 4] == worked[:, 4])
                & (completions[:, 0] <= 9)
                & (completions[:, 2] <= 9)
            )
        return ok_direct | ok_worked

    def reward(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """1[correct]: float32 [B]."""
        return self.correct(prompts, completions).astype(jnp.float32)
