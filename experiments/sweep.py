"""Run a sweep: expand the grid, run unfinished cells group by group, cache each result.

  python experiments/sweep.py --sweep grpo_jax/configs/sweeps/example.py --workdir runs/sweep-example \
      --runner grpo_jax.configs.sweeps.example:closed_form_bandit_runner

``--runner module:function`` is imported by name and called as
``function(static_config, cells) -> list[dict]``. The vmappable keys (cells differing only
in them share one compiled program) come from ``--vmappable`` or else the runner's
``vmappable_keys`` attribute. Interrupt and re-run with the same flags: finished cells are
read from ``<workdir>/cells/`` and not run again. All results end in
``<workdir>/results.json``. Disk: the manifest and one JSON file per cell (the example: a
few KB); a second process on the same workdir is refused (the sweep's lock).
"""

import os

from absl import app, flags, logging

from grpo_jax.run import launch, sweep

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file, 'path/to/sweep.py[:arg]'.", required=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for the cache and results.", required=True
)
_RUNNER = flags.DEFINE_string("runner", None, "Runner 'package.module:function'.", required=True)
_VMAPPABLE = flags.DEFINE_list(
    "vmappable",
    None,
    "Dotted keys batched in one program " "(default: the runner's vmappable_keys attribute).",
)
_MAX_GROUP = flags.DEFINE_integer("max_group_size", None, "Split populations larger than this.")
_DRY_RUN = flags.DEFINE_boolean("dry_run", False, "Print cells and groups, run nothing.")


def main(argv):
    del argv
    base, axes = sweep.load_sweep(_SWEEP.value)
    runner = sweep.load_runner(_RUNNER.value)
    keys = (
        _VMAPPABLE.value if _VMAPPABLE.value is not None else getattr(runner, "vmappable_keys", ())
    )
    cells = sweep.expand(base, axes)
    if _DRY_RUN.value:
        for g in sweep.group_cells(cells, keys, _MAX_GROUP.value):
            print(f"group {g.key}: cells {g.indices}")
        return
    results = sweep.run_sweep(
        cells, runner, _WORKDIR.value, keys, log=logging.info, max_group_size=_MAX_GROUP.value
    )
    out = os.path.join(_WORKDIR.value, "results.json")
    sweep.write_json_atomic(
        out,
        {
            "sweep": _SWEEP.value,
            "runner": _RUNNER.value,
            "vmappable_keys": list(keys),
            "cells": [
                {"hash": sweep.cell_hash(c), "config": c.to_dict(), "result": r}
                for c, r in zip(cells, results)
            ],
        },
    )
    print(f"{len(cells)} cells done; results in {out}")


if __name__ == "__main__":
    app.run(lambda argv: launch.run_main(main, argv))  # a full disk: one line
