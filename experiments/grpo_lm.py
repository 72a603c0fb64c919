"""GRPO on the real model: SmolLM2-135M-Instruct names primes, under four regularisers.

  python experiments/grpo_lm.py --config grpo_jax/configs/grpo_lm.py --workdir runs/grpo_lm
  (``grpo_jax/configs/grpo_lm.py:full`` for a GPU)

The four regularisers (exact forward KL, exact reverse KL, k3 and k2 in the loss) are one
population trained by the shared host loop; before and after, each prompt's exact answer
distribution (what and how: `grpo_jax.study.grpo_lm`). Writes ``<workdir>/metrics.jsonl``,
``report.md`` and ``answers.json``; no checkpoints by default.
"""

from absl import flags
from ml_collections import config_flags

from grpo_jax.configs import grpo_lm as lm_config
from grpo_jax.run import config_utils
from grpo_jax.study import grpo_lm

_CONFIG = config_flags.DEFINE_config_file(
    "config", "grpo_jax/configs/grpo_lm.py", "GRPO-on-SmolLM2 config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv):
    del argv
    config = _CONFIG.value
    print(grpo_lm.run(config, lm_config.grpo_config(config), _WORKDIR.value))


if __name__ == "__main__":
    config_utils.run_app(main)
