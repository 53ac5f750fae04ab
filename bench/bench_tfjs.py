"""TF.js inference latency of the plan's student (timm mobilenetv2_100, 224 px, 9,000
classes, random weights: timing and size only): in headless Chromium the page as it opens
(page_latency: the backend the page picks and why, cross-origin isolation and WASM threads,
cold start from navigation to the first prediction, warm median of 20 single-image runs after
3 warm-up, each backend forced beside it and the page's ratio to the fastest, which the
latency gate bounds at 1.5x), for the fp16 and the mixed bundle (what `auto` ships at 9,000
classes); in Node (pure-JS cpu and WASM backends); and the fp16, mixed (uint8 head) and uint8
bundle sizes in MB (model.json + shards). bench_export.py measures the same model with a
fitted head: parity per mode."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from shared.export.tfjs import export_tfjs_bundle, page_latency, run_tfjs_node
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
    if not Path("/usr/bin/chromium").exists():
        out["tfjs_chromium"] = None  # no browser on this machine
        return out
    for q in ("fp16", "mixed"):
        res = page_latency(tmp / f"bundle_{q}", runs=REPEATS, warmup=3)  # what the latency gate measures
        out[f"tfjs_chromium_page_{q}"] = {
            "backend": res["backend"],
            "reason": res.get("reason"),
            "cross_origin_isolated": res.get("cross_origin_isolated"),
            "wasm_threads": res.get("threads_count"),
            "cold_start_ms": round(res["cold_start_ms"], 1),
            "warm_median_ms": round(res["median_ms"], 1),
            "by_backend_ms": {k: round(v, 1) if isinstance(v, float) else v for k, v in res["by_backend_ms"].items()},
            "default_vs_fastest": round(res["default_vs_fastest"], 3),
        }
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
