"""Pretrain a reference policy on a task's reference data and report its fit.

  python experiments/pretrain.py --config grpo_jax/configs/pretrain.py:task=bandit_bimodal \
      --workdir runs/ref-bandit-bimodal

Writes to <workdir>: the orbax checkpoint (params + the reference metadata of
`reference.reference_metadata`: task, model, pretrain settings, report),
metrics.jsonl (per-step loss, token accuracy, gradient norm) and report.json (the fit:
exact KL[data || model] per sequence, per-position entropies, mode shares vs the data and
whether they are within `eval.mode_share_tolerance`). Load with
`grpo_jax.run.reference.restore_reference(workdir) -> (task, model_config, params, metadata)`.
Disk: one checkpoint of the parameters (4 bytes each: 0.56 MB for the W2-scale default) plus
a metrics line per step (about 150 bytes).
"""

import os


from absl import flags, logging
import jax
from ml_collections import config_flags

from grpo_jax.run import config_utils, jsonio, reference, writers
from grpo_jax.rl import pretrain


def train_and_evaluate(config, workdir: str, log=logging.info) -> dict:
    """Pretrain, save the checkpoint in `workdir`, write report.json; returns the report."""
    os.makedirs(workdir, exist_ok=True)
    task = config_utils.make_task(config.task)
    model_config = pretrain.model_config_for(task, **dict(config.model))
    log(f"task {task}; reference stats {task.reference_stats()}")
    p = config.pretrain
    with writers.MetricWriter(workdir, tensorboard=False) as writer:
        params, report = pretrain.pretrain_reference(
            model_config,
            task,
            jax.random.key(int(p.seed), impl=p.rng_impl),
            steps=int(p.steps),
            batch_size=int(p.batch_size),
            lr=float(p.lr),
            chunk_steps=int(p.chunk_steps),
            log=log,
            writer=writer,
            eval_key=jax.random.key(int(config.eval.seed), impl=p.rng_impl),
            mode_share_tolerance=float(config.eval.mode_share_tolerance),
            num_eval_samples=int(config.eval.num_samples),
        )
    reference.save_reference(
        workdir,
        report["steps"],
        params,
        task_config=config.task,
        model_config=model_config,
        report=report,
        pretrain=config.pretrain.to_dict(),
    )
    jsonio.write_json_atomic(os.path.join(workdir, "report.json"), report, indent=2)
    log(
        f"fit: KL[data||model] = {report['data_kl_seq']:.4f} nats/sequence "
        f"(data entropy {report['data_entropy_seq']:.4f}); mode shares model "
        f"{report['mode_shares_model']} vs data {report['mode_shares_data']} "
        f"({report['mode_shares_method']}), max err {report['mode_share_max_abs_err']:.4f} "
        f"{'<=' if report['mode_shares_ok'] else '>'} tolerance "
        f"{report['mode_share_tolerance']}"
    )
    if not report["mode_shares_ok"]:
        logging.warning(
            "the reference does NOT reproduce the data's mode shares within "
            "tolerance; train longer or larger"
        )
    return report


def main(argv):
    del argv
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    # Flags are defined only when run as a script, so importing this module (tests, other
    # entry points defining the same flag names) never clashes.
    _CONFIG = config_flags.DEFINE_config_file(
        "config", "grpo_jax/configs/pretrain.py", "Pretraining config file.", lock_config=True
    )
    _WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
    config_utils.run_app(main)
