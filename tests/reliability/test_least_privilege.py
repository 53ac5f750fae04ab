"""Least privilege on the cluster, checked on what is actually shipped: the pipeline
compiled from config/cluster.yaml and the rendered GitOps manifests. (Per-setting
checks live in tests/components/test_platform.py and tests/project/test_manifests.py; these look at the
whole artifacts for anything that slipped past them.)"""

import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kfp import compiler  # noqa: E402

from shared.config.cluster import load_cluster_config  # noqa: E402
from shared.config.pipeline import ConfigError, load_pipeline_config  # noqa: E402


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    import pipeline

    cfg = load_pipeline_config(ROOT / "config" / "cluster.yaml")
    path = tmp_path_factory.mktemp("spec") / "pipeline.yaml"
    compiler.Compiler().compile(pipeline.build_pipeline(cfg), str(path))
    text = path.read_text()
    docs = list(yaml.safe_load_all(text))
    return text, docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_every_pod_of_the_real_pipeline_runs_as_non_root(compiled):
    _, spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    assert set(platform) == set(executors), "a step without platform settings would run with the image defaults"
    for label, k8s in platform.items():
        sc = k8s.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True and int(sc.get("runAsUser", 0)) > 0, label
        assert int(sc.get("runAsGroup", 0)) > 0, label


def test_only_ingest_gets_the_database_secret_and_only_stage_weights_the_hub_token(compiled):
    _, _, platform = compiled
    with_secret = {
        label: [e["secretNameParameter"]["runtimeValue"]["constant"] for e in k8s["secretAsEnv"]]
        for label, k8s in platform.items()
        if "secretAsEnv" in k8s
    }
    assert with_secret.pop("exec-ingest") == ["plantid-mongo"]
    assert len(with_secret) == 3  # the three stage_weights tasks (teacher, student, baseline)
    assert all(
        label.startswith("exec-stage-weights") and names == ["plantid-hf-token"] for label, names in with_secret.items()
    )


SECRET_LOOKING = [
    r"mongodb(\+srv)?://",
    r"-----BEGIN [A-Z ]*PRIVATE KEY",
    r"\"private_key\"",
    r"(?i)password\s*[:=]\s*\S+",
    r"AKIA[0-9A-Z]{16}",
    r"ya29\.[0-9A-Za-z_-]+",
]


@pytest.mark.parametrize("pattern", SECRET_LOOKING)
def test_no_secret_material_in_the_compiled_spec(compiled, pattern):
    text, _, _ = compiled
    assert not re.search(pattern, text), f"the compiled pipeline contains something like a secret: {pattern}"


def test_no_secret_material_in_the_gitops_manifests():
    for p in (ROOT / "manifests").rglob("*.yaml"):
        text = p.read_text()
        for pattern in SECRET_LOOKING:
            assert not re.search(pattern, text), f"{p.relative_to(ROOT)} contains {pattern}"
        for doc in yaml.safe_load_all(text):
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), (
                f"{p.relative_to(ROOT)}: Secrets are created outside git (manifests/README.md)"
            )


@pytest.mark.parametrize("security", [{"run_as_user": 0}, {"run_as_group": 0}, {"run_as_non_root": False}])
def test_config_cannot_make_the_pods_root(security):
    with pytest.raises(ConfigError, match=r"cluster\.security\."):
        load_cluster_config({"security": security})


# What the pipeline's service account may do, and nothing else: a new permission has to
# be added here on purpose, with the reason it is needed, in the same review.
ALLOWED_RULES = {
    ("argoproj.io", "workflowtaskresults", "", frozenset({"create", "patch"})),
    ("", "pods", "", frozenset({"get", "list", "watch"})),
    ("", "configmaps", "kfp-launcher", frozenset({"get"})),
    ("", "secrets", "mlpipeline-minio-artifact", frozenset({"get"})),
}


@pytest.fixture(scope="module")
def rendered_roles(tmp_path_factory):
    """Roles of every overlay as `kubectl kustomize` renders them (what GitOps applies)."""
    from tests.project.test_manifests import kustomize_all

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    built = kustomize_all(tmp_path_factory.mktemp("roles"))
    return {name: [d for d in docs if d.get("kind") in ("Role", "ClusterRole")] for name, docs in built.items()}


@pytest.mark.parametrize("overlay", ["dev", "prod", "standalone"])
def test_rbac_grants_exactly_the_reviewed_rules(rendered_roles, overlay):
    roles = rendered_roles[overlay]
    assert roles and all(r["kind"] == "Role" for r in roles)
    granted = set()
    for role in roles:
        for rule in role["rules"]:
            for group in rule.get("apiGroups", []):
                for res in rule.get("resources", []):
                    for name in rule.get("resourceNames", [""]):
                        granted.add((group, res, name, frozenset(rule["verbs"])))
    assert granted == ALLOWED_RULES
    for _, res, name, verbs in granted:
        assert "*" not in res and "*" not in verbs and "/" not in res  # no subresources like pods/exec
        if res in ("secrets", "configmaps"):
            assert name and verbs == {"get"}, "secrets and configmaps only by name, read-only"
