"""The export chain with the real tools: ONNX (onnxruntime), onnx2tf, tensorflowjs_converter,
@tensorflow/tfjs in Node, and the demo page in headless Chromium. One tiny model,
converted once per module."""
import json
import shutil
import socket
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.checkpoint import CheckpointError, save_checkpoint
from shared.export import (TFJS_DIR, ExportError, export_bin, export_onnx, check_onnx, export_tfjs_bundle,
                           preprocess, validate_tfjs_bundle)
from shared.sample_data import render_species_image

needs_tools = pytest.mark.skipif(
    not (export_bin() / "onnx2tf").exists() or not (TFJS_DIR / "node_modules" / "@tensorflow" / "tfjs").exists(),
    reason="converter environment not built (make setup runs scripts/setup_export_env.sh)")
CLASSES = [f"Species {i}" for i in range(6)]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import timm

    d = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=len(CLASSES))
    save_checkpoint(d / "student.pt", model, model_name="test_efficientnet", classes=CLASSES, image_size=32,
                    eval_resize=36, temperature=1.5, threshold=0.3)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        p = d / f"img{i}.png"
        render_species_image(i % 6, rng, (36, 36)).save(p)  # already at the resize: no resampling in the page
        paths.append(str(p))
    return d, paths


@pytest.fixture(scope="module")
def bundles(tiny_checkpoint):
    if not (export_bin() / "onnx2tf").exists():
        pytest.skip("converter environment not built")
    d, paths = tiny_checkpoint
    return {q: export_tfjs_bundle(str(d / "student.pt"), str(d / f"bundle_{q}"), paths, q) for q in ("fp16", "uint8")}


def test_onnx_matches_pytorch(tiny_checkpoint, tmp_path):
    import timm

    d, paths = tiny_checkpoint
    from shared.checkpoint import build_model, load_checkpoint

    ck = load_checkpoint(d / "student.pt")
    model = build_model(ck)
    export_onnx(model, 32, tmp_path / "m.onnx")
    assert check_onnx(model, tmp_path / "m.onnx", preprocess(ck, paths[:4])) < 1e-3
    other = timm.create_model("test_efficientnet", pretrained=False, num_classes=len(CLASSES))
    with pytest.raises(ExportError, match="ONNX output differs"):
        check_onnx(other, tmp_path / "m.onnx", preprocess(ck, paths[:4]))


@needs_tools
def test_bundles_fp16_and_uint8(bundles):
    fp16, u8 = bundles["fp16"], bundles["uint8"]
    b = Path(fp16["bundle"])
    assert (b / "model.json").exists() and list(b.glob("*.bin"))
    assert json.loads((b / "labels.json").read_text()) == CLASSES
    cal = json.loads((b / "calibration.json").read_text())
    assert cal["temperature"] == 1.5 and cal["threshold"] == 0.3
    pre = json.loads((b / "preprocessing.json").read_text())
    assert pre["layout"] == "NHWC" and pre["input_shape"] == [1, 32, 32, 3] and pre["resize_short_side"] == 36
    assert (b / "index.html").exists() and (b / "tf.min.js").exists()
    assert u8["model_size_mb"] < fp16["model_size_mb"]


@needs_tools
@pytest.mark.parametrize("q", ["fp16", "uint8"])
def test_tfjs_in_node_matches_pytorch(bundles, tiny_checkpoint, q):
    d, paths = tiny_checkpoint
    r = validate_tfjs_bundle(bundles[q]["bundle"], str(d / "student.pt"), paths)
    assert r["logits_correlation"] > 0.995 and r["top1_agreement"] >= 0.99, r
    assert r["passed"] and r["node_latency_ms_median"] > 0


def _serve(directory):
    handler = partial(SimpleHTTPRequestHandler, directory=directory)
    handler.log_message = lambda *a: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@needs_tools
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian chromium not installed")
def test_demo_page_in_chromium_shows_pytorch_top1(bundles, tiny_checkpoint):
    from shared.checkpoint import build_model, load_checkpoint

    d, paths = tiny_checkpoint
    ck = load_checkpoint(d / "student.pt")
    with torch.no_grad():
        logits = build_model(ck)(torch.from_numpy(preprocess(ck, paths))).numpy()
    top2 = np.sort(logits, 1)[:, -2:]
    i = int(np.argmax(top2[:, 1] - top2[:, 0]))  # the image PyTorch is most decided about
    httpd = _serve(bundles["fp16"]["bundle"])
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
        r = subprocess.run(["node", "page_check.mjs", url, paths[i]], cwd=TFJS_DIR, capture_output=True, text=True,
                           timeout=180)
    finally:
        httpd.shutdown()
    assert r.returncode == 0, r.stderr[-2000:]
    page = json.loads(r.stdout.strip().splitlines()[-1])
    assert page["state"] == "done" and not page["errors"], page
    assert page["top1"] == CLASSES[int(logits[i].argmax())]
    assert len(page["top5"]) == 5
    p = np.exp(logits[i] / 1.5 - (logits[i] / 1.5).max())
    p /= p.sum()
    assert page["probability"] == pytest.approx(float(p.max()), abs=0.02)  # calibrated with T=1.5
    assert page["conclusive"] == (p.max() >= 0.3)


def test_bad_inputs_give_clear_errors(tiny_checkpoint, tmp_path):
    import timm

    d, paths = tiny_checkpoint
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        export_tfjs_bundle(str(tmp_path / "missing.pt"), str(tmp_path / "b"), paths)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    save_checkpoint(tmp_path / "wrong.pt", model, model_name="test_efficientnet", classes=CLASSES, image_size=32)
    with pytest.raises(CheckpointError, match="6 classes"):
        export_tfjs_bundle(str(tmp_path / "wrong.pt"), str(tmp_path / "b"), paths)
    with pytest.raises(ValueError, match="quantization"):
        export_tfjs_bundle(str(d / "student.pt"), str(tmp_path / "b"), paths, "int4")
    assert not (tmp_path / "b").exists()
