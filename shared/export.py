"""Phase 6: the calibrated student to a TF.js graph model for the browser.

PyTorch -> ONNX (static 1x3xHxW, opset 13; checked against PyTorch with
onnxruntime) -> TensorFlow SavedModel (onnx2tf; NHWC input) -> TF.js graph model
(tensorflowjs_converter, fp16 or uint8 weight quantization). The converters run
as command-line tools from their own environment (TensorFlow and kfp need
incompatible protobufs): `.venv-export/bin` here (scripts/setup_export_env.sh),
baked into the export image there; PLANTID_EXPORT_BIN points elsewhere. Nothing
is downloaded: onnx2tf's calibration sample is written from our own images.

The bundle: model.json + weight shards, labels.json, calibration.json,
preprocessing.json, index.html (the demo page) and tf.min.js."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.atomic import write_json

REPO = Path(__file__).resolve().parent.parent
TFJS_DIR = REPO / "shared" / "tfjs"
WEB_DIR = REPO / "shared" / "web"
QUANTIZATIONS = {"fp16": "--quantize_float16", "float16": "--quantize_float16", "uint8": "--quantize_uint8",
                 "int8": "--quantize_uint8", "none": None}
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


class ExportError(RuntimeError):
    """A conversion step failed or its output does not match the PyTorch model."""


def export_bin() -> Path:
    return Path(os.environ.get("PLANTID_EXPORT_BIN", REPO / ".venv-export" / "bin"))


def _tool(name: str) -> str:
    p = export_bin() / name
    if not p.exists():
        raise ExportError(f"{name} not found in {export_bin()}: run `make setup` (scripts/setup_export_env.sh) "
                          "or set PLANTID_EXPORT_BIN to the converter environment's bin directory")
    return str(p)


def _run(cmd: list[str], cwd: str | None = None, what: str = "") -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ExportError(f"{what or cmd[0]} failed ({r.returncode}): {(r.stderr or r.stdout)[-3000:]}")


def export_onnx(model: torch.nn.Module, image_size: int, path: str | os.PathLike) -> None:
    """Static batch 1 (onnx2tf fails on a dynamic batch axis), opset 13, TorchScript exporter."""
    model = model.eval()
    dummy = torch.zeros(1, 3, image_size, image_size)
    torch.onnx.export(model, (dummy,), str(path), opset_version=13, dynamo=False, input_names=["input"],
                      output_names=["logits"])


def check_onnx(model: torch.nn.Module, onnx_path: str | os.PathLike, sample: np.ndarray, tol: float = 1e-3) -> float:
    """Max abs difference between onnxruntime and PyTorch on `sample` (N x 3 x H x W)."""
    import onnxruntime as ort

    model = model.eval()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for x in sample:
            ref = model(torch.from_numpy(x[None])).numpy()
            got = sess.run(None, {"input": x[None].astype(np.float32)})[0]
            worst = max(worst, float(np.abs(ref - got).max()))
    scale = max(1.0, float(np.abs(ref).max()))
    if worst > tol * scale:
        raise ExportError(f"ONNX output differs from PyTorch by {worst:.3g} (tolerance {tol * scale:.3g})")
    return worst


def onnx_to_saved_model(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, calib_nhwc: np.ndarray) -> None:
    """onnx2tf in a temp working dir holding the calibration sample it would otherwise download."""
    with tempfile.TemporaryDirectory() as work:
        sample = np.zeros((20, 128, 128, 3), np.float32)
        src = torch.nn.functional.interpolate(torch.from_numpy(calib_nhwc).permute(0, 3, 1, 2), size=(128, 128),
                                              mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
        for i in range(20):
            sample[i] = src[i % len(src)]
        np.save(os.path.join(work, ONNX2TF_SAMPLE), sample)
        _run([_tool("onnx2tf"), "-i", str(Path(onnx_path).resolve()), "-o", str(Path(out_dir).resolve()), "-osd",
              "-n"], cwd=work, what="onnx2tf")


def saved_model_to_tfjs(saved_dir: str | os.PathLike, out_dir: str | os.PathLike, quantization: str = "fp16") -> None:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"export.quantization: {quantization!r} is not one of {sorted(QUANTIZATIONS)}")
    cmd = [_tool("tensorflowjs_converter"), "--input_format=tf_saved_model", "--output_format=tfjs_graph_model"]
    if QUANTIZATIONS[quantization]:
        cmd.append(f"{QUANTIZATIONS[quantization]}=*")
    _run(cmd + [str(saved_dir), str(out_dir)], what="tensorflowjs_converter")


def preprocess(ckpt: dict, paths: list[str]) -> np.ndarray:
    """N x 3 x H x W float32: the checkpoint's own evaluation preprocessing."""
    from PIL import Image

    from shared.evaluation import eval_transform_for

    tf = eval_transform_for(ckpt)
    return np.stack([tf(Image.open(p).convert("RGB")).numpy() for p in paths]).astype(np.float32)


def bundle_size_mb(bundle: str | os.PathLike) -> float:
    b = Path(bundle)
    return sum(p.stat().st_size for p in b.iterdir() if p.suffix == ".bin" or p.name == "model.json") / 1e6


def export_tfjs_bundle(checkpoint_path: str, out_dir: str, image_paths: list[str], quantization: str = "fp16",
                       calibration: dict | None = None) -> dict[str, Any]:
    """Build the whole bundle in a temp dir next to out_dir, then move it into place."""
    from shared.checkpoint import build_model, load_checkpoint

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"export.quantization: {quantization!r} is not one of {sorted(QUANTIZATIONS)}")
    if not image_paths:
        raise ValueError("export needs sample images (for the ONNX check and onnx2tf's calibration sample)")
    ckpt = load_checkpoint(checkpoint_path)
    model = build_model(ckpt)
    size = int(ckpt["image_size"])
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    stage.chmod(0o755)
    t0 = time.time()
    try:
        with tempfile.TemporaryDirectory() as work:
            onnx_path = Path(work) / "model.onnx"
            export_onnx(model, size, onnx_path)
            sample = preprocess(ckpt, image_paths[:8])
            onnx_diff = check_onnx(model, onnx_path, sample)
            onnx_to_saved_model(onnx_path, Path(work) / "saved_model", sample.transpose(0, 2, 3, 1))
            saved_model_to_tfjs(Path(work) / "saved_model", stage, quantization)
        cal = calibration or {"temperature": float(ckpt.get("temperature", 1.0)),
                              "threshold": float(ckpt.get("threshold", 0.0))}
        write_json(stage / "labels.json", list(ckpt["classes"]))
        write_json(stage / "calibration.json", {"temperature": float(cal.get("temperature", 1.0)),
                                                "threshold": float(cal.get("threshold", 0.0)),
                                                "label_below_threshold": "no concluyente",
                                                **{k: cal[k] for k in ("ece_after", "coverage", "precision_at_threshold")
                                                   if k in cal}})
        write_json(stage / "preprocessing.json", {
            "input_size": size, "resize_short_side": int(ckpt.get("eval_resize") or round(size * 448 / 384)),
            "crop": "center", "layout": "NHWC", "input_shape": [1, size, size, 3], "value_range": [0, 1],
            "mean": list(ckpt["mean"]), "std": list(ckpt["std"]), "output": "logits",
            "apply": "softmax(logits / temperature)", "model_name": ckpt["model_name"], "quantization": quantization})
        shutil.copyfile(WEB_DIR / "index.html", stage / "index.html")
        tfjs_min = TFJS_DIR / "node_modules" / "@tensorflow" / "tfjs" / "dist" / "tf.min.js"
        if tfjs_min.exists():  # the page loads TF.js from the bundle: no CDN
            shutil.copyfile(tfjs_min, stage / "tf.min.js")
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return {"bundle": str(out), "quantization": quantization, "model_size_mb": round(bundle_size_mb(out), 3),
            "onnx_max_abs_diff": onnx_diff, "classes": len(ckpt["classes"]), "image_size": size,
            "export_seconds": round(time.time() - t0, 1)}


def validate_tfjs_bundle(bundle_dir: str, checkpoint_path: str, image_paths: list[str], min_corr: float = 0.995,
                         min_agreement: float = 0.99, max_size_mb: float = 150.0, repeats: int = 20) -> dict[str, Any]:
    """Run the bundle with the real @tensorflow/tfjs in Node on `image_paths` and compare
    with the PyTorch model: logits correlation, top-1 agreement, size and latency."""
    from shared.checkpoint import build_model, load_checkpoint

    node_modules = TFJS_DIR / "node_modules" / "@tensorflow" / "tfjs"
    if not node_modules.exists():
        raise ExportError(f"{node_modules} missing: run `make setup` (npm install in shared/tfjs)")
    ckpt = load_checkpoint(checkpoint_path)
    model = build_model(ckpt)
    x = preprocess(ckpt, image_paths)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    with tempfile.TemporaryDirectory() as work:
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        nhwc.tofile(os.path.join(work, "input.bin"))
        r = subprocess.run(["node", str(TFJS_DIR / "validate.mjs"), str(Path(bundle_dir).resolve()),
                            os.path.join(work, "input.bin"), ",".join(map(str, nhwc.shape)),
                            os.path.join(work, "out.bin"), str(repeats)],
                           capture_output=True, text=True, cwd=TFJS_DIR)
        if r.returncode != 0:
            raise ExportError(f"TF.js validation in Node failed: {r.stderr[-3000:]}")
        info = json.loads(r.stdout.strip().splitlines()[-1])
        got = np.fromfile(os.path.join(work, "out.bin"), dtype=np.float32).reshape(ref.shape)
    corr = float(np.corrcoef(ref.ravel(), got.ravel())[0, 1])
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    size = bundle_size_mb(bundle_dir)
    reasons = []
    if corr <= min_corr:
        reasons.append(f"logits correlation {corr:.5f} <= {min_corr}")
    if agree < min_agreement:
        reasons.append(f"top-1 agreement {agree:.3f} < {min_agreement}")
    if size > max_size_mb:
        reasons.append(f"model size {size:.1f} MB > {max_size_mb} MB")
    return {"passed": not reasons, "reasons": reasons, "images": len(image_paths), "logits_correlation": corr,
            "top1_agreement": agree, "max_abs_diff": float(np.abs(ref - got).max()), "model_size_mb": size,
            "node_backend": info["backend"], "node_latency_ms_median": info["median_ms"],
            "pytorch_top1": [ckpt["classes"][i] for i in ref.argmax(1)]}


def sample_image_paths(records: list[dict], cache_dir: str, n: int) -> list[str]:
    """A fixed, class-spread set of cached test images (sorted by image id)."""
    from shared.image_cache import resolve

    picked, seen = [], set()
    ordered = sorted(records, key=lambda r: str(r["image_id"]))
    for r in ordered:  # one per class first, then fill up
        if r["taxon"] not in seen:
            seen.add(r["taxon"])
            picked.append(r)
    picked += [r for r in ordered if r not in picked]
    return [str(resolve(cache_dir, r)) for r in picked[:n]]


def run_export(checkpoint_path: str, calibration_json: str, test_records: list[dict], cache_dir: str,
               out_dir: str, quantization: str, n_images: int = 16) -> dict[str, Any]:
    cal = json.loads(Path(calibration_json).read_text())
    return export_tfjs_bundle(checkpoint_path, out_dir, sample_image_paths(test_records, cache_dir, n_images),
                              quantization, cal)
