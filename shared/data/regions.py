"""Region lists as configs and results write them ("EU_NORTH,EU_EAST"): one parser for
every place that reads one (teacher region filters, the pipeline's regional teachers,
the split's region filter, the student's teacher weights, the manifest's per-region figures)."""

from __future__ import annotations

from collections.abc import Iterable


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
