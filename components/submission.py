"""Submit a compiled pipeline to a Kubeflow Pipelines server as a run, with
kfp.Client (`pipeline.py submit` / `make submit`).

Authentication follows KFP's usual settings: a bearer token from
KF_PIPELINES_TOKEN (e.g. `gcloud auth print-access-token` behind IAP), a
projected service-account token when KF_PIPELINES_SA_TOKEN_PATH is set (inside
a cluster), else what kfp.Client finds itself (IAP client ids in its env
variables, ~/.config/kfp/context.json, the kube config for a port-forward)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

TOKEN_ENV = "KF_PIPELINES_TOKEN"


class SubmissionError(ValueError):
    """The run cannot be submitted as asked (the message names the argument)."""


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """`k=v` strings -> {k: v}; values are read as YAML (numbers, true/false, lists, {...})."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SubmissionError(f"--param {item!r}: expected NAME=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as e:
            raise SubmissionError(f"--param {key}: value is not valid YAML: {e}") from None
    return out


def pipeline_parameters(package_path: str | os.PathLike) -> dict[str, dict]:
    """The root input parameters of a compiled pipeline package: {name: definition}."""
    p = Path(package_path)
    if not p.is_file():
        raise SubmissionError(f"pipeline package not found: {package_path} (run `make compile` first)")
    docs = [d for d in yaml.safe_load_all(p.read_text()) if d]
    spec = next((d for d in docs if "root" in d and "deploymentSpec" in d), None)
    if spec is None:
        raise SubmissionError(
            f"{package_path}: not a compiled KFP pipeline (no root/deploymentSpec); "
            "the Kubernetes-manifest format is for GitOps, not for runs"
        )
    return spec["root"].get("inputDefinitions", {}).get("parameters", {})


def kfp_client(host: str, *, namespace: str | None = None, token: str | None = None) -> Any:
    """A kfp.Client for `host` with the usual KFP authentication (see module doc)."""
    import kfp
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, ServiceAccountTokenVolumeCredentials

    kwargs: dict[str, Any] = {"host": host}
    if namespace:
        kwargs["namespace"] = namespace
    token = token or os.environ.get(TOKEN_ENV)
    if token:
        kwargs["existing_token"] = token
    elif os.environ.get(KF_PIPELINES_SA_TOKEN_ENV):
        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials()
    return kfp.Client(**kwargs)


def submit_run(
    host: str,
    package_path: str | os.PathLike,
    *,
    experiment: str,
    run_name: str,
    params: dict[str, Any] | None,
    namespace: str | None = None,
    client: Any = None,
    service_account: str | None = None,
) -> str:
    """Create (or reuse) `experiment` and start a run of the package; return the run id.

    Parameters are checked against the package's inputs first, so a typo fails
    here with its name instead of on the server. `client` replaces the kfp.Client
    built from `host` (tests, or a caller with its own authentication)."""
    if not experiment:
        raise SubmissionError("experiment: a name is required")
    if not run_name:
        raise SubmissionError("run_name: a name is required")
    known = pipeline_parameters(package_path)
    unknown = sorted(set(params or {}) - set(known))
    if unknown:
        raise SubmissionError(f"unknown pipeline parameter(s) {unknown}; the pipeline takes {sorted(known)}")
    client = client or kfp_client(host, namespace=namespace)
    result = client.create_run_from_pipeline_package(
        str(package_path),
        arguments=dict(params or {}),
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
        service_account=service_account or None,
    )
    return result.run_id
