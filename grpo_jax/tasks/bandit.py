"""Bandit: a one-token answer, the discrete version of the Gaussian toy of DESIGN.md §2.

Vocabulary: ordinary tokens 0..num_tokens-1, then BOS = num_tokens (the only special).
Prompt = [BOS] (P = 1); completion = one ordinary token (T = 1).

Reference (the modality dial): a mixture of K = `num_modes` discretised Gaussians,

    pi_ref(y) = sum_k w_k N_k(y),   N_k(y) ∝ exp(-(y - c_k)^2 / (2 sigma^2)), y = 0..V-1,

each component normalised over the tokens, with centres spaced `separation` standard
deviations apart around `center`:  c_k = center + (k - (K - 1) / 2) * separation * sigma.
For two equal modes, reverse KL straddles them up to about 5.6 sigma of separation (the
continuous case) and locks onto one beyond: `separation` is the dial that matters.

Reward: "target" = 1 if y is in `targets` else 0; "distance" = max(0, 1 - d / reward_width)
with d the distance from y to the nearest target. Default target: the centre of the last mode.

Modes: a token is labelled by the nearest centre, or -1 if farther than mode_radius * sigma
from all of them.

Closed-form optima of  J(pi) = E_pi[R] - beta * D(pi)  (one decision, DESIGN.md §2):
  reverse, D = KL[pi || pi_ref]:  pi* ∝ pi_ref * exp(R / beta);
  forward, D = KL[pi_ref || pi]:  pi* = beta * pi_ref / (lam - R), lam > max R normalises.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.tasks import base

REWARD_KINDS = ("target", "distance")
DIRECTIONS = ("reverse", "forward")


@dataclasses.dataclass(frozen=True)
class Bandit(base.TableTask):
    """One-token bandit with a mixture-of-Gaussians reference (see module docstring)."""

    num_tokens: int = 64
    num_modes: int = 1
    sigma: float = 4.0
    separation: float = 6.0
    weights: tuple[float, ...] | None = None  # mixture weights (normalised); None = uniform
    center: float | None = None  # None = (num_tokens - 1) / 2
    mode_radius: float = 3.0  # in units of sigma
    reward_kind: str = "target"
    targets: tuple[int, ...] | None = None  # None = (round(centre of the last mode),)
    reward_width: float = 8.0  # "distance" reward reaches 0 at this distance

    name: ClassVar[str] = "bandit"
    prompt_len: ClassVar[int] = 1
    completion_len: ClassVar[int] = 1

    def __post_init__(self):
        if self.num_modes < 1:
            raise ValueError(f"num_modes must be >= 1, got {self.num_modes}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.reward_kind not in REWARD_KINDS:
            raise ValueError(f"reward_kind {self.reward_kind!r} not in {REWARD_KINDS}")
        if self.weights is not None:
            if len(self.weights) != self.num_modes or min(self.weights) <= 0:
                raise ValueError(
                    f"weights {self.weights} must be {self.num_modes} positive numbers")
        c = self.centres
        if min(c) < -0.5 or max(c) > self.num_tokens - 0.5:
            raise ValueError(f"mode centres {c} fall outside [0, {self.num_tokens - 1}]; "
                             "reduce separation or sigma")
        for t in self.target_tokens:
            if not 0 <= t < self.num_tokens:
                raise ValueError(f"target {t} outside [0, {self.num_tokens})")
        if self.reward_width <= 0:
            raise ValueError(f"reward_width must be > 0, got {self.reward_width}")

    # ---------------------------------------------------------------- interface attributes
    @property
    def vocab_size(self) -> int:
        return self.num_tokens + 1

    @property
    def bos_id(self) -> int:
        return self.num_tokens

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.num_tokens,)

    @property
    def centres(self) -> tuple[float, ...]:
        """Mode centres c_k (token units)."""
        mid = (self.num_tokens - 1) / 2 if self.center is None else float(self.center)
        k = self.num_modes
        return tuple(mid + (i - (k - 1) / 2) * self.separation * self.sigma for i in range(k))

    @property
    def mixture_weights(self) -> tuple[float, ...]:
        w = (1.0,) * self.num_modes if self.weights is None else tuple(self.weights)
        s = sum(w)
        return tuple(x / s for x in w)

    @property
    def target_tokens(self) -> tuple[int, ...]:
        if self.targets is None:
            return (int(np.clip(round(self.centres[-1]), 0, self.num_tokens - 1)),)
        return tuple(int(t) for t in self.targets)

    # ---------------------------------------------------------------- exact table
    def _reference_np(self) -> np.ndarray:
        y = np.arange(self.num_tokens, dtype=np.float64)
        p = np.zeros(self.num_tokens)
        for c, w in zip(self.centres, self.mixture_weights):
            comp = np.exp(-0.5 * ((y - c) / self.sigma) ** 2)
            p += w * comp / comp.sum()
        return p / p.sum()

    def _labels_np(self, y: np.ndarray) -> np.ndarray:
        d = np.abs(y[:, None] - np.asarray(self.centres)[None, :])
        k = d.argmin(-1)
        return np.where(d.min(-1) <= self.mode_radius * self.sigma, k, -1).astype(np.int32)

    def _build_table(self):
        y = np.arange(self.num_tokens)
        return {
            "prompts": np.full((1, 1), self.bos_id, np.int32),
            "prompt_probs": np.ones(1),
            "answers": y.astype(np.int32).reshape(1, self.num_tokens, 1),
            "answer_probs": self._reference_np()[None, :],
            "answer_modes": self._labels_np(y.astype(np.float64))[None, :],
        }

    def prompt_index(self, prompts: jax.Array) -> jax.Array:
        """Index of each prompt in `all_prompts()`: int32 [B] (always 0)."""
        return jnp.zeros(prompts.shape[:1], jnp.int32)

    # ---------------------------------------------------------------- reward and modes
    def reward(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """prompts [B, 1], completions [B, 1] -> float32 [B] (specials score 0)."""
        self._check_completions(prompts, completions)
        y = completions[:, 0]
        targets = jnp.asarray(self.target_tokens, jnp.int32)
        ordinary = y < self.num_tokens
        if self.reward_kind == "target":
            r = jnp.any(y[:, None] == targets[None, :], axis=-1).astype(jnp.float32)
        else:
            d = jnp.min(jnp.abs(y[:, None] - targets[None, :]), axis=-1).astype(jnp.float32)
            r = 1.0 - jnp.minimum(d, self.reward_width) / self.reward_width
        return jnp.where(ordinary, r, 0.0).astype(jnp.float32)

    def mode_labels(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """Nearest mode centre of the answer token, -1 beyond mode_radius sigmas: int32 [B]."""
        self._check_completions(prompts, completions)
        y = completions[:, 0].astype(jnp.float32)
        centres = jnp.asarray(self.centres, jnp.float32)
        d = jnp.abs(y[:, None] - centres[None, :])  # [B, K]
        k = jnp.argmin(d, axis=-1).astype(jnp.int32)
        near = (jnp.min(d, axis=-1) <= self.mode_radius * self.sigma) & (
            completions[:, 0] < self.num_tokens)
        return jnp.where(near, k, -1)

    # ---------------------------------------------------------------- closed forms
    def reference_probs(self) -> jax.Array:
        """pi_ref over the whole vocabulary: float32 [vocab_size] (0 on specials)."""
        return jnp.concatenate([jnp.asarray(self._reference_np(), jnp.float32),
                                jnp.zeros((1,), jnp.float32)])

    def reward_vector(self) -> jax.Array:
        """R(y) for every token: float32 [vocab_size]."""
        y = jnp.arange(self.vocab_size, dtype=jnp.int32)[:, None]
        prompts = jnp.full((self.vocab_size, 1), self.bos_id, jnp.int32)
        return self.reward(prompts, y)

    def optimum(self, beta: float, direction: str) -> jax.Array:
        """argmax_pi E_pi[R] - beta * D over distributions on the vocabulary: float32 [V].

        reverse (D = KL[pi || pi_ref]):  pi* = pi_ref exp(R / beta) / Z.
        forward (D = KL[pi_ref || pi]):  pi* = beta pi_ref / (lam - R), where lam > max_{supp} R
          solves sum_y beta pi_ref(y) / (lam - R(y)) = 1. With M = max R on the support and
          P_M = pi_ref(R = M), the gap g = lam - M lies in [beta P_M, beta]; found by 100 steps
          of bisection in log g. Pure and jittable (beta may be traced).
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r} not in {DIRECTIONS}")
        p = self.reference_probs()
        r = self.reward_vector()
        support = p > 0
        beta = jnp.asarray(beta, jnp.float32)
        if direction == "reverse":
            logits = jnp.where(support, jnp.log(jnp.where(support, p, 1.0)) + r / beta, -jnp.inf)
            return jax.nn.softmax(logits)
        m = jnp.max(jnp.where(support, r, -jnp.inf))
        gap_r = jnp.where(support, m - r, 1.0)  # >= 0 on the support
        p_max = jnp.sum(jnp.where(support & (r >= m), p, 0.0))

        def total(log_g):
            return jnp.sum(jnp.where(support, beta * p / (jnp.exp(log_g) + gap_r), 0.0))

        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            above = total(mid) > 1.0  # total decreases in g: too small a gap
            return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 100, body, (jnp.log(beta * p_max), jnp.log(beta)))
        g = jnp.exp(0.5 * (lo + hi))
        pi = jnp.where(support, beta * p / (g + gap_r), 0.0)
        return pi / jnp.sum(pi)

    def objective(self, probs: jax.Array, beta: float, direction: str) -> jax.Array:
        """J(pi) = sum_y pi(y) R(y) - beta * D(pi): float32 scalar; probs [V] on the vocabulary."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r} not in {DIRECTIONS}")
        p = self.reference_probs()
        r = self.reward_vector()
        if direction == "reverse":
            kl = jnp.sum(jnp.where(probs > 0, probs * (jnp.log(jnp.where(probs > 0, probs, 1.0))
                                                       - jnp.log(jnp.where(p > 0, p, 1e-30))), 0.0))
        else:
            kl = jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0))
                                               - jnp.log(jnp.maximum(probs, 1e-30))), 0.0))
        return jnp.sum(probs * r) - beta * kl
