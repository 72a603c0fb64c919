"""An independent NumPy forward of a Llama-family checkpoint, shared by the loader tests
(test_gguf.py, test_safetensors.py): random weights, the two RoPE conventions, the forward.

Weights are a plain dict in PyTorch's ``nn.Linear.weight = [out, in]`` layout, named by role
(not by any file format, so each test maps its own format's names to it):
``{"embed" [V, D], "final_norm" [D], "head" [V, D] (absent: tied to embed), "layers": [{
"attn_norm", "q" [H Dh, D], "k" [Hkv Dh, D], "v", "o" [D, H Dh], "ffn_norm", "gate" [M, D],
"up", "down" [D, M]}]}``. Written from the papers' definitions, with nothing from
grpo_jax: the model under test is compared with it.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Sizes:
    vocab: int
    width: int
    heads: int
    kv_heads: int
    mlp: int
    layers: int
    eps: float
    theta: float

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def random_weights(s: Sizes, seed: int = 0, untied: bool = False) -> dict:
    """Random float32 weights of ``s`` (std 0.2; norm scales around 1)."""
    rng = np.random.default_rng(seed)
    n = lambda *shape: (0.2 * rng.standard_normal(shape)).astype(np.float32)
    dq, dkv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    w = {"embed": n(s.vocab, s.width), "final_norm": 1 + n(s.width), "layers": []}
    for _ in range(s.layers):
        w["layers"].append(
            dict(
                attn_norm=1 + n(s.width),
                q=n(dq, s.width),
                k=n(dkv, s.width),
                v=n(dkv, s.width),
                o=n(s.width, dq),
                ffn_norm=1 + n(s.width),
                gate=n(s.mlp, s.width),
                up=n(s.mlp, s.width),
                down=n(s.width, s.mlp),
            )
        )
    if untied:
        w["head"] = n(s.vocab, s.width)
    return w


def _angles(pos, dh, theta):
    return pos[:, None, None] * theta ** (-2.0 * np.arange(dh // 2) / dh)


def rope_adjacent(x, pos, theta):
    """llama.cpp LLAMA_ROPE_TYPE_NORM: pairs (2i, 2i+1). x [L, h, Dh]."""
    a = _angles(pos, x.shape[-1], theta)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * np.cos(a) - x1 * np.sin(a)
    out[..., 1::2] = x0 * np.sin(a) + x1 * np.cos(a)
    return out


def rope_half(x, pos, theta):
    """Hugging Face Llama (rotate_half) / NeoX: pairs (i, i + Dh/2). x [L, h, Dh]."""
    a = _angles(pos, x.shape[-1], theta)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * np.cos(a) - x2 * np.sin(a), x2 * np.cos(a) + x1 * np.sin(a)], -1)


def numpy_forward(w, tokens, s: Sizes, rope_fn):
    """Logits [L, V] (float64) of one sequence ``tokens`` under weights ``w`` (module doc):
    RMSNorm, grouped-query causal attention with ``rope_fn`` on q and k, SiLU-gated MLP."""
    f = lambda a: np.asarray(a, np.float64)
    rms = lambda x, g: x / np.sqrt(np.mean(x * x, -1, keepdims=True) + s.eps) * f(g)
    h, hkv, dh = s.heads, s.kv_heads, s.head_dim
    x = f(w["embed"])[np.asarray(tokens)]
    L = len(tokens)
    pos = np.arange(L, dtype=np.float64)
    causal = np.tril(np.ones((L, L), bool))
    for lw in w["layers"]:
        a = rms(x, lw["attn_norm"])
        q = rope_fn((a @ f(lw["q"]).T).reshape(L, h, dh), pos, s.theta)
        k = rope_fn((a @ f(lw["k"]).T).reshape(L, hkv, dh), pos, s.theta)
        v = (a @ f(lw["v"]).T).reshape(L, hkv, dh)
        k, v = np.repeat(k, h // hkv, axis=1), np.repeat(v, h // hkv, axis=1)
        scores = np.einsum("lhd,shd->hls", q, k) / np.sqrt(dh)
        scores = np.where(causal[None], scores, -np.inf)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + np.einsum("hls,shd->lhd", p, v).reshape(L, h * dh) @ f(lw["o"]).T
        a = rms(x, lw["ffn_norm"])
        gate = a @ f(lw["gate"]).T
        x = x + ((gate / (1 + np.exp(-gate))) * (a @ f(lw["up"]).T)) @ f(lw["down"]).T
    return rms(x, w["final_norm"]) @ f(w.get("head", w["embed"])).T
