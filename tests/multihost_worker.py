"""Worker for tests/test_multihost.py: a few GRPO steps of a tiny bandit config.

    python tests/multihost_worker.py --out OUT.npz --devices 4                # one process
    python tests/multihost_worker.py --out OUT.npz --devices 2 \
        --num_processes 2 --process_id I --port PORT                        # one of two

Each process gets `--devices` virtual CPU devices (set before jax is imported); with
`--num_processes 2` the runtime is JAX's own (`jax.distributed.initialize` through
`sharding.maybe_initialize_distributed`, gloo CPU collectives) and the mesh spans the devices
of both processes. Writes the final policy parameters and per-step rewards to `--out`.
"""

from __future__ import annotations

import argparse
import time

T0 = time.time()
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--workdir", default="")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"

    import jax
    import numpy as np

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the default; explicit
    jax.config.update("jax_numpy_rank_promotion", "raise")

    from grpo_jax.configs import grpo as grpo_config
    from grpo_jax.run import sharding

    config = grpo_config.get_config("task=bandit")
    # Dense reward (every token scores differently), so the random-init reference's groups
    # have non-zero advantages and the steps move the policy.
    config.task.update(reward_kind="distance", reward_width=64.0)
    config.model.update(num_layers=1, width=16, num_heads=2, mlp_width=32)
    config.grpo.update(num_prompts=4, group_size=4)  # B = 16 over 4 devices
    config.optim.lr = 3e-2
    config.train.update(
        num_steps=args.steps, chunk_steps=args.steps, tensorboard=False, progress=False, num_seeds=2
    )
    if args.num_processes > 1:
        config.mesh.update(
            multihost=True,
            coordinator_address=f"127.0.0.1:{args.port}",
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    # Before any other JAX call (validate_config inside the runner counts devices).
    sharding.maybe_initialize_distributed(config.mesh)
    assert jax.device_count() == 4, jax.devices()
    assert jax.process_count() == args.num_processes

    from grpo_jax.models import model
    from grpo_jax.run import runner
    from grpo_jax.run import build

    task = build.make_task(config)
    mcfg = build.make_model_config(config, task)
    ref = model.init(mcfg, jax.random.PRNGKey(7))
    workdir = args.workdir or os.path.join(os.path.dirname(args.out), f"w{args.process_id}")
    log = lambda *a: print(f"[{time.time() - T0:.1f}s]", *a, flush=True)
    out = runner.run_population(
        config, build.population_cells(config), workdir, ref_params=ref, log=log
    )
    log("trained")
    leaves = jax.tree.leaves(out.state.params)
    arrays = {f"p{i:03d}": np.asarray(jax.device_get(x)) for i, x in enumerate(leaves)}
    arrays.update(
        {f"ref{i:03d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(out.state.ref_params))}
    )
    arrays["reward_mean"] = np.asarray(out.history["reward_mean"])
    np.savez(args.out, **arrays)
    print("ok", jax.process_index(), jax.device_count(), jax.process_count(), flush=True)


if __name__ == "__main__":
    main()
