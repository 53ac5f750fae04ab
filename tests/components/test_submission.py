"""Submitting runs (components/submission.py) against a local fake of the KFP
REST API (v2beta1): the requests kfp.Client makes, as the server receives them."""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kfp import compiler, dsl  # noqa: E402

from components.submission import SubmissionError, parse_params, pipeline_parameters, submit_run  # noqa: E402


class FakeKFP:
    """Answers the endpoints kfp.Client calls to create an experiment and a run."""

    def __init__(self, existing_experiments=()):
        self.requests: list[dict] = []
        self.experiments = {name: f"exp-existing-{i}" for i, name in enumerate(existing_experiments)}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                url = urlparse(self.path)
                req = {
                    "method": method,
                    "path": url.path,
                    "query": parse_qs(url.query),
                    "body": json.loads(raw) if raw else None,
                    "auth": self.headers.get("Authorization"),
                }
                fake.requests.append(req)
                return req

            def do_GET(self):
                req = self._record("GET")
                if req["path"] == "/apis/v2beta1/healthz":
                    return self._reply(200, {"multi_user": False})
                if req["path"] == "/apis/v2beta1/experiments":
                    flt = json.loads(req["query"].get("filter", ["{}"])[0])
                    wanted = [
                        p.get("stringValue", p.get("string_value"))
                        for p in flt.get("predicates", [])
                        if p.get("key") == "display_name"
                    ]
                    found = [
                        {"experiment_id": fake.experiments[n], "display_name": n}
                        for n in wanted
                        if n in fake.experiments
                    ]
                    return self._reply(200, {"experiments": found, "total_size": len(found)} if found else {})
                return self._reply(404, {"error": f"no fake for GET {req['path']}"})

            def do_POST(self):
                req = self._record("POST")
                if req["path"] == "/apis/v2beta1/experiments":
                    name = req["body"]["display_name"]
                    fake.experiments[name] = f"exp-{len(fake.experiments) + 1}"
                    return self._reply(200, {"experiment_id": fake.experiments[name], "display_name": name})
                if req["path"] == "/apis/v2beta1/runs":
                    return self._reply(
                        200,
                        {
                            "run_id": "run-0042",
                            "display_name": req["body"]["display_name"],
                            "experiment_id": req["body"].get("experiment_id"),
                            "state": "PENDING",
                        },
                    )
                return self._reply(404, {"error": f"no fake for POST {req['path']}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def posts(self, path):
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == path]


@dsl.component(base_image="python:3.11")
def add(a: int, b: float) -> float:
    return a + b


@dsl.pipeline(name="tiny-sum")
def tiny(a: int = 1, b: float = 2.0, label: str = "x"):
    from kfp import kubernetes

    t = add(a=a, b=b)
    kubernetes.add_node_selector(t, label_key="cloud.google.com/gke-accelerator", label_value="nvidia-l4")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = tmp_path_factory.mktemp("pkg") / "tiny.yaml"
    compiler.Compiler().compile(tiny, str(path))
    return path


@pytest.fixture(autouse=True)
def no_ambient_kfp_settings(monkeypatch, tmp_path):
    # kfp.Client reads ~/.config/kfp/context.json and these variables: keep the test hermetic.
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in (
        "KF_PIPELINES_TOKEN",
        "KF_PIPELINES_SA_TOKEN_PATH",
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
        "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
        "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID",
    ):
        monkeypatch.delenv(var, raising=False)


def test_submit_creates_the_experiment_and_the_run(package, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "tok-123")
    with FakeKFP() as kfp_api:
        run_id = submit_run(
            kfp_api.host,
            package,
            experiment="plantid-dev",
            run_name="teachers 2025-12-20",
            params={"a": 5, "b": 0.5},
            service_account="plantid-pipeline",
        )
    assert run_id == "run-0042"
    [exp] = kfp_api.posts("/apis/v2beta1/experiments")
    assert exp["body"]["display_name"] == "plantid-dev"
    [run] = kfp_api.posts("/apis/v2beta1/runs")
    body = run["body"]
    assert body["display_name"] == "teachers 2025-12-20"
    assert body["experiment_id"] == "exp-1"
    assert body["service_account"] == "plantid-pipeline"
    assert body["runtime_config"]["parameters"] == {"a": 5, "b": 0.5}
    spec = body["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "tiny-sum"
    assert "exec-add" in spec["pipeline_spec"]["deploymentSpec"]["executors"]
    # the kfp-kubernetes settings travel with the run
    k8s = spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-add"]
    assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert run["auth"] == "Bearer tok-123"


def test_an_existing_experiment_is_reused(package):
    with FakeKFP(existing_experiments=["plantid-prod"]) as kfp_api:
        submit_run(kfp_api.host, package, experiment="plantid-prod", run_name="r1", params={})
    assert kfp_api.posts("/apis/v2beta1/experiments") == []
    [run] = kfp_api.posts("/apis/v2beta1/runs")
    assert run["body"]["experiment_id"] == "exp-existing-0"
    assert run["body"]["runtime_config"].get("parameters", {}) == {}
    assert run["auth"] is None


def test_unknown_parameters_fail_before_any_request(package):
    with FakeKFP() as kfp_api:
        with pytest.raises(SubmissionError, match=r"unknown pipeline parameter\(s\) \['c'\].*\['a', 'b', 'label'\]"):
            submit_run(kfp_api.host, package, experiment="e", run_name="r", params={"a": 1, "c": 2})
    assert kfp_api.requests == []


def test_bad_packages_and_arguments(tmp_path, package):
    with pytest.raises(SubmissionError, match="pipeline package not found"):
        submit_run("http://127.0.0.1:9", tmp_path / "nope.yaml", experiment="e", run_name="r", params={})
    manifest = tmp_path / "k8s.yaml"
    manifest.write_text(yaml.safe_dump_all([{"apiVersion": "pipelines.kubeflow.org/v2beta1", "kind": "Pipeline"}]))
    with pytest.raises(SubmissionError, match="Kubernetes-manifest format"):
        submit_run("http://127.0.0.1:9", manifest, experiment="e", run_name="r", params={})
    with pytest.raises(SubmissionError, match="experiment"):
        submit_run("http://127.0.0.1:9", package, experiment="", run_name="r", params={})
    assert set(pipeline_parameters(package)) == {"a", "b", "label"}


def test_a_given_client_is_used_as_is(package):
    calls = []

    class Client:
        def create_run_from_pipeline_package(self, path, **kw):
            calls.append((path, kw))
            return type("R", (), {"run_id": "r-9"})()

    assert (
        submit_run(
            "unused", package, experiment="e", run_name="r", params={"a": 2}, namespace="plantid", client=Client()
        )
        == "r-9"
    )
    assert calls == [
        (
            str(package),
            {
                "arguments": {"a": 2},
                "run_name": "r",
                "experiment_name": "e",
                "namespace": "plantid",
                "service_account": None,
            },
        )
    ]


def test_parse_params():
    assert parse_params(["a=5", "b=0.5", "label=EU_SW", "flag=true", "items=[1, 2]", "empty="]) == {
        "a": 5,
        "b": 0.5,
        "label": "EU_SW",
        "flag": True,
        "items": [1, 2],
        "empty": "",
    }
    assert parse_params(["uri=gs://b/x=y"]) == {"uri": "gs://b/x=y"}
    with pytest.raises(SubmissionError, match="expected NAME=VALUE"):
        parse_params(["novalue"])
    with pytest.raises(SubmissionError, match="--param m: value is not valid YAML"):
        parse_params(["m={a: [}"])
