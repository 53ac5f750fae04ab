"""The cluster path on one machine: the three images (built by `make images`, as .ci/run does
before `make test`) and the whole local DAG run in them through kfp.local.DockerRunner
(`pipeline.py run-containers`), plus what the images must hold.

Runs where PLANTID_CONTAINER_TESTS=1 (.ci/run sets it after building the images; there a
missing engine or image is a failure); elsewhere the module is skipped with the reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from components.container_run import engine_socket, run_task_container  # noqa: E402
from shared.config.pipeline import load_pipeline_config  # noqa: E402

pytestmark = pytest.mark.containers
REQUIRED = os.environ.get("PLANTID_CONTAINER_TESTS") == "1"
if not REQUIRED:
    pytest.skip(
        "container tests run where PLANTID_CONTAINER_TESTS=1 (.ci/run builds the images first; "
        "locally: make images && PLANTID_CONTAINER_TESTS=1 .venv/bin/python -m pytest tests/containers)",
        allow_module_level=True,
    )

CONFIG = ROOT / "config" / "local.yaml"


def _images() -> dict[str, str]:
    from components.images import image_refs

    return image_refs(load_pipeline_config(CONFIG)["pipeline"]["images"])


@pytest.fixture(scope="module")
def engine():
    import docker

    with engine_socket():
        client = docker.from_env()
        yield client
        client.close()


@pytest.fixture(scope="module")
def container_run(tmp_path_factory, engine):
    """The whole DAG in the images, on a freshly generated sample catalogue in its own data folder."""
    from shared.data.sample_data import generate

    # Not under pytest's 0700 temp folders: the containers' user must be able to reach it.
    base = Path(tempfile.mkdtemp(prefix="plantid-containers-", dir="/tmp"))
    base.chmod(0o755)
    data = base / "data"
    generate(data / "sample", n_species=12, seed=1, image_size=(160, 128))
    before = sorted((p.relative_to(data), p.stat().st_mtime_ns) for p in data.rglob("*"))
    out = base / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DOCKER_HOST", None)  # run-containers starts its own engine endpoint when it needs one
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "pipeline.py"),
            "run-containers",
            "--config",
            str(CONFIG),
            "--records",
            str(data / "sample" / "records.jsonl"),
            "--data-dir",
            str(data),
            "--output",
            str(out),
            "--set",
            "export.gates.max_ece=0.5",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=3000,
    )
    after = sorted((p.relative_to(data), p.stat().st_mtime_ns) for p in data.rglob("*"))
    assert proc.returncode == 0, f"run-containers failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    yield {"out": out, "stdout": proc.stdout, "data_before": before, "data_after": after}
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(3600)
def test_dag_runs_in_the_images_to_a_manifest_and_a_tfjs_bundle(container_run):
    out = container_run["out"]
    manifest = yaml.safe_load((out / "TRAINING_MANIFEST.yaml").read_text())
    assert {f"phase_{i}" for i in range(7)} <= set(manifest["phases"])
    # the commit the images carry, and the CUDA runtime of the train image with the driver it needs
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert manifest["git_commit"] == head
    assert manifest["environment"]["cuda"] and manifest["environment"]["nvidia_driver_required"] == ">= 580"
    bundle = out / "tfjs_model"
    assert (bundle / "model.json").is_file() and list(bundle.glob("*.bin"))
    # The export image converted (onnx2tf, tensorflowjs_converter) and ran TF.js in Node against PyTorch.
    summary = json.loads((out / "run_summary.json").read_text())
    validate = next(v for k, v in summary["outputs"].items() if k.endswith("validate-export"))
    assert validate, summary["outputs"].keys()


def _compiled_images(tmp_path: Path) -> dict[str, str]:
    """function name -> image, as the compiled pipeline names them."""
    import pipeline

    path = pipeline.compile_pipeline(load_pipeline_config(CONFIG), str(tmp_path / "p.yaml"))
    spec = next(yaml.safe_load_all(Path(path).read_text()))
    found = {}
    for ex in spec["deploymentSpec"]["executors"].values():
        c = ex["container"]
        args = c.get("args", [])
        fn = args[args.index("--function_to_execute") + 1]
        found[fn] = c["image"]
    return found


@pytest.mark.timeout(3600)
def test_each_task_ran_in_its_image_as_non_root(container_run, tmp_path):
    runs = [json.loads(line) for line in (container_run["out"] / "container_runs.jsonl").read_text().splitlines()]
    assert runs and all(r["exit_code"] == 0 for r in runs)
    compiled = _compiled_images(tmp_path)
    for r in runs:
        assert r["image"] == compiled[r["function"]], r
        assert r["user"] != "0" and not r["user"].startswith("0:"), r
        assert r["read_only_root"] and r["network"] == "none", r
    functions = {r["function"] for r in runs}
    assert {"ingest", "train_teacher", "train_student", "export_tfjs", "validate_export"} <= functions
    # the three images all served
    assert {r["image"] for r in runs} == set(_images().values())


@pytest.mark.timeout(3600)
def test_nothing_written_outside_the_output_and_tmp(container_run, engine, tmp_path):
    # The data folder is mounted read-only and nothing in it changed.
    assert container_run["data_before"] == container_run["data_after"]
    # Every task's root filesystem is read-only: writing anywhere but the output folder and /tmp fails.
    out = Path(tempfile.mkdtemp(prefix="plantid-rofs-", dir="/tmp"))
    out.chmod(0o777)
    data = Path(tempfile.mkdtemp(prefix="plantid-rofs-data-", dir="/tmp"))
    data.chmod(0o755)
    for name, ref in _images().items():
        code = run_task_container(
            engine,
            ref,
            [
                "sh",
                "-c",
                "for d in /app /opt /usr/local /etc /var /home; do "
                "touch $d/.probe 2>/dev/null && { echo wrote $d; exit 3; }; done; "
                f"touch /tmp/ok && touch {out}/ok",
            ],
            {},
            output=out,
            data_dir=data,
        )
        assert code == 0, f"{name}: a write outside the output folder and /tmp succeeded (exit {code})"
        assert (out / "ok").exists()
        (out / "ok").unlink()
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)


@pytest.mark.timeout(600)
def test_images_carry_the_commit_and_pass_pip_check(engine, tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    for name, ref in _images().items():
        image = engine.images.get(ref)
        assert image.labels.get("org.opencontainers.image.revision") == head, (name, image.labels)
        assert f"GIT_COMMIT={head}" in image.attrs["Config"]["Env"], name
        code = run_task_container(
            engine,
            ref,
            ["sh", "-c", "pip check && test ! -s /run/secrets/extra_ca"],
            {},
            output=tmp_path,
            data_dir=tmp_path,
        )
        assert code == 0, f"{name}: pip check failed or a build secret is in the image"
    code = run_task_container(
        engine,
        _images()["export"],
        [
            "sh",
            "-c",
            "onnx2tf -h >/dev/null && tensorflowjs_converter --version && "
            "node -e \"require('@tensorflow/tfjs'); console.log('tfjs ok')\"",
        ],
        {},
        output=tmp_path,
        data_dir=tmp_path,
    )
    assert code == 0, "the export image's converters or TF.js in Node do not run"


@pytest.mark.timeout(600)
def test_a_path_the_containers_cannot_see_is_an_error_before_the_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "pipeline.py"),
            "run-containers",
            "--config",
            str(CONFIG),
            "--records",
            "/etc/hostname",
            "--data-dir",
            str(tmp_path),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "data.records_uri=/etc/hostname is outside the folders mounted" in proc.stderr + proc.stdout
