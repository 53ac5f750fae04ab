"""Observation ids that do not name one observation (issue 22): catalogue placeholders ("NA",
"0", "unknown", "-", ...), ids shared by several species, ids on more records than one
observation holds. The split keeps an observation's photos together, so one such id would
join records of every species into one group that lands in one split; these ids are
cleared before grouping (the catalogue's value kept in `observation_id_raw`) and counted."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from shared.io.records import Record

DEFAULT_PLACEHOLDERS = ("", "na", "n/a", "nan", "none", "null", "nil", "unknown", "-", "--", "0", "?", "undefined")


def placeholder_key(value: str) -> str:
    """How placeholders are compared: stripped, case-insensitive."""
    return value.strip().casefold()


def clear_unreliable_observations(
    records: list[Record], placeholders: Iterable[str] = DEFAULT_PLACEHOLDERS, max_records: int = 50
) -> dict[str, Any]:
    """Clear every observation id that is a placeholder, used under several species, or on more
    than `max_records` records (0: no cap); return the audit: per reason, ids, records, examples."""
    ph = {placeholder_key(p) for p in placeholders}
    taxa: dict[str, set[str]] = defaultdict(set)
    count: Counter = Counter()
    for r in records:
        if r.observation_id is not None:
            taxa[r.observation_id].add(r.taxon)
            count[r.observation_id] += 1
    why: dict[str, str] = {}
    for oid, n in count.items():
        if placeholder_key(oid) in ph:
            why[oid] = "placeholder"
        elif len(taxa[oid]) > 1:
            why[oid] = "several_species"
        elif max_records and n > max_records:
            why[oid] = "too_many_records"
    for r in records:
        if r.observation_id in why:
            r.extra["observation_id_raw"] = r.observation_id
            r.observation_id = None
    audit: dict[str, Any] = {}
    for reason in ("placeholder", "several_species", "too_many_records"):
        ids = sorted((oid for oid, w in why.items() if w == reason), key=lambda o: (-count[o], o))
        audit[reason] = {
            "ids": len(ids),
            "records": sum(count[o] for o in ids),
            "examples": {o: {"records": count[o], "species": len(taxa[o])} for o in ids[:10]},
        }
    return audit
