"""The study's declared design against its grid and its records, before and after a run.

check_design(config, arms)     # before any cell trains: a typo fails here
non_finite(records, config)    # the runs the analysis will drop as unmatchable
ANALYSIS_KEYS                  # keys that may change without recomputing any cell
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from grpo_jax.core.kl_choice import ENTROPY_ARM, KLChoice
from grpo_jax.study.report import analysis

# The study config's keys that only the analysis reads (no cell depends on them): changing
# one re-reports the stored cells instead of recomputing them.
ANALYSIS_KEYS = (
    "question",
    "prediction",
    "sign",
    "primary_outcome",
    "alpha",
    "outcomes",
    "match",
    "baselines",
    "min_matched_fraction",
    "ratio_laws_tol",
    "design_history",
    "power",
    "tv_target",
    "frontier",
    "dial_label",
    "gaussian",  # the report's toy figure
)


def check_design(config: Mapping[str, Any], arms: Sequence[str]) -> None:
    """The declared design against the grid, before any cell runs: a misspelt or missing
    analysis key, or a name that is not in the grid (an outcome, a baseline, an arm of a
    contrast), is a ValueError naming it and the valid values. `arms`: the grid's arms."""

    def need(ok, key, msg):
        if not ok:
            raise ValueError(f"study config: {key}: {msg}")

    for key in ("primary_outcome", "outcomes", "alpha", "sign", "match", "primary", "baselines"):
        need(key in config, key, "missing (declare it before the run)")
    outcomes = sorted(config["outcomes"])
    need(
        config["primary_outcome"] in config["outcomes"],
        "primary_outcome",
        f"{config['primary_outcome']!r} is not a declared outcome; valid: {', '.join(outcomes)}",
    )
    for o, spec in config["outcomes"].items():
        for k in ("margin", "low", "high"):
            need(k in spec, f"outcomes.{o}.{k}", "missing")
        need(float(spec["margin"]) > 0, f"outcomes.{o}.margin", "must be > 0")
    need(0 < float(config["alpha"]) < 1, "alpha", f"{config['alpha']!r} is not in (0, 1)")
    need(int(config["sign"]) in (1, -1), "sign", f"{config['sign']!r}; valid: 1, -1")
    for k in ("by", "check_by", "fraction"):
        need(k in config["match"], f"match.{k}", "missing")
    need(0 < float(config["match"]["fraction"]) < 1, "match.fraction", "must be in (0, 1)")
    unimodal = [m["label"] for m in config.get("modalities", []) if not m["multimodal"]]
    for b in config["baselines"]:
        need(b in unimodal, "baselines", f"{b!r} is not a unimodal reference of the grid; "
             f"valid: {', '.join(unimodal)}")  # fmt: skip
    for arm in (a for a in arms if a != ENTROPY_ARM):
        try:
            KLChoice.parse(arm)
        except ValueError as e:
            need(False, "primary/secondary", f"the arm {arm!r}: {e}")
    pairs = [p for ps in analysis.contrasts(config).values() for p in ps]
    for arm in {a for p in pairs for a in p}:
        need(arm in arms, "primary/secondary", f"{arm!r} is not an arm of the grid; valid: "
             f"{', '.join(arms)}")  # fmt: skip
    fr = config.get("frontier") or {}
    for f in list(fr.get("fractions", [])) + ([fr["z0_fraction"]] if "z0_fraction" in fr else []):
        need(0 < float(f) < 1, "frontier", f"fraction {f!r} is not in (0, 1)")


def non_finite(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> list[dict]:
    """Records whose declared outcomes (`fwd_kl_per_reward` aside: NaN by definition where a
    run gains too little reward) are not finite: {modality, policy, arm, strength, seed,
    replicate, outcomes}. The analysis drops them as unmatchable; the report says so."""
    out = []
    for r in records:
        bad = [
            o
            for o in list(config["outcomes"]) + ["reward"]
            if o != "fwd_kl_per_reward" and not math.isfinite(float(r["final"].get(o, 0.0)))
        ]
        if bad:
            keys = ("modality", "policy", "arm", "strength", "seed", "replicate")
            out.append(dict({k: r[k] for k in keys}, outcomes=bad))
    return out
