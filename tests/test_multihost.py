"""Multi-host GRPO on one machine: two processes on 127.0.0.1 (JAX's own runtime,
`jax.distributed.initialize`, gloo CPU collectives), 2 virtual CPU devices each, one global
4-device `data` mesh; the result must equal one process with 4 devices.

The work runs in subprocesses (`tests/multihost_worker.py`) because this test process already
has 8 devices and a backend, and `jax.distributed.initialize` must come before both. Every
subprocess has a timeout, so a hung collective fails the test instead of hanging CI.
"""

import os
import socket
import subprocess
import sys

import numpy as np

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")
ROOT = os.path.dirname(os.path.dirname(WORKER))
TIMEOUT_S = 150  # per subprocess; a hang fails here instead of blocking the suite


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start(args, log_path):
    log = open(log_path, "w", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, WORKER, *args], cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT
    )
    return proc, log


def _finish(procs):
    """Wait for all (each within TIMEOUT_S); kill the rest on failure; return exit codes."""
    codes = []
    try:
        for proc, _, _ in procs:
            codes.append(proc.wait(timeout=TIMEOUT_S))
    except subprocess.TimeoutExpired:
        codes.append("timeout")
    finally:
        for proc, log, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return codes


def test_two_processes_equal_one_process(tmp_path):
    port = _free_port()
    shared = tmp_path / "multi"  # one workdir for both processes (a shared filesystem)
    specs = [
        (
            [
                "--out",
                str(tmp_path / "single.npz"),
                "--devices",
                "4",
                "--workdir",
                str(tmp_path / "single"),
            ],
            tmp_path / "single.log",
        ),
    ] + [
        (
            [
                "--out",
                str(tmp_path / f"proc{i}.npz"),
                "--devices",
                "2",
                "--num_processes",
                "2",
                "--process_id",
                str(i),
                "--port",
                str(port),
                "--workdir",
                str(shared),
            ],
            tmp_path / f"proc{i}.log",
        )
        for i in range(2)
    ]
    procs = [(*_start(a, log), log) for a, log in specs]  # all three run concurrently
    codes = _finish(procs)
    logs = {str(p): open(p, encoding="utf-8").read()[-3000:] for _, _, p in procs}
    assert codes == [0, 0, 0], f"exit codes {codes}; logs:\n" + "\n".join(
        f"--- {k}\n{v}" for k, v in logs.items()
    )

    single = np.load(tmp_path / "single.npz")
    multi = [np.load(tmp_path / f"proc{i}.npz") for i in range(2)]
    assert sorted(single.files) == sorted(multi[0].files) == sorted(multi[1].files)
    for name in single.files:
        for i in range(2):
            np.testing.assert_allclose(
                multi[i][name],
                single[name],
                rtol=0,
                atol=1e-5,
                err_msg=f"{name}: process {i} vs one process",
            )
    # The steps did something: the policy moved away from the reference.
    moved = [
        np.abs(single[f"p{i:03d}"] - single[f"ref{i:03d}"]).max()
        for i in range(sum(f.startswith("ref") for f in single.files))
    ]
    assert max(moved) > 1e-3
    # Each process reports the global 4-device, 2-process runtime.
    for i in range(2):
        assert f"ok {i} 4 2" in logs[str(tmp_path / f"proc{i}.log")]
    # One checkpoint, written jointly (each process its own shard files).
    assert (shared / "checkpoints" / "2").is_dir()
