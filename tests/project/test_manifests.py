"""GitOps manifests (manifests/): every overlay renders with `kubectl kustomize` (prod, which
names its images by digest only, from a copy rendered with test digests when the repository
has none pushed yet), built-in kinds pass kubernetes-validate, the custom resources (KFP
Pipeline / PipelineVersion, the kubeflow.org Profile) pass their CRD schemas and the KFP
webhook's rules, both tenancy modes (cluster.mode) give what they need, RBAC has no
wildcards, names agree with the cluster config, and the generated files are not stale versus
the code (re-rendered into a temporary copy and compared)."""

import hashlib
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

from scripts.render_manifests import (  # noqa: E402
    EXIT_NO_DIGESTS,
    GENERATED_FILES,
    KEEP_ANNOTATIONS,
    overlay_settings,
    spec_hash,
)
from shared.config.cluster import load_cluster_config, run_namespace  # noqa: E402
from shared.config.pipeline import IMAGE_NAMES, load_pipeline_config  # noqa: E402

MANIFESTS = ROOT / "manifests"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if (p / "kustomization.yaml").exists())
K8S_VERSION = "1.32.0"  # the Kubernetes schemas validated against (kubectl 1.32 here; GKE regular channel)
KFP_GROUP = "pipelines.kubeflow.org/v2beta1"
CONFIG = ROOT / "config" / "cluster.yaml"
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


# kubeflow.org/v1 Profile (kubeflow/kubeflow components/profile-controller/api/v1/profile_types.go):
# cluster-scoped; spec.owner is an rbac Subject (kind User, name the owner's e-mail).
PROFILE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v1"},
        "kind": {"const": "Profile"},
        "metadata": {"type": "object", "required": ["name"], "not": {"required": ["namespace"]}},
        "spec": {
            "type": "object",
            "required": ["owner"],
            "properties": {
                "owner": {
                    "type": "object",
                    "required": ["kind", "name"],
                    "properties": {"kind": {"const": "User"}, "name": {"type": "string", "minLength": 1}},
                },
                "resourceQuotaSpec": {"type": "object"},
                "plugins": {"type": "array"},
            },
        },
    },
}
CUSTOM_SCHEMAS = {
    (KFP_GROUP, "Pipeline"): PIPELINE_SCHEMA,
    (KFP_GROUP, "PipelineVersion"): PIPELINE_VERSION_SCHEMA,
    ("kubeflow.org/v1", "Profile"): PROFILE_SCHEMA,
}


def kustomize(path: Path) -> list[dict]:
    proc = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render(manifests: Path, config: Path = CONFIG, digests: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / "render_manifests.py"), "--config", str(config)]
    cmd += ["--manifests-dir", str(manifests)] + (["--digests", str(digests)] if digests else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


def overlay_config(overlay: str) -> dict:
    """The overlay's pipeline config (config/cluster.yaml + its render.yaml), its namespace in."""
    namespace, overrides, _ = overlay_settings(MANIFESTS / "overlays" / overlay)
    cfg = load_pipeline_config(CONFIG, overrides)
    cfg["cluster"] = load_cluster_config({**cfg["cluster"], "namespace": namespace})
    return cfg


def fake_digests(path: Path) -> Path:
    """A digests file with made-up digests for the registry and tag of every overlay that
    requires digests (tests only; the others keep naming their images by tag)."""
    data: dict = {}
    for overlay in (o for o in OVERLAYS if overlay_settings(MANIFESTS / "overlays" / o)[2]):
        images = overlay_config(overlay)["pipeline"]["images"]
        fake = {n: "sha256:" + hashlib.sha256(n.encode()).hexdigest() for n in IMAGE_NAMES}
        data.setdefault(images["registry"], {})[str(images["tag"])] = fake
    path.write_text(yaml.safe_dump(data))
    return path


def kustomize_all(tmp: Path) -> dict[str, list[dict]]:
    """Every overlay built by kustomize; from a copy (under tmp) rendered with test digests when
    an overlay that requires digests (prod) has not been rendered in the repository."""
    manifests = MANIFESTS
    if not all((MANIFESTS / "overlays" / o / "pipeline.yaml").exists() for o in OVERLAYS):
        manifests = tmp / "manifests"
        shutil.copytree(MANIFESTS, manifests)
        proc = render(manifests, digests=fake_digests(tmp / "digests.yaml"))
        assert proc.returncode == 0 and "NOT rendered" not in proc.stderr, proc.stderr
    return {name: kustomize(manifests / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    return kustomize_all(tmp_path_factory.mktemp("rendered"))


@pytest.fixture(scope="module")
def cluster():
    cfg = load_pipeline_config(CONFIG)
    return cfg, load_cluster_config(cfg["cluster"])


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def run_ns(overlay: str) -> str:
    return run_namespace(overlay_config(overlay)["cluster"])


def test_there_are_dev_prod_and_standalone_overlays():
    assert {"dev", "prod", "standalone"} <= set(OVERLAYS)
    modes = {overlay_config(o)["cluster"]["mode"] for o in OVERLAYS}
    assert modes == {"multi-user", "standalone"}, "both tenancy modes are rendered and tested"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_passes_its_schema(rendered, overlay):
    """Built-in kinds: kubernetes-validate (K8S_VERSION's schemas, strict); custom resources:
    their CRD schemas above. No object is left unchecked."""
    docs = rendered[overlay]
    for d in docs:
        where = f"{overlay}: {d['kind']}/{d['metadata']['name']}"
        custom = CUSTOM_SCHEMAS.get((d["apiVersion"], d["kind"]))
        if custom is not None:
            jsonschema.validate(d, custom)
            continue
        group = d["apiVersion"].rpartition("/")[0]
        assert group in ("", "rbac.authorization.k8s.io"), f"{where}: a custom resource without a schema here"
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where}: {e.message} at {list(e.path)}")
    kinds = {d["kind"] for d in docs}
    assert kinds >= {"ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim", "ConfigMap"}


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


def test_the_profile_schema_catches_a_namespaced_or_ownerless_profile():
    good = {"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": "p"}}
    for bad in (
        {**good, "metadata": {"name": "p", "namespace": "p"}, "spec": {"owner": {"kind": "User", "name": "a@b"}}},
        {**good, "spec": {"owner": {"kind": "User", "name": ""}}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, PROFILE_SCHEMA)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tenancy_mode_objects(rendered, overlay):
    """multi-user: a cluster-scoped Profile owned by cluster.profile_owner and our Namespace,
    labelled for KFP and Pod Security and annotated with the owner the Profile controller
    checks before adopting it; standalone: neither, everything in cluster.kfp_namespace."""
    docs, cl = rendered[overlay], overlay_config(overlay)["cluster"]
    ns = run_ns(overlay)
    if cl["mode"] == "multi-user":
        [profile], [namespace] = by_kind(docs, "Profile"), by_kind(docs, "Namespace")
        assert profile["metadata"]["name"] == namespace["metadata"]["name"] == ns == cl["namespace"]
        assert "namespace" not in profile["metadata"], "a Profile is cluster-scoped"
        assert profile["spec"]["owner"] == {"kind": "User", "name": cl["profile_owner"]}
        labels = namespace["metadata"]["labels"]
        assert labels["pipelines.kubeflow.org/enabled"] == "true"
        assert labels["pod-security.kubernetes.io/enforce"] in ("baseline", "restricted")
        assert labels["pod-security.kubernetes.io/warn"] == "restricted"
        assert namespace["metadata"]["annotations"]["owner"] == cl["profile_owner"]
    else:
        assert not by_kind(docs, "Profile") and not by_kind(docs, "Namespace")
        assert ns == cl["kfp_namespace"]
    for kind in ("ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim", "ConfigMap"):
        for d in by_kind(docs, kind):
            assert d["metadata"]["namespace"] == ns, f"{overlay}: {kind}/{d['metadata']['name']} not in {ns}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_launcher_configmap_carries_the_pipeline_root(rendered, overlay):
    """The only ConfigMap is KFP's kfp-launcher (no copy of the local configs ships)."""
    root = overlay_config(overlay)["pipeline"]["root"]
    assert root, "config/cluster.yaml sets pipeline.root"
    [cm] = by_kind(rendered[overlay], "ConfigMap")
    assert cm["metadata"]["name"] == "kfp-launcher" and cm["metadata"]["namespace"] == run_ns(overlay)
    assert cm["data"] == {"defaultPipelineRoot": root}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_versions_are_never_pruned(rendered, overlay):
    versions = by_kind(rendered[overlay], "PipelineVersion")
    assert versions
    for v in versions:
        annotations = v["metadata"].get("annotations") or {}
        assert annotations["argocd.argoproj.io/sync-options"] == "Prune=false"
        assert annotations["kustomize.toolkit.fluxcd.io/prune"] == "disabled"
        assert KEEP_ANNOTATIONS.items() <= annotations.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kfp_resources_pass_the_webhook_rules(rendered, overlay):
    docs = rendered[overlay]
    pipelines, versions = by_kind(docs, "Pipeline"), by_kind(docs, "PipelineVersion")
    assert len(pipelines) == 1 and len(versions) == 1, f"{overlay}: expected one Pipeline and one PipelineVersion"
    [p], [v] = pipelines, versions
    for d in (p, v):
        assert DNS_SUBDOMAIN.match(d["metadata"]["name"]), d["metadata"]["name"]
        assert d["metadata"]["namespace"] == run_ns(overlay)
    # the webhook: spec.pipelineName names an existing Pipeline in the same namespace ...
    assert v["spec"]["pipelineName"] == p["metadata"]["name"]
    # ... and the IR's pipeline name is a valid KFP pipeline name
    spec = v["spec"]["pipelineSpec"]
    assert KFP_PIPELINE_NAME.match(spec["pipelineInfo"]["name"])
    assert {"root", "components", "deploymentSpec", "schemaVersion"} <= set(spec)
    # immutable spec: the version name is derived from it (hashed as compiled: kustomize
    # re-serialises numbers, 20.0 -> 20, which the API server reads the same)
    assert re.fullmatch(re.escape(p["metadata"]["name"]) + "-[0-9a-f]{10}", v["metadata"]["name"])
    committed = MANIFESTS / "overlays" / overlay / "pipeline.yaml"
    if committed.exists():
        [c] = [d for d in yaml.safe_load_all(committed.read_text()) if d and d["kind"] == "PipelineVersion"]
        assert v["metadata"]["name"] == c["metadata"]["name"] == f"{p['metadata']['name']}-{spec_hash(c)}"


def test_overlays_name_their_images_by_tag_or_digest_as_configured(rendered):
    names = {}
    for overlay, docs in rendered.items():
        [v] = by_kind(docs, "PipelineVersion")
        names[overlay] = v["metadata"]["name"]
        executors = v["spec"]["pipelineSpec"]["deploymentSpec"]["executors"]
        images = {e["container"]["image"] for e in executors.values()}
        _, _, require = overlay_settings(MANIFESTS / "overlays" / overlay)
        tag = str(overlay_config(overlay)["pipeline"]["images"]["tag"])
        by_digest = {i for i in images if "@sha256:" in i}
        if require:
            assert by_digest == images, f"{overlay} must name every image by digest: {sorted(images - by_digest)}"
        else:
            assert all(i.endswith(f":{tag}") for i in images - by_digest), (overlay, images)
    digest_overlays = [o for o in rendered if overlay_settings(MANIFESTS / "overlays" / o)[2]]
    for o in digest_overlays:
        assert all(names[o] != names[other] for other in rendered if other != o)


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
            if "configmaps" in rule["resources"]:
                assert rule.get("resourceNames") == ["kfp-launcher"] and rule["verbs"] == ["get"]
    sas = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    roles = {d["metadata"]["name"] for d in by_kind(docs, "Role")}
    for rb in by_kind(docs, "RoleBinding"):
        assert rb["roleRef"]["kind"] == "Role" and rb["roleRef"]["name"] in roles
        for s in rb["subjects"]:
            assert s["kind"] == "ServiceAccount" and s["name"] in sas
            assert s["namespace"] == run_ns(overlay), "the binding must name the overlay's account"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_names_agree_with_the_cluster_config_and_the_pipeline(rendered, cluster, overlay):
    cfg, cl = cluster
    docs = rendered[overlay]
    [sa] = by_kind(docs, "ServiceAccount")
    assert sa["metadata"]["name"] == cl["service_account"]
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    [pvc] = by_kind(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == cl["cache_pvc"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
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
        assert run_ns(overlay) == run_namespace(cl), "prod uses config/cluster.yaml as is"


def test_generated_manifests_are_not_stale(tmp_path):
    """Re-render into a copy of manifests/ and compare every generated file, both ways."""
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    proc = render(copy)
    assert proc.returncode == 0, proc.stderr

    def generated(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.glob("overlays/*/*.yaml") if p.name in GENERATED_FILES}

    ours, fresh = generated(MANIFESTS), generated(copy)
    assert any(g.endswith("pipeline.yaml") for g in fresh) and any(g.endswith("tenancy.yaml") for g in fresh)
    stale = sorted(g for g in fresh if g not in ours or (MANIFESTS / g).read_bytes() != (copy / g).read_bytes())
    extra = sorted(ours - fresh)
    assert not stale and not extra, (
        f"manifests are stale versus the code: {stale + extra}; run "
        "`python scripts/render_manifests.py --config config/cluster.yaml`"
    )
    assert not (MANIFESTS / "base" / "config").exists(), "the plantid-config ConfigMap is gone"


def test_generated_files_name_no_path_of_this_checkout():
    for path in MANIFESTS.glob("overlays/*/*.yaml"):
        if path.name in GENERATED_FILES:
            text = path.read_text()
            assert str(ROOT) not in text, f"{path} names a path on this machine"
            assert text.startswith("# GENERATED by scripts/render_manifests.py")


def test_prod_is_rendered_exactly_when_its_digests_are_pushed():
    """The committed state: prod's generated files exist iff images/digests.yaml pins every image."""
    from scripts.render_manifests import DIGESTS_FILE, pushed_digests

    images = overlay_config("prod")["pipeline"]["images"]
    pinned = pushed_digests(images["registry"], images["tag"], DIGESTS_FILE)
    rendered_here = [(MANIFESTS / "overlays" / "prod" / f).exists() for f in GENERATED_FILES]
    assert rendered_here == [set(IMAGE_NAMES) <= set(pinned)] * len(GENERATED_FILES)


def test_prod_without_digests_is_not_rendered_and_names_the_images(tmp_path):
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    (copy / "overlays" / "prod" / "pipeline.yaml").write_text("# a stale render by tag\n")
    empty = tmp_path / "digests.yaml"
    empty.write_text("{}\n")
    proc = render(copy, digests=empty)
    assert proc.returncode == 0, proc.stderr
    images = overlay_config("prod")["pipeline"]["images"]
    assert "overlays/prod: NOT rendered" in proc.stderr and "require_digests" in proc.stderr
    for name in IMAGE_NAMES:
        assert f"{images['registry']}/plantid-{name}:{images['tag']}" in proc.stderr
    assert not any((copy / "overlays" / "prod" / f).exists() for f in GENERATED_FILES)
    assert (copy / "overlays" / "dev" / "pipeline.yaml").exists(), "the other overlays are still rendered"
    one = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_manifests.py"), "--config", str(CONFIG)]
        + ["--digests", str(empty), "--pipeline-only", str(copy / "overlays" / "prod")]
        + ["--output", str(tmp_path / "p.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert one.returncode == EXIT_NO_DIGESTS and "plantid-train" in one.stderr


def _config_with(tmp_path: Path, **cluster) -> Path:
    raw = yaml.safe_load(CONFIG.read_text())
    raw["cluster"].update(cluster)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_multi_user_without_profile_owner_fails_naming_it(tmp_path):
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    proc = render(copy, config=_config_with(tmp_path, mode="multi-user", profile_owner=""))
    assert proc.returncode == 1
    assert "cluster.profile_owner" in proc.stderr and "overlay dev" in proc.stderr


def test_standalone_outside_the_kfp_namespace_fails_naming_it(tmp_path):
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    proc = render(copy, config=_config_with(tmp_path, mode="standalone"))
    assert proc.returncode == 1
    assert "cluster.kfp_namespace" in proc.stderr and "overlay dev" in proc.stderr


def test_render_refuses_a_config_unfit_for_the_cluster(tmp_path):
    bad = tmp_path / "local.yaml"
    bad.write_text((ROOT / "config" / "local.yaml").read_text())
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    proc = render(copy, config=bad)
    assert proc.returncode == 1
    assert "not fit for the cluster" in proc.stderr and "allow_local_paths" in proc.stderr
