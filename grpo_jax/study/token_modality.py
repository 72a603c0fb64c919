"""The premise, measured: are a real LM's next-token distributions unimodal?

SmolLM2-135M-Instruct (the GGUF from `gguf.fetch_smollm2`; float32) answers chat prompts of
three kinds:

* ``arithmetic``: "What is a + b?" / "a - b" with one correct answer in 0..99;
* ``multi``: questions with many valid answers in 0..99 (a prime / even number / multiple
  of k in a range, a random number up to n);
* ``chat``: open-ended requests (a fact, a poem line, a tip, a description).

**Per position.** ``K`` completions per prompt are sampled at temperature 1 (the model's own
distribution; the one sampler, `sampling.sample`, with the prompts right-padded and their
lengths passed); at every generated position (up to and including the end-of-turn token)
the full-vocabulary distribution gives (`stats.next_token_stats`, inside the jit) the
entropy H (nats), the effective support exp(H), the top-1 mass p1, whether p2/p1 > 0.5 (the
top two tokens both carry real mass), and the number of tokens with p >= 0.1 p1.

**Per answer.** ``arithmetic`` and ``multi`` prompts end with the start of the assistant's
reply, written up to the number ("57 + 12 = ", "A prime number between 10 and 50 is "), so
the answer is the next token(s). The answers are enumerated exactly (`number_logprobs`): for
every N in 0..99, the probability p(N) that the reply continues with N and then a non-digit
token (SmolLM2 writes each digit as its own token, so this is a 2-level tree: 1 + 10 + 100
forward rows per prompt). These events are disjoint; their total (the numeric mass,
reported) is the probability of a 1- or 2-digit number right away. Reported per prompt:
how many numbers carry at least 0.1 x the top number's probability (`answers_above`; no
notion of adjacent integers: the model does not see 41 and 42 as neighbours), how many
distinct answers carry 90% of the numeric mass (`answers_for_mass`), the valid share within
the numbers, and Z0 (`zero_reward_mass`): the reference's mass on zero-reward replies, 1 -
sum of p over the valid numbers, where every other reply (another number, a 3-digit
number, words) earns zero. The per-position statistics are also summarised over the
top-entropy decile of each kind's positions (`top_entropy_stats`), the positions where RL
moves mass. For every kind, the Monte Carlo sequence entropy ``H_seq =
E[-log p(completion)]`` of the sampled completions (exact log-probabilities, an unbiased
estimate) gives an effective number of distinct answers exp(H_seq); completions cut at the
token limit count as their prefix.

The report and figures: `grpo_jax.study.report.token_modality`.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.core import stats
from grpo_jax.models import gguf, sampling
from grpo_jax.tasks import answer_tree
from grpo_jax.models import model as model_lib

KINDS = ("arithmetic", "multi", "chat")
SUFFIX = answer_tree.SUFFIX

TOPICS = (
    "the ocean",
    "autumn",
    "the moon",
    "coffee",
    "mountains",
    "cats",
    "rain",
    "music",
    "friendship",
    "the city at night",
    "trees",
    "winter",
    "the desert",
    "books",
    "stars",
    "bread",
    "rivers",
    "birds",
    "the wind",
    "gardens",
)
CHAT_TEMPLATES = (
    "Tell me an interesting fact about {}.",
    "Write one line of a poem about {}.",
    "Describe {} in one sentence.",
    "Give me a tip related to {}.",
    "Write a short story opening about {}.",
)


def _multi_spec(form: int, rng) -> tuple[str, int, int]:
    """A random many-answer prompt ``(family, a, b)`` of tasks/answer_tree.py's families:
    a prime (at least 3 valid), an even number, a multiple of k, a number from 1 to hi."""
    if form == 0:
        while True:
            lo = int(rng.integers(2, 80))
            hi = int(rng.integers(lo + 10, 100))
            if (answer_tree.primes() & (np.arange(100) > lo) & (np.arange(100) < hi)).sum() >= 3:
                return "prime", lo, hi
    if form == 1:
        lo = int(rng.integers(1, 70))
        return "even", lo, int(rng.integers(lo + 10, 100))
    if form == 2:
        return "multiple", int(rng.integers(3, 13)), 0
    return "range", 1, int(rng.integers(10, 100))


def make_prompts(config) -> list[dict]:
    """Prompt records ``{kind, text, valid [100] bool or None}`` (seeded)."""
    rng = np.random.default_rng(config.seed)
    numbers = np.arange(100)
    out = []
    for i in range(config.num_arithmetic):
        if i % 2 == 0:
            a = int(rng.integers(1, 90))
            b = int(rng.integers(1, 100 - a))
            text, ans, prefix = f"What is {a} + {b}?", a + b, f"{a} + {b} = "
        else:
            a = int(rng.integers(10, 100))
            b = int(rng.integers(1, a))
            text, ans, prefix = f"What is {a} - {b}?", a - b, f"{a} - {b} = "
        out.append(
            {"kind": "arithmetic", "text": text + SUFFIX, "prefix": prefix, "valid": numbers == ans}
        )
    for i in range(config.num_multi):
        spec = _multi_spec(i % 4, rng)
        text, prefix = answer_tree.prompt_texts(*spec)  # the question ends with SUFFIX
        valid = answer_tree.valid_numbers(*spec)
        out.append({"kind": "multi", "text": text, "prefix": prefix, "valid": valid})
    for i in range(config.num_chat):
        t = CHAT_TEMPLATES[i % len(CHAT_TEMPLATES)]
        topic = TOPICS[int(rng.integers(len(TOPICS)))]
        out.append({"kind": "chat", "text": t.format(topic), "prefix": "", "valid": None})
    return out


def _log_not_digit(lp, digit_ids):
    """log(1 - sum_d p(d)) from log-probs ``lp [..., V]``: the next token is not a digit."""
    return jnp.log1p(
        -jnp.minimum(jnp.exp(jax.nn.logsumexp(lp[..., digit_ids], axis=-1)), 1.0 - 1e-7)
    )


@functools.partial(jax.jit, static_argnames=("config",))
def number_logprobs(config, params, prompts, lengths, digit_ids):
    """Exact log p(the reply continues with the number N, then a non-digit token) for
    N = 0..99 written without leading zeros (SmolLM2 writes one token per digit).

    ``prompts [N, Pmax]`` right-padded, ``lengths [N]``, ``digit_ids [10]`` (token of each
    digit). Returns ``[N, 100]`` float32 (one-digit N from "d", two-digit from "d1 d2")."""
    model = model_lib.module(config, params)
    pmax = prompts.shape[1]

    def one(prompt, length):
        cache = model_lib.init_cache(config, 1, pmax + 2)
        logits, cache = model.decode(prompt[None].astype(jnp.int32), cache, 0)
        lp0 = jax.nn.log_softmax(
            jax.lax.dynamic_index_in_dim(logits[0], length - 1, 0, False)
        )  # [V]
        c10 = jax.tree.map(lambda c: jnp.repeat(c, 10, axis=0), cache)
        l1, c10 = model.decode(digit_ids[:, None], c10, length)
        lp1 = jax.nn.log_softmax(l1[:, 0], axis=-1)  # [10, V]
        c100 = jax.tree.map(lambda c: jnp.repeat(c, 10, axis=0), c10)
        l2, _ = model.decode(jnp.tile(digit_ids, 10)[:, None], c100, length + 1)
        lp2 = jax.nn.log_softmax(l2[:, 0], axis=-1).reshape(10, 10, -1)  # [10, 10, V]
        first = lp0[digit_ids]  # [10]
        one_digit = first + _log_not_digit(lp1, digit_ids)
        two_digit = first[:, None] + lp1[:, digit_ids] + _log_not_digit(lp2, digit_ids)  # [d1, d2]
        return jnp.concatenate([one_digit, two_digit[1:].reshape(90)])

    return jax.vmap(one)(prompts, lengths.astype(jnp.int32))


def answers_above(p: np.ndarray, fraction: float) -> int:
    """How many answers have ``p >= fraction * max(p)`` (the top answer included)."""
    p = np.asarray(p, np.float64)
    return int(np.sum(p >= fraction * p.max()))


def zero_reward_mass(p: np.ndarray, valid: np.ndarray) -> float:
    """Z0: the mass on zero-reward replies, ``1 - sum(p[valid])`` with ``p [100]`` the
    un-renormalised probabilities of the numbers (replies that are not a number 0..99 earn
    zero too, so their mass ``1 - sum(p)`` counts)."""
    return float(1.0 - np.asarray(p, np.float64)[np.asarray(valid, bool)].sum())


def top_entropy_stats(h, top1, ratio21, within10x, fraction, ratio_threshold) -> dict:
    """The per-position statistics over the ``fraction`` of positions with the highest
    entropy ``h`` (``ceil(fraction * n)`` positions, at least one; ties broken by order):
    their count, mean entropy, mean top-1 mass, share with p2/p1 > ``ratio_threshold``,
    mean number of tokens with p >= 0.1 p1."""
    h = np.asarray(h, np.float64)
    n = max(1, int(np.ceil(fraction * h.size - 1e-9)))
    idx = np.argsort(-h, kind="stable")[:n]
    return {
        "positions": n,
        "H_mean": float(h[idx].mean()),
        "H_min": float(h[idx].min()),
        "top1_mean": float(np.asarray(top1, np.float64)[idx].mean()),
        "ratio_gt": float((np.asarray(ratio21)[idx] > ratio_threshold).mean()),
        "within10x_mean": float(np.asarray(within10x, np.float64)[idx].mean()),
    }


def answers_for_mass(p: np.ndarray, fraction: float) -> int:
    """Fewest answers whose (renormalised) probabilities sum to ``fraction``."""
    q = np.sort(p / p.sum())[::-1]
    return int(np.searchsorted(np.cumsum(q), fraction - 1e-12) + 1)


def measure(config, log=print) -> dict:
    """Sample and enumerate every prompt of ``config`` (grpo_jax/configs/token_modality.py).
    Returns ``{"records": per-prompt dicts, "timings": s per kind, "total_s", "model"}``."""
    t0 = time.time()
    cfg, params, tok = gguf.load_smollm2(config.cache_dir or None, max_len=512)
    log(f"model loaded in {time.time() - t0:.1f} s: {cfg}")
    digit_ids = jnp.asarray([tok.token_to_id(str(d)) for d in range(10)], jnp.int32)
    prompts = make_prompts(config)
    for p in prompts:
        p["ids"] = tok.encode(
            tok.apply_chat_template([{"role": "user", "content": p["text"]}]) + p["prefix"]
        )
    pmax = max(len(p["ids"]) for p in prompts)
    key = jax.random.key(config.seed)
    records, timings = [], {}
    for kind in KINDS:
        t1 = time.time()
        rows = [p for p in prompts if p["kind"] == kind]
        t_new = config.max_new_tokens_chat if kind == "chat" else config.max_new_tokens_number
        bs, k = config.prompt_batch, config.samples_per_prompt
        for start in range(0, len(rows), bs):
            chunk = rows[start : start + bs]
            ids = [r["ids"] for r in chunk] + [chunk[-1]["ids"]] * (bs - len(chunk))
            padded, lengths = sampling.pad_prompts(ids, length=pmax)  # one shape: one compile
            key, sub = jax.random.split(key)
            out = sampling.sample(
                cfg,
                params,
                padded,
                sub,
                max_new_tokens=t_new,
                eos_id=tok.eos_id,
                group_size=k,
                prompt_lengths=lengths,
                step_stats=stats.next_token_stats,
            )
            out = jax.tree.map(lambda x: x.reshape(bs, k, *x.shape[1:]), jax.device_get(out))
            nums = None
            if kind != "chat":
                nums = np.asarray(
                    number_logprobs(cfg, params, padded, lengths, digit_ids), np.float64
                )
            for j, r in enumerate(chunk):
                rec = _sampled_record(r, out, j, tok)
                if nums is not None:
                    rec.update(_answer_record(np.exp(nums[j]), r["valid"], config))
                records.append(rec)
        timings[kind] = time.time() - t1
        log(f"{kind}: {len(rows)} prompts in {timings[kind]:.1f} s")
    return {"records": records, "timings": timings, "total_s": time.time() - t0, "model": str(cfg)}


def _sampled_record(prompt: dict, out: sampling.SampleOutput, j: int, tok) -> dict:
    """Prompt ``j``'s samples (``out`` leaves ``[N, K, T, ...]``): the per-position
    statistics at its generated positions, sequence log-probs, whether each sample ended."""
    m = out.mask[j] > 0
    st = out.stats
    return {
        "kind": prompt["kind"],
        "text": prompt["text"],
        "prefix": prompt["prefix"],
        **{f: st[f][j][m].tolist() for f in ("entropy", "top1", "ratio21", "within10x")},
        "seq_logp": (out.logp[j] * out.mask[j]).sum(-1).tolist(),
        "ended": (out.tokens[j] == tok.eos_id).any(-1).tolist(),
        "samples": [
            tok.decode(row[mk > 0], skip_special=True)
            for row, mk in zip(out.tokens[j], out.mask[j])
        ],
    }


def _answer_record(p: np.ndarray, valid: np.ndarray, config) -> dict:
    """The answer level of one prompt from ``p [100]``, the exact (un-renormalised)
    probability of each number, and ``valid [100]``, which numbers are right."""
    q = p / p.sum()
    return dict(
        canonical_mass=float(p.sum()),
        n90=answers_for_mass(p, config.mass_fraction),
        answers_above=answers_above(p, config.answer_threshold),
        z0=zero_reward_mass(p, valid),
        valid_share=float(q[valid].sum()),
        num_valid=int(valid.sum()),
        valid_answers_5pct=int(np.sum(q[valid] >= 0.05)),
        top_numbers=[int(i) for i in np.argsort(-p)[:5]],
        top_probs=[float(x) for x in np.sort(q)[::-1][:5]],
        answer_entropy=float(-np.sum(q[q > 0] * np.log(q[q > 0]))),
    )


def summarize(records, config) -> dict[str, dict]:
    """The per-kind table of the report: means over positions, prompts and samples; ``top``:
    the same per-position statistics over the top-entropy decile (`top_entropy_stats`)."""
    table = {}
    for kind in KINDS:
        rs = [r for r in records if r["kind"] == kind]
        if not rs:
            continue
        h = np.concatenate([r["entropy"] for r in rs])
        p1 = np.concatenate([r["top1"] for r in rs])
        r21 = np.concatenate([r["ratio21"] for r in rs])
        w10 = np.concatenate([r["within10x"] for r in rs])
        seq = -np.concatenate([r["seq_logp"] for r in rs])
        row = {
            "prompts": len(rs),
            "positions": int(h.size),
            "H_mean": float(h.mean()),
            "H_median": float(np.median(h)),
            "expH_mean": float(np.exp(h).mean()),
            "expH_median": float(np.median(np.exp(h))),
            "top1_mean": float(p1.mean()),
            "top1_gt_0.9": float((p1 > 0.9).mean()),
            "ratio_gt": float((r21 > config.ratio_threshold).mean()),
            "within10x_mean": float(w10.mean()),
            "seq_H_mc": float(seq.mean()),
            "first_H": float(np.mean([r["entropy"][0] for r in rs])),
            "first_top1": float(np.mean([r["top1"][0] for r in rs])),
            "first_ratio_gt": float(
                np.mean([r["ratio21"][0] > config.ratio_threshold for r in rs])
            ),
            "ended": float(np.mean([e for r in rs for e in r["ended"]])),
            "top": top_entropy_stats(
                h, p1, r21, w10, config.top_entropy_fraction, config.ratio_threshold
            ),
        }
        if "n90" in rs[0]:
            row.update(
                canonical_mass=float(np.mean([r["canonical_mass"] for r in rs])),
                n90_mean=float(np.mean([r["n90"] for r in rs])),
                n90_median=float(np.median([r["n90"] for r in rs])),
                above_mean=float(np.mean([r["answers_above"] for r in rs])),
                above_median=float(np.median([r["answers_above"] for r in rs])),
                z0=float(np.mean([r["z0"] for r in rs])),
                valid_share=float(np.mean([r["valid_share"] for r in rs])),
                valid_5pct=float(np.mean([r["valid_answers_5pct"] for r in rs])),
                answer_H=float(np.mean([r["answer_entropy"] for r in rs])),
            )
        table[kind] = row
    return table
