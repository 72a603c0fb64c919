"""The study: does the KL *direction* matter only for multimodal references? One-token
policies first, then the study in sequences (the fork task) in `<workdir>/sequences`.

  pip install -e . && python experiments/study.py --workdir runs/study
  python experiments/study.py --workdir runs/study-full --config grpo_jax/configs/study.py:full
  python experiments/study.py --workdir runs/study --report_only --publish

grpo_jax/configs/study.py and grpo_jax/configs/sequence_study.py (`--sequence_config`)
declare the designs; override fields with `--config.FIELD=VALUE`. The pipeline
(`grpo_jax.study.pipeline`) caches finished cells by config hash (a rerun or a run after a
crash redoes only the unfinished ones) and writes `report/` (report.md, results.md,
report.json, figures) in each part's workdir. A rerun with a config that changes the
computation is refused with a diff (`--overwrite` discards the old run); `--report_only`
reports the stored cells. Disk: see the configs' docstrings. `--publish` puts each part's
results.md into the README between its markers (figures to docs/results/[<part>/]): the
README's results are generated, never hand-copied. `--nosequences`: the one-token part only;
`--noone_token`: the sequence part only, e.g. the transformer class:

  python experiments/study.py --workdir runs/study --noone_token \
      --sequence_config grpo_jax/configs/sequence_study.py:transformer
"""

import os
import shlex
import sys

from absl import flags, logging
from ml_collections import config_flags

from grpo_jax.configs import gaussian_kl as gaussian_config
from grpo_jax.configs import sequence_study as sequence_config
from grpo_jax.configs import study as study_config
from grpo_jax.run import config_utils
from grpo_jax.study import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    "grpo_jax/configs/study.py",
    "'grpo_jax/configs/study.py[:full|tiny]'.",
    lock_config=True,
)
_SEQUENCE_CONFIG = config_flags.DEFINE_config_file(
    "sequence_config",
    "grpo_jax/configs/sequence_study.py",
    "'grpo_jax/configs/sequence_study.py[:tiny]', the study in sequences.",
    lock_config=True,
)
_ONE_TOKEN = flags.DEFINE_boolean("one_token", True, "Run the one-token study.")
_SEQUENCES = flags.DEFINE_boolean("sequences", True, "Run the study in sequences.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/study", "Run directory.")
_REPORT_ONLY = flags.DEFINE_boolean(
    "report_only", False, "Write the report from the finished cells; run nothing."
)
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Discard a run of another config in --workdir."
)
_KEEP = flags.DEFINE_boolean(
    "keep_checkpoints", False, "Keep every population checkpoint (max_to_keep 0, not deleted)."
)
_PUBLISH = flags.DEFINE_boolean(
    "publish",
    False,
    "Copy results.md and its figures to docs/results/ and put results.md's "
    "text into README.md between its results markers.",
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(workdir: str, config=None, log=print, **kwargs) -> dict:
    """Run (or resume) the one-token study (default config: grpo_jax/configs/study.py) and
    write its report; returns the report's result (`pipeline.run`; `kwargs`: report_only,
    overwrite, keep_checkpoints, command: the command line the report records)."""
    config = study_config.get_config() if config is None else config
    return pipeline.run(
        workdir, config, study_config.cells, gaussian_config.get_config(), log=log, **kwargs
    )


SEQUENCE_FILE = "grpo_jax/configs/sequence_study.py"


def run_sequences(workdir: str, config=None, log=print, **kwargs) -> dict:
    """The study in sequences (default config: grpo_jax/configs/sequence_study.py) in
    `<workdir>/<config.subdir>` (`sequences`; `sequences-transformer` for the transformer
    class) (no Gaussian toy figure); the same `kwargs` as `run`."""
    config = sequence_config.get_config() if config is None else config
    name = config.name.replace("-", ",")  # "transformer-tiny": the arguments "transformer,tiny"
    arg = "" if name == "default" else f" --sequence_config {SEQUENCE_FILE}:{name}"
    only = " --noone_token" if config.policies == ["transformer"] else ""
    kwargs.setdefault("command", f"python experiments/study.py --workdir {workdir}{arg}{only}")
    workdir = os.path.join(workdir, config.subdir)
    return pipeline.run(workdir, config, study_config.cells, None, log=log, **kwargs)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    kwargs = dict(
        report_only=_REPORT_ONLY.value,
        overwrite=_OVERWRITE.value,
        keep_checkpoints=_KEEP.value,
        command=shlex.join(["python"] + sys.argv),  # as typed, overrides and all
    )
    out = run(_WORKDIR.value, _CONFIG.value, **kwargs) if _ONE_TOKEN.value else None
    seq_config = _SEQUENCE_CONFIG.value
    seq = run_sequences(_WORKDIR.value, seq_config, **kwargs) if _SEQUENCES.value else None
    if _PUBLISH.value:
        if out is not None:
            pipeline.publish(os.path.dirname(out["paths"]["report_md"]), ROOT)
            print("published results.md to docs/results/ and README.md")
        if seq is not None:
            markers = pipeline.part_markers(seq_config.subdir)
            report_dir = os.path.dirname(seq["paths"]["report_md"])
            docs = f"docs/results/{seq_config.subdir}"
            pipeline.publish(report_dir, ROOT, docs, markers)
            print(f"published the {seq_config.subdir} part to {docs}/ and README.md")


if __name__ == "__main__":
    config_utils.run_app(main)
