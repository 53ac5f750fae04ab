"""Soft-label storage and the loader's memory at the plan's scale: 850,000 samples
x 9,000 classes, top-32 float32 probabilities at T=3 plus the rest bin (simulated on
disk, the kept classes holding ~3 % of the mass as a converged teacher's do), against
the dense float32 matrix (850k x 9,000 x 4 bytes = 30.6 GB). The loader runs in a child process so its
peak RSS (VmHWM) is measured without this process's own memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

N, C, K = 850_000, 9000, 32
ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
import numpy as np, torch
from shared.distill.losses import SoftLabelLookup, make_kd_loss_fn
from shared.distill.soft_labels import SoftLabels
def rss(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = rss('VmRSS:')
t0 = time.perf_counter()
sl = SoftLabels.load(sys.argv[1])
ids = [str(s) for s in sl.image_ids]
lookup = SoftLabelLookup(sl, ids, sl.classes)
del sl, ids
t_load = time.perf_counter() - t0
loss_fn = make_kd_loss_fn(lookup, 3.0, 0.7, 0.3)
g = torch.Generator().manual_seed(0)
t0 = time.perf_counter()
for _ in range(50):
    idx = torch.randint(0, len(lookup.row), (128,), generator=g)
    loss = loss_fn(torch.randn(128, 9000), torch.randint(0, 9000, (128,)), idx)
t_batches = (time.perf_counter() - t0) / 50
print(json.dumps({"peak_bytes": rss('VmHWM:') - base, "load_s": t_load, "batch_s": t_batches}))
"""


def run(tmp: str | None = None) -> dict:
    from shared.distill.soft_labels import SoftLabels

    tmp = tmp or tempfile.mkdtemp()
    rng = np.random.default_rng(0)
    idx = rng.integers(0, C, (N, K), dtype=np.int32)
    vals = rng.random((N, K), dtype=np.float32)
    vals *= (0.02 + 0.02 * rng.random((N, 1), dtype=np.float32)) / vals.sum(1, keepdims=True)
    vals = -np.sort(-vals, axis=1)
    path = os.path.join(tmp, "soft.npz")
    sl = SoftLabels(np.char.add("i", np.arange(N).astype(str)), idx, vals, [f"c{i}" for i in range(C)], 3.0)
    bytes_per_sample = sl.bytes_per_sample()
    sl.save(path)
    del sl
    del idx, vals
    out = subprocess.run([sys.executable, "-c", CHILD, path, str(ROOT)], capture_output=True, text=True, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    dense = N * C * 4
    return {
        "soft_samples": N,
        "soft_classes": C,
        "soft_k": K,
        "soft_bytes_per_sample_arrays": bytes_per_sample,  # int32 + float32 per kept class, float32 rest
        "soft_file_bytes_per_sample": round(os.path.getsize(path) / N, 1),
        "soft_file_mb": round(os.path.getsize(path) / 1e6, 1),
        "soft_loader_peak_mb": round(child["peak_bytes"] / 1e6, 1),
        "soft_loader_load_s": round(child["load_s"], 2),
        "soft_kd_batch128_s": round(child["batch_s"], 4),
        "dense_float32_gb": round(dense / 1e9, 1),
        "dense_over_loader_peak": round(dense / max(1, child["peak_bytes"]), 1),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
