"""Named Llama tensors -> ``model.py``'s parameters: the one mapping the GGUF loader
(``gguf.py``) and the Hugging Face safetensors loader (``hf_llama.py``) share.

Both formats hold a matrix as a NumPy array ``[out, in]`` (PyTorch's ``nn.Linear.weight``
layout; for GGUF, ``ne = [in, out]`` read back reversed); our kernels are ``[in, out]``, so
every matrix but the embedding is transposed. One row of ``LAYER`` per block tensor and of
``GLOBAL`` per model tensor, with its name in each format:

    our path                  .T   role  GGUF name           HF name
    embed/embedding           no   -     token_embd          model.embed_tokens
    blocks/N/attn_norm/scale  no   -     blk.N.attn_norm     model.layers.N.input_layernorm
    blocks/N/attn/q/kernel    yes  q     blk.N.attn_q        model.layers.N.self_attn.q_proj
    blocks/N/attn/k/kernel    yes  k     blk.N.attn_k        model.layers.N.self_attn.k_proj
    blocks/N/attn/v/kernel    yes  -     blk.N.attn_v        model.layers.N.self_attn.v_proj
    blocks/N/attn/o/kernel    yes  -     blk.N.attn_output   model.layers.N.self_attn.o_proj
    blocks/N/mlp_norm/scale   no   -     blk.N.ffn_norm      model.layers.N.post_attention_layernorm
    blocks/N/mlp/gate/kernel  yes  -     blk.N.ffn_gate      model.layers.N.mlp.gate_proj
    blocks/N/mlp/up/kernel    yes  -     blk.N.ffn_up        model.layers.N.mlp.up_proj
    blocks/N/mlp/down/kernel  yes  -     blk.N.ffn_down      model.layers.N.mlp.down_proj
    final_norm/scale          no   -     output_norm         model.norm
    head/kernel               yes  -     output              lm_head        (untied only)

Every name ends in ``.weight``. The role marks the rows a format may store in another RoPE order (GGUF permutes q and k;
``gguf.unpermute_qk``); a format's loader passes a ``transform(name, role, array)`` for that.
Every check happens here, on the array as stored, before any transform: a missing tensor, a
tensor the model has no place for, and a tensor of the wrong shape are ``ValueError``s naming
the tensor and both shapes.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import numpy as np

from grpo_jax.models import lora, model as model_lib

FORMATS = ("gguf", "hf")

# (our path below blocks/N, transpose, role, GGUF name, HF name); N is {i} in the names.
LAYER = (
    (("attn_norm", "scale"), False, None, "blk.{i}.attn_norm.weight", "input_layernorm.weight"),
    (("attn", "q", "kernel"), True, "q", "blk.{i}.attn_q.weight", "self_attn.q_proj.weight"),
    (("attn", "k", "kernel"), True, "k", "blk.{i}.attn_k.weight", "self_attn.k_proj.weight"),
    (("attn", "v", "kernel"), True, None, "blk.{i}.attn_v.weight", "self_attn.v_proj.weight"),
    (("attn", "o", "kernel"), True, None, "blk.{i}.attn_output.weight", "self_attn.o_proj.weight"),
    (
        ("mlp_norm", "scale"),
        False,
        None,
        "blk.{i}.ffn_norm.weight",
        "post_attention_layernorm.weight",
    ),
    (("mlp", "gate", "kernel"), True, None, "blk.{i}.ffn_gate.weight", "mlp.gate_proj.weight"),
    (("mlp", "up", "kernel"), True, None, "blk.{i}.ffn_up.weight", "mlp.up_proj.weight"),
    (("mlp", "down", "kernel"), True, None, "blk.{i}.ffn_down.weight", "mlp.down_proj.weight"),
)
GLOBAL = (
    (("embed", "embedding"), False, None, "token_embd.weight", "model.embed_tokens.weight"),
    (("final_norm", "scale"), False, None, "output_norm.weight", "model.norm.weight"),
)
HEAD = (("head", "kernel"), True, None, "output.weight", "lm_head.weight")


def head_name(fmt: str) -> str:
    """The untied output head's tensor name in ``fmt``."""
    return HEAD[3 + FORMATS.index(fmt)]


def tensor_map(
    config: model_lib.ModelConfig, fmt: str
) -> dict[str, tuple[tuple[str, ...], bool, str | None]]:
    """``{name in fmt: (our parameter path, transpose, 'q' | 'k' | None)}`` for ``config``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown tensor naming {fmt!r}; valid: {FORMATS}")
    col = 3 + FORMATS.index(fmt)
    rows = GLOBAL + (() if config.tie_embeddings else (HEAD,))
    out = {row[col]: (row[0], row[1], row[2]) for row in rows}
    for n in range(config.num_layers):
        for row in LAYER:
            name = row[col].format(i=n) if fmt == "gguf" else f"model.layers.{n}.{row[col]}"
            out[name] = (("blocks", str(n)) + row[0], row[1], row[2])
    return out


def params_from_tensors(
    config: model_lib.ModelConfig,
    tensors: Mapping[str, np.ndarray],
    fmt: str,
    *,
    where: str,
    transform: Callable[[str, str | None, np.ndarray], np.ndarray] | None = None,
    allow_unused: bool = False,
):
    """The parameter pytree (float32 ``nnx.State``) of ``config`` from arrays named in
    ``fmt`` (any float dtype, ``[out, in]`` matrices). ``transform(name, role, array)`` runs
    on each float32 array after the checks (GGUF's Q/K un-permutation). Missing tensors,
    wrong shapes and (unless ``allow_unused``) tensors the model has no place for are
    ``ValueError``s starting with ``where``."""
    mapping = tensor_map(config, fmt)
    missing = [name for name in mapping if name not in tensors]
    if missing:
        raise ValueError(
            f"{where}: missing tensor(s) {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''} for {config}"
        )
    unused = sorted(set(tensors) - set(mapping))
    if unused and not allow_unused:
        raise ValueError(
            f"{where}: tensor(s) the model has no place for: {unused[:8]} (unsupported variant?)"
        )
    by_path = {path: name for name, (path, _, _) in mapping.items()}
    flat, treedef = jax.tree_util.tree_flatten_with_path(model_lib.abstract_params(config))
    leaves = []
    for path, leaf in flat:
        key = lora.path_names(path)
        name = by_path.get(key)
        if name is None:
            raise ValueError(f"{where}: no tensor maps to parameter {'/'.join(key)}")
        _, transpose, role = mapping[name]
        w = tensors[name]
        want = tuple(reversed(leaf.shape)) if transpose else tuple(leaf.shape)
        if tuple(w.shape) != want:
            raise ValueError(
                f"{where}: tensor {name!r} has shape {tuple(w.shape)}, expected {want} "
                f"(parameter {'/'.join(key)} of {config})"
            )
        w = np.asarray(w, np.float32)
        if transform is not None:
            w = transform(name, role, w)
        leaves.append(jax.numpy.asarray(w.T if transpose else w, jax.numpy.float32))
    return jax.tree.unflatten(treedef, leaves)
