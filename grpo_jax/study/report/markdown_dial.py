"""Report sections on the abandoned-mass dial and the Gaussian class's own optima:
forward - reverse along the frontier, its regression on Z0 with a modality term, Delta / Z0
of the unimodal references, and where the Gaussian runs end relative to the exact maxima
(grpo_jax/study/report/frontier.py, grpo_jax/study/report/gaussian_class.py)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from grpo_jax.study.report.tables import ci, fmt, table


def _ranges(betas: Sequence[float]) -> str:
    """A sorted list of betas: each one if at most 3 ('0.78, 1'), else 'first–last (n betas)'."""
    return ", ".join(f"{b:.2g}" for b in betas) if len(betas) <= 3 else (
        f"{betas[0]:.2g}–{betas[-1]:.2g} ({len(betas)} betas)"
    )  # fmt: skip


def frontier_section(result: Mapping[str, Any]) -> list[str]:
    """Delta at common fractions of the attainable improvement, per reference (with the
    closed form for the tabular class), then the Z0 regression and the relative margins."""
    fr = result.get("frontier") or {}
    if not fr:
        return []
    o = result.get("primary_outcome", "off_target")
    fractions = sorted({r["fraction"] for r in fr["rows"]})
    out = [
        f"### {o}: forward − reverse at common points of the frontier",
        "",
        "Each reference at the same fractions f of its attainable improvement, reward = "
        "E_ref[R] + f (max R − E_ref[R]) (95 % interval, seeds paired; – where too few seeds "
        "are matchable there). Z0: the reference's mass on zero-reward answers. For the "
        "tabular class (and the transformer, whose target it is at infinite capacity) the "
        "closed form at the same point follows in parentheses.",
        "",
    ]
    for policy in dict.fromkeys(r["policy"] for r in fr["rows"]):
        rows = []
        for modality in dict.fromkeys(r["modality"] for r in fr["rows"]):
            rs = {
                r["fraction"]: r
                for r in fr["rows"]
                if r["policy"] == policy and r["modality"] == modality
            }
            first = next(iter(rs.values()))
            cells = []
            for f in fractions:
                r = rs[f]
                cf = r.get("closed_form")
                cells.append(ci(r["estimate"]) + (f" ({cf:+.3f})" if cf is not None else ""))
            rows.append(
                [modality, fmt(first["z0"]), "yes" if first["multimodal"] else "no"] + cells
            )
        out += [f"**{policy}**", ""]
        out += table(["reference", "Z0", "multimodal"] + [f"f = {f:g}" for f in fractions], rows)
    return out + z0_section(fr)


def z0_section(fr: Mapping[str, Any]) -> list[str]:
    """The regression Delta = a + b Z0 + c multimodal per policy class, and Delta / Z0 of
    each unimodal reference against the relative margin."""
    rows, rel = [], []
    for z in fr.get("z0", []):
        fit = z.get("fit")
        rows.append(
            [
                z["policy"],
                len(z["references"]),
                ci(fit["z0"]) if fit else "–",
                ci(fit["multimodal"]) if fit else "–",
                ci(fit["intercept"]) if fit else "–",
                fmt(z.get("dispersion")),
                f"**{z['modality_adds']}**" if fit else z.get("why", "–"),
            ]
        )
        rel += [
            [z["policy"], r["modality"], fmt(r["z0"]), fmt(r["ratio"]), r["answer"]]
            for r in z["relative"]
        ]
    if not rows:
        return []
    f = fr["z0"][0]["fraction"]
    return (
        [
            f"### Does modality add once Z0 is in the model? (f = {f:g})",
            "",
            "Weighted least squares of Δ over the references comparable at f: Δ = a + b·Z0 "
            "+ c·multimodal (95 % t intervals; the covariance is scaled by the residual "
            "dispersion χ²/df when it exceeds 1). 'yes': c is significant with the "
            "predicted sign; 'no': c is equivalent to 0 within the primary outcome's margin "
            "(TOST).",
            "",
        ]
        + table(
            [
                "policy class",
                "references",
                "slope b (per unit Z0)",
                "modality c",
                "intercept a",
                "χ²/df",
                "modality adds?",
            ],
            rows,
        )
        + [
            "Unimodal references, Δ / Z0 against the declared relative margin ('within': "
            "its 90 % interval lies inside; 'beyond': its 95 % interval lies outside):",
            "",
        ]
        + table(["policy class", "reference", "Z0", "Δ / Z0", "relative margin"], rel)
    )


def gaussian_section(result: Mapping[str, Any]) -> list[str]:
    """Where the Gaussian class's primary runs end: at the global maximum of J over (mean,
    log-std) at their beta, at another local maximum, or unsettled, by starting point (one
    row per reference and arm, one column per start)."""
    basins = result.get("gaussian_basins", [])
    if not basins:
        return []
    starts = list(dict.fromkeys(r["start"] for r in basins))
    rows: dict[tuple, dict] = {}
    for r in basins:
        row = rows.setdefault((r["modality"], r["arm"]), {"bistable": r["bistable"]})
        row[r["start"]] = f"{r['global']} / {r['local']} / {r['unsettled']} of {r['runs']}"
    body = [
        [m, a] + [row.get(s, "–") for s in starts]
        + [_ranges(row["bistable"]) if row["bistable"] else "none"]
        for (m, a), row in rows.items()
    ]  # fmt: skip
    return [
        "### The Gaussian class against its exact optima, by starting point",
        "",
        "Each final run (replicate 0, every beta and seed) is assigned to the nearest "
        "maximum of J = E[R] − β·D over (mean, log-std) at its β (exact, "
        "grpo_jax/study/gaussian_optima.py; total variation; 'unsettled' beyond 0.1): "
        "runs at the global / at a local maximum / unsettled, per start ('fit': the "
        "reference's moment-matched Gaussian; 'rewarded_mode': on the rewarded answer; "
        "'middle': between the outer modes). Bistable: the betas of the run grid where J "
        "has two or more maxima (a local maximum on an unrewarded mode counts).",
        "",
    ] + table(["reference", "arm"] + [f"start: {s}" for s in starts] + ["bistable betas"], body)
