"""Region lists as configs and results write them ("EU_NORTH,EU_EAST"): one parser for
every place that reads one (teacher region filters, the pipeline's regional teachers,
the split's region filter, the student's teacher weights, the manifest's per-region figures),
and the one form a record's region takes (`normalize_region`, applied at ingest)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_SEPARATORS = re.compile(r"[\s\-_]+")


def normalize_region(raw: str) -> str:
    """A catalogue's region in the form teacher configs name it: invisible characters removed
    (zero-width space, BOM, controls), NFKC (full-width letters, non-breaking spaces and
    Unicode dashes become ASCII), upper case, runs of spaces, '-' and '_' one '_', none at
    the ends: 'eu-sw', 'EU SW', 'ＥＵ＿ＳＷ' -> 'EU_SW'. "" when nothing visible is left."""
    s = "".join(ch for ch in raw if not _invisible(ch))
    s = unicodedata.normalize("NFKC", s)
    s = "".join("-" if unicodedata.category(ch) == "Pd" else ch for ch in s)
    return _SEPARATORS.sub("_", s).strip("_").upper()


def _invisible(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat == "Cf" or (cat == "Cc" and not ch.isspace())


def region_list(regions: str | Iterable[str] | None) -> list[str]:
    """'EU_NORTH, EU_EAST' -> ['EU_NORTH', 'EU_EAST']: in the given order, each name stripped,
    empty parts dropped; '' or None -> []."""
    if regions is None:
        return []
    items = regions.split(",") if isinstance(regions, str) else list(regions)
    return [r.strip() for r in items if r and r.strip()]


def parse_regions(regions: str | Iterable[str] | None) -> set[str] | None:
    """'EU_NORTH,EU_EAST' -> {'EU_NORTH', 'EU_EAST'}; '' or None -> None (all regions)."""
    return set(region_list(regions)) or None
