"""Cluster settings: the `cluster:` schema (shared/config/cluster.py) and their
translation into kfp-kubernetes platform settings (components/platform.py),
checked on compiled specs; a pipeline with them still runs on the local runner."""

import copy
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kfp import compiler, dsl  # noqa: E402

from components.platform import apply_platform, apply_platform_to_pipeline  # noqa: E402
from shared.config.cluster import CLUSTER_DEFAULTS, STEPS, cluster_problems, load_cluster_config, step_settings  # noqa: E402
from shared.config.pipeline import ConfigError, load_pipeline_config  # noqa: E402


@dsl.component(base_image="python:3.11")
def echo(x: int) -> int:
    return x + 1


def compile_spec(pipeline_func, tmp_path) -> tuple[dict, dict]:
    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline_func, str(path))
    docs = list(yaml.safe_load_all(path.read_text()))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return docs[0], platform


def one_task_per_step(cluster: dict):
    """A pipeline with one task per known step, each with that step's settings."""

    @dsl.pipeline(name="platform-check")
    def p(gpus: int = 2):
        for i, step in enumerate(sorted(STEPS)):
            t = echo(x=i).set_display_name(step)
            apply_platform(t, step, cluster, accelerator_limit=gpus if step == "train_teacher" else None)

    return p


def executor_by_step(spec: dict) -> dict[str, str]:
    """step name (display name) -> executor label."""
    tasks = spec["root"]["dag"]["tasks"]
    comps = spec["components"]
    return {t["taskInfo"]["name"]: comps[t["componentRef"]["name"]]["executorLabel"] for t in tasks.values()}


def task_by_step(spec: dict) -> dict[str, dict]:
    return {t["taskInfo"]["name"]: t for t in spec["root"]["dag"]["tasks"].values()}


# --- schema -------------------------------------------------------------------


def test_defaults_load_and_loading_is_idempotent():
    cl = load_cluster_config({})
    assert cl["kinds"]["gpu"]["accelerator_type"] == "nvidia.com/gpu"
    assert cl["kinds"]["gpu"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert load_cluster_config(cl) == cl
    assert load_cluster_config(None) == cl


@pytest.mark.parametrize(
    "section, fragment",
    [
        (
            {"kinds": {"gpu": {"acelerator_type": "x"}}},
            "cluster.kinds.gpu.acelerator_type: unknown key (did you mean accelerator_type?)",
        ),
        ({"namspace": "x"}, "cluster.namspace: unknown key"),
        ({"steps": {"train_teachers": {"cpu_request": "2"}}}, "cluster.steps.train_teachers: unknown step"),
        ({"steps": {"cache_images": {"cpus": "2"}}}, "cluster.steps.cache_images: unknown key(s) ['cpus']"),
        ({"kinds": {"cpu": {"memory_limit": "8 GB"}}}, "cluster.kinds.cpu.memory_limit: expected a memory quantity"),
        ({"kinds": {"cpu": {"cpu_request": "two"}}}, "cluster.kinds.cpu.cpu_request: expected a CPU quantity"),
        ({"kinds": {"gpu": {"tolerations": [{"key": "a", "operator": "In"}]}}}, "tolerations[0].operator"),
        (
            {"kinds": {"gpu": {"tolerations": [{"key": "a", "efect": "NoSchedule"}]}}},
            "tolerations[0]: unknown key(s) ['efect']",
        ),
        ({"caching": {"split": "yes"}}, "cluster.caching.split: expected true/false"),
        ({"retry": {"steps": ["train"]}}, "cluster.retry.steps: unknown step 'train'"),
        ({"retry": {"backoff_duration": "2m"}}, "cluster.retry.backoff_duration"),
        ({"gpus_per_teacher": 0}, "cluster.gpus_per_teacher: must be >= 1"),
        ({"namespace": "Plant_ID"}, "cluster.namespace"),
        (
            {"gcp_service_account": "sa@p.iam.gserviceaccount.com", "secrets": {"gcs_credentials": {"enabled": True}}},
            "exclude each other",
        ),
        ({"image_pull_policy": "Sometimes"}, "cluster.image_pull_policy"),
        ("gpu", "cluster: expected a mapping"),
    ],
)
def test_bad_cluster_sections_name_the_key(section, fragment):
    with pytest.raises(ConfigError) as e:
        load_cluster_config(section)
    assert fragment in str(e.value)


def test_numeric_quantities_are_read_as_kubernetes_quantities():
    cl = load_cluster_config(
        {"kinds": {"gpu": {"cpu_request": 8, "cpu_limit": 12.5}}, "steps": {"split": {"cpu_limit": 1}}}
    )
    assert (cl["kinds"]["gpu"]["cpu_request"], cl["kinds"]["gpu"]["cpu_limit"]) == ("8", "12.5")
    assert step_settings("split", cl)["resources"]["cpu_limit"] == "1"


def test_user_node_selector_and_tolerations_replace_the_defaults():
    cl = load_cluster_config({"kinds": {"gpu": {"node_selector": {"pool": "a100"}, "tolerations": []}}})
    assert cl["kinds"]["gpu"]["node_selector"] == {"pool": "a100"}
    assert cl["kinds"]["gpu"]["tolerations"] == []
    # the other kind keeps its defaults
    assert cl["kinds"]["cpu"]["node_selector"] == CLUSTER_DEFAULTS["kinds"]["cpu"]["node_selector"]


def test_step_settings_follow_the_table():
    cl = load_cluster_config(
        {
            "gpus_per_teacher": 4,
            "gpus_per_student": 2,
            "steps": {"cache_images": {"cpu_request": "8", "memory_limit": "24Gi"}},
            "caching": {"cache_images": True},
        }
    )
    t = step_settings("train_teacher", cl)
    assert (t["kind"], t["gpus"], t["accelerator_type"]) == ("gpu", 4, "nvidia.com/gpu")
    assert t["retry"]["num_retries"] == 3 and t["cache_pvc"]["name"] == "plantid-cache"
    assert t["caching"] is True and t["mongo_secret"] is None  # reused: a late failure must not retrain
    assert step_settings("train_student", cl)["gpus"] == 2
    assert step_settings("teacher_logits", cl)["gpus"] == 1
    # a training pod's kind is per GPU: 4 GPUs, 4 x the CPU and memory; light GPU steps their own kind
    gpu = CLUSTER_DEFAULTS["kinds"]["gpu"]
    assert t["resources"]["cpu_request"] == str(4 * int(gpu["cpu_request"]))
    assert t["resources"]["memory_limit"] == f"{4 * int(gpu['memory_limit'][:-2])}Gi"
    assert step_settings("train_student", cl)["resources"]["cpu_limit"] == str(2 * int(gpu["cpu_limit"]))
    lt = step_settings("evaluate_teacher", cl)
    assert lt["kind"] == "gpu_light" and lt["resources"]["memory_limit"] == "32Gi" and lt["retry"]
    ing = step_settings("ingest", cl)
    assert ing["caching"] is True and ing["mongo_secret"]["env"] == "MONGO_URI" and ing["cache_pvc"] is None
    assert ing["gpus"] == 0 and ing["accelerator_type"] == "" and ing["retry"] is None
    ci = step_settings("cache_images", cl)
    assert ci["resources"]["cpu_request"] == "8" and ci["resources"]["memory_limit"] == "24Gi"
    assert ci["resources"]["cpu_limit"] == CLUSTER_DEFAULTS["kinds"]["cpu"]["cpu_limit"]
    assert ci["caching"] is True  # the explicit setting wins over the table
    assert step_settings("split", cl)["cache_pvc"] is None
    with pytest.raises(KeyError, match="unknown step 'trian_teacher'"):
        step_settings("trian_teacher", cl)


def test_cluster_config_file_is_fit_for_the_cluster():
    cfg = load_pipeline_config(ROOT / "config" / "cluster.yaml")
    assert cluster_problems(cfg) == []
    assert cfg["data"]["source"] == "mongo" and cfg["cache"]["resize"] == 448
    assert cfg["cache"]["fetch"]["allow_local_paths"] is False
    assert cfg["cache"]["fetch"]["allow_private_networks"] is False
    mount = load_cluster_config(cfg["cluster"])["cache_pvc"]["mount_path"]
    assert cfg["cache"]["dir"].startswith(mount + "/")
    # the local config is not: its paths are off the volume and local files may be read
    problems = cluster_problems(load_pipeline_config(ROOT / "config" / "local.yaml"))
    assert any("cache.dir" in p for p in problems) and any("allow_local_paths" in p for p in problems)
    assert any("release.uri" in p for p in problems)  # outputs/releases: a path, lost with the pod


def test_cluster_problems_catch_a_mongo_env_the_secret_does_not_set():
    cfg = load_pipeline_config(ROOT / "config" / "cluster.yaml", {"data.mongo.uri_env": "CATALOGUE_URI"})
    assert any("CATALOGUE_URI" in p for p in cluster_problems(cfg))


# --- platform settings in the compiled spec ---------------------------------------


def test_every_step_gets_its_platform_settings(tmp_path):
    cl = load_cluster_config({"secrets": {"gcs_credentials": {"enabled": True}}})
    spec, platform = compile_spec(one_task_per_step(cl), tmp_path)
    execs, tasks = executor_by_step(spec), task_by_step(spec)
    assert set(execs) == set(STEPS)
    for step, needs in STEPS.items():
        k8s = platform[execs[step]]
        kind = cl["kinds"][needs.kind]
        res = spec["deploymentSpec"]["executors"][execs[step]]["container"]["resources"]
        assert k8s["nodeSelector"]["labels"] == kind["node_selector"], step
        assert k8s["securityContext"] == {"runAsUser": "1000", "runAsGroup": "1000", "runAsNonRoot": True}
        assert res["resourceCpuRequest"] == kind["cpu_request"] and res["resourceMemoryLimit"] == kind["memory_limit"]
        assert ("pvcMount" in k8s) == needs.cache_pvc, step
        if needs.cache_pvc:
            assert k8s["pvcMount"][0]["mountPath"] == "/mnt/plantid"
            assert k8s["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == "plantid-cache"
        assert ("secretAsEnv" in k8s) == (needs.mongo_secret or needs.hub_secret), step
        # the GCS key (when enabled) goes to every pod: the KFP launcher uploads artifacts from each one
        assert k8s["secretAsVolume"][0]["mountPath"] == "/var/secrets/google"
        env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"][execs[step]]["container"]["env"]}
        assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/secrets/google/key.json"
        assert ("accelerator" in res) == (needs.gpus is not None), step
        assert ("tolerations" in k8s) == needs.kind.startswith("gpu"), step
        assert tasks[step].get("cachingOptions", {}).get("enableCache", False) == needs.cached, step
        assert ("retryPolicy" in tasks[step]) == (needs.gpus is not None), step  # every GPU step: spot nodes
        assert int(k8s["activeDeadlineSeconds"]) == kind["timeout_s"]
    teacher = spec["deploymentSpec"]["executors"][execs["train_teacher"]]["container"]["resources"]["accelerator"]
    # the GPU count is the pipeline parameter the component also receives
    assert teacher["resourceType"] == "nvidia.com/gpu" and "pipelinechannel--gpus" in teacher["resourceCount"]
    evaluate = spec["deploymentSpec"]["executors"][execs["evaluate_teacher"]]["container"]["resources"]
    assert evaluate["accelerator"]["resourceCount"] == "1"
    assert platform[execs["train_teacher"]]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    retry = tasks["train_teacher"]["retryPolicy"]
    assert retry == {"maxRetryCount": 3, "backoffDuration": "120s", "backoffFactor": 2.0, "backoffMaxDuration": "3600s"}
    ingest_env = platform[execs["ingest"]]["secretAsEnv"][0]
    assert ingest_env["keyToEnv"] == [{"secretKey": "uri", "envVar": "MONGO_URI"}]
    assert ingest_env["secretNameParameter"]["runtimeValue"]["constant"] == "plantid-mongo"


def test_workload_identity_mounts_no_key_file(tmp_path):
    cl = load_cluster_config({"gcp_service_account": "sa@p.iam.gserviceaccount.com"})
    spec, platform = compile_spec(one_task_per_step(cl), tmp_path)
    assert not any("secretAsVolume" in k for k in platform.values())
    for ex in spec["deploymentSpec"]["executors"].values():
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in str(ex["container"].get("env", ""))


def test_cluster_yaml_settings_reach_the_spec(tmp_path):
    cfg = load_pipeline_config(ROOT / "config" / "cluster.yaml")
    spec, platform = compile_spec(one_task_per_step(cfg["cluster"]), tmp_path)
    execs = executor_by_step(spec)
    tols = platform[execs["train_teacher"]]["tolerations"]
    assert {t["key"] for t in tols} == {"nvidia.com/gpu", "cloud.google.com/gke-spot"}
    res = spec["deploymentSpec"]["executors"][execs["cache_images"]]["container"]["resources"]
    assert res["resourceCpuRequest"] == "8" and res["resourceMemoryLimit"] == "24Gi"


def test_platform_settings_still_run_on_the_local_runner(tmp_path, monkeypatch):
    from kfp import local

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    cl = load_cluster_config({"secrets": {"gcs_credentials": {"enabled": True}}})

    @dsl.pipeline(name="platform-local")
    def p(gpus: int = 2) -> int:
        a = apply_platform(echo(x=1), "train_teacher", cl, accelerator_limit=gpus)
        b = apply_platform(echo(x=a.output), "ingest", cl)
        return b.output

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    assert p().output == 3


def test_real_pipeline_places_every_step(tmp_path):
    """pipeline.py applies the cluster settings to every task it builds."""
    import pipeline

    cfg = load_pipeline_config(ROOT / "config" / "cluster.yaml")
    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline.build_pipeline(cfg), str(path))
    docs = list(yaml.safe_load_all(path.read_text()))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    cl = load_cluster_config(cfg["cluster"])
    missing = []
    for label in docs[0]["deploymentSpec"]["executors"]:
        step = label[len("exec-") :].rsplit("-", 1)[0] if label[-1].isdigit() else label[len("exec-") :]
        step = step.replace("-", "_")
        if step not in STEPS:
            continue
        kind = cl["kinds"][STEPS[step].kind]
        if platform.get(label, {}).get("nodeSelector", {}).get("labels") != kind["node_selector"]:
            missing.append(label)
    assert not missing, f"pipeline.py does not call components.platform.apply_platform for {missing}"


def test_apply_platform_refuses_an_unknown_step():
    with pytest.raises(KeyError, match="train_teachers"):

        @dsl.pipeline(name="bad")
        def p():
            apply_platform(echo(x=1), "train_teachers", copy.deepcopy(CLUSTER_DEFAULTS))


@dsl.component(base_image="python:3.11")
def train_teacher(x: int) -> int:
    return x


@dsl.component(base_image="python:3.11")
def split(x: int) -> int:
    return x


def test_apply_platform_to_pipeline_reaches_nested_tasks(tmp_path):
    cl = load_cluster_config({})

    @dsl.pipeline(name="walk")
    def p(gpus: int = 4):
        s = split(x=1)
        with dsl.ParallelFor([1, 2]) as i:
            t = train_teacher(x=i)
            with dsl.If(t.output == 1):
                train_teacher(x=s.output)
        assert apply_platform_to_pipeline(cl, accelerator_limits={"train_teacher": gpus}) == {
            "split": "split",
            "train-teacher": "train_teacher",
            "train-teacher-2": "train_teacher",
        }

    spec, platform = compile_spec(p, tmp_path)
    assert set(platform) == {"exec-split", "exec-train-teacher", "exec-train-teacher-2"}
    for label in ("exec-train-teacher", "exec-train-teacher-2"):
        res = spec["deploymentSpec"]["executors"][label]["container"]["resources"]
        assert "pipelinechannel--gpus" in res["accelerator"]["resourceCount"]
        assert platform[label]["pvcMount"][0]["mountPath"] == cl["cache_pvc"]["mount_path"]
    assert "accelerator" not in spec["deploymentSpec"]["executors"]["exec-split"]["container"]["resources"]


def test_apply_platform_to_pipeline_refuses_a_component_without_settings():
    with pytest.raises(KeyError, match="component 'echo' has no entry"):

        @dsl.pipeline(name="unknown")
        def p():
            echo(x=1)
            apply_platform_to_pipeline({})


def test_scale_quantity_keeps_the_unit():
    from shared.config.cluster import scale_quantity

    assert [scale_quantity(q, n) for q, n in (("8", 2), ("48Gi", 4), ("500m", 3), ("1.5", 2), ("16Gi", 1))] == [
        "16",
        "192Gi",
        "1500m",
        "3",
        "16Gi",
    ]


def test_an_older_kfp_backend_leaves_the_security_context_out_and_says_so(tmp_path):
    from shared.config.cluster import dropped_features

    old = load_cluster_config({"kfp_backend": "2.15"})
    assert dropped_features(old) and "needs KFP backend >= 2.17" in dropped_features(old)[0]
    assert dropped_features(load_cluster_config({})) == []
    spec, platform = compile_spec(one_task_per_step(old), tmp_path)
    assert platform and not any("securityContext" in k8s for k8s in platform.values())
    with pytest.raises(ConfigError, match="cluster.kfp_backend: '2.9' is not a KFP backend release"):
        load_cluster_config({"kfp_backend": "2.9"})
    with pytest.raises(ConfigError, match="cluster.mode: must be one of multi-user, standalone"):
        load_cluster_config({"mode": "single"})


def test_a_rerun_after_a_late_failure_reuses_every_step_before_it(tmp_path):
    """KFP's cache key is the component spec plus its inputs (parameters, upstream artifacts):
    every step from ingest to validate_export caches, so a re-run whose inputs did not change
    reuses each one up to the step that failed; only the manifest (it records this run) reruns."""
    import pipeline

    cfg = load_pipeline_config(ROOT / "config" / "cluster.yaml")
    specs = []
    for i in range(2):
        pipeline.compile_pipeline(cfg, str(tmp_path / f"p{i}.yaml"))
        specs.append(next(d for d in yaml.safe_load_all((tmp_path / f"p{i}.yaml").read_text()) if "root" in d))
    assert specs[0] == specs[1]  # the same config compiles to the same keys

    def tasks(dag: dict) -> dict:
        out = {}
        for name, t in dag["tasks"].items():
            out[name] = t
        return out

    everything = dict(tasks(specs[0]["root"]["dag"]))
    for comp in specs[0]["components"].values():
        if "dag" in comp:
            everything.update(tasks(comp["dag"]))
    caching = {
        n: t.get("cachingOptions", {}).get("enableCache", False)
        for n, t in everything.items()
        if "componentRef" in t and not n.startswith(("for-loop", "condition"))
    }
    uncached = sorted(n for n, on in caching.items() if not on)
    # publish decides against the release current when it runs: never a cached decision
    assert uncached == ["publish", "training-manifest"], uncached
    assert caching["train-teacher"] and caching["cache-images"] and caching["train-student"]


def test_the_cluster_smoke_config_is_the_real_setup_with_tiny_models(tmp_path):
    """config/cluster-smoke.yaml proves a cluster's set-up in minutes: the same namespace, service
    account, volume, Secrets and GPU pool as config/cluster.yaml, timm's tiny test models."""
    import pipeline

    smoke = load_pipeline_config(ROOT / "config" / "cluster-smoke.yaml")
    real = load_pipeline_config(ROOT / "config" / "cluster.yaml")
    assert cluster_problems(smoke) == []
    same = ("mode", "namespace", "service_account", "gcp_service_account", "cache_pvc", "kfp_backend")
    assert {k: smoke["cluster"][k] for k in same} == {k: real["cluster"][k] for k in same}
    assert smoke["cluster"]["kinds"]["gpu"]["node_selector"] == real["cluster"]["kinds"]["gpu"]["node_selector"]
    assert smoke["data"]["source"] == "mongo" and 0 < smoke["data"]["mongo"]["limit"] <= 1000
    assert smoke["export"]["gates"]["profile"] == "local"  # its bounds are never the plan's
    pipeline.compile_pipeline(smoke, str(tmp_path / "smoke.yaml"))
    text = (tmp_path / "smoke.yaml").read_text()
    assert "test_resnet" in text and "test_efficientnet" in text and "vit_base_patch16_384" not in text
