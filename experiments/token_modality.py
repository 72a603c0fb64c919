"""The premise, measured: are a real LM's next-token distributions unimodal?

  python experiments/token_modality.py --config grpo_jax/configs/token_modality.py --workdir runs/tm
  (``grpo_jax/configs/token_modality.py:full`` for a few hundred prompts on a GPU)

SmolLM2-135M-Instruct answers arithmetic, many-answer and open chat prompts; per generated
position the spread of its next-token distribution, per answer the exact distribution over
the numbers 0..99 (what is measured and how: `grpo_jax.study.token_modality`).

Writes ``<workdir>/report.md`` (table by prompt kind), ``positions.png``, ``answers.png`` and
``records.json`` (per-prompt numbers). Disk: under 1 MB.
"""

from __future__ import annotations

import json
import os

from absl import flags
from ml_collections import config_flags

from grpo_jax.run import config_utils
from grpo_jax.study import token_modality
from grpo_jax.study.report import token_modality as report

_CONFIG = config_flags.DEFINE_config_file(
    "config", "grpo_jax/configs/token_modality.py", "Token modality config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv):
    del argv
    config, workdir = _CONFIG.value, _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    result = token_modality.measure(config)
    with open(os.path.join(workdir, "records.json"), "w") as fh:
        json.dump(result, fh)
    report.figures(result["records"], workdir, config)
    print(report.write_report(result, config, workdir))
    print(f"wrote {workdir}/report.md, positions.png, answers.png, records.json")


if __name__ == "__main__":
    config_utils.run_app(main)
