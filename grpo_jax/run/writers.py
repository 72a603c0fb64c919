"""Metric writers: the one place (with checkpoint.py) where training touches files.

`MetricWriter` appends one JSON line per step to `<workdir>/metrics.jsonl` and mirrors every
scalar to TensorBoard event files (tensorboardX, no TensorFlow needed). `Progress` is a tqdm
bar with ETA that shows the latest metrics. Nothing here runs under jit: the host loop hands
over already-fetched NumPy values between chunks.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

import numpy as np

from grpo_jax.run import jsonio, rundir


def _to_python(value: Any) -> Any:
    """NumPy / JAX scalars and arrays -> JSON-serialisable Python values (NaN kept as NaN).
    Python scalars (already converted, e.g. by `member_rows`) pass through."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    arr = np.asarray(value)
    if arr.ndim == 0:
        return arr.item()
    return arr.tolist()


def unstack_steps(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`{name: [K, ...]}` stacked over K steps -> K dicts `{name: [...]}` (host side)."""
    if not metrics:
        return []
    return member_rows({k: np.asarray(v)[None] for k, v in metrics.items()})[0]


def member_rows(
    metrics: Mapping[str, Any], steps: Iterable[int] | None = None
) -> list[list[dict[str, Any]]]:
    """`{name: [S, K, ...]}` (S members, K steps) -> `rows[s][i]`, the dict `{name: value}`
    of member s at step `steps[i]` (default every step), values as Python numbers / lists.

    Each array is converted once (`tolist` of the selected steps), not value by value: for a
    population of 640 members x 100 steps the other way took seconds per chunk.
    """
    arrays = {k: np.asarray(v) for k, v in metrics.items()}
    if not arrays:
        return []
    lead = {a.shape[:2] for a in arrays.values()}
    if len(lead) != 1 or len(next(iter(lead))) != 2:
        raise ValueError(
            f"metrics must share their [members, steps] axes: "
            f"{ {k: a.shape for k, a in arrays.items()} }"
        )
    ((num_members, num_steps),) = lead
    idx = list(range(num_steps)) if steps is None else list(steps)
    lists = {k: a[:, idx].tolist() for k, a in arrays.items()}
    return [
        [{k: v[m][i] for k, v in lists.items()} for i in range(len(idx))]
        for m in range(num_members)
    ]


class MetricWriter:
    """Appends `{"step": s, **metrics}` lines to `metrics.jsonl` and scalars to TensorBoard.

    Vector metrics (e.g. `mode_shares`) are written whole to JSONL and per component to
    TensorBoard (`mode_shares/0`, ...). Re-opening an existing workdir appends (resume).
    `rows` counts the file's rows (those there at opening included); `sync` makes every
    row written so far durable (flush and fsync), which the runner does before each
    checkpoint.
    """

    def __init__(self, workdir: str, tensorboard: bool = True, filename: str = "metrics.jsonl"):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, filename)
        self.rows = 0
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                self.rows = sum(1 for line in f if line.strip())
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter  # imported lazily: optional at import time

            self._tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        record = {"step": int(step)}
        record.update({k: _to_python(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        self.rows += 1
        if self._tb is not None:
            for name, value in record.items():
                if name == "step":
                    continue
                arr = np.asarray(value, dtype=np.float64)
                if arr.ndim == 0:
                    self._tb.add_scalar(name, float(arr), int(step))
                else:
                    for i, v in enumerate(arr.reshape(-1)):
                        self._tb.add_scalar(f"{name}/{i}", float(v), int(step))

    def write_many(self, first_step: int, rows: Iterable[Mapping[str, Any]]) -> None:
        for i, row in enumerate(rows):
            self.write(first_step + i, row)
        self.flush()

    def flush(self) -> None:
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def sync(self) -> None:
        """Flush, then fsync the JSONL file: its rows survive a crash of the machine."""
        self.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullWriter(MetricWriter):
    """Writes nothing: for processes other than 0 in a multi-host run."""

    def __init__(self):  # pylint: disable=super-init-not-called
        self.rows = 0

    def write(self, step, metrics) -> None:
        del step, metrics

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def _parse_lines(path: str) -> list[tuple[str, dict[str, Any]]]:
    """(raw line, parsed row) of every non-empty line; a bad line names the file and line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                out.append((line, json.loads(line)))
            except ValueError as e:
                raise ValueError(f"{path}: line {i + 1} is not valid JSON ({e})") from None
    return out


def read_metrics(workdir: str, filename: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """The JSONL lines of a run, in order (for reports and tests)."""
    return [row for _, row in _parse_lines(os.path.join(workdir, filename))]


def truncate_jsonl(path: str, step: int, log=print) -> None:
    """On resume: cut a partial last line (with a warning naming the file and line), then
    drop the rows at or after `step` (they will be rewritten). Atomic rewrite."""
    if not os.path.exists(path):
        return
    rundir.recover_jsonl(path, log)
    keep = [line for line, row in _parse_lines(path) if row["step"] < step]
    jsonio.write_text_atomic(path, "".join(keep))


def stacked_history(
    workdir: str, num_members: int, filename: str = "metrics.jsonl"
) -> dict[str, np.ndarray]:
    """`{metric: [S, steps, ...]}` from a population's JSONL (one line per logged step and
    member, tagged `member`), steps in order: the whole history of a run, resumed or not
    (every `train.log_every_steps`-th step when that is > 1)."""
    rows: list[list[dict[str, Any]]] = [[] for _ in range(num_members)]
    for r in read_metrics(workdir, filename):
        rows[int(r["member"])].append(r)
    for own in rows:
        own.sort(key=lambda r: r["step"])
    if not rows[0]:
        return {}
    keys = [k for k in rows[0][0] if k not in ("step", "member", "seed")]
    return {k: np.asarray([[r[k] for r in own] for own in rows]) for k in keys}


class Progress:
    """A tqdm progress bar with ETA over RL steps; `update(n, postfix)` between chunks."""

    def __init__(self, total: int, initial: int = 0, desc: str = "grpo", disable: bool = False):
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=disable,
            dynamic_ncols=True,
            smoothing=0.3,
        )

    def update(self, n: int, postfix: Mapping[str, float] | None = None) -> None:
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()
