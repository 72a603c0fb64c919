"""Report of GRPO on the real model (`grpo_jax.study.grpo_lm`): ``report.md``."""

from __future__ import annotations

import os
import platform

import jax
import numpy as np


def report(config, task, history, ref_answers, results, seconds) -> str:
    """report.md: the last step's metrics and the exact answer distributions per member."""
    mean = lambda rs, k: float(np.mean([r[k] for r in rs]))
    lines = [
        "# GRPO on SmolLM2-135M-Instruct: prime numbers, four regularisers",
        "",
        f"`experiments/grpo_lm.py` ({platform.machine()} CPU, {os.cpu_count()} cores, "
        f"jax {jax.__version__}, devices {jax.devices()[0].platform}); {config.steps} steps, "
        f"{config.num_prompts} prompts x {config.group_size} samples, beta {config.beta}, "
        f"lr {config.lr}; wall time {seconds:.0f} s.",
        "",
        "Prompts: " + "; ".join(repr(t) for t in task.texts),
        "",
        "| regulariser | reward (last step) | exact KL fwd | exact KL rev | entropy | "
        "valid mass (exact, mean over prompts) | effective valid answers exp(H) | "
        "top answer share |",
        "|---|---|---|---|---|---|---|---|",
        f"| reference | - | 0 | 0 | - | {mean(ref_answers, 'valid_mass'):.3f} | "
        f"{mean(ref_answers, 'effective_valid'):.2f} | {mean(ref_answers, 'top_share'):.3f} |",
    ]
    last = lambda k, m: float(np.asarray(history[k])[m, -1])
    for m, name in enumerate(config.choices):
        rs = results[name]
        lines.append(
            f"| {name} | {last('reward_mean', m):.3f} | {last('exact_kl_fwd', m):.2e} | "
            f"{last('exact_kl_rev', m):.2e} | {last('entropy', m):.3f} | "
            f"{mean(rs, 'valid_mass'):.3f} | {mean(rs, 'effective_valid'):.2f} | "
            f"{mean(rs, 'top_share'):.3f} |"
        )
    lines += [
        "",
        "KL and entropy: exact per position over the full vocabulary (pi_old vs the "
        "reference on that step's batch, nats per token). Answer columns: exact, by "
        "enumerating every number 0..99 as the 2-token completion.",
        "",
    ]
    for name, rs in [("reference", ref_answers)] + [(n, results[n]) for n in config.choices]:
        shares = ", ".join(f"{a}: {s:.3f}" for a, s in rs[0]["shares"].items())
        lines.append(f"{name} answer shares (first prompt): {shares}")
    return "\n".join(lines) + "\n"
