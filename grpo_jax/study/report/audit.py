"""The gradient audit's table: both levels of `grpo_jax.core.audit` on the config's random
problems (grpo_jax/configs/gradient_audit.py), which gradient each row descends, markdown.
Entry point: experiments/gradient_audit.py."""

from __future__ import annotations

import jax
import numpy as np

from grpo_jax.core import audit

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
    """A table cell: floats to 4 places (relative errors in e-notation), NaN as -."""
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        if key.startswith("rel_err"):
            return f"{value:.1e}"
        return f"{value:.4f}"
    return str(value)


def problems(config):
    """The token and sequence problems of an audit config (`config.seed`, `config.token`,
    `config.sequence`: policy, reference and older policy), as `core.audit` draws them."""
    k_tok, k_seq = jax.random.split(jax.random.key(config.seed))
    tok = audit.random_token_problem(
        k_tok, config.token.vocab_size, config.token.scale, config.token.old_scale
    )
    seq = audit.random_sequence_problem(
        k_seq,
        config.sequence.vocab_size,
        config.sequence.length,
        config.sequence.scale,
        config.sequence.old_scale,
    )
    return tok, seq


def run_audit(config):
    """Runs both levels; returns (rows as dicts of plain values, header lines)."""
    estimators = tuple(config.estimators)
    tok, seq = problems(config)
    res_tok = audit.token_audit(**tok, estimators=estimators)
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
    """The header lines as a list, then the rows as a markdown table."""
    lines = [f"- {h}" for h in header] + [""]
    lines.append("| " + " | ".join(title for _, title in COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(fmt(k, row[k]) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"
