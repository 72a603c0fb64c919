"""Load a Hugging Face Llama checkpoint (``config.json`` + safetensors) into ``model.py``.

    config, params, hf_config = hf_llama.load(directory)      # float32 nnx.State
    logits = model.forward(config, params, tokens)

A checkpoint directory as ``LlamaForCausalLM.save_pretrained`` writes it: ``config.json`` and
either one ``model.safetensors`` or shards listed by ``model.safetensors.index.json``
(``{"weight_map": {tensor name: file}}``; without an index every ``*.safetensors`` file is
read). Tensors are read with the ``safetensors`` package's NumPy API (float32, float16 or
bfloat16 on disk); the parameters are float32 and ``dtype`` is the compute dtype, as for
every ``model.py`` model.

**config.json** (``LlamaConfig``'s fields) -> ``model.ModelConfig``: ``vocab_size``,
``num_hidden_layers``, ``hidden_size`` (width), ``num_attention_heads``,
``num_key_value_heads`` (grouped-query attention; absent = ``num_attention_heads``),
``intermediate_size``, ``rms_norm_eps``, ``rope_theta`` (absent = 10000),
``tie_word_embeddings`` (absent = False, as in ``LlamaConfig``), ``max_position_embeddings``
(``max_len`` unless the caller gives one). Refused: ``architectures`` without
``LlamaForCausalLM`` or ``model_type`` other than ``llama``, a non-null ``rope_scaling``,
``hidden_act`` other than ``silu``, attention or MLP biases, a ``head_dim`` other than
``hidden_size / num_attention_heads``.

**Tensor names and layout**: the table of ``llama_tensors.py`` (shared with the GGUF loader):
``model.embed_tokens.weight``, ``model.layers.N.self_attn.{q,k,v,o}_proj.weight``,
``model.layers.N.mlp.{gate,up,down}_proj.weight``,
``model.layers.N.{input_layernorm,post_attention_layernorm}.weight``, ``model.norm.weight``,
``lm_head.weight`` (untied only; a tied checkpoint may carry it only as an exact copy of the
embedding). Linear weights are ``[out, in]`` and are transposed to our ``[in, out]``.

**RoPE.** Hugging Face's Llama applies rotary embeddings in the rotate-half form
(``rotate_half``: dimension ``i`` of a head paired with ``i + Dh/2``), which is
``kernels.rope``'s, so the q/k rows are used as stored: no permutation (unlike GGUF, whose
converter permutes them, see ``gguf.py``). tests/test_safetensors.py checks the loaded
model against a NumPy forward with rotate-half RoPE and against transformers' own
``LlamaForCausalLM`` when torch is installed.

Errors are one line naming the directory and the thing: a missing directory, config.json or
shard (``FileNotFoundError``), an unsupported architecture or option, a missing config key,
a missing, unused or mis-shaped tensor (its name and both shapes) (``ValueError``).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import numpy as np

from grpo_jax.models import llama_tensors, model as model_lib

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
ARCHITECTURE = "LlamaForCausalLM"
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
# Buffers some older checkpoints carry; recomputed by the model, never read.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def _safe_open():
    try:
        from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    except ImportError as e:  # pragma: no cover
        raise ImportError(
            "grpo_jax.models.hf_llama needs the `safetensors` package: pip install safetensors"
        ) from e
    return safe_open


def _check_dir(directory: str) -> None:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint directory at {directory!r}")


def read_config(directory: str) -> dict[str, Any]:
    """The directory's ``config.json`` as a dict."""
    _check_dir(directory)
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: no {CONFIG_FILE}")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def model_config_from_hf(
    hf: dict[str, Any],
    *,
    where: str = CONFIG_FILE,
    max_len: int | None = None,
    dtype: str = "float32",
) -> model_lib.ModelConfig:
    """The ``ModelConfig`` a ``LlamaForCausalLM`` config.json describes (module doc);
    ``max_len`` defaults to ``max_position_embeddings``."""
    archs = hf.get("architectures")
    if archs is not None and ARCHITECTURE not in archs:
        raise ValueError(f"{where}: unsupported architectures {archs}; supported: {ARCHITECTURE}")
    if hf.get("model_type", "llama") != "llama":
        raise ValueError(f"{where}: unsupported model_type {hf['model_type']!r}; supported: llama")
    if hf.get("rope_scaling") is not None:
        raise ValueError(
            f"{where}: rope_scaling {hf['rope_scaling']!r} is not supported (only plain RoPE)"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (silu)")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ValueError(f"{where}: {key} = true is not supported (the model has no biases)")

    def get(key):
        if key not in hf:
            raise ValueError(f"{where}: config key {key!r} missing (has {sorted(hf)})")
        return hf[key]

    width, heads = int(get("hidden_size")), int(get("num_attention_heads"))
    head_dim = hf.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != width:
        raise ValueError(
            f"{where}: head_dim {head_dim} x num_attention_heads {heads} != hidden_size "
            f"{width} is not supported"
        )
    kv = int(hf.get("num_key_value_heads") or heads)
    return model_lib.ModelConfig(
        vocab_size=int(get("vocab_size")),
        num_layers=int(get("num_hidden_layers")),
        width=width,
        num_heads=heads,
        mlp_width=int(get("intermediate_size")),
        max_len=int(max_len if max_len is not None else get("max_position_embeddings")),
        dtype=dtype,
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        num_kv_heads=None if kv == heads else kv,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=float(get("rms_norm_eps")),
    )


def safetensors_files(directory: str) -> list[str]:
    """The checkpoint's safetensors files: those the index names, else every
    ``*.safetensors`` in ``directory``."""
    _check_dir(directory)
    index = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as fh:
            weight_map = json.load(fh).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no 'weight_map' of tensor names to files")
        files = [os.path.join(directory, f) for f in sorted(set(weight_map.values()))]
        for path in files:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{index}: shard {os.path.basename(path)!r} is missing")
        return files
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.safetensors file")
    return files


def read_tensors(directory: str) -> dict[str, np.ndarray]:
    """``{name: NumPy array}`` of every tensor of the checkpoint, as stored (float32, float16
    or bfloat16); a name in two files or a non-float tensor is a ``ValueError``."""
    safe_open = _safe_open()
    tensors: dict[str, np.ndarray] = {}
    for path in safetensors_files(directory):
        with safe_open(path, framework="numpy") as fh:
            for name in fh.keys():
                if name in tensors:
                    raise ValueError(f"{directory}: tensor {name!r} is in more than one file")
                tensors[name] = fh.get_tensor(name)
                if tensors[name].dtype.name not in FLOAT_DTYPES:
                    raise ValueError(
                        f"{path}: tensor {name!r} has dtype {tensors[name].dtype.name}; "
                        f"supported: {FLOAT_DTYPES}"
                    )
    return tensors


def params_from_tensors(config: model_lib.ModelConfig, tensors: dict, *, where: str = "HF"):
    """The parameter pytree (float32 ``nnx.State``) of ``config`` from Hugging Face-named
    arrays (``llama_tensors.params_from_tensors``; q/k rows used as stored)."""
    tensors = {k: v for k, v in tensors.items() if not k.endswith(IGNORED_SUFFIXES)}
    head = llama_tensors.head_name("hf")
    embed = tensors.get("model.embed_tokens.weight")
    if config.tie_embeddings and head in tensors and embed is not None:
        if not np.array_equal(tensors[head], embed):
            raise ValueError(
                f"{where}: tie_word_embeddings is true but {head!r} is not a copy of "
                "'model.embed_tokens.weight'"
            )
        tensors = {k: v for k, v in tensors.items() if k != head}
    return llama_tensors.params_from_tensors(config, tensors, "hf", where=where)


def load(directory: str, *, max_len: int | None = None, dtype: str = "float32"):
    """``(config, params, hf_config)`` of a Llama checkpoint directory (module doc)."""
    hf = read_config(directory)
    config = model_config_from_hf(
        hf, where=os.path.join(directory, CONFIG_FILE), max_len=max_len, dtype=dtype
    )
    params = params_from_tensors(config, read_tensors(directory), where=directory)
    return config, params, hf
