"""Split time at scale: the plan's stratified split on 200,000 synthetic records
(long-tailed classes, several regions, observations of two photos)."""

from __future__ import annotations

import json
import time

import numpy as np

from shared.data.split import stratified_split


def synthetic_records(n: int, n_classes: int = 9000, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    taxa = (rng.zipf(1.3, n) - 1) % n_classes
    regions = rng.choice(["EU_SW", "EU_NORTH", "EU_EAST", "OTHER"], n)
    return [
        {
            "image_id": f"i{i:07d}",
            "taxon": f"t{taxa[i]}",
            "region": str(regions[i]),
            "sha256": f"{i:064x}",
            "observation_id": f"o{i // 2}",
        }
        for i in range(n)
    ]


def run(n: int = 200_000) -> dict:
    recs = synthetic_records(n)
    t0 = time.perf_counter()
    res = stratified_split(recs, seed=42)
    t_all = time.perf_counter() - t0
    t0 = time.perf_counter()
    stratified_split(recs, seed=42, regions="EU_NORTH,EU_EAST")
    t_region = time.perf_counter() - t0
    return {
        "split_records": n,
        "split_seconds": round(t_all, 3),
        "split_regional_seconds": round(t_region, 3),
        "split_records_per_second": round(n / t_all),
        "split_projected_seconds_741k": round(t_all * 741_533 / n, 2),
        "split_classes": res.stats["classes_total"],
        "split_leak_free": res.stats["leakage"]["leak_free"],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
