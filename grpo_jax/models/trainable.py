"""Which of a transformer's parameters train: all, the last K blocks, or LoRA adapters.

A trainable subset is a string (``TRAINABLE``; config key ``train.trainable``,
``RLSetup.trainable``):

* ``"all"``: every parameter (the default; the step is exactly the one without this
  module);
* ``"last:K"``: the last K decoder blocks (1 <= K <= num_layers; their norms, attention
  and MLP); the embedding, the earlier blocks, the final norm and the head are frozen;
* ``"lora"``: only the LoRA adapters of the policy's ``ModelConfig.lora``
  (`grpo_jax/models/model.py`, `LoRAConfig`); every base weight is frozen;
* ``"lora:K"``: only the adapters of the last K blocks (the others keep ``b`` = 0, so
  those blocks stay the base model's).

`frozen_depth` is the number of leading blocks with nothing trainable: everything before
them is a constant of the initial weights (models/answer_tree.py computes it once).

The parameters stay one pytree (what the sampler, the replayed forward, evaluation and
checkpoints read). `split` cuts it into the trainable leaves, a flat dict keyed by
parameter path (``"blocks/1/attn/q_lora/a"``), and the frozen rest; `join` puts them back.
`grpo_jax/rl/train.py` differentiates the loss with respect to the trainable dict only and
keeps the optimiser state of that dict only, so gradients and Adam moments cover just the
trainable leaves (docs/design.md, 'Trainable subsets').
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from grpo_jax.models import lora, model as model_lib

TRAINABLE = ("all", "last:K", "lora", "lora:K")


def parse(spec: Any) -> tuple[str, int]:
    """``(mode, k)``: ("all", 0), ("last", K), ("lora", 0) or ("lora", K). A ValueError names
    the bad spec and the valid ones."""
    if isinstance(spec, str):
        if spec in ("all", "lora"):
            return spec, 0
        head, _, k = spec.partition(":")
        if head in ("last", "lora") and k.isdigit() and int(k) >= 1:
            return head, int(k)
    raise ValueError(
        f"{spec!r} is not a trainable subset; valid: all, last:K, lora, lora:K "
        "(K an integer >= 1)"
    )


def check(spec: Any, model: Any) -> None:
    """`parse`, then check ``spec`` against the policy ``model`` (a `ModelConfig`, or a
    policy of policies.py, which trains all its parameters): K at most num_layers, LoRA
    only on a model with adapters. One-line ValueError naming what is wrong."""
    mode, k = parse(spec)
    if mode == "all":
        return
    if not isinstance(model, model_lib.ModelConfig):
        raise ValueError(f"{spec!r} is for the transformer policy; others train all parameters")
    if k > model.num_layers:
        raise ValueError(f"{spec!r}: K = {k} exceeds the model's {model.num_layers} layers")
    if mode == "lora" and model.lora is None:
        raise ValueError(f"{spec!r} needs a model with adapters (ModelConfig.lora)")


def is_trainable(spec: str, model: Any, names: tuple[str, ...]) -> bool:
    """Whether the parameter at path ``names`` (dict keys, e.g. ``("blocks", "1", "attn",
    "q", "kernel")``) trains under ``spec``."""
    mode, k = parse(spec)
    if mode == "all":
        return True
    in_last = len(names) > 1 and names[0] == "blocks" and int(names[1]) >= model.num_layers - k
    if mode == "lora":
        return lora.is_adapter_path(names) and (k == 0 or in_last)
    return in_last and not lora.is_adapter_path(names)


def frozen_depth(spec: str, model: Any) -> int:
    """How many leading blocks hold nothing trainable (with the embedding frozen too):
    ``L - K`` for "last:K" and "lora:K", 0 otherwise."""
    mode, k = parse(spec)
    return model.num_layers - k if k else 0


class Frozen(NamedTuple):
    """What `join` needs besides the trainable dict (static treedef and key order)."""

    treedef: Any
    keys: tuple
    leaves: dict


def split(spec: str, model: Any, params) -> tuple[Any, Frozen | None]:
    """``(trainable, frozen)``. ``"all"``: ``(params, None)``, the pytree itself; otherwise
    ``trainable`` is a dict ``{path: leaf}`` of the trainable leaves and ``frozen`` the rest.
    Pure (jit/vmap/grad)."""
    if parse(spec)[0] == "all":
        return params, None
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    train, rest, keys = {}, {}, []
    for path, leaf in flat:
        names = lora.path_names(path)
        key = "/".join(names)
        keys.append(key)
        (train if is_trainable(spec, model, names) else rest)[key] = leaf
    return train, Frozen(treedef, tuple(keys), rest)


def join(trainable, frozen: Frozen | None):
    """The inverse of `split`: the whole parameter pytree."""
    if frozen is None:
        return trainable
    leaves = [trainable[k] if k in trainable else frozen.leaves[k] for k in frozen.keys]
    return jax.tree.unflatten(frozen.treedef, leaves)


def count(spec: str, model: Any, params) -> tuple[int, int]:
    """(trainable scalars, all scalars) of ``params`` under ``spec``."""
    train = trainable_part(spec, model, params)
    return model_lib.num_params(train), model_lib.num_params(params)


def trainable_part(spec: str, model: Any, params):
    """The trainable leaves alone (`split`'s first half): what the optimiser state covers."""
    return split(spec, model, params)[0]
