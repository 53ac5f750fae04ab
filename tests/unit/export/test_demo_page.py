"""The bundle's demo page in headless Chromium (Debian's chromium driven by playwright-core):
served over localhost, a photo loaded through the file input, the page must show PyTorch's
top-1 with the temperature-calibrated probability, and "no concluyente" below the threshold."""

import json
import shutil
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.data.sample_data import render_species_image
from shared.export.tfjs import TFJS_DIR, export_bin, export_tfjs_bundle, preprocess
from shared.io.checkpoint import build_model, load_checkpoint, save_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="/usr/bin/chromium missing (scripts/setup_export_env.sh installs Debian's chromium when run as root)",
    ),
    pytest.mark.skipif(
        not (TFJS_DIR / "node_modules" / "playwright-core").exists(),
        reason="shared/export/tfjs/node_modules missing (scripts/setup_export_env.sh runs npm ci)",
    ),
    pytest.mark.skipif(
        not (export_bin() / "onnx2tf").exists(), reason="converter environment missing (scripts/setup_export_env.sh)"
    ),
]
CLASSES = [f"Species {i}" for i in range(6)]
TEMPERATURE = 1.5
SITE_DIRS: dict[str, Path] = {}  # the site fixture's served directory


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A bundle (threshold 0.3) and a copy with threshold 0.99, served over localhost."""
    import timm

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=len(CLASSES))
    save_checkpoint(
        d / "student.pt", model, model_name="test_efficientnet", classes=CLASSES, image_size=32, eval_resize=36
    )
    rng = np.random.default_rng(1)
    paths = []
    for i in range(8):  # already at the resize size: the page only centre-crops, like PyTorch
        p = d / f"photo{i}.png"
        render_species_image(i % 6, rng, (36, 36)).save(p)
        paths.append(str(p))
    root = SITE_DIRS["root"] = d / "www"
    export_tfjs_bundle(
        str(d / "student.pt"), str(root / "low"), paths, "fp16", {"temperature": TEMPERATURE, "threshold": 0.3}
    )
    shutil.copytree(root / "low", root / "high")
    cal = json.loads((root / "high" / "calibration.json").read_text())
    (root / "high" / "calibration.json").write_text(json.dumps({**cal, "threshold": 0.99}))
    # a release location as the publish step leaves it: models/<version>/ (here a copy whose
    # threshold 0 makes every answer conclusive) and current.json pointing to it
    shutil.copytree(root / "low", root / "rel" / "models" / "v1")
    rel_cal = root / "rel" / "models" / "v1" / "calibration.json"
    rel_cal.write_text(json.dumps({**json.loads(rel_cal.read_text()), "threshold": 0.0}))
    (root / "rel" / "current.json").write_text(json.dumps({"version": "v1", "base": "models/v1/"}))
    shutil.copytree(root / "high", root / "beside")  # a page with a current.json next to it
    (root / "beside" / "current.json").write_text(json.dumps({"version": "v1", "base": "../rel/models/v1/"}))
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    ck = load_checkpoint(d / "student.pt")
    with torch.no_grad():
        logits = build_model(ck)(torch.from_numpy(preprocess(ck, paths))).numpy().astype(np.float64)
    yield f"http://127.0.0.1:{httpd.server_address[1]}", paths, logits
    httpd.shutdown()


def _page(url: str, images: list[str]) -> list[dict]:
    r = subprocess.run(
        ["node", "page_check.mjs", url, *images], cwd=TFJS_DIR, capture_output=True, text=True, timeout=1500
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _calibrated(logits: np.ndarray) -> np.ndarray:
    z = logits / TEMPERATURE
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("backend", ["wasm", "cpu"])
def test_page_shows_pytorch_top1_with_calibrated_probability(site, backend):
    base, paths, logits = site
    probs = _calibrated(logits)
    picks = [0, 3, 5]
    results = _page(f"{base}/low/index.html?backend={backend}", [paths[i] for i in picks])
    for i, page in zip(picks, results, strict=True):
        assert page["state"] == "done" and not page["errors"], page
        assert page["backend"] == backend
        assert page["top1"] == CLASSES[int(logits[i].argmax())], (page, logits[i])
        assert page["probability"] == pytest.approx(probs[i].max(), abs=0.01)  # softmax(logits / T)
        assert page["top5"] == [CLASSES[j] for j in np.argsort(-probs[i])[:5]]
        assert page["conclusive"] == (probs[i].max() >= 0.3)
        assert page["label"] == (page["top1"] if page["conclusive"] else "no concluyente")


def test_page_says_no_concluyente_below_threshold(site):
    base, paths, logits = site
    assert _calibrated(logits).max() < 0.99  # a random 6-class head is never that sure
    [page] = _page(f"{base}/high/index.html", [paths[1]])
    assert page["state"] == "done" and not page["errors"], page
    assert not page["conclusive"] and page["label"] == "no concluyente"
    assert page["text"].lower().startswith("no concluyente")
    assert page["top1"] == CLASSES[int(logits[1].argmax())]  # still named as the best candidate


def test_page_picks_wasm_over_software_webgl_isolated_and_works_offline(site, tmp_path):
    """Served as `make demo` serves it (cross-origin isolated), the page opened with no forced
    backend must not pick WebGL on a software rasteriser (headless Chromium without a GPU), must
    say why, and after the first visit must classify with the network cut (its service worker)."""
    from shared.export.demo_server import demo_server
    from shared.export.offline import bundle_version

    base, paths, logits = site
    bundle = SITE_DIRS["root"] / "low"
    httpd = demo_server(bundle, port=0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        r = subprocess.run(
            ["node", "offline_check.mjs", f"http://127.0.0.1:{httpd.server_address[1]}/", paths[2]],
            cwd=TFJS_DIR,
            capture_output=True,
            text=True,
            timeout=1500,
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(out)
    first = out["first"]
    assert first["state"] == "ready" and first["backend"] == "wasm", first
    assert "software-rendered" in first["reason"] or "no WebGL" in first["reason"], first
    assert first["isolated"] is True and first["threads"] >= 1
    assert out["caches"] == [f"plantid-{bundle_version(bundle)}"]
    assert out["offline"]["state"] == "done" and out["top1"] == CLASSES[int(logits[2].argmax())], out


def test_a_six_shard_bundle_loads_from_a_server_that_sends_no_store(site, tmp_path):
    """Chromium stalled for good on the 7th shard of a 7-shard model served with
    Cache-Control: no-store (it fetched 6 and never asked for the 7th); the export keeps a
    plan-sized bundle to one shard and any bundle up to 180 MB to 6, so 6 must load."""
    base, paths, logits = site
    d = tmp_path / "six"
    low = SITE_DIRS["root"] / "low"
    weights = sum(f.stat().st_size for f in low.glob("*.bin"))
    ckpt = low.parents[1] / "student.pt"
    # a shard size that gives this tiny model exactly 6 shards, as 180 MB would give the 30 MB ones
    r = export_tfjs_bundle(
        str(ckpt), str(d), paths, "fp16", {"temperature": TEMPERATURE, "threshold": 0.3}, shard_mb=(weights / 5.5) / 1e6
    )
    assert r["shards"] == 6, r["shards"]

    class NoStore(SimpleHTTPRequestHandler):
        def end_headers(self):
            self.send_header("Cache-Control", "no-store")
            super().end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(NoStore, directory=str(d)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        [page] = _page(f"http://127.0.0.1:{httpd.server_address[1]}/index.html", [paths[4]])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert page["state"] == "done" and not page["errors"], page
    assert page["top1"] == CLASSES[int(logits[4].argmax())]


@pytest.mark.parametrize("where", ["query", "beside"])
def test_page_follows_the_release_pointer(site, where):
    """?release=<base url> (or a current.json beside the page) loads the version current.json
    names, not the bundle next to the page (whose threshold 0.99 would make it inconclusive)."""
    base, paths, logits = site
    url = f"{base}/high/index.html?release={base}/rel/" if where == "query" else f"{base}/beside/index.html"
    [page] = _page(url, [paths[1]])
    assert page["state"] == "done" and not page["errors"], page
    assert page["conclusive"] and page["top1"] == CLASSES[int(logits[1].argmax())]
