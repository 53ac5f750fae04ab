"""TF.js inference latency of the plan's student (timm mobilenetv2_100, 224 px, 9,000
classes, random weights: timing and size only) in headless Chromium with the WASM backend
and in Node (pure-JS cpu and WASM backends): median ms of 20 single-image runs after 3
warm-up runs; and the fp16, mixed (uint8 head) and uint8 bundle sizes in MB (model.json +
shards). bench_export.py measures the same model with a fitted head: parity per mode."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from shared.export.tfjs import browser_latency, export_tfjs_bundle, run_tfjs_node
from shared.io.checkpoint import save_checkpoint

MODEL, IMAGE_SIZE, CLASSES, REPEATS = "mobilenetv2_100", 224, 9000, 20


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
    for q in ("fp16", "mixed", "uint8"):
        info = export_tfjs_bundle(str(tmp / "student.pt"), str(tmp / f"bundle_{q}"), sample, q)
        out[f"tfjs_{q}_size_mb"] = info["model_size_mb"]
        out[f"tfjs_{q}_export_seconds"] = info["export_seconds"]
    bundle = tmp / "bundle_fp16"
    x = sample[:1].transpose(0, 2, 3, 1)
    for backend in ("cpu", "wasm"):
        _, info = run_tfjs_node(bundle, x, backend, REPEATS)
        out[f"tfjs_node_{backend}_median_ms"] = round(info["median_ms"], 1)
    if Path("/usr/bin/chromium").exists():
        res = browser_latency(bundle, runs=REPEATS, warmup=3)  # what the export's latency gate measures
        out["tfjs_chromium_wasm_median_ms"] = round(res["median_ms"], 1)
        out["tfjs_chromium_backend"] = res["backend"]
    else:
        out["tfjs_chromium_wasm_median_ms"] = None  # no browser on this machine
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
