"""Low-rank adapters (Hu et al. 2021) for the transformer of model.py: their config, the
adapter module, the effective kernel ``W + (alpha / r) a b``, and adding, finding and merging
adapters in a parameter pytree (model.py wraps the last two with its parameter structure).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# The projections a LoRA adapter may target (attention q, k, v, o; MLP gate, up, down).
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
LORA_SUFFIX = "_lora"  # an adapter of projection `q` is the submodule `q_lora` (a, b)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021): ``W -> W + (alpha / rank) a b`` for each target.

    Attributes:
      rank: r >= 1, the adapters' inner width.
      alpha: > 0; the update is scaled by ``alpha / rank``.
      targets: projections adapted, a subset of ``LORA_TARGETS`` (a comma-separated string
        is accepted); kept in ``LORA_TARGETS`` order so equal sets are equal configs.
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple = ("q", "v")

    def __post_init__(self):
        targets = self.targets
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        targets = tuple(targets)
        bad = [t for t in targets if t not in LORA_TARGETS]
        if bad or not targets:
            raise ValueError(
                f"lora.targets: {self.targets!r} is not a non-empty subset of the "
                f"projections; valid: {', '.join(LORA_TARGETS)}"
            )
        object.__setattr__(self, "targets", tuple(t for t in LORA_TARGETS if t in targets))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank: {self.rank!r}; must be an integer >= 1")
        if isinstance(self.alpha, bool) or not (
            isinstance(self.alpha, (int, float)) and 0 < self.alpha < float("inf")
        ):
            raise ValueError(f"lora.alpha: {self.alpha!r}; must be a finite number > 0")
        object.__setattr__(self, "alpha", float(self.alpha))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRA(nnx.Module):
    """One projection's adapter: ``a [D_in, r]`` ~ N(0, 1/D_in), ``b [r, D_out]`` = 0."""

    def __init__(self, d_in: int, d_out: int, rank: int, rngs: nnx.Rngs):
        self.a = nnx.Param(
            nnx.initializers.normal(stddev=d_in**-0.5)(rngs.params(), (d_in, rank), jnp.float32)
        )
        self.b = nnx.Param(jnp.zeros((rank, d_out), jnp.float32))


def add_loras(owner: nnx.Module, config: Any, shapes: dict, rngs: nnx.Rngs) -> None:
    """Attach an adapter ``<name>_lora`` for each targeted projection in ``shapes``
    (name -> (D_in, D_out)); nothing at all without ``config.lora`` (same graph as before)."""
    if config.lora is None:
        return
    for name, (d_in, d_out) in shapes.items():
        if name in config.lora.targets:
            setattr(owner, name + LORA_SUFFIX, LoRA(d_in, d_out, config.lora.rank, rngs))


def kernel(owner: nnx.Module, name: str, config: Any) -> jax.Array:
    """Projection ``name``'s effective kernel ``[D_in, D_out]``: ``W``, plus
    ``(alpha / r) a b`` when it carries an adapter."""
    w = getattr(owner, name).kernel[...]
    adapter = getattr(owner, name + LORA_SUFFIX, None)
    if adapter is None:
        return w
    return w + config.lora.scale * jnp.dot(adapter.a[...], adapter.b[...])


def path_names(path) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def is_adapter_path(names: tuple[str, ...]) -> bool:
    """Whether a parameter path (`_path_names`) lies inside a LoRA adapter."""
    return any(n.endswith(LORA_SUFFIX) for n in names)


def has_adapters(params) -> bool:
    """Whether a parameter pytree holds LoRA adapters."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return any(is_adapter_path(path_names(path)) for path, _ in flat)


def keyed_leaves(params) -> dict[tuple[str, ...], Any]:
    """Leaves by their dict-key path (`_path_names`), whether or not wrapped in variables."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {path_names(path): leaf for path, leaf in flat}


def add_adapters(config, base_params, key, abstract):
    """The parameters of ``config`` (which has ``lora``) from those of ``base_config(config)``:
    the base leaves as given, every adapter's ``b`` zero and its ``a`` ~ N(0, 1/D_in) from
    ``key`` (one draw per adapter, ``fold_in(key, i)``), or zero with ``key=None`` (a model
    that stays the base model whatever ``b`` is: the reference of a LoRA policy). Either way
    the adapted model's logits are the base model's exactly. ``abstract``: the adapted
    model's parameter structure (`model.abstract_params`). Pure (vmap over keys)."""
    if config.lora is None:
        raise ValueError("add_adapters: the config has no lora adapters (ModelConfig.lora).")
    base = keyed_leaves(base_params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    leaves = []
    for i, (path, x) in enumerate(flat):
        names = path_names(path)
        if not is_adapter_path(names):
            if names not in base or base[names].shape != x.shape:
                raise ValueError(f"add_adapters: base parameters lack {'/'.join(names)} {x.shape}")
            leaves.append(base[names])
        elif names[-1] == "b" or key is None:
            leaves.append(jnp.zeros(x.shape, jnp.float32))
        else:
            std = x.shape[0] ** -0.5
            leaves.append(std * jax.random.normal(jax.random.fold_in(key, i), x.shape))
    return jax.tree.unflatten(treedef, leaves)


def merge_adapters(config, params, abstract):
    """Fold every adapter into its kernel, ``W + (alpha / r) a b`` (the forward's effective
    kernel): parameters of ``base_config(config)`` computing the same logits (up to
    rounding), e.g. to save, sample or serve the trained model without adapters.
    ``abstract``: the base model's parameter structure."""
    by_names = keyed_leaves(params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    leaves = []
    for path, _ in flat:
        *owner, proj, leaf = path_names(path)
        w = by_names[(*owner, proj, leaf)]
        if proj in config.lora.targets and leaf == "kernel":
            a, b = (by_names[(*owner, proj + LORA_SUFFIX, x)] for x in ("a", "b"))
            w = w + config.lora.scale * jnp.dot(a, b)
        leaves.append(w)
    return jax.tree.unflatten(treedef, leaves)
