"""`make bench`: run every benchmark, print the figures and write them to a JSON file.

Each bench module exposes run() -> dict. A benchmark that cannot run here (a
missing tool) is recorded with its error instead of stopping the others."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCHES = [
    "bench_split",
    "bench_cache",
    "bench_train",
    "bench_datapath",
    "bench_logits",
    "bench_soft_labels",
    "bench_tfjs",
    "bench_reliability",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default="bench/results.json")
    ap.add_argument("--only", nargs="*", help="run only these benchmarks")
    args = ap.parse_args(argv)
    results: dict = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "processor": platform.processor(),
        },
        "benchmarks": {},
    }
    failed = 0
    for name in args.only or BENCHES:
        try:
            mod = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"bench.{name}":
                continue  # not part of this build
            raise
        t0 = time.time()
        print(f"== {name}", flush=True)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                fig = mod.run(tmp) if "tmp" in mod.run.__code__.co_varnames[:1] else mod.run()
            fig["bench_seconds"] = round(time.time() - t0, 1)
        except Exception as e:  # keep going: one tool missing should not hide the rest
            failed += 1
            fig = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        results["benchmarks"][name] = fig
        print(json.dumps(fig, indent=2), flush=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # keep what other benchmarks wrote there (make bench-scale's "scale", the GPU's "gpu")
        try:
            kept = {k: v for k, v in json.loads(out.read_text()).items() if k not in results}
        except ValueError:
            kept = {}
        results = {**kept, **results}
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
