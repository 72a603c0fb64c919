"""Figures of the report: PNGs drawn with ``matplotlib.figure.Figure`` directly (Agg canvas,
no pyplot global state), seed means of the run records per (task, modality, beta, KL choice).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from grpo_jax.report.records import (
    BASELINE_CHOICE,
    betas,
    choices,
    final_values,
    is_baseline_record,
    select,
    task_modalities,
    unique,
    validate_records,
)

KL_AXIS_LABELS = {"exact_kl_rev": "exact KL[π||π_ref]", "exact_kl_fwd": "exact KL[π_ref||π]"}


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", "_".join(str(p) for p in parts)).strip("-").lower()


def _colours(names: Sequence[str]) -> dict:
    from matplotlib import colormaps  # pylint: disable=g-import-not-at-top

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(names)}


def _new_figure(rows: int, cols: int, w: float = 3.0, h: float = 2.3):
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    fig = Figure(figsize=(max(4.0, w * cols), max(3.0, h * rows)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig, outdir, name) -> str:
    path = os.path.join(outdir, name)
    fig.savefig(path, dpi=90)
    return path


def _modalities_of(records, task) -> list[tuple[str, str, bool]]:
    return [tm for tm in task_modalities(records) if tm[0] == task]


def _columns(recs) -> list[str]:
    """Panel columns: the regularised KL choices, then the baseline if there is one."""
    has_base = any(is_baseline_record(r) for r in recs)
    return choices(recs) + ([BASELINE_CHOICE] if has_base else [])


def _panel_records(records, task, modality, beta, choice) -> list[dict]:
    """Records of one panel: the baseline's for the baseline column, else (beta, choice)'s."""
    if choice == BASELINE_CHOICE:
        return select(records, task, modality, baseline=True)
    return select(records, task, modality, beta=beta, choice=choice, baseline=False)


def _panel_title(choice, beta) -> str:
    return f"{choice}" + ("" if choice == BASELINE_CHOICE else f", β={beta:g}")


def _mean_history(recs, key) -> tuple[np.ndarray, np.ndarray]:
    """Seed-mean history ``[S, ...]`` (truncated to the shortest run) and its steps ``[S]``."""
    hs = [
        np.asarray(r["history"][key], np.float64)
        for r in recs
        if r.get("history", {}).get(key) is not None
    ]
    if not hs:
        return np.zeros((0,)), np.zeros((0,))
    s = min(h.shape[0] for h in hs)
    steps = [np.asarray(r["history"]["step"][:s], np.float64) for r in recs if r.get("history")]
    return np.mean([h[:s] for h in hs], axis=0), steps[0]


def _mode_shares_axis(ax, rr, colours) -> None:
    shares, steps = _mean_history(rr, "mode_shares")
    if shares.ndim == 2 and shares.shape[0]:
        ax.stackplot(steps, shares.T, colors=colours[: shares.shape[1]], alpha=0.85)
        for y in np.cumsum(rr[0].get("ref_mode_shares") or [])[:-1]:
            ax.axhline(y, color="k", lw=0.6, ls="--")
    ax.set_ylim(0, 1)


def plot_mode_shares(records, outdir) -> list[str]:
    """Per (task, modality) with >= 2 modes: stacked seed-mean mode shares over training.

    Grid: rows = betas, columns = KL choices (+ the baseline, repeated on each row).
    """
    from matplotlib import colormaps  # pylint: disable=g-import-not-at-top

    paths = []
    for task, modality, _ in task_modalities(records):
        recs = select(records, task, modality)
        if not recs or min(len(r["final"]["mode_shares"]) for r in recs) < 2:
            continue
        bs, cols = betas(records, task, modality), _columns(recs)
        fig, axes = _new_figure(max(1, len(bs)), len(cols), w=2.4, h=1.9)
        n_modes = len(recs[0]["final"]["mode_shares"])
        colours = [colormaps["viridis"](i / max(1, n_modes - 1)) for i in range(n_modes)]
        for i, beta in enumerate(bs or [0.0]):
            for j, choice in enumerate(cols):
                ax = axes[i, j]
                _mode_shares_axis(ax, _panel_records(records, task, modality, beta, choice),
                                  colours)
                ax.set_title(_panel_title(choice, beta), fontsize=8)
                ax.tick_params(labelsize=7)
        fig.suptitle(
            f"{task} / {modality}: mode shares over training (dashed: reference)", fontsize=9
        )
        paths.append(_save(fig, outdir, f"mode_shares_{_slug(task, modality)}.png"))
    return paths


def _frontier_axis(ax, records, task, modality, kl, colours) -> None:
    """Final reward against final ``kl``: dots per seed, a line over betas per KL choice."""
    for choice in choices(select(records, task, modality, baseline=False)):
        xs, ys = [], []
        for beta in betas(records, task, modality):
            rr = select(records, task, modality, beta=beta, choice=choice, baseline=False)
            if rr:
                x, y = final_values(rr, kl), final_values(rr, "reward")
                ax.scatter(x, y, s=6, alpha=0.3, color=colours[choice])
                xs.append(x.mean())
                ys.append(y.mean())
        ax.plot(xs, ys, "o-", ms=3, lw=1, color=colours[choice], label=choice)
    base = select(records, task, modality, baseline=True)
    if base:
        ax.plot([final_values(base, kl).mean()], [final_values(base, "reward").mean()],
                "k*", ms=8, label=BASELINE_CHOICE)
    ax.set_xlabel(KL_AXIS_LABELS[kl], fontsize=8)
    ax.set_ylabel("reward", fontsize=8)
    ax.set_title(modality, fontsize=8)
    ax.tick_params(labelsize=7)


def plot_frontier(records, outdir) -> list[str]:
    """Per task: final reward against final exact KL (reverse | forward), per modality row."""
    paths = []
    colours = _colours(choices(records))
    for task in unique(r["task"] for r in records):
        tms = _modalities_of(records, task)
        fig, axes = _new_figure(len(tms), 2, w=3.6, h=2.6)
        for i, (_, modality, _) in enumerate(tms):
            for j, kl in enumerate(("exact_kl_rev", "exact_kl_fwd")):
                _frontier_axis(axes[i, j], records, task, modality, kl, colours)
        axes[0, 1].legend(fontsize=6, loc="best")
        fig.suptitle(f"{task}: reward vs exact KL (lines join betas; dots are seeds)", fontsize=9)
        paths.append(_save(fig, outdir, f"frontier_{_slug(task)}.png"))
    return paths


def _lines_grid(records, outdir, name, title, xy_fn, xlabel, ylabel, logx=False) -> list[str]:
    """Per task: rows = modalities, columns = betas; one seed-mean line per KL choice."""
    paths = []
    colours = _colours(choices(records))
    for task in unique(r["task"] for r in records):
        tms = _modalities_of(records, task)
        bs = sorted({b for _, m, _ in tms for b in betas(records, task, m)}) or [0.0]
        fig, axes = _new_figure(len(tms), len(bs))
        for i, (_, modality, _) in enumerate(tms):
            base = select(records, task, modality, baseline=True)
            for j, beta in enumerate(bs):
                ax = axes[i, j]
                for choice in choices(select(records, task, modality, baseline=False)):
                    rr = select(records, task, modality, beta=beta, choice=choice, baseline=False)
                    if rr:
                        ax.plot(*xy_fn(rr), lw=1.2, color=colours[choice], label=choice)
                if base:
                    ax.plot(*xy_fn(base), "--", lw=1.0, color="0.4", label=BASELINE_CHOICE)
                if logx:
                    ax.set_xscale("log", base=2)
                ax.set_title(f"{modality}, β={beta:g}", fontsize=8)
                ax.set_xlabel(xlabel, fontsize=8)
                ax.set_ylabel(ylabel, fontsize=8)
                ax.tick_params(labelsize=7)
        axes[0, -1].legend(fontsize=6, loc="best")
        fig.suptitle(f"{task}: {title}", fontsize=9)
        paths.append(_save(fig, outdir, f"{name}_{_slug(task)}.png"))
    return paths


def plot_pass_at_k(records, outdir) -> list[str]:
    """Per task: seed-mean final pass@k against k."""

    def xy(rr):
        return (
            np.asarray(rr[0]["ks"], np.float64),
            np.mean([np.asarray(r["final"]["pass_at_k"], np.float64) for r in rr], axis=0),
        )

    return _lines_grid(
        records, outdir, "pass_at_k", "pass@k against k (dashed: β=0)", xy, "k", "pass@k", logx=True
    )


def plot_entropy(records, outdir) -> list[str]:
    """Per task: seed-mean policy entropy over training."""

    def xy(rr):
        h, steps = _mean_history(rr, "entropy")
        return steps, h

    return _lines_grid(
        records, outdir, "entropy", "entropy over training (dashed: β=0)", xy, "step", "entropy"
    )


def _bandit_axis(ax, rr, opt) -> None:
    """Seed-mean final policy (bars, min-max whiskers) against the reference and both optima
    (taken from ``opt``, the cell's regularised records, else from ``rr``)."""
    pol = np.array([r["bandit"]["final_policy"] for r in rr], np.float64)
    a = np.arange(pol.shape[1])
    mean = pol.mean(0)
    ax.bar(a, mean, color="0.75", yerr=np.stack([mean - pol.min(0), pol.max(0) - mean]),
           error_kw={"lw": 0.6})
    b0 = opt[0]["bandit"] if opt else rr[0]["bandit"]
    ax.plot(a, b0["reference"], "_", color="0.3", ms=10, mew=2, label="reference")
    ax.plot(a, b0["optimum_reverse"], "o", color="tab:blue", ms=3, label="rev-KL optimum")
    ax.plot(a, b0["optimum_forward"], "s", color="tab:red", ms=3, label="fwd-KL optimum")


def plot_bandit(records, outdir) -> list[str]:
    """Per task with bandit entries: final policies (bars, seed mean) vs closed-form optima.

    Grid: rows = (modality, beta), columns = KL choices (+ baseline). Markers: reference
    (grey), reverse-KL optimum (blue), forward-KL optimum (red) for that beta.
    """
    paths = []
    recs = [r for r in records if r.get("bandit")]
    for task in unique(r["task"] for r in recs):
        rows = [(m, b) for _, m, _ in _modalities_of(recs, task) for b in betas(recs, task, m)]
        cols = _columns([r for r in recs if r["task"] == task])
        if not rows or not cols:
            continue
        fig, axes = _new_figure(len(rows), len(cols), w=2.4, h=1.9)
        for i, (modality, beta) in enumerate(rows):
            for j, choice in enumerate(cols):
                ax = axes[i, j]
                rr = _panel_records(recs, task, modality, beta, choice)
                if rr:
                    _bandit_axis(ax, rr, select(recs, task, modality, beta=beta, baseline=False))
                ax.set_title(_panel_title(choice, beta) + f"\n{modality}", fontsize=7)
                ax.tick_params(labelsize=6)
        axes[0, 0].legend(fontsize=5, loc="best")
        fig.suptitle(
            f"{task}: final bandit policies (bars, min-max over seeds) vs closed-form optima",
            fontsize=9,
        )
        paths.append(_save(fig, outdir, f"bandit_{_slug(task)}.png"))
    return paths


def make_figures(records: Sequence[Mapping[str, Any]], outdir: str) -> dict[str, list[str]]:
    """Every figure as PNG under ``outdir``; returns ``{kind: [paths]}``."""
    records = validate_records(records)
    os.makedirs(outdir, exist_ok=True)
    return {
        "mode_shares": plot_mode_shares(records, outdir),
        "frontier": plot_frontier(records, outdir),
        "pass_at_k": plot_pass_at_k(records, outdir),
        "entropy": plot_entropy(records, outdir),
        "bandit": plot_bandit(records, outdir),
    }
