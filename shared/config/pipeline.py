"""The pipeline's own configuration (config/local.yaml, config/cluster.yaml):
where data comes from, cache and fetch policy, split, baseline, teachers,
student, calibration, export gates and cluster settings. Unknown keys are an
error naming the key; missing keys take the defaults below. Relative paths are
resolved against the repository root."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from shared.config.cluster import load_cluster_config
from shared.config.schema import ConfigError, merge_checked, read_config_source, resolve_path
from shared.config.weights import request_from_section
from shared.data.licenses import allowed_set
from shared.data.regions import region_list
from shared.io.atomic import path_safe_name

DEFAULTS: dict[str, Any] = {
    "pipeline": {
        "name": "plantid-training",
        "description": "Plant-species identifier: teachers -> distilled student -> TF.js",
        "seed": 42,
        # digests: {data|train|export: "sha256:<64 hex>"} references that image by digest instead
        # of by tag (immutable: what was pushed is what runs); images without one keep the tag.
        "images": {"registry": "ghcr.io/plantid", "tag": "0.1.0", "digests": {}},
        # Where each run's artifacts go on the cluster (gs://bucket/prefix, s3:// or minio://):
        # compiled as the pipeline's default root and written into the namespace's kfp-launcher
        # ConfigMap. "" = the KFP installation's default (its MinIO / the launcher's setting).
        "root": "",
    },
    "data": {
        "source": "jsonl",  # jsonl | mongo
        "records_uri": "data/sample/records.jsonl",
        "snapshot_id": "sample-v1",
        "mongo": {"uri_env": "MONGO_URI", "database": "", "collection": "", "query": {}, "field_map": {}, "limit": 0},
        "license_allow": ["CC0", "CC-BY", "CC-BY-SA"],
        "min_side": 100,
        # issue 22: a JSONL line over this many bytes is rejected unread (line and byte offset)
        "max_line_bytes": 1_000_000,
        # observation ids that name no observation (compared stripped, case-insensitively) and the
        # most records one observation may hold: such ids (and ids under several species) are
        # not used to group photos in the split; counted in the ingest audit
        "placeholder_observation_ids": ["", "NA", "N/A", "NaN", "none", "null", "nil", "unknown", "-", "--", "0", "?"],
        "max_records_per_observation": 50,
        # regions the catalogue may use besides those teachers.regional[].regions name; a region
        # neither names is reported by ingest, and with unknown_regions: fail stops the run
        "known_regions": [],
        "unknown_regions": "warn",  # warn | fail
    },
    "cache": {
        "dir": "data/image_cache",
        "resize": 448,
        # short side of the student's own smaller rendition (0: none, the student reads the
        # main cache); the pipeline gives it to the student as data.student_rendition
        "student_resize": 0,
        "workers": 16,
        "max_fail_rate": 0.05,
        "fetch": {
            "allow_local_paths": False,
            "allow_private_networks": False,
            "host_allowlist": [],
            "max_bytes": 30_000_000,
            "timeout_s": 20.0,
            "retries": 4,
            "per_host_concurrency": 4,
            "per_host_rate": 10.0,
            # gs:// image URLs are read with the pod's credentials: only from buckets listed here
            "gcs_bucket_allowlist": [],
        },
    },
    "split": {"seed": 42},
    # weights: a file instead of the hub (path, gs:// or http(s) URL with sha256), as model.pretrained_path
    "baseline": {
        "model_name": "mobilenetv2_100",
        "pretrained": True,
        "revision": "",
        "weights": "",
        "sha256": "",
        "image_size": 224,
    },
    # Pretrained weights (shared/train/pretrained.py): the content-addressed cache the stage_weights
    # step fills and the training pods read (a path on the volume or gs://), the hub mirror
    # ("" = HF_ENDPOINT or huggingface.co), and offline: true where the hub cannot be reached.
    "weights": {"cache_dir": "data/weights_cache", "hub_endpoint": "", "offline": False},
    "teachers": {
        "global_config": "config/teacher_global.yaml",
        # what every regional teacher's own config is layered on (shared/train/teacher_set.py)
        "regional_base_config": "config/teacher_regional.yaml",
        "overrides": {},
        "regional": [
            {"name": "EU_SW", "regions": "EU_SW", "config": "config/teacher_regional.yaml", "weight": 0.4},
            {"name": "EU_CORE", "regions": "EU_NORTH,EU_EAST", "config": "config/teacher_eu_core.yaml", "weight": 0.2},
        ],
        "global_weight": 0.4,
        "logits_top_k": 32,
        "checkpoint_dir": "data/checkpoints",
    },
    # train_ce_control: the same student trained on CE alone, the control that shows what
    # distillation adds (plan 4.3); on by default, at the cost of one more student training
    "student": {"config": "config/student.yaml", "overrides": {}, "train_ce_control": True},
    # objective: "ece" = the temperature minimising ECE (plan 5.2), "nll" = classic temperature scaling
    "calibration": {"ece_threshold": 0.10, "target_precision": 0.95, "objective": "ece"},
    # gates: the plan's phase 4-6 criteria, with its strict inequalities (val top-1 >= 0.70, ECE < 0.10,
    # coverage >= 0.80 at precision >= 0.95, student bundle < 20 MB, CPU browser latency < 5 s), checked
    # on val and on the held-out test set. profile "local" marks smaller smoke-test thresholds, which the
    # manifest then labels as local, never as the plan's criteria.
    "export": {
        "quantization": "fp16",
        "gates": {
            "profile": "plan",
            "min_val_top1": 0.70,
            "max_ece": 0.10,
            "min_coverage": 0.80,
            "min_precision": 0.95,
            "max_bundle_mb": 20.0,
            "max_latency_ms": 5000.0,
        },
        # latency_runtime: chromium-wasm (a real headless browser, the plan's "CPU (browser)") or
        # node-wasm (TF.js WASM in Node, reported as Node, where no Chromium is installed)
        # validation_images: the parity sample (all of test when fewer). The agreement gate is the plan's
        # point estimate (>= min_top1_agreement); at 1,500 images a faithful export (true agreement 99.5 %)
        # passes with probability 0.9955 and a 98 % one fails with 0.998 (shared/export/tfjs.py); fewer
        # than 1,000 is labelled local in the manifest
        "validation_images": 1500,
        "min_correlation": 0.995,
        "min_top1_agreement": 0.99,
        # the largest TF.js weight shard: <= 6 shards up to 180 MB (a no-store page stalled on a 7th)
        "weight_shard_mb": 30.0,
        "latency_runtime": "chromium-wasm",
    },
    # Where a blessed, validated model is published for the web app (shared/release/): "" = nowhere,
    # gs://bucket/prefix or a local directory. A candidate goes out only if, on this run's test
    # images of the classes both know, it is not worse than the current release by more than the
    # margins (top-1 and coverage may drop, ECE rise, by at most these); force: true (with a
    # reason, recorded) publishes it anyway.
    "release": {
        "uri": "",
        "margins": {"top1": 0.005, "ece": 0.02, "coverage": 0.01},
        "force": False,
        "reason": "",
    },
    "cluster": {},
}

PATH_KEYS = {
    ("data", "records_uri"),
    ("cache", "dir"),
    ("teachers", "global_config"),
    ("teachers", "regional_base_config"),
    ("teachers", "checkpoint_dir"),
    ("student", "config"),
    ("baseline", "weights"),
    ("weights", "cache_dir"),
    ("release", "uri"),
}


# Names the pipeline gives its own working directories beside the regional teachers'.
RESERVED_TEACHER_DIRS = ("global", "student")


def _check_teacher_names(regional: list[dict]) -> None:
    """Regional teacher names: unique, not the global teacher's or the student's, and mapping
    to distinct checkpoint directories (two teachers sharing one would resume each other)."""
    seen: dict[str, str] = {}
    for i, t in enumerate(regional):
        d = path_safe_name(t["name"])
        if d.lower() in RESERVED_TEACHER_DIRS:
            raise ConfigError(
                f"teachers.regional[{i}].name: {t['name']!r} is reserved (the pipeline's own {d.lower()} checkpoints)"
            )
        if d.lower() in seen:
            raise ConfigError(
                f"teachers.regional[{i}].name: {t['name']!r} shares its checkpoint directory "
                f"{d!r} with {seen[d.lower()]!r}; teacher names must differ"
            )
        seen[d.lower()] = t["name"]


# The images under images/ (components/images.py IMAGES; tests/components/test_component_specs.py keeps them equal).
IMAGE_NAMES = ("data", "train", "export")
DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")


def _check_images(images: dict) -> None:
    """pipeline.images.digests: a mapping of known image names to sha256 digests, so a typo or a
    truncated digest fails at load time, not as an image pull error in a pod."""
    digests = images["digests"]
    if not isinstance(digests, dict):
        raise ConfigError(f"pipeline.images.digests: expected a mapping of image name to digest, got {digests!r}")
    for name, digest in digests.items():
        where = f"pipeline.images.digests.{name}"
        if name not in IMAGE_NAMES:
            near = difflib.get_close_matches(str(name), IMAGE_NAMES, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"{where}: unknown image{hint}; the images are {', '.join(IMAGE_NAMES)}")
        if not (isinstance(digest, str) and DIGEST_PATTERN.fullmatch(digest)):
            raise ConfigError(f"{where}: expected 'sha256:' and 64 lowercase hex digits, got {digest!r}")


PIPELINE_ROOT_SCHEMES = ("gs://", "s3://", "minio://")


def _check_pipeline_root(root: Any) -> None:
    """pipeline.root: "" or an object-store URI KFP's launcher can write (bucket and prefix)."""
    if not isinstance(root, str):
        raise ConfigError(f'pipeline.root: expected text (gs://bucket/prefix or ""), got {root!r}')
    if root and (not root.startswith(PIPELINE_ROOT_SCHEMES) or not root.split("://", 1)[1].strip("/")):
        raise ConfigError(
            f"pipeline.root: {root!r} is not an object-store URI; expected one of "
            f'{", ".join(s + "bucket/prefix" for s in PIPELINE_ROOT_SCHEMES)} or "" (the installation\'s default)'
        )


def _check_ranges(cfg: dict) -> None:
    """Values that would change a run silently: out of range is an error naming the key."""
    checks = [
        ("cache.resize", cfg["cache"]["resize"], 1, None),
        ("cache.workers", cfg["cache"]["workers"], 1, None),
        ("cache.max_fail_rate", cfg["cache"]["max_fail_rate"], 0, 1),
        ("data.min_side", cfg["data"]["min_side"], 1, None),
        ("data.max_line_bytes", cfg["data"]["max_line_bytes"], 1, None),
        ("data.max_records_per_observation", cfg["data"]["max_records_per_observation"], 0, None),
        ("teachers.logits_top_k", cfg["teachers"]["logits_top_k"], 1, None),
        ("baseline.image_size", cfg["baseline"]["image_size"], 1, None),
        ("calibration.ece_threshold", cfg["calibration"]["ece_threshold"], 0, 1),
        ("calibration.target_precision", cfg["calibration"]["target_precision"], 0, 1),
        ("export.gates.min_val_top1", cfg["export"]["gates"]["min_val_top1"], 0, 1),
        ("export.gates.max_ece", cfg["export"]["gates"]["max_ece"], 0, 1),
        ("export.gates.min_coverage", cfg["export"]["gates"]["min_coverage"], 0, 1),
        ("export.gates.min_precision", cfg["export"]["gates"]["min_precision"], 0, 1),
        ("export.gates.max_bundle_mb", cfg["export"]["gates"]["max_bundle_mb"], 0, None),
        ("export.gates.max_latency_ms", cfg["export"]["gates"]["max_latency_ms"], 0, None),
        ("export.validation_images", cfg["export"]["validation_images"], 1, None),
        ("export.min_correlation", cfg["export"]["min_correlation"], -1, 1),
        ("export.min_top1_agreement", cfg["export"]["min_top1_agreement"], 0, 1),
        ("export.weight_shard_mb", cfg["export"]["weight_shard_mb"], 0.001, None),
    ]
    for key, v, lo, hi in checks:
        if v < lo or (hi is not None and v > hi):
            raise ConfigError(f"{key}: {v} is outside [{lo}, {hi if hi is not None else 'inf'}]")
    sr = cfg["cache"]["student_resize"]
    if sr and not 1 <= sr <= cfg["cache"]["resize"]:  # never larger than the main files it is made from
        raise ConfigError(
            f"cache.student_resize: {sr} is outside [1, cache.resize {cfg['cache']['resize']}] "
            "(0: no student rendition)"
        )
    if cfg["export"]["quantization"] not in ("fp16", "float16", "mixed", "uint8", "int8", "none", "auto"):
        raise ConfigError(
            f"export.quantization: fp16, mixed, uint8, none or auto, got {cfg['export']['quantization']!r}"
        )
    if cfg["export"]["latency_runtime"] not in ("chromium-wasm", "node-wasm"):
        raise ConfigError(
            f"export.latency_runtime: chromium-wasm or node-wasm, got {cfg['export']['latency_runtime']!r}"
        )
    if cfg["export"]["gates"]["profile"] not in ("plan", "local"):
        raise ConfigError(f"export.gates.profile: plan or local, got {cfg['export']['gates']['profile']!r}")
    if not cfg["teachers"]["global_weight"] > 0:  # 0 silences the global teacher; < 0 inverts it
        raise ConfigError(f"teachers.global_weight: must be > 0, got {cfg['teachers']['global_weight']}")


def _check_release(release: dict) -> None:
    """release: where to publish (gs:// or a path), margins in [0, 1], and force only with a reason."""
    uri = release["uri"]
    if not isinstance(uri, str) or ("://" in uri and not uri.startswith("gs://")):
        raise ConfigError(f'release.uri: "", gs://bucket/prefix or a local path, got {uri!r}')
    if uri.startswith("gs://") and not uri[5:].strip("/"):
        raise ConfigError(f"release.uri: {uri!r} names no bucket")
    for key, value in release["margins"].items():
        if key not in ("top1", "ece", "coverage"):
            raise ConfigError(f"release.margins.{key}: unknown margin; the margins are top1, ece, coverage")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"release.margins.{key}: expected a number in [0, 1], got {value!r}")
    if release["force"] and not str(release["reason"]).strip():
        raise ConfigError("release.force: true needs release.reason (recorded with the release)")


def load_pipeline_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Load and validate a pipeline config; resolve relative paths to absolute."""
    raw = read_config_source(path, "config file")
    cfg = merge_checked(DEFAULTS, raw)
    cfg["cluster"] = load_cluster_config(cfg["cluster"])
    for dotted, value in (overrides or {}).items():
        keys = dotted.split(".")
        node = cfg
        for k in keys[:-1]:
            if not isinstance(node, dict) or k not in node:
                raise ConfigError(f"override {dotted}: unknown key {k}")
            node = node[k]
        if keys[-1] not in node:
            raise ConfigError(f"override {dotted}: unknown key {keys[-1]}")
        node[keys[-1]] = merge_checked(node[keys[-1]], value, dotted)
    cfg["cluster"] = load_cluster_config(cfg["cluster"])  # again: cluster.* overrides are checked too
    for section, key in PATH_KEYS:
        cfg[section][key] = resolve_path(cfg[section][key])
    for i, t in enumerate(cfg["teachers"]["regional"]):
        if not isinstance(t, dict):
            raise ConfigError(f"teachers.regional[{i}]: expected a mapping with name and regions, got {t!r}")
        unknown = set(t) - {"name", "regions", "config", "weight", "overrides"}
        if unknown or not {"name", "regions"} <= set(t):
            raise ConfigError(
                f"teachers.regional[{i}]: each entry needs name and regions, optional "
                f"config/weight/overrides; got keys {sorted(map(str, t))}"
            )
        for key in ("name", "regions", "config"):
            if key in t and not (isinstance(t[key], str) and t[key].strip()):
                raise ConfigError(f"teachers.regional[{i}].{key}: expected non-empty text, got {t[key]!r}")
        if "weight" in t and (
            isinstance(t["weight"], bool) or not isinstance(t["weight"], (int, float)) or not t["weight"] > 0
        ):
            raise ConfigError(f"teachers.regional[{i}].weight: expected a number > 0, got {t['weight']!r}")
        if not isinstance(t.get("overrides", {}), dict):
            raise ConfigError(f"teachers.regional[{i}].overrides: expected a mapping, got {t['overrides']!r}")
        if "config" in t:
            t["config"] = resolve_path(t["config"])
        if not region_list(t["regions"]):
            raise ConfigError(f"teachers.regional[{i}].regions: {t['regions']!r} names no region")
    _check_teacher_names(cfg["teachers"]["regional"])
    _check_ranges(cfg)
    _check_images(cfg["pipeline"]["images"])
    _check_pipeline_root(cfg["pipeline"]["root"])
    _check_release(cfg["release"])
    if "://" in cfg["teachers"]["checkpoint_dir"]:
        raise ConfigError(
            f"teachers.checkpoint_dir: must be a path (on the checkpoint volume), got "
            f"{cfg['teachers']['checkpoint_dir']!r}"
        )
    if "://" in cfg["cache"]["dir"] and not cfg["cache"]["dir"].startswith("gs://"):
        raise ConfigError(f"cache.dir: a local path or gs://bucket/prefix, got {cfg['cache']['dir']!r}")
    try:
        request_from_section("baseline", cfg["baseline"], cfg["baseline"]["model_name"]).check()
    except ValueError as e:
        raise ConfigError(
            str(e).replace("model.pretrained_path", "baseline.weights").replace("model.", "baseline.")
        ) from None
    try:  # a typo in the allow-list would otherwise surface only when ingest starts
        allowed_set(cfg["data"]["license_allow"])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data.license_allow: {e}") from None
    wc = cfg["weights"]["cache_dir"]
    if not wc or ("://" in wc and not wc.startswith("gs://")):
        raise ConfigError(f"weights.cache_dir: a path (on the cache volume) or gs://bucket/prefix, got {wc!r}")
    if cfg["calibration"]["objective"] not in ("ece", "nll"):
        raise ConfigError(f"calibration.objective: must be ece or nll, got {cfg['calibration']['objective']!r}")
    if cfg["data"]["source"] not in ("jsonl", "mongo"):
        raise ConfigError(f"data.source: must be jsonl or mongo, got {cfg['data']['source']!r}")
    _check_data_lists(cfg["data"])
    return cfg


def _check_data_lists(d: dict) -> None:
    if d["unknown_regions"] not in ("warn", "fail"):
        raise ConfigError(f"data.unknown_regions: warn or fail, got {d['unknown_regions']!r}")
    for key in ("placeholder_observation_ids", "known_regions"):
        if not isinstance(d[key], list) or not all(isinstance(v, str) for v in d[key]):
            raise ConfigError(f"data.{key}: expected a list of text, got {d[key]!r}")


def ingest_checks(cfg: dict) -> dict:
    """The ingest step's data-quality settings (its `checks` input): the data.* keys, and the
    known regions as data.known_regions plus every region a regional teacher names."""
    d = cfg["data"]
    known = list(d["known_regions"])
    for t in cfg["teachers"]["regional"]:
        known += [r for r in region_list(t["regions"]) if r not in known]
    return {
        "max_line_bytes": d["max_line_bytes"],
        "placeholder_observation_ids": list(d["placeholder_observation_ids"]),
        "max_records_per_observation": d["max_records_per_observation"],
        "unknown_regions": d["unknown_regions"],
        "known_regions": known,
    }
