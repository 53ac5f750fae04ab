"""Data-path throughput: images/s per CPU core of the training input path, ours
against timm's, side by side in one run on the same files.

Ours is what the trainer runs: cached JPEG -> CachedImageDataset (decode) -> the
plan's train transform -> normalised float batch, through a torch DataLoader built
as shared/train/loop.fit builds it (batch 32, shuffle, drop_last, persistent workers).
- teacher: 384 crops from the 448-short-side cache, config/teacher_global.yaml's
  augmentation.train with its smart crop;
- student: 224 crops, config/student.yaml's augmentation.train (the defaults it
  takes), from the same 448 cache.
"ours" is the default fast path (shared/vision/augment.TrainTransform); "old" is the same
augmentation as a plain torchvision Compose (`fast=False`, what the code ran before);
"ours_deferred" is the CPU side of the deferred mode (`defer_photometric=True`: the
loader returns uint8 crops and the drawn jitter/blur parameters, DevicePhotometric
finishes the batch on the GPU; bench/bench_gpu.py times that GPU side);
"ours_half_decode" (student) lets JPEGs decode at half size although the crop is then
upsampled by up to 1.15x (`decode_upsample=1.15`, not the default).
"ours_rendition" (student) is the student's path since issue 16: the same transform on the
cache's 256 px student rendition (cache.student_resize: 256, made from the 448 files as
shared/data/image_cache.render_student makes it; the plan's Resize 256 is then no resampling,
only a crop), "ours_rendition_deferred" its CPU side with the photometric work on the GPU
(training.photometric_on_gpu: auto, what the trainer runs on CUDA). The goal is judged on
the real path: "ours" for the teacher, "ours_rendition" for the student (photometric on
the CPU; "goal_met_gpu_path" with it deferred). timm still reads the 448 files (what its
own path would read); the renditions lie in another folder, as timm's dataset scans its.
timm's path is timm's own: timm.data.ImageDataset (PIL open + convert RGB) with
timm.data.create_transform(input_size, is_training=True, interpolation="bilinear",
mean/std of the config) and timm's defaults otherwise (random-resized crop
0.08-1, hflip 0.5, colour jitter 0.4 without hue): less augmentation than the plan
asks for (no hue, rotation, blur, smart crop). "timm_matched" adds what timm can
express of the plan's augmentation (the same jitter with hue, the same flips), for
context. The goals (issue 16) compare "ours" with "timm".

Images are synthetic photos (smooth colour fields, leaf-like shapes with edges,
multi-scale texture, sensor noise), 448 px on the short side in the usual aspect
ratios, written as the cache writes them (JPEG quality JPEG_QUALITY), so decoding
costs what it costs on real cached photos (about 2-3 bits per pixel).

`steps_ms_per_image_1_thread` splits one teacher image's time into its steps, ours and
timm's (best of rounds, 1 thread, decoded images in memory): what the plan's heavier
augmentation (hue, rotation, blur) costs against timm's default.

Per core: images/s divided by the cores doing the work: 1 with num_workers=0 (torch
limited to 1 thread), num_workers with workers (the main process only receives
batches). Each configuration is measured `rounds` times, interleaved, and the best
round is kept (a shared machine only ever slows a run down).

    python -m bench.bench_datapath [--images 256] [--rounds 2] [--workers 0 2] [--record bench/results.json]

`make bench` runs it too (bench/run.py: results.json -> benchmarks.bench_datapath).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

BATCH = 32
ASPECTS = ((4, 3), (4, 3), (3, 4), (3, 2), (1, 1), (16, 9))  # width:height, phone photos mostly 4:3
CORES_PER_POD = 16
LOADER_CORES = 14  # of a 16-core GPU pod: the rest for the training process and the system
GPU_NEED = {  # images/s one GPU consumes (issue 16)
    "teacher": {"images_per_s": 1340, "what": "ViT-B/16-384 training on an H100 at 45% MFU"},
    "student": {
        "images_per_s": 3000,
        "what": ("MobileNetV2-224 training: several thousand images/s; 3,000 taken as the lower bound"),
    },
}
GOALS = {"teacher": 1.0, "student": 2.0}  # ours / timm


def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like RGB image: smooth colour gradients (an out-of-focus background),
    multi-scale texture (foliage; its strength varies per image), a few leaf/petal
    shapes with sharp edges, shading and veins, and a little sensor noise."""

    def field(cells_x: int, cells_y: int, channels: int) -> np.ndarray:
        small = rng.uniform(0, 255, (cells_y, cells_x, channels)).astype(np.uint8)
        img = Image.fromarray(small[..., 0] if channels == 1 else small)
        return np.asarray(img.resize((width, height), Image.BICUBIC), dtype=np.float32)

    img = field(5, 4, 3) * 0.6 + np.array([30, 60, 20], np.float32)  # background, greenish
    detail = rng.uniform(0.3, 1.0)  # smooth bokeh ... dense foliage
    texture = sum(field(max(2, width // s), max(2, height // s), 1) - 127.5 for s in (40, 12, 4, 2)) / 4.0
    img += (texture * detail)[..., None]
    for _ in range(int(rng.integers(3, 9))):  # leaves / petals, computed in their bounding box
        a = rng.uniform(0.05, 0.35) * min(width, height)
        b = rng.uniform(0.02, 0.12) * min(width, height)
        cx, cy, ang = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0, np.pi)
        x0, x1 = int(max(0, cx - a)), int(min(width, cx + a + 1))
        y0, y1 = int(max(0, cy - a)), int(min(height, cy + a + 1))
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
        v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        shade = 1.0 - 0.25 * (u / a) + 0.08 * np.sin(u * rng.uniform(0.2, 0.6)) + 0.1 * (np.abs(v) < 1.2)
        colour = rng.uniform(20, 235, 3).astype(np.float32)
        patch = img[y0:y1, x0:x1]
        patch[inside] = colour * shade[inside][:, None] * 0.85 + patch[inside] * 0.15
    img += rng.standard_normal(img.shape, dtype=np.float32) * 3.0  # sensor noise after downscaling
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_cache(root: str | Path, n: int, short_side: int = 448, seed: int = 0) -> list[dict]:
    """n synthetic photos stored like the image cache stores them; their cached records."""
    from shared.data.image_cache import JPEG_QUALITY, cache_path_for

    rng = np.random.default_rng(seed)
    root = Path(root)
    recs = []
    for i in range(n):
        aw, ah = ASPECTS[i % len(ASPECTS)]
        w, h = (round(short_side * aw / ah), short_side) if aw >= ah else (short_side, round(short_side * ah / aw))
        buf = io.BytesIO()
        synthetic_photo(rng, w, h).save(buf, "JPEG", quality=JPEG_QUALITY)
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        rel = cache_path_for(sha)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        recs.append(
            {
                "image_id": f"img{i:05d}",
                "taxon": f"Species {i % 16:02d}",
                "region": "EU_SW",
                "license": "CC0",
                "sha256": sha,
                "cache_path": rel,
                "cached_width": w,
                "cached_height": h,
                "split": "train",
            }
        )
    return recs


def add_student_renditions(root: str | Path, student_root: str | Path, recs: list[dict], side: int) -> list[dict]:
    """The cache step's student rendition (shared/data/image_cache.render_student) of each cached
    file under root, written to student_root (not root: timm's ImageDataset scans its root and
    must see the 448 files only), and the records with their student_* fields."""
    from shared.data.image_cache import render_student, student_cache_path_for

    out = []
    for r in recs:
        made = render_student((Path(root) / r["cache_path"]).read_bytes(), side)
        assert made is not None, "the synthetic 448 px files are larger than the rendition"
        jpeg, w, h = made
        rel = student_cache_path_for(r["sha256"], side)
        (Path(student_root) / rel).parent.mkdir(parents=True, exist_ok=True)
        (Path(student_root) / rel).write_bytes(jpeg)
        out.append({**r, "student_cache_path": rel, "student_width": w, "student_height": h, "student_resize": side})
    return out


def plan_sections() -> dict[str, tuple[dict, int, bool]]:
    """model -> (augmentation.train, crop size, smart crop) from the plan's configs."""
    from shared.config.student import load_student_config
    from shared.config.teacher import load_teacher_config

    repo = Path(__file__).resolve().parent.parent
    t = load_teacher_config(str(repo / "config/teacher_global.yaml"))
    s = load_student_config(str(repo / "config/student.yaml"))
    return {
        "teacher": (t["augmentation"]["train"], int(t["data"]["image_size"]), bool(t["data"]["smart_crop"])),
        "student": (s["augmentation"]["train"], int(s["model"]["image_size"]), bool(s["data"]["smart_crop"])),
    }


def timm_transform(aug: dict, size: int, matched: bool):
    from timm.data import create_transform

    norm = aug["normalize"]
    kw = {}
    if matched:  # what timm can express of the plan's section
        cj = aug.get("color_jitter") or {}
        kw = {
            "hflip": aug.get("horizontal_flip", 0.0),
            "vflip": aug.get("vertical_flip", 0.0),
            "color_jitter": tuple(float(cj.get(k, 0.0)) for k in ("brightness", "contrast", "saturation", "hue")),
        }
    return create_transform(
        input_size=size,
        is_training=True,
        interpolation="bilinear",
        mean=tuple(norm["mean"]),
        std=tuple(norm["std"]),
        **kw,
    )


def datasets(
    root: str, recs: list[dict], student_root: str | None = None, student_side: int = 0
) -> dict[tuple[str, str], torch.utils.data.Dataset]:
    from timm.data import ImageDataset

    from shared.data.image_cache import student_records
    from shared.vision.augment import build_train_transform
    from shared.vision.image_dataset import CachedImageDataset, class_list

    classes = class_list(recs)
    out = {}
    for model, (aug, size, smart) in plan_sections().items():
        out[(model, "ours")] = CachedImageDataset(recs, root, classes, build_train_transform(aug, size, smart))
        out[(model, "old")] = CachedImageDataset(
            recs, root, classes, build_train_transform(aug, size, smart, fast=False)
        )
        out[(model, "timm")] = ImageDataset(root, transform=timm_transform(aug, size, matched=False))
        out[(model, "timm_matched")] = ImageDataset(root, transform=timm_transform(aug, size, matched=True))
        # the CPU side when jitter, blur and normalisation run on the GPU (DevicePhotometric;
        # needs the trainer change in the report): uint8 crops + their drawn parameters
        out[(model, "ours_deferred")] = CachedImageDataset(
            recs, root, classes, build_train_transform(aug, size, smart, defer_photometric=True)
        )
        if model == "student":  # half-size JPEG decoding: crops upsampled up to 1.15x, not the default
            out[(model, "ours_half_decode")] = CachedImageDataset(
                recs, root, classes, build_train_transform(aug, size, smart, decode_upsample=1.15)
            )
        if model == "student" and student_root:  # the student's own rendition (its path since issue 16)
            srecs = student_records(recs, student_side)
            out[(model, "ours_rendition")] = CachedImageDataset(
                srecs, student_root, classes, build_train_transform(aug, size, smart)
            )
            out[(model, "ours_rendition_deferred")] = CachedImageDataset(
                srecs, student_root, classes, build_train_transform(aug, size, smart, defer_photometric=True)
            )
    return out


# The path each model trains on now (photometric augmentation on the CPU), and the same
# with it on the GPU (training.photometric_on_gpu on CUDA): what the goals are judged on.
REAL_PATH = {"teacher": "ours", "student": "ours_rendition"}
GPU_PATH = {"teacher": "ours_deferred", "student": "ours_rendition_deferred"}


def _cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds of other processes (Linux /proc); 0 where unreadable."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def measure(ds, workers: int, min_images: int, seed: int = 0) -> dict[str, float]:
    """Throughput through a DataLoader built like shared/train/loop.fit's train loader:
    images/s (wall clock) and images per CPU-second of the processes doing the work
    (the main process, and the workers), for the first epoch and for the epochs after it."""
    boxes = getattr(ds, "_boxes", None)
    if boxes is not None:  # the first epoch computes the smart-crop boxes again, as in a new run
        boxes.fill_(-1)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        pin_memory=False,
        persistent_workers=workers > 0,
    )
    threads = torch.get_num_threads()
    if workers == 0:
        torch.set_num_threads(1)  # one core: what a loader worker gets
    try:

        def epochs(min_n: int) -> tuple[int, float, float]:
            seen, pids, c0 = 0, [], None
            t0, m0 = time.perf_counter(), time.process_time()
            while seen < min_n:
                it = iter(loader)  # starts (or, persistent, restarts) the workers
                if c0 is None:
                    pids = [w.pid for w in getattr(it, "_workers", [])]
                    c0 = _cpu_seconds(pids)
                for x, *_ in it:
                    seen += len(x[0]) if isinstance(x, list) else len(x)
            cpu = time.process_time() - m0 + _cpu_seconds(pids) - c0
            return seen, time.perf_counter() - t0, cpu

        n1, wall1, cpu1 = epochs(1)  # first epoch: worker start-up, smart-crop boxes, page cache
        n, wall, cpu = epochs(min_images)
        return {
            "wall": n / wall,
            "cpu": n / max(cpu, 1e-9),
            "first_wall": n1 / wall1,
            "first_cpu": n1 / max(cpu1, 1e-9),
        }
    finally:
        torch.set_num_threads(threads)


def decode_ms(root: str, recs: list[dict], n: int = 64, student_root: str | None = None) -> dict[str, float]:
    """Milliseconds per image, one thread, for the decoders we could use."""
    from torchvision.io import decode_jpeg

    from shared.vision.image_dataset import decode_image

    datas = [(Path(root) / r["cache_path"]).read_bytes() for r in recs[:n]]
    paths = [str(Path(root) / r["cache_path"]) for r in recs[:n]]
    student = [str(Path(student_root) / r["student_cache_path"]) for r in recs[:n]] if student_root else []

    def best(fn, items, rounds=3):
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for it in items:
                fn(it)
            times.append((time.perf_counter() - t0) / len(items) * 1e3)
        return round(min(times), 3)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {
            "pil_full": best(lambda p: decode_image(p), paths),
            "pil_draft_half": best(lambda p: decode_image(p, 224), paths),
            "pil_draft_quarter": best(lambda p: decode_image(p, 112), paths),
            "torchvision_decode_jpeg_cpu": best(
                lambda d: decode_jpeg(torch.frombuffer(bytearray(d), dtype=torch.uint8)), datas
            ),
            **({"pil_full_student_rendition": best(lambda p: decode_image(p), student)} if student else {}),
        }
    finally:
        torch.set_num_threads(threads)


def steps_ms(root: str, recs: list[dict], n: int = 32, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Milliseconds per teacher image, one thread, step by step: ours (the fast path's steps
    with the plan's section) and timm's default transform (its Compose up to each step, the
    step's cost being the difference), on images already decoded (decoding is measured
    apart, the same for both). The jitter ops are timed with fixed factors (all four, then
    without hue); blur is timed when drawn and counted at its probability. Every timing
    runs once per round, interleaved, and the best round is kept (a shared machine)."""
    from shared.vision import augment as A
    from shared.vision.image_dataset import decode_image

    aug, size, smart = plan_sections()["teacher"]
    tf = A.build_train_transform(aug, size, smart)
    timm_steps = timm_transform(aug, size, matched=False).transforms
    imgs = [decode_image(Path(root) / r["cache_path"]) for r in recs[:n]]
    boxes = [tf.smart_box(im) for im in imgs]

    def source(k: int) -> Image.Image:
        return imgs[k].crop(boxes[k]) if smart else imgs[k]

    def geometry(k: int) -> Image.Image:
        img = tf._resized_random_crop(source(k))
        for t in tf.geometric:
            img = t(img)
        return img

    def timm_upto(j: int):
        def run_(k: int) -> None:
            x = imgs[k]
            for t in timm_steps[:j]:
                x = t(x)

        return run_

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        crops = [np.asarray(geometry(k)) for k in range(len(imgs))]
        floats = [A.photometric(c, []) for c in crops]
        jitter = [("brightness", 1.1), ("contrast", 0.9), ("saturation", 1.2), ("hue", 0.1)]
        sigma = sum(A.BLUR_SIGMA) / 2
        fns = {
            "ours.whole_transform": lambda k: tf(imgs[k], box=boxes[k]),
            "ours.smart_crop_resized_random_crop": lambda k: tf._resized_random_crop(source(k)),
            "ours.geometry_with_flips_rotation": geometry,
            "ours.to_float_normalise": lambda k: A.photometric(crops[k], [], tf.mean, tf.std),
            "ours.jitter_without_hue_to_float_normalise": lambda k: A.photometric(
                crops[k], jitter[:3], tf.mean, tf.std
            ),
            "ours.jitter_with_hue_to_float_normalise": lambda k: A.photometric(crops[k], jitter, tf.mean, tf.std),
            "ours.blur_when_drawn": lambda k: A.gaussian_blur_float(floats[k], tf.blur_kernel, sigma),
            "ours.deferred_uint8_output": lambda k: A.chw_uint8(Image.fromarray(crops[k])),
        }
        fns.update({f"timm.upto_{j}": timm_upto(j) for j in range(1, len(timm_steps) + 1)})
        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, fn in fns.items():
                torch.manual_seed(0)
                t0 = time.perf_counter()
                for k in range(len(imgs)):
                    fn(k)
                ms = (time.perf_counter() - t0) / len(imgs) * 1e3
                best[name] = min(ms, best.get(name, ms))
        ours = {k.split(".", 1)[1]: round(v, 3) for k, v in best.items() if k.startswith("ours.")}
        ours["blur_probability"] = tf.blur_p
        ours["hue"] = round(
            ours["jitter_with_hue_to_float_normalise"] - ours["jitter_without_hue_to_float_normalise"], 3
        )
        timm: dict[str, float] = {}
        prev = 0.0
        for j in range(1, len(timm_steps) + 1):
            t = best[f"timm.upto_{j}"]
            timm[f"{j}_{type(timm_steps[j - 1]).__name__}"] = round(t - prev, 3)
            prev = t
        timm["whole_transform"] = round(prev, 3)
        return {"ours_teacher": ours, "timm_teacher": timm}
    finally:
        torch.set_num_threads(threads)


def run(
    tmp: str | None = None, images: int = 256, rounds: int = 2, workers: tuple[int, ...] = (0, 2), log=print
) -> dict:
    own = None
    if tmp is None:
        own = tempfile.TemporaryDirectory()
        tmp = own.name
    try:
        root, student_root = str(Path(tmp) / "cache"), str(Path(tmp) / "cache_student")
        recs = make_cache(root, images)
        side = int(plan_sections()["student"][0]["resize"])  # config/cluster.yaml's cache.student_resize: 256
        recs = add_student_renditions(root, student_root, recs, side)
        sizes = [os.path.getsize(Path(root) / r["cache_path"]) for r in recs]
        bpp = 8 * sum(sizes) / sum(r["cached_width"] * r["cached_height"] for r in recs)
        student_bytes = [os.path.getsize(Path(student_root) / r["student_cache_path"]) for r in recs]
        dss = datasets(root, recs, student_root, side)
        rates: dict[tuple[str, str, int], list[dict]] = {}
        for rnd in range(rounds):
            for w in workers:
                for (model, path), ds in dss.items():
                    r = measure(ds, w, min_images=min(len(ds), images) // BATCH * BATCH, seed=rnd)
                    rates.setdefault((model, path, w), []).append(r)
                    log(f"  round {rnd} {model} {path} workers={w}: {r['wall']:.1f} img/s, {r['cpu']:.1f} img/CPU-s")
        rows = []
        for (model, path, w), rs in rates.items():
            best = max(rs, key=lambda r: r["cpu"])
            rows.append(
                {
                    "model": model,
                    "path": path,
                    "workers": w,
                    "images_per_cpu_second": round(best["cpu"], 1),
                    "images_per_s": round(max(r["wall"] for r in rs), 1),
                    "images_per_s_per_core_wall": round(max(r["wall"] for r in rs) / max(1, w), 1),
                    "images_per_cpu_second_median": round(statistics.median(r["cpu"] for r in rs), 1),
                    "first_epoch_images_per_cpu_second": round(max(r["first_cpu"] for r in rs), 1),
                }
            )
        per_core = {(r["model"], r["path"], r["workers"]): r["images_per_cpu_second"] for r in rows}
        per_core_wall = {(r["model"], r["path"], r["workers"]): r["images_per_s_per_core_wall"] for r in rows}
        ratios, pod = {}, {}
        for model in ("teacher", "student"):
            for w in workers:

                def ratio(a, b, table=per_core, model=model, w=w):
                    return round(table[(model, a, w)] / table[(model, b, w)], 3)

                ratios[f"{model}_workers{w}"] = {
                    "ours_over_timm": ratio("ours", "timm"),
                    "ours_over_timm_wall": ratio("ours", "timm", per_core_wall),
                    "ours_over_timm_matched": ratio("ours", "timm_matched"),
                    "ours_over_old": ratio("ours", "old"),
                    "real_path": REAL_PATH[model],
                    "real_over_timm": ratio(REAL_PATH[model], "timm"),
                    "real_over_timm_wall": ratio(REAL_PATH[model], "timm", per_core_wall),
                    "gpu_path": GPU_PATH[model],
                    "gpu_path_over_timm": ratio(GPU_PATH[model], "timm"),
                    "goal": GOALS[model],
                    "goal_met": per_core[(model, REAL_PATH[model], w)] >= GOALS[model] * per_core[(model, "timm", w)],
                    "goal_met_gpu_path": per_core[(model, GPU_PATH[model], w)]
                    >= GOALS[model] * per_core[(model, "timm", w)],
                }
            w = max(workers)  # the loader's per-core rate with workers: what a pod's workers sustain
            sustain = {
                p: round(per_core[(model, p, w)] * LOADER_CORES)
                for p in ("ours", "old", "timm", "ours_deferred")
                + (("ours_half_decode", "ours_rendition", "ours_rendition_deferred") if model == "student" else ())
            }
            need = GPU_NEED[model]["images_per_s"]
            pod[model] = {
                "per_core_rate_from_workers": w,
                "loader_cores": LOADER_CORES,
                "sustained_images_per_s": sustain,
                "gpu_need_images_per_s": need,
                "gpu_need": GPU_NEED[model]["what"],
                "real_path": REAL_PATH[model],
                "gpu_path": GPU_PATH[model],
                "ours_covers_need": sustain[REAL_PATH[model]] >= need,
                "ours_share_of_need": round(sustain[REAL_PATH[model]] / need, 2),
                "ours_deferred_share_of_need": round(sustain[GPU_PATH[model]] / need, 2),
            }
        result = {
            "images": images,
            "batch": BATCH,
            "rounds": rounds,
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "image_bytes_mean": round(float(np.mean(sizes))),
            "bits_per_pixel": round(bpp, 2),
            "rows": rows,
            "ratios": ratios,
            "pod_16_cores": pod,
            "student_rendition_side": side,
            "student_rendition_bytes_mean": round(float(np.mean(student_bytes))),
            "decode_ms_per_image_1_thread": decode_ms(root, recs, student_root=student_root),
            "steps_ms_per_image_1_thread": steps_ms(root, recs, rounds=max(2, rounds + 1)),
        }
        log(format_table(result))
        return result
    finally:
        if own is not None:
            own.cleanup()


def format_table(res: dict) -> str:
    lines = [
        (
            f"data path, {res['images']} synthetic cached JPEGs ({res['image_bytes_mean'] / 1e3:.0f} kB, "
            f"{res['bits_per_pixel']} bit/px), batch {res['batch']}, best of {res['rounds']} rounds; "
            "per core = images per CPU-second of the loading processes"
        ),
        (f"{'model':8} {'path':23} {'workers':>7} {'img/s':>8} {'img/s/core':>10} {'(wall)':>8} {'1st epoch':>9}"),
    ]
    for r in sorted(res["rows"], key=lambda r: (r["model"] != "teacher", r["workers"], r["path"])):
        lines.append(
            f"{r['model']:8} {r['path']:23} {r['workers']:>7} {r['images_per_s']:>8.1f} "
            f"{r['images_per_cpu_second']:>10.1f} {r['images_per_s_per_core_wall']:>8.1f} "
            f"{r['first_epoch_images_per_cpu_second']:>9.1f}"
        )
    for k, v in res["ratios"].items():
        lines.append(
            f"{k}: {v['real_path']}/timm {v['real_over_timm']:.2f} (wall {v['real_over_timm_wall']:.2f}; "
            f"goal >= {v['goal']}: {'met' if v['goal_met'] else 'NOT met'}); photometric on the GPU: "
            f"{v['gpu_path']}/timm {v['gpu_path_over_timm']:.2f} "
            f"({'met' if v['goal_met_gpu_path'] else 'NOT met'}); "
            + (
                f"from the main cache: ours/timm {v['ours_over_timm']:.2f} (wall {v['ours_over_timm_wall']:.2f}), "
                if v["real_path"] != "ours"
                else ""
            )
            + f"ours/timm_matched {v['ours_over_timm_matched']:.2f}, ours/old {v['ours_over_old']:.2f}"
        )
    for model, p in res["pod_16_cores"].items():
        lines.append(
            f"{model}: {p['loader_cores']} loader cores sustain {p['sustained_images_per_s']} img/s; "
            f"the GPU needs {p['gpu_need_images_per_s']} ({p['gpu_need']})"
        )
    lines.append(f"decode ms/image (1 thread): {res['decode_ms_per_image_1_thread']}")
    for who, steps in res.get("steps_ms_per_image_1_thread", {}).items():
        lines.append(f"{who} ms/image by step (1 thread, decoded): {steps}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument(
        "--record",
        metavar="RESULTS_JSON",
        help='put the figures under "datapath" in this results file (e.g. bench/results.json), keeping its other keys',
    )
    a = ap.parse_args(argv)
    res = run(images=a.images, rounds=a.rounds, workers=tuple(a.workers))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    if a.record:
        path = Path(a.record)
        data = json.loads(path.read_text()) if path.exists() else {}
        data["datapath"] = res
        path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
