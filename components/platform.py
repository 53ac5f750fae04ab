"""Kubernetes settings of each pipeline task, from the config's `cluster:` section:
resources, GPU type and count, node pool, tolerations, the cache PVC, secrets,
KFP caching, retries with backoff, security context, timeout, image pulling.

kfp-kubernetes 2.17 offers `set_security_context` with run_as_user / run_as_group /
run_as_non_root only; the KFP backend itself sets allowPrivilegeEscalation=false,
drops ALL capabilities and uses the RuntimeDefault seccomp profile. A read-only
root filesystem cannot be asked for from the SDK: the images run as a non-root
USER and the namespace enforces Pod Security (manifests/base/namespace.yaml).

The local runner ignores all of this; the settings still compile into the spec."""

from __future__ import annotations

from typing import Any

from kfp import kubernetes

from shared.config.cluster import STEPS, backend_supports, load_cluster_config, step_settings

# The table of steps -> kind and needs (re-exported for the pipeline code).
STEP_NEEDS = STEPS

SHM_VOLUME = "dshm"
GCS_KEY_ENV = "GOOGLE_APPLICATION_CREDENTIALS"


def apply_platform(task: Any, step: str, cluster: dict, *, accelerator_limit: Any = None) -> Any:
    """Apply the cluster settings for `step` (a component function name) to `task`.

    `cluster` is the config's cluster section (loaded or raw). `accelerator_limit`
    replaces the configured GPU count, e.g. with the pipeline parameter that also
    tells the component how many torchrun processes to start, so both agree."""
    cl = load_cluster_config(cluster)
    s = step_settings(step, cl)
    res = s["resources"]
    task.set_cpu_request(str(res["cpu_request"])).set_cpu_limit(str(res["cpu_limit"]))
    task.set_memory_request(str(res["memory_request"])).set_memory_limit(str(res["memory_limit"]))
    if s["gpus"]:
        task.set_accelerator_type(s["accelerator_type"])
        task.set_accelerator_limit(accelerator_limit if accelerator_limit is not None else s["gpus"])
        if res.get("shm_size"):
            kubernetes.empty_dir_mount(
                task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory", size_limit=str(res["shm_size"])
            )
    for label, value in sorted(s["node_selector"].items()):
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for t in s["tolerations"]:
        kubernetes.add_toleration(
            task,
            key=t.get("key"),
            operator=t.get("operator"),
            value=t.get("value"),
            effect=t.get("effect"),
            toleration_seconds=t.get("toleration_seconds"),
        )
    if s["cache_pvc"]:
        kubernetes.mount_pvc(task, pvc_name=s["cache_pvc"]["name"], mount_path=s["cache_pvc"]["mount_path"])
    if s["mongo_secret"]:
        m = s["mongo_secret"]
        kubernetes.use_secret_as_env(
            task, secret_name=m["name"], secret_key_to_env={m["key"]: m["env"]}, optional=m["optional"]
        )
    if s["hub_secret"]:
        h = s["hub_secret"]
        kubernetes.use_secret_as_env(
            task, secret_name=h["name"], secret_key_to_env={h["key"]: h["env"]}, optional=h["optional"]
        )
    if s["gcs_credentials"]:
        g = s["gcs_credentials"]
        kubernetes.use_secret_as_volume(task, secret_name=g["name"], mount_path=g["mount_path"])
        task.set_env_variable(GCS_KEY_ENV, f"{g['mount_path'].rstrip('/')}/{g['key_file']}")
    task.set_caching_options(enable_caching=s["caching"])
    if s["retry"]:
        task.set_retry(**s["retry"])
    sec = s["security"]
    if backend_supports(cl, "security_context"):  # else dropped, and compile_pipeline says so
        kubernetes.set_security_context(
            task,
            run_as_user=sec["run_as_user"],
            run_as_group=sec["run_as_group"],
            run_as_non_root=sec["run_as_non_root"],
        )
    if res.get("timeout_s"):
        kubernetes.set_timeout(task, int(res["timeout_s"]))
    kubernetes.set_image_pull_policy(task, cl["image_pull_policy"])
    if cl["image_pull_secrets"]:
        kubernetes.set_image_pull_secrets(task, list(cl["image_pull_secrets"]))
    kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "plantid")
    kubernetes.add_pod_label(task, "plantid.io/step", step.replace("_", "-"))
    return task


def apply_platform_to_pipeline(cluster: dict, *, accelerator_limits: dict | None = None) -> dict[str, str]:
    """Apply `apply_platform` to every task of the pipeline being defined; call it
    last inside the @dsl.pipeline function. Each task's step is its component's
    name (train_teacher -> "train-teacher"); a task whose component is not in
    STEP_NEEDS is an error, so a new step cannot run with no settings.

    accelerator_limits: step -> GPU count (e.g. the pipeline parameter given to the
    component). Returns {task name: step}."""
    from kfp.dsl import pipeline_context

    pipeline = pipeline_context.Pipeline.get_default_pipeline()
    if pipeline is None:
        raise RuntimeError("apply_platform_to_pipeline: call it inside a @dsl.pipeline function")
    limits = dict(accelerator_limits or {})
    unknown = set(limits) - set(STEP_NEEDS)
    if unknown:
        raise KeyError(f"accelerator_limits: unknown step(s) {sorted(unknown)}")
    cl = load_cluster_config(cluster)
    applied = {}
    for name, task in pipeline.tasks.items():
        if task.container_spec is None:  # a dsl.importer or a nested pipeline: not a pod of ours
            continue
        step = task.component_spec.name.replace("-", "_")
        if step not in STEP_NEEDS:
            raise KeyError(
                f"task {name!r}: component {task.component_spec.name!r} has no entry in "
                f"shared.config.cluster.STEPS; add one (its kind and needs)"
            )
        apply_platform(task, step, cl, accelerator_limit=limits.get(step))
        applied[name] = step
    return applied
