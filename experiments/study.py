"""The study: does the KL *direction* matter only for multimodal references?

  pip install -e . && python experiments/study.py --workdir runs/study
  python experiments/study.py --workdir runs/study-full --config grpo_jax/configs/study.py:full
  python experiments/study.py --workdir runs/study --report_only --publish

grpo_jax/configs/study.py declares the design (question, outcomes, margins, matched strength,
decision rule, grid); any field can be overridden with `--config.FIELD=VALUE`. The grid runs
through `grpo_jax.sweep.run_sweep` with the runner `grpo_jax.study.run_group`: one vmapped
population per (modality, policy class), finished cells cached by config hash (a rerun, or a
run after a crash, redoes only the unfinished ones). Then `grpo_jax.report.write_report`
writes `<workdir>/report/`: report.md (everything), results.md (what the README includes),
report.json and the figures, plus the Gaussian toy figure.

The workdir records its config (`config.json`): a rerun with a config that changes the
computation is refused with a diff (`--overwrite` discards the old run); `--report_only`
reports the stored cells with the stored config and lists missing cells. Disk: see the
docstring of grpo_jax/configs/study.py (default under 100 MB; `full` under 1 GB); population
checkpoints are deleted once a group's records exist unless `--keep_checkpoints`.
`--publish` copies results.md (and its figures) to docs/results/ and puts its text into the
README between the results markers: the README's results are generated, never hand-copied.
"""

import functools
import os
import platform
import shutil
import sys
import time


from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from grpo_jax.run import config_utils  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    "grpo_jax/configs/study.py",
    "'grpo_jax/configs/study.py[:full|tiny]'.",
    lock_config=True,
)
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


def publish(report_dir: str, root: str = ROOT, docs: str = "docs/results") -> str:
    """results.md and the figures it shows -> `<root>/<docs>/`; its text, with figure paths
    under `docs`, replaces the README's block between the results markers. Returns the
    README block."""
    import re  # pylint: disable=import-outside-toplevel
    from grpo_jax.run import jsonio  # pylint: disable=import-outside-toplevel
    from grpo_jax.study.report.markdown import README_BEGIN, README_END, readme_block

    text = open(os.path.join(report_dir, "results.md"), encoding="utf-8").read()
    os.makedirs(os.path.join(root, docs), exist_ok=True)
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        shutil.copy(os.path.join(report_dir, name), os.path.join(root, docs, name))
    jsonio.write_text_atomic(os.path.join(root, docs, "results.md"), text)
    block = readme_block(text, docs)
    readme = os.path.join(root, "README.md")
    old = open(readme, encoding="utf-8").read()
    if README_BEGIN not in old or README_END not in old:
        raise ValueError(f"{readme} has no results markers ({README_BEGIN} ... {README_END})")
    head, rest = old.split(README_BEGIN, 1)
    jsonio.write_text_atomic(
        readme,
        head + README_BEGIN + "\n" + block + "\n" + README_END + rest.split(README_END, 1)[1],
    )
    return block


def gaussian_figure(outdir: str, overrides=None, log=print) -> list[str]:
    """The Gaussian toy figure (experiments/gaussian_kl.py, grpo_jax/configs/gaussian_kl.py with the
    study config's `gaussian` overrides), in float32; [] with a log line if it fails."""
    import importlib.util  # pylint: disable=import-outside-toplevel

    try:  # by path, without putting experiments/ on sys.path (it would shadow packages)
        spec = importlib.util.spec_from_file_location(
            "experiments_gaussian_kl",
            os.path.join(os.path.dirname(os.path.abspath(__file__)), "gaussian_kl.py"),
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        from grpo_jax.configs import (
            gaussian_kl as gaussian_config,
        )  # pylint: disable=import-outside-toplevel

        path = os.path.join(outdir, "gaussian_kl.png")
        config = gaussian_config.get_config()
        config.update(dict(overrides or {}))
        module.plot(module.run_all(config), path)
    except Exception as e:  # noqa: BLE001  the figure is optional; say why it is absent
        log(f"gaussian toy figure failed: {e!r}")
        return []
    return [path]


def _stored_config(workdir: str, config, log):
    """`--report_only`: the config the stored cells were run with, and a warning with the
    diff when the given one differs (the report describes the data, not the flags)."""
    import ml_collections  # pylint: disable=import-outside-toplevel
    from grpo_jax.run import jsonio, rundir  # pylint: disable=import-outside-toplevel

    path = os.path.join(workdir, rundir.CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} holds no study to report")
    stored = jsonio.read_json(path)
    diff = rundir.config_diff(stored, config)
    if diff:
        log(
            f"warning: the report describes the stored cells, which were run with the config "
            f"in {path}, not the one given:\n{rundir.format_diff(diff)}"
        )
    return ml_collections.ConfigDict(stored)


def _notes(config, workdir, wall_s, missing, cells, machine) -> dict:
    arg = "" if config.name == "default" else f" --config grpo_jax/configs/study.py:{config.name}"
    notes = {
        "command": f"python experiments/study.py --workdir {workdir}{arg}",
        "machine": machine,
        "wall time": (
            "not recorded"
            if wall_s is None
            else f"{wall_s:.0f} s for the run that computed the cells (compiles "
            f"included; cells found in the cache cost 0)"
        ),
        "scale": (
            f"{config.name}: {len(config.modalities)} modalities x "
            f"{len(config.policies)} policy classes, {len(config.betas)} betas and "
            f"{len(config.entropy_coefs)} entropy coefficients, {config.num_seeds} "
            f"seeds, 2 replicates, {config.train.num_steps} GRPO steps (group "
            f"{config.grpo.group_size}, Adam lr {config.optim.lr}): {cells} runs"
            + (
                ""
                if config.name == "full"
                else "; `full` (GPU) adds separations 1-8σ in steps of 1 plus 5.6σ, 4 modes "
                "at 3σ, 32 seeds, 1000 steps, group 32, the k1/reward arm of the "
                "secondary contrast and Q2's k1/loss and k3/reward arms"
            )
        ),
    }
    if missing:
        notes["missing cells"] = (
            f"{missing} cells of the grid have no result; the verdicts "
            f"cover only the finished ones"
        )
    return notes


def run(
    workdir: str,
    config=None,
    report_only: bool = False,
    overwrite: bool = False,
    keep_checkpoints: bool = False,
    log=print,
) -> dict:
    """Run (or resume) the study and write its report; returns the report's result."""
    from grpo_jax.configs import study as study_config  # pylint: disable=import-outside-toplevel
    from grpo_jax.run import jsonio, rundir, sweep  # pylint: disable=import-outside-toplevel
    from grpo_jax.study import groups as study

    t0 = time.time()
    config = study_config.get_config() if config is None else config
    sweep_dir = os.path.join(workdir, "sweep")
    timing = os.path.join(workdir, "run_seconds.json")
    with rundir.lock(workdir, log=log):
        if report_only:
            config = _stored_config(workdir, config, log)
            records, missing = sweep.load_results(sweep_dir)
            log(f"report from {len(records)} finished cells ({missing} missing)")
            run_s = jsonio.read_json(timing)["seconds"] if os.path.exists(timing) else None
        else:
            # Every key of the study config is computational here: a cell's hash covers it.
            rundir.check_config(
                workdir, config, what="study", overwrite=overwrite, safe=(), log=log
            )
            if overwrite:
                for name in ("sweep", "groups", "report"):
                    shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
            cells = sweep.expand(*study_config.grid(config))
            runner = functools.partial(
                study.run_group, workdir=workdir, log=log, keep_checkpoints=keep_checkpoints
            )
            records = sweep.run_sweep(cells, runner, sweep_dir, study.GROUP_KEYS, log=log)
            missing = 0
            run_s = time.time() - t0
            jsonio.write_json_atomic(timing, {"seconds": run_s})
        return _report(workdir, config, records, missing, run_s, t0, log)


def _report(workdir, config, records, missing, run_s, t0, log) -> dict:
    """The report of `records` (with the closed-form optima and the Gaussian toy figure)."""
    import jax  # pylint: disable=import-outside-toplevel
    from grpo_jax.run import config_utils as cu  # pylint: disable=import-outside-toplevel
    from grpo_jax.study import report, groups as study  # pylint: disable=import-outside-toplevel

    optima = {}
    for m in config.modalities:
        fields = dict(m["task"])
        task = cu.make_task(fields)
        optima[m["label"]] = study.optimum_curves(task)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}"
    )
    outdir = os.path.join(workdir, "report")
    notes = _notes(config, workdir, run_s, missing, len(records), machine)
    result = report.write_report(records, config.to_dict(), outdir, notes, optima)
    figs = gaussian_figure(outdir, config.get("gaussian", {}), log=log)
    if figs:
        with open(result["paths"]["report_md"], "a", encoding="utf-8") as f:
            f.write(
                "\n## Gaussian toy: forward vs reverse KL fit of one Gaussian to two\n\n"
                + "\n".join(f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in figs)
                + "\n"
            )
    log("")
    for name, c in result["q1"].items():
        log(f"=== Q1 {name}: {c['overall'].upper()}")
        for p, v in c["policies"].items():
            log(f"  {p:<9} {v['verdict'].upper():<9} {v['reason'][:140]}")
    log(
        f"report: {result['paths']['report_md']} ({len(records)} runs, "
        f"{time.time() - t0:.0f} s)"
    )
    return dict(result, records=records, gaussian=figs, seconds=time.time() - t0)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    out = run(_WORKDIR.value, _CONFIG.value, _REPORT_ONLY.value, _OVERWRITE.value, _KEEP.value)
    if _PUBLISH.value:
        publish(os.path.dirname(out["paths"]["report_md"]))
        print("published results.md to docs/results/ and README.md")


if __name__ == "__main__":
    config_utils.run_app(main)
