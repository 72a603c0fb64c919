"""Bandit: a one-token answer, the discrete version of the Gaussian toy (docs/design.md,
'The math').

Vocabulary: ordinary tokens 0..num_tokens-1, then BOS = num_tokens (the only special).
Prompt = [BOS] (P = 1); completion = one ordinary token (T = 1).

Reference (the modality dial): a mixture of K = `num_modes` discretised Gaussians,

    pi_ref(y) = sum_k w_k N_k(y),   N_k(y) ∝ exp(-(y - c_k)^2 / (2 sigma^2)), y = 0..V-1,

each component normalised over the tokens, with centres spaced `separation` standard
deviations apart around `center`:  c_k = center + (k - (K - 1) / 2) * separation * sigma.
With `background` = b > 0 the reference is (1 - b) * that mixture + b * uniform: one mode
over a heavy floor (the study's matched-tail control, a unimodal reference that abandons as
much zero-reward mass as a two-mode one).
For two equal modes, reverse KL straddles them up to about 5.6 sigma of separation (the
continuous case) and locks onto one beyond: `separation` is the dial that matters.

Reward: "target" = 1 if y is in `targets` else 0; "distance" = max(0, 1 - d / reward_width)
with d the distance from y to the nearest target. Default target: the centre of the last mode.

Modes: a token is labelled by the nearest centre, or -1 if farther than mode_radius * sigma
from all of them.

Closed-form optima of  J(pi) = E_pi[R] - beta * D(pi)  (one decision; docs/design.md,
'The math'), computed once, by `bandit_optimum` (NumPy, float64, vectorised over beta):
  reverse, D = KL[pi || pi_ref]:  pi* ∝ pi_ref * exp(R / beta);
  forward, D = KL[pi_ref || pi]:  pi* = beta * pi_ref / (lam - R), lam > max R normalises.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.core import kl
from grpo_jax.core.checks import check_name
from grpo_jax.tasks import base

REWARD_KINDS = ("target", "distance")


def bandit_optimum(rewards, ref_probs, betas, direction: str, iters: int = 200) -> np.ndarray:
    """Closed-form maximiser of ``E_pi[R] - beta * D(pi, ref)`` over distributions, vectorised.

    Args:
      rewards: ``[A]`` reward of each arm.
      ref_probs: ``[A]`` reference distribution (sums to 1); arms of probability 0 stay at 0.
      betas: ``[N]`` positive KL coefficients.
      direction: ``"reverse"`` (``D = KL[pi || ref]``): ``pi ∝ ref * exp(R / beta)``;
        ``"forward"`` (``D = KL[ref || pi]``): ``pi = beta * ref / (lam - R)``, with
        ``lam > max R`` (max over the support) fixed by ``sum(pi) = 1``, found by ``iters``
        steps of bisection (the sum decreases in ``lam``).

    Returns:
      ``[N, A]`` float64 optimal policies.
    """
    r = np.asarray(rewards, np.float64)[None, :]
    p = np.asarray(ref_probs, np.float64)[None, :]
    b = np.asarray(betas, np.float64)[:, None]
    return regularised_optimum(r, p, b, direction, iters)


def regularised_optimum(values, ref_probs, beta, direction: str, iters: int = 200) -> np.ndarray:
    """`bandit_optimum` row by row: ``values [..., A]``, ``ref_probs [..., A]`` (each row a
    distribution) and ``beta`` broadcast against them (``[..., 1]`` or a scalar) -> the
    maximiser of ``sum_a pi_a values_a - beta D(pi, ref)`` per row, float64 ``[..., A]``."""
    kl.validate_direction(direction)
    r, p = np.broadcast_arrays(np.asarray(values, np.float64), np.asarray(ref_probs, np.float64))
    b = np.asarray(beta, np.float64)
    support = p > 0
    if direction == "reverse":
        with np.errstate(divide="ignore"):  # log 0 = -inf off the support
            z = np.log(p) + r / b
        z = z - z.max(axis=-1, keepdims=True)
        pi = np.exp(z)
        return pi / pi.sum(axis=-1, keepdims=True)
    # f(lam) = sum_a b p_a / (lam - R_a) decreases on (max R, inf); f -> inf as lam -> max R,
    # and f(max R + b) <= sum_a p_a = 1 since every lam - R_a >= b. So bisect on that bracket.
    r_max = np.max(np.where(support, r, -np.inf), axis=-1, keepdims=True)
    lo = r_max + 0.0 * b
    hi = r_max + b
    with np.errstate(divide="ignore", invalid="ignore"):  # arms off the support give 0
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            s = np.where(support, b * p / (mid - r), 0.0).sum(axis=-1, keepdims=True)
            lo = np.where(s > 1, mid, lo)
            hi = np.where(s > 1, hi, mid)
        pi = np.where(support, b * p / (0.5 * (lo + hi) - r), 0.0)
    return pi / pi.sum(axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Bandit(base.TokensThenBOS, base.MixtureWeights, base.TableTask):
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
    background: float = 0.0  # weight of a uniform floor under the mixture (heavy tails)

    name: ClassVar[str] = "bandit"
    prompt_len: ClassVar[int] = 1
    completion_len: ClassVar[int] = 1

    def __post_init__(self):
        if self.num_modes < 1:
            raise ValueError(f"num_modes must be >= 1, got {self.num_modes}")
        if not self.sigma > 0:  # NaN too
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        check_name("reward_kind", self.reward_kind, REWARD_KINDS)
        self._check_weights()
        c = self.centres
        if min(c) < -0.5 or max(c) > self.num_tokens - 0.5:
            raise ValueError(
                f"mode centres {c} fall outside [0, {self.num_tokens - 1}]; "
                "reduce separation or sigma"
            )
        for t in self.target_tokens:
            if not 0 <= t < self.num_tokens:
                raise ValueError(f"target {t} outside [0, {self.num_tokens})")
        if not 0.0 <= self.background < 1.0:
            raise ValueError(f"background must be in [0, 1), got {self.background}")
        if self.reward_width <= 0:
            raise ValueError(f"reward_width must be > 0, got {self.reward_width}")

    # ---------------------------------------------------------------- interface attributes
    @property
    def centres(self) -> tuple[float, ...]:
        """Mode centres c_k (token units)."""
        mid = (self.num_tokens - 1) / 2 if self.center is None else float(self.center)
        k = self.num_modes
        return tuple(mid + (i - (k - 1) / 2) * self.separation * self.sigma for i in range(k))

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
        p = (1.0 - self.background) * p / p.sum() + self.background / self.num_tokens
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
            completions[:, 0] < self.num_tokens
        )
        return jnp.where(near, k, -1)

    # ---------------------------------------------------------------- closed forms
    def reference_probs(self) -> jax.Array:
        """pi_ref over the whole vocabulary: float32 [vocab_size] (0 on specials)."""
        return jnp.concatenate(
            [jnp.asarray(self._reference_np(), jnp.float32), jnp.zeros((1,), jnp.float32)]
        )

    def reward_vector(self) -> jax.Array:
        """R(y) for every token: float32 [vocab_size]."""
        y = jnp.arange(self.vocab_size, dtype=jnp.int32)[:, None]
        prompts = jnp.full((self.vocab_size, 1), self.bos_id, jnp.int32)
        return self.reward(prompts, y)

    def optimum(self, beta, direction: str) -> jax.Array:
        """argmax_pi E_pi[R] - beta * D over distributions on the vocabulary: float32 [V].

        ``bandit_optimum`` (NumPy, float64) on ``reward_vector()`` and the reference (0 on the
        special token), called through ``jax.pure_callback``: jittable and vmappable in
        ``beta`` (a scalar, or ``[...]`` -> ``[..., V]``); not differentiable.
        """
        kl.validate_direction(direction)
        with jax.ensure_compile_time_eval():
            rewards = np.asarray(self.reward_vector(), np.float64)
        ref = np.concatenate([self._reference_np(), np.zeros(1)])

        def host(b):
            b = np.asarray(b, np.float64)
            pi = bandit_optimum(rewards, ref, b.reshape(-1), direction)
            return pi.reshape(b.shape + (self.vocab_size,)).astype(np.float32)

        beta = jnp.asarray(beta, jnp.float32)
        out = jax.ShapeDtypeStruct(beta.shape + (self.vocab_size,), jnp.float32)
        return jax.pure_callback(host, out, beta, vmap_method="expand_dims")

    def objective(self, probs: jax.Array, beta: float, direction: str) -> jax.Array:
        """J(pi) = sum_y pi(y) R(y) - beta * D(pi): float32 scalar; probs [V] on the vocabulary."""
        kl.validate_direction(direction)
        p = self.reference_probs()
        r = self.reward_vector()
        if direction == "reverse":
            d = jnp.sum(
                jnp.where(
                    probs > 0,
                    probs
                    * (
                        jnp.log(jnp.where(probs > 0, probs, 1.0))
                        - jnp.log(jnp.where(p > 0, p, 1e-30))
                    ),
                    0.0,
                )
            )
        else:
            d = jnp.sum(
                jnp.where(
                    p > 0,
                    p * (jnp.log(jnp.where(p > 0, p, 1.0)) - jnp.log(jnp.maximum(probs, 1e-30))),
                    0.0,
                )
            )
        return jnp.sum(probs * r) - beta * d
