"""Publishing a release: this run's validated TF.js bundle copied under models/<version>/ with
release.json (what it is, where it came from, its headline figures and the decision), written
only if the champion/challenger comparison lets it out, then current.json repointed to it with
a precondition on the pointer read before the comparison (shared/release/store.py)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.io.checkpoint import load_checkpoint
from shared.release.decision import (
    classes_digest,
    decide,
    figures_on,
    new_class_figures,
    score_checkpoint,
)
from shared.release.media import VERSIONED_CACHE_CONTROL, content_type
from shared.release.pointer import MODELS, RELEASE_FILE, read_pointer, read_release, write_pointer
from shared.release.store import ReleaseStore, fetch_to, open_store


def new_version(now: _dt.datetime | None = None) -> str:
    """A version name that sorts by time: UTC timestamp and a short random id."""
    t = (now or _dt.datetime.now(_dt.UTC)).astimezone(_dt.UTC)
    return f"{t:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def _fetch_checkpoint(uri: str, work: Path) -> Path | None:
    """The current release's student checkpoint (and its sha256 beside it) copied into `work`."""
    dest = work / "current_student.pt"
    if not uri or not fetch_to(uri, dest):
        return None
    fetch_to(uri + ".sha256", Path(str(dest) + ".sha256"))
    return dest


def compare_with_current(
    current: dict[str, Any], candidate_ckpt: str, test_records: list[dict], cache_dir: str, target_precision: float
) -> dict[str, Any]:
    """Both students on this run's test images: figures on the classes both know, the candidate's
    on classes new to it, and the classes it dropped. 'problem' says why nothing was compared."""
    cand_classes = list(load_checkpoint(candidate_ckpt)["classes"])
    with tempfile.TemporaryDirectory() as work:
        ckpt = _fetch_checkpoint(str(current.get("student_checkpoint") or ""), Path(work))
        if ckpt is None:
            return {
                "problem": f"the current release's student checkpoint {current.get('student_checkpoint')!r} "
                "cannot be read"
            }
        cur_classes = list(load_checkpoint(ckpt)["classes"])
        both = sorted(set(cand_classes) & set(cur_classes))
        new = sorted(set(cand_classes) - set(cur_classes))
        out: dict[str, Any] = {
            "shared_classes": len(both),
            "dropped_classes": sorted(set(cur_classes) - set(cand_classes))[:20],
            "dropped_class_count": len(set(cur_classes) - set(cand_classes)),
        }
        known = set(both)
        on_both = [r for r in test_records if r.get("taxon") in known]
        if on_both:
            out["current"] = figures_on(score_checkpoint(str(ckpt), on_both, cache_dir), both, target_precision)
    wanted = known | set(new)
    cand = score_checkpoint(candidate_ckpt, [r for r in test_records if r.get("taxon") in wanted], cache_dir)
    out["candidate"] = figures_on(cand, both, target_precision) if both else {"images": 0}
    out["new_classes"] = new_class_figures(cand, new)
    return out


def _copy_bundle(store: ReleaseStore, bundle_dir: Path, version: str) -> list[dict[str, Any]]:
    """Every file of the bundle under models/<version>/, each created once (never overwritten)."""
    files = []
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle_dir).as_posix()
        data = path.read_bytes()
        ctype = content_type(rel)
        store.create(f"{MODELS}/{version}/{rel}", data, ctype, VERSIONED_CACHE_CONTROL)
        digest = hashlib.sha256(data).hexdigest()
        files.append({"name": rel, "bytes": len(data), "sha256": digest, "content_type": ctype})
    return files


def without_none(obj: Any) -> Any:
    """`obj` with every None dropped (dict values, list items): KFP cannot pass a None inside a
    dict parameter to the next step (the manifest's release_summary)."""
    if isinstance(obj, dict):
        return {str(k): without_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [without_none(v) for v in obj if v is not None]
    return obj


def publish_release(
    *,
    uri: str,
    bundle_dir: str,
    candidate_ckpt: str,
    test_records: list[dict],
    cache_dir: str,
    settings: dict[str, Any],
    record: dict[str, Any],
    target_precision: float,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Compare with the current release, then publish or refuse; the result for the manifest.

    settings: the config's release section (margins, force, reason). record: what release.json
    says about the candidate (run, git commit, headline figures, checkpoint and bundle URIs)."""
    store = open_store(uri)
    pointer, generation = read_pointer(store)
    current = read_release(store, pointer["version"]) if pointer else None
    comparison = None
    if current is not None:
        comparison = compare_with_current(current, candidate_ckpt, test_records, cache_dir, target_precision)
    decision = decide(
        (comparison or {}).get("candidate"),
        (comparison or {}).get("current"),
        settings["margins"],
        force=bool(settings.get("force")),
        reason=str(settings.get("reason") or ""),
        first=pointer is None,
    )
    if comparison and comparison.get("problem") and not decision["forced"] and not decision["publish"]:
        decision["problems"].insert(0, comparison["problem"])
    classes = list(load_checkpoint(candidate_ckpt)["classes"])
    result: dict[str, Any] = {
        "status": "completed",
        "uri": store.uri,
        "published": decision["publish"],
        "decision": decision,
        "current_version": pointer["version"] if pointer else None,
        "current": (current or {}).get("headline"),
        "comparison": comparison,
        "candidate": {**record, "classes": len(classes), "classes_digest": classes_digest(classes)},
    }
    log(f"release: {decision['decision']}")
    if not decision["publish"]:
        return result
    version = new_version()
    files = _copy_bundle(store, Path(bundle_dir), version)
    release = {
        "version": version,
        # microseconds: list_versions orders by it (two versions can share a second)
        "published_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        **result["candidate"],
        "replaces": result["current_version"],
        "decision": decision,
        "comparison": comparison,
        "files": files,
    }
    body = json.dumps(release, indent=2, sort_keys=True, default=str).encode()
    store.create(f"{MODELS}/{version}/{RELEASE_FILE}", body, "application/json", VERSIONED_CACHE_CONTROL)
    write_pointer(store, version, pointer, generation, action="publish", reason=decision.get("reason", ""))
    log(f"release: {version} published at {store.locate(MODELS + '/' + version + '/')}; current.json points to it")
    return {**result, "version": version, "location": store.locate(f"{MODELS}/{version}/")}
