"""The study's analysis: matched-strength outcomes, seed-paired contrasts, interactions,
Holm families, verdicts, the robustness replicate, power, and the side questions.

Input: the study's records (grpo_jax/study/groups.py) and its config
(grpo_jax/configs/study.py). Output: a
JSON-serialisable dict (`analyse`) that markdown.py and figures.py render. Plain NumPy.
"""

from __future__ import annotations

import collections
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from grpo_jax.core.kl_choice import ENTROPY_ARM
from grpo_jax.study.report import frontier, inference as inf

UNIMODAL = "1 mode"


# Policy classes whose target is the closed form (the transformer's at infinite capacity:
# its distance to it is the capacity diagnostic); drawn and printed beside their runs.
CLOSED_FORM_CLASSES = ("tabular", "transformer")


def outcome_order(config) -> list[str]:
    """The declared outcomes, primary first."""
    primary = config["primary_outcome"]
    return [primary] + [o for o in config["outcomes"] if o != primary]


def _key(r) -> tuple:
    return (r["policy"], r["modality"], r["arm"], r["seed"], r["replicate"])


def curves(records: Sequence[Mapping[str, Any]]) -> dict[tuple, dict[str, np.ndarray]]:
    """{(policy, modality, arm, seed, replicate): {"strength": [n], outcome: [n], ...}}
    sorted by strength (one point per member of the sweep)."""
    groups: dict[tuple, list] = collections.defaultdict(list)
    for r in records:
        groups[_key(r)].append(r)
    out = {}
    for k, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["strength"])
        c = {"strength": np.asarray([r["strength"] for r in rs], np.float64)}
        for name in rs[0]["final"]:
            c[name] = np.asarray([r["final"][name] for r in rs], np.float64)
        out[k] = c
    return out


def modalities(records) -> list[tuple[str, bool, float, int]]:
    """(label, multimodal, separation, num_modes) in first-seen order."""
    seen = {}
    for r in records:
        seen.setdefault(
            r["modality"], (r["modality"], r["multimodal"], r["separation"], r["num_modes"])
        )
    return list(seen.values())


def target_reward(cv, policy, modality, primary, seeds, fraction, by="reward") -> dict[str, float]:
    """r* = r_lo + fraction (r_hi - r_lo): r_lo the larger of the two primary arms' median
    (over seeds) smallest reward along the sweep, r_hi the smaller of their median largest
    reward, so that every seed of both arms brackets r* in the typical case."""
    lo, hi = [], []
    for arm in primary:
        rs = [
            cv[(policy, modality, arm, s, 0)][by]
            for s in seeds
            if (policy, modality, arm, s, 0) in cv
        ]
        lo.append(np.median([x.min() for x in rs]))
        hi.append(np.median([x.max() for x in rs]))
    r_lo, r_hi = float(max(lo)), float(min(hi))
    return {"r_lo": r_lo, "r_hi": r_hi, "target": r_lo + fraction * (r_hi - r_lo)}


def matched(
    cv, policy, modality, arm, seeds, replicate, outcome, by, target, limits=(math.inf,) * 2
) -> np.ndarray:
    """Per-seed `outcome` at `by` = target (NaN where a seed's sweep does not reach it, or
    does not realise a run near it: `limits` = (max_distance, max_gap), `inf.at_matched`)."""
    out = []
    for s in seeds:
        c = cv.get((policy, modality, arm, s, replicate))
        out.append(
            math.nan
            if c is None
            else inf.at_matched(c["strength"], c[by], c[outcome], target, *limits)
        )
    return np.asarray(out)


def closed_form_delta(curves: Mapping[str, Mapping[str, Sequence[float]]], outcome, target):
    """Forward - reverse `outcome` of the closed-form KL-regularised optima at reward =
    `target` (`groups.optimum_curves`: each direction's outcomes along an ascending beta
    grid, reward among them), interpolated like the runs (`inf.at_matched`); NaN when
    `target` is outside a curve's reward range. The tabular class's systematic reference:
    what the full simplex gives exactly at the same r*."""
    vals = []
    for direction in ("forward", "reverse"):
        c = curves[direction]
        order = np.arange(len(c["reward"]))  # the curves run along ascending beta
        vals.append(inf.at_matched(order, c["reward"], c[outcome], target))
    return vals[0] - vals[1]


class _Study:
    """Everything `analyse` needs, computed once: config, curves, seeds, targets."""

    def __init__(self, records, config, vectors=None):
        self.config = config
        # Per reference: Z0 (mass on zero-reward answers), E_ref[R] and max R (frontier.py).
        self.refs = {label: frontier.reference_point(v) for label, v in (vectors or {}).items()}
        self.cv = curves(records)
        self.seeds = sorted({r["seed"] for r in records})
        self.policies = list(dict.fromkeys(r["policy"] for r in records))
        self.mods = modalities(records)
        self.arms = list(dict.fromkeys(r["arm"] for r in records))
        self.replicates = sorted({r["replicate"] for r in records})
        self.outcomes = outcome_order(config)
        self.primary = tuple(config["primary"])
        present = {m[0] for m in self.mods}
        self.baselines = list(config.get("baselines", [UNIMODAL]))
        self.missing_baselines = [b for b in self.baselines if b not in present]
        self.by = config["match"]["by"]
        self.check_by = config["match"]["check_by"]
        # Matchability (declared in the config; absent: every bracket counts).
        self.limits = tuple(
            float(config["match"].get(k, math.inf)) for k in ("max_distance", "max_gap")
        )
        frac = float(config["match"]["fraction"])
        self.targets = {
            (p, m[0]): target_reward(self.cv, p, m[0], self.primary, self.seeds, frac, self.by)
            for p in self.policies
            for m in self.mods
        }

    def bounds(self, outcome, order=1):
        o = self.config["outcomes"][outcome]
        width = float(o["high"]) - float(o["low"])
        return (-order * width, order * width)

    def values(self, policy, modality, arm, outcome, replicate=0, by=None, target=None):
        """Per-seed `outcome` at matched strength: at the target of `match.by` (default:
        r*, else `target`), or, for the check, at the `match.check_by` value the primary
        arms reach at r*."""
        by = by or self.by
        t = self.targets[(policy, modality)]["target"] if target is None else target
        if by != self.by:  # the check at matched KL: brackets in KL units, not reward's
            t = self._check_target(policy, modality, replicate, by)
            return matched(self.cv, policy, modality, arm, self.seeds, replicate, outcome, by, t)
        return matched(
            self.cv, policy, modality, arm, self.seeds, replicate, outcome, by, t, self.limits
        )

    def _check_target(self, policy, modality, replicate, by):
        with warnings.catch_warnings():  # all NaN where no seed reaches r*: NaN target
            warnings.simplefilter("ignore", RuntimeWarning)
            ks = [
                np.nanmedian(self.values(policy, modality, a, by, replicate)) for a in self.primary
            ]
        return float(np.mean(ks))


def _delta(st: _Study, policy, modality, a, b, outcome, replicate=0, by=None, target=None):
    """Seed-paired a - b at matched strength (r*, or `target`), or None when fewer than 2
    seeds reach it."""
    with np.errstate(invalid="ignore"):  # NaN where a seed does not reach r*
        d = st.values(policy, modality, a, outcome, replicate, by, target) - st.values(
            policy, modality, b, outcome, replicate, by, target
        )
    if np.isfinite(d).sum() < 2:
        return None, d
    return inf.paired(d, st.bounds(outcome)), d


def contrasts(config) -> dict[str, list[tuple[str, str]]]:
    """Q1's contrasts as (arm a, arm b) pairs, a - b: forward-type minus reverse-type; the
    study in sequences may add the sequence-level one (`sequence_contrast`: the exact
    forward KL along reference samples minus k1 in the reward)."""
    out = {"primary": [tuple(config["primary"])]}
    if config.get("with_secondary", False):
        k3, revs = config["secondary"][0], config["secondary"][1]
        out["secondary"] = [(k3, r) for r in revs]
    if config.get("sequence_contrast"):
        out["sequence"] = [tuple(config["sequence_contrast"])]
    return out


def _family(st: _Study, policy, pairs, replicate):
    """Every test of one (policy, contrast): for each declared unimodal baseline its
    difference, and the interaction (seed-paired) of each multimodal point against it, on
    every declared outcome. Two Holm families: the primary outcome's tests (they decide)
    and the other outcomes' (reported). A point where fewer than `min_matched_fraction` of
    the seeds reach the matched reward with a realised run near it (`at_matched`'s
    matchability limits) is not comparable there and left out (listed as such)."""
    rows, skipped = [], []
    need = max(2, math.ceil(float(st.config.get("min_matched_fraction", 0.0)) * len(st.seeds)))
    for a, b in pairs:
        for o in st.outcomes:
            for base in (b for b in st.baselines if b not in st.missing_baselines):
                uni, d_uni = _delta(st, policy, base, a, b, o, replicate)
                if uni is None or uni.n < need:
                    skipped.append(dict(modality=base, outcome=o, pair=[a, b]))
                    continue
                rows.append(
                    dict(
                        kind="unimodal",
                        baseline=base,
                        modality=base,
                        outcome=o,
                        pair=(a, b),
                        est=uni,
                    )
                )
                for label, multi, sep, k in st.mods:
                    if not multi:
                        continue
                    dm, d_multi = _delta(st, policy, label, a, b, o, replicate)
                    with np.errstate(invalid="ignore"):
                        d_int = d_multi - d_uni  # paired by seed: both must be matchable
                    if dm is None or dm.n < need or np.isfinite(d_int).sum() < need:
                        skipped.append(dict(modality=label, outcome=o, pair=[a, b]))
                        continue
                    est = inf.paired(d_int, st.bounds(o, order=2))
                    rows.append(
                        dict(
                            kind="interaction",
                            baseline=base,
                            modality=label,
                            separation=sep,
                            num_modes=k,
                            outcome=o,
                            pair=(a, b),
                            est=est,
                            delta=dm,
                        )
                    )
    alpha = float(st.config["alpha"])
    primary = st.config["primary_outcome"]
    inf.apply_holm([r["est"] for r in rows if r["outcome"] == primary], alpha)  # decides
    inf.apply_holm([r["est"] for r in rows if r["outcome"] != primary], alpha)  # reported
    return rows, skipped


def _combine_points(points) -> tuple[str, str]:
    """One baseline's verdict from its multimodal points (grpo_jax/configs/study.py): REFUTED if the
    unimodal difference exceeds its margin or every point is refuted; HOLDS if some point
    holds and none is refuted with the opposite sign; otherwise UNDECIDED."""
    beyond = [p for p in points if "exceeds its margin" in p["reason"]]
    held = [p for p in points if p["verdict"] == "holds"]
    refuted = [p for p in points if p["verdict"] == "refuted"]
    opposite = [p for p in refuted if "opposite" in p["reason"]]
    if not points:
        return "undecided", "no multimodal point is comparable at matched reward"
    if beyond:
        return "refuted", beyond[0]["reason"]
    if len(refuted) == len(points):
        return "refuted", (
            f"refuted at every point ({', '.join(p['modality'] for p in points)}"
            f"); " + refuted[0]["reason"]
        )
    if held and not opposite:
        return "holds", f"holds at {', '.join(p['modality'] for p in held)}; " + held[0]["reason"]
    word = "mixed" if held or refuted else "no point decides"
    return "undecided", (f"{word}: " + "; ".join(f"{p['modality']} {p['verdict']}" for p in points))


def _verdict(st: _Study, rows, primary_outcome) -> dict[str, Any]:
    """The decision rule on the primary outcome, per declared unimodal baseline and
    multimodal point; a policy class HOLDS only if it holds against every baseline and is
    REFUTED if refuted against any."""
    alpha = float(st.config["alpha"])
    margin = float(st.config["outcomes"][primary_outcome]["margin"])
    sign = int(st.config["sign"])
    per_base, points = {}, []
    for base in st.baselines:
        pts, answers = [], {"unimodal": "not comparable", "multimodal_adds": "not comparable"}
        for pair in dict.fromkeys(r["pair"] for r in rows):
            sel = [
                r
                for r in rows
                if r["outcome"] == primary_outcome and r["pair"] == pair and r["baseline"] == base
            ]
            uni = [r for r in sel if r["kind"] == "unimodal"]
            inter = [r for r in sel if r["kind"] == "interaction" and uni]
            for r in inter:
                v = inf.decide(r["est"], uni[0]["est"], margin, margin, alpha, sign)
                pts.append(dict(baseline=base, modality=r["modality"], pair=list(pair), **vars(v)))
            if uni and answers["unimodal"] == "not comparable":  # the contrast's first pair
                ests = [r["est"] for r in inter]
                answers = inf.two_answers(ests, uni[0]["est"], margin, margin, alpha, sign)
        verdict, reason = _combine_points(pts)
        if base in st.missing_baselines:
            verdict, reason = "undecided", f"the baseline {base!r} is not in the records"
        need = max([p["seeds_to_decide"] for p in pts] + [-1])
        per_base[base] = dict(
            verdict=verdict,
            reason=reason,
            seeds_to_decide=need if verdict == "undecided" else -1,
            answers=answers,
        )
        points += pts
    verdict = inf.overall([v["verdict"] for v in per_base.values()])
    reason = "; ".join(
        f"vs {b}: {v['verdict'].upper()} ({v['reason']})" for b, v in per_base.items()
    )
    need = max([v["seeds_to_decide"] for v in per_base.values()] + [-1])
    return dict(
        verdict=verdict,
        reason=reason,
        baselines=per_base,
        points=points,
        seeds_to_decide=need if verdict == "undecided" else -1,
    )


def _row_json(r) -> dict:
    out = {k: v for k, v in r.items() if k not in ("est", "delta")}
    out["pair"] = list(r["pair"])
    out["estimate"] = r["est"].as_dict()
    if "delta" in r:
        out["multimodal_delta"] = r["delta"].as_dict()
    return out


def q1(st: _Study, replicate=0) -> dict[str, Any]:
    """Verdicts per contrast and policy class, and overall per contrast."""
    out = {}
    for name, pairs in contrasts(st.config).items():
        per_policy = {}
        for p in st.policies:
            rows, skipped = _family(st, p, pairs, replicate)
            per_policy[p] = dict(
                _verdict(st, rows, st.config["primary_outcome"]),
                tests=[_row_json(r) for r in rows],
                not_estimable=skipped,
            )
        out[name] = dict(
            policies=per_policy, overall=inf.overall([v["verdict"] for v in per_policy.values()])
        )
    return out


def deltas_table(st: _Study, outcome, replicate=0, by=None) -> list[dict]:
    """Per policy x modality: matched forward - reverse difference on `outcome`."""
    a, b = st.primary
    rows = []
    for p in st.policies:
        for label, multi, sep, k in st.mods:
            est, _ = _delta(st, p, label, a, b, outcome, replicate, by)
            rows.append(
                dict(
                    policy=p,
                    modality=label,
                    multimodal=multi,
                    separation=sep,
                    num_modes=k,
                    target=st.targets[(p, label)],
                    estimate=None if est is None else est.as_dict(),
                )
            )
    return rows


def entropy_control(st: _Study) -> list[dict]:
    """Forward KL minus the entropy bonus at matched reward, per policy x modality, on the
    primary outcome and mode coverage (does forward KL keep what plain entropy does not?)."""
    if ENTROPY_ARM not in st.arms:
        return []
    rows = []
    for p in st.policies:
        for label, multi, sep, k in st.mods:
            row = dict(policy=p, modality=label, multimodal=multi)
            for o in (st.config["primary_outcome"], "mode_coverage", "entropy"):
                est, _ = _delta(st, p, label, st.primary[0], ENTROPY_ARM, o)
                row[o] = None if est is None else est.as_dict()
            rows.append(row)
    return rows


def behaved_like(st: _Study) -> list[dict]:
    """Q2: for each other KL arm, per policy x modality, whether its matched outcome sits
    nearer the forward or the reverse run: d = |o - o_fwd| - |o - o_rev| per seed (< 0:
    forward-like), with a t interval; 'unclear' when the interval spans 0."""
    fwd, rev = st.primary
    rows = []
    o = st.config["primary_outcome"]
    for arm in st.arms:
        if arm in (fwd, rev, ENTROPY_ARM):
            continue
        for p in st.policies:
            for label, multi, sep, k in st.mods:
                x = st.values(p, label, arm, o)
                d = np.abs(x - st.values(p, label, fwd, o)) - np.abs(
                    x - st.values(p, label, rev, o)
                )
                if np.isfinite(d).sum() < 2:
                    continue
                est = inf.paired(d)
                like = "forward" if est.high < 0 else "reverse" if est.low > 0 else "unclear"
                rows.append(
                    dict(
                        arm=arm,
                        policy=p,
                        modality=label,
                        multimodal=multi,
                        estimate=est.as_dict(),
                        like=like,
                    )
                )
    return rows


def power(st: _Study, q1_result) -> list[dict]:
    """Seeds needed per declared outcome, from the observed per-seed spreads (primary
    contrast): for the unimodal difference to be shown equivalent within its margin, and for
    an interaction of the size of the margin to be detected, at power `config.power`."""
    pw = float(st.config.get("power", 0.8))
    alpha = float(st.config["alpha"])
    primary = st.config["primary_outcome"]
    rows = []
    for p, v in q1_result["primary"]["policies"].items():
        for o in st.outcomes:
            margin = float(st.config["outcomes"][o]["margin"])
            uni = [
                t
                for t in v["tests"]
                if t["kind"] == "unimodal"
                and t["outcome"] == o
                and t["baseline"] == st.baselines[0]
            ]
            ints = [t for t in v["tests"] if t["kind"] == "interaction" and t["outcome"] == o]
            if not uni:
                continue
            sd_u = uni[0]["estimate"]["sd"]
            sd_i = max([t["estimate"]["sd"] for t in ints] + [0.0])
            m = sum(
                t["outcome"] == o if o == primary else t["outcome"] != primary for t in v["tests"]
            )  # the size of the Holm family the test is in
            rows.append(
                dict(
                    policy=p,
                    outcome=o,
                    margin=margin,
                    sd_unimodal=sd_u,
                    sd_interaction=sd_i,
                    seeds=len(st.seeds),
                    family=m,
                    seeds_for_equivalence=inf.seeds_for_halfwidth(sd_u, margin, 1 - 2 * alpha, pw),
                    seeds_for_interaction=inf.seeds_for_halfwidth(
                        sd_i, margin, 1 - alpha / max(m, 1), pw
                    ),
                )
            )
    return rows


def ratio_laws(probs, reward, ref, arm: str, beta: float, min_p: float = 1e-6) -> dict:
    """The answer-ratio laws of the KL-regularised optima (GX-Chen et al., arXiv
    2510.20817) on one final tabular policy `probs` [A] (`reward`, `ref` [A]): under the
    reverse KL log(pi/ref) = R / beta - log Z, so the slope of log(pi/ref) on R over the
    answers the policy holds (pi > min_p) gives beta_hat (reported as beta_hat / beta);
    under either KL, answers of equal reward keep the reference's ratios, so log(pi/ref) is
    flat over the zero-reward answers (`spread`: its standard deviation, nats)."""
    p, r, q = (np.asarray(x, np.float64) for x in (probs, reward, ref))
    held = (p > min_p) & (q > 0)
    y = np.log(p[held]) - np.log(q[held])
    zero = held & (r == 0)
    spread = float(np.std(np.log(p[zero]) - np.log(q[zero]))) if zero.sum() > 1 else None
    ratio = None
    if arm.startswith("exact_rev") and np.ptp(r[held]) > 0:
        slope = np.polyfit(r[held], y, 1)[0]
        ratio = float(1.0 / (slope * beta)) if slope > 0 else math.inf
    return {"beta_ratio": ratio, "spread": spread}


def ratio_check(records, vectors: Mapping[str, Mapping[str, Any]], tol) -> list[dict]:
    """`ratio_laws` on every tabular primary-arm run (replicate 0) of a modality in
    `vectors` ({label: `groups.task_vectors`}), summarised per modality and arm (medians
    over seeds and betas) against the declared tolerances `tol` = {"beta_ratio": relative,
    "spread": nats}."""
    rows = {}
    for r in records:
        if r["policy"] != "tabular" or r["replicate"] != 0 or r["modality"] not in vectors:
            continue
        if not r["arm"].startswith(("exact_rev", "exact_fwd")):
            continue
        v = vectors[r["modality"]]
        law = ratio_laws(r["policy_probs"], v["reward"], v["ref"], r["arm"], r["strength"])
        rows.setdefault((r["modality"], r["arm"]), []).append(law)
    out = []
    for (modality, arm), laws in rows.items():
        med = lambda k: (float(np.median([x[k] for x in laws])) if laws[0][k] is not None else None)
        b, sp = med("beta_ratio"), med("spread")
        ok = (sp is None or sp <= tol["spread"]) and (
            b is None or abs(b - 1.0) <= tol["beta_ratio"]
        )
        out.append(dict(modality=modality, arm=arm, beta_ratio=b, spread=sp, runs=len(laws), ok=ok))
    return out


def training_quality(records, tv_target: float = 0.05) -> dict[str, Any]:
    """How close the primary runs came to their closed-form optima (`CLOSED_FORM_CLASSES`),
    and how often
    an update was skipped for an exactly zero gradient."""
    with_target = [r for r in records if r.get("tv_to_optimum") is not None and r["replicate"] == 0]
    tv = np.asarray([r["tv_to_optimum"] for r in with_target], np.float64)
    zg = np.asarray([r["zero_grad_frac"] for r in records], np.float64)
    return {
        "tv_mean": float(tv.mean()) if tv.size else None,
        "tv_max": float(tv.max()) if tv.size else None,
        "tv_target": tv_target,
        "tv_within": float(np.mean(tv <= tv_target)) if tv.size else None,
        "tv_count": int(tv.size),
        "classes": list(dict.fromkeys(r["policy"] for r in with_target)),
        "zero_grad_frac_mean": float(zg.mean()),
        "zero_grad_frac_max": float(zg.max()),
    }


def robustness(base: Mapping[str, Any], replicate: Mapping[str, Any]) -> dict[str, Any]:
    """Whether every verdict of the replicate equals the main run's."""
    pairs = []
    for name, c in base.items():
        for p, v in c["policies"].items():
            w = replicate[name]["policies"][p]
            pairs.append(
                dict(
                    contrast=name,
                    policy=p,
                    main=v["verdict"],
                    replicate=w["verdict"],
                    same=v["verdict"] == w["verdict"],
                )
            )
        pairs.append(
            dict(
                contrast=name,
                policy="overall",
                main=c["overall"],
                replicate=replicate[name]["overall"],
                same=c["overall"] == replicate[name]["overall"],
            )
        )
    return {"rows": pairs, "all_same": all(p["same"] for p in pairs)}


def along_frontier(st: _Study) -> dict[str, Any]:
    """Forward - reverse on the primary outcome at common fractions of the attainable
    improvement (`config.frontier.fractions`), and the Z0 regression at the declared one
    (frontier.py); empty without the references' vectors or the `frontier` section."""
    spec = st.config.get("frontier")
    if not spec or not st.refs:
        return {}
    o = st.config["primary_outcome"]
    need = max(2, math.ceil(float(st.config.get("min_matched_fraction", 0.0)) * len(st.seeds)))

    def delta(policy, modality, target):
        est, _ = _delta(st, policy, modality, *st.primary, o, target=target)
        return est if est is not None and est.n >= need else None

    rows = frontier.frontier_rows(delta, st.policies, st.mods, st.refs, spec["fractions"])
    margin = float(st.config["outcomes"][o]["margin"])
    z0 = frontier.z0_rows(
        rows,
        float(spec["z0_fraction"]),
        margin,
        float(spec["relative_margin"]),
        float(st.config["alpha"]),
        int(st.config["sign"]),
    )
    return {"rows": rows, "z0": z0, "refs": st.refs}


def analyse(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any], vectors=None) -> dict:
    """The whole analysis (see the module docstring). `vectors`: {modality:
    `groups.task_vectors`} for the frontier and Z0 analysis."""
    st = _Study(records, config, vectors)
    main = q1(st, 0)
    out = {
        "targets": [dict(policy=p, modality=m, **t) for (p, m), t in st.targets.items()],
        "q1": main,
        "deltas": {o: deltas_table(st, o) for o in st.outcomes},
        "deltas_at_matched_kl": deltas_table(st, config["primary_outcome"], by=st.check_by),
        "entropy_control": entropy_control(st),
        "behaved_like": behaved_like(st),
        "power": power(st, main),
        "training": training_quality(records, float(config.get("tv_target", 0.05))),
        "seeds": len(st.seeds),
        "frontier": along_frontier(st),
    }
    if 1 in st.replicates:
        out["robustness"] = robustness(main, q1(st, 1))
    return out
