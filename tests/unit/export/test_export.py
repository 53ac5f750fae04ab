"""The export chain with the real tools: ONNX (onnxruntime), onnx2tf, tensorflowjs_converter
and @tensorflow/tfjs in Node (cpu and wasm backends). One tiny model, converted once per
module (fp16, mixed and uint8), and once more with a shard size that forces several shards.
The demo page in Chromium is tests/unit/export/test_demo_page.py; the phase 6.4 gates (auto
quantization, size, browser latency) tests/unit/export/test_export_gate.py."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.data.sample_data import render_species_image
from shared.export.tfjs import (
    TFJS_DIR,
    WEIGHT_SHARD_MB,
    ExportError,
    check_onnx,
    export_bin,
    export_onnx,
    export_tfjs_bundle,
    head_weight_names,
    preprocess,
    shard_count,
    validate_tfjs_bundle,
)
from shared.io.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint

HAVE_CONVERTERS = (export_bin() / "onnx2tf").exists() and (export_bin() / "tensorflowjs_converter").exists()
HAVE_TFJS = (TFJS_DIR / "node_modules" / "@tensorflow" / "tfjs").exists()
needs_tools = pytest.mark.skipif(
    not (HAVE_CONVERTERS and HAVE_TFJS),
    reason="converter env or shared/export/tfjs/node_modules missing: run scripts/setup_export_env.sh",
)
CLASSES = [f"Species {i}" for i in range(6)]
CALIBRATION = {
    "temperature": 1.5,
    "threshold": 0.3,
    "applied": True,
    "ece_before": 0.2,
    "ece_after": 0.04,
    "coverage": 0.85,
    "bins_before": [{"lo": 0, "hi": 1, "count": 1, "accuracy": 1, "confidence": 1}],
}


def _tiny_model(seed: int, num_classes: int = len(CLASSES)):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("test_efficientnet", pretrained=False, num_classes=num_classes)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("export")
    save_checkpoint(
        d / "student.pt", _tiny_model(0), model_name="test_efficientnet", classes=CLASSES, image_size=32, eval_resize=36
    )
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        p = d / f"img{i}.png"
        render_species_image(i % 6, rng, (48, 40)).save(p)
        paths.append(str(p))
    return d, paths


@pytest.fixture(scope="module")
def bundles(tiny_checkpoint):
    if not (HAVE_CONVERTERS and HAVE_TFJS):
        pytest.skip("converter environment not built")
    d, paths = tiny_checkpoint
    ck = load_checkpoint(d / "student.pt")
    # fp16 from image paths; uint8 through its alias "int8" and from a preprocessed array
    return {
        "fp16": export_tfjs_bundle(str(d / "student.pt"), str(d / "bundle_fp16"), paths, "fp16", CALIBRATION),
        "uint8": export_tfjs_bundle(
            str(d / "student.pt"), str(d / "bundle_uint8"), preprocess(ck, paths[:4]), "int8", CALIBRATION
        ),
        "mixed": export_tfjs_bundle(str(d / "student.pt"), str(d / "bundle_mixed"), paths, "mixed", CALIBRATION),
    }


def test_onnx_matches_pytorch(tiny_checkpoint, tmp_path):
    import onnx

    d, paths = tiny_checkpoint
    ck = load_checkpoint(d / "student.pt")
    model = build_model(ck)
    export_onnx(model, 32, tmp_path / "m.onnx")
    m = onnx.load(str(tmp_path / "m.onnx"))
    assert m.opset_import[0].version == 13
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]  # static batch
    assert check_onnx(model, tmp_path / "m.onnx", preprocess(ck, paths[:4])) < 1e-3
    with pytest.raises(ExportError, match="ONNX output differs"):
        check_onnx(_tiny_model(1), tmp_path / "m.onnx", preprocess(ck, paths[:4]))


def _weight_dtypes(bundle: Path) -> set:
    manifest = json.loads((bundle / "model.json").read_text())["weightsManifest"]
    return {
        w.get("quantization", {}).get("dtype", w["dtype"])
        for g in manifest
        for w in g["weights"]
        if w["dtype"] == "float32"
    }


@needs_tools
def test_bundles_fp16_and_uint8(bundles):
    fp16, u8 = bundles["fp16"], bundles["uint8"]
    b = Path(fp16["bundle"])
    assert (b / "model.json").exists() and list(b.glob("*.bin"))
    assert json.loads((b / "labels.json").read_text()) == CLASSES
    cal = json.loads((b / "calibration.json").read_text())
    assert cal["temperature"] == 1.5 and cal["threshold"] == 0.3 and cal["ece_after"] == 0.04
    assert "bins_before" not in cal and cal["label_below_threshold"] == "no concluyente"
    pre = json.loads((b / "preprocessing.json").read_text())
    assert pre["layout"] == "NHWC" and pre["input_shape"] == [1, 32, 32, 3] and pre["resize_short_side"] == 36
    assert pre["value_range"] == [0, 1] and pre["mean"] == [0.485, 0.456, 0.406]
    for f in ("index.html", "tf.min.js", "tf-backend-wasm.min.js", "tfjs-backend-wasm-simd.wasm"):
        assert (b / f).exists(), f
    # the weights really are quantized as asked
    assert _weight_dtypes(b) == {"float16"} and _weight_dtypes(Path(u8["bundle"])) == {"uint8"}
    assert u8["model_size_mb"] < fp16["model_size_mb"]
    # the quantization used, canonical (int8 is uint8), with what was asked and why
    assert (u8["quantization"], u8["quantization_requested"]) == ("uint8", "int8")
    assert u8["quantization_reason"] == "int8 as configured (export.quantization)"
    assert fp16["fp16_size_mb"] == fp16["model_size_mb"] and "uint8_size_mb" not in fp16
    assert json.loads((Path(u8["bundle"]) / "preprocessing.json").read_text())["quantization"] == "uint8"
    assert not list(b.parent.glob(".bundle-*"))  # the staging dirs are gone
    # the converter environment's versions travel with the bundle (for the training manifest)
    assert fp16["toolchain"]["tensorflowjs"] and fp16["toolchain"]["onnx2tf"] and fp16["toolchain"]["tensorflow"]


def _weights(bundle: Path) -> list[dict]:
    return [w for g in json.loads((bundle / "model.json").read_text())["weightsManifest"] for w in g["weights"]]


@needs_tools
def test_mixed_quantises_only_the_classifier_head_to_uint8(bundles):
    r, b = bundles["mixed"], Path(bundles["mixed"]["bundle"])
    head = set(r["head_uint8_weights"])
    dtypes = {w["name"]: w.get("quantization", {}).get("dtype") for w in _weights(b) if w["dtype"] == "float32"}
    assert len(head) == 1 and {dtypes[n] for n in head} == {"uint8"}  # the head's kernel only
    assert {dt for n, dt in dtypes.items() if n not in head} == {"float16"}  # everything else fp16
    kernel = next(w for w in _weights(b) if w["name"] in head)
    assert kernel["shape"][-1] == len(CLASSES) and kernel["shape"][0] > 1
    # per_class_head: every class on [-1, 1], so the one uint8 range is each class's own
    assert -1.01 < kernel["quantization"]["min"] <= -0.99 and kernel["quantization"]["scale"] < 2.02 / 255
    vectors = [w for w in _weights(b) if w["name"] not in head and w["shape"][-1] == len(CLASSES)]
    # the per-class scale, and the bias unless it is all zero (timm's init: the converter drops it)
    assert 1 <= len(vectors) <= 2 and {dtypes[w["name"]] for w in vectors} == {"float16"}
    assert r["quantization"] == "mixed" and r["mixed_size_mb"] == r["model_size_mb"]
    assert json.loads((b / "preprocessing.json").read_text())["quantization"] == "mixed"
    assert head_weight_names(b / "model.json", len(CLASSES)) == r["head_uint8_weights"]
    with pytest.raises(ExportError, match="no weight has the class count \\(9000\\)"):
        head_weight_names(b / "model.json", 9000)


def test_a_9000_class_student_bundle_has_at_most_6_shards():
    """Chromium stalled for good on the 7th shard of a 7-shard model served no-store; the
    converter's default 4 MiB shards give the 9,000-class fp16 bundle (~27.5 MB) exactly 7."""
    import timm

    n = sum(p.numel() for p in timm.create_model("mobilenetv2_100", num_classes=9000).parameters())
    fp16_bytes = 2 * n
    assert 27e6 < fp16_bytes < 28e6
    assert shard_count(fp16_bytes, 4 * 1024 * 1024 / 1e6) == 7  # the converter's default: the stall
    assert shard_count(fp16_bytes, WEIGHT_SHARD_MB) == 1
    assert shard_count(4 * n, WEIGHT_SHARD_MB) == 2  # even float32 (55 MB)
    assert shard_count(150e6, WEIGHT_SHARD_MB) <= 6  # anything up to the 150 MB size bound


@needs_tools
def test_the_converter_shards_as_shard_count_says(bundles, tiny_checkpoint):
    d, paths = tiny_checkpoint
    weight_bytes = sum(p.stat().st_size for p in Path(bundles["fp16"]["bundle"]).glob("*.bin"))
    assert bundles["fp16"]["shards"] == 1 and bundles["fp16"]["weight_shard_mb"] == WEIGHT_SHARD_MB
    shard_mb = weight_bytes / 3.5 / 1e6  # forces 4 shards, the same arithmetic as 27.5 MB at 7.9 MB
    r = export_tfjs_bundle(str(d / "student.pt"), str(d / "bundle_shards"), paths, "fp16", shard_mb=shard_mb)
    shards = sorted(Path(r["bundle"]).glob("*.bin"))
    assert r["shards"] == len(shards) == shard_count(weight_bytes, shard_mb) == 4
    assert max(p.stat().st_size for p in shards) <= int(shard_mb * 1e6)
    assert sum(p.stat().st_size for p in shards) == weight_bytes


@needs_tools
@pytest.mark.parametrize("q,backend", [("fp16", "cpu"), ("uint8", "wasm"), ("mixed", "wasm")])
def test_tfjs_in_node_matches_pytorch(bundles, tiny_checkpoint, q, backend):
    d, paths = tiny_checkpoint
    r = validate_tfjs_bundle(
        bundles[q]["bundle"],
        str(d / "student.pt"),
        paths,
        repeats=5,
        backend=backend,
        latency_runtime="node-wasm",
        latency_runs=3,
    )
    assert r["logits_correlation"] > 0.995 and r["top1_agreement"] >= 0.99, r
    assert r["passed"] and not r["reasons"] and r["node_backend"] == backend
    assert r["latency_runtime"] == "node-wasm" and 0 < r["latency_ms_median"] < 5000
    assert r["node_latency_ms_median"] > 0 and r["student_under_20mb"] and r["images"] == 12
    assert r["max_abs_diff"] < (0.02 if q == "fp16" else 0.5)


@needs_tools
def test_validation_fails_for_another_model(bundles, tiny_checkpoint, tmp_path):
    d, paths = tiny_checkpoint
    save_checkpoint(
        tmp_path / "other.pt",
        _tiny_model(7),
        model_name="test_efficientnet",
        classes=[c.upper() for c in CLASSES],
        image_size=32,
        eval_resize=36,
    )
    r = validate_tfjs_bundle(
        bundles["fp16"]["bundle"],
        str(tmp_path / "other.pt"),
        paths,
        repeats=1,
        latency_runtime="node-wasm",
        latency_runs=1,
    )
    assert not r["passed"] and r["logits_correlation"] < 0.995
    assert any("correlation" in x for x in r["reasons"]) and any("labels.json" in x for x in r["reasons"])
    r = validate_tfjs_bundle(
        bundles["fp16"]["bundle"],
        str(d / "student.pt"),
        paths,
        repeats=1,
        max_size_mb=1e-4,
        latency_runtime="node-wasm",
        latency_runs=1,
    )
    assert not r["passed"] and any("model size" in x for x in r["reasons"])


def test_bad_inputs_give_clear_errors(tiny_checkpoint, tmp_path, monkeypatch):
    d, paths = tiny_checkpoint
    ckpt = str(d / "student.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        export_tfjs_bundle(str(tmp_path / "missing.pt"), str(tmp_path / "b"), paths)
    save_checkpoint(
        tmp_path / "wrong.pt", _tiny_model(0, 3), model_name="test_efficientnet", classes=CLASSES, image_size=32
    )
    with pytest.raises(CheckpointError, match="6 classes"):
        export_tfjs_bundle(str(tmp_path / "wrong.pt"), str(tmp_path / "b"), paths)
    with pytest.raises(ValueError, match="quantization"):
        export_tfjs_bundle(ckpt, str(tmp_path / "b"), paths, "int4")
    with pytest.raises(ValueError, match="cannot be read"):
        export_tfjs_bundle(ckpt, str(tmp_path / "b"), [str(tmp_path / "nope.jpg")])
    with pytest.raises(ValueError, match="N x 3 x 32 x 32"):
        export_tfjs_bundle(ckpt, str(tmp_path / "b"), np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="threshold must be a probability"):
        export_tfjs_bundle(ckpt, str(tmp_path / "b"), paths, "fp16", {"temperature": 1.0, "threshold": 3})
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        export_tfjs_bundle(ckpt, str(tmp_path / "b"), paths, "fp16", {"temperature": 0, "threshold": 0.5})
    monkeypatch.setenv("PLANTID_EXPORT_BIN", str(tmp_path / "no-tools"))
    with pytest.raises(ExportError, match=r"onnx2tf not found .*setup_export_env\.sh"):
        export_tfjs_bundle(ckpt, str(tmp_path / "b"), paths)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".bundle-*"))
    with pytest.raises(ExportError, match="model.json missing"):
        validate_tfjs_bundle(str(tmp_path), ckpt, paths)
    with pytest.raises(ValueError, match="latency_runtime must be one of"):
        validate_tfjs_bundle(str(tmp_path), ckpt, paths, latency_runtime="firefox")
