"""The manifest's `release` section: whether this run's model was published where the web app
loads it, the champion/challenger decision, and both models' figures on the same test images
(the publish step's result, shared/release/publish.py)."""

from __future__ import annotations

from typing import Any


def release_section(summary: dict | None, export_completed: bool) -> dict[str, Any]:
    """From the publish step's result ({} when it did not run); export_completed: whether phase 6
    delivered a validated bundle (without one there is nothing to publish)."""
    s = dict(summary or {})
    if not s:
        if not export_completed:
            return {"status": "skipped", "reason": "no validated TF.js export to publish", "published": False}
        return {"status": "not_run", "reason": "the publish step left no result", "published": False}
    if s.get("status") != "completed":
        return {"status": s.get("status") or "skipped", "reason": s.get("reason") or "", "published": False}
    decision = s.get("decision") or {}
    comparison = s.get("comparison") or {}
    return {
        "status": "completed",
        "published": bool(s.get("published")),
        "decision": decision.get("decision"),
        "forced": bool(decision.get("forced")),
        "checks": decision.get("checks") or [],
        "uri": s.get("uri"),
        "version": s.get("version"),
        "candidate": {
            **(s.get("candidate") or {}),
            "on_shared_classes": comparison.get("candidate"),
            "new_classes": comparison.get("new_classes"),
        },
        "current": {
            "version": s.get("current_version"),
            "headline": s.get("current"),
            "on_shared_classes": comparison.get("current"),
            "shared_classes": comparison.get("shared_classes"),
            "dropped_classes": comparison.get("dropped_class_count"),
        }
        if s.get("current_version")
        else None,
    }
