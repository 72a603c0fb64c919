"""Run records: validation, the baseline test, and the selections every table and figure uses.

A *cell* is (task, modality, beta > 0). A record is the unregularised *baseline* when its KL
choice is ``none`` (`grpo_jax.kl_choice.is_baseline`) or its beta is 0; baseline records
belong to every cell of their (task, modality) and are never part of a spread. See
``docs/design.md``, section "The hypothesis report".
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from grpo_jax import kl_choice

OUTCOMES = ("mode_coverage", "reward", "exact_kl_rev", "exact_kl_fwd", "entropy")
BASELINE_CHOICE = kl_choice.NONE_NAME
REQUIRED_KEYS = ("task", "modality", "multimodal", "kl_choice", "beta", "seed", "final")


def validate_records(records: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Check the keys the report needs and the KL choice names (`kl_choice.KLChoice.parse`);
    ``ValueError`` naming the record and the key or name.

    Returns shallow copies of the records, in order.
    """
    if not records:
        raise ValueError("No run records to report on.")
    out = []
    flag: dict[tuple, bool] = {}
    for i, r in enumerate(records):
        for k in REQUIRED_KEYS:
            if k not in r:
                raise ValueError(f"Record {i} lacks key {k!r}; required keys: {REQUIRED_KEYS}")
        for k in OUTCOMES:
            if k not in r["final"]:
                raise ValueError(f"Record {i} ('final') lacks key {k!r}; required: {OUTCOMES}")
        try:
            kl_choice.KLChoice.parse(r["kl_choice"])
        except ValueError as e:
            raise ValueError(f"Record {i}: {e}") from None
        tm = (r["task"], r["modality"])
        if flag.setdefault(tm, bool(r["multimodal"])) != bool(r["multimodal"]):
            raise ValueError(
                f"Records of task {tm[0]!r}, modality {tm[1]!r} disagree on 'multimodal'."
            )
        out.append(dict(r))
    return out


@functools.lru_cache(maxsize=None)
def _is_none_choice(name: str) -> bool:
    return kl_choice.is_baseline(name)


def is_baseline_record(record: Mapping[str, Any]) -> bool:
    """Unregularised run: its KL choice is ``none`` (`kl_choice.is_baseline`) or beta == 0.

    An unknown KL choice name is a ``ValueError`` listing the valid ones.
    """
    return _is_none_choice(record["kl_choice"]) or float(record["beta"]) == 0.0


def unique(seq: Iterable) -> list:
    """The distinct items of ``seq`` in order of first appearance."""
    seen, out = set(), []
    for x in seq:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def task_modalities(records) -> list[tuple[str, str, bool]]:
    """(task, modality, multimodal) in order: tasks by first appearance, unimodal first."""
    tms = unique((r["task"], r["modality"], bool(r["multimodal"])) for r in records)
    tasks = unique(t for t, _, _ in tms)
    return sorted(tms, key=lambda x: (tasks.index(x[0]), x[2], tms.index(x)))


def betas(records, task, modality) -> list[float]:
    """Sorted betas of the regularised runs of (task, modality)."""
    return sorted(
        {
            float(r["beta"])
            for r in records
            if r["task"] == task and r["modality"] == modality and not is_baseline_record(r)
        }
    )


def choices(records) -> list[str]:
    """Regularised KL choices in order of first appearance."""
    return unique(r["kl_choice"] for r in records if not is_baseline_record(r))


def select(records, task, modality, beta=None, choice=None, baseline=None) -> list[dict]:
    """Records of (task, modality), sorted by seed; optionally only those of ``beta``
    (baseline records pass any beta), of ``choice``, or with ``is_baseline_record == baseline``."""
    out = []
    for r in records:
        if r["task"] != task or r["modality"] != modality:
            continue
        if baseline is not None and is_baseline_record(r) != baseline:
            continue
        if beta is not None and not is_baseline_record(r) and float(r["beta"]) != beta:
            continue
        if choice is not None and r["kl_choice"] != choice:
            continue
        out.append(r)
    return sorted(out, key=lambda r: r["seed"])


def by_choice(recs) -> list[tuple[str, list[dict]]]:
    """``[(kl_choice, its records)]`` in order of first appearance."""
    names = unique(r["kl_choice"] for r in recs)
    return [(c, [r for r in recs if r["kl_choice"] == c]) for c in names]


def cells(records) -> Iterator[tuple[str, str, bool, float, list[dict], list[dict]]]:
    """Every cell as ``(task, modality, multimodal, beta, regularised records, baseline
    records)``, in report order (`task_modalities`, then increasing beta)."""
    for task, modality, multimodal in task_modalities(records):
        base = select(records, task, modality, baseline=True)
        for beta in betas(records, task, modality):
            recs = select(records, task, modality, beta=beta, baseline=False)
            yield task, modality, multimodal, beta, recs, base


def final_values(recs, outcome) -> np.ndarray:
    """``[n]`` final values of ``outcome``, one per record."""
    return np.array([float(r["final"][outcome]) for r in recs], np.float64)
