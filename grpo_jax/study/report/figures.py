"""The study's figures: PNGs drawn with `matplotlib.figure.Figure` directly (Agg canvas, no
pyplot global state).

  glance      the one-glance answer: a column per modality, a row per policy class; x =
              reward, y = off-target mass; forward and reverse KL as seed-banded curves over
              the dashed closed-form optima (tabular policy); a side panel with the
              interaction on the primary outcome and its adjusted interval against separation
  frontier    reward against exact KL (both directions) for every arm, per policy class; for
              the Gaussian class its exact optima (dashed: the global maximum along beta;
              x: other local maxima)
  delta_frontier  forward - reverse on the primary outcome against the fraction of the
              attainable improvement, one line per reference coloured by Z0 (dashed: the
              closed form, tabular class)
  mode_shares the shares of each mode over training at the middle strength (2-mode, 8 sigma)
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from grpo_jax.study.report import analysis, frontier

ARM_COLOURS = {
    "exact_fwd/loss": "tab:blue",
    "exact_rev/loss": "tab:red",
    "k3/loss": "tab:cyan",
    "k2/loss": "tab:orange",
    "k1/reward": "tab:pink",
    "k1/loss": "tab:gray",
    "k3/reward": "tab:olive",
    "entropy": "tab:green",
}
LABELS = {
    "exact_fwd/loss": "forward KL",
    "exact_rev/loss": "reverse KL",
    "entropy": "entropy bonus",
}


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", "_".join(str(p) for p in parts)).strip("-").lower()


def _figure(rows: int, cols: int, w: float = 2.6, h: float = 2.3, **kw):
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    fig = Figure(figsize=(max(4.0, w * cols), max(3.0, h * rows)), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, **kw)


def _save(fig, outdir: str, name: str) -> str:
    path = os.path.join(outdir, name)
    fig.savefig(path, dpi=90)
    return path


def _band(records, policy, modality, arm, x_key, y_key, replicate=0):
    """Per strength: mean x, mean y and the y spread (1 sd over seeds), sorted by x."""
    by_s: dict[float, list] = {}
    for r in records:
        if (r["policy"], r["modality"], r["arm"], r["replicate"]) == (
            policy,
            modality,
            arm,
            replicate,
        ):
            by_s.setdefault(r["strength"], []).append((r["final"][x_key], r["final"][y_key]))
    if not by_s:
        return None
    pts = np.asarray(
        [
            [np.mean([p[0] for p in v]), np.mean([p[1] for p in v]), np.std([p[1] for p in v])]
            for _, v in sorted(by_s.items())
        ]
    )
    return pts[np.argsort(pts[:, 0])]


def _curve(ax, pts, colour, label):
    ax.plot(pts[:, 0], pts[:, 1], "-o", color=colour, ms=2.5, lw=1.2, label=label)
    ax.fill_between(
        pts[:, 0], pts[:, 1] - pts[:, 2], pts[:, 1] + pts[:, 2], color=colour, alpha=0.2, lw=0
    )


def _interaction_panel(ax, result, outcome):
    """Interaction I (forward - reverse, multimodal minus a unimodal baseline) against
    separation, with its Holm-adjusted interval: colour = policy class, line = baseline
    (solid: plain unimodal, dashed: matched-tail control), circles 2 modes, diamonds 4."""
    q1 = result["q1"]["primary"]["policies"]
    colours = {"tabular": "tab:purple", "gaussian": "tab:brown"}
    for i, (policy, v) in enumerate(q1.items()):
        baselines = list(dict.fromkeys(t["baseline"] for t in v["tests"]))
        for j, base in enumerate(baselines):
            for modes, marker in ((2, "o"), (4, "D")):
                rows = sorted(
                    (
                        t
                        for t in v["tests"]
                        if t["kind"] == "interaction"
                        and t["outcome"] == outcome
                        and t["baseline"] == base
                        and t.get("num_modes") == modes
                    ),
                    key=lambda t: t["separation"],
                )
                if not rows:
                    continue
                x = np.asarray([t["separation"] for t in rows]) + 0.1 * (2 * i + j)
                e = [t["estimate"] for t in rows]
                y = np.asarray([t["mean"] for t in e])
                err = np.asarray(
                    [[t["mean"] - t["low"] for t in e], [t["high"] - t["mean"] for t in e]]
                )
                ax.errorbar(
                    x,
                    y,
                    yerr=err,
                    fmt=marker,
                    ls="-" if j == 0 else "--",
                    ms=4,
                    capsize=2,
                    color=colours.get(policy),
                    label=f"{policy} vs {base}" if modes == 2 else None,
                )
    ax.axhline(0.0, color="k", lw=0.8)
    dial = result.get("dial_label")
    if dial is None:  # the one-token study's dial: separation, lock-on near 5.6 sigma
        ax.axvline(5.6, color="gray", ls=":", lw=0.8)
    ax.set_xlabel(f"{dial or 'mode separation (σ)'}; diamonds: 4 modes", fontsize=7)
    ax.set_ylabel(f"interaction I on {outcome}", fontsize=7)
    title = "I = Δ(multi) − Δ(baseline)\n(Holm intervals" + ("" if dial else "; dotted: 5.6σ")
    ax.set_title(title + ")", fontsize=8)
    ax.tick_params(labelsize=6)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=5)


def plot_glance(
    records, result, outdir, optima: Mapping[str, Any] | None = None, outcome: str = "off_target"
) -> str:
    """The one-glance figure (see the module docstring). `optima`: {modality: {"forward" |
    "reverse": {"reward": [...], outcome: [...]}}} closed-form curves (tabular)."""
    mods = analysis.modalities(records)
    policies = list(dict.fromkeys(r["policy"] for r in records))
    fig, axes = _figure(len(policies), len(mods) + 1, w=2.4, h=2.2)
    for i, policy in enumerate(policies):
        for j, (label, multi, _, _) in enumerate(mods):
            ax = axes[i, j]
            for arm in ("exact_fwd/loss", "exact_rev/loss"):
                pts = _band(records, policy, label, arm, "reward", outcome)
                if pts is not None:
                    _curve(ax, pts, ARM_COLOURS[arm], LABELS[arm])
            if policy in analysis.CLOSED_FORM_CLASSES and optima and label in optima:
                for d, arm in (("forward", "exact_fwd/loss"), ("reverse", "exact_rev/loss")):
                    c = optima[label][d]
                    ax.plot(c["reward"], c[outcome], "--", color=ARM_COLOURS[arm], lw=0.9)
            target = next(
                (
                    t["target"]
                    for t in result["targets"]
                    if t["policy"] == policy and t["modality"] == label
                ),
                None,
            )
            if target is not None:
                ax.axvline(target, color="gray", lw=0.6, ls=":")
            ax.set_title(f"{policy}: {label}" + (" (multi)" if multi else ""), fontsize=8)
            ax.set_xlabel("reward", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{outcome} (seed mean ± sd)", fontsize=7)
            ax.tick_params(labelsize=6)
        axes[i, 0].legend(fontsize=6)
    for i in range(len(policies)):
        axes[i, -1].set_visible(i == 0)
    _interaction_panel(axes[0, -1], result, outcome)
    fig.suptitle(
        "Forward vs reverse KL at matched reward (dashed: closed-form optima; "
        "dotted: the matched reward r*)",
        fontsize=9,
    )
    return _save(fig, outdir, "glance.png")


def _gaussian_optima(ax, summary, kl):
    """The Gaussian class's exact maxima on a reward-KL panel: the global maximum of each
    direction along beta (dashed), the other local maxima (x)."""
    key = {"exact_kl_rev": "kl_rev", "exact_kl_fwd": "kl_fwd"}[kl]
    for direction, arm in (("forward", "exact_fwd/loss"), ("reverse", "exact_rev/loss")):
        g = summary[direction]
        colour = ARM_COLOURS[arm]
        ax.plot(g["global"][key], g["global"]["reward"], "--", lw=0.8, color=colour)
        loc = np.asarray(g["local"], np.float64).reshape(-1, 6)  # beta, reward, kl_rev, ...
        col = 2 if key == "kl_rev" else 3
        ax.plot(loc[:, col], loc[:, 1], "x", ms=3, color=colour, alpha=0.6)


def plot_frontier(records, outdir, gaussian_optima=None) -> list[str]:
    """Reward against exact reverse / forward KL for every arm, per policy (seed means);
    the Gaussian class's exact optima overlaid (`gaussian_optima`: {modality: summary})."""
    mods = analysis.modalities(records)
    paths = []
    for policy in dict.fromkeys(r["policy"] for r in records):
        fig, axes = _figure(2, len(mods), w=2.4, h=2.2)
        arms = list(dict.fromkeys(r["arm"] for r in records if r["policy"] == policy))
        for j, (label, _, _, _) in enumerate(mods):
            for i, kl in enumerate(("exact_kl_rev", "exact_kl_fwd")):
                ax = axes[i, j]
                for arm in arms:
                    pts = _band(records, policy, label, arm, kl, "reward")
                    if pts is not None:
                        ax.plot(
                            pts[:, 0],
                            pts[:, 1],
                            "-o",
                            ms=2,
                            lw=1,
                            color=ARM_COLOURS.get(arm),
                            label=LABELS.get(arm, arm),
                        )
                if policy == "gaussian" and label in (gaussian_optima or {}):
                    _gaussian_optima(ax, gaussian_optima[label], kl)
                ax.set_title(label, fontsize=8)
                ax.set_xlabel(kl, fontsize=7)
                ax.set_xscale("symlog", linthresh=0.1)
                ax.tick_params(labelsize=6)
            axes[0, j].set_ylabel("reward", fontsize=7)
        axes[0, 0].legend(fontsize=6)
        fig.suptitle(f"{policy}: reward against exact KL (seed means over the sweep)", fontsize=9)
        paths.append(_save(fig, outdir, f"frontier_{_slug(policy)}.png"))
    return paths


def plot_mode_shares(records, outdir, modality: str | None = None) -> list[str]:
    """Mode shares over training (seed means) for the primary arms and the entropy arm at
    the middle strength of the sweep, one panel per policy x arm."""
    mods = [m for m in analysis.modalities(records) if m[3] >= 2]
    if not mods:
        return []
    modality = modality or mods[-1 if len(mods) < 3 else len(mods) // 2][0]
    policies = list(dict.fromkeys(r["policy"] for r in records))
    arms = [
        a
        for a in ("exact_fwd/loss", "exact_rev/loss", "entropy")
        if any(r["arm"] == a for r in records)
    ]
    fig, axes = _figure(len(policies), len(arms), w=2.6, h=2.2)
    for i, policy in enumerate(policies):
        for j, arm in enumerate(arms):
            recs = [
                r
                for r in records
                if (r["policy"], r["modality"], r["arm"], r["replicate"])
                == (policy, modality, arm, 0)
            ]
            strengths = sorted({r["strength"] for r in recs})
            if not strengths:
                continue
            mid = strengths[len(strengths) // 2]
            rr = [r for r in recs if r["strength"] == mid]
            steps = rr[0]["history"]["step"]
            shares = np.mean([r["history"]["mode_shares"] for r in rr], axis=0)
            ax = axes[i, j]
            for k in range(shares.shape[1]):
                ax.plot(steps, shares[:, k], label=f"mode {k}")
            ax.set_title(f"{policy}, {LABELS.get(arm, arm)}, strength {mid:.3g}", fontsize=8)
            ax.set_ylim(0, 1)
            ax.set_xlabel("step", fontsize=7)
            ax.tick_params(labelsize=6)
        axes[i, 0].set_ylabel("mode share (batch)", fontsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(f"Mode shares over training: {modality} (the last mode is rewarded)", fontsize=9)
    return [_save(fig, outdir, f"mode_shares_{_slug(modality)}.png")]


def _closed_form_along(optima, ref, outcome, fractions) -> np.ndarray:
    """Closed-form forward - reverse `outcome` at the rewards E_ref[R] + f (max R - E_ref[R])."""
    return np.asarray(
        [analysis.closed_form_delta(optima, outcome, frontier.target_of(ref, f)) for f in fractions]
    )


def plot_delta_frontier(result, outdir, optima=None) -> list[str]:
    """Forward - reverse on the primary outcome against the fraction of the attainable
    improvement: per policy class a panel, a line per reference coloured by its Z0 (seed
    means with 95 % intervals where matchable; dashed: the closed form, tabular)."""
    from matplotlib import colormaps  # pylint: disable=import-outside-toplevel

    fr = result.get("frontier") or {}
    if not fr.get("rows"):
        return []
    o = result.get("primary_outcome", "off_target")
    policies = list(dict.fromkeys(r["policy"] for r in fr["rows"]))
    fig, axes = _figure(1, len(policies), w=4.2, h=3.2)
    cmap = colormaps["viridis"]
    fine = np.linspace(0.05, 0.95, 19)
    for ax, policy in zip(axes[0], policies):
        for modality in dict.fromkeys(r["modality"] for r in fr["rows"]):
            rs = [r for r in fr["rows"] if r["policy"] == policy and r["modality"] == modality]
            colour = cmap(min(rs[0]["z0"] / 0.85, 1.0))
            style = "-o" if rs[0]["multimodal"] else "-s"
            pts = [(r["fraction"], r["estimate"]) for r in rs if r["estimate"]]
            if pts:
                f = np.asarray([p[0] for p in pts])
                m = np.asarray([p[1]["mean"] for p in pts])
                err = np.asarray(
                    [[p[1]["mean"] - p[1]["low"], p[1]["high"] - p[1]["mean"]] for p in pts]
                )
                ax.errorbar(f, m, yerr=err.T, fmt=style, ms=3, lw=1, color=colour, capsize=2,
                            label=f"{modality} (Z0 {rs[0]['z0']:.2f})")  # fmt: skip
            if policy in analysis.CLOSED_FORM_CLASSES and optima and modality in optima:
                cf = _closed_form_along(optima[modality], fr["refs"][modality], o, fine)
                ax.plot(fine, cf, "--", lw=0.8, color=colour)
        ax.axhline(0.0, color="k", lw=0.5)
        ax.set_title(f"{policy}: {o}, forward − reverse", fontsize=8)
        ax.set_xlabel("fraction of the attainable improvement in reward", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0, 0].set_ylabel(f"Δ {o}", fontsize=7)
    axes[0, 0].legend(fontsize=5)
    fig.suptitle(
        "Forward − reverse along the frontier (o: multimodal, s: unimodal; colour: Z0)",
        fontsize=9,
    )
    return [_save(fig, outdir, "delta_frontier.png")]


def make_figures(records, result, outdir, optima=None) -> dict[str, list[str]]:
    """Every figure; returns {kind: [paths]}."""
    os.makedirs(outdir, exist_ok=True)
    return {
        "glance": [
            plot_glance(
                records, result, outdir, optima, result.get("primary_outcome", "off_target")
            )
        ],
        "frontier": plot_frontier(records, outdir, result.get("gaussian_optima")),
        "delta_frontier": plot_delta_frontier(result, outdir, optima),
        "mode_shares": plot_mode_shares(records, outdir),
    }
