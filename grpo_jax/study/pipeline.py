"""The study end to end: run (or resume) the grid, report it, publish the results.

`run` runs the cells through `sweep.run_sweep` with the group runner `groups.run_group` (one
vmapped population per (modality, policy class); finished cells cached by config hash, so a
rerun, or a run after a crash, redoes only the unfinished ones), then writes
`<workdir>/report/` (`report.write_report`: report.md, results.md, report.json, the figures)
with the Gaussian toy figure. `publish` puts results.md into the README. Entry point:
experiments/study.py.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import time

import jax
import ml_collections

from grpo_jax.run import config_utils, jsonio, rundir, sweep
from grpo_jax.study import gaussian_kl, groups, report
from grpo_jax.study.report.markdown import (
    README_BEGIN,
    README_END,
    SEQUENCE_BEGIN,
    SEQUENCE_END,
    readme_block,
)

__all__ = [
    "README_BEGIN",
    "README_END",
    "SEQUENCE_BEGIN",
    "SEQUENCE_END",
    "part_markers",
    "publish",
    "run",
]


def part_markers(subdir: str) -> tuple[str, str]:
    """The README markers of a sequence part's results (`sequences`: `SEQUENCE_BEGIN`,
    `SEQUENCE_END`; another part, e.g. `sequences-transformer`, its own pair)."""
    if subdir == "sequences":
        return SEQUENCE_BEGIN, SEQUENCE_END
    return (
        f"<!-- {subdir} results.md: begin (written by experiments/study.py --publish) -->",
        f"<!-- {subdir} results.md: end -->",
    )


def publish(
    report_dir: str,
    root: str,
    docs: str = "docs/results",
    markers: tuple[str, str] = (README_BEGIN, README_END),
) -> str:
    """results.md and the figures it shows -> `<root>/<docs>/`; its text, with figure paths
    under `docs`, replaces the block of `<root>/README.md` between `markers` (the one-token
    study's by default; `SEQUENCE_BEGIN`, `SEQUENCE_END` for the study in sequences).
    Returns the README block."""
    begin, end = markers
    text = open(os.path.join(report_dir, "results.md"), encoding="utf-8").read()
    os.makedirs(os.path.join(root, docs), exist_ok=True)
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        shutil.copy(os.path.join(report_dir, name), os.path.join(root, docs, name))
    jsonio.write_text_atomic(os.path.join(root, docs, "results.md"), text)
    block = readme_block(text, docs)
    readme = os.path.join(root, "README.md")
    old = open(readme, encoding="utf-8").read()
    if begin not in old or end not in old:
        raise ValueError(f"{readme} has no results markers ({begin} ... {end})")
    head, rest = old.split(begin, 1)
    jsonio.write_text_atomic(
        readme, head + begin + "\n" + block + "\n" + end + rest.split(end, 1)[1]
    )
    return block


def gaussian_figure(outdir: str, gaussian_config, log=print) -> list[str]:
    """The Gaussian toy figure (`grpo_jax.study.gaussian_kl`, the config
    grpo_jax/configs/gaussian_kl.py with the study config's `gaussian` overrides), in float32;
    [] with a log line if it fails."""
    try:
        path = os.path.join(outdir, "gaussian_kl.png")
        gaussian_kl.plot(gaussian_kl.run_all(gaussian_config), path)
    except Exception as e:  # noqa: BLE001  the figure is optional; say why it is absent
        log(f"gaussian toy figure failed: {e!r}")
        return []
    return [path]


def _stored_config(workdir: str, config, log):
    """`--report_only`: the config the stored cells were run with, and a warning with the
    diff when the given one differs (the report describes the data, not the flags)."""
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


def _notes(config, workdir, wall_s, missing, cells, machine, command=None) -> dict:
    arg = "" if config.name == "default" else f" --config grpo_jax/configs/study.py:{config.name}"
    sequences = config.modalities[0]["task"]["name"] == "fork"
    if sequences:
        full = (
            "; the GPU `full` config is sized in docs/design.md, 'The study in sequences' "
            "(not yet run)"
        )
    else:
        full = (
            "; `full` (GPU) adds separations 1-8σ in steps of 1 plus 5.6σ, 4 modes "
            "at 3σ, 32 seeds, 1000 steps, group 32, the k1/reward arm of the "
            "secondary contrast and Q2's k1/loss and k3/reward arms"
        )
    notes = {
        "command": command or f"python experiments/study.py --workdir {workdir}{arg}",
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
            + ("" if config.name == "full" else full)
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
    config,
    grid,
    gaussian_config,
    report_only: bool = False,
    overwrite: bool = False,
    keep_checkpoints: bool = False,
    log=print,
    command: str | None = None,
) -> dict:
    """Run (or resume) the study of `config` (grpo_jax/configs/study.py, or
    grpo_jax/configs/sequence_study.py) and write its report; returns the report's result.
    `grid(config)` gives the cells (`sweep.expand` of the config's grid); `gaussian_config`
    is the Gaussian toy's config, which the study config's `gaussian` field overrides (None:
    no toy figure); `command` is the report's command line, saved with the run's wall time
    so that `report_only` reports the command that computed the cells (default: the one-token
    study's)."""
    t0 = time.time()
    sweep_dir = os.path.join(workdir, "sweep")
    timing = os.path.join(workdir, "run_seconds.json")
    with rundir.lock(workdir, log=log):
        if report_only:
            config = _stored_config(workdir, config, log)
            records, missing = sweep.load_results(sweep_dir)
            log(f"report from {len(records)} finished cells ({missing} missing)")
            stored = jsonio.read_json(timing) if os.path.exists(timing) else {}
            run_s = stored.get("seconds")
            command = stored.get("command", command)  # the run that computed the cells
            report.design.check_design(config, sorted({r["arm"] for r in records}))
        else:
            cells = grid(config)
            # The design against the grid before anything trains (a typo fails here).
            report.design.check_design(config, sorted({str(c.eval.arm) for c in cells}))
            # Keys only the analysis reads may change (the stored cells are re-reported);
            # any other key is computational.
            rundir.check_config(
                workdir,
                config,
                what="study",
                overwrite=overwrite,
                safe=report.design.ANALYSIS_KEYS,
                log=log,
            )
            if overwrite:
                for name in ("sweep", "groups", "report"):
                    shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
            runner = functools.partial(
                groups.run_group, workdir=workdir, log=log, keep_checkpoints=keep_checkpoints
            )
            # whole_groups: a cell's numbers do not depend on what else was interrupted.
            records = sweep.run_sweep(
                cells, runner, sweep_dir, groups.GROUP_KEYS, log=log, whole_groups=True
            )
            missing = 0
            run_s = time.time() - t0
            jsonio.write_json_atomic(timing, {"seconds": run_s, "command": command})
        return _report(workdir, config, records, missing, run_s, t0, gaussian_config, log, command)


def _report(workdir, config, records, missing, run_s, t0, gaussian_config, log, command) -> dict:
    """The report of `records` (with the closed-form optima and the Gaussian toy figure)."""
    optima, vectors = {}, {}
    for m in config.modalities:
        fields = dict(m["task"])
        task = config_utils.make_task(fields)
        optima[m["label"]] = groups.optimum_curves(task)
        vectors[m["label"]] = groups.task_vectors(task)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}"
    )
    outdir = os.path.join(workdir, "report")
    notes = _notes(config, workdir, run_s, missing, len(records), machine, command)
    bad = report.design.non_finite(records, config.to_dict())
    if bad:
        first = ", ".join(f"{b['modality']} {b['policy']} {b['arm']} at {b['strength']:g} "
                          f"seed {b['seed']}" for b in bad[:3])  # fmt: skip
        notes["non-finite outcomes"] = (
            f"{len(bad)} runs have non-finite outcomes ({first}{', ...' if len(bad) > 3 else ''})"
            f"; the analysis leaves them out as unmatchable"
        )
        log(f"warning: {notes['non-finite outcomes']}")
    result = report.write_report(records, config.to_dict(), outdir, notes, optima, vectors)
    figs = []
    if gaussian_config is not None:
        gaussian_config = gaussian_config.copy_and_resolve_references()
        gaussian_config.update(dict(config.get("gaussian", {})))
        figs = gaussian_figure(outdir, gaussian_config, log=log)
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
