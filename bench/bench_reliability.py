"""Reliability figures: how many hostile and malformed inputs the reliability suite
tries (hypothesis fuzz counts plus the fixed hostile cases), and the resume overhead
of a killed teacher: seconds from the restart to the moment training resumes (the
checkpoint loaded, the first new step next), against a fresh start's time to the
same point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _given_tests() -> int:
    return sum(f.read_text().count("@given(") for f in (ROOT / "tests" / "reliability").glob("test_*.py"))


def fuzz_counts(tmp: Path) -> dict:
    counts = tmp / "fuzz_counts.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/reliability/test_fuzz_inputs.py",
            "tests/reliability/test_fuzz_edges.py",
            "tests/reliability/test_ingest_hostile.py",
            "tests/reliability/test_licenses_hostile.py",
            "tests/reliability/test_url_parsing.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**ENV, "PLANTID_FUZZ_COUNTS": str(counts)},
    )
    if r.returncode != 0:
        raise RuntimeError(f"fuzz tests failed:\n{r.stdout[-2000:]}")
    tried = json.loads(counts.read_text())
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/reliability"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ENV,
    )
    per_file: dict[str, int] = {}
    for ln in collected.stdout.splitlines():  # "path: N" (pytest -qq) or "path::test" (-q)
        if ln.startswith("tests/reliability/"):
            path, _, rest = ln.partition("::") if "::" in ln else ln.partition(": ")
            per_file[path] = per_file.get(path, 0) + (1 if "::" in ln else int(rest))
    # the hypothesis-driven tests are counted by the inputs they tried, not as fixed cases
    fixed = sum(per_file.values()) - _given_tests()
    return {
        "fuzz_inputs_tried": tried,
        "fuzz_inputs_total": sum(v for k, v in tried.items() if k != "jsonl_files"),
        "hostile_fixed_cases": fixed,
        "reliability_tests_per_file": per_file,
    }


def _prepare(tmp: Path) -> list[str]:
    from shared.data.fetch import FetchPolicy
    from shared.data.image_cache import cache_images
    from shared.data.ingest import ingest, iter_jsonl_source
    from shared.data.sample_data import generate
    from shared.data.split import stratified_split
    from shared.io.records import write_jsonl
    from tests.conftest import TINY_TEACHER

    generate(tmp / "sample", n_species=12, seed=1, image_size=(160, 128))
    recs = ingest(iter_jsonl_source(tmp / "sample" / "records.jsonl")).records
    rep = cache_images(
        recs, tmp / "cache", resize=40, policy=FetchPolicy(allow_local_paths=True), progress=lambda d, t: None
    )
    sp = stratified_split(rep.cached, seed=42)
    write_jsonl(tmp / "train.jsonl", sp.train)
    write_jsonl(tmp / "val.jsonl", sp.val)
    cfg = json.loads(json.dumps(TINY_TEACHER))
    cfg["training"]["epochs"] = 4
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return [
        "--config",
        str(tmp / "cfg.yaml"),
        "--train-jsonl",
        str(tmp / "train.jsonl"),
        "--val-jsonl",
        str(tmp / "val.jsonl"),
        "--cache-dir",
        str(tmp / "cache"),
    ]


def _start(args: list[str], out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "shared.train.teacher", *args, "--out-dir", str(out)],
        env={**ENV, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )


def _seconds_until(p: subprocess.Popen, marker: str, t0: float) -> float:
    for line in p.stdout:
        if marker in line:
            return time.monotonic() - t0
    raise RuntimeError(f"the run ended without printing {marker!r}")


def resume_overhead(tmp: Path) -> dict:
    args = _prepare(tmp)
    out = tmp / "run"
    t0 = time.monotonic()
    p = _start(args, out)
    first_epoch = _seconds_until(p, "epoch 1/", t0)  # fresh: start -> first epoch done
    deadline = time.monotonic() + 60
    while not (out / "last_checkpoint.pt.sha256").exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # the epoch is logged, then checkpointed
    p.send_signal(signal.SIGKILL)
    p.wait()
    t0 = time.monotonic()
    p = _start(args, out)
    restart = _seconds_until(p, "resumed from", t0)
    rest = _seconds_until(p, "epoch 2/", t0)
    p.kill()
    p.wait()
    return {
        "resume_restart_to_first_new_step_s": round(restart, 2),
        "resume_restart_to_next_epoch_done_s": round(rest, 2),
        "fresh_start_to_first_epoch_done_s": round(first_epoch, 2),
    }


def run(tmp: str) -> dict:
    t = Path(tmp)
    return {**fuzz_counts(t), **resume_overhead(t)}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run(d), indent=2))
