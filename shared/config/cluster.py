"""The `cluster:` section of the pipeline config: how each step runs on
Kubernetes (resources, node pools, GPUs, the cache volume, secrets, caching,
retries, security context, timeouts) and the table of what every step needs.

No KFP import: components/platform.py turns these settings into kfp-kubernetes
calls, scripts/render_manifests.py and components/submission.py read the names
(namespace, service account). The local runner ignores all of it.

Names of the PVC and secrets are constants here, never pipeline parameters:
kfp fails on parameterised PVC names inside dsl.If (kubeflow/pipelines#12617) and
on parameterised secret names inside ParallelFor (#13078)."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from shared.config.models import offline_problems
from shared.config.schema import ConfigError, merge_checked

KINDS = ("cpu", "gpu", "gpu_light")


@dataclass(frozen=True)
class StepNeeds:
    """What a step needs from the cluster.

    kind: which node pool and resource profile (cpu or gpu).
    gpus: "teacher" / "student" (count from the config, >1 means DDP in the pod),
        "one" (a single GPU) or None (no GPU).
    cache_pvc: mounts the image/checkpoint volume (reads or writes images there).
    mongo_secret: gets the MongoDB URI as an env variable.
    hub_secret: gets the Hugging Face token (HF_TOKEN) as an env variable.
    deterministic: its output is a function of its inputs (KFP caching safe).
    reuse: KFP caching on although the output is not a pure function of the inputs: re-running
        it for the same inputs would redo hours of work for an equivalent result (training), or
        would refetch what the cache volume already holds (cache_images, keyed by the ingested
        records: a new data.snapshot_id refetches). None: follow `deterministic`."""

    kind: str
    gpus: str | None
    cache_pvc: bool
    mongo_secret: bool = False
    deterministic: bool = False
    hub_secret: bool = False
    reuse: bool | None = None

    @property
    def cached(self) -> bool:
        """KFP caching by default (cluster.caching overrides it per step)."""
        return self.deterministic if self.reuse is None else self.reuse


# Every step of the DAG by its component function name.
STEPS: dict[str, StepNeeds] = {
    # ingest is deterministic for a given snapshot_id (a pipeline parameter, so in the cache key).
    "ingest": StepNeeds("cpu", None, cache_pvc=False, mongo_secret=True, deterministic=True),
    # The run's parameter values, for the manifest: a function of its inputs.
    "run_parameters": StepNeeds("cpu", None, cache_pvc=False, deterministic=True),
    # Network fetches: the result depends on what the hosts answer today, but a re-run after a late
    # failure must not refetch 741k images, and its output keys every later step's cache.
    "cache_images": StepNeeds("cpu", None, cache_pvc=True, reuse=True),
    "split": StepNeeds("cpu", None, cache_pvc=False, deterministic=True),
    "regional_split": StepNeeds("cpu", None, cache_pvc=False, deterministic=True),
    # Weights for a model id + revision (+ pinned sha256) are the same bytes: cached by KFP.
    "stage_weights": StepNeeds("cpu", None, cache_pvc=True, deterministic=True, hub_secret=True),
    # gpu_light: minutes-long inference on one GPU (evaluation, logits, calibration, baseline)
    "baseline": StepNeeds("gpu_light", "one", cache_pvc=True, reuse=True),
    "train_teacher": StepNeeds("gpu", "teacher", cache_pvc=True, reuse=True),
    "evaluate_teacher": StepNeeds("gpu_light", "one", cache_pvc=True, reuse=True),
    "teacher_logits": StepNeeds("gpu_light", "one", cache_pvc=True, deterministic=True),
    "combine_soft_labels": StepNeeds("cpu", None, cache_pvc=False, deterministic=True),
    "train_student": StepNeeds("gpu", "student", cache_pvc=True, reuse=True),
    "calibrate": StepNeeds("gpu_light", "one", cache_pvc=True, reuse=True),
    "export_tfjs": StepNeeds("cpu", None, cache_pvc=True, reuse=True),
    "validate_export": StepNeeds("cpu", None, cache_pvc=True, reuse=True),
    "export_skipped": StepNeeds(
        "cpu", None, cache_pvc=False, deterministic=True
    ),  # the gate's Else branch: a reason only
    # Never cached: its decision depends on the release current when it runs, not only its inputs.
    "publish": StepNeeds("cpu", None, cache_pvc=True, reuse=False),
    # Never cached: it records this run (its timestamp, status and failure).
    "training_manifest": StepNeeds("cpu", None, cache_pvc=False, reuse=False),
}

TENANCY_MODES = ("multi-user", "standalone")
# KFP backend releases the compiler knows (cluster.kfp_backend); platform features by the
# first release that accepts them: KFP_BACKEND_FEATURES.
KFP_BACKENDS = ("2.14", "2.15", "2.16", "2.17")

# Where both GPU kinds run: one node pool, its taint and GPU resource (copied per kind on load).
_GPU_PLACEMENT: dict[str, Any] = {
    "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "accelerator_type": "nvidia.com/gpu",
}

CLUSTER_DEFAULTS: dict[str, Any] = {
    # multi-user: runs go to `namespace`, a KFP Profile namespace (the manifests make the
    # Profile, owner `profile_owner`); standalone: runs go to KFP's own namespace
    # (`kfp_namespace`, usually kubeflow), where the service account is then created.
    "mode": "multi-user",
    "kfp_namespace": "kubeflow",
    "profile_owner": "",
    # The KFP backend the pipeline is compiled for: features newer than it are left out (and said).
    "kfp_backend": "2.17",
    # At most this many regional teachers train at once (the ParallelFor's parallelism; 0 = all).
    "max_parallel_regional_teachers": 2,
    "namespace": "plantid",
    "service_account": "plantid-pipeline",
    # Workload Identity: the Google service account the Kubernetes one acts as
    # (annotation iam.gke.io/gcp-service-account); "" = not used.
    "gcp_service_account": "",
    "gpus_per_teacher": 1,
    "gpus_per_student": 1,
    "kinds": {
        "cpu": {
            "cpu_request": "2",
            "cpu_limit": "4",
            "memory_request": "4Gi",
            "memory_limit": "8Gi",
            "node_selector": {"cloud.google.com/gke-nodepool": "cpu-pool"},
            "tolerations": [],
            "accelerator_type": "",
            "timeout_s": 86400,
        },
        "gpu": {
            # Per GPU-pod; ViT-B/16 at 384 px with 6+ loader workers per GPU.
            "cpu_request": "8",
            "cpu_limit": "12",
            "memory_request": "48Gi",
            "memory_limit": "64Gi",
            **_GPU_PLACEMENT,
            "timeout_s": 259200,
            # /dev/shm for DataLoader workers and NCCL (a container's default is 64 MiB).
            "shm_size": "16Gi",
        },
        # Per GPU of a training pod (train_teacher, train_student): requests and limits are
        # multiplied by gpus_per_teacher / gpus_per_student. The light kind is one GPU's inference.
        "gpu_light": {
            "cpu_request": "4",
            "cpu_limit": "8",
            "memory_request": "16Gi",
            "memory_limit": "32Gi",
            **_GPU_PLACEMENT,
            "timeout_s": 21600,
            "shm_size": "8Gi",
        },
    },
    # Per-step overrides of the kind's resources, e.g. {cache_images: {cpu_request: "8"}}.
    "steps": {},
    "cache_pvc": {"name": "plantid-cache", "mount_path": "/mnt/plantid"},
    "secrets": {
        "mongo_uri": {"name": "plantid-mongo", "key": "uri", "env": "MONGO_URI", "optional": True},
        # A Hugging Face token for gated or private weights (stage_weights only); optional.
        "hf_token": {"name": "plantid-hf-token", "key": "token", "env": "HF_TOKEN", "optional": True},
        # A JSON key mounted as a file; leave off with Workload Identity.
        "gcs_credentials": {
            "enabled": False,
            "name": "plantid-gcs-key",
            "key_file": "key.json",
            "mount_path": "/var/secrets/google",
        },
    },
    # Step -> KFP caching; steps not listed follow StepNeeds.deterministic.
    "caching": {},
    "retry": {
        # every GPU step (spot nodes): training resumes from its checkpoint, the others are minutes
        "steps": ["baseline", "train_teacher", "evaluate_teacher", "teacher_logits", "train_student", "calibrate"],
        "num_retries": 3,
        "backoff_duration": "120s",
        "backoff_factor": 2.0,
        "backoff_max_duration": "3600s",
    },
    "security": {"run_as_user": 1000, "run_as_group": 1000, "run_as_non_root": True},
    "image_pull_policy": "IfNotPresent",
    "image_pull_secrets": [],
}

# Free-form mappings: their keys are the user's, not the schema's.
_FREE_FORM = ("node_selector", "tolerations")
RESOURCE_KEYS = ("cpu_request", "cpu_limit", "memory_request", "memory_limit", "timeout_s", "shm_size")
TOLERATION_KEYS = {"key", "operator", "value", "effect", "toleration_seconds"}
_CPU_RE = re.compile(r"^([0-9]*[.])?[0-9]+m?$")
_MEM_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki|k)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_DURATION = re.compile(r"^[0-9]+(\.[0-9]+)?s$")


def _error(msg: str) -> Exception:
    return ConfigError(msg)


def _shape() -> dict:
    """CLUSTER_DEFAULTS with free-form mappings emptied, so merge_checked accepts their keys."""
    shape = copy.deepcopy(CLUSTER_DEFAULTS)
    for kind in shape["kinds"].values():
        kind["node_selector"] = {}
        kind.setdefault("shm_size", "")
    shape["steps"] = {}
    shape["caching"] = {}
    return shape


def _check_quantity(value: str, where: str, memory: bool) -> None:
    if not (_MEM_RE if memory else _CPU_RE).match(str(value)):
        kind = "a memory quantity like 8Gi" if memory else "a CPU quantity like 2 or 500m"
        raise _error(f"{where}: expected {kind}, got {value!r}")


def _check_resources(res: dict, where: str) -> None:
    for key in ("cpu_request", "cpu_limit"):
        if key in res:
            _check_quantity(res[key], f"{where}.{key}", memory=False)
    for key in ("memory_request", "memory_limit"):
        if key in res:
            _check_quantity(res[key], f"{where}.{key}", memory=True)
    if res.get("shm_size"):
        _check_quantity(res["shm_size"], f"{where}.shm_size", memory=True)
    if "timeout_s" in res and (not isinstance(res["timeout_s"], int) or res["timeout_s"] < 0):
        raise _error(f"{where}.timeout_s: expected seconds >= 0 (0 = none), got {res['timeout_s']!r}")


def _check_tolerations(tols: Any, where: str) -> None:
    if not isinstance(tols, list):
        raise _error(f"{where}: expected a list of tolerations, got {tols!r}")
    for i, t in enumerate(tols):
        if not isinstance(t, dict):
            raise _error(f"{where}[{i}]: expected a mapping, got {t!r}")
        unknown = set(t) - TOLERATION_KEYS
        if unknown:
            raise _error(f"{where}[{i}]: unknown key(s) {sorted(unknown)}; known: {sorted(TOLERATION_KEYS)}")
        for key in ("key", "value"):
            if key in t and t[key] is not None and not isinstance(t[key], str):
                raise _error(f"{where}[{i}].{key}: expected text, got {t[key]!r}")
        secs = t.get("toleration_seconds")
        if secs is not None and (isinstance(secs, bool) or not isinstance(secs, int) or secs < 0):
            raise _error(f"{where}[{i}].toleration_seconds: expected whole seconds >= 0, got {secs!r}")
        if t.get("operator", "Equal") not in ("Equal", "Exists"):
            raise _error(f"{where}[{i}].operator: must be Equal or Exists, got {t['operator']!r}")
        if t.get("effect") not in (None, "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise _error(f"{where}[{i}].effect: must be NoSchedule, PreferNoSchedule or NoExecute")


def _quantities_as_text(section: dict) -> dict:
    """YAML reads `cpu_request: 8` as a number: quantities are text in Kubernetes."""
    out = copy.deepcopy(section)
    groups = [out.get("kinds"), out.get("steps")]
    for group in groups:
        if not isinstance(group, dict):
            continue
        for res in group.values():
            if isinstance(res, dict):
                for key in ("cpu_request", "cpu_limit", "memory_request", "memory_limit", "shm_size"):
                    if isinstance(res.get(key), (int, float)) and not isinstance(res.get(key), bool):
                        res[key] = str(res[key])
    return out


def load_cluster_config(section: dict | None) -> dict:
    """Validate the `cluster:` section over CLUSTER_DEFAULTS and return the full
    settings. Unknown keys raise ConfigError naming the key; idempotent (a loaded
    section loads to itself).

    Long: one validation pass over every cluster key in the file's order, so each error names its key.
    """
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise _error(f"cluster: expected a mapping, got {type(section).__name__}")
    section = _quantities_as_text(section)
    user_kinds = section.get("kinds") or {}
    if not isinstance(user_kinds, dict):
        raise _error("cluster.kinds: expected a mapping of cpu/gpu settings")
    cfg = merge_checked(_shape(), section, "cluster")
    for name, kind in cfg["kinds"].items():
        where = f"cluster.kinds.{name}"
        given = user_kinds.get(name) or {}
        # A node selector or toleration list given by the user replaces the default one.
        for key in _FREE_FORM:
            kind[key] = copy.deepcopy(given[key] if key in given else CLUSTER_DEFAULTS["kinds"][name][key])
        if not isinstance(kind["node_selector"], dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in kind["node_selector"].items()
        ):
            raise _error(f"{where}.node_selector: expected a mapping whose keys and values are text")
        _check_tolerations(kind["tolerations"], f"{where}.tolerations")
        _check_resources(kind, where)
        if name == "cpu" and kind.get("shm_size") == "":
            kind.pop("shm_size")
    for name in ("gpu", "gpu_light"):
        if cfg["kinds"][name]["accelerator_type"] == "":
            raise _error(f"cluster.kinds.{name}.accelerator_type: must name the GPU resource, e.g. nvidia.com/gpu")
    n = cfg["max_parallel_regional_teachers"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise _error(f"cluster.max_parallel_regional_teachers: expected a whole number >= 0 (0 = all), got {n!r}")
    sec = cfg["security"]
    # Least privilege is not a setting: the images' USER is non-root and so must the pods be.
    if not sec["run_as_non_root"]:
        raise _error("cluster.security.run_as_non_root: must stay true (the pipeline's pods never run as root)")
    for key in ("run_as_user", "run_as_group"):
        if sec[key] < 1:
            raise _error(f"cluster.security.{key}: must be a non-root id (>= 1), got {sec[key]}")
    for key in ("gpus_per_teacher", "gpus_per_student"):
        if cfg[key] < 1:
            raise _error(f"cluster.{key}: must be >= 1, got {cfg[key]}")
    for key in ("steps", "caching"):
        if not isinstance(cfg[key], dict):
            raise _error(f"cluster.{key}: expected a mapping of step names, got {cfg[key]!r}")
    for step, over in cfg["steps"].items():
        where = f"cluster.steps.{step}"
        _known_step(step, where)
        if not isinstance(over, dict):
            raise _error(f"{where}: expected a mapping of resource overrides")
        unknown = set(over) - set(RESOURCE_KEYS)
        if unknown:
            raise _error(f"{where}: unknown key(s) {sorted(unknown)}; known: {list(RESOURCE_KEYS)}")
        _check_resources(over, where)
    for step, on in cfg["caching"].items():
        _known_step(step, f"cluster.caching.{step}")
        if not isinstance(on, bool):
            raise _error(f"cluster.caching.{step}: expected true/false, got {on!r}")
    r = cfg["retry"]
    for step in r["steps"]:
        _known_step(step, "cluster.retry.steps")
    for key in ("backoff_duration", "backoff_max_duration"):
        if not _DURATION.match(r[key]):
            raise _error(f"cluster.retry.{key}: expected seconds like '120s', got {r[key]!r}")
    if r["num_retries"] < 0:
        raise _error("cluster.retry.num_retries: must be >= 0")
    if cfg["mode"] not in TENANCY_MODES:
        raise _error(f"cluster.mode: must be one of {', '.join(TENANCY_MODES)}, got {cfg['mode']!r}")
    if str(cfg["kfp_backend"]) not in KFP_BACKENDS:
        raise _error(
            f"cluster.kfp_backend: {cfg['kfp_backend']!r} is not a KFP backend release this compiler knows; "
            f"known: {', '.join(KFP_BACKENDS)} (older backends cannot run KFP v2 Kubernetes-native pipelines)"
        )
    cfg["kfp_backend"] = str(cfg["kfp_backend"])
    if cfg["profile_owner"] and "@" not in cfg["profile_owner"]:
        raise _error(
            f"cluster.profile_owner: expected the owner's e-mail (a KFP Profile owner), got {cfg['profile_owner']!r}"
        )
    for key, pattern in (("namespace", _DNS_LABEL), ("kfp_namespace", _DNS_LABEL), ("service_account", _DNS_SUBDOMAIN)):
        if not pattern.match(cfg[key]):
            raise _error(f"cluster.{key}: {cfg[key]!r} is not a valid Kubernetes name")
    if not _DNS_SUBDOMAIN.match(cfg["cache_pvc"]["name"]):
        raise _error(f"cluster.cache_pvc.name: {cfg['cache_pvc']['name']!r} is not a valid Kubernetes name")
    if not cfg["cache_pvc"]["mount_path"].startswith("/"):
        raise _error("cluster.cache_pvc.mount_path: must be an absolute path")
    gcs = cfg["secrets"]["gcs_credentials"]
    if gcs["enabled"] and cfg["gcp_service_account"]:
        raise _error(
            "cluster.secrets.gcs_credentials.enabled: a key file and Workload Identity "
            "(cluster.gcp_service_account) exclude each other; turn one off"
        )
    if not all(isinstance(s, str) and _DNS_SUBDOMAIN.match(s) for s in cfg["image_pull_secrets"]):
        raise _error(f"cluster.image_pull_secrets: expected Secret names, got {cfg['image_pull_secrets']!r}")
    if cfg["image_pull_policy"] not in ("Always", "IfNotPresent", "Never"):
        raise _error(
            f"cluster.image_pull_policy: must be Always, IfNotPresent or Never, got {cfg['image_pull_policy']!r}"
        )
    return cfg


SCALED_KEYS = ("cpu_request", "cpu_limit", "memory_request", "memory_limit", "shm_size")
_QUANTITY = re.compile(r"^([0-9]*\.?[0-9]+)(m|[KMGTPE]i?|k)?$")


def scale_quantity(quantity: str, factor: int) -> str:
    """A Kubernetes quantity times a whole factor, in the same unit ("8" x 2 = "16", "48Gi" x 4 =
    "192Gi", "500m" x 3 = "1500m")."""
    m = _QUANTITY.match(str(quantity))
    if not m:
        raise _error(f"cannot scale the quantity {quantity!r}")
    value = float(m.group(1)) * factor
    text = str(int(value)) if value.is_integer() else f"{value:g}"
    return text + (m.group(2) or "")


# Platform features by the first KFP backend release that runs them: compiling for an older
# backend (cluster.kfp_backend) leaves the feature out and says so (dropped_features).
KFP_BACKEND_FEATURES = {
    "security_context": (
        "2.17",
        "pod security context run_as_user / run_as_group / run_as_non_root (kfp-kubernetes "
        "set_security_context, kubeflow/pipelines#12832); older backends refuse the run's platform spec",
    ),
}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split("."))


def backend_supports(cluster: dict, feature: str) -> bool:
    """Whether the configured KFP backend (cluster.kfp_backend) runs `feature`."""
    return _version(cluster["kfp_backend"]) >= _version(KFP_BACKEND_FEATURES[feature][0])


def dropped_features(cluster: dict) -> list[str]:
    """What compiling for the configured backend leaves out, each with the release it needs."""
    return [
        f"{what} (needs KFP backend >= {since}; compiling for {cluster['kfp_backend']})"
        for feature, (since, what) in KFP_BACKEND_FEATURES.items()
        if not backend_supports(cluster, feature)
    ]


def run_namespace(cluster: dict) -> str:
    """The namespace a run executes in: the Profile namespace (multi-user) or KFP's own
    namespace (standalone)."""
    return cluster["namespace"] if cluster["mode"] == "multi-user" else cluster["kfp_namespace"]


def _known_step(step: str, where: str) -> None:
    if not isinstance(step, str) or step not in STEPS:
        raise _error(f"{where}: unknown step {step!r}; steps: {sorted(STEPS)}")


def step_settings(step: str, cluster: dict) -> dict:
    """Everything apply_platform needs for one step: resources (kind + overrides),
    node placement, GPU count, caching, retry, volumes and secrets."""
    if step not in STEPS:
        raise KeyError(f"unknown step {step!r}; shared.config.cluster.STEPS has {sorted(STEPS)}")
    needs = STEPS[step]
    kind = cluster["kinds"][needs.kind]
    gpus = {"teacher": cluster["gpus_per_teacher"], "student": cluster["gpus_per_student"], "one": 1, None: 0}[
        needs.gpus
    ]
    res = {k: kind[k] for k in RESOURCE_KEYS if k in kind}
    if needs.gpus in ("teacher", "student") and gpus > 1:  # the kind is per GPU of a training pod
        res.update({k: scale_quantity(res[k], gpus) for k in SCALED_KEYS if k in res})
    res.update(cluster["steps"].get(step, {}))
    r = cluster["retry"]
    return {
        "step": step,
        "kind": needs.kind,
        "resources": res,
        "gpus": gpus,
        "accelerator_type": kind["accelerator_type"] if gpus else "",
        "node_selector": dict(kind["node_selector"]),
        "tolerations": list(kind["tolerations"]),
        "caching": cluster["caching"].get(step, needs.cached),
        "retry": (
            {k: r[k] for k in ("num_retries", "backoff_duration", "backoff_factor", "backoff_max_duration")}
            if step in r["steps"] and r["num_retries"] > 0
            else None
        ),
        "cache_pvc": dict(cluster["cache_pvc"]) if needs.cache_pvc else None,
        "mongo_secret": dict(cluster["secrets"]["mongo_uri"]) if needs.mongo_secret else None,
        "hub_secret": dict(cluster["secrets"]["hf_token"]) if needs.hub_secret else None,
        "gcs_credentials": (
            dict(cluster["secrets"]["gcs_credentials"]) if cluster["secrets"]["gcs_credentials"]["enabled"] else None
        ),
        "security": dict(cluster["security"]),
    }


def cluster_problems(cfg: dict) -> list[str]:
    """Ways a whole pipeline config would fail on the cluster although each section
    is valid on its own: data paths off the cache volume (lost between pods), a
    Mongo URI env name the secret does not set, local files allowed to be fetched."""
    cl = load_cluster_config(cfg.get("cluster"))
    mount = cl["cache_pvc"]["mount_path"].rstrip("/") + "/"
    problems = []
    for section, key in (("cache", "dir"), ("teachers", "checkpoint_dir"), ("weights", "cache_dir")):
        value = str(cfg.get(section, {}).get(key, ""))
        if value and "://" not in value and not value.startswith(mount):
            problems.append(
                f"{section}.{key} = {value!r} is not on the cache volume ({mount}); pods would not share it"
            )
    env = cl["secrets"]["mongo_uri"]["env"]
    data = cfg.get("data", {})
    if data.get("source") == "mongo" and data.get("mongo", {}).get("uri_env", "MONGO_URI") != env:
        problems.append(
            f"data.mongo.uri_env = {data['mongo']['uri_env']!r} but the secret is "
            f"exposed as {env!r} (cluster.secrets.mongo_uri.env)"
        )
    fetch = cfg.get("cache", {}).get("fetch", {})
    if fetch.get("allow_local_paths"):
        problems.append("cache.fetch.allow_local_paths is true: pods must not read local paths named by records")
    if fetch.get("allow_private_networks"):
        problems.append("cache.fetch.allow_private_networks is true: record URLs could reach cluster services")
    release_uri = str((cfg.get("release") or {}).get("uri") or "")
    if release_uri and not release_uri.startswith("gs://"):
        problems.append(f"release.uri = {release_uri!r} is a path: the publish pod's files are lost; use gs://")
    if "weights" in cfg and "teachers" in cfg:
        problems += offline_problems(cfg)
    return problems
