"""current.json, the pointer the web app follows to the model it loads: reading it, repointing
it (with a precondition on what was read, so two writers cannot both win), listing the versions
and rolling back. It keeps the versions that were current before, the latest last: rollback
without a version goes back to the one before, as an undo."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

from shared.release.media import POINTER_CACHE_CONTROL
from shared.release.store import ReleaseStore, ReleaseStoreError

POINTER = "current.json"
MODELS = "models"
RELEASE_FILE = "release.json"


def read_pointer(store: ReleaseStore) -> tuple[dict[str, Any] | None, str | None]:
    """current.json and its generation; (None, None) before the first release."""
    got = store.read(POINTER)
    if got is None:
        return None, None
    return json.loads(got.data), got.generation


def read_release(store: ReleaseStore, version: str) -> dict[str, Any] | None:
    """models/<version>/release.json, or None when that version does not exist."""
    got = store.read(f"{MODELS}/{version}/{RELEASE_FILE}")
    return json.loads(got.data) if got else None


def write_pointer(
    store: ReleaseStore,
    version: str,
    old: dict[str, Any] | None,
    generation: str | None,
    action: str,
    reason: str = "",
    history: list[str] | None = None,
) -> dict[str, Any]:
    """Repoint current.json to `version` if it is still at `generation` (ConcurrentUpdate if not)."""
    if history is None:
        history = [*((old or {}).get("history") or []), old["version"]] if old else []
    pointer = {
        "version": version,
        "model": f"{MODELS}/{version}/model.json",
        "base": f"{MODELS}/{version}/",
        "release": f"{MODELS}/{version}/{RELEASE_FILE}",
        "updated_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "action": action,
        "history": history,
    }
    if reason:
        pointer["reason"] = reason
    body = json.dumps(pointer, indent=2, sort_keys=True).encode()
    store.replace(POINTER, body, "application/json", POINTER_CACHE_CONTROL, generation)
    return pointer


def list_versions(store: ReleaseStore) -> list[dict[str, Any]]:
    """Every version with a release.json, oldest published first: its headline figures, and whether current."""
    pointer, _ = read_pointer(store)
    current = (pointer or {}).get("version")
    versions = sorted({n.split("/")[1] for n in store.list(MODELS + "/") if n.endswith("/" + RELEASE_FILE)})
    out = []
    for v in versions:
        r = read_release(store, v) or {}
        out.append(
            {
                "version": v,
                "current": v == current,
                "published_at": r.get("published_at") or "",
                "headline": r.get("headline") or {},
                "run": r.get("run"),
            }
        )
    return sorted(out, key=lambda row: (row["published_at"], row["version"]))


def rollback(store: ReleaseStore, version: str | None = None, reason: str = "") -> dict[str, Any]:
    """Repoint current.json to `version`, by default the version current before the present one."""
    pointer, generation = read_pointer(store)
    if pointer is None:
        raise ReleaseStoreError(f"{store.locate(POINTER)} does not exist: nothing has been released")
    history = list(pointer.get("history") or [])
    if version is None:
        if not history:
            raise ReleaseStoreError(f"{pointer['version']} is the only release ever current: nothing to roll back to")
        version, history = history[-1], history[:-1]
    else:
        history = [*history, pointer["version"]]
    if version == pointer["version"]:
        raise ReleaseStoreError(f"{version} is already current")
    if read_release(store, version) is None:
        raise ReleaseStoreError(f"{store.locate(MODELS + '/' + version + '/')} holds no release ({RELEASE_FILE})")
    note = reason or f"rollback from {pointer['version']}"
    return write_pointer(store, version, pointer, generation, action="rollback", reason=note, history=history)
