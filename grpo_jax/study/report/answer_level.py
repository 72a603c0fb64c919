"""Tables and figures of the real model at answer level (grpo_jax/study/answer_level.py)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from grpo_jax.study import answer_level
from grpo_jax.study.report.tables import table

FAMILY_MARKERS = {"prime": "o", "even": "s", "multiple": "^", "range": "D"}


def _family(prompt: str) -> str:
    for key, word in (("prime", "prime"), ("even", "even"), ("multiple", "multiple")):
        if word in prompt:
            return key
    return "range"


def predictions_markdown(rows: Sequence[Mapping[str, Any]], fraction: float) -> str:
    """Stage 0's per-prompt table at one fraction, and the mean differences per fraction."""
    head = [
        "prompt",
        "Z0",
        "E_ref[R]",
        "beta fwd / rev",
        "Δ other",
        "Δ valid TV to ref",
        "Δ valid entropy",
        "answer level, largest Δ",
    ]
    body = []
    for r in rows:
        if r["fraction"] != fraction:
            continue
        node = r["node/delta"]
        body.append(
            [
                r["prompt"].replace(" Reply with only the number.", ""),
                f"{r['z0']:.3f}",
                f"{r['ref_reward']:.3f}",
                f"{r['node/forward']['beta']:.3f} / {r['node/reverse']['beta']:.3f}",
                f"{node['other']:+.4f}",
                f"{node['valid_tv_to_ref']:+.3f}",
                f"{node['valid_entropy']:+.3f}",
                f"{max(abs(v) for v in r['answer/delta'].values()):.0e}",
            ]
        )
    lines = [
        f"Forward − reverse at matched reward (f = {fraction:g} of the attainable improvement, "
        "per prompt), per-node targets (the exact KL per token in the loss); the last column "
        "is the largest forward − reverse difference over the outcomes of the answer-level "
        "optima:",
        "",
        *table(head, body),
        "",
        "Means over prompts, per-node targets:",
        "",
    ]
    fr = sorted({r["fraction"] for r in rows})
    head = ["f", *(f"Δ {k}" for k in answer_level.OUTCOMES), "answer level, largest Δ"]
    body = []
    for f in fr:
        sel = [r for r in rows if r["fraction"] == f]
        body.append(
            [f"{f:g}"]
            + [f"{np.mean([r['node/delta'][k] for r in sel]):+.4f}" for k in answer_level.OUTCOMES]
            + [f"{max(max(abs(v) for v in r['answer/delta'].values()) for r in sel):.0e}"]
        )
    return "\n".join(lines + table(head, body))


def predictions_figure(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    """Per-node forward − reverse in the valid answers' TV to the reference against Z0, one
    panel per fraction, one marker per prompt family; the answer-level optima's difference
    (zero) as a line."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    fr = sorted({r["fraction"] for r in rows})
    fig, axes = plt.subplots(1, len(fr), figsize=(4.2 * len(fr), 3.6), sharey=True)
    for ax, f in zip(np.atleast_1d(axes), fr):
        for fam, marker in FAMILY_MARKERS.items():
            sel = [r for r in rows if r["fraction"] == f and _family(r["prompt"]) == fam]
            ax.scatter(
                [r["z0"] for r in sel],
                [r["node/delta"]["valid_tv_to_ref"] for r in sel],
                marker=marker,
                label=fam,
            )
        ax.axhline(0, color="k", lw=1, label="answer-level optima")
        ax.set_title(f"matched reward, f = {f:g}")
        ax.set_xlabel("Z0 (reference mass on zero-reward answers)")
    np.atleast_1d(axes)[0].set_ylabel("forward − reverse:\nvalid answers' TV to reference")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle("SmolLM2 answer trees: closed-form per-node targets (KL per token in the loss)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_markdown(results: Mapping[str, Any], config) -> str:
    """Stage 1: per trainable subset, the members on the training and held-out prompts and
    the matched-reward contrast with its decision."""
    out = []
    for spec, res in results.items():
        head = [
            "KL",
            "beta",
            "reward",
            "TV to target",
            "valid TV to ref",
            "valid entropy",
            "held-out reward",
            "held-out TV to target",
        ]
        body = [
            [
                m["direction"],
                f"{m['beta']:g}",
                f"{m['reward']:.3f} ({m['target_reward']:.3f})",
                f"{m['tv_to_target']:.3f}",
                f"{m['valid_tv_to_ref']:.3f}",
                f"{m['valid_entropy']:.3f}",
                f"{h['reward']:.3f} ({h['target_reward']:.3f})",
                f"{h['tv_to_target']:.3f}",
            ]
            for m, h in zip(res["train"], res["held_out"])
        ]
        c = res["contrast"]
        out += [
            f"**trainable `{spec}`** ({res['trainable_params']:,} parameters per member; "
            f"{res['seconds']:.0f} s). Reward: the member's (its per-node target's); TV: "
            "answer-level total variation, mean over prompts.",
            "",
            *table(head, body),
            "",
        ]
        if np.isfinite(c["r_star"]):
            out.append(
                f"At matched reward r* = {c['r_star']:.3f} (training prompts), forward − reverse "
                f"in {config.primary_outcome}: trained {c['delta']:+.3f}, closed form "
                f"{c['closed_delta']:+.3f} → **{c['decision']}** (members near r* within TV "
                f"{config.capacity_tv:g} of their targets: {c['reached']}; margin "
                f"{config.margin:g})."
            )
        else:
            out.append(f"Contrast: {c['decision']}.")
        out.append("")
    return "\n".join(out)


def training_figure(results: Mapping[str, Any], curves, config, path: str) -> None:
    """Per subset: the primary outcome against reward, trained members (markers) over the
    closed-form per-node targets (lines), both directions."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    k = config.primary_outcome
    fig, axes = plt.subplots(
        1, len(results), figsize=(max(4.4 * len(results), 7.5), 3.6), sharey=True
    )
    for ax, (spec, res) in zip(np.atleast_1d(axes), results.items()):
        for d, color in (("forward", "C0"), ("reverse", "C3")):
            ax.plot(curves[d]["reward"], curves[d][k], color=color, label=f"{d}, closed form")
            ms = [m for m in res["train"] if m["direction"] == d]
            ax.scatter(
                [m["reward"] for m in ms],
                [m[k] for m in ms],
                color=color,
                marker="o",
                label=f"{d}, trained",
            )
        ax.set_title(f"trainable {spec}")
        ax.set_xlabel("mean reward (training prompts)")
    short = {"valid_tv_to_ref": "valid answers' shares:\nTV to the reference's"}
    np.atleast_1d(axes)[0].set_ylabel(short.get(k, k.replace("_", " ")))
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle("SmolLM2, exact-gradient GRPO objective vs its per-node closed forms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _trajectory(evaluations, split: str, member: int, key: str) -> str:
    return " → ".join(f"{e[split][member][key]:.3f}" for e in evaluations)


def sampled_markdown(result: Mapping[str, Any], config) -> str:
    """Stage 2 (grpo_jax/study/answer_level_sampled.py): per member (KL choice, beta, seed),
    reward and TV to its per-node target at each evaluation step, on the training and the
    held-out prompts; then the means over seeds after training."""
    evals, s = result["evaluations"], config.sampled
    steps = " → ".join(str(e["step"]) for e in evals)
    out = [
        f"**Stage 2, sampled GRPO** (G = {s.group_size}, {s.num_prompts} prompts a step, "
        f"{s.advantage_estimator} advantages, trainable `{result['trainable']}`: "
        f"{result['trainable_params']:,} parameters per member; compile "
        f"{result['compile_s']:.0f} s, {result['seconds']:.0f} s in all). Exact evaluation "
        f"at steps {steps}: reward = expected reward over the prompts' answer trees, TV = "
        "answer-level total variation to the member's per-node target (its direction and "
        "beta), means over prompts; in parentheses the target's reward.",
        "",
    ]
    for split, name in (("train", "training prompts"), ("held_out", "held-out prompts")):
        head = ["KL", "target", "beta", "seed", f"reward ({steps})", f"TV to target ({steps})"]
        body = [
            [
                m["kl_choice"],
                m["direction"],
                f"{m['beta']:g}",
                m["seed"],
                f"{_trajectory(evals, split, i, 'reward')} ({m['target_reward']:.3f})",
                _trajectory(evals, split, i, "tv_to_target"),
            ]
            for i, m in enumerate(evals[-1][split])
        ]
        out += [f"*{name.capitalize()}:*", "", *table(head, body)]
    head = ["KL", "beta", "reward", "TV to target", "held-out reward", "held-out TV to target"]
    groups: dict = {}
    for i, m in enumerate(evals[-1]["train"]):
        groups.setdefault((m["kl_choice"], m["beta"]), []).append(i)
    stat = lambda split, idx, key: np.asarray([evals[-1][split][i][key] for i in idx])
    ms = lambda x: f"{x.mean():.3f} ± {x.std():.3f}"
    body = [
        [
            kl,
            f"{beta:g}",
            ms(stat("train", idx, "reward")),
            ms(stat("train", idx, "tv_to_target")),
            ms(stat("held_out", idx, "reward")),
            ms(stat("held_out", idx, "tv_to_target")),
        ]
        for (kl, beta), idx in groups.items()
    ]
    out += [
        f"*After {evals[-1]['step']} steps, mean ± sd over seeds:*",
        "",
        *table(head, body),
    ]
    return "\n".join(out)
