"""Submitting runs (components/submission.py): against a local fake of the KFP REST API
(v2beta1), the requests kfp.Client makes as the server receives them; with fake client
objects, the plan (namespace and service account per cluster.mode, host, parameter types),
the dry run (contacts nothing), --wait and schedules; make's PARAMS as the program gets it."""

import copy
import json
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kfp import compiler, dsl  # noqa: E402

import pipeline  # noqa: E402
from components import submission  # noqa: E402
from components.submission import (  # noqa: E402
    SubmissionError,
    execute_plan,
    follow_run,
    normalize_cron,
    parse_params,
    pipeline_parameters,
    plan_submission,
    raw_params,
    split_params,
    submit_run,
)
from shared.config.pipeline import load_pipeline_config  # noqa: E402


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
            pipeline_root="gs://plantid-artifacts/root",
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
    assert body["runtime_config"]["pipeline_root"] == "gs://plantid-artifacts/root"
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
                "pipeline_root": None,
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


# --- the plan, the dry run, --wait and schedules: the cluster pipeline, fake clients ---------

CLUSTER_CONFIG = ROOT / "config" / "cluster.yaml"
MAKE_PARAMS = (
    'quantization=uint8 regional_teachers=[{"teacher": "EU SW", "regions": "EU_SW", "weight": 0.5, "config": {}}]'
)


@pytest.fixture(scope="module")
def cluster_cfg():
    return load_pipeline_config(str(CLUSTER_CONFIG), {})


@pytest.fixture(scope="module")
def cluster_package(cluster_cfg, tmp_path_factory):
    """config/cluster.yaml's pipeline, compiled once for the module."""
    return Path(pipeline.compile_pipeline(cluster_cfg, str(tmp_path_factory.mktemp("cluster") / "pipeline.yaml")))


def standalone(cfg):
    out = copy.deepcopy(cfg)
    out["cluster"]["mode"] = "standalone"
    return out


def plan(cfg, package, **kw):
    args = {"host": "http://kfp.test", "experiment": "plantid", "run_name": "r1", **kw}
    return plan_submission(cfg, package, **args)


@pytest.fixture
def compiled_once(monkeypatch, cluster_package):
    """pipeline.main's compile step copies the module's package instead of compiling again."""

    def fake_compile(cfg, output):
        shutil.copyfile(cluster_package, output)
        return output

    monkeypatch.setattr(pipeline, "compile_pipeline", fake_compile)


@pytest.fixture
def nothing_contacted(monkeypatch):
    import kfp

    class NoClient:
        def __init__(self, *a, **kw):
            raise AssertionError("kfp.Client built")

    def no_connect(*a, **kw):
        raise AssertionError("a socket connected")

    monkeypatch.setattr(kfp, "Client", NoClient)
    monkeypatch.setattr(socket.socket, "connect", no_connect)


class FakeClient:
    """Records what execute_plan asks of kfp.Client; get_run answers `runs` in turn."""

    def __init__(self, runs=()):
        self.calls: list[tuple[str, dict]] = []
        self.runs = list(runs)

    def create_run_from_pipeline_package(self, path, **kw):
        self.calls.append(("run", {"path": path, **kw}))
        return SimpleNamespace(run_id="run-7")

    def get_run(self, run_id):
        self.calls.append(("get_run", {"run_id": run_id}))
        return self.runs.pop(0) if len(self.runs) > 1 else self.runs[0]

    def create_experiment(self, name, namespace=None):
        self.calls.append(("experiment", {"name": name, "namespace": namespace}))
        return SimpleNamespace(experiment_id="exp-3")

    def create_recurring_run(self, **kw):
        self.calls.append(("recurring", kw))
        return SimpleNamespace(recurring_run_id="rr-5")


def task(name, state, message=None, children=None):
    return SimpleNamespace(
        display_name=name,
        state=state,
        error=SimpleNamespace(message=message) if message else None,
        child_tasks=children,
    )


def run_in(state, tasks=()):
    return SimpleNamespace(state=state, run_details=SimpleNamespace(task_details=list(tasks)), error=None)


def test_namespace_and_service_account_come_from_the_config_per_mode(cluster_cfg, cluster_package):
    multi = plan(cluster_cfg, cluster_package)
    assert (multi.mode, multi.namespace, multi.client_namespace) == ("multi-user", "plantid", "plantid")
    assert multi.service_account == "plantid-pipeline"
    assert multi.pipeline_root == "gs://plantid-artifacts/pipeline-root"
    alone = plan(standalone(cluster_cfg), cluster_package)
    # standalone: the run executes in KFP's namespace, and kfp.Client is given none
    assert (alone.mode, alone.namespace, alone.client_namespace) == ("standalone", "kubeflow", None)
    over = plan(cluster_cfg, cluster_package, namespace="team-a", service_account="runner")
    assert (over.namespace, over.client_namespace, over.service_account) == ("team-a", "team-a", "runner")
    no_root = copy.deepcopy(cluster_cfg)
    no_root["pipeline"]["root"] = ""
    assert plan(no_root, cluster_package).pipeline_root == ""
    assert "pipeline root:   (the installation's default)" in submission.format_plan(plan(no_root, cluster_package))


def test_what_the_client_gets_per_mode(cluster_cfg, cluster_package, monkeypatch):
    built = []
    client = FakeClient()
    monkeypatch.setattr(
        submission, "kfp_client", lambda host, namespace=None: built.append((host, namespace)) or client
    )
    out = []
    p = plan(standalone(cluster_cfg), cluster_package, params={"seed": "7"})
    assert execute_plan(p, say=out.append) == 0
    assert built == [("http://kfp.test", None)]
    [(_, kw)] = client.calls
    assert kw == {
        "path": str(cluster_package),
        "arguments": {"seed": 7},
        "run_name": "r1",
        "experiment_name": "plantid",
        "namespace": None,
        "pipeline_root": "gs://plantid-artifacts/pipeline-root",
        "service_account": "plantid-pipeline",
    }
    assert out == ["submitted run: run-7"]
    execute_plan(plan(cluster_cfg, cluster_package), say=out.append)
    assert built[-1] == ("http://kfp.test", "plantid") and client.calls[-1][1]["namespace"] == "plantid"


def test_the_host_comes_from_kf_pipelines_endpoint_when_not_given(cluster_cfg, cluster_package, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", "https://kfp.example.org/pipeline")
    assert plan(cluster_cfg, cluster_package, host=None).host == "https://kfp.example.org/pipeline"
    assert plan(cluster_cfg, cluster_package, host="http://given").host == "http://given"
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT")
    with pytest.raises(SubmissionError, match=r"--host URL .*KF_PIPELINES_ENDPOINT"):
        plan(cluster_cfg, cluster_package, host=None)


def test_parameter_values_are_checked_against_the_compiled_types(cluster_cfg, cluster_package):
    ok = plan(
        cluster_cfg,
        cluster_package,
        params={
            "seed": "7",
            "gate_min_val_top1": "1",  # an integer is a fine double
            "snapshot_id": "2025-12-20",  # a STRING stays the text, not a YAML date
            "train_ce_control": "false",
            "mongo": "{database: x}",
            "license_allow": "[CC0]",
        },
    )
    assert ok.arguments == {
        "seed": 7,
        "gate_min_val_top1": 1,
        "snapshot_id": "2025-12-20",
        "train_ce_control": False,
        "mongo": {"database": "x"},
        "license_allow": ["CC0"],
    }
    for name, text, what in [
        ("seed", "abc", r"an integer \(NUMBER_INTEGER\)"),
        ("seed", "1.5", "NUMBER_INTEGER"),
        ("gate_min_val_top1", "high", r"a number \(NUMBER_DOUBLE\)"),
        ("train_ce_control", "1", "BOOLEAN"),
        ("mongo", "[1]", "STRUCT"),
        ("regional_teachers", "{teacher: EU_SW}", "LIST"),
    ]:
        with pytest.raises(SubmissionError, match=rf"--param {name}: expected .*{what}"):
            plan(cluster_cfg, cluster_package, params={name: text})
    with pytest.raises(SubmissionError, match=r"unknown pipeline parameter\(s\) \['quantisation'\]"):
        plan(cluster_cfg, cluster_package, params={"quantisation": "uint8"})


def test_params_string_keeps_json_with_spaces_as_one_value():
    items = split_params(MAKE_PARAMS + "  label='a b' empty=")
    assert items == [
        "quantization=uint8",
        'regional_teachers=[{"teacher": "EU SW", "regions": "EU_SW", "weight": 0.5, "config": {}}]',
        "label='a b'",
        "empty=",
    ]
    assert parse_params(items)["regional_teachers"] == [
        {"teacher": "EU SW", "regions": "EU_SW", "weight": 0.5, "config": {}}
    ]
    assert split_params('x="a \\" ]" y=2') == ['x="a \\" ]"', "y=2"]
    assert split_params("") == []
    with pytest.raises(SubmissionError, match="unbalanced bracket"):
        split_params("teachers=[{a: 1}")
    with pytest.raises(SubmissionError, match="expected NAME=VALUE"):
        raw_params(split_params("label=a b"))


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_passes_params_to_the_program_as_one_string():
    # PY replaced by a program printing its argv; -o: the venv's stamp is not remade
    argv_printer = f'{sys.executable} -c "import sys, json; print(json.dumps(sys.argv[1:]))"'
    proc = subprocess.run(
        ["make", "-s", "-o", ".venv/.stamp", "submit", f"PY={argv_printer}", f"PARAMS={MAKE_PARAMS}", "DRY_RUN=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(proc.stdout.strip().splitlines()[-1])
    assert argv[:2] == ["pipeline.py", "submit"] and "--dry-run" in argv and "--host" not in argv
    assert argv[argv.index("--params") + 1] == MAKE_PARAMS


def test_dry_run_prints_the_plan_and_contacts_nothing(compiled_once, nothing_contacted, tmp_path, capsys):
    rc = pipeline.main(
        [
            "submit",
            "--config",
            str(CLUSTER_CONFIG),
            "--host",
            "http://127.0.0.1:9",
            "--dry-run",
            "--package",
            str(tmp_path / "p.yaml"),
            "--params",
            MAKE_PARAMS,
            "--param",
            "seed=7",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "namespace:       plantid\n" in out
    assert "service account: plantid-pipeline" in out
    assert "pipeline root:   gs://plantid-artifacts/pipeline-root" in out
    assert "ghcr.io/plantid/plantid-train:0.1.0" in out
    lines = {line.split()[0]: line.split(maxsplit=2)[1:] for line in out.splitlines() if line.startswith("  ")}
    assert lines["quantization"] == ["--param", '"uint8"']
    assert lines["seed"] == ["--param", "7"]
    assert lines["regional_teachers"][0] == "--param" and '"EU SW"' in lines["regional_teachers"][1]
    assert lines["split_seed"] == ["config", "42"]
    assert lines["cache_dir"] == ["config", '"/mnt/plantid/image_cache"']
    assert "nothing was sent" in out


def test_dry_run_refuses_a_wrong_parameter_by_name(compiled_once, nothing_contacted, tmp_path):
    argv = ["submit", "--config", str(CLUSTER_CONFIG), "--dry-run", "--package", str(tmp_path / "p.yaml")]
    with pytest.raises(SystemExit, match="--param seed: expected an integer"):
        pipeline.main([*argv, "--host", "http://127.0.0.1:9", "--param", "seed=many"])
    with pytest.raises(SystemExit, match="KF_PIPELINES_ENDPOINT"):
        pipeline.main(argv)


def test_wait_follows_the_run_to_success(cluster_cfg, cluster_package, monkeypatch):
    client = FakeClient([run_in("PENDING"), run_in("RUNNING"), run_in("RUNNING"), run_in("SUCCEEDED")])
    out = []
    naps = []
    monkeypatch.setattr(submission.time, "sleep", naps.append)
    rc = execute_plan(plan(cluster_cfg, cluster_package), wait=True, poll_s=15, client=client, say=out.append)
    assert rc == 0
    assert out == [
        "submitted run: run-7",
        "run run-7: PENDING",
        "run run-7: RUNNING",
        "run run-7: SUCCEEDED",
        "run run-7 ended: SUCCEEDED",
    ]
    assert naps == [15, 15, 15]
    outcome = follow_run(FakeClient([run_in("RUNNING"), run_in("SUCCEEDED")]), "x", sleep=naps.append, say=out.append)
    assert (outcome.state, naps[3:]) == ("SUCCEEDED", [30])


def test_wait_names_the_failed_tasks(cluster_cfg, cluster_package, monkeypatch):
    failed = run_in(
        "FAILED",
        [
            task("ingest (phase 0)", "SUCCEEDED"),
            task("plantid-training", "FAILED", children=[{"task_id": "t2"}]),  # the root DAG
            task("train teacher: global (1.2)", "FAILED", message="OOMKilled"),
            SimpleNamespace(state="FAILED"),  # no name, no error, no children
        ],
    )
    out = []
    monkeypatch.setattr(submission.time, "sleep", lambda s: None)
    rc = execute_plan(plan(cluster_cfg, cluster_package), wait=True, client=FakeClient([failed]), say=out.append)
    assert rc == 1
    assert "run run-7 ended: FAILED" in out
    assert "  failed task: train teacher: global (1.2): OOMKilled" in out
    assert "  failed task: (unnamed task)" in out
    assert not any("plantid-training" in line for line in out)
    bare = SimpleNamespace(state="CANCELED")  # no run_details at all
    assert execute_plan(plan(cluster_cfg, cluster_package), wait=True, client=FakeClient([bare]), say=out.append) == 1
    assert out[-1] == "  no failed task reported (see the run in the KFP UI)"


def test_wait_gives_up_after_the_timeout(cluster_cfg, cluster_package):
    ticks = iter(range(0, 1000, 10))
    with pytest.raises(SubmissionError, match="still RUNNING after 25 s"):
        follow_run(
            FakeClient([run_in("RUNNING")]),
            "r",
            timeout_s=25,
            sleep=lambda s: None,
            clock=lambda: next(ticks),
            say=print,
        )


def test_submit_wait_exit_status_through_main(compiled_once, cluster_package, monkeypatch, tmp_path, capsys):
    client = FakeClient([run_in("FAILED", [task("calibrate + quality gate (5)", "FAILED")])])
    monkeypatch.setattr(submission, "kfp_client", lambda host, namespace=None: client)
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", "http://kfp.test")
    argv = ["submit", "--config", str(CLUSTER_CONFIG), "--package", str(tmp_path / "p.yaml"), "--wait"]
    assert pipeline.main(argv) == 1
    assert "failed task: calibrate + quality gate (5)" in capsys.readouterr().out
    client.runs = [run_in("SUCCEEDED")]
    assert pipeline.main(argv) == 0


def test_cron_expressions():
    assert normalize_cron("0 3 * * 0") == "0 0 3 * * 0"
    assert normalize_cron("0 0 3 * * 0") == "0 0 3 * * 0"
    assert normalize_cron("*/30 1-5 * * MON-FRI") == "0 */30 1-5 * * MON-FRI"
    for bad, what in [
        ("every sunday", "expected 5 fields"),
        ("0 0 3 * * 0 2026", "expected 5 fields"),
        ("0 25 * * *", "hour field '25'"),
        ("61 3 * * *", "minute field '61'"),
        ("0 3 * * 0;rm", "weekday field"),
    ]:
        with pytest.raises(SubmissionError, match=what):
            normalize_cron(bad)


def test_schedule_creates_a_recurring_run(compiled_once, monkeypatch, tmp_path, capsys):
    client = FakeClient()
    built = []
    monkeypatch.setattr(submission, "kfp_client", lambda host, namespace=None: built.append(namespace) or client)
    argv = [
        "schedule",
        "--config",
        str(CLUSTER_CONFIG),
        "--host",
        "http://kfp.test",
        "--package",
        str(tmp_path / "p.yaml"),
    ]
    assert pipeline.main([*argv, "--cron", "0 3 * * 0", "--run-name", "weekly", "--param", "seed=3"]) == 0
    assert "scheduled recurring run: rr-5 (cron 0 0 3 * * 0)" in capsys.readouterr().out
    assert built == ["plantid"]
    assert client.calls[0] == ("experiment", {"name": "plantid", "namespace": "plantid"})
    kind, kw = client.calls[1]
    assert kind == "recurring"
    assert kw == {
        "experiment_id": "exp-3",
        "job_name": "weekly",
        "cron_expression": "0 0 3 * * 0",
        "max_concurrency": 1,
        "no_catchup": True,
        "params": {"seed": 3},
        "pipeline_package_path": str(tmp_path / "p.yaml"),
        "pipeline_root": "gs://plantid-artifacts/pipeline-root",
        "service_account": "plantid-pipeline",
    }
    with pytest.raises(SystemExit, match="the hour field '25'"):
        pipeline.main([*argv, "--cron", "0 25 * * *"])
    assert len(client.calls) == 2


def test_schedule_dry_run(compiled_once, nothing_contacted, tmp_path, capsys):
    argv = ["schedule", "--config", str(CLUSTER_CONFIG), "--host", "http://kfp.test", "--dry-run"]
    assert pipeline.main([*argv, "--package", str(tmp_path / "p.yaml"), "--cron", "0 3 * * 0"]) == 0
    out = capsys.readouterr().out
    assert "cron:            0 0 3 * * 0 (max concurrency 1, no catch-up)" in out
    assert "schedule name:" in out
