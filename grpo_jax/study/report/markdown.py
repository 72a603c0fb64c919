"""The study's report: `write_report` composes sections over one table helper and writes
report.md (everything), results.md (the verdicts, key effects and figures the README
includes) and report.json (the analysis); it returns what it wrote."""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Sequence

from grpo_jax.run import jsonio
from grpo_jax.study.report import analysis, figures, gaussian_class, inference, markdown_dial
from grpo_jax.study.report.tables import ci, fmt, table

README_BEGIN = "<!-- results.md: begin (written by experiments/study.py --publish) -->"
README_END = "<!-- results.md: end -->"
# The study in sequences' block (its own results.md, published beside the one-token one).
SEQUENCE_BEGIN = "<!-- sequence results.md: begin (written by experiments/study.py --publish) -->"
SEQUENCE_END = "<!-- sequence results.md: end -->"


def readme_block(results_text: str, docs: str = "docs/results") -> str:
    """results.md's text as the README shows it: figure paths moved under `docs`."""
    return re.sub(r"(!\[[^\]]*\]\()([^)/]+\))", rf"\g<1>{docs}/\g<2>", results_text).strip()


def _verdicts_section(result) -> list[str]:
    """The verdict table (one column per declared unimodal baseline), the deciding evidence
    and the robustness replicate."""
    baselines = list(
        dict.fromkeys(
            b for c in result["q1"].values() for v in c["policies"].values() for b in v["baselines"]
        )
    )
    rows, evidence = [], []
    for name, c in result["q1"].items():
        for p, v in c["policies"].items():
            rows.append(
                [f"Q1 {name}", p, f"**{v['verdict'].upper()}**"]
                + [v["baselines"][b]["verdict"] if b in v["baselines"] else "–" for b in baselines]
                + [fmt(v["seeds_to_decide"]) if v["seeds_to_decide"] > 0 else ""]
            )
            evidence += [
                f"- Q1 {name}, {p}, vs {b}: {bv['verdict'].upper()} — {bv['reason']}"
                for b, bv in v["baselines"].items()
            ]
        rows.append(
            [f"Q1 {name}", "overall", f"**{c['overall'].upper()}**"] + [""] * len(baselines) + [""]
        )
    out = ["## Verdicts", ""] + table(
        ["question", "policy class", "verdict"]
        + [f"vs {b}" for b in baselines]
        + ["seeds to decide"],
        rows,
    )
    out += (
        [
            "Deciding evidence (primary outcome, forward − reverse at matched reward; "
            "interaction I = Δ(multimodal) − Δ(baseline), Holm-adjusted):",
            "",
        ]
        + evidence
        + [""]
    )
    rob = result.get("robustness")
    if rob is not None:
        out += [
            "Robustness replicate (an independent block of seeds, the same grid): "
            f"{'every verdict survives' if rob['all_same'] else 'SOME VERDICTS CHANGE'}"
            f" ({sum(r['same'] for r in rob['rows'])} of {len(rob['rows'])} equal"
            + (
                ""
                if rob["all_same"]
                else ": "
                + "; ".join(
                    f"{r['contrast']}/{r['policy']} {r['main']} -> {r['replicate']}"
                    for r in rob["rows"]
                    if not r["same"]
                )
            )
            + ").",
            "",
        ]
    return out


def _design_section(config, notes) -> list[str]:
    o = config["outcomes"]
    rows = [
        [
            k + (" (primary)" if k == config["primary_outcome"] else ""),
            o[k]["text"],
            fmt(o[k]["margin"]),
            f"[{fmt(o[k]['low'])}, {fmt(o[k]['high'])}]",
        ]
        for k in analysis.outcome_order(config)
    ]
    m = config["match"]
    return (
        [
            "## Design (declared in grpo_jax/configs/study.py before the run)",
            "",
            f"**Question.** {config['question']}",
            "",
            f"**Prediction.** {config['prediction']}.",
            "",
            f"**Matched strength.** Each seed's beta sweep ({len(config['betas'])} "
            f"log-spaced values per arm, "
            f"{', '.join(fmt(b) for b in config['betas'])}; entropy bonus "
            f"{', '.join(fmt(a) for a in config['entropy_coefs'])}) is read at the reward "
            f"r* = r_lo + {m['fraction']} (r_hi − r_lo) after making reward monotone in "
            f"strength (pool-adjacent-violators) and interpolating linearly; as a check, "
            f"also at the reverse KL the primary arms reach at r*. Seeds whose sweep "
            f"does not reach r* drop out (counts in the tables).",
            "",
            "**Outcomes and margins.**",
            "",
        ]
        + table(["outcome", "what", "equivalence margin", "range (intervals clipped)"], rows)
        + [
            f"**Statistics.** Common random numbers (every arm and every reference "
            f"shares the seeds): differences and interactions are seed-paired, with "
            f"Student-t intervals clipped to the outcome's range. Per (policy class, "
            f"contrast), two Holm families: the primary outcome's tests (each baseline's "
            f"unimodal difference and every multimodal interaction against it; they "
            f"decide) and the other outcomes' (reported). Equivalence by TOST at alpha = "
            f"{config['alpha']}.",
            "",
            "**Decision rule.**",
            "",
            "```",
            inference.DECISION_RULE,
            "```",
            "",
            "**Scale.** " + notes.get("scale", ""),
            "",
        ]
        + ([f"**History.** {config['design_history']}", ""] if config.get("design_history") else [])
    )


def _targets_section(result) -> list[str]:
    rows = [
        [t["policy"], t["modality"], fmt(t["r_lo"]), fmt(t["r_hi"]), fmt(t["target"])]
        for t in result["targets"]
    ]
    return ["## Matched reward per modality", ""] + table(
        ["policy", "modality", "r_lo", "r_hi", "r*"], rows
    )


def _deltas_section(result, config) -> list[str]:
    out = ["## Forward − reverse at matched reward (Δ, seed-paired, 95% t interval)", ""]
    mods = list(dict.fromkeys(r["modality"] for r in result["deltas"][config["primary_outcome"]]))
    for policy in dict.fromkeys(r["policy"] for r in result["targets"]):
        rows = []
        for label in mods:
            row = [label]
            for o in analysis.outcome_order(config):
                e = next(
                    r["estimate"]
                    for r in result["deltas"][o]
                    if r["policy"] == policy and r["modality"] == label
                )
                row.append(ci(e) + (f" (n={e['n']})" if e else ""))
            kl = next(
                r["estimate"]
                for r in result["deltas_at_matched_kl"]
                if r["policy"] == policy and r["modality"] == label
            )
            row.append(ci(kl))
            rows.append(row)
        out += [f"**{policy}**", ""] + table(
            ["modality"]
            + analysis.outcome_order(config)
            + [f"{config['primary_outcome']} at matched KL_rev (check)"],
            rows,
        )
    return out


def _tests_section(result, name) -> list[str]:
    c = result["q1"].get(name)
    if not c:
        return []
    out = [f"## Q1 {name} contrast: every test of the family (Holm-adjusted)", ""]
    for policy, v in c["policies"].items():
        rows = [
            [
                t["kind"],
                t["baseline"],
                t["modality"],
                " − ".join(t["pair"]),
                t["outcome"],
                ci(t["estimate"]),
                fmt(t["estimate"]["p_adj"], 2),
            ]
            for t in v["tests"]
        ]
        skipped = sorted({f"{s['modality']} ({s['outcome']})" for s in v["not_estimable"]})
        out += [f"**{policy}**", ""] + table(
            [
                "test",
                "baseline",
                "modality",
                "contrast",
                "outcome",
                "estimate [adjusted interval]",
                "p (Holm)",
            ],
            rows,
        )
        if skipped:
            out += [
                "Not comparable at matched reward (fewer than half the seeds have both arms' "
                "sweeps reach r* with a realised run near it, `match.max_distance` / "
                f"`max_gap`; the frontier figures show these arms instead): "
                f"{', '.join(skipped)}.",
                "",
            ]
    return out


def _entropy_section(result, config) -> list[str]:
    rows = [
        [
            r["policy"],
            r["modality"],
            ci(r.get(config["primary_outcome"])),
            ci(r.get("mode_coverage")),
            ci(r.get("entropy")),
        ]
        for r in result["entropy_control"]
    ]
    if not rows:
        return []
    return [
        "## Control arm: forward KL − entropy bonus at matched reward",
        "",
        "Does forward KL keep what plain entropy regularisation (no reference) does "
        "not? Positive: forward keeps more.",
        "",
    ] + table(["policy", "modality", config["primary_outcome"], "mode_coverage", "entropy"], rows)


def _q2_section(result) -> list[str]:
    rows = [
        [r["arm"], r["policy"], r["modality"], ci(r["estimate"]), r["like"]]
        for r in result["behaved_like"]
    ]
    if not rows:
        return [
            "## Q2: estimator and placement",
            "",
            "Not in this configuration (the `full` config runs k3/loss, k2/loss, "
            "k1/reward, k1/loss and k3/reward). The gradient audit "
            "(experiments/gradient_audit.py) gives each estimator's bias exactly.",
            "",
        ]
    return [
        "## Q2: estimator and placement (does not decide Q1)",
        "",
        "Per seed, d = |o − o_forward| − |o − o_reverse| on the primary outcome at "
        "matched reward: negative means the arm behaves like the forward KL. Bias of "
        "each estimator: the gradient audit (experiments/gradient_audit.py).",
        "",
    ] + table(["arm", "policy", "modality", "d [95% interval]", "behaves like"], rows)


def _power_section(result) -> list[str]:
    rows = [
        [
            r["policy"],
            r["outcome"],
            fmt(r["margin"]),
            fmt(r["sd_unimodal"]),
            fmt(r["sd_interaction"]),
            r["seeds"],
            r["family"],
            r["seeds_for_equivalence"],
            r["seeds_for_interaction"],
        ]
        for r in result["power"]
    ]
    return [
        "## Power (from the observed per-seed spreads, power 0.8)",
        "",
        "Seeds for the unimodal difference to be shown equivalent within its margin "
        "(TOST, 90% interval) when it is 0, and for an interaction the size of the "
        "margin to be detected at the Holm family's Bonferroni level alpha/m.",
        "",
    ] + table(
        [
            "policy",
            "outcome",
            "margin",
            "sd Δ(uni)",
            "sd I",
            "seeds run",
            "family size m",
            "seeds for equivalence",
            "seeds to detect I = margin",
        ],
        rows,
    )


def _training_section(result) -> list[str]:
    t = result["training"]
    return [
        "## Training",
        "",
        f"Runs of the {', '.join(t.get('classes', ['tabular']))} class with a closed-form "
        f"target vs it (replicate 0): TV mean {fmt(t['tv_mean'])}, max {fmt(t['tv_max'])}; "
        f"{_within(t)} of {t['tv_count']} runs within TV {fmt(t['tv_target'])}. Updates skipped for an exactly zero gradient: mean "
        f"{fmt(t['zero_grad_frac_mean'])}, max {fmt(t['zero_grad_frac_max'])} of a run's "
        f"steps.",
        "",
    ]


def _figures_section(figs: Mapping[str, Sequence[str]], prefix: str = "") -> list[str]:
    out = ["## Figures", ""]
    for kind, paths in figs.items():
        out += [f"![{kind}]({prefix}{os.path.basename(p)})" for p in paths]
    return out + [""]


def _notes_section(notes) -> list[str]:
    return ["## Run", ""] + [f"- **{k}**: {v}" for k, v in notes.items()] + [""]


def results_markdown(result, config, notes, figs, prefix="") -> str:
    """results.md: what the README includes (verdicts, key effects, the glance figure)."""
    lines = ["### Verdicts", ""] + _verdicts_section(result)[2:]
    o = config["primary_outcome"]
    lines += [f"### Key effects: {o}, forward − reverse at matched reward (primary contrast)", ""]
    closed = result.get("closed_form") or {}
    for p, r in result["q1"]["primary"]["policies"].items():
        exact = bool(closed.get(p))  # the closed form at the class's r*
        rows = [
            [t["kind"], t["baseline"], t["modality"], ci(t["estimate"])]
            + ([_closed_form_of(t, closed[p])] if exact else [])
            + [fmt(t["estimate"]["p_adj"], 2)]
            for t in r["tests"]
            if t["outcome"] == o
        ]
        header = ["test", "baseline", "modality", "estimate [Holm interval]"]
        header += ["closed form at r*"] if exact else []
        lines += [f"**{p}**", ""] + table(header + ["p (Holm)"], rows)
    lines += _answers_section(result) + _claims_section(result)
    lines += markdown_dial.frontier_section(result)
    lines += markdown_dial.gaussian_section(result) + _ratio_laws_section(result)
    lines += [f"![glance]({prefix}{os.path.basename(figs['glance'][0])})", ""]
    lines += [
        f"*{notes.get('command', '')}* — {notes.get('machine', '')}; "
        f"{notes.get('wall time', '')}.",
        "",
    ]
    if notes.get("missing cells"):
        lines += [f"**Missing cells:** {notes['missing cells']}.", ""]
    if notes.get("non-finite outcomes"):
        lines += [f"**Non-finite outcomes:** {notes['non-finite outcomes']}.", ""]
    return "\n".join(lines)


# The seed's three specific claims, each as (claim, outcome, predicted sign of forward -
# reverse at matched reward).
SEED_CLAIMS = (
    ("reverse sharpens: lower entropy", "entropy", +1),
    ("reverse sharpens: more mass on the best answer", "pass_at_4", -1),
    ("forward covers: more mass on answers the reward abandons", "off_target", +1),
    ("forward explores between modes: more mass between them", "between", +1),
)


def _answers_section(result) -> list[str]:
    """Per contrast, policy class and baseline, the two questions one verdict mixes
    (`inference.two_answers`): does the direction matter on the unimodal reference, and
    does multimodality add to it."""
    rows = []
    for name, c in result["q1"].items():
        for p, v in c["policies"].items():
            for b, bv in v.get("baselines", {}).items():
                a = bv.get("answers") or {}
                rows.append(
                    [f"Q1 {name}", p, b, a.get("unimodal", "–"), a.get("multimodal_adds", "–")]
                )
    header = [
        "question",
        "policy class",
        "baseline",
        "direction matters on it?",
        "multimodality adds to it?",
    ]
    return [
        "### Two questions, answered apart (primary outcome; margins and Holm as in the "
        "verdicts)",
        "",
    ] + table(header, rows)


def _ratio_laws_section(result) -> list[str]:
    """The answer-ratio laws of the closed-form optima on the trained tabular policies."""
    rows = [
        [
            r["modality"],
            r["arm"],
            fmt(r["beta_ratio"], 3),
            fmt(r["spread"], 3),
            r["runs"],
            "passes" if r["ok"] else "FAILS",
        ]
        for r in result.get("ratio_laws", [])
    ]
    if not rows:
        return []
    tol = result["ratio_laws_tol"]
    return [
        "### Answer-ratio laws (GX-Chen et al., arXiv 2510.20817), tabular policy",
        "",
        "Under the reverse KL, log(π/π_ref) = R/β − log Z: the slope over the answers the "
        "policy holds gives β̂ (β̂/β should be 1); under either KL, answers of equal reward "
        "keep the reference's ratios: log(π/π_ref) is flat over the zero-reward answers "
        f"(spread, nats). Medians over seeds and β; declared tolerances |β̂/β − 1| ≤ "
        f"{tol['beta_ratio']}, spread ≤ {tol['spread']}.",
        "",
    ] + table(["reference", "arm", "β̂/β", "spread", "runs", "check"], rows)


def _claims_section(result) -> list[str]:
    """Each of the seed's claims on its own line per policy class: forward - reverse at
    matched reward at every comparable reference (95 % interval, not adjusted), marked
    ✓ where the interval excludes 0 with the predicted sign and ✗ with the other sign."""
    deltas = result.get("deltas", {})
    out = [
        "### The seed's claims, one by one (forward − reverse at matched reward; ✓ as "
        "predicted, ✗ the opposite, 95 % interval not adjusted)",
        "",
    ]
    rows = []
    for claim, outcome, sign in SEED_CLAIMS:
        by_policy = {}
        for d in deltas.get(outcome, []):
            by_policy.setdefault(d["policy"], []).append(d)
        for policy, ds in by_policy.items():
            cells, tally = [], {"✓": 0, "✗": 0, "": 0}
            for d in ds:
                e = d["estimate"]
                if not e:
                    continue
                mark = (
                    "✓"
                    if sign * e["low"] > 0 and sign * e["high"] > 0
                    else "✗" if sign * e["low"] < 0 and sign * e["high"] < 0 else ""
                )
                tally[mark] += 1
                cells.append(f"{d['modality']}: {e['mean']:+.3g}{mark}")
            reading = f"{tally['✓']} as predicted, {tally['✗']} opposite, {tally['']} neither"
            rows.append([claim, policy, "; ".join(cells) or "not comparable", reading])
    return out + table(["claim", "policy class", "per reference", "reading"], rows)


def _closed_form(result, config, optima) -> dict[str, dict[str, float]]:
    """{policy: {modality: closed-form forward - reverse primary outcome at the class's r*}}
    for the `analysis.CLOSED_FORM_CLASSES`."""
    out = {}
    for t in result.get("targets", []):
        if t["policy"] in analysis.CLOSED_FORM_CLASSES and t["modality"] in optima:
            delta = analysis.closed_form_delta(
                optima[t["modality"]], config["primary_outcome"], t["target"]
            )
            delta = None if math.isnan(delta) else float(delta)
            out.setdefault(t["policy"], {})[t["modality"]] = delta
    return out


def _frontier_closed_form(result, config, optima) -> None:
    """The closed-form forward - reverse at each frontier row's target (in place), for the
    `analysis.CLOSED_FORM_CLASSES`."""
    for r in (result.get("frontier") or {}).get("rows", []):
        if r["policy"] in analysis.CLOSED_FORM_CLASSES and r["modality"] in optima:
            d = analysis.closed_form_delta(
                optima[r["modality"]], config["primary_outcome"], r["target"]
            )
            r["closed_form"] = None if math.isnan(d) else float(d)


def _closed_form_of(test, closed) -> str:
    """The closed-form counterpart of a key-effect row: Δ for a unimodal row, Δ(multimodal)
    - Δ(baseline) for an interaction."""
    mine, base = closed.get(test["modality"]), closed.get(test["baseline"])
    if mine is None or (test["kind"] == "interaction" and base is None):
        return "–"
    return fmt(mine - base if test["kind"] == "interaction" else mine, 3)


def _within(t) -> str:
    """'n (fraction)' of the runs within the TV target (a count, then the fraction)."""
    if t["tv_within"] is None:
        return "–"
    return f"{round(t['tv_within'] * t['tv_count'])} ({fmt(t['tv_within'])})"


def write_report(
    records: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any],
    outdir: str,
    notes: Mapping[str, str] | None = None,
    optima: Mapping[str, Any] | None = None,
    vectors: Mapping[str, Any] | None = None,
    results_prefix: str = "",
) -> dict[str, Any]:
    """Analyse `records` under the declared `config`, write report.md, results.md,
    report.json and the figures to `outdir`; return the analysis plus "paths"."""
    os.makedirs(outdir, exist_ok=True)
    notes = dict(notes or {})
    vectors = vectors or {}
    everything, records = records, [r for r in records if r.get("start", "fit") == "fit"]
    result = analysis.analyse(records, config, vectors)
    result["primary_outcome"] = config["primary_outcome"]
    result["closed_form"] = _closed_form(result, config, optima or {})
    _frontier_closed_form(result, config, optima or {})
    tol = config.get("ratio_laws_tol", {"beta_ratio": 0.1, "spread": 0.1})
    result["ratio_laws"] = [] if tol is None else analysis.ratio_check(records, vectors, tol)
    result["ratio_laws_tol"] = tol
    result["dial_label"] = config.get("dial_label")
    result["gaussian_basins"] = gaussian_class.basins(everything, vectors)
    extra = config.get("gaussian_extra") or {}
    if "gaussian" in config.get("policies", []) and extra.get("optima_betas"):
        result["gaussian_optima"] = gaussian_class.optima_by_modality(
            vectors, extra["optima_betas"]
        )
    figs = figures.make_figures(records, result, outdir, optima)
    sections = [
        ["# The study: does the KL direction matter only for multimodal " "references?", ""],
        _verdicts_section(result),
        _answers_section(result),
        _claims_section(result),
        markdown_dial.frontier_section(result),
        markdown_dial.gaussian_section(result),
        _ratio_laws_section(result),
        _design_section(config, notes),
        _targets_section(result),
        _deltas_section(result, config),
        _tests_section(result, "primary"),
        _tests_section(result, "secondary"),
        _entropy_section(result, config),
        _q2_section(result),
        _power_section(result),
        _training_section(result),
        _figures_section(figs),
        _notes_section(notes),
    ]
    paths = {
        "report_md": os.path.join(outdir, "report.md"),
        "results_md": os.path.join(outdir, "results.md"),
        "report_json": os.path.join(outdir, "report.json"),
        "figures": {k: list(v) for k, v in figs.items()},
    }
    jsonio.write_text_atomic(paths["report_md"], "\n".join(sum(sections, [])))
    jsonio.write_text_atomic(
        paths["results_md"], results_markdown(result, config, notes, figs, results_prefix)
    )
    jsonio.write_json_atomic(paths["report_json"], dict(result, notes=notes))
    return dict(result, paths=paths)
