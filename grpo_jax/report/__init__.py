"""The hypothesis report: effect sizes with bootstrap intervals, verdicts, figures, Markdown.

Input: a list of run records, one per task x modality x kl_choice x beta x seed::

  {"task": str, "modality": str, "multimodal": bool, "kl_choice": str, "beta": float,
   "seed": int,
   "final": {"reward", "exact_kl_rev", "exact_kl_fwd", "entropy", "mode_coverage": float,
             "pass_at_k": [float, ...] (one per ks), "mode_shares": [float, ...] (one per mode)},
   "history": {"step": [S], "reward": [S], "exact_kl_rev": [S], "exact_kl_fwd": [S],
               "entropy": [S], "mode_shares": [S][M]},
   "ks": [1, 2, 4, ...], "ref_mode_shares": [M],
   "bandit": {"final_policy", "optimum_reverse", "optimum_forward", "reference": [A]}  # optional
  }

``kl_choice`` is a `grpo_jax.kl_choice` name (``k3/loss``, ``exact_fwd/loss``,
``exact_rev/loss``, ``none``). A *cell* is (task, modality, beta). Runs whose KL choice is
``none`` or whose beta is 0 are the unregularised *baseline*: shown beside every cell of their
task x modality, never part of a spread. Everything here is plain numpy on host data (an I/O
edge, not jitted code). See ``docs/design.md``, section "The hypothesis report".

Modules: `records` (validation, the baseline test, selections), `stats` (bootstrap, effect
sizes, verdicts, nearest regulariser, bandit table), `figures` (PNG figures), `markdown`
(sections and `write_report`).

    result = report.write_report(records, outdir, notes)
    result["overall"]["verdict"]   # "holds" | "refuted" | "undecided"
"""

from grpo_jax.report.figures import (
    make_figures,
    plot_bandit,
    plot_entropy,
    plot_frontier,
    plot_mode_shares,
    plot_pass_at_k,
)
from grpo_jax.report.markdown import table, write_report
from grpo_jax.report.records import (
    BASELINE_CHOICE,
    OUTCOMES,
    REQUIRED_KEYS,
    is_baseline_record,
    validate_records,
)
from grpo_jax.report.stats import (
    BOOTSTRAP_METHODS,
    DEFAULT_THRESHOLDS,
    VERDICT_RULE,
    Threshold,
    bandit_table,
    behaved_like,
    behaved_like_summary,
    bootstrap_spread,
    effect_sizes,
    student_t_quantile,
    verdicts,
)

__all__ = [
    "BASELINE_CHOICE",
    "BOOTSTRAP_METHODS",
    "DEFAULT_THRESHOLDS",
    "OUTCOMES",
    "REQUIRED_KEYS",
    "Threshold",
    "VERDICT_RULE",
    "bandit_table",
    "behaved_like",
    "behaved_like_summary",
    "bootstrap_spread",
    "effect_sizes",
    "is_baseline_record",
    "make_figures",
    "plot_bandit",
    "plot_entropy",
    "plot_frontier",
    "plot_mode_shares",
    "plot_pass_at_k",
    "student_t_quantile",
    "table",
    "validate_records",
    "verdicts",
    "write_report",
]
