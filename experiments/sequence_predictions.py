"""Stage 0 of the study in sequences: closed-form predictions on the fork task.

  python experiments/sequence_predictions.py --workdir runs/sequence_predictions

Exact enumeration, no training (grpo_jax/configs/sequence_predictions.py declares the
references and rewards; grpo_jax/study/sequence_predictions.py computes). Prints the table
and writes <workdir>/predictions.md and predictions.json (a few KB).
"""

import os
import time

from absl import flags
from ml_collections import config_flags

from grpo_jax.run import config_utils, jsonio
from grpo_jax.study import sequence_predictions

_CONFIG = config_flags.DEFINE_config_file(
    "config", "grpo_jax/configs/sequence_predictions.py", "Predictions config.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv):
    del argv
    start = time.time()
    config = _CONFIG.value
    rows = sequence_predictions.predict(config)
    text = sequence_predictions.markdown(rows, config)
    print(text)
    os.makedirs(_WORKDIR.value, exist_ok=True)
    jsonio.write_text_atomic(os.path.join(_WORKDIR.value, "predictions.md"), text + "\n")
    jsonio.write_json_atomic(os.path.join(_WORKDIR.value, "predictions.json"), rows)
    print(f"wrote {_WORKDIR.value}/predictions.md and .json in {time.time() - start:.1f} s")


if __name__ == "__main__":
    config_utils.run_app(main)
