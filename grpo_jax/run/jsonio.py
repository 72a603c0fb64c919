"""JSON at the edges: one converter to plain JSON, atomic writes, reads that name the file.

Every JSON file the project writes (cell results, run configs, summaries, reports, checkpoint
metadata) goes through `write_json_atomic`: serialise first, then a temporary file in the same
directory, fsync, `os.replace`. A crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import ml_collections
import numpy as np


def to_jsonable(x: Any) -> Any:
    """Plain-JSON view of configs, results and metadata: ConfigDict -> dict, tuples -> lists,
    numpy / jax scalars and arrays -> Python numbers and lists. Anything else is a TypeError
    naming the type (no silent `str()`)."""
    if isinstance(x, ml_collections.ConfigDict):
        x = x.to_dict()
    if isinstance(x, ml_collections.FieldReference):
        return to_jsonable(x.get())
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    if isinstance(x, np.generic):
        return x.item()
    if hasattr(x, "tolist"):  # numpy / jax arrays
        return to_jsonable(np.asarray(x).tolist())
    raise TypeError(f"Value of type {type(x).__name__} is not JSON-serialisable: {x!r}")


def dumps(obj: Any, **kwargs) -> str:
    """`json.dumps(to_jsonable(obj))`; NaN and inf are allowed (Python's JSON dialect)."""
    return json.dumps(to_jsonable(obj), allow_nan=True, **kwargs)


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same directory and `os.replace`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            # A write or fsync names no file (e.g. ENOSPC): name the one being written.
            raise OSError(e.errno, e.strerror, path) from e
        raise


def write_json_atomic(path: str, obj: Any, indent: int | None = 1) -> None:
    """Write `obj` as JSON to `path` atomically. The object is serialised before anything
    touches the disk, so a serialisation error leaves neither `path` nor a temporary file."""
    write_text_atomic(path, dumps(obj, indent=indent, sort_keys=True))


class CorruptFileError(ValueError):
    """A JSON file exists but cannot be parsed; the message names the file."""


def read_json(path: str) -> Any:
    """`json.load` of `path`; a parse error becomes `CorruptFileError` naming the file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptFileError(
            f"{path}: not valid JSON ({e}); the file is damaged " f"(a partial write?)"
        ) from None
