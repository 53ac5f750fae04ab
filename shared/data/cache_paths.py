"""Where a cached record's image is, for the steps that read the image cache (the
training datasets, the export's sample images) without the machinery that builds it
(shared/data/image_cache.py: fetching, rendering, the index). A record's `cache_path` is
relative to the cache, a directory or gs://bucket/prefix (then read through a local copy)."""

from __future__ import annotations

import os
from pathlib import Path

from shared.data.remote_cache import remote_cache
from shared.io.gcs import is_gs_uri


def resolve(cache_dir: str | os.PathLike, rec: dict) -> Path:
    """The cached file of a cached record; refuses paths that escape the cache.
    For a gs:// cache, the local copy (downloaded on first use)."""
    remote = remote_cache(str(cache_dir)) if is_gs_uri(str(cache_dir)) else None
    root = (remote.local if remote else Path(cache_dir)).resolve()
    p = (root / str(rec["cache_path"])).resolve()
    if root not in p.parents:
        raise ValueError(f"record {rec.get('image_id')}: cache_path {rec['cache_path']!r} escapes the cache")
    return remote.fetch(p.relative_to(root).as_posix()) if remote else p
