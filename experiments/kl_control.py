"""The target-KL controller in the one-token study: forward and reverse KL in the loss
compared at equal reverse KL (grpo_jax/configs/kl_control.py declares the check).

  python experiments/kl_control.py --workdir runs/kl_control

Prints the table and writes <workdir>/kl_control.md and kl_control.json (a few KB, plus
each population's run directory).
"""

import os
import time

from absl import flags
from ml_collections import config_flags

from grpo_jax.configs import kl_control as kl_control_config
from grpo_jax.run import config_utils, jsonio
from grpo_jax.study import kl_control

_CONFIG = config_flags.DEFINE_config_file(
    "config", "grpo_jax/configs/kl_control.py", "Controller check config.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv):
    del argv
    start = time.time()
    config = _CONFIG.value
    rows = kl_control.run(
        config,
        _WORKDIR.value,
        kl_control_config.population_config,
        kl_control_config.members(config),
        log=lambda *a: None,
    )
    text = kl_control.markdown(rows, config)
    print(text)
    jsonio.write_text_atomic(os.path.join(_WORKDIR.value, "kl_control.md"), text + "\n")
    jsonio.write_json_atomic(os.path.join(_WORKDIR.value, "kl_control.json"), rows)
    print(f"wrote {_WORKDIR.value}/kl_control.md and .json in {time.time() - start:.1f} s")


if __name__ == "__main__":
    config_utils.run_app(main)
