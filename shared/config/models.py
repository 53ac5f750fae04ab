"""The models of a pipeline run whose pretrained weights are staged (the global teacher,
the student, the baseline), the WeightsRequest of each from its own validated config,
and the checks an offline run needs (weights.offline without a hub)."""

from __future__ import annotations

from shared.config.student import load_student_config, timm_model_name
from shared.config.teacher import load_teacher_config
from shared.config.weights import WeightsRequest, request_from_section

KINDS = ("teacher", "student", "baseline")


def model_request(role: str, kind: str, config: dict, overrides: dict | None = None) -> WeightsRequest:
    """The WeightsRequest of one model from its config (validated by its own loader);
    `overrides` are a teacher's dotted overrides, as train_teacher applies them."""
    if kind == "teacher":
        return request_from_section(role, load_teacher_config(config, overrides)["model"])
    if kind == "student":
        m = load_student_config(config)["model"]
        return request_from_section(role, m, name=timm_model_name(m))
    if kind == "baseline":
        return request_from_section(role, config, name=config.get("model_name"))
    raise ValueError(f"stage_weights kind {kind!r}: one of {KINDS}")


def run_requests(cfg: dict) -> list[tuple[str, str, dict]]:
    """(role, kind, config) of every model of a pipeline config whose weights are staged:
    the global teacher, the student and the baseline. Regional teachers start from the
    global teacher's checkpoint and need no weights of their own."""
    t = cfg["teachers"]
    return [
        ("global teacher", "teacher", load_teacher_config(t["global_config"], t["overrides"])),
        ("student", "student", load_student_config(cfg["student"]["config"], cfg["student"]["overrides"])),
        ("baseline", "baseline", dict(cfg["baseline"])),
    ]


def offline_problems(cfg: dict) -> list[str]:
    """With weights.offline, every pretrained model needs a source that does not need the
    hub: model.pretrained_path, a pinned sha256 (a pre-seeded cache), or a hub mirror."""
    w = cfg.get("weights") or {}
    if not w.get("offline") or w.get("hub_endpoint"):
        return []
    problems = []
    for role, kind, config in run_requests(cfg):
        r = model_request(role, kind, config)
        if r.pretrained and not (r.sha256 or (r.pretrained_path and not r.pretrained_path.startswith("http"))):
            problems.append(
                f"{role} {r.model_id}: weights.offline is true but it has no model.pretrained_path "
                "(volume path or gs://) and no model.sha256 of a pre-seeded weights cache "
                "(`make stage-weights` prints them); set one, or weights.hub_endpoint to a mirror"
            )
    return problems
