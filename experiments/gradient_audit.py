"""The gradient audit: which KL does each estimator and placement actually descend?

  python experiments/gradient_audit.py --config grpo_jax/configs/gradient_audit.py --workdir runs/audit

Exact enumeration (grpo_jax.audit), no sampling. Prints one table (token level, then
sequence level) and writes it to <workdir>/audit.md and <workdir>/audit.csv (disk: a few
KB).
"""

import csv
import os
import sys
import time


from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from grpo_jax.run import config_utils  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", "grpo_jax/configs/gradient_audit.py", "Audit config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)

COLUMNS = [
    ("level", "level"),
    ("estimator", "estimator"),
    ("placement", "placement"),
    ("sampling", "sampling"),
    ("value_mean", "E[value]"),
    ("exact_kl", "exact KL (target)"),
    ("rel_err_rev", "rel err vs grad KL_rev"),
    ("cos_rev", "cos vs grad KL_rev"),
    ("rel_err_fwd", "rel err vs grad KL_fwd"),
    ("cos_fwd", "cos vs grad KL_fwd"),
    ("descends", "descends"),
    ("value_var", "var value"),
    ("grad_var", "var grad"),
]


def descends(row, result, tol):
    """Which gradient a row's expected gradient equals (within tol), if any."""
    import numpy as np

    g = row["grad_mean"]
    rev, fwd = result["grad_reverse"], result["grad_forward"]
    scale = max(np.linalg.norm(rev), np.linalg.norm(fwd))
    if np.linalg.norm(g) <= tol * scale:
        return "0"
    for name, t in (("KL_rev", rev), ("KL_fwd", fwd), ("KL_rev - KL_fwd", rev - fwd)):
        if np.linalg.norm(g - t) <= tol * np.linalg.norm(t):
            return name
    return "biased"


def fmt(key, value):
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        if key.startswith("rel_err"):
            return f"{value:.1e}"
        return f"{value:.4f}"
    return str(value)


def run_audit(config):
    """Runs both levels; returns (rows as dicts of plain values, header lines)."""
    import jax

    from grpo_jax.core import audit

    key = jax.random.key(config.seed)
    k_tok, k_seq = jax.random.split(key)
    estimators = tuple(config.estimators)
    tok = audit.random_token_problem(
        k_tok, config.token.vocab_size, config.token.scale, config.token.old_scale
    )
    res_tok = audit.token_audit(**tok, estimators=estimators)
    seq = audit.random_sequence_problem(
        k_seq,
        config.sequence.vocab_size,
        config.sequence.length,
        config.sequence.scale,
        config.sequence.old_scale,
    )
    res_seq = audit.sequence_audit(
        seq["logits"],
        seq["ref_logits"],
        seq["old_logits"],
        estimators=estimators,
        samplings=tuple(config.sequence.samplings),
    )
    rows = []
    for res in (res_tok, res_seq):
        for row in res["rows"]:
            row = dict(row, descends=descends(row, res, config.match_tol))
            rows.append({k: row[k] for k, _ in COLUMNS})
    header = [
        f"token level: V={config.token.vocab_size}, KL_rev={res_tok['kl_reverse']:.4f}, "
        f"KL_fwd={res_tok['kl_forward']:.4f}",
        f"sequence level: V={config.sequence.vocab_size}, T={config.sequence.length} "
        f"({config.sequence.vocab_size ** config.sequence.length} sequences), "
        f"KL_rev={res_seq['kl_reverse']:.4f}, KL_fwd={res_seq['kl_forward']:.4f}",
    ]
    return rows, header


def to_markdown(rows, header):
    lines = [f"- {h}" for h in header] + [""]
    lines.append("| " + " | ".join(title for _, title in COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(fmt(k, row[k]) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    config = _CONFIG.value
    import jax

    if config.x64:
        jax.config.update("jax_enable_x64", True)
    start = time.time()
    rows, header = run_audit(config)
    table = to_markdown(rows, header)
    print(table)
    os.makedirs(_WORKDIR.value, exist_ok=True)
    with open(os.path.join(_WORKDIR.value, "audit.md"), "w") as f:
        f.write("# Gradient audit (exact enumeration)\n\n")
        f.write(
            "Command: `python experiments/gradient_audit.py --config "
            "grpo_jax/configs/gradient_audit.py --workdir <dir>`\n\n"
        )
        f.write("Config:\n\n```\n" + str(config) + "```\n\n" + table)
    with open(os.path.join(_WORKDIR.value, "audit.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k, _ in COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {_WORKDIR.value}/audit.md and audit.csv in {time.time() - start:.1f} s")


if __name__ == "__main__":
    config_utils.run_app(main)
