"""Multi-answer arithmetic: given N, answer two digits a, b with a + b = N.

Vocabulary: digits 0..9 are tokens 0..9; BOS = 10 (the only special). vocab_size = 11.
Prompt = [BOS, N // 10, N % 10] (P = 3), N uniform in [n_min, n_max];
completion = [a, b] (T = 2). Valid first digits: a in [lo, hi], lo = max(0, N - 9),
hi = min(9, N); there are m(N) = hi - lo + 1 valid answers.

Reference = a first digit from the modality dial, then a second digit that is right with
probability 1 - e and off by one with probability e = `error_mass`:

    pi_ref(a, b | N) = pi_a(a | N) * ((1 - e) [b = N - a] + e [b = slip(N - a)]),
    slip(b) = b + 1 (b - 1 when b = 9),   so a + slip = N +- 1 is wrong.

The dial (position 0, unchanged by e): K = `num_modes` anchor answers per prompt, spread evenly
over the valid range,  a_k = lo + round(k (hi - lo) / (K - 1))  (K = 1: the balanced pair
a = (lo + hi) // 2), with weights w_k; plus a `background` mass spread uniformly over all
valid pairs:
    pi_a(a | N) = (1 - background) * sum_k w_k [a = a_k] + background / m(N).
  * unimodal: num_modes=1, background=0 (one canonical pair);
  * one pair dominates: num_modes=4, weights=(0.85, 0.05, 0.05, 0.05);
  * spread over all valid pairs: background=1 (uniform over the m(N) answers).
Every N in range must have m(N) >= K.

Why the slips: a reference that only ever answers correctly already sits at the reward
ceiling, so every GRPO group has equal rewards, zero advantages, and training measures
optimiser drift, not the regulariser (docs/design.md, 'The math'). With the slips the
reference's exact expected reward is (1 - e) * E[1 + bonus [mode = preferred]] against a
ceiling of 1 (1 + bonus with a preference): 1 - e = 0.6 of the ceiling at the default e = 0.4,
in every preset of grpo_jax/configs/tasks.py. The slips leave the dial intact: the first-digit
distribution, hence the mode structure, is the one above; the per-position entropy is
[H(pi_a), h(e)] with h the binary entropy; each mode's share is (1 - e) times its share
without slips. e = 0 gives back the all-correct reference (at the ceiling).

The answer table lists, per N, the pair (a, N - a) and its slip (a, slip(N - a)) for every
first digit a (A = 20 rows; invalid a and the slips of answers without mass have probability
0), so everything stays exactly enumerable.

Modes: a correct answer is labelled by its nearest anchor (by a; ties go to the lower k);
incorrect answers (the slips among them) get -1 and count as no mode. Multimodality sits at
position 0 (b is then right or a slip).

Reward: 1 for a correct answer, times (1 + preference_bonus) if its mode is
`preferred_mode` (>= 0) — a preference among valid answers; 0 otherwise (slips score 0).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.tasks import base

BOS = 10


def _anchors(n, num_modes: int, xp):
    """Anchor first digits for sums n ([...] ints) -> [..., K]; identical in numpy and jnp."""
    lo = xp.maximum(0, n - 9)
    hi = xp.minimum(9, n)
    if num_modes == 1:
        return ((lo + hi) // 2)[..., None]
    k = xp.arange(num_modes).reshape((1,) * xp.ndim(n) + (num_modes,))
    span = (hi - lo)[..., None]
    return lo[..., None] + (2 * k * span + (num_modes - 1)) // (2 * (num_modes - 1))


@dataclasses.dataclass(frozen=True)
class Arithmetic(base.MixtureWeights, base.TableTask):
    """a + b = N with a modality dial over valid answers (see module docstring)."""

    n_min: int = 4
    n_max: int = 14
    num_modes: int = 4
    weights: tuple[float, ...] | None = None  # anchor weights (normalised); None = uniform
    background: float = 0.0  # mass spread uniformly over all valid pairs
    preferred_mode: int = -1  # -1: no preference
    preference_bonus: float = 0.0
    error_mass: float = 0.4  # probability of an off-by-one second digit (a wrong answer)

    name: ClassVar[str] = "arithmetic"
    vocab_size: ClassVar[int] = 11
    prompt_len: ClassVar[int] = 3
    completion_len: ClassVar[int] = 2
    bos_id: ClassVar[int] = BOS
    special_ids: ClassVar[tuple[int, ...]] = (BOS,)

    def __post_init__(self):
        if not 0 <= self.n_min <= self.n_max <= 18:
            raise ValueError(f"need 0 <= n_min <= n_max <= 18, got {self.n_min}, {self.n_max}")
        if self.num_modes < 1:
            raise ValueError(f"num_modes must be >= 1, got {self.num_modes}")
        m_min = min(min(9, n) - max(0, n - 9) + 1 for n in range(self.n_min, self.n_max + 1))
        if m_min < self.num_modes:
            raise ValueError(
                f"some N in [{self.n_min}, {self.n_max}] has only {m_min} valid "
                f"answers "
                f"< num_modes={self.num_modes}; narrow the range"
            )
        self._check_weights()
        if not 0.0 <= self.background <= 1.0:
            raise ValueError(f"background must be in [0, 1], got {self.background}")
        if not 0.0 <= self.error_mass < 1.0:
            raise ValueError(f"error_mass must be in [0, 1), got {self.error_mass}")
        if not -1 <= self.preferred_mode < self.num_modes:
            raise ValueError(f"preferred_mode must be -1 or in [0, {self.num_modes})")

    # ---------------------------------------------------------------- exact table
    def _build_table(self):
        ns = np.arange(self.n_min, self.n_max + 1)
        n_p = ns.shape[0]
        prompts = np.stack([np.full(n_p, BOS), ns // 10, ns % 10], axis=1).astype(np.int32)
        a = np.arange(10)
        # Rows 0..9: (a, N - a) for every first digit a; rows 10..19: its off-by-one slip.
        answers = np.zeros((n_p, 20, 2), np.int32)
        probs = np.zeros((n_p, 20))
        modes = np.full((n_p, 20), -1, np.int32)
        anchors = _anchors(ns, self.num_modes, np)  # [Np, K]
        for i, n in enumerate(ns):
            lo, hi = max(0, n - 9), min(9, n)
            valid = (a >= lo) & (a <= hi)
            b = np.clip(n - a, 0, 9)
            first = self.background * valid / valid.sum()  # pi_a(a | N)
            for k, w in enumerate(self.mixture_weights):
                first[anchors[i, k]] += (1.0 - self.background) * w
            answers[i, :10, 0] = a
            answers[i, :10, 1] = b
            answers[i, 10:, 0] = a
            answers[i, 10:, 1] = np.where(b < 9, b + 1, b - 1)
            probs[i, :10] = (1.0 - self.error_mass) * first
            probs[i, 10:] = self.error_mass * first
            d = np.abs(a[:, None] - anchors[i][None, :])
            modes[i, :10] = np.where(valid, d.argmin(-1), -1)
        return {
            "prompts": prompts,
            "prompt_probs": np.full(n_p, 1.0 / n_p),
            "answers": answers,
            "answer_probs": probs,
            "answer_modes": modes,
        }

    def prompt_index(self, prompts: jax.Array) -> jax.Array:
        """Index of each prompt in `all_prompts()`: N - n_min, int32 [B]."""
        return (self.prompt_value(prompts) - self.n_min).astype(jnp.int32)

    @staticmethod
    def prompt_value(prompts: jax.Array) -> jax.Array:
        """N encoded by each prompt: int32 [B]."""
        return (10 * prompts[:, 1] + prompts[:, 2]).astype(jnp.int32)

    # ---------------------------------------------------------------- reward and modes
    def correct(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """bool [B]: both tokens are digits and a + b = N."""
        self._check_completions(prompts, completions)
        a, b = completions[:, 0], completions[:, 1]
        return (a <= 9) & (b <= 9) & (a + b == self.prompt_value(prompts))

    def mode_labels(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """Nearest anchor of a correct answer, -1 if incorrect: int32 [B]."""
        ok = self.correct(prompts, completions)
        anchors = _anchors(self.prompt_value(prompts), self.num_modes, jnp)  # [B, K]
        d = jnp.abs(completions[:, 0][:, None] - anchors)
        return jnp.where(ok, jnp.argmin(d, axis=-1).astype(jnp.int32), -1)

    def reward(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """1[correct] * (1 + preference_bonus * [mode == preferred_mode]): float32 [B]."""
        ok = self.correct(prompts, completions).astype(jnp.float32)
        if self.preferred_mode < 0 or self.preference_bonus == 0.0:
            return ok
        pref = (self.mode_labels(prompts, completions) == self.preferred_mode).astype(jnp.float32)
        return ok * (1.0 + self.preference_bonus * pref)
