"""The real model at answer level: Stage 0 (closed-form predictions), Stage 1
(exact-gradient training against them) and Stage 2 (sampled GRPO, evaluated exactly) on
SmolLM2-135M-Instruct's number answers.

  python experiments/answer_level.py --workdir runs/answer_level --stage=predict
  python experiments/answer_level.py --workdir runs/answer_level --stage=train
  python experiments/answer_level.py --workdir runs/answer_level            # both
  python experiments/answer_level.py --workdir runs/answer_level --stage=report  # redraw
  python experiments/answer_level.py --workdir runs/answer_level_sampled \
      --config grpo_jax/configs/answer_level.py:sampled --stage=sampled    # Stage 2 (GPU)

What and how: grpo_jax/study/answer_level.py; the declared contrast, outcomes, margins and
decision rule: grpo_jax/configs/answer_level.py. Writes ``predictions.{json,md,png}`` and
``training.{json,md,png}`` in the workdir, one run directory per trainable subset; Stage 2
(grpo_jax/study/answer_level_sampled.py) writes ``sampled.{json,md}`` and its run
directory ``sampled/`` (a rerun resumes it).
"""

from absl import flags
from ml_collections import config_flags

from grpo_jax.configs import answer_level as al_config
from grpo_jax.run import config_utils
from grpo_jax.study import answer_level, answer_level_sampled

_CONFIG = config_flags.DEFINE_config_file(
    "config", "grpo_jax/configs/answer_level.py", "Answer-level config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_STAGE = flags.DEFINE_enum(
    "stage",
    "all",
    ["predict", "train", "all", "sampled", "report"],
    "Which stage to run; report: redraw the tables and figures from the json files.",
)


def main(argv):
    del argv
    config = _CONFIG.value
    if _STAGE.value == "sampled":
        if config.get("sampled") is None:
            raise ValueError(
                "--stage=sampled needs --config grpo_jax/configs/answer_level.py:sampled "
                "(or :sampled_smoke)"
            )
        answer_level_sampled.run_sampled(config, al_config.sampled_grpo_config, _WORKDIR.value)
        print(open(f"{_WORKDIR.value}/sampled.md").read())
        return
    loaded = answer_level.load(config)
    if _STAGE.value == "report":
        answer_level.write_reports(config, _WORKDIR.value, loaded=loaded)
        return
    if _STAGE.value in ("predict", "all"):
        answer_level.run_predictions(config, _WORKDIR.value, loaded)
        print(open(f"{_WORKDIR.value}/predictions.md").read())
    if _STAGE.value in ("train", "all"):
        answer_level.run_training(config, al_config.grpo_config, _WORKDIR.value, loaded)
        print(open(f"{_WORKDIR.value}/training.md").read())


if __name__ == "__main__":
    config_utils.run_app(main)
