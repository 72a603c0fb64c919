"""A/B timing of the whole RL step under different XLA flags or code trees, interleaved.

    PYTHONPATH=. python benchmarks/ab.py --variants='default=;xnnpack=--xla_cpu_use_xnnpack=true'
    PYTHONPATH=. python benchmarks/ab.py --variants='old=@/tmp/old_tree;new=@.' --rounds=3

XLA reads its flags once per process, so each variant runs in its own subprocess; the
variants take turns for `--rounds` rounds so that a change in the machine's load (shared
CI machines) hits them all alike. A variant is `name=FLAGS` (appended to XLA_FLAGS, the
library's defaults in `grpo_jax.xla_setup` switched off) or `name=@PATH` (a checkout of
grpo_jax at PATH, with its own default flags); `name=@PATH FLAGS` combines both.
Each subprocess compiles the workload's step (`make_rl_chunk`, one step per call), runs
one warm-up call and `--steps` timed calls; the figure per variant is the median over
all rounds, with the process CPU seconds per step (user + system, both cores; less
sensitive to other processes' load than wall time) and the compile time's median beside it.
A variant's `plan=S,G` word sets the step's `sampling.DecodePlan(streams=S, segments=G)`
(trees with DecodePlan only): `--variants='p11=@.;p24=@. plan=2,4'`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("variants", "default=", "';'-separated name=FLAGS or name=@PATH [FLAGS].")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
flags.DEFINE_integer("steps", 3, "Timed steps per subprocess.")
flags.DEFINE_enum("workload", "W1", ["W1", "W2"], "Workload.")
flags.DEFINE_string("compute_dtype", "float32", "Model compute dtype.")
flags.DEFINE_string("child", None, "Internal: run one measurement in this process.")
flags.DEFINE_string("decode_plan", "", "Internal: the child's DecodePlan 'streams,segments'.")

HERE = os.path.dirname(os.path.abspath(__file__))


def child(root: str) -> None:
    import common  # noqa: PLC0415
    import jax  # noqa: PLC0415
    import rl_step  # noqa: PLC0415  (the variant tree's; its make_rl_chunk too)

    setup = rl_step.make_setup(FLAGS.workload, compute_dtype=FLAGS.compute_dtype)
    if FLAGS.decode_plan:  # a tree with sampling.DecodePlan (bb6303d and later)
        import dataclasses  # noqa: PLC0415

        from grpo_jax.models import sampling  # noqa: PLC0415

        streams, segments = (int(x) for x in FLAGS.decode_plan.split(","))
        plan = sampling.DecodePlan(streams=streams, segments=segments)
        setup = dataclasses.replace(setup, decode_plan=plan)
    state, hp = rl_step.init_population(setup, 0)
    run, compile_s = common.compile_seconds(rl_step.make_rl_chunk(setup, 1), state, hp)
    box = [state]

    def call():
        box[0], m = run(box[0], hp)
        jax.block_until_ready((box[0], m))

    call()  # warm-up
    cpu0 = os.times()
    sec, times = common.time_calls(call, FLAGS.steps, warmup=0)
    cpu1 = os.times()
    cpu_s = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / FLAGS.steps
    print(
        "RESULT "
        + json.dumps(
            dict(
                compile_s=compile_s,
                s=sec,
                times=times,
                cpu_s=cpu_s,
                xla_flags=os.environ.get("XLA_FLAGS", ""),
            )
        )
    )


def parse_variants(spec: str):
    out = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        name, _, rest = item.partition("=")
        root, xla = os.path.dirname(HERE), rest
        if rest.startswith("@"):
            path, _, xla = rest[1:].partition(" ")
            root = os.path.abspath(path)
        plan = [w for w in xla.split() if w.startswith("plan=")]
        xla = " ".join(w for w in xla.split() if not w.startswith("plan="))
        out.append((name, root, xla, plan[0][5:] if plan else ""))
    return out


def main(argv):
    del argv
    if FLAGS.child:
        return child(FLAGS.child)
    variants = parse_variants(FLAGS.variants)
    results = {name: [] for name, *_ in variants}
    compiles = {name: [] for name, *_ in variants}
    cpus = {name: [] for name, *_ in variants}
    for r in range(FLAGS.rounds):
        for name, root, xla, plan in variants:
            env = dict(
                os.environ,
                XLA_FLAGS=xla,
                PYTHONPATH=os.pathsep.join([root, os.path.join(root, "benchmarks")]),
            )
            cmd = [
                sys.executable,
                "-P",  # not this script's folder first: the variant's benchmarks/ and tree
                os.path.join(HERE, "ab.py"),
                f"--child={root}",
                f"--steps={FLAGS.steps}",
                f"--workload={FLAGS.workload}",
                f"--compute_dtype={FLAGS.compute_dtype}",
                f"--decode_plan={plan}",
            ]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                print(f"  {name}: FAILED\n{proc.stderr[-2000:]}")
                continue
            res = json.loads(line[-1][7:])
            results[name] += res["times"]
            compiles[name].append(res["compile_s"])
            cpus[name].append(res.get("cpu_s", float("nan")))
            print(
                f"round {r} {name:>12s}: {res['s']:.4f} s/step, CPU "
                f"{res.get('cpu_s', float('nan')):.3f} s/step (compile "
                f"{res['compile_s']:.1f} s) load {os.getloadavg()[0]:.2f} "
                f"XLA_FLAGS={res['xla_flags']!r}",
                flush=True,
            )
    print("median wall s/step over all rounds (CPU s/step, compile s):")
    base = None
    for name, *_ in variants:
        if not results[name]:
            continue
        med = statistics.median(results[name])
        base = base or med
        print(
            f"  {name:>12s}: {med:.4f} ({statistics.median(cpus[name]):.3f}, "
            f"{statistics.median(compiles[name]):.1f})  "
            f"x{base / med:.2f} vs first"
        )


if __name__ == "__main__":
    app.run(main)
