"""The hypothesis experiment (issue 7): every KL choice x beta x seed per (task, modality).

  pip install -e . && python experiments/hypothesis.py --workdir runs/hypothesis
  python experiments/hypothesis.py --workdir runs/hypothesis-full --config configs/hypothesis.py:full

Runs the grid of `configs/sweeps/hypothesis.py` (built from `configs/hypothesis.py[:arg]`)
through `grpo_jax.sweep.run_sweep` with the runner `grpo_jax.evaluate.run_group`: one
vmapped GRPO population per (task, modality), references pretrained once and cached,
finished cells cached by config hash (a re-run, or a run after a crash, redoes only the
unfinished ones). Then writes `<workdir>/report/report.md` (+ report.json and PNG figures,
the Gaussian toy figure included when `experiments/gaussian_kl.py` is present) and prints
the verdicts.
"""

import functools
import os
import platform
import sys
import time

# Run from a clone without `pip install -e .`: the repository root holds grpo_jax/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/hypothesis", "Run directory.")
_CONFIG = flags.DEFINE_string("config", "configs/hypothesis.py",
                              "'configs/hypothesis.py[:default|full|tiny]'.")
_REPORT_ONLY = flags.DEFINE_boolean("report_only", False,
                                    "Write the report from the finished cells; run nothing.")


def config_arg(spec: str) -> str:
    """'configs/hypothesis.py:full' -> 'full' ('' for the default)."""
    return spec.split(":", 1)[1] if ":" in spec else ""


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


def run(workdir: str, arg: str = "", report_only: bool = False, log=print) -> dict:
    """Run (or resume) the sweep and write the report; returns {"report", "verdicts", ...}."""
    import jax  # pylint: disable=import-outside-toplevel
    from configs import hypothesis as hyp_config  # pylint: disable=import-outside-toplevel
    from configs.sweeps import hypothesis as hyp_sweep  # pylint: disable=import-outside-toplevel
    from grpo_jax import evaluate, report, sweep  # pylint: disable=import-outside-toplevel

    t0 = time.time()
    hyp = hyp_config.get_config(arg)
    base, axes = hyp_sweep.get_sweep(arg)
    cells = sweep.expand(base, axes)
    sweep_dir = os.path.join(workdir, "sweep")
    if report_only:
        records, missing = sweep.load_results(sweep_dir)
        log(f"report from {len(records)} finished cells ({missing} missing)")
    else:
        runner = functools.partial(evaluate.run_group, workdir=workdir, log=log)
        records = sweep.run_sweep(cells, runner, sweep_dir, evaluate.VMAPPABLE_KEYS, log=log)
    run_s = time.time() - t0
    outdir = os.path.join(workdir, "report")
    mods = [f"{m['task_label']}: {m['modality']}" for m in hyp.modalities]
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
        "KL choice names": "exact_fwd/loss = exact_forward/loss, exact_rev/loss = "
                           "exact_reverse/loss (exact per-position KL as the regulariser); "
                           f"none = {hyp.none_choice} at beta 0",
    }
    m = hyp.model
    notes["scale"] = (f"{hyp.name.upper()} run: {m.num_layers}-layer width-{m.width} model, "
                      f"{hyp.train.num_steps} GRPO steps, {len(hyp.betas)} betas "
                      f"{list(hyp.betas)}, {hyp.num_seeds} seeds, {len(hyp.modalities)} "
                      f"(task, modality) points" + (
                          "; the `full` config (GPU) is the publication-scale run"
                          if hyp.name == "default" else ""))
    path = report.write_report(records, outdir, notes)
    figs = gaussian_figure(outdir, hyp.get('gaussian', {}), log=log)
    if figs:
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n## Gaussian toy: forward vs reverse KL fit of one Gaussian to two\n\n"
                    + "\n".join(f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                for p in figs) + "\n")
    import json  # pylint: disable=import-outside-toplevel
    with open(os.path.join(outdir, "report.json"), encoding="utf-8") as f:
        rep = json.load(f)
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
    run(_WORKDIR.value, config_arg(_CONFIG.value), _REPORT_ONLY.value)


if __name__ == "__main__":
    app.run(main)
