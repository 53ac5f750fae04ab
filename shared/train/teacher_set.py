"""The teachers of a run (plan phases 1, 2, 2b) as the pipeline passes them: the global
teacher's config, and each regional teacher's regions, weight and config.

One source of truth for teacher weights: the pipeline config's `teachers.global_weight`
and `teachers.regional[i].weight` (the KFP parameters users compare across runs); a
regional entry without a weight takes the student config's weight for its regions
(student.yaml `teachers[].region_filter`), else 1.0. combine_soft_labels uses exactly
these values; student.yaml's own weights are only that default.

Regional configs are layered: each regional teacher starts from
`teachers.regional_base_config` (the plan's teacher_regional.yaml) and its own file
(e.g. teacher_eu_core.yaml, which has no training section) overrides only what it says;
the base's data.region_filter is replaced by the teacher's own regions."""

from __future__ import annotations

from typing import Any

from shared.config.schema import ConfigError, merge_checked, read_config_source
from shared.config.student import load_student_config, teacher_weight
from shared.config.teacher import load_teacher_config, photometric_words


def regional_config(base_path: str, item: dict, overrides: dict) -> dict:
    """A regional teacher's config: the regional base, its own file on top, then overrides."""
    base = load_teacher_config(base_path)
    for key in ("region_filter", "train_jsonl", "val_jsonl"):  # the base's own data, not this teacher's
        base["data"][key] = ""
    own = read_config_source(item["config"], "teacher config") if item.get("config") else {}
    own = photometric_words(own, None)[0]  # YAML true/false -> the setting's words
    merged = merge_checked(base, own)
    merged["data"]["region_filter"] = item["regions"]
    return load_teacher_config(merged, overrides)


def teacher_set(cfg: dict) -> tuple[dict, list[dict[str, Any]]]:
    """(global teacher config, [{teacher, regions, weight, config}]) for a pipeline config."""
    t = cfg["teachers"]
    global_cfg = load_teacher_config(t["global_config"], t["overrides"])
    if global_cfg["data"]["region_filter"].strip():  # it would quietly narrow the teacher of every region
        raise ConfigError(
            f"{t['global_config']}: data.region_filter {global_cfg['data']['region_filter']!r} "
            "would narrow the global teacher; regional teachers go under teachers.regional"
        )
    student = load_student_config(cfg["student"]["config"], cfg["student"]["overrides"])
    regional = []
    for item in t["regional"]:
        rc = regional_config(t["regional_base_config"], item, {**t["overrides"], **item.get("overrides", {})})
        weight = item["weight"] if "weight" in item else teacher_weight(student, item["regions"], 1.0)
        # "teacher", not "name": a loop item's .name is KFP's own attribute
        regional.append({"teacher": item["name"], "regions": item["regions"], "weight": float(weight), "config": rc})
    return global_cfg, regional
