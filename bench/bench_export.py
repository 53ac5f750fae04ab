"""`make bench-export`: the plan's student at its real size (timm mobilenetv2_100, 224 px,
9,000 classes) exported to TF.js in every quantization mode (fp16; mixed = fp16 backbone +
per-class uint8 classifier kernel; uint8), each measured: bundle MB and shards, parity with PyTorch (logits
correlation, top-1 agreement with its 95 % Wilson interval) on 1,000 images, and the median
single-image latency in headless Chromium with the WASM backend (browser_latency, as the
latency gate measures it). The mode quantization "auto" picks is found by the export's own
rule (choose_quantization on these figures, against the plan's 20 MB bound and 6.4 parity
bounds). Figures go to bench/results.json under "export_9000" (other keys are kept):
{mode, bundle_mb, parity_correlation, top1_agreement, images, chromium_wasm_ms} for the mode
auto picks, and every mode's figures under "modes" (plus "none", the float32 bundle: what
the conversion alone costs, so that the quantization's share of any flip is visible).

Why the model is trained this way: agreement after quantization depends on the top-1
margins (a flip needs the quantization error to exceed the gap between the two best
logits), and random-init logits at 9,000 classes are nearly tied everywhere, so they
understate agreement; a converged 9,000-class model cannot be trained on 2 CPU cores (a
forward pass at 224 px alone costs ~0.1 s an image here). A random-init backbone is no
substitute either: its deep features collapse towards their mean, so rounding its weights to
fp16 moves them by ~4.5 % of their spread between images and PyTorch alone, weights rounded
and batch norm folded as the export folds it, flips ~3 % of top-1s (published fp16 conversions
of trained MobileNetV2s keep ~99.9 %). So:
  - backbone: trained briefly, whole network (train_backbone: TRAIN_STEPS AdamW steps at
    TRAIN_SIZE px on TRAIN_CLASSES species of the same class-conditional images; the
    weights are the 224 px model's, MobileNetV2 being fully convolutional), then its
    batch-norm statistics recomputed from synthetic images at 224 px (train-mode forward
    passes, no gradient), so the export folds real per-channel statistics into the
    convolutions as it would for a trained network (the folded depthwise kernels are what
    per-tensor uint8 handles worst). Cached in --workdir with the features;
  - classifier head (11.5M of the 13.7M weights, the part mixed quantises to uint8):
    trained with softmax cross-entropy and label smoothing 0.1 (the plan's) on features of
    class-conditional synthetic data: the 1,000 test images' real backbone features, each
    one sample of its class, and Gaussian classes around them and for the other 8,000
    species (class means spread like the real features, within-class noise at a scale
    chosen so that test top-1 lands near TARGET_TOP1, 0.75: a student between the plan's
    0.70 bound and a good model). The test top-1, the median top-1 probability and the
    median top-1/top-2 logit gap are reported so the margins can be judged.
Takes about 15-25 minutes on 2 cores (recorded as bench_seconds), of which the backbone's
training is ~2-3 minutes on idle cores (0.26 s a step) and was 27 minutes on cores shared with
a test suite; --workdir keeps it for reruns (a rerun took 282 s)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from shared.export.tfjs import (
    AUTO_ORDER,
    PARITY_MIN_IMAGES,
    TfjsModes,
    browser_latency,
    check_onnx,
    choose_quantization,
    export_onnx,
    onnx_to_saved_model,
    parity_figures,
    run_tfjs_node,
    unnormalize,
    write_bundle_assets,
)
from shared.io.checkpoint import load_checkpoint, save_checkpoint

MODEL, IMAGE_SIZE, CLASSES = "mobilenetv2_100", 224, 9000
MAX_BUNDLE_MB, MIN_CORR, MIN_AGREEMENT = 20.0, 0.995, 0.99  # the plan's 3.3 / 6.4 bounds
TARGET_TOP1 = 0.75
# The backbone's brief training (train_backbone): steps, resolution, species, batch.
TRAIN_STEPS, TRAIN_SIZE, TRAIN_CLASSES, TRAIN_BATCH = 500, 64, 256, 48


def synthetic_images(labels: np.ndarray, seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Class-conditional images, N x 3 x size x size in the model's normalised input space:
    class c is a smooth colour field (a 6 x 6 RGB grid seeded by c, upsampled) and each image
    adds its own brightness, offset and pixel noise."""
    rng = np.random.default_rng(seed)
    grids = np.stack([np.random.default_rng(10_000 + int(c)).random((3, 6, 6)) for c in labels]).astype(np.float32)
    x = torch.nn.functional.interpolate(torch.from_numpy(grids), size=(size, size), mode="bicubic", align_corners=False)
    x = x * torch.from_numpy(rng.uniform(0.7, 1.3, (len(labels), 1, 1, 1)).astype(np.float32))
    x = x + torch.from_numpy(rng.normal(0, 0.08, x.shape).astype(np.float32))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((x.clamp(0, 1) - mean) / std).numpy()


def train_backbone(model: torch.nn.Module, seed: int, steps: int = TRAIN_STEPS, size: int = TRAIN_SIZE) -> dict:
    """Train the whole network briefly (all weights, batch norm in train mode; AdamW with a
    one-cycle schedule, label smoothing 0.1) on the class-conditional images of TRAIN_CLASSES
    species at `size` px: MobileNetV2 is fully convolutional, so the weights are the same ones
    the 224 px model uses. A temporary TRAIN_CLASSES-way head is used and dropped; the caller
    puts the 9,000-way head back. Returns the training figures (last 50 steps' batch top-1)."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed + 7)
    classes = rng.choice(CLASSES, TRAIN_CLASSES, replace=False)
    model.reset_classifier(TRAIN_CLASSES)
    torch.nn.init.normal_(model.classifier.weight, std=0.01, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.02)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    model.train()
    hits, losses = [], []
    for step in range(steps):
        y = rng.integers(0, TRAIN_CLASSES, TRAIN_BATCH)
        x = torch.from_numpy(synthetic_images(classes[y], seed=seed * 100_003 + 1000 + step, size=size))
        if rng.random() < 0.5:
            x = x.flip(3)
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y), label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        hits.append(float((out.detach().argmax(1).numpy() == y).mean()))
        losses.append(loss.item())
    model.reset_classifier(CLASSES)
    model.eval()
    return {
        "steps": steps,
        "image_size": size,
        "classes": TRAIN_CLASSES,
        "batch": TRAIN_BATCH,
        "final_batch_top1": round(float(np.mean(hits[-50:])), 3),
        "final_loss": round(float(np.mean(losses[-50:])), 3),
    }


def set_batchnorm_statistics(model: torch.nn.Module, batches: int = 4, batch: int = 16) -> None:
    """Batch-norm running statistics from synthetic images (cumulative averages over
    `batches` train-mode forward passes; no weight changes)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for b in range(batches):
            model(torch.from_numpy(synthetic_images(rng.integers(0, CLASSES, batch), seed=100 + b)))
    model.eval()


def backbone_features(model: torch.nn.Module, x: np.ndarray, batch: int = 32) -> torch.Tensor:
    """The pooled 1280-d features the classifier head reads (eval mode)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            f = model.forward_features(torch.from_numpy(x[i : i + batch]))
            out.append(model.forward_head(f, pre_logits=True))
    return torch.cat(out)


def class_means(feats: torch.Tensor, labels: np.ndarray, within: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of all CLASSES Gaussian classes and the within-class noise basis: between-class
    spread = the test features' own covariance; each test image is one sample of its class
    (its class mean = its features minus a within-class draw)."""
    g = torch.Generator().manual_seed(seed)
    centre = feats.mean(0)
    basis = (feats - centre) / len(feats) ** 0.5  # n x d: z @ basis ~ N(0, covariance)
    means = centre + torch.randn(CLASSES, len(feats), generator=g) @ basis
    means[torch.from_numpy(labels)] = feats - within * torch.randn(len(feats), len(feats), generator=g) @ basis
    return means, basis


def linear_nearest_mean(feats: torch.Tensor, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest-class-mean rule as a linear layer, orthogonal to the features' mean m (the
    features are post-ReLU, so m dominates them): rows W_c = P(mean_c - m) with P the projection
    off m, bias -|W_c|^2 / 2 centred on 0. W_c . f = W_c . (f - m), so logits stay tens, not
    hundreds, like a trained head's (a raw nearest-mean head's logits are ~ -400 +- a few units,
    and fp16 rounding of such biases alone flips top-1s)."""
    m = feats.mean(0)
    u = m / m.norm()
    w = means - m
    w = w - (w @ u)[:, None] * u[None, :]
    b = -0.5 * (w * w).sum(1)
    return w, b - b.mean()


def fit_head(feats: torch.Tensor, labels: np.ndarray, seed: int = 0) -> tuple[torch.nn.Linear, dict]:
    """The 9,000-way head for the Gaussian classes (class_means): the nearest-class-mean rule
    as a linear layer (linear_nearest_mean), then temperature-scaled (plan 5.2: the temperature
    minimising the test NLL) so that its confidence is calibrated. The within-class scale is
    picked so that the test images' top-1 lands near TARGET_TOP1."""
    y = torch.from_numpy(labels)
    tried = {}
    for s in [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2]:
        w, b = linear_nearest_mean(feats, class_means(feats, labels, s, seed)[0])
        tried[s] = float(((feats @ w.T + b).argmax(1) == y).float().mean())
    within = min(tried, key=lambda s: abs(tried[s] - TARGET_TOP1))
    weight, bias = linear_nearest_mean(feats, class_means(feats, labels, within, seed)[0])
    raw = feats @ weight.T + bias
    temps = torch.logspace(-2, 3, 101)
    nll = [float(torch.nn.functional.cross_entropy(raw / t, y)) for t in temps]
    temperature = float(temps[int(np.argmin(nll))])
    head = torch.nn.Linear(feats.shape[1], CLASSES)
    with torch.no_grad():
        head.weight.copy_(weight / temperature)
        head.bias.copy_(bias / temperature)
    w, b = head.weight.detach(), head.bias.detach()
    fit = {
        "head": "nearest class mean of Gaussian classes around real features, as a linear layer, temperature-scaled",
        "within_class_scale": within,
        "top1_by_within_class_scale": tried,
        "temperature": round(temperature, 4),
        "head_weight_abs_max": round(float(w.abs().max()), 5),
        "head_weight_std": round(float(w.std()), 5),
        "head_bias_range": [round(float(b.min()), 3), round(float(b.max()), 3)],
    }
    return head, fit


def margins(logits: np.ndarray, labels: np.ndarray) -> dict:
    """How decided the model is: test top-1, median top-1 softmax probability, median and 10th
    percentile of the gap between the two largest logits."""
    top2 = np.sort(logits, 1)[:, -2:]
    z = logits - logits.max(1, keepdims=True)
    p1 = 1 / np.exp(z).sum(1)
    gap = top2[:, 1] - top2[:, 0]
    return {
        "test_top1": float((logits.argmax(1) == labels).mean()),
        "median_top1_probability": round(float(np.median(p1)), 4),
        "median_top1_top2_gap": round(float(np.median(gap)), 4),
        "p10_top1_top2_gap": round(float(np.percentile(gap, 10)), 4),
        "logits_range": [round(float(logits.min()), 2), round(float(logits.max()), 2)],
    }


def build_student(work: Path, images: int, seed: int) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray, dict]:
    """The checkpoint (backbone with set batch-norm statistics, trained head), the test
    images, their labels and the PyTorch logits."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(MODEL, pretrained=False, num_classes=CLASSES)
    t0 = time.time()
    labels = (np.arange(images) * (CLASSES // images)) % CLASSES  # one image per class, spread over all
    x = synthetic_images(labels, seed=seed)
    # kept in --workdir: a rerun skips the slow part (training, statistics, features)
    cache = work / f"backbone_{images}_{seed}_{TRAIN_STEPS}x{TRAIN_SIZE}px.pt"
    if cache.exists():
        cached = torch.load(cache, weights_only=True)
        model.load_state_dict(cached["model"])
        feats, training = cached["features"], json.loads(cached["training"])
    else:
        training = train_backbone(model, seed)
        training["seconds"] = round(time.time() - t0, 1)
        set_batchnorm_statistics(model)  # at 224 px: the statistics the export folds in
        feats = backbone_features(model, x)
        torch.save({"model": model.state_dict(), "features": feats, "training": json.dumps(training)}, cache)
    t1 = time.time()
    head, fit = fit_head(feats, labels, seed)
    model.classifier = head
    with torch.no_grad():
        logits = head(feats).numpy()
    fit.update(margins(logits, labels), backbone_training=training, head_seconds=round(time.time() - t1, 1))
    fit["backbone_seconds"] = round(t1 - t0, 1)
    ckpt = work / "student.pt"
    save_checkpoint(
        ckpt,
        model,
        model_name=MODEL,
        classes=[f"species {i}" for i in range(CLASSES)],
        image_size=IMAGE_SIZE,
        eval_resize=256,
    )
    return ckpt, x, labels, logits, fit


def measure_modes(ckpt_path: Path, work: Path, x: np.ndarray, labels: np.ndarray, ref: np.ndarray) -> dict:
    """Every mode's bundle from one SavedModel: size, shards, parity and Chromium WASM latency."""
    from shared.io.checkpoint import build_model

    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt)
    for stale in [work / "saved_model", *work.glob("tfjs_*")]:  # a --workdir's earlier bundles are another model's
        shutil.rmtree(stale, ignore_errors=True)
    onnx_path = work / "model.onnx"
    export_onnx(model, IMAGE_SIZE, onnx_path)
    onnx_diff = check_onnx(model, onnx_path, x[:4])
    onnx_to_saved_model(onnx_path, work / "saved_model", unnormalize(ckpt, x[:8]))
    modes = TfjsModes(work / "saved_model", work, CLASSES, shard_mb=30.0)
    out = {}
    for q in (*AUTO_ORDER, "none"):  # none (float32): the reference that separates quantization from conversion
        t0 = time.time()
        d = modes.build(q)
        write_bundle_assets(d, ckpt, None, q)
        convert_s = time.time() - t0
        got, _ = run_tfjs_node(d, x.transpose(0, 2, 3, 1), "wasm", repeats=0, warmup=0)
        par = parity_figures(ref, got, labels, MIN_CORR, MIN_AGREEMENT)
        lat = browser_latency(d, runs=20, warmup=3)
        out[q] = {
            "bundle_mb": round(modes.size_mb(q), 3),
            "shards": len(list(d.glob("*.bin"))),
            "parity_correlation": round(par["logits_correlation"], 6),
            "top1_agreement": par["top1_agreement"],
            "top1_agreement_ci95": par["top1_agreement_ci95"],
            "top1_flips": par["top1_flips"],
            "images": par["images"],
            "max_abs_diff": round(par["max_abs_diff"], 5),
            "pytorch_test_top1": par["pytorch_test_top1"],
            "exported_test_top1": par["exported_test_top1"],
            "parity_passed": par["passed"],
            "chromium_wasm_ms": round(lat["median_ms"], 1),
            "chromium_browser": lat.get("browser"),
            "wasm_simd": lat.get("simd"),
            "convert_seconds": round(convert_s, 1),
        }
        if q == "mixed":
            out[q]["head_uint8_weights"] = modes.head_weights
        print(q, json.dumps(out[q]), flush=True)
    return {"modes": out, "onnx_max_abs_diff": onnx_diff}


def run(tmp: str | None = None, images: int = PARITY_MIN_IMAGES, seed: int = 0) -> dict:
    t0 = time.time()
    work = Path(tmp or tempfile.mkdtemp())
    ckpt, x, labels, ref, fit = build_student(work, images, seed)
    print("student:", json.dumps(fit), flush=True)
    measured = measure_modes(ckpt, work, x, labels, ref)
    modes = measured["modes"]
    choice = choose_quantization(
        lambda q: modes[q]["bundle_mb"],
        MAX_BUNDLE_MB,
        lambda q: {
            "passed": modes[q]["parity_passed"],
            "logits_correlation": modes[q]["parity_correlation"],
            "top1_agreement": modes[q]["top1_agreement"],
            "images": modes[q]["images"],
        },
    )
    picked = modes[choice["quantization"]]
    return {
        "mode": choice["quantization"],
        **{k: picked[k] for k in ("bundle_mb", "parity_correlation", "top1_agreement", "images", "chromium_wasm_ms")},
        "auto_reason": choice["quantization_reason"],
        "bounds": {"max_bundle_mb": MAX_BUNDLE_MB, "min_correlation": MIN_CORR, "min_top1_agreement": MIN_AGREEMENT},
        "model": MODEL,
        "image_size": IMAGE_SIZE,
        "classes": CLASSES,
        "student": fit,
        "onnx_max_abs_diff": measured["onnx_max_abs_diff"],
        "modes": modes,
        "torch_threads": torch.get_num_threads(),
        "bench_seconds": round(time.time() - t0, 1),
    }


def merge_results(path: Path, figures: dict) -> None:
    """Write `figures` under "export_9000" of the JSON file, keeping its other keys."""
    from bench.results_file import merge_key

    merge_key(path, "export_9000", figures)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default="bench/results.json", help='JSON file; figures go under "export_9000"')
    ap.add_argument("--images", type=int, default=PARITY_MIN_IMAGES, help="parity images (one per class)")
    ap.add_argument("--workdir", help="keep the checkpoint and bundles here (default: a temp dir, removed)")
    a = ap.parse_args(argv)
    if a.workdir:
        Path(a.workdir).mkdir(parents=True, exist_ok=True)
        fig = run(a.workdir, a.images)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            fig = run(tmp, a.images)
    print(json.dumps(fig, indent=2))
    merge_results(Path(a.output), fig)
    print(f'wrote {a.output} (key "export_9000")')
    ok = fig["bundle_mb"] < MAX_BUNDLE_MB and fig["top1_agreement"] >= MIN_AGREEMENT and fig["images"] >= 1000
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
