"""Fork: a short sequence task whose reference splits into branches at a chosen depth.

The sequence version of the bandit (docs/design.md, 'The study in sequences'): every
completion can be enumerated, so every quantity of a policy is exact.

Vocabulary: ordinary tokens 0..V-1 (V = `num_tokens`), then BOS = V (the only special).
Prompt = [BOS, x] with x in 0..`num_prompts`-1 (P = 2, uniform over x); completion = T =
`length` ordinary tokens.

Reference (the modality dial): per prompt x, K = `num_branches` deterministic paths
``path[x, k] in V^T`` that agree before the **fork depth** d and differ at every position
from d on, mixed with weights w (`weights`, normalised; None = uniform). Each branch writes
its path with a **slip** at every position, independently: with probability e = `slip` the
token is a uniformly chosen *other* token. So

    ref(y | x) = sum_k w_k prod_t [ (1 - e) if y_t = path[x, k, t] else e / (V - 1) ],

every one of the V^T completions has positive mass, and the autoregressive conditionals
ref(y_t | x, y_<t) follow by marginalising (`tasks.sequence_optima.conditionals`).

Reward (`reward_kind`): "exact", 1 for the target branch's path written without a slip
(`target_branch`, default the last), `partial_reward` for another branch's path written
without a slip, else 0; "near", 1 for the target path, `partial_reward` for a completion one
token away from it, else 0; "hamming", the fraction of positions where the completion
writes the target path's token. The reference's mass on zero-reward completions is, for
"exact" with `partial_reward` = 0,

    Z0 = 1 - [ w_tgt (1 - e)^T + (1 - w_tgt) (1 - e)^d (e / (V - 1))^(T - d) ]

(`zero_reward_mass` computes it by enumeration for any reward): the slip rate sets Z0, and `slip_for_z0` inverts it so that
references of different K and d can be compared at the same abandoned mass.

Paths: the trunk token at position t of prompt x is (x + 3 t + 1) mod V; from position d
on, branch k writes (x + 3 t + 1 + k * (V // K)) mod V, so branches differ at every
position >= d (K <= V). Modes are the branches: a completion is labelled k if it is branch
k's path written without a slip, else -1.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.core.checks import check_name
from grpo_jax.tasks import base

REWARD_KINDS = ("exact", "near", "hamming")


@dataclasses.dataclass(frozen=True)
class Fork(base.TokensThenBOS, base.TableTask):
    """Sequence task with a reference that forks into branches at depth d (module docstring)."""

    num_prompts: int = 2
    num_tokens: int = 8
    length: int = 3
    num_branches: int = 2
    fork_depth: int = 1
    slip: float = 0.05
    weights: tuple[float, ...] | None = None  # branch weights (normalised); None = uniform
    target_branch: int = -1  # -1: the last branch
    partial_reward: float = 0.0  # "exact": another branch's path; "near": one token off
    reward_kind: str = "exact"

    name: ClassVar[str] = "fork"
    prompt_len: ClassVar[int] = 2

    def __post_init__(self):
        v, k, t = self.num_tokens, self.num_branches, self.length
        if v < 2:
            raise ValueError(f"num_tokens must be >= 2, got {v}")
        if t < 1:
            raise ValueError(f"length must be >= 1, got {t}")
        if not 1 <= k <= v:
            raise ValueError(f"num_branches must be in [1, num_tokens={v}], got {k}")
        if not 1 <= self.num_prompts <= v:
            raise ValueError(f"num_prompts must be in [1, num_tokens={v}], got {self.num_prompts}")
        if not 0 <= self.fork_depth < t:
            raise ValueError(f"fork_depth must be in [0, length={t}), got {self.fork_depth}")
        if not 0.0 < self.slip < 1.0:
            raise ValueError(f"slip must be in (0, 1), got {self.slip}")
        if self.weights is not None and (len(self.weights) != k or min(self.weights) <= 0):
            raise ValueError(f"weights {self.weights} must be {k} positive numbers")
        if not -k <= self.target_branch < k:
            raise ValueError(f"target_branch must be in [-{k}, {k}), got {self.target_branch}")
        check_name("reward_kind", self.reward_kind, REWARD_KINDS)
        if not 0.0 <= self.partial_reward <= 1.0:
            raise ValueError(f"partial_reward must be in [0, 1], got {self.partial_reward}")

    # ---------------------------------------------------------------- interface attributes
    @property
    def completion_len(self) -> int:
        return self.length

    @property
    def num_modes(self) -> int:
        return self.num_branches

    @property
    def branch_weights(self) -> np.ndarray:
        """The normalised branch weights w_k: float64 [K]."""
        w = np.ones(self.num_branches) if self.weights is None else np.asarray(self.weights)
        return np.asarray(w, np.float64) / np.sum(w)

    @property
    def target(self) -> int:
        return self.target_branch % self.num_branches

    def paths(self) -> np.ndarray:
        """The branches' deterministic paths: int32 [num_prompts, K, T]."""
        x = np.arange(self.num_prompts)[:, None, None]
        k = np.arange(self.num_branches)[None, :, None]
        t = np.arange(self.length)[None, None, :]
        shift = np.where(t >= self.fork_depth, k * (self.num_tokens // self.num_branches), 0)
        return ((x + 3 * t + 1 + shift) % self.num_tokens).astype(np.int32)

    # ---------------------------------------------------------------- exact table
    def completions_np(self) -> np.ndarray:
        """Every completion, int32 [V^T, T], lexicographic (the order of every table here)."""
        rows = itertools.product(range(self.num_tokens), repeat=self.length)
        return np.asarray(list(rows), np.int32).reshape(-1, self.length)

    def _branch_likelihoods(self) -> np.ndarray:
        """[num_prompts, K, V^T]: prod_t P(y_t | branch k) for every completion y."""
        y = self.completions_np()[None, None]  # [1, 1, C, T]
        on = y == self.paths()[:, :, None, :]  # [Np, K, C, T]
        e = self.slip
        per_token = np.where(on, 1.0 - e, e / (self.num_tokens - 1))
        return per_token.prod(axis=-1)

    def reference_np(self) -> np.ndarray:
        """ref(y | x) for every prompt and completion: float64 [num_prompts, V^T]."""
        return np.einsum("k,xkc->xc", self.branch_weights, self._branch_likelihoods())

    def _labels_np(self) -> np.ndarray:
        """[num_prompts, V^T]: the branch whose path the completion is, else -1."""
        y = self.completions_np()[None, None]
        exact = np.all(y == self.paths()[:, :, None, :], axis=-1)  # [Np, K, C]
        return np.where(exact.any(axis=1), exact.argmax(axis=1), -1).astype(np.int32)

    def rewards_np(self) -> np.ndarray:
        """R(x, y) for every prompt and completion: float64 [num_prompts, V^T]."""
        if self.reward_kind == "exact":
            labels = self._labels_np()
            partial = np.where(labels >= 0, self.partial_reward, 0.0)
            return np.where(labels == self.target, 1.0, partial)
        target = self.paths()[:, self.target][:, None, :]  # [Np, 1, T]
        hits = (self.completions_np()[None] == target).sum(-1)  # [Np, C]
        if self.reward_kind == "hamming":
            return hits / self.length
        near = np.where(hits == self.length - 1, self.partial_reward, 0.0)
        return np.where(hits == self.length, 1.0, near)

    def _build_table(self):
        c = self.completions_np()
        n = self.num_prompts
        return {
            "prompts": np.stack([np.full(n, self.bos_id), np.arange(n)], axis=1).astype(np.int32),
            "prompt_probs": np.full(n, 1.0 / n),
            "answers": np.broadcast_to(c, (n,) + c.shape).copy(),
            "answer_probs": self.reference_np(),
            "answer_modes": self._labels_np(),
        }

    def prompt_index(self, prompts: jax.Array) -> jax.Array:
        """Index of each prompt in `all_prompts()`: int32 [B] (its second token)."""
        self._check_prompts(prompts)
        return jnp.asarray(prompts[:, 1], jnp.int32)

    # ---------------------------------------------------------------- reward and modes
    def _completion_index(self, completions: jax.Array) -> jax.Array:
        """Lexicographic index of each completion among `completions_np()` (specials -> -1)."""
        v = self.num_tokens
        powers = v ** jnp.arange(self.length - 1, -1, -1)
        idx = jnp.sum(jnp.minimum(completions, v - 1) * powers[None, :], axis=-1)
        return jnp.where(jnp.all(completions < v, axis=-1), idx, -1)

    def _lookup(self, table: np.ndarray, prompts, completions, fill):
        self._check_completions(prompts, completions)
        idx = self._completion_index(completions)
        values = jnp.asarray(table)[self.prompt_index(prompts), jnp.maximum(idx, 0)]
        return jnp.where(idx >= 0, values, fill)

    def reward(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """prompts [B, 2], completions [B, T] -> float32 [B] (specials score 0)."""
        r = self._lookup(self.rewards_np().astype(np.float32), prompts, completions, 0.0)
        return r.astype(jnp.float32)

    def mode_labels(self, prompts: jax.Array, completions: jax.Array) -> jax.Array:
        """The branch whose path the completion writes without a slip, else -1: int32 [B]."""
        return self._lookup(self._labels_np(), prompts, completions, -1).astype(jnp.int32)

    # ---------------------------------------------------------------- the Z0 dial
    def zero_reward_mass(self) -> float:
        """Z0: the reference's mass on zero-reward completions (exact, averaged over prompts)."""
        t = self.table()
        zero = self.rewards_np() == 0
        return float(np.sum(t["prompt_probs"][:, None] * t["answer_probs"] * zero))


def zero_reward_mass_closed_form(
    num_tokens: int, length: int, fork_depth: int, slip: float, target_weight: float
) -> float:
    """Z0 of a Fork reference with the "exact" reward and `partial_reward` = 0 (module
    docstring), in closed form."""
    e, v, t, d = slip, num_tokens, length, fork_depth
    other = (1.0 - e) ** d * (e / (v - 1)) ** (t - d)  # another branch writes the target path
    return 1.0 - (target_weight * (1.0 - e) ** t + (1.0 - target_weight) * other)


def slip_for_z0(z0: float, num_tokens: int, length: int, fork_depth: int, target_weight: float):
    """The slip rate e in (0, 1/2] giving zero-reward mass `z0` (bisection, which assumes Z0
    increases with e there, as it does for the study's settings; the result is checked).
    Raises ValueError if `z0` is out of reach or the bisection missed it."""
    args = (num_tokens, length, fork_depth)
    lo, hi = 1e-9, 0.5
    z_lo = zero_reward_mass_closed_form(*args, lo, target_weight)
    z_hi = zero_reward_mass_closed_form(*args, hi, target_weight)
    if not z_lo <= z0 <= z_hi:
        raise ValueError(f"Z0 {z0} is out of reach: [{z_lo:.4g}, {z_hi:.4g}] for these settings")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if zero_reward_mass_closed_form(*args, mid, target_weight) < z0:
            lo = mid
        else:
            hi = mid
    e = 0.5 * (lo + hi)
    if abs(zero_reward_mass_closed_form(*args, e, target_weight) - z0) > 1e-9:
        raise ValueError(f"Z0 is not monotone in the slip rate here; no slip found for {z0}")
    return e
