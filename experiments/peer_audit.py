"""What each framework's KL term really descends (TRL, verl, OpenRLHF, tunix).

  python experiments/peer_audit.py --config grpo_jax/configs/peer_audit.py --workdir runs/peer_audit
  python experiments/peer_audit.py --config grpo_jax/configs/peer_audit.py --workdir runs/peer_audit --publish

Exact enumeration of every row of `grpo_jax.study.report.peer_audit.PEERS` (each framework's
KL term as `grpo_jax.core.audit.KLFormula`) at token and sequence level, on policy and with
samples from an older policy, plus the bias as the policy approaches the reference. Writes
<workdir>/peer_audit.md, peer_audit.csv and peer_audit_bias.png (a few hundred KB); with
--publish also docs/results/peer_audit.md and docs/results/peer_audit_bias.png (the README's
section is the former, pasted between its markers).
"""

import csv
import os
import shutil
import time

import jax
from absl import flags
from ml_collections import config_flags

from grpo_jax.run import config_utils
from grpo_jax.study.report import peer_audit

_CONFIG = config_flags.DEFINE_config_file(
    "config", "grpo_jax/configs/peer_audit.py", "Peer audit config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_PUBLISH = flags.DEFINE_bool("publish", False, "Also write docs/results/peer_audit.*")

CSV_KEYS = ("name", "level", "sampling", "cos_rev", "cos_fwd", "norm_rev", "rel_err_rev", "verdict")
FIGURE = "peer_audit_bias.png"


def main(argv):
    del argv
    config = _CONFIG.value
    if config.x64:
        jax.config.update("jax_enable_x64", True)
    start = time.time()
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    results = peer_audit.run(config)
    sweep, eps = peer_audit.bias_sweep(config)
    peer_audit.bias_figure(sweep, eps, os.path.join(workdir, FIGURE))
    text = peer_audit.markdown(config, results, sweep, eps, f"docs/results/{FIGURE}")
    print(text)
    with open(os.path.join(workdir, "peer_audit.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(workdir, "peer_audit.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_KEYS)
        writer.writeheader()
        writer.writerows({k: row[k] for k in CSV_KEYS} for row in results.values())
    if _PUBLISH.value:
        os.makedirs("docs/results", exist_ok=True)
        shutil.copy(os.path.join(workdir, "peer_audit.md"), "docs/results/peer_audit.md")
        shutil.copy(os.path.join(workdir, FIGURE), os.path.join("docs/results", FIGURE))
    print(f"wrote {workdir}/peer_audit.md, .csv, {FIGURE} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    config_utils.run_app(main)
