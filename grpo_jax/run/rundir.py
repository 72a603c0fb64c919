"""A run directory you can trust: it records its config, has one owner, and heals its logs.

    with rundir.lock(workdir):                       # a second process fails at once
        rundir.check_config(workdir, config, ...)    # resume only what matches
        rundir.recover_jsonl(path)                   # drop a partial last line

* `check_config` saves the resolved config at the first start (`config.json`). A rerun whose
  config differs in a key that changes the computation stops with a diff and the two ways
  out (a new workdir or `--overwrite`); a change in a key that does not (more steps, logging,
  checkpoint cadence, the device mesh) resumes and says so.
* `lock` writes `<workdir>/.lock` (PID, host, start time): written whole to a temporary
  file, then linked to its name (which fails if the name exists), so a lock is never seen
  half-written. A lock whose process is dead (same host), and a lock that cannot be read
  (empty or damaged: a crash or a full disk under an older version), is taken over with a
  warning; a live one is a `LockedError` naming its holder. The lock is removed when the
  block ends, by an exception too (the runner turns SIGTERM into one).
* `disk_full` turns a full disk (ENOSPC, EDQUOT) under it into a `DiskFullError` that says
  "no space left on device" and names the file and the way out.
* `recover_jsonl` truncates a partial or unparsable *last* line (a kill or a full disk during
  a write), warning with the file and line number; damage before the last line is an error
  naming both.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import socket
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping

from grpo_jax.run import config_utils, jsonio

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"

# Keys whose change does not alter what a run computes (patterns over dotted keys).
# The mesh changes the device layout only: results agree across layouts to float rounding.
NON_COMPUTATIONAL = (
    "train.num_steps",
    "train.tensorboard",
    "train.progress",
    "train.checkpoint_every_chunks",
    "train.max_to_keep",
    "train.max_skipped_frac",
    "train.log_every_steps",
    "mesh.*",
)


class ConfigMismatchError(ValueError):
    """The run directory holds a run of a different config."""


class LockedError(RuntimeError):
    """Another live process holds the run directory."""


class DiskFullError(OSError):
    """A write failed for want of space (ENOSPC / EDQUOT); the message names the file."""


_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an exception it was raised from, is a full disk (also when a
    storage library re-raised it as another type with the OS message)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def disk_full(what: str, way_out: str = "free space (or use another --workdir) and rerun"):
    """Re-raise a full disk inside the block as `DiskFullError` naming `what` (e.g. the file
    being written) and `way_out`; other errors pass unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:  # noqa: BLE001  orbax / tensorstore wrap OSError in other types
        if not is_disk_full(e):
            raise
        raise DiskFullError(
            errno.ENOSPC, f"no space left on device while writing {what} ({e}); {way_out}"
        ) from e


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple]:
    """`{dotted key: (old, new)}` over the keys whose values differ (absent = '<absent>')."""
    a = config_utils.flatten(jsonio.to_jsonable(old))
    b = config_utils.flatten(jsonio.to_jsonable(new))
    return {
        k: (a.get(k, "<absent>"), b.get(k, "<absent>"))
        for k in sorted(set(a) | set(b))
        if a.get(k, "<absent>") != b.get(k, "<absent>")
    }


def _computational(key: str, safe: Iterable[str]) -> bool:
    """False when `key`, or `key` without leading sections (`config.train.num_steps`),
    matches a pattern of `safe`."""
    parts = key.split(".")
    tails = [".".join(parts[i:]) for i in range(len(parts))]
    return not any(fnmatch.fnmatchcase(t, pattern) for t in tails for pattern in safe)


def computational_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], safe: Iterable[str] = NON_COMPUTATIONAL
) -> dict[str, tuple]:
    """`config_diff` restricted to the keys that change the computation."""
    return {k: v for k, v in config_diff(old, new).items() if _computational(k, safe)}


def format_diff(diff: Mapping[str, tuple]) -> str:
    return "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in diff.items())


def check_config(
    workdir: str,
    config,
    *,
    what: str = "run",
    overwrite: bool = False,
    safe: Iterable[str] = NON_COMPUTATIONAL,
    log: Callable[[str], Any] = print,
) -> dict[str, tuple]:
    """Compare `config` with the one saved in `workdir`; save it at the first start.

    Returns the diff of the keys that changed without changing the computation (logged).
    Raises `ConfigMismatchError` with the diff when a computational key changed, unless
    `overwrite` (then the new config is saved and the caller must start afresh).
    """
    path = os.path.join(workdir, CONFIG_FILE)
    new = jsonio.to_jsonable(config)
    if not os.path.exists(path) or overwrite:
        jsonio.write_json_atomic(path, new)
        return {}
    old = jsonio.read_json(path)
    diff = config_diff(old, new)
    hard = {k: v for k, v in diff.items() if _computational(k, safe)}
    if hard:
        raise ConfigMismatchError(
            f"{workdir} holds a {what} of a different config; these keys change the "
            f"computation:\n{format_diff(hard)}\nUse a new --workdir, or pass --overwrite to "
            f"discard the old {what}."
        )
    if diff:
        log(
            f"{workdir}: resuming with changed keys that do not alter the computation:\n"
            f"{format_diff(diff)}"
        )
        jsonio.write_json_atomic(path, new)
    return diff


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create_lock(path: str, me: Mapping[str, Any]) -> bool:
    """Create `path` holding `me`, whole or not at all; False if it exists already."""
    directory = os.path.dirname(path)
    text = json.dumps(me)
    with disk_full(f"the lock {path}", "free space and rerun"):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".lock-")
        try:
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
            except BaseException:
                os.remove(tmp)
                raise
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            except OSError as e:  # a filesystem without hard links: O_EXCL, then write
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return False
                try:
                    with os.fdopen(fd, "w") as f:
                        f.write(text)
                except BaseException:
                    os.remove(path)  # never leave an empty lock behind
                    raise
                return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


@contextlib.contextmanager
def lock(workdir: str, log: Callable[[str], Any] = print):
    """Hold `<workdir>/.lock` for the duration of the block (see the module docstring)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(2):
        if _create_lock(path, me):
            break
        try:
            holder = jsonio.read_json(path)
        except FileNotFoundError:
            continue  # released meanwhile
        except (jsonio.CorruptFileError, UnicodeDecodeError, OSError):
            holder = None
        if not isinstance(holder, dict) or "pid" not in holder or "host" not in holder:
            log(
                f"warning: taking over the lock {path}: it cannot be read (empty or "
                f"damaged: its holder crashed, or the disk was full, while writing it)"
            )
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        pid, host = int(holder["pid"]), holder["host"]
        if pid == me["pid"] and host == me["host"]:
            raise LockedError(
                f"{workdir} is already locked by this process "
                f"(PID {pid}); runs in one workdir cannot nest"
            )
        if host == me["host"] and (pid <= 0 or not _alive(pid)):
            log(f"warning: taking over the stale lock {path} (PID {pid} on {host} is not running)")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        raise LockedError(
            f"{workdir} is in use by PID {pid} on host {host} (lock "
            f"{path}); wait for it, or delete the lock if that process "
            f"is gone"
        )
    else:
        raise LockedError(f"{workdir}: could not take the lock {path}; another process races")
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def recover_jsonl(path: str, log: Callable[[str], Any] = print) -> list[dict]:
    """Parse the JSONL file `path`; a partial or unparsable last line is cut off (warning
    names the file and line). Returns the parsed rows. Missing file: []."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    rows, good_bytes = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            good_bytes += len(line.encode("utf-8"))
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            if i < len(lines) - 1:
                raise jsonio.CorruptFileError(
                    f"{path}: line {i + 1} of {len(lines)} is damaged ({e}); only a partial "
                    f"last line can be recovered"
                ) from None
            log(
                f"warning: {path}: line {i + 1} is a partial write ({len(line)} chars, "
                f"{e}); truncated"
            )
            with open(path, "r+b") as f:
                f.truncate(good_bytes)
            break
        rows.append(row)
        good_bytes += len(line.encode("utf-8"))
        if not line.endswith("\n"):  # a whole object, only its newline lost
            with open(path, "a", encoding="utf-8") as f:
                f.write("\n")
    return rows
