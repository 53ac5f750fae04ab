"""TF.js inference latency of the plan's student (timm mobilenetv2_100, 224 px, 9,000
classes, random weights: timing and size only) in headless Chromium with the WASM backend
and in Node (pure-JS cpu and WASM backends): median ms of 20 single-image runs after 3
warm-up runs; and the fp16 and uint8 bundle sizes in MB (model.json + shards)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

from shared.export.tfjs import TFJS_DIR, export_tfjs_bundle, run_tfjs_node
from shared.io.checkpoint import save_checkpoint

MODEL, IMAGE_SIZE, CLASSES, REPEATS = "mobilenetv2_100", 224, 9000, 20


def chromium_latency(bundle: Path, backend: str = "wasm") -> dict:
    """Median latency in headless Chromium (shared/export/tfjs/bench_page.html served over localhost)."""
    shutil.copyfile(TFJS_DIR / "bench_page.html", bundle / "bench.html")
    handler = partial(SimpleHTTPRequestHandler, directory=str(bundle))
    handler.log_message = lambda *a: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/bench.html?backend={backend}"
        r = subprocess.run(["node", "bench_page.mjs", url], cwd=TFJS_DIR, capture_output=True, text=True, timeout=600)
    finally:
        httpd.shutdown()
    if r.returncode != 0:
        raise RuntimeError(f"browser benchmark failed: {r.stderr[-2000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if "error" in res:
        raise RuntimeError(f"browser benchmark failed: {res['error']}")
    return res


def run(tmp: str | None = None) -> dict:
    import timm

    tmp = Path(tmp or tempfile.mkdtemp())
    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False, num_classes=CLASSES)
    save_checkpoint(
        tmp / "student.pt",
        model,
        model_name=MODEL,
        classes=[f"species {i}" for i in range(CLASSES)],
        image_size=IMAGE_SIZE,
        eval_resize=256,
    )
    sample = np.random.default_rng(0).normal(size=(2, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    out: dict = {
        "tfjs_model": MODEL,
        "tfjs_image_size": IMAGE_SIZE,
        "tfjs_classes": CLASSES,
        "tfjs_parameters": sum(p.numel() for p in model.parameters()),
        "tfjs_repeats": REPEATS,
    }
    for q in ("fp16", "uint8"):
        info = export_tfjs_bundle(str(tmp / "student.pt"), str(tmp / f"bundle_{q}"), sample, q)
        out[f"tfjs_{q}_size_mb"] = info["model_size_mb"]
        out[f"tfjs_{q}_export_seconds"] = info["export_seconds"]
    bundle = tmp / "bundle_fp16"
    x = sample[:1].transpose(0, 2, 3, 1)
    for backend in ("cpu", "wasm"):
        _, info = run_tfjs_node(bundle, x, backend, REPEATS)
        out[f"tfjs_node_{backend}_median_ms"] = round(info["median_ms"], 1)
    if Path("/usr/bin/chromium").exists():
        res = chromium_latency(bundle, "wasm")
        out["tfjs_chromium_wasm_median_ms"] = round(res["median_ms"], 1)
        out["tfjs_chromium_backend"] = res["backend"]
    else:
        out["tfjs_chromium_wasm_median_ms"] = None  # no browser on this machine
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
