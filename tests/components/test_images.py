"""Container images (images/): every Dockerfile runs as a non-root user, copies
only files that exist (and that its .dockerignore lets through), installs a
complete lock file that resolves against the configured package indexes, and
every component names an image that components/images.py maps to a Dockerfile."""

import fnmatch
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from components import images  # noqa: E402
from shared.config.cluster import CLUSTER_DEFAULTS  # noqa: E402

DOCKERFILES = {name: ROOT / path for name, path in images.IMAGES.items()}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in dockerfile.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def final_stage(ins):
    starts = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    return ins[starts[-1] :]


def copy_sources(ins) -> list[str]:
    """Sources of COPY instructions that read the build context (not --from=stage)."""
    srcs = []
    for word, args in ins:
        if word != "COPY" or "--from=" in args:
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        srcs += parts[:-1]
    return srcs


def lock_path(name: str) -> Path:
    return ROOT / "images" / name / "requirements.lock"


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-!]+)", line)
        assert m, f"{path}:{n}: not an exact pin: {line!r}"
        pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_runs_as_the_non_root_user_of_the_security_context(name):
    ins = instructions(DOCKERFILES[name])
    users = [args for word, args in final_stage(ins) if word == "USER"]
    assert users, f"{name}: the final stage sets no USER (it would run as root)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {users[-1]!r} must be a numeric non-root uid"
    # runAsNonRoot needs a numeric uid; the pod's securityContext asks for the same one
    assert int(uid) == CLUSTER_DEFAULTS["security"]["run_as_user"]
    assert ins[-1][0] == "USER", f"{name}: USER must come last so later steps cannot run as root"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_copies_existing_files_its_dockerignore_lets_through(name):
    dockerfile = DOCKERFILES[name]
    ins = instructions(dockerfile)
    srcs = copy_sources(ins)
    assert f"images/{name}/requirements.lock" in srcs, f"{name}: does not install its own lock file"
    assert "shared" in srcs and "components" in srcs, f"{name}: the project code is not in the image"
    ignore = [
        ln.strip()
        for ln in (dockerfile.parent / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert ignore[0] == "**", "the context must start from nothing (the repo holds a multi-GB .venv)"
    allowed = [p[1:] for p in ignore if p.startswith("!")]
    for src in srcs:
        matches = list(ROOT.glob(src))
        assert matches, f"{dockerfile.relative_to(ROOT)}: COPY {src}: no such file in the repository"
        # "!dir" lets the whole directory through, "!a/*/b" what matches it
        assert any(src == a or src.startswith(a.rstrip("/") + "/") or fnmatch.fnmatch(src, a) for a in allowed), (
            f"{name}: COPY {src} is excluded by Dockerfile.dockerignore"
        )
    for word, args in ins:
        if word == "RUN" and "pip install" in args and "-r /tmp/requirements.lock" in args:
            assert "--no-deps" in args, f"{name}: the lock must be installed as-is (--no-deps)"
    env = " ".join(a for w, a in final_stage(ins) if w == "ENV")
    assert "PYTHONPATH=/app" in env, f"{name}: the KFP executor imports shared/ and components/ from /app"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_lock_is_exact_and_agrees_with_the_tested_environment(name):
    pins = read_pins(lock_path(name))
    root = read_pins(ROOT / "requirements.lock")
    assert "kfp" in pins, f"{name}: components run with install_kfp_package=False, so kfp must be in the image"
    differ = {p: (v, root[p]) for p, v in pins.items() if p in root and root[p] != v}
    assert not differ, f"{name}: versions differ from requirements.lock (re-run scripts/build_images.sh lock): {differ}"
    direct = [
        ln.strip().lower()
        for ln in (lock_path(name).parent / "requirements.in").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    missing = [d for d in direct if d.replace("_", "-") not in pins]
    assert not missing, f"{name}: requirements.in lists {missing}, absent from the lock"


def index_reachable() -> bool:
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "kfp"], capture_output=True, text=True, timeout=60
    )
    return probe.returncode == 0 and "kfp" in probe.stdout


@pytest.fixture(scope="module")
def package_index():
    if not index_reachable():
        pytest.skip("no package index is reachable: lock files cannot be resolved here")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_lock_resolves_completely(name, package_index, tmp_path):
    """pip resolves the lock with dependencies to exactly the pinned set: nothing
    missing (the image installs it with --no-deps) and nothing conflicting."""
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "-r",
            str(lock_path(name)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{name}: the lock does not resolve:\n{proc.stderr[-3000:]}"
    resolved = {
        i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    assert resolved == read_pins(lock_path(name))


def component_modules():
    return sorted(p.stem for p in (ROOT / "components").glob("*.py") if p.stem != "__init__")


def test_every_component_names_a_mapped_image_with_a_dockerfile():
    known = {images.image(n): n for n in images.IMAGES}
    seen = {}
    for mod_name in component_modules():
        mod = importlib.import_module(f"components.{mod_name}")
        for attr, obj in vars(mod).items():
            spec = getattr(obj, "component_spec", None)
            func = getattr(obj, "python_func", None)
            if spec is None or func is None or func.__module__ != mod.__name__:
                continue  # not a component, or one imported from another module
            container = spec.implementation.container
            if container is None:
                continue
            assert container.image in known, (
                f"components/{mod_name}.py: {attr} runs in {container.image!r}, which components/images.py "
                f"does not map to a Dockerfile ({sorted(known)})"
            )
            assert not any("pip install" in c and "kfp==" in c for c in container.command or []), (
                f"{attr}: installs kfp at runtime; use install_kfp_package=False (the image has it)"
            )
            seen[attr] = known[container.image]
    assert {"ingest", "train_teacher", "training_manifest"} <= set(seen), seen
    for name in set(seen.values()):
        assert DOCKERFILES[name].is_file(), f"{images.IMAGES[name]} missing"
    assert images.image("train").endswith(f"/plantid-train:{images.TAG}")


def test_build_script_says_when_no_container_engine_exists():
    script = ROOT / "scripts" / "build_images.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # ENGINE forces the engine; a name that is no engine behaves as a machine without one.
    proc = subprocess.run(
        ["bash", str(script), "--tag", "t1", "data"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "ENGINE": "none"},
    )
    assert proc.returncode == 2
    assert "No container engine" in proc.stderr and "--tag t1" in proc.stderr
