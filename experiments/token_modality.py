"""The premise, measured: are a real LM's next-token distributions unimodal?

  python experiments/token_modality.py --config grpo_jax/configs/token_modality.py --workdir runs/tm
  (``grpo_jax/configs/token_modality.py:full`` for a few hundred prompts on a GPU)

SmolLM2-135M-Instruct (the GGUF from ``gguf.fetch_smollm2``; float32) answers chat prompts of
three kinds:

* ``arithmetic``: "What is a + b?" / "a - b" with one correct answer in 0..99;
* ``multi``: questions with many valid answers in 0..99 (a prime / even number / multiple
  of k in a range, a random number up to n);
* ``chat``: open-ended requests (a fact, a poem line, a tip, a description).

**Per position.** ``K`` completions per prompt are sampled at temperature 1 (the model's own
distribution); at every generated position (up to and including the end-of-turn token) the
full-vocabulary distribution gives the entropy H (nats), the effective support exp(H), the
top-1 mass p1, whether p2/p1 > 0.5 (the top two tokens both carry real mass), and the number
of tokens with p >= 0.1 p1.

**Per answer.** ``arithmetic`` and ``multi`` prompts end with the start of the assistant's
reply, written up to the number ("57 + 12 = ", "A prime number between 10 and 50 is "), so
the answer is the next token(s). The answers are enumerated exactly: for every N in 0..99,
the probability that the reply continues with N and then a non-digit token (SmolLM2 writes
each digit as its own token, so this is a 2-level tree: 1 + 10 + 100 forward rows per
prompt). These events are disjoint; their total (the numeric mass, reported) is the
probability of a 1- or 2-digit number right away. Over these numbers (renormalised):
how many distinct answers carry 90% of the mass, and how many modes the separation rule
finds (``grpo_jax/configs/token_modality.py``: numbers with >= 0.1 x the top number's probability
are significant; significant numbers form one mode when every integer between them is
significant too, so a valley below 10% of the peak separates modes). For every kind, the
Monte Carlo sequence entropy ``H_seq = E[-log p(completion)]`` of the sampled completions
(exact log-probabilities, an unbiased estimate) gives an effective number of distinct
answers exp(H_seq); completions cut at the token limit count as their prefix.

Writes ``<workdir>/report.md`` (table by prompt kind), ``positions.png`` (histograms of
H, p1, p2/p1 by kind), ``answers.png`` (answers for 90% mass and modes per prompt),
``records.json`` (per-prompt numbers). Disk: under 1 MB.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
import time


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import lm_greedy  # noqa: E402  (experiments/lm_greedy.py: loader, ragged sampler)
from grpo_jax.models import model as model_lib  # noqa: E402

KINDS = ("arithmetic", "multi", "chat")
SUFFIX = " Reply with only the number."

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


def _primes(n=100):
    s = np.ones(n, bool)
    s[:2] = False
    for i in range(2, int(n**0.5) + 1):
        s[i * i :: i] = False
    return s


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
    primes = _primes()
    for i in range(config.num_multi):
        form = i % 4
        if form == 0:
            while True:
                lo = int(rng.integers(2, 80))
                hi = int(rng.integers(lo + 10, 100))
                valid = primes & (numbers > lo) & (numbers < hi)
                if valid.sum() >= 3:
                    break
            text = f"Name a prime number between {lo} and {hi}."
            prefix = f"A prime number between {lo} and {hi} is "
        elif form == 1:
            lo = int(rng.integers(1, 70))
            hi = int(rng.integers(lo + 10, 100))
            valid = (numbers % 2 == 0) & (numbers > lo) & (numbers < hi)
            text = f"Name an even number between {lo} and {hi}."
            prefix = f"An even number between {lo} and {hi} is "
        elif form == 2:
            k = int(rng.integers(3, 13))
            valid = (numbers % k == 0) & (numbers > 0)
            text = f"Name a multiple of {k} that is less than 100."
            prefix = f"A multiple of {k} that is less than 100 is "
        else:
            hi = int(rng.integers(10, 100))
            valid = (numbers >= 1) & (numbers <= hi)
            text = f"Pick a random number between 1 and {hi}."
            prefix = f"My random number between 1 and {hi} is "
        out.append({"kind": "multi", "text": text + SUFFIX, "prefix": prefix, "valid": valid})
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


def separation_modes(p: np.ndarray, threshold: float) -> int:
    """Modes by the separation rule: maximal runs of consecutive integers with
    ``p >= threshold * max(p)``."""
    sig = p >= threshold * p.max()
    return int(np.sum(sig & ~np.concatenate([[False], sig[:-1]])))


def answers_for_mass(p: np.ndarray, fraction: float) -> int:
    """Fewest answers whose (renormalised) probabilities sum to ``fraction``."""
    q = np.sort(p / p.sum())[::-1]
    return int(np.searchsorted(np.cumsum(q), fraction - 1e-12) + 1)


def run(config, log=print) -> dict:
    t0 = time.time()
    cfg, params, tok = lm_greedy.load_smollm2(config.cache_dir or None, max_len=512)
    log(f"model loaded in {time.time() - t0:.1f} s: {cfg}")
    digit_ids = jnp.asarray([tok.token_to_id(str(d)) for d in range(10)], jnp.int32)
    prompts = make_prompts(config)
    for p in prompts:
        p["ids"] = tok.encode(
            tok.apply_chat_template([{"role": "user", "content": p["text"]}]) + p["prefix"]
        )
    pmax = max(len(p["ids"]) for p in prompts)
    key = jax.random.key(config.seed)
    records = []
    timings = {}
    for kind in KINDS:
        t1 = time.time()
        rows = [p for p in prompts if p["kind"] == kind]
        t_new = config.max_new_tokens_chat if kind == "chat" else config.max_new_tokens_number
        bs = config.prompt_batch
        for start in range(0, len(rows), bs):
            chunk = rows[start : start + bs]
            ids = [r["ids"] for r in chunk] + [chunk[-1]["ids"]] * (bs - len(chunk))
            padded, lengths = lm_greedy.pad_prompts(ids, length=pmax)  # one shape: one compile
            key, sub = jax.random.split(key)
            out = jax.device_get(
                lm_greedy.ragged_sample(
                    cfg,
                    params,
                    padded,
                    lengths,
                    sub,
                    1.0,
                    max_new_tokens=t_new,
                    num_samples=config.samples_per_prompt,
                    eos_id=tok.eos_id,
                )
            )
            nums = None
            if kind != "chat":
                nums = np.asarray(
                    number_logprobs(cfg, params, padded, lengths, digit_ids), np.float64
                )
            for j, r in enumerate(chunk):
                m = out["mask"][j] > 0
                st = out["token_stats"]
                rec = {
                    "kind": kind,
                    "text": r["text"],
                    "prefix": r["prefix"],
                    "entropy": st["entropy"][j][m].tolist(),
                    "top1": st["top1"][j][m].tolist(),
                    "ratio21": st["ratio21"][j][m].tolist(),
                    "within10x": st["within10x"][j][m].tolist(),
                    "seq_logp": (out["logp"][j] * out["mask"][j]).sum(-1).tolist(),
                    "ended": (out["tokens"][j] == tok.eos_id).any(-1).tolist(),
                    "samples": [
                        tok.decode(row[mk > 0], skip_special=True)
                        for row, mk in zip(out["tokens"][j], out["mask"][j])
                    ],
                }
                if nums is not None:
                    p = np.exp(nums[j])
                    valid = r["valid"]
                    rec.update(
                        canonical_mass=float(p.sum()),
                        n90=answers_for_mass(p, config.mass_fraction),
                        modes=separation_modes(p, config.mode_threshold),
                        valid_share=float(p[valid].sum() / p.sum()),
                        num_valid=int(valid.sum()),
                        valid_answers_5pct=int(np.sum(p[valid] / p.sum() >= 0.05)),
                        top_numbers=[int(i) for i in np.argsort(-p)[:5]],
                        top_probs=[float(x) for x in np.sort(p)[::-1][:5] / p.sum()],
                        answer_entropy=float(-np.sum((q := p / p.sum())[q > 0] * np.log(q[q > 0]))),
                    )
                records.append(rec)
        timings[kind] = time.time() - t1
        log(f"{kind}: {len(rows)} prompts in {timings[kind]:.1f} s")
    return {"records": records, "timings": timings, "total_s": time.time() - t0, "model": str(cfg)}


def summarize(records, config) -> dict[str, dict]:
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
        }
        if "n90" in rs[0]:
            row.update(
                canonical_mass=float(np.mean([r["canonical_mass"] for r in rs])),
                n90_mean=float(np.mean([r["n90"] for r in rs])),
                n90_median=float(np.median([r["n90"] for r in rs])),
                modes_mean=float(np.mean([r["modes"] for r in rs])),
                multimodal_frac=float(np.mean([r["modes"] >= 2 for r in rs])),
                valid_share=float(np.mean([r["valid_share"] for r in rs])),
                valid_5pct=float(np.mean([r["valid_answers_5pct"] for r in rs])),
                answer_H=float(np.mean([r["answer_entropy"] for r in rs])),
            )
        table[kind] = row
    return table


def figures(records, workdir, config):
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    specs = (
        ("entropy", "entropy H (nats) per position", np.linspace(0, 8, 41)),
        ("top1", "top-1 mass p1 per position", np.linspace(0, 1, 41)),
        ("ratio21", "p2 / p1 per position", np.linspace(0, 1, 41)),
    )
    for ax, (field, title, bins) in zip(axes, specs):
        for kind in KINDS:
            x = np.concatenate([r[field] for r in records if r["kind"] == kind] or [[]])
            if x.size:
                ax.hist(
                    x,
                    bins=bins,
                    histtype="step",
                    density=True,
                    linewidth=1.5,
                    label=f"{kind} ({x.size})",
                )
        ax.set_title(title)
        ax.set_yscale("log")
        if field == "ratio21":
            ax.axvline(config.ratio_threshold, color="k", linestyle=":")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "positions.png"), dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind in ("arithmetic", "multi"):
        rs = [r for r in records if r["kind"] == kind]
        if not rs:
            continue
        n90 = [r["n90"] for r in rs]
        modes = [r["modes"] for r in rs]
        axes[0].hist(
            n90, bins=np.arange(0.5, max(n90) + 1.5), histtype="step", linewidth=1.5, label=kind
        )
        axes[1].hist(
            modes, bins=np.arange(0.5, max(modes) + 1.5), histtype="step", linewidth=1.5, label=kind
        )
    axes[0].set_title(f"answers carrying {config.mass_fraction:.0%} of the mass (per prompt)")
    axes[1].set_title(f"modes (separation rule, threshold {config.mode_threshold} x peak)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "answers.png"), dpi=100)
    plt.close(fig)


def write_report(result, config, workdir) -> str:
    table = summarize(result["records"], config)
    f = lambda x, d=3: "-" if x is None else f"{x:.{d}f}"
    lines = [
        "# Token modality of SmolLM2-135M-Instruct",
        "",
        f"`experiments/token_modality.py` ({platform.machine()} CPU, {os.cpu_count()} cores, "
        f"jax {jax.__version__}; {result['total_s']:.0f} s). Model: {result['model']}. "
        f"{config.samples_per_prompt} samples per prompt at temperature 1; per-position "
        "statistics at every generated position (end-of-turn included). arithmetic and "
        "multi prompts end with the assistant's reply written up to the number; the "
        "answer level is exact over the numbers N = 0..99 (N, then a non-digit token).",
        "",
        "## Per position",
        "",
        "| kind | prompts | positions | H mean | H median | exp(H) mean | exp(H) median | "
        f"p1 mean | P(p1 > 0.9) | P(p2/p1 > {config.ratio_threshold}) | "
        "tokens >= 0.1 p1 | exp(H_seq) (MC) | ended |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in table.items():
        lines.append(
            f"| {kind} | {r['prompts']} | {r['positions']} | {f(r['H_mean'])} | "
            f"{f(r['H_median'])} | {f(r['expH_mean'], 2)} | {f(r['expH_median'], 2)} | "
            f"{f(r['top1_mean'])} | {f(r['top1_gt_0.9'])} | {f(r['ratio_gt'])} | "
            f"{f(r['within10x_mean'], 2)} | {np.exp(min(r['seq_H_mc'], 700)):.3g} | "
            f"{f(r['ended'], 2)} |"
        )
    lines += [
        "",
        "H in nats. exp(H_seq): exp of the mean negative log-probability of the sampled "
        "completions (Monte Carlo sequence entropy; an effective number of distinct "
        "completions). ended: fraction of samples that ended within the token limit.",
        "",
        "The first generated position alone (for arithmetic and multi: the first digit of "
        "the answer):",
        "",
        f"| kind | H mean | p1 mean | P(p2/p1 > {config.ratio_threshold}) |",
        "|---|---|---|---|",
    ]
    for kind, r in table.items():
        lines.append(
            f"| {kind} | {f(r['first_H'])} | {f(r['first_top1'])} | " f"{f(r['first_ratio_gt'])} |"
        )
    lines += [
        "",
        "## Per answer (exact, numbers 0..99)",
        "",
        f"| kind | prompts | numeric mass | answers for {config.mass_fraction:.0%} (mean) | "
        "(median) | modes (mean) | P(modes >= 2) | answer H (nats) | valid share | "
        "valid answers >= 5% |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in table.items():
        if "n90_mean" in r:
            lines.append(
                f"| {kind} | {r['prompts']} | {f(r['canonical_mass'])} | {f(r['n90_mean'], 2)} "
                f"| {f(r['n90_median'], 1)} | {f(r['modes_mean'], 2)} | "
                f"{f(r['multimodal_frac'], 2)} | {f(r['answer_H'])} | {f(r['valid_share'])} | "
                f"{f(r['valid_5pct'], 2)} |"
            )
    lines += [
        "",
        "numeric mass: total probability that the reply continues with a number 0..99 "
        "(then a non-digit); the other answer columns renormalise over these 100 answers. "
        f"Separation rule: numbers with p >= {config.mode_threshold} x the top number's "
        "probability are significant; significant numbers form one mode when every integer "
        "between them is significant too. valid share: mass on correct (arithmetic) or "
        "valid (multi) numbers.",
        "",
        "![positions](positions.png) ![answers](answers.png)",
        "",
        "## Examples (first prompt of each kind: top numbers, one sample)",
        "",
    ]
    for kind in KINDS:
        rs = [r for r in result["records"] if r["kind"] == kind]
        if rs:
            r = rs[0]
            extra = ""
            if "top_numbers" in r:
                extra = " top numbers " + ", ".join(
                    f"{n} ({p:.2f})" for n, p in zip(r["top_numbers"], r["top_probs"])
                )
            lines.append(
                f"- {kind}: *{r['text']}* / reply prefix {r['prefix']!r}:{extra}; "
                f"sample: {r['samples'][0]!r}"
            )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(workdir, "report.md"), "w") as fh:
        fh.write(text)
    return text


def main(argv):
    del argv
    config = _CONFIG.value
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    result = run(config)
    with open(os.path.join(workdir, "records.json"), "w") as fh:
        json.dump({k: v for k, v in result.items()}, fh)
    figures(result["records"], workdir, config)
    print(write_report(result, config, workdir))
    print(f"wrote {workdir}/report.md, positions.png, answers.png, records.json")


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from grpo_jax.run import config_utils

    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        "grpo_jax/configs/token_modality.py",
        "Token modality config file.",
        lock_config=True,
    )
    _WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
    config_utils.run_app(main)
