"""Image digests: `make images PUSH=1` records them (images/digests.yaml), `make manifests`
pins an overlay's images by digest when its registry and tag were pushed, and an overlay that
requires digests (prod) is not compiled without them."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import render_manifests  # noqa: E402

D = {"data": "sha256:" + "a" * 64, "train": "sha256:" + "b" * 64, "export": "sha256:" + "c" * 64}


def test_pushed_digests_by_registry_and_tag(tmp_path):
    f = tmp_path / "digests.yaml"
    assert render_manifests.pushed_digests("ghcr.io/plantid", "0.1.0", f) == {}
    f.write_text(yaml.safe_dump({"ghcr.io/plantid": {"0.1.0": {**D, "commit": "abc"}}}))
    assert render_manifests.pushed_digests("ghcr.io/plantid", "0.1.0", f) == D
    assert render_manifests.pushed_digests("ghcr.io/plantid", "0.1.0-dev", f) == {}
    assert render_manifests.pushed_digests("registry.example/x", "0.1.0", f) == {}


def test_overlay_compiles_with_digests(tmp_path, monkeypatch):
    f = tmp_path / "digests.yaml"
    f.write_text(yaml.safe_dump({"ghcr.io/plantid": {"0.1.0": {**D, "commit": "abc"}}}))
    monkeypatch.setattr(render_manifests, "DIGESTS_FILE", f)
    overlay = ROOT / "manifests" / "overlays" / "prod"
    out = tmp_path / "pipeline.yaml"
    version = render_manifests.compile_overlay_pipeline(ROOT / "config" / "cluster.yaml", overlay, out)
    assert version.endswith("(images by digest)")
    text = out.read_text()
    for name, digest in D.items():
        assert f"ghcr.io/plantid/plantid-{name}@{digest}" in text
    assert "plantid-train:0.1.0" not in text


def test_build_script_merges_digests_per_tag(tmp_path):
    """The merge step of build_images.sh --push, run on its own (no registry needed)."""
    script = (ROOT / "scripts" / "build_images.sh").read_text()
    merge = script.split("<<'EOF'\n", 2)[2].split("\nEOF\n", 1)[0]
    path = tmp_path / "digests.yaml"
    for tag, digests in (("0.1.0", D), ("0.2.0", {"train": "sha256:" + "d" * 64})):
        new = tmp_path / "new.txt"
        new.write_text("".join(f"{k}: {v}\n" for k, v in digests.items()))
        subprocess.run([sys.executable, "-c", merge, str(path), "ghcr.io/plantid", tag, "c0ffee", str(new)], check=True)
    data = yaml.safe_load(path.read_text())
    assert data["ghcr.io/plantid"]["0.1.0"] == {**D, "commit": "c0ffee"}
    assert data["ghcr.io/plantid"]["0.2.0"]["train"] == "sha256:" + "d" * 64


def test_overlay_requiring_digests_refuses_without_them(tmp_path, monkeypatch):
    """prod (render.yaml require_digests: true) is compiled by digest or not at all; the error
    names every image that has no digest."""
    f = tmp_path / "digests.yaml"
    f.write_text(yaml.safe_dump({"ghcr.io/plantid": {"0.1.0": {"train": D["train"], "commit": "abc"}}}))
    monkeypatch.setattr(render_manifests, "DIGESTS_FILE", f)
    out = tmp_path / "pipeline.yaml"
    overlay = ROOT / "manifests" / "overlays" / "prod"
    try:
        render_manifests.compile_overlay_pipeline(ROOT / "config" / "cluster.yaml", overlay, out)
    except render_manifests.MissingDigests as e:
        message = str(e)
    else:
        raise AssertionError("prod compiled without digests")
    assert "ghcr.io/plantid/plantid-data:0.1.0" in message and "ghcr.io/plantid/plantid-export:0.1.0" in message
    assert "plantid-train:" not in message
    assert not out.exists() and not (tmp_path / "tenancy.yaml").exists()
