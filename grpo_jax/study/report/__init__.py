"""The study's report: inference, analysis, figures and Markdown.

    result = report.write_report(records, study_config, outdir, notes, optima)
    result["q1"]["primary"]["overall"]    # "holds" | "refuted" | "undecided"

Modules: `inference` (seed-paired estimates, Holm, TOST, power, matched strength, the
decision rule), `analysis` (the study's contrasts, interactions, families and verdicts),
`design` (the declared design checked against the grid before a run),
`frontier` (Delta along a common reward frontier, its regression on Z0), `gaussian_class`
(the Gaussian runs against their class's exact maxima), `figures` (the one-glance figure,
frontiers, mode shares), `markdown` with `markdown_dial` and `tables` (sections,
report.md / results.md / report.json). Everything here is NumPy on host data.
"""

from grpo_jax.study.report import analysis, design, figures, inference
from grpo_jax.study.report.markdown import write_report
from grpo_jax.study.report.tables import table

__all__ = ["analysis", "design", "figures", "inference", "table", "write_report"]
