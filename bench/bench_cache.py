"""cache_images throughput against the local HTTP image server: 300 synthetic
JPEGs (600x500), cold (fetch + decode + resize to 448 + write) and warm (resume)."""

from __future__ import annotations

import json
import tempfile

from shared.data.fetch import FetchPolicy
from shared.data.image_cache import cache_images
from tests.image_server import ImageServer, jpeg_bytes


def run(tmp: str | None = None, n: int = 300) -> dict:
    tmp = tmp or tempfile.mkdtemp()
    policy = FetchPolicy(allow_private_networks=True, per_host_concurrency=8, per_host_rate=0)
    with ImageServer() as server:
        recs = [
            {
                "image_id": f"i{i}",
                "image_url": server.add(f"{i}.jpg", jpeg_bytes(600, 500, seed=i)),
                "taxon": "t",
                "region": "EU_SW",
                "license": "CC0",
            }
            for i in range(n)
        ]
        quiet = lambda done, total: None  # noqa: E731
        cold = cache_images(recs, tmp, resize=448, workers=8, policy=policy, progress=quiet)
        warm = cache_images(recs, tmp, resize=448, workers=8, policy=policy, progress=quiet)
    return {
        "cache_images": n,
        "cache_cold_images_per_s": round(n / cold.seconds, 1),
        "cache_warm_images_per_s": round(n / warm.seconds, 1),
        "cache_warm_fetched": warm.fetched,
        "cache_cold_failed": cold.failed,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
