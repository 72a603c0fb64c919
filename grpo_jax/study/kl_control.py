"""The target-KL controller as a way to match the KL arms (grpo_jax/configs/kl_control.py):
one tabular population per reference, every arm x target x seed a member, evaluated exactly.

    rows = kl_control.run(config, workdir, population_config, members(config))
    text = kl_control.markdown(rows, config)
"""

from __future__ import annotations

import os

import numpy as np

from grpo_jax.run import runner
from grpo_jax.study import groups


def run(config, workdir: str, population_config, cells, log=print) -> list[dict]:
    """Train every reference's population (`population_config(config, task)`: its GRPO
    config; `cells`: the members, arm x target x seed; both in grpo_jax/configs/kl_control.py);
    one row per (reference, arm, target): the final exact reverse KL (mean, max relative
    error to the target), off-target mass and reward (means over seeds), the final beta."""
    rows = []
    for m in config.modalities:
        out = runner.run_population(
            population_config(config, m["task"]), cells, os.path.join(workdir, m["label"]), log=log
        )
        vec = groups.task_vectors(out.task)
        logp = groups.final_logprobs(out.setup.model, out.state.params, out.task)
        final = [groups.one_token_outcomes(lp, vec) for lp in logp]
        beta = np.asarray(out.state.beta, np.float64)
        for a in config.arms:
            for t in config.targets:
                idx = [
                    i
                    for i, c in enumerate(cells)
                    if c["loss.kl_choice"] == a and c["kl_control.target"] == t
                ]
                kl = np.asarray([final[i]["exact_kl_rev"] for i in idx])
                rows.append(
                    dict(
                        reference=m["label"],
                        arm=a,
                        target=float(t),
                        kl=float(kl.mean()),
                        rel_err=float(np.max(np.abs(kl / t - 1.0))),
                        off_target=float(np.mean([final[i]["off_target"] for i in idx])),
                        reward=float(np.mean([final[i]["reward"] for i in idx])),
                        beta=float(beta[idx].mean()),
                    )
                )
    return rows


def markdown(rows, config) -> str:
    """The table, with the check against `config.tolerance` and forward - reverse in
    off-target mass at each target."""
    ok = all(r["rel_err"] <= config.tolerance for r in rows)
    lines = [
        f"| reference | arm | target KL_rev | realised (mean) | max rel. error | beta | reward "
        f"| off-target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['reference']} | {r['arm']} | {r['target']:g} | {r['kl']:.4f} | "
            f"{r['rel_err']:.3f} | {r['beta']:.3g} | {r['reward']:.3f} | {r['off_target']:.4f} |"
        )
    fwd, rev = config.arms
    lines += ["", "Forward − reverse in off-target mass at equal reverse KL:", ""]
    by = {(r["reference"], r["arm"], r["target"]): r for r in rows}
    for ref in dict.fromkeys(r["reference"] for r in rows):
        cells = [
            f"{t:g}: {by[(ref, fwd, t)]['off_target'] - by[(ref, rev, t)]['off_target']:+.4f}"
            for t in config.targets
        ]
        lines.append(f"- {ref}: " + "; ".join(cells))
    verdict = "PASS" if ok else "FAIL"
    lines += [
        "",
        f"Check: every member's final exact reverse KL within {config.tolerance:.0%} of its "
        f"target: **{verdict}** (largest error {max(r['rel_err'] for r in rows):.3f}).",
    ]
    return "\n".join(lines)
