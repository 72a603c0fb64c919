"""Train GRPO on a synthetic task.

  python experiments/train_grpo.py --config grpo_jax/configs/grpo.py:task=bandit \
      --config.loss.kl_estimator=k2 --workdir runs/bandit-k2

Writes <workdir>/metrics.jsonl, TensorBoard events under <workdir>/tb, checkpoints under
<workdir>/checkpoints (a re-run resumes from the last one; the last `train.max_to_keep`
are kept, `--config.train.max_to_keep=0` keeps every one) and <workdir>/summary.json. A rerun
whose config changes the computation is refused with a diff (`--overwrite` starts afresh);
a second process on the same workdir fails at once. SIGTERM (a scheduler's) saves a
checkpoint, releases the workdir and exits with status 143; rerun the command to resume. Disk: the reference (once) plus
max_to_keep checkpoints of the population's policy and Adam state (3x the parameters per
member: 0.5 MB per member for the default W2-scale model).
"""

from absl import flags, logging
from ml_collections import config_flags

from grpo_jax.run import config_utils, runner

_CONFIG = config_flags.DEFINE_config_file(
    "config", "grpo_jax/configs/grpo.py", "GRPO config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Discard a run of another config in --workdir."
)
_KEEP = flags.DEFINE_boolean(
    "keep_checkpoints", False, "Keep every checkpoint (train.max_to_keep = 0)."
)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    if _KEEP.value:
        with config.unlocked():
            config.train.max_to_keep = 0
    runner.train_and_evaluate(config, _WORKDIR.value, overwrite=_OVERWRITE.value)


if __name__ == "__main__":
    config_utils.run_app(main)
