"""Markdown helpers of the study's report: a table, a number, an interval."""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table (every cell through `str`)."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def ci(e: Mapping[str, Any] | None, digits: int = 3) -> str:
    """'mean [low, high]' of an `inference.Estimate` dict, or '–'."""
    if not e:
        return "–"
    return f"{e['mean']:+.{digits}g} [{e['low']:+.{digits}g}, {e['high']:+.{digits}g}]"
