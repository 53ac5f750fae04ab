"""bench/results.json: each benchmark writes its own key and keeps the others' (atomically)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def merge_key(path: Path, key: str, figures: dict) -> None:
    """Write `figures` under `key` of the JSON file at `path`, keeping its other keys (an
    unreadable or non-object file is replaced); temp file + rename."""
    data: dict = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
        if not isinstance(data, dict):
            data = {}
    data[key] = figures
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
