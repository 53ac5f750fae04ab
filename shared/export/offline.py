"""The TF.js bundle's offline copy: sw.js, the demo page's service worker, written into each
bundle with the bundle's version (a digest of model.json and its weight shards) in its cache
name and the list of files to keep, so the page classifies without network after the first
visit, and a new model (a new digest, so a new sw.js) replaces the cached one."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from shared.io.atomic import write_text

SW_TEMPLATE = Path(__file__).resolve().parent / "web" / "sw.js"
SW_NAME = "sw.js"
PAGE_FILES = ("./", "index.html", "backend.js", "labels.json", "calibration.json", "preprocessing.json", "tf.min.js")


def model_files(bundle_dir: str | os.PathLike) -> list[str]:
    """model.json and the weight shards it names, in its order."""
    manifest = json.loads((Path(bundle_dir) / "model.json").read_text())["weightsManifest"]
    return ["model.json", *[p for group in manifest for p in group["paths"]]]


def bundle_version(bundle_dir: str | os.PathLike) -> str:
    """16 hex digits of the sha256 over model.json and its shards: changes with any weight."""
    h = hashlib.sha256()
    for name in model_files(bundle_dir):
        h.update(name.encode() + b"\0")
        with open(Path(bundle_dir) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def write_service_worker(bundle_dir: str | os.PathLike, runtime_files: tuple[str, ...]) -> str:
    """Write sw.js into the bundle (after the model and the page's files are there); returns
    the version. FileNotFoundError naming a listed file that is missing (the worker's install
    would fail on it in every browser)."""
    d = Path(bundle_dir)
    files = [*PAGE_FILES, *model_files(d), *runtime_files]
    missing = [f for f in files if f != "./" and not (d / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{d}: the offline copy would list missing files: {missing}")
    version = bundle_version(d)
    text = SW_TEMPLATE.read_text().replace("__PLANTID_VERSION__", version)
    write_text(d / SW_NAME, text.replace("__PLANTID_FILES__", json.dumps(files)))
    return version
