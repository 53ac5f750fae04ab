"""Phase 6: the calibrated student to a TF.js graph model for the browser.

PyTorch -> ONNX (static 1x3xHxW, opset 13; checked against PyTorch with
onnxruntime) -> TensorFlow SavedModel (onnx2tf; NHWC input) -> TF.js graph model
(tensorflowjs_converter, fp16, mixed or uint8 weight quantization). The converters run
as command-line tools from their own environment (TensorFlow and kfp need
incompatible protobufs): `.venv-export/bin` here (scripts/setup_export_env.sh),
baked into the export image there; PLANTID_EXPORT_BIN points elsewhere. Nothing
is downloaded: onnx2tf's calibration sample is written from our own images.

The bundle: model.json + weight shards, labels.json (index -> taxon),
calibration.json (temperature, threshold, figures), preprocessing.json (input
size, resize/crop, mean/std, NHWC, value range), index.html (the demo page),
tf.min.js and the WASM backend (tf-backend-wasm.min.js + .wasm): the page needs
no CDN.

Quantization (tensorflowjs_converter weight quantization; activations stay
float32): fp16 (default, --quantize_float16), mixed (fp16 backbone, uint8
classifier kernel: bare --quantize_float16 is the converter's fallthrough dtype and
--quantize_uint8=<kernel> names the head's kernel; a '*' for fp16 would clash with
that name, which the converter refuses), uint8 (--quantize_uint8, affine
per-tensor 8-bit weights, depthwise convolutions included); "int8" is accepted
as an alias of uint8 since TF.js has no signed 8-bit weight format; "none"
keeps float32; "auto" tries fp16, then mixed, then uint8 (AUTO_ORDER: least
loss first) and ships the first that passes every gate it can check at export
time: bundle size < max_size_mb and, given parity images, logits correlation and
top-1 agreement with PyTorch (parity_figures); each rejected mode is recorded
with why. The classifier is exported per-class scaled (per_class_head: kernel
W / s, then * s + b), so the per-tensor uint8 kernel has per-class resolution and
its scale and bias stay fp16. At 9,000 classes the head is ~11.5M of MobileNetV2's
~13.7M weights, so mixed is ~60 % of the fp16 bundle while the backbone stays fp16;
on `make bench-export`'s model mixed keeps top-1 agreement 0.994 (0.972 with one
uint8 range for the whole head and a uint8 bias).

Weight shards: WEIGHT_SHARD_MB (30 MB) per shard instead of the converter's
4 MB, so any bundle up to 180 MB (above the 150 MB size bound) has at most 6
shards: Chromium serves 6 connections per host, and a page sent with
Cache-Control: no-store stalled for good on the 7th shard of a 7-shard model
(notes/BROWSER.md). A plan-sized bundle (< 20 MB) is one shard.

Parity (plan 6.3) is measured on >= PARITY_MIN_IMAGES (1,000) test images (all
of test when fewer; fewer is labelled local): logits correlation, top-1
agreement with its 95 % Wilson interval, and the exported model's and the
PyTorch model's top-1 against the test labels. The agreement gate is the plan's,
on the point estimate (agreement >= 0.99); the sample size makes it mean
something: flips of a faithful export are Binomial(n, 1 - a), so at n = 1,500
(the cluster's export.validation_images) a true agreement of 99.5 % passes with
probability 0.9955 and a true 98 % (twice the allowed flips) fails with
probability 0.998; at n = 1,000 these are 0.9865 and 0.990
(agreement_pass_probability computes them; the summary records them).

The plan's 6.4 gates (validate_tfjs_bundle, all strict like the plan): logits
correlation > min_corr, bundle size < max_size_mb, single-image latency median
< max_latency_ms (5 s: a CPU-only browser), measured in headless Chromium with
the WASM backend (browser_latency) or, only when asked for, with TF.js WASM in
Node (labelled as Node); plus top-1 agreement >= min_agreement and the bundle's
labels / input size. Every gate is reported with its value, operator and bound."""

from __future__ import annotations

import json
import operator
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from shared import artifact_keys as K
from shared.export.demo_server import IsolatedBundleHandler
from shared.export.offline import write_service_worker
from shared.export.per_class_head import with_per_class_scaled_head
from shared.io.atomic import write_json

REPO = Path(__file__).resolve().parents[2]  # shared/export/tfjs.py -> the repository
TFJS_DIR = REPO / "shared" / "export" / "tfjs"
WEB_DIR = REPO / "shared" / "export" / "web"
QUANTIZATIONS = {
    "fp16": "--quantize_float16",
    "float16": "--quantize_float16",
    "uint8": "--quantize_uint8",
    "int8": "--quantize_uint8",
    "mixed": "--quantize_float16",  # the fallthrough; the head's names go to --quantize_uint8
    "none": None,
}
CANONICAL_QUANTIZATION = {
    "fp16": "fp16",
    "float16": "fp16",
    "uint8": "uint8",
    "int8": "uint8",
    "mixed": "mixed",
    "none": "none",
}
AUTO = "auto"  # the first of AUTO_ORDER that passes the size and parity gates
AUTO_ORDER = ("fp16", "mixed", "uint8")  # least weight loss first
WEIGHT_SHARD_MB = 30.0  # <= 6 shards up to 180 MB (Chromium's 6 connections per host; see module doc)
PARITY_MIN_IMAGES = 1000  # the plan-sized parity sample (all of test when fewer)
WILSON_Z = 1.96  # 95 % two-sided
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
TFJS_MIN = TFJS_DIR / "node_modules" / "@tensorflow" / "tfjs" / "dist" / "tf.min.js"
WASM_DIST = TFJS_DIR / "node_modules" / "@tensorflow" / "tfjs-backend-wasm" / "dist"
WASM_FILES = (
    "tf-backend-wasm.min.js",
    "tfjs-backend-wasm.wasm",
    "tfjs-backend-wasm-simd.wasm",
    "tfjs-backend-wasm-threaded-simd.wasm",
)
NODE_SETUP_HINT = "run `make setup` (scripts/setup_export_env.sh: npm ci in shared/export/tfjs)"


class ExportError(RuntimeError):
    """A conversion step failed or its output does not match the PyTorch model."""


def export_bin() -> Path:
    """Where onnx2tf and tensorflowjs_converter live (PLANTID_EXPORT_BIN or .venv-export/bin)."""
    return Path(os.environ.get("PLANTID_EXPORT_BIN", REPO / ".venv-export" / "bin"))


def _tool(name: str) -> str:
    p = export_bin() / name
    if not p.exists():
        raise ExportError(
            f"{name} not found in {export_bin()}: run `make setup` (scripts/setup_export_env.sh) "
            "or set PLANTID_EXPORT_BIN to the converter environment's bin directory"
        )
    return str(p)


# The converter environment's packages, recorded with every bundle (that environment
# is a separate venv/image, so the pipeline's own package list cannot see them).
TOOLCHAIN = ("tensorflow", "tf-keras", "tensorflowjs", "onnx2tf", "onnx")
_VERSIONS_SCRIPT = """import importlib.metadata as m, json, sys
v = {}
for n in sys.argv[1:]:
    try:
        v[n] = m.version(n)
    except m.PackageNotFoundError:
        v[n] = None
print(json.dumps(v))"""


def toolchain_versions() -> dict[str, str | None]:
    """Versions of TOOLCHAIN in the converter environment (None where not installed)."""
    r = subprocess.run(
        [_tool("python"), "-c", _VERSIONS_SCRIPT, *TOOLCHAIN], capture_output=True, text=True, timeout=120
    )
    if r.returncode != 0:
        raise ExportError(f"cannot read the converter environment's versions: {r.stderr[-500:]}")
    return json.loads(r.stdout)


def _run(cmd: list[str], cwd: str | None = None, what: str = "") -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ExportError(f"{what or cmd[0]} failed ({r.returncode}): {(r.stderr or r.stdout)[-3000:]}")


def export_onnx(model: torch.nn.Module, image_size: int, path: str | os.PathLike) -> None:
    """Static batch 1 (onnx2tf fails on a dynamic batch axis), opset 13, TorchScript exporter;
    the classifier is exported as a per-class scaled kernel (per_class_head: per-class
    resolution when the converter quantises the kernel per tensor)."""
    model = with_per_class_scaled_head(model)
    dummy = torch.zeros(1, 3, image_size, image_size)
    torch.onnx.export(
        model, (dummy,), str(path), opset_version=13, dynamo=False, input_names=["input"], output_names=["logits"]
    )


def check_onnx(model: torch.nn.Module, onnx_path: str | os.PathLike, sample: np.ndarray, tol: float = 1e-3) -> float:
    """Max abs difference between onnxruntime and PyTorch on `sample` (N x 3 x H x W);
    ExportError when it exceeds tol x max(1, largest |logit|)."""
    import onnxruntime as ort

    model = model.eval()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst, scale = 0.0, 1.0
    with torch.no_grad():
        for x in np.asarray(sample, np.float32):
            ref = model(torch.from_numpy(x[None])).numpy()
            got = sess.run(None, {"input": x[None]})[0]
            worst = max(worst, float(np.abs(ref - got).max()))
            scale = max(scale, float(np.abs(ref).max()))
    if worst > tol * scale:
        raise ExportError(f"ONNX output differs from PyTorch by {worst:.3g} (tolerance {tol * scale:.3g})")
    return worst


def onnx_to_saved_model(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, calib_images: np.ndarray) -> None:
    """onnx2tf (NHWC SavedModel) in a temp working dir holding the calibration sample it
    would otherwise download: 20 x 128 x 128 x 3 RGB in [0, 1] (its own format), made
    from `calib_images` (N x H x W x 3 in [0, 1], repeated up to 20)."""
    calib = np.asarray(calib_images, np.float32)
    if calib.ndim != 4 or calib.shape[-1] != 3 or len(calib) == 0:
        raise ValueError(f"calibration images must be N x H x W x 3, got shape {calib.shape}")
    with tempfile.TemporaryDirectory() as work:
        sample = np.zeros((20, 128, 128, 3), np.float32)
        src = (
            torch.nn.functional.interpolate(
                torch.from_numpy(calib).permute(0, 3, 1, 2), size=(128, 128), mode="bilinear", align_corners=False
            )
            .permute(0, 2, 3, 1)
            .numpy()
        )
        for i in range(20):
            sample[i] = src[i % len(src)]
        np.save(os.path.join(work, ONNX2TF_SAMPLE), sample)
        _run(
            [_tool("onnx2tf"), "-i", str(Path(onnx_path).resolve()), "-o", str(Path(out_dir).resolve()), "-osd", "-n"],
            cwd=work,
            what="onnx2tf",
        )


def check_quantization(quantization: str, allow_auto: bool = False) -> str:
    allowed = sorted(QUANTIZATIONS) + ([AUTO] if allow_auto else [])
    if quantization not in allowed:
        raise ValueError(
            f"export.quantization: {quantization!r} is not one of {allowed} "
            "(int8 = uint8 weight quantization; mixed = fp16 backbone + uint8 classifier head; "
            "auto = the first of fp16, mixed, uint8 that passes the size and parity gates)"
        )
    return quantization


def saved_model_to_tfjs(
    saved_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    quantization: str = "fp16",
    shard_mb: float = WEIGHT_SHARD_MB,
    uint8_weights: list[str] | None = None,
) -> None:
    """tensorflowjs_converter: SavedModel -> TF.js graph model (model.json + weight shards of
    at most shard_mb MB). quantization mixed needs uint8_weights (head_weight_names): those
    are uint8, every other weight fp16."""
    check_quantization(quantization)
    if not shard_mb > 0:
        raise ValueError(f"export.weight_shard_mb must be > 0, got {shard_mb!r}")
    cmd = [
        _tool("tensorflowjs_converter"),
        "--input_format=tf_saved_model",
        "--output_format=tfjs_graph_model",
        f"--weight_shard_size_bytes={int(shard_mb * 1e6)}",
    ]
    if quantization == "mixed":
        if not uint8_weights:
            raise ValueError("quantization mixed needs the classifier head's weight names (uint8_weights)")
        cmd += ["--quantize_float16", "--quantize_uint8=" + ",".join(uint8_weights)]
    elif QUANTIZATIONS[quantization]:
        cmd.append(f"{QUANTIZATIONS[quantization]}=*")
    _run(cmd + [str(saved_dir), str(out_dir)], what="tensorflowjs_converter")


def head_weight_names(model_json: str | os.PathLike, num_classes: int) -> list[str]:
    """The classifier head's kernel in a converted graph model: the weights whose last
    dimension is the class count and that hold more than one value per class (onnx2tf's
    MatMul kernel, in_features x classes); the per-class scale and bias vectors
    (per_class_head) stay fp16. ExportError when there is none, naming the shapes seen."""
    manifest = json.loads(Path(model_json).read_text())["weightsManifest"]
    weights = [w for group in manifest for w in group["weights"]]
    names = [
        w["name"]
        for w in weights
        if w["shape"] and int(w["shape"][-1]) == int(num_classes) and int(np.prod(w["shape"])) > int(num_classes)
    ]
    if not names:
        shapes = sorted({tuple(w["shape"]) for w in weights}, key=len)[-5:]
        raise ExportError(
            f"{model_json}: no weight has the class count ({num_classes}) as its last dimension, so the "
            f"classifier head cannot be quantised on its own (quantization mixed); shapes seen: {shapes}"
        )
    return names


def shard_count(weight_bytes: int, shard_mb: float = WEIGHT_SHARD_MB) -> int:
    """How many shards tensorflowjs_converter writes for weight_bytes of weights at shard_mb
    (it fills each shard up to the limit, in bytes)."""
    return max(1, -(-int(weight_bytes) // int(shard_mb * 1e6)))


def wilson_interval(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95 % at z = 1.96)."""
    if n <= 0:
        raise ValueError(f"a proportion needs n > 0, got {n}")
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def agreement_pass_probability(n: int, true_agreement: float, min_agreement: float) -> float:
    """P(observed agreement >= min_agreement) when each of n images agrees independently with
    probability true_agreement: the binomial CDF of the flips at floor((1 - min_agreement) n)."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    allowed = int(np.floor((1 - min_agreement) * n + 1e-9))
    q = 1.0 - true_agreement
    from math import comb

    return float(min(1.0, sum(comb(n, k) * q**k * (1 - q) ** (n - k) for k in range(allowed + 1))))


def parity_figures(
    ref: np.ndarray,
    got: np.ndarray,
    labels: list[int] | np.ndarray | None = None,
    min_corr: float = 0.995,
    min_agreement: float = 0.99,
) -> dict[str, Any]:
    """TF.js logits (got) against PyTorch's (ref), both N x classes: correlation, top-1
    agreement with its Wilson 95 % interval, and, given the true class indices, each model's
    top-1 accuracy. passed: correlation > min_corr and agreement >= min_agreement (the plan's
    6.4 bounds, on the point estimate); pass_probability_at_99_5: the chance a faithful export
    (true agreement 99.5 %) passes at this n."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape or ref.ndim != 2:
        raise ExportError(f"TF.js logits have shape {got.shape}, PyTorch {ref.shape}: the bundle is not this model")
    n = len(ref)
    agree_n = int((ref.argmax(1) == got.argmax(1)).sum())
    corr = float(np.corrcoef(ref.ravel(), got.ravel())[0, 1])
    lo, hi = wilson_interval(agree_n, n)
    out = {
        "images": n,
        "logits_correlation": corr,
        "top1_agreement": agree_n / n,
        "top1_flips": n - agree_n,
        "top1_agreement_ci95": [round(lo, 6), round(hi, 6)],
        "max_abs_diff": float(np.abs(ref - got).max()),
        "pass_probability_at_99_5": round(agreement_pass_probability(n, 0.995, min_agreement), 6),
        "passed": corr > min_corr and agree_n / n >= min_agreement,
    }
    if labels is not None:
        y = np.asarray(labels)
        if len(y) != n:
            raise ValueError(f"{len(y)} labels for {n} parity images")
        out["pytorch_test_top1"] = float((ref.argmax(1) == y).mean())
        out["exported_test_top1"] = float((got.argmax(1) == y).mean())
    return out


def preprocess(ckpt: dict, images: list[str] | np.ndarray) -> np.ndarray:
    """N x 3 x H x W float32 model input: image paths through the checkpoint's own evaluation
    preprocessing, or an array that already is that (checked against the checkpoint)."""
    from PIL import Image, UnidentifiedImageError

    from shared.evaluate.evaluation import eval_transform_for

    size = int(ckpt["image_size"])
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(
                f"sample images array has shape {images.shape}; expected N x 3 x {size} x {size} "
                "(preprocessed model input)"
            )
        return images.astype(np.float32)
    if len(images) == 0:
        raise ValueError("no sample images given")
    tf = eval_transform_for(ckpt)
    out = []
    for p in images:
        try:
            with Image.open(p) as im:
                out.append(tf(im.convert("RGB")).numpy())
        except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
            raise ValueError(f"sample image {p} cannot be read: {e}") from e
    return np.stack(out).astype(np.float32)


def unnormalize(ckpt: dict, x: np.ndarray) -> np.ndarray:
    """Model input (N x 3 x H x W, normalised) back to N x H x W x 3 RGB in [0, 1]."""
    mean = np.asarray(ckpt["mean"], np.float32)[None, :, None, None]
    std = np.asarray(ckpt["std"], np.float32)[None, :, None, None]
    return np.clip(x * std + mean, 0, 1).transpose(0, 2, 3, 1)


def bundle_size_mb(bundle: str | os.PathLike) -> float:
    """The model's download size: model.json + weight shards, in MB (10^6 bytes)."""
    b = Path(bundle)
    return sum(p.stat().st_size for p in b.iterdir() if p.suffix == ".bin" or p.name == "model.json") / 1e6


def bundle_calibration(calibration: dict | None, ckpt: dict) -> dict[str, Any]:
    """calibration.json for the bundle: the calibration step's figures (bulky per-bin
    lists left out) with the temperature and threshold the page applies; without one,
    the values recorded in the checkpoint (1.0 and 0.0 when none)."""
    cal = (
        dict(calibration)
        if calibration
        else {"temperature": float(ckpt.get("temperature", 1.0)), "threshold": float(ckpt.get("threshold", 0.0))}
    )
    for key in ("bins_before", "bins_after"):
        cal.pop(key, None)
    t, thr = cal.get("temperature", 1.0), cal.get("threshold", 0.0)
    if not isinstance(t, (int, float)) or not t > 0:
        raise ValueError(f"calibration: temperature must be a number > 0, got {t!r}")
    if not isinstance(thr, (int, float)) or not 0 <= thr <= 1:
        raise ValueError(f"calibration: threshold must be a probability in [0, 1], got {thr!r}")
    cal.update({"temperature": float(t), "threshold": float(thr), "label_below_threshold": "no concluyente"})
    return cal


def write_bundle_assets(bundle_dir: str | os.PathLike, ckpt: dict, calibration: dict | None, quantization: str) -> None:
    """Everything beside the converted model: labels.json, calibration.json,
    preprocessing.json, the demo page, tf.min.js, the WASM backend and sw.js (the page's offline
    copy, shared/export/offline.py)."""
    d = Path(bundle_dir)
    missing = [str(f) for f in [TFJS_MIN] + [WASM_DIST / n for n in WASM_FILES] if not f.exists()]
    if missing:
        raise ExportError(f"TF.js runtime files missing ({', '.join(missing)}): {NODE_SETUP_HINT}")
    size = int(ckpt["image_size"])
    write_json(d / "labels.json", list(ckpt["classes"]))
    write_json(d / "calibration.json", bundle_calibration(calibration, ckpt))
    write_json(
        d / "preprocessing.json",
        {
            "input_size": size,
            "resize_short_side": int(ckpt.get("eval_resize") or round(size * 448 / 384)),
            "crop": "center",
            "smart_crop_in_training": bool(ckpt.get("smart_crop", False)),
            "layout": "NHWC",
            "input_shape": [1, size, size, 3],
            "value_range": [0, 1],
            "mean": list(ckpt["mean"]),
            "std": list(ckpt["std"]),
            "output": "logits",
            "apply": "softmax(logits / temperature)",
            "model_name": ckpt["model_name"],
            "quantization": quantization,
            # mean/std above are what training used; where the student started from (its weights' own
            # preprocessing may differ: stage_weights warned then)
            "initial_weights": dict(ckpt.get("pretrained") or {"pretrained": False}),
        },
    )
    shutil.copyfile(WEB_DIR / "index.html", d / "index.html")
    shutil.copyfile(WEB_DIR / "backend.js", d / "backend.js")
    shutil.copyfile(TFJS_MIN, d / "tf.min.js")
    for name in WASM_FILES:
        shutil.copyfile(WASM_DIST / name, d / name)
    write_service_worker(d, WASM_FILES)  # last: it lists every file above and the model's


def choose_quantization(
    convert: Callable[[str], float],
    max_size_mb: float,
    check: Callable[[str], dict[str, Any]] | None = None,
    order: tuple[str, ...] = AUTO_ORDER,
) -> dict[str, Any]:
    """quantization "auto": the first mode of `order` (fp16, mixed, uint8: least loss first)
    whose bundle passes every gate checked here. convert(q) builds the q bundle and returns
    its size in MB (model.json + shards); check(q), when given, returns its parity figures
    (parity_figures: passed, logits_correlation, top1_agreement) and is called only for a
    bundle under the size limit. A mode is built only when every earlier one was rejected.
    When none passes, the last (the smallest) is kept and validate_export's gates fail with
    the figures. Returns quantization, quantization_reason (why this one and why each earlier
    one was rejected), auto_trials (per mode: size_mb, and the parity figures when checked,
    passed, reason) and <mode>_size_mb for every bundle built."""
    if not max_size_mb > 0:
        raise ValueError(f"quantization auto needs a size limit > 0 MB, got {max_size_mb!r}")
    trials: list[dict[str, Any]] = []
    for q in order:
        size = convert(q)
        trial: dict[str, Any] = {"mode": q, "size_mb": size}
        if not size < max_size_mb:
            trial.update(passed=False, reason=f"{q}: bundle {size} MB is not < the {max_size_mb} MB limit")
        elif check is not None:
            p = check(q)
            trial.update({k: p[k] for k in ("images", "logits_correlation", "top1_agreement", "top1_flips") if k in p})
            trial["passed"] = bool(p["passed"])
            trial["reason"] = (
                f"{q}: {size} MB, parity passed"
                if p["passed"]
                else f"{q}: {size} MB, but parity fails (correlation {p['logits_correlation']:.6f}, top-1 "
                f"agreement {p['top1_agreement']:.4f} on {p['images']} images)"
            )
        else:
            trial.update(passed=True, reason=f"{q}: {size} MB < the {max_size_mb} MB limit (parity not checked here)")
        trials.append(trial)
        if trial["passed"]:
            break
    picked = next((t for t in trials if t["passed"]), trials[-1])
    rejected = [t["reason"] for t in trials if not t["passed"]]
    if picked["passed"]:
        why = f"auto: {picked['mode']} is the first of {', '.join(order)} to pass ({picked['reason']})"
    else:
        why = f"auto: no mode passes; kept {picked['mode']}, the smallest: validate_export's gates fail"
    if rejected:
        why += "; rejected: " + "; ".join(rejected)
    return {
        "quantization": picked["mode"],
        "quantization_reason": why,
        "auto_trials": trials,
        **{f"{t['mode']}_size_mb": t["size_mb"] for t in trials},
    }


class TfjsModes:
    """One SavedModel converted to TF.js by quantization mode, each mode once, under `work`
    (tfjs_<mode>/). mixed reads the head's weight names from the fp16 bundle's model.json
    (the names do not depend on the dtype), building fp16 first when needed."""

    def __init__(self, saved_dir: str | os.PathLike, work: str | os.PathLike, num_classes: int, shard_mb: float):
        self.saved, self.work, self.num_classes, self.shard_mb = Path(saved_dir), Path(work), num_classes, shard_mb
        self.head_weights: list[str] | None = None

    def build(self, quantization: str) -> Path:
        q = CANONICAL_QUANTIZATION[check_quantization(quantization)]
        d = self.work / f"tfjs_{q}"
        if not (d / "model.json").exists():
            uint8 = None
            if q == "mixed":
                uint8 = self.head_weights = head_weight_names(self.build("fp16") / "model.json", self.num_classes)
            saved_model_to_tfjs(self.saved, d, q, self.shard_mb, uint8)
        return d

    def size_mb(self, quantization: str) -> float:
        return round(bundle_size_mb(self.build(quantization)), 6)  # 6 decimals: exact bytes


def parity_check(
    model: torch.nn.Module,
    x: np.ndarray,
    labels: list[int] | None,
    min_corr: float,
    min_agreement: float,
    backend: str = "wasm",
) -> Callable[[str | os.PathLike], dict[str, Any]]:
    """A function bundle_dir -> parity_figures of that bundle on x (N x 3 x H x W model input)
    against `model`, whose logits are computed once here."""
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(b)).numpy() for b in np.array_split(x, max(1, len(x) // 64))])
    nhwc = x.transpose(0, 2, 3, 1)

    def check(bundle_dir: str | os.PathLike) -> dict[str, Any]:
        got, _ = run_tfjs_node(bundle_dir, nhwc, backend, repeats=0, warmup=0)
        return parity_figures(ref, got, labels, min_corr, min_agreement)

    return check


def export_tfjs_bundle(
    checkpoint_path: str,
    out_dir: str,
    sample_images: list[str] | np.ndarray,
    quantization: str = "fp16",
    calibration: dict | None = None,
    max_size_mb: float | None = None,
    parity_images: list[str] | np.ndarray | None = None,
    parity_labels: list[int] | None = None,
    min_corr: float = 0.995,
    min_agreement: float = 0.99,
    shard_mb: float = WEIGHT_SHARD_MB,
) -> dict[str, Any]:
    """The checkpoint to a complete TF.js bundle in out_dir, built in a temp dir beside it
    and renamed into place (a failed export leaves no partial bundle). sample_images:
    image paths or an N x 3 x H x W array of model input, used for the ONNX check and
    onnx2tf's calibration sample. quantization "auto" needs max_size_mb and checks parity on
    parity_images (with parity_labels, their class indices) when given (choose_quantization:
    the SavedModel is converted once, then to TF.js fp16, mixed and uint8 as far as needed).
    Weight shards of at most shard_mb MB. Returns sizes and checks: quantization is the one
    used (canonical: fp16 / mixed / uint8 / none), quantization_requested what was asked,
    quantization_reason why, auto_trials (auto), <mode>_size_mb for every bundle built,
    head_uint8_weights (mixed) and shards.

    Long: the export chain (ONNX, onnx2tf, tensorflowjs_converter, assets) in order, each step with its own error.
    """
    from shared.io.checkpoint import build_model, load_checkpoint

    check_quantization(quantization, allow_auto=True)
    if quantization == AUTO and (max_size_mb is None or not max_size_mb > 0):
        raise ValueError(
            f"quantization auto needs max_size_mb > 0 (the size limit it picks against), got {max_size_mb!r}"
        )
    ckpt = load_checkpoint(checkpoint_path)
    model = build_model(ckpt)
    sample = preprocess(ckpt, sample_images[:8])  # enough for the checks; keeps export fast
    parity = None
    if quantization == AUTO and parity_images is not None and len(parity_images):
        parity = parity_check(model, preprocess(ckpt, parity_images), parity_labels, min_corr, min_agreement)
    size = int(ckpt["image_size"])
    cal = bundle_calibration(calibration, ckpt)  # bad values fail before the slow part
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    stage.chmod(0o755)
    t0 = time.time()
    try:
        with tempfile.TemporaryDirectory() as work:
            onnx_path = Path(work) / "model.onnx"
            export_onnx(model, size, onnx_path)
            onnx_diff = check_onnx(model, onnx_path, sample)
            saved = Path(work) / "saved_model"
            onnx_to_saved_model(onnx_path, saved, unnormalize(ckpt, sample))
            modes = TfjsModes(saved, work, len(ckpt["classes"]), shard_mb)
            if quantization == AUTO:
                check = (lambda q: parity(modes.build(q))) if parity else None
                choice = choose_quantization(modes.size_mb, float(max_size_mb), check)
            else:
                q = CANONICAL_QUANTIZATION[quantization]
                choice = {
                    "quantization": q,
                    f"{q}_size_mb": modes.size_mb(q),
                    "quantization_reason": f"{quantization} as configured (export.quantization)",
                }
            for f in modes.build(choice["quantization"]).iterdir():
                shutil.move(str(f), stage / f.name)
        write_bundle_assets(stage, ckpt, cal, choice["quantization"])
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    r = {
        "bundle": str(out),
        "quantization": choice["quantization"],
        "quantization_requested": quantization,
        "quantization_reason": choice["quantization_reason"],
        "model_size_mb": round(bundle_size_mb(out), 6),
        **{k: v for k, v in choice.items() if k.endswith("_size_mb") or k == "auto_trials"},
        "weight_shard_mb": float(shard_mb),
    }
    if max_size_mb is not None:
        r["max_size_mb"] = float(max_size_mb)
    if choice["quantization"] == "mixed":
        r["head_uint8_weights"] = list(modes.head_weights or [])
    return {
        **r,
        "shards": len(list(out.glob("*.bin"))),
        "onnx_max_abs_diff": onnx_diff,
        "classes": len(ckpt["classes"]),
        "image_size": size,
        "temperature": cal["temperature"],
        "threshold": cal["threshold"],
        "export_seconds": round(time.time() - t0, 1),
        "toolchain": toolchain_versions(),
    }


NODE_CHUNK = 200  # images per Node process: 200 x 224 x 224 x 3 float32 is 120 MB of input


def run_tfjs_node(
    bundle_dir: str | os.PathLike, nhwc: np.ndarray, backend: str = "cpu", repeats: int = 20, warmup: int = 3
) -> tuple[np.ndarray, dict[str, Any]]:
    """Logits of the bundle on N x H x W x 3 inputs with @tensorflow/tfjs in Node
    (shared/export/tfjs/validate.mjs, NODE_CHUNK images per process), and its latency: median
    ms of `repeats` single-image runs after `warmup` runs, in the first process (info: backend,
    median_ms (None when repeats is 0), times_ms, warmup, repeats). backend: cpu (pure JS) or wasm."""
    if backend not in ("cpu", "wasm"):
        raise ValueError(f"TF.js Node backend must be cpu or wasm, got {backend!r}")
    if not (TFJS_DIR / "node_modules" / "@tensorflow" / "tfjs").exists() or shutil.which("node") is None:
        raise ExportError(f"Node or {TFJS_DIR / 'node_modules'} missing: {NODE_SETUP_HINT}")
    nhwc = np.ascontiguousarray(nhwc, np.float32)
    logits, info = [], None
    for start in range(0, len(nhwc), NODE_CHUNK):
        first = start == 0
        out, i = _run_validate_mjs(
            bundle_dir, nhwc[start : start + NODE_CHUNK], backend, repeats if first else 0, warmup if first else 0
        )
        logits.append(out)
        info = i if first else info
    return np.concatenate(logits), info


def _run_validate_mjs(
    bundle_dir: str | os.PathLike, nhwc: np.ndarray, backend: str, repeats: int, warmup: int
) -> tuple[np.ndarray, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as work:
        nhwc.tofile(os.path.join(work, "input.bin"))
        r = subprocess.run(
            [
                "node",
                str(TFJS_DIR / "validate.mjs"),
                str(Path(bundle_dir).resolve()),
                os.path.join(work, "input.bin"),
                ",".join(map(str, nhwc.shape)),
                os.path.join(work, "out.bin"),
                str(repeats),
                backend,
                str(warmup),
            ],
            capture_output=True,
            text=True,
            cwd=TFJS_DIR,
        )
        if r.returncode != 0:
            raise ExportError(f"TF.js in Node failed on {bundle_dir}: {r.stderr[-3000:]}")
        info = json.loads(r.stdout.strip().splitlines()[-1])
        logits = np.fromfile(os.path.join(work, "out.bin"), dtype=np.float32).reshape(len(nhwc), -1)
    return logits, info


# Where the latency gate's figure comes from: a real browser (the plan's "< 5 s on CPU
# (browser)"), or, only when asked for, TF.js WASM in Node (not a browser figure).
LATENCY_RUNTIMES = {
    # the key keeps its old name (configs say it); the page picks its backend as people get it
    "chromium-wasm": "headless Chromium, the demo page's own backend choice (backend.js)",
    "node-wasm": "Node (not a browser), TF.js WASM backend",
}
DEFAULT_CHROMIUM = "/usr/bin/chromium"


def chromium_path(chromium: str | os.PathLike | None = None) -> Path:
    """The Chromium binary: `chromium`, else $CHROMIUM, else Debian's /usr/bin/chromium."""
    return Path(chromium or os.environ.get("CHROMIUM") or DEFAULT_CHROMIUM)


class _BundleHandler(IsolatedBundleHandler):
    """Serves the bundle read-only and cross-origin isolated, as `make demo` does, plus the
    latency page at /__latency__.html (from shared/export/tfjs: the bundle is never written to)."""

    def translate_path(self, path: str) -> str:
        if urlsplit(path).path == "/__latency__.html":
            return str(TFJS_DIR / "bench_page.html")
        return super().translate_path(path)


def browser_latency(
    bundle_dir: str | os.PathLike,
    runs: int = 20,
    warmup: int = 3,
    backend: str | None = None,
    chromium: str | os.PathLike | None = None,
    timeout_s: float = 600,
) -> dict[str, Any]:
    """Single-image latency of the bundle in headless Chromium (playwright-core driving the
    system Chromium: shared/export/tfjs/bench_page.mjs + bench_page.html), the bundle served over
    localhost, cross-origin isolated as `make demo` serves it, with its own tf.min.js, WASM
    files and backend.js: the cold start (navigation to the first prediction), `warmup` runs,
    then the median ms of `runs` (predict + read back of a 1 x H x W x 3 input). backend: None
    (the page's own choice, as people get it) or one forced (wasm, webgl, cpu). ExportError
    naming what is missing when Chromium, Node or playwright-core is not there, or when the page
    fails. Returns median_ms, times_ms, cold_start_ms, runs, warmup, backend, reason, runtime,
    browser, tfjs, simd, threads, threads_count, cross_origin_isolated."""
    exe = chromium_path(chromium)
    bundle = Path(bundle_dir)
    if runs < 1 or warmup < 0:
        raise ValueError(f"latency runs must be >= 1 and warm-up >= 0, got {runs} / {warmup}")
    if not exe.is_file():
        raise ExportError(
            f"Chromium not found at {exe}: the browser latency (latency_runtime='chromium-wasm') "
            "needs a Chromium binary (Debian's chromium package; set CHROMIUM to another path). "
            "The export image has none unless images/export/Dockerfile installs it; "
            "latency_runtime='node-wasm' measures TF.js WASM in Node instead (reported as Node)"
        )
    if shutil.which("node") is None or not (TFJS_DIR / "node_modules" / "playwright-core").exists():
        raise ExportError(
            f"Node or {TFJS_DIR / 'node_modules' / 'playwright-core'} missing (the browser latency "
            f"drives Chromium with playwright-core): {NODE_SETUP_HINT}"
        )
    missing = [
        n
        for n in ("model.json", "preprocessing.json", "tf.min.js", "backend.js") + WASM_FILES
        if not (bundle / n).exists()
    ]
    if missing:
        raise ExportError(f"{bundle} cannot run in a browser: {', '.join(missing)} missing")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_BundleHandler, directory=str(bundle.resolve())))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/__latency__.html?runs={int(runs)}&warmup={int(warmup)}" + (
            f"&backend={backend}" if backend else ""
        )
        env = {**os.environ, "CHROMIUM": str(exe), "BENCH_TIMEOUT_MS": str(int(timeout_s * 1000))}
        try:
            r = subprocess.run(
                ["node", "bench_page.mjs", url],
                cwd=TFJS_DIR,
                capture_output=True,
                text=True,
                timeout=timeout_s + 60,
                env=env,
            )
        except subprocess.TimeoutExpired as e:
            raise ExportError(f"the browser latency run took over {timeout_s + 60:.0f} s on {bundle}") from e
    finally:
        httpd.shutdown()
        httpd.server_close()
    if r.returncode != 0:
        raise ExportError(f"the browser latency run failed on {bundle} (Chromium {exe}): {r.stderr[-2000:]}")
    try:
        res = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as e:
        raise ExportError(
            f"the browser latency run printed no result on {bundle}: {(r.stdout + r.stderr)[-2000:]}"
        ) from e
    if res.get("error"):
        raise ExportError(f"the latency page failed in Chromium on {bundle}: {res['error']}")
    if backend and res.get("backend") != backend:
        raise ExportError(f"Chromium ran TF.js on {res.get('backend')!r}, not the {backend!r} backend asked for")
    return {**res, "median_ms": float(np.median(res["times_ms"])), "runtime": f"chromium-{res.get('backend')}"}


COMPARED_BACKENDS = ("wasm", "webgl")  # what a browser can run the model on besides pure-JS cpu
MAX_DEFAULT_VS_FASTEST = 1.5  # the page's own choice may be at most this much slower than the fastest


def page_latency(
    bundle_dir: str | os.PathLike, runs: int = 20, warmup: int = 3, chromium: str | os.PathLike | None = None
) -> dict[str, Any]:
    """The page as it opens (browser_latency with no forced backend), and each of
    COMPARED_BACKENDS forced: `by_backend` {name: median ms, or the error}, the fastest, and
    default_vs_fastest (the page's median over the fastest's), which the latency gate bounds."""
    page = browser_latency(bundle_dir, runs, warmup, None, chromium)
    by_backend: dict[str, Any] = {}
    for name in COMPARED_BACKENDS:
        if name == page["backend"]:
            by_backend[name] = page["median_ms"]
            continue
        try:
            by_backend[name] = browser_latency(bundle_dir, runs, warmup, name, chromium)["median_ms"]
        except ExportError as e:  # e.g. no WebGL at all: not available, so not the fastest
            by_backend[name] = f"unavailable: {str(e)[:200]}"
    times = {k: v for k, v in by_backend.items() if isinstance(v, float)}
    fastest = min(times, key=times.get)
    return {
        **page,
        "by_backend_ms": by_backend,
        "fastest_backend": fastest,
        "default_vs_fastest": page["median_ms"] / times[fastest] if times[fastest] > 0 else 1.0,
    }


def measure_latency(
    bundle_dir: str | os.PathLike,
    nhwc: np.ndarray,
    runtime: str = "chromium-wasm",
    runs: int = 20,
    warmup: int = 3,
    chromium: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The latency gate's figure: single-image median ms after warm-up, in headless Chromium
    on the backend the page picks as it opens, with each backend's figure beside it
    (runtime chromium-wasm: page_latency) or, only when the caller asks for it, TF.js
    WASM in Node (node-wasm: on nhwc's first image). The result says which
    runtime measured it (runtime, runtime_label, browser)."""
    if runtime not in LATENCY_RUNTIMES:
        raise ValueError(f"latency_runtime must be one of {sorted(LATENCY_RUNTIMES)}, got {runtime!r}")
    if runtime == "chromium-wasm":
        res = page_latency(bundle_dir, runs, warmup, chromium)
    else:
        _, info = run_tfjs_node(bundle_dir, np.asarray(nhwc, np.float32)[:1], "wasm", runs, warmup)
        res = {
            **info,
            "median_ms": float(np.median(info["times_ms"])),
            "runs": runs,
            "runtime": "node-wasm",
            "browser": None,
        }
    return {**res, "runtime_label": LATENCY_RUNTIMES[runtime]}


_OPERATORS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq}


def gate(
    name: str, label: str, value: Any, op: str, bound: Any, unit: str = "", note: str | None = None
) -> dict[str, Any]:
    """One row of the gate table: {gate, value, operator, bound, unit, passed, reason}.
    passed = value <op> bound; a value of None (not measured) fails. reason (None when
    passed) reads "<label> <value> is not <op> <bound> (<note>)", or "<label>: not measured
    (<note>)", or for a yes/no check "<note>"."""
    passed = value is not None and bool(_OPERATORS[op](value, bound))
    reason = None
    if not passed:
        u = f" {unit}" if unit else ""
        if value is None:
            reason = f"{label}: not measured ({note})"
        elif isinstance(value, bool):
            reason = note or f"{label}: {value} is not {op} {bound}"
        else:
            reason = f"{label} {value:.6g}{u} is not {op} {bound:g}{u}" + (f" ({note})" if note else "")
    return {
        "gate": name,
        "value": value,
        "operator": op,
        "bound": bound,
        "unit": unit,
        "passed": passed,
        "reason": reason,
    }


def validate_tfjs_bundle(
    bundle_dir: str,
    checkpoint_path: str,
    images: list[str] | np.ndarray,
    min_corr: float = 0.995,
    min_agreement: float = 0.99,
    max_size_mb: float = 150.0,
    repeats: int = 20,
    backend: str = "wasm",
    max_latency_ms: float = 5000.0,
    latency_runtime: str = "chromium-wasm",
    latency_runs: int = 20,
    latency_warmup: int = 3,
    chromium: str | os.PathLike | None = None,
    labels: list[int] | None = None,
    test_images: int | None = None,
) -> dict[str, Any]:
    """Run the bundle with the real @tensorflow/tfjs in Node (backend wasm, what a CPU-only
    browser runs; cpu = pure JS, ~2 s an image at 9,000 classes) on `images` (paths, or an
    N x 3 x H x W array of model input; labels: their class indices, for each model's top-1;
    test_images: how many the test split holds, to label a sample under PARITY_MIN_IMAGES)
    and compare with the PyTorch model (parity_figures), then gate it
    (plan 6.4; strict like the plan): logits correlation > min_corr, top-1 agreement
    >= min_agreement, model size < max_size_mb, single-image latency median < max_latency_ms
    (measure_latency: headless Chromium + WASM by default; latency_runtime="node-wasm" only
    when asked; a latency that cannot be measured fails its gate with the reason), labels.json
    and preprocessing.json matching the checkpoint. `gates` is the table (gate, value,
    operator, bound, unit, passed, reason), `passed` + `reasons` the verdict. The Node
    parity run's own latency (backend, `repeats` runs) stays as node_latency_ms_median.

    Long: the phase 6.3 checks (Node load, parity, size, latency) and their report, in the plan's order.
    """
    from shared.io.checkpoint import build_model, load_checkpoint

    if latency_runtime not in LATENCY_RUNTIMES:
        raise ValueError(f"latency_runtime must be one of {sorted(LATENCY_RUNTIMES)}, got {latency_runtime!r}")
    bundle = Path(bundle_dir)
    for name in ("model.json", "labels.json", "preprocessing.json", "calibration.json"):
        if not (bundle / name).exists():
            raise ExportError(f"{bundle} is not a complete TF.js bundle: {name} missing")
    ckpt = load_checkpoint(checkpoint_path)
    model = build_model(ckpt)
    x = preprocess(ckpt, images)
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(b)).numpy() for b in np.array_split(x, max(1, len(x) // 64))])
    nhwc = x.transpose(0, 2, 3, 1)
    got, info = run_tfjs_node(bundle, nhwc, backend, repeats)
    par = parity_figures(ref, got, labels, min_corr, min_agreement)
    corr, agree = par["logits_correlation"], par["top1_agreement"]
    size = bundle_size_mb(bundle)
    try:
        lat, lat_error = measure_latency(bundle, nhwc, latency_runtime, latency_runs, latency_warmup, chromium), None
    except ExportError as e:
        lat, lat_error = None, str(e)
    latency = lat["median_ms"] if lat else None
    labels_ok = json.loads((bundle / "labels.json").read_text()) == list(ckpt["classes"])
    size_ok = json.loads((bundle / "preprocessing.json").read_text()).get("input_size") == int(ckpt["image_size"])
    gates = [
        gate("logits_correlation", "logits correlation", corr, ">", float(min_corr), note="TF.js vs PyTorch"),
        gate(
            "top1_agreement",
            "top-1 agreement",
            agree,
            ">=",
            float(min_agreement),
            note=f"TF.js vs PyTorch, {par['top1_flips']} flips in {len(x)} images, 95 % Wilson interval "
            f"{par['top1_agreement_ci95']}",
        ),
        gate("model_size_mb", "model size", size, "<", float(max_size_mb), "MB", note="model.json + weight shards"),
        gate(
            "latency_ms_median",
            "latency median",
            latency,
            "<",
            float(max_latency_ms),
            "ms",
            note=lat_error
            or f"{LATENCY_RUNTIMES[latency_runtime]}, median of {latency_runs} single-image runs "
            f"after {lat['warmup']} warm-up",
        ),
        *(
            [
                gate(
                    "default_backend_vs_fastest",
                    "page's backend vs the fastest",
                    lat["default_vs_fastest"],
                    "<=",
                    MAX_DEFAULT_VS_FASTEST,
                    "x",
                    note=f"the page picked {lat['backend']} ({lat.get('reason')}); per backend "
                    f"{lat['by_backend_ms']} ms",
                )
            ]
            if lat and "default_vs_fastest" in lat
            else []
        ),
        gate(
            "labels_match_checkpoint",
            "labels.json",
            labels_ok,
            "==",
            True,
            note="labels.json does not match the checkpoint's class list",
        ),
        gate(
            "input_size_matches_checkpoint",
            "preprocessing.json",
            size_ok,
            "==",
            True,
            note="preprocessing.json input_size does not match the checkpoint's image_size",
        ),
    ]
    reasons = [g["reason"] for g in gates if not g["passed"]]
    return {
        "passed": not reasons,
        "reasons": reasons,
        "gates": gates,
        **{k: v for k, v in par.items() if k != "passed"},
        "parity_sample": parity_sample_label(len(x), test_images),
        "model_size_mb": size,
        "max_size_mb": float(max_size_mb),
        "student_under_20mb": size < 20.0,
        "latency_ms_median": latency,
        "max_latency_ms": float(max_latency_ms),
        "latency_runtime": latency_runtime,
        "latency_runtime_label": LATENCY_RUNTIMES[latency_runtime],
        "latency_backend": lat["backend"] if lat else None,
        "latency_runs": latency_runs,
        "latency_warmup": lat["warmup"] if lat else latency_warmup,
        "latency_times_ms": lat["times_ms"] if lat else None,
        "latency_browser": lat.get("browser") if lat else None,
        "latency_wasm_simd": lat.get("simd") if lat else None,
        "latency_wasm_threads": lat.get("threads") if lat else None,
        "latency_error": lat_error,
        "latency_backend_reason": lat.get("reason") if lat else None,
        "latency_cold_start_ms": lat.get("cold_start_ms") if lat else None,
        "latency_by_backend_ms": lat.get("by_backend_ms") if lat else None,
        "latency_default_vs_fastest": lat.get("default_vs_fastest") if lat else None,
        "latency_cross_origin_isolated": lat.get("cross_origin_isolated") if lat else None,
        "latency_wasm_threads_count": lat.get("threads_count") if lat else None,
        "node_backend": info["backend"],  # the parity run's backend
        "node_latency_ms_median": info["median_ms"],
        "node_latency_repeats": repeats,
        "pytorch_top1_classes": [ckpt["classes"][i] for i in ref.argmax(1)],
    }


def parity_sample_label(images: int, test_images: int | None) -> str:
    """Says whether the parity sample is plan-sized: >= PARITY_MIN_IMAGES, or all of a smaller
    test split; otherwise "local" (a smoke-test sample the manifest must not pass off as the plan's)."""
    if images >= PARITY_MIN_IMAGES:
        return f"plan: {images} images (>= {PARITY_MIN_IMAGES})"
    if test_images is not None and images >= test_images:
        return f"plan: all {images} test images (fewer than {PARITY_MIN_IMAGES})"
    of = f" of {test_images} test images" if test_images is not None else ""
    return f"local: {images} images{of} (the plan's parity needs >= {PARITY_MIN_IMAGES}, or all of test)"


def validation_summary(report: dict[str, Any], uri: str, bundle_metadata: dict | None = None) -> dict[str, Any]:
    """What validate_export returns (the training manifest's export figures): the bundle's
    uri and quantization choice (from the export step's metadata), the parity figures, the
    latency with the runtime that measured it, and the gate table."""
    meta = dict(bundle_metadata or {})  # export_tfjs's metadata: run_export's result
    out = {
        "status": "completed",
        "uri": uri,
        "quantization": meta.get(K.QUANTIZATION, ""),
        "quantization_reason": meta.get(K.QUANTIZATION_REASON, ""),
    }
    built = (K.QUANTIZATION_REQUESTED, K.FP16_SIZE_MB, K.MIXED_SIZE_MB, K.UINT8_SIZE_MB, K.AUTO_TRIALS)
    out.update({k: meta[k] for k in (*built, K.SHARDS, K.WEIGHT_SHARD_MB, "head_uint8_weights") if k in meta})
    out.update({k: report[k] for k in (K.PYTORCH_TEST_TOP1, K.EXPORTED_TEST_TOP1) if k in report})
    out.update(
        {
            "model_size_mb": report["model_size_mb"],
            "max_size_mb": report["max_size_mb"],
            "correlation": report["logits_correlation"],
            "images": report["images"],
            K.PARITY_SAMPLE: report[K.PARITY_SAMPLE],
            "top1_agreement": report["top1_agreement"],
            K.TOP1_FLIPS: report[K.TOP1_FLIPS],
            K.TOP1_AGREEMENT_CI95: report[K.TOP1_AGREEMENT_CI95],
            "pass_probability_at_99_5": report["pass_probability_at_99_5"],
            "max_abs_diff": report["max_abs_diff"],
            "passed": report["passed"],
            "latency_ms_median": report["latency_ms_median"],
            "max_latency_ms": report["max_latency_ms"],
            "latency_runtime": report["latency_runtime"],
            "latency_backend": report["latency_backend"],
            "latency_browser": report["latency_browser"],
            "node_latency_ms_median": report["node_latency_ms_median"],
            "gates": report["gates"],
            "toolchain": dict(meta.get(K.TOOLCHAIN) or {}),
        }
    )  # the converters' versions
    return _without_none(out)


def _without_none(obj: Any) -> Any:
    """KFP parameters (this dict goes to the manifest step as one) cannot hold None: absent
    values are left out of mappings and become "" in lists."""
    if isinstance(obj, dict):
        return {k: _without_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return ["" if v is None else _without_none(v) for v in obj]
    return obj


def sample_test_records(records: list[dict], n: int) -> list[dict]:
    """A fixed, class-spread set of n test records (sorted by image id): one per class first,
    then filled up in id order."""
    ordered = sorted(records, key=lambda r: str(r["image_id"]))
    first, seen = [], set()
    for i, r in enumerate(ordered):
        if r["taxon"] not in seen:
            seen.add(r["taxon"])
            first.append(i)
    taken = set(first)
    order = first + [i for i in range(len(ordered)) if i not in taken]
    return [ordered[i] for i in order[:n]]


def sample_image_paths(records: list[dict], cache_dir: str, n: int) -> list[str]:
    """The cached images of sample_test_records(records, n)."""
    from shared.data.cache_paths import resolve

    return [str(resolve(cache_dir, r)) for r in sample_test_records(records, n)]


def parity_sample(records: list[dict], cache_dir: str, n: int, classes: list[str]) -> tuple[list[str], list[int]]:
    """The parity images (sample_test_records: n of them, all of test when fewer) and their
    class indices in `classes` (-1 for a taxon the model does not know: never counted correct)."""
    from shared.data.cache_paths import resolve

    index = {c: i for i, c in enumerate(classes)}
    picked = sample_test_records(records, n)
    return [str(resolve(cache_dir, r)) for r in picked], [index.get(r["taxon"], -1) for r in picked]


def run_export(
    checkpoint_path: str,
    calibration_json: str,
    test_records: list[dict],
    cache_dir: str,
    out_dir: str,
    quantization: str,
    n_images: int = PARITY_MIN_IMAGES,
    max_size_mb: float | None = None,
    min_corr: float = 0.995,
    min_agreement: float = 0.99,
    shard_mb: float = WEIGHT_SHARD_MB,
) -> dict[str, Any]:
    """The export step: the bundle from a checkpoint, its calibration.json and test images
    (max_size_mb: the limit quantization "auto" picks against; n_images test images, all of
    test when fewer, are auto's parity sample, the first 8 the ONNX check's and onnx2tf's)."""
    from shared.io.checkpoint import load_checkpoint

    if not Path(calibration_json).is_file():
        raise FileNotFoundError(f"calibration file not found: {calibration_json}")
    cal = json.loads(Path(calibration_json).read_text())
    paths, labels = parity_sample(test_records, cache_dir, n_images, list(load_checkpoint(checkpoint_path)["classes"]))
    r = export_tfjs_bundle(
        checkpoint_path,
        out_dir,
        paths[:8],
        quantization,
        cal,
        max_size_mb,
        parity_images=paths if quantization == AUTO else None,
        parity_labels=labels,
        min_corr=min_corr,
        min_agreement=min_agreement,
        shard_mb=shard_mb,
    )
    return {**r, "parity_sample": parity_sample_label(len(paths), len(test_records))}
