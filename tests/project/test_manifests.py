"""GitOps manifests (manifests/): every overlay renders with `kubectl kustomize`,
built-in kinds pass kubernetes-validate, the KFP Pipeline / PipelineVersion
resources pass their CRD schemas and the KFP webhook's rules, RBAC has no
wildcards, names agree with the cluster config, and the generated files are not
stale versus the code (re-rendered into a temporary copy and compared)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.render_manifests import spec_hash  # noqa: E402
from shared.config.cluster import load_cluster_config  # noqa: E402
from shared.config.pipeline import load_pipeline_config  # noqa: E402

MANIFESTS = ROOT / "manifests"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if (p / "kustomization.yaml").exists())
K8S_VERSION = "1.32.0"  # kubectl 1.32 here; GKE regular channel
KFP_GROUP = "pipelines.kubeflow.org/v2beta1"
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
KFP_PIPELINE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")  # backend common.ValidatePipelineName

# openAPIV3Schema of the v2beta1 CRDs (kubeflow/pipelines manifests/kustomize/base/crds/
# pipelines.kubeflow.org_{pipelines,pipelineversions}.yaml; spec fields from
# backend/src/crd/kubernetes/v2beta1/*_types.go). pipelineSpec/platformSpec are schemaless.
PIPELINE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata"],
    "properties": {
        "apiVersion": {"const": KFP_GROUP},
        "kind": {"const": "Pipeline"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"description": {"type": "string"}, "displayName": {"type": "string"}},
        },
    },
}
PIPELINE_VERSION_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": KFP_GROUP},
        "kind": {"const": "PipelineVersion"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["pipelineSpec"],
            "additionalProperties": False,
            "properties": {
                "codeSourceURL": {"type": "string"},
                "description": {"type": "string"},
                "displayName": {"type": "string"},
                "pipelineName": {"type": "string"},
                "versionName": {"type": "string", "maxLength": 253, "pattern": r"^[a-z0-9]([a-z0-9\.\-]*[a-z0-9])?$"},
                "pipelineSpec": {"type": "object"},
                "platformSpec": {"type": "object"},
                "pipelineSpecURI": {"type": "string"},
                "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
    },
}


def kustomize(path: Path) -> list[dict]:
    proc = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def rendered():
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    return {name: kustomize(MANIFESTS / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def cluster():
    cfg = load_pipeline_config(ROOT / "config" / "cluster.yaml")
    return cfg, load_cluster_config(cfg["cluster"])


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def test_there_are_dev_and_prod_overlays():
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_pass_the_kubernetes_schemas(rendered, overlay):
    builtin = [d for d in rendered[overlay] if not d["apiVersion"].startswith("pipelines.kubeflow.org")]
    assert {d["kind"] for d in builtin} >= {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PersistentVolumeClaim",
        "ConfigMap",
    }
    for d in builtin:
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{overlay}: {d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")


def test_kubernetes_validate_catches_a_bad_resource():
    """The validator in use rejects what the API server would."""
    bad = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "x"},
        "spec": {"accessModes": "ReadWriteMany", "resources": {"requests": {"storage": "1Ti"}}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kfp_resources_pass_their_schema_and_webhook_rules(rendered, overlay):
    docs = rendered[overlay]
    [ns] = by_kind(docs, "Namespace")
    pipelines, versions = by_kind(docs, "Pipeline"), by_kind(docs, "PipelineVersion")
    assert len(pipelines) == 1 and len(versions) == 1, f"{overlay}: expected one Pipeline and one PipelineVersion"
    [p], [v] = pipelines, versions
    jsonschema.validate(p, PIPELINE_SCHEMA)
    jsonschema.validate(v, PIPELINE_VERSION_SCHEMA)
    for d in (p, v):
        assert DNS_SUBDOMAIN.match(d["metadata"]["name"]), d["metadata"]["name"]
        assert d["metadata"]["namespace"] == ns["metadata"]["name"]
    # the webhook: spec.pipelineName names an existing Pipeline in the same namespace ...
    assert v["spec"]["pipelineName"] == p["metadata"]["name"]
    # ... and the IR's pipeline name is a valid KFP pipeline name
    spec = v["spec"]["pipelineSpec"]
    assert KFP_PIPELINE_NAME.match(spec["pipelineInfo"]["name"])
    assert {"root", "components", "deploymentSpec", "schemaVersion"} <= set(spec)
    # immutable spec: the version name is derived from it (hashed as compiled: kustomize
    # re-serialises numbers, 20.0 -> 20, which the API server reads the same)
    committed = [
        d
        for d in yaml.safe_load_all((MANIFESTS / "overlays" / overlay / "pipeline.yaml").read_text())
        if d and d["kind"] == "PipelineVersion"
    ][0]
    assert v["metadata"]["name"] == committed["metadata"]["name"] == f"{p['metadata']['name']}-{spec_hash(committed)}"


def test_overlays_compile_different_images_into_different_versions(rendered):
    images, names = {}, {}
    for overlay, docs in rendered.items():
        [v] = by_kind(docs, "PipelineVersion")
        names[overlay] = v["metadata"]["name"]
        executors = v["spec"]["pipelineSpec"]["deploymentSpec"]["executors"]
        images[overlay] = {e["container"]["image"] for e in executors.values()}
    tags = {o: {i.rsplit(":", 1)[1] for i in imgs} for o, imgs in images.items()}
    render = {
        o: yaml.safe_load((MANIFESTS / "overlays" / o / "render.yaml").read_text())["overrides"] for o in rendered
    }
    for o in rendered:
        assert tags[o] == {str(render[o]["pipeline.images.tag"])}, (o, tags[o])
    if len({frozenset(t) for t in tags.values()}) > 1:
        assert len(set(names.values())) == len(names)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_namespaced_and_has_no_wildcards(rendered, overlay):
    docs = rendered[overlay]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    for role in by_kind(docs, "Role"):
        for i, rule in enumerate(role["rules"]):
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                values = rule.get(field, [])
                assert not any("*" in str(x) for x in values), (
                    f"{overlay}: Role {role['metadata']['name']} rule {i} has a wildcard in {field}: {values}"
                )
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            if "secrets" in rule["resources"]:
                assert rule.get("resourceNames"), "secrets may be read only by name"
                assert set(rule["verbs"]) <= {"get"}
    sas = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    roles = {d["metadata"]["name"] for d in by_kind(docs, "Role")}
    [ns] = by_kind(docs, "Namespace")
    for rb in by_kind(docs, "RoleBinding"):
        assert rb["roleRef"]["kind"] == "Role" and rb["roleRef"]["name"] in roles
        for s in rb["subjects"]:
            assert s["kind"] == "ServiceAccount" and s["name"] in sas
            assert s["namespace"] == ns["metadata"]["name"], "the binding must name the overlay's account"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_names_agree_with_the_cluster_config_and_the_pipeline(rendered, cluster, overlay):
    cfg, cl = cluster
    docs = rendered[overlay]
    [ns] = by_kind(docs, "Namespace")
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] in ("baseline", "restricted")
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    [sa] = by_kind(docs, "ServiceAccount")
    assert sa["metadata"]["name"] == cl["service_account"]
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    [pvc] = by_kind(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == cl["cache_pvc"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    [cm] = by_kind(docs, "ConfigMap")
    assert cm["data"]["cluster.yaml"] == (ROOT / "config" / "cluster.yaml").read_text()
    assert set(cm["data"]) == {p.name for p in (ROOT / "config").glob("*.yaml")}
    # every PVC the pipeline mounts is one this overlay creates
    [v] = by_kind(docs, "PipelineVersion")
    execs = (
        (v["spec"].get("platformSpec") or {})
        .get("platforms", {})
        .get("kubernetes", {})
        .get("deploymentSpec", {})
        .get("executors", {})
    )
    for label, k8s in execs.items():
        for mount in k8s.get("pvcMount", []):
            name = mount.get("pvcNameParameter", {}).get("runtimeValue", {}).get("constant") or mount.get("constant")
            assert name == pvc["metadata"]["name"], f"{label} mounts PVC {name!r}, not created here"
    if overlay == "prod":
        assert ns["metadata"]["name"] == cl["namespace"]


def test_generated_manifests_are_not_stale(tmp_path):
    """Re-render into a copy of manifests/ and compare every generated file."""
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "render_manifests.py"),
            "--config",
            str(ROOT / "config" / "cluster.yaml"),
            "--manifests-dir",
            str(copy),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    generated = [
        p.relative_to(copy)
        for p in copy.rglob("*")
        if p.is_file() and ("/config/" in f"/{p.relative_to(copy)}" or p.name == "pipeline.yaml")
    ]
    assert any(g.name == "pipeline.yaml" for g in generated) and any(g.parent.name == "config" for g in generated)
    stale = [
        str(g)
        for g in generated
        if not (MANIFESTS / g).is_file() or (MANIFESTS / g).read_bytes() != (copy / g).read_bytes()
    ]
    extra = [
        str(p.relative_to(MANIFESTS))
        for p in (MANIFESTS / "base" / "config").glob("*")
        if not (copy / "base" / "config" / p.name).exists()
    ]
    assert not stale and not extra, (
        f"manifests are stale versus the code: {stale + extra}; run "
        "`python scripts/render_manifests.py --config config/cluster.yaml`"
    )


def test_generated_pipeline_names_no_path_of_this_checkout():
    for overlay in OVERLAYS:
        text = (MANIFESTS / "overlays" / overlay / "pipeline.yaml").read_text()
        assert str(ROOT) not in text, f"{overlay}/pipeline.yaml names a path on this machine"
        assert text.startswith("# GENERATED by scripts/render_manifests.py")


def test_render_refuses_a_config_unfit_for_the_cluster(tmp_path):
    bad = tmp_path / "local.yaml"
    bad.write_text((ROOT / "config" / "local.yaml").read_text())
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "render_manifests.py"),
            "--config",
            str(bad),
            "--manifests-dir",
            str(copy),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    assert "not fit for the cluster" in proc.stderr and "allow_local_paths" in proc.stderr
