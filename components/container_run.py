"""Running the local DAG in the pipeline's container images (`make run-containers`):
kfp.local.DockerRunner over Docker or podman's Docker-compatible API, each task in the image
the compiled pipeline names, as the images' non-root user, with a read-only root filesystem,
a private /tmp, no network, and only two host folders mounted: the run's output folder
(read-write; the pipeline root and the run's working data live there) and the bundled data
folder (read-only).

Podman differences handled here (see ../shared/notes/CONTAINERS.md):
- kfp starts containers with auto_remove=True and then asks for their status; podman answers
  HTTP 500 instead of 404 for a container already removed, and kfp reads a NotFound as exit
  code 0 (a failure could pass as success). Containers are started with auto_remove=False, their
  real exit code is read, and they are removed afterwards.
- No Docker engine: `podman system service` is started on a private socket for the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Config paths a task reads or writes: (section, key, writable). Writable ones are moved under
# the run's output folder, the only folder the containers may write to.
PATH_KEYS = (
    ("data", "records_uri", False),
    ("cache", "dir", True),
    ("weights", "cache_dir", True),
    ("teachers", "checkpoint_dir", True),
    ("release", "uri", True),  # the publish step writes releases there
)
CONTAINER_USER = "1000:1000"  # the images' user, the uid the pods' security context asks for


class ContainerRunError(RuntimeError):
    """The container engine or a path in the config stops a container run before it starts."""


def container_config(cfg: dict, output: Path, data_dir: Path) -> tuple[dict, list[str]]:
    """The config for a container run: working folders (image cache, weights cache, checkpoints)
    under `output`/work, since containers may write only there; every read path must lie under
    `data_dir` or `output`. Returns the config and a line per moved path."""
    out, data = output.resolve(), data_dir.resolve()
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    moved, problems = [], []
    for section, key, writable in PATH_KEYS:
        value = cfg[section][key]
        if not value or "://" in str(value):  # unset, or gs:// and the like reached by the task itself
            continue
        if writable:
            target = out / "work" / Path(value).name
            if Path(value).resolve() != target:
                cfg[section][key] = str(target)
                moved.append(f"{section}.{key}: {value} -> {target}")
            continue
        path = Path(value).resolve()
        if not (path.is_relative_to(data) or path.is_relative_to(out)):
            problems.append(
                f"{section}.{key}={value} is outside the folders mounted into the containers "
                f"({data} read-only, {out} read-write)"
            )
    if cfg["baseline"].get("weights") and "://" not in cfg["baseline"]["weights"]:
        if not Path(cfg["baseline"]["weights"]).resolve().is_relative_to(data):
            problems.append(f"baseline.weights={cfg['baseline']['weights']} is outside {data} (mounted read-only)")
    if problems:
        raise ContainerRunError(
            "paths in the config the containers cannot see:\n  "
            + "\n  ".join(problems)
            + "\nput them under the data folder (--data-dir) or use gs:// URIs"
        )
    return cfg, moved


def prepare_output(output: Path) -> None:
    """The output folder must be writable by the images' user (uid 1000). Run as root (CI), the
    folder is handed to that uid; otherwise the containers run as the caller's uid instead."""
    for sub in ("pipeline_root", "work"):  # run_local's pipeline root; container_config's working folders
        (output / sub).mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        uid, gid = (int(x) for x in CONTAINER_USER.split(":"))
        for root, dirs, files in os.walk(output):
            os.chown(root, uid, gid)
            for name in dirs + files:
                with contextlib.suppress(FileNotFoundError):
                    os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def check_traversable(folders: list[Path]) -> None:
    """Run as root, the containers' uid 1000 must be able to reach each mounted folder: every
    folder above it needs the others' x bit (pytest's and mktemp's 0700 folders do not have it)."""
    if os.geteuid() != 0:
        return
    for folder in folders:
        for parent in [folder.resolve(), *folder.resolve().parents]:
            if parent.exists() and not parent.stat().st_mode & 0o001:
                raise ContainerRunError(
                    f"{parent} (above {folder}) is not searchable by others (mode "
                    f"{oct(parent.stat().st_mode & 0o777)}): the containers' user "
                    f"{CONTAINER_USER} could not reach {folder}; choose a folder outside it"
                )


def container_user() -> str:
    """Root runs the tasks as the images' own user; anyone else as themself (still non-root), so
    the files they write stay theirs."""
    return CONTAINER_USER if os.geteuid() == 0 else f"{os.getuid()}:{os.getgid()}"


@contextlib.contextmanager
def engine_socket() -> Iterator[str]:
    """A Docker API endpoint for the run: DOCKER_HOST or a Docker engine when one answers, else a
    podman service started on a private socket for the duration of the run."""
    import docker

    if os.environ.get("DOCKER_HOST") or _docker_answers(docker):
        yield os.environ.get("DOCKER_HOST", "the Docker engine")
        return
    podman = shutil.which("podman")
    if not podman:
        raise ContainerRunError(
            "no container engine: no Docker engine answers, DOCKER_HOST is not set and podman "
            "is not installed (as root: scripts/setup_podman.sh)"
        )
    sock_dir = tempfile.mkdtemp(prefix="plantid-podman-")
    url = f"unix://{sock_dir}/podman.sock"
    log = open(Path(sock_dir) / "service.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen([podman, "system", "service", "--time=0", url], stdout=log, stderr=subprocess.STDOUT)
    old = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = url
    try:
        deadline = time.monotonic() + 30
        while not _docker_answers(docker):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ContainerRunError(
                    f"podman system service did not start on {url}: "
                    f"{(Path(sock_dir) / 'service.log').read_text(errors='replace')[-500:]}"
                )
            time.sleep(0.2)
        yield f"podman ({url})"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        log.close()
        if old is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = old
        shutil.rmtree(sock_dir, ignore_errors=True)


def _docker_answers(docker_module: Any) -> bool:
    try:
        client = docker_module.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 (any failure means "no engine here")
        return False


def missing_images(images: set[str]) -> list[str]:
    """The images the compiled pipeline names that the engine does not hold (kfp would try to pull
    them, which fails without a registry: build them first)."""
    import docker

    client = docker.from_env()
    try:
        missing = []
        for ref in sorted(images):
            try:
                client.images.get(ref)
            except docker.errors.ImageNotFound:
                missing.append(ref)
        return missing
    finally:
        client.close()


def install_container_run(output: Path, data_dir: Path) -> None:
    """Route kfp.local's DockerRunner through `run_task_container` with this run's mounts."""
    from kfp.local import docker_task_handler

    def run(client: Any, image: str, command: list[str], volumes: dict, **run_args: Any) -> int:
        return run_task_container(client, image, command, volumes, output=output, data_dir=data_dir, **run_args)

    docker_task_handler.run_docker_container = run


def run_task_container(
    client: Any, image: str, command: list[str], volumes: dict, *, output: Path, data_dir: Path, **run_args: Any
) -> int:
    """Run one task's container to the end; return its real exit code (see the module docstring)."""
    import docker

    volumes = dict(volumes)  # kfp's: the pipeline root, read-write, at the same path
    volumes[str(output.resolve())] = {"bind": str(output.resolve()), "mode": "rw"}
    volumes[str(data_dir.resolve())] = {"bind": str(data_dir.resolve()), "mode": "ro"}
    env = dict(run_args.pop("environment", None) or {})
    env.setdefault("HOME", "/tmp")
    user = container_user()
    t0 = time.monotonic()
    container = client.containers.run(
        image=image,
        command=command,
        detach=True,
        stdout=True,
        stderr=True,
        volumes=volumes,
        auto_remove=False,
        user=user,
        read_only=True,
        tmpfs={"/tmp": "rw,size=8g,mode=1777"},
        network_mode="none",
        environment=env,
        shm_size="1g",
        **run_args,
    )
    code = None
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        code = int(container.wait()["StatusCode"])
        return code
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
        _record_run(
            output,
            {
                "function": _function_name(command),
                "image": image,
                "user": user,
                "read_only_root": True,
                "network": "none",
                "exit_code": code,
                "seconds": round(time.monotonic() - t0, 1),
            },
        )


def _function_name(command: list[str]) -> str:
    """The component function a KFP lightweight-component command runs ("" for other commands)."""
    for i, arg in enumerate(command[:-1]):
        if arg == "--function_to_execute":
            return command[i + 1]
    return ""


def _record_run(output: Path, entry: dict) -> None:
    """One line per container in OUTPUT/container_runs.jsonl: which image ran which component, as
    whom, how it ended (what tests/containers checks)."""
    with open(output / "container_runs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


@contextlib.contextmanager
def container_session(cfg: dict, output: Path, data_dir: Path, images: set[str], log: Any = print) -> Iterator[dict]:
    """Everything a container run needs before its first task, checked up front: the config with
    its working folders under `output`, an engine endpoint, the images present, the output folder
    writable by the containers' user, kfp's DockerRunner routed through `run_task_container`.
    Yields the config to run."""
    if not data_dir.is_dir():
        raise ContainerRunError(f"data folder {data_dir} does not exist (make sample-data writes data/sample)")
    if data_dir.resolve().is_relative_to(output.resolve()):
        raise ContainerRunError(
            f"the output folder {output} (read-write) and the data folder {data_dir} "
            "(read-only) must be separate folders"
        )
    run_cfg, moved = container_config(cfg, output, data_dir)
    for line in moved:
        log(f"container run: {line}")
    with engine_socket() as endpoint:
        log(f"container engine: {endpoint}")
        missing = missing_images(images)
        if missing:
            raise ContainerRunError(
                "images the pipeline names are not built: " + ", ".join(missing) + " (make images CONFIG=<this config>)"
            )
        prepare_output(output)
        check_traversable([output, data_dir])
        install_container_run(output, data_dir)
        yield run_cfg
