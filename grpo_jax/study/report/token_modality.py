"""Report of the premise measurement (`grpo_jax.study.token_modality`): ``report.md`` (tables
by prompt kind), ``positions.png`` (histograms of H, p1, p2/p1 by kind) and ``answers.png``
(per prompt: answers for 90% of the mass, answers above 0.1 x the top answer, Z0)."""

from __future__ import annotations

import os
import platform

import jax
import numpy as np

from grpo_jax.study.token_modality import KINDS, summarize


def figures(records, workdir, config):
    """``positions.png`` and ``answers.png`` in ``workdir``."""
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

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for kind in ("arithmetic", "multi"):
        rs = [r for r in records if r["kind"] == kind]
        if not rs:
            continue
        for ax, field in zip(axes[:2], ("n90", "answers_above")):
            x = [r[field] for r in rs]
            ax.hist(
                x, bins=np.arange(0.5, max(x) + 1.5), histtype="step", linewidth=1.5, label=kind
            )
        axes[2].hist(
            [r["z0"] for r in rs],
            bins=np.linspace(0, 1, 21),
            histtype="step",
            linewidth=1.5,
            label=kind,
        )
    axes[0].set_title(f"answers carrying {config.mass_fraction:.0%} of the mass (per prompt)")
    axes[1].set_title(f"answers above {config.answer_threshold} x the top answer (per prompt)")
    axes[2].set_title("Z0: mass on zero-reward replies (per prompt)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "answers.png"), dpi=100)
    plt.close(fig)


def _fmt(x, d=3) -> str:
    return "-" if x is None else f"{x:.{d}f}"


def write_report(result, config, workdir) -> str:
    """Write ``<workdir>/report.md`` from `token_modality.measure`'s result; returns the text."""
    table = summarize(result["records"], config)
    lines = (
        _position_tables(result, table, config)
        + _answer_table(table, config)
        + _examples(result["records"])
    )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(workdir, "report.md"), "w") as fh:
        fh.write(text)
    return text


def _position_tables(result, table, config) -> list[str]:
    f = _fmt
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
    ]
    lines += _decile_table(table, config)
    lines += [
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
    return lines


def _decile_table(table, config) -> list[str]:
    """All positions beside the top-entropy decile (`token_modality.top_entropy_stats`)."""
    f, share = _fmt, f"{config.top_entropy_fraction:.0%}"
    lines = [
        f"The top-entropy decile: the {share} of each kind's generated positions with the "
        "highest entropy (where RL moves mass), beside all positions (all / top):",
        "",
        f"| kind | positions (top {share}) | its lowest H | H mean | p1 mean | "
        f"P(p2/p1 > {config.ratio_threshold}) | tokens >= 0.1 p1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, r in table.items():
        t = r["top"]
        lines.append(
            f"| {kind} | {t['positions']} | {f(t['H_min'])} | {f(r['H_mean'])} / "
            f"{f(t['H_mean'])} | {f(r['top1_mean'])} / {f(t['top1_mean'])} | "
            f"{f(r['ratio_gt'])} / {f(t['ratio_gt'])} | {f(r['within10x_mean'], 2)} / "
            f"{f(t['within10x_mean'], 2)} |"
        )
    return lines


def _answer_table(table, config) -> list[str]:
    f = _fmt
    lines = [
        "",
        "## Per answer (exact, numbers 0..99)",
        "",
        f"| kind | prompts | numeric mass | Z0 | answers above {config.answer_threshold} x top "
        f"(mean) | (median) | answers for {config.mass_fraction:.0%} (mean) | (median) | "
        "answer H (nats) | valid share | valid answers >= 5% |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in table.items():
        if "n90_mean" in r:
            lines.append(
                f"| {kind} | {r['prompts']} | {f(r['canonical_mass'])} | {f(r['z0'])} | "
                f"{f(r['above_mean'], 2)} | {f(r['above_median'], 1)} | {f(r['n90_mean'], 2)} "
                f"| {f(r['n90_median'], 1)} | {f(r['answer_H'])} | {f(r['valid_share'])} | "
                f"{f(r['valid_5pct'], 2)} |"
            )
    lines += [
        "",
        "numeric mass: total probability that the reply continues with a number 0..99 "
        "(then a non-digit). Z0: the reference's mass on zero-reward replies, 1 - the "
        "probability of a correct (arithmetic) or valid (multi) number, over the whole "
        "reply distribution (any other reply, a number or not, earns zero). answers above "
        f"{config.answer_threshold} x top: how many numbers have at least "
        f"{config.answer_threshold} x the most probable number's probability. The other "
        "answer columns renormalise over the 100 numbers; valid share: the correct or valid "
        "numbers' share of the numeric mass.",
        "",
        "![positions](positions.png) ![answers](answers.png)",
    ]
    return lines


def _examples(records) -> list[str]:
    lines = ["", "## Examples (first prompt of each kind: top numbers, one sample)", ""]
    for kind in KINDS:
        rs = [r for r in records if r["kind"] == kind]
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
    return lines
