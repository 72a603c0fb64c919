"""The gradient audit: which KL does each estimator and placement actually descend?

  python experiments/gradient_audit.py --config grpo_jax/configs/gradient_audit.py --workdir runs/audit

Exact enumeration (`grpo_jax.core.audit`; the table: `grpo_jax.study.report.audit`), no
sampling. Prints one table (token level, then
sequence level) and writes it to <workdir>/audit.md and <workdir>/audit.csv (disk: a few
KB).
"""

import csv
import os
import time

import jax
from absl import flags
from ml_collections import config_flags

from grpo_jax.run import config_utils
from grpo_jax.study.report import audit as audit_table

_CONFIG = config_flags.DEFINE_config_file(
    "config", "grpo_jax/configs/gradient_audit.py", "Audit config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)


def main(argv):
    del argv
    config = _CONFIG.value
    if config.x64:
        jax.config.update("jax_enable_x64", True)
    start = time.time()
    rows, header = audit_table.run_audit(config)
    table = audit_table.to_markdown(rows, header)
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
        writer = csv.DictWriter(f, fieldnames=[k for k, _ in audit_table.COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {_WORKDIR.value}/audit.md and audit.csv in {time.time() - start:.1f} s")


if __name__ == "__main__":
    config_utils.run_app(main)
