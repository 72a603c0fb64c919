"""The hypothesis experiment: every KL choice x beta x seed per (task, modality).

  pip install -e . && python experiments/hypothesis.py --workdir runs/hypothesis
  python experiments/hypothesis.py --workdir runs/hypothesis-full --config configs/hypothesis.py:full

Runs the grid of `configs/sweeps/hypothesis.py` (built from `configs/hypothesis.py[:arg]`,
any field overridable with `--config.FIELD=VALUE`) through `grpo_jax.sweep.run_sweep` with
the runner `grpo_jax.study.run_group`: one
vmapped GRPO population per (task, modality), references pretrained once and cached,
finished cells cached by config hash (a re-run, or a run after a crash, redoes only the
unfinished ones). Then writes `<workdir>/report/report.md` (+ report.json and PNG figures,
the Gaussian toy figure included when `experiments/gaussian_kl.py` is present) and prints
the verdicts. The workdir records its config (`config.json`): a rerun with a config that
changes the computation is refused with a diff (`--overwrite` discards the old run), and
`--report_only` reports the stored cells with the stored config, listing missing cells.
"""

import functools
import os
import platform
import sys
import time

# Run from a clone without `pip install -e .`: the repository root holds grpo_jax/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from grpo_jax import config_utils  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/hypothesis.py", "'configs/hypothesis.py[:full|tiny|std]'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/hypothesis", "Run directory.")
_REPORT_ONLY = flags.DEFINE_boolean("report_only", False,
                                    "Write the report from the finished cells; run nothing.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False,
                                  "Discard a run of another config in --workdir.")


def gaussian_figure(outdir: str, overrides=None, log=print) -> list[str]:
    """The Gaussian toy figure (experiments/gaussian_kl.py with configs/gaussian_kl.py, in
    float32 here: x64 would change the whole process); [] with a log line if unavailable."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    try:  # by path, without putting experiments/ on sys.path (it would shadow packages)
        spec = importlib.util.spec_from_file_location(
            "experiments_gaussian_kl",
            os.path.join(os.path.dirname(os.path.abspath(__file__)), "gaussian_kl.py"))
        gaussian_kl = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gaussian_kl)
        from configs import gaussian_kl as gaussian_config  # pylint: disable=import-outside-toplevel
    except (ImportError, FileNotFoundError) as e:
        log(f"gaussian toy figure skipped: {e}")
        return []
    config = gaussian_config.get_config()
    config.update(dict(overrides or {}))
    path = os.path.join(outdir, "gaussian_kl.png")
    try:
        gaussian_kl.plot(gaussian_kl.run_all(config), path)
    except Exception as e:  # noqa: BLE001  the figure is optional; say why it is absent
        log(f"gaussian toy figure failed: {e!r}")
        return []
    return [path]


def _stored_config(workdir: str, hyp, log):
    """`--report_only`: the config the stored cells were run with (their scale), and a
    warning with the diff when the given config differs."""
    import ml_collections  # pylint: disable=import-outside-toplevel
    from grpo_jax import jsonio, rundir  # pylint: disable=import-outside-toplevel
    path = os.path.join(workdir, rundir.CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} holds no study to report")
    stored = jsonio.read_json(path)
    diff = rundir.config_diff(stored, hyp)
    if diff:
        log(f"warning: the report describes the stored cells, which were run with the config "
            f"in {path}, not the one given:\n{rundir.format_diff(diff)}")
    return ml_collections.ConfigDict(stored)


def run(workdir: str, hyp=None, report_only: bool = False, overwrite: bool = False,
        log=print) -> dict:
    """Run (or resume) the sweep of the hypothesis config `hyp` (default: the default
    config) and write the report; returns {"report", "verdicts", ...}."""
    import jax  # pylint: disable=import-outside-toplevel
    from configs import hypothesis as hyp_config  # pylint: disable=import-outside-toplevel
    from configs.sweeps import hypothesis as hyp_sweep  # pylint: disable=import-outside-toplevel
    from grpo_jax import report, rundir, study, sweep  # pylint: disable=import-outside-toplevel

    t0 = time.time()
    hyp = hyp_config.get_config() if hyp is None else hyp
    sweep_dir = os.path.join(workdir, "sweep")
    if report_only:
        hyp = _stored_config(workdir, hyp, log)
        records, missing = sweep.load_results(sweep_dir)
        log(f"report from {len(records)} finished cells ({missing} missing)")
    else:
        rundir.check_config(workdir, hyp, what="study", overwrite=overwrite, log=log)
        if overwrite and os.path.isdir(workdir):
            import shutil  # pylint: disable=import-outside-toplevel
            for name in ("sweep", "groups", "report"):
                shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
        cells = sweep.expand(*hyp_sweep.sweep_from_config(hyp))
        runner = functools.partial(study.run_group, workdir=workdir, log=log)
        records = sweep.run_sweep(cells, runner, sweep_dir, study.VMAPPABLE_KEYS, log=log)
        missing = 0
    run_s = time.time() - t0
    outdir = os.path.join(workdir, "report")
    mods = [f"{m['task_label']}: {m['modality']}" for m in hyp.modalities]
    arg = "" if hyp.name == "default" else hyp.name
    notes = {
        "config": f"configs/hypothesis.py{':' + arg if arg else ''} ({hyp.name})",
        "command": "python experiments/hypothesis.py --workdir " + workdir
                   + (f" --config configs/hypothesis.py:{arg}" if arg else ""),
        "sweep wall time (this invocation, incl. compiles; cached cells cost 0)":
            f"{run_s:.0f} s",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, jax "
                   f"{jax.__version__} on {jax.devices()[0].platform}",
        "modalities": "; ".join(mods),
        "model": ", ".join(f"{k}={v}" for k, v in hyp.model.items()),
        "GRPO steps per run": f"{hyp.train.num_steps} (Adam lr {hyp.optim.lr}, "
                              f"1 update per batch, eps {hyp.loss.eps_low}, advantages "
                              f"'{hyp.loss.advantage_estimator}')",
        "reference pretraining steps": str(hyp.reference.steps),
        "final evaluation": "exact enumeration of every completion (bandit, arithmetic); "
                            "format: exact pass@k, Rao-Blackwellised Monte Carlo "
                            f"({hyp.eval.num_samples} samples) for reward, KL, entropy and "
                            "mode shares. Final KL and entropy are sequence-level; the "
                            "curves over training are per-token means on the sampled batch.",
        "KL choice names": "exact_fwd/loss and exact_rev/loss: the exact per-position "
                           "forward / reverse KL as the regulariser; "
                           f"none = {hyp.none_choice} at beta 0",
    }
    if missing:
        notes["missing cells"] = (f"{missing} cells of the grid have no result yet; the "
                                  f"verdicts cover only the {len(records)} finished ones")
    m = hyp.model
    notes["scale"] = (f"{hyp.name.upper()} run: {m.num_layers}-layer width-{m.width} model, "
                      f"{hyp.train.num_steps} GRPO steps, {len(hyp.betas)} betas "
                      f"{list(hyp.betas)}, {hyp.num_seeds} seeds, {len(hyp.modalities)} "
                      f"(task, modality) points" + (
                          "; the `full` config (GPU) is the publication-scale run"
                          if hyp.name == "default" else ""))
    rep = report.write_report(records, outdir, notes)
    path = rep["path"]
    figs = gaussian_figure(outdir, hyp.get('gaussian', {}), log=log)
    if figs:
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n## Gaussian toy: forward vs reverse KL fit of one Gaussian to two\n\n"
                    + "\n".join(f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                for p in figs) + "\n")
    ver = rep["verdicts"]
    log("")
    log(f"=== hypothesis: {ver['overall']['verdict'].upper()} ({ver['overall']['reason']})")
    for m in ver["modalities"]:
        log(f"  {m['task']:<11} {m['modality']:<22} {'multi' if m['multimodal'] else 'uni':<5} "
            f"{m['verdict'].upper():<9} {m['reason'][:110]}")
    log(f"report: {path} ({len(records)} runs, {time.time() - t0:.0f} s)")
    return {"report": path, "verdicts": ver, "records": records,
            "figures": rep["figures"], "gaussian": figs, "seconds": time.time() - t0}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    run(_WORKDIR.value, _CONFIG.value, _REPORT_ONLY.value, _OVERWRITE.value)


if __name__ == "__main__":
    config_utils.run_app(main)
