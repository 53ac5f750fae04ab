"""The training data path's fast train transform (shared/vision/augment.TrainTransform), JPEG
decoding (shared/vision/image_dataset.decode_image) and the smart-crop box cache, against the
torchvision Compose they replace; bench/bench_datapath's table on a tiny run."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from shared.vision import augment as A
from shared.vision.augment import build_train_transform
from shared.vision.image_dataset import (
    CachedImageDataset,
    class_list,
    decode_image,
    draft_factor,
)

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# every train key, scaled down from the plan's teacher section (448 -> 80, 384 -> 64)
FULL = {
    "resize": 80,
    "crop": 64,
    "horizontal_flip": 0.5,
    "vertical_flip": 0.2,
    "rotation": 20,
    "color_jitter": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.15},
    "blur": 0.5,
    "normalize": NORM,
}
STUDENT = {
    "resize": 73,
    "crop": 64,
    "horizontal_flip": 0.5,
    "rotation": 10,
    "color_jitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05},
    "normalize": NORM,
}


def photo(seed: int, size=(120, 90)) -> Image.Image:
    from bench.bench_datapath import synthetic_photo

    return synthetic_photo(np.random.default_rng(seed), *size)


@pytest.fixture(scope="module")
def photos():
    return [photo(s, (120, 90) if s % 3 else (90, 120)) for s in range(8)]


def seeded(t, img, seed):
    torch.manual_seed(seed)
    return t(img)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(NORM["std"]).view(3, 1, 1) + torch.tensor(NORM["mean"]).view(3, 1, 1)


def tensor_reference(t: A.TrainTransform) -> T.Compose:
    """The fast path's own Compose with ToTensor moved before the colour jitter: the
    same draws, torchvision's tensor formulas for the jitter and the blur."""
    steps = [s for s in t.reference.transforms if not isinstance(s, T.ToTensor)]
    at = next((i for i, s in enumerate(steps) if isinstance(s, (T.ColorJitter, T.RandomApply, T.Normalize))))
    return T.Compose(steps[:at] + [T.ToTensor()] + steps[at:])


@pytest.mark.parametrize("aug,smart", [(FULL, True), (FULL, False), (STUDENT, False)])
def test_fast_path_is_the_reference_augmentation(photos, aug, smart):
    fast = build_train_transform(aug, 64, smart)
    assert isinstance(fast, A.TrainTransform)
    ref_tensor = tensor_reference(fast)
    lo = (0 - torch.tensor(NORM["mean"])) / torch.tensor(NORM["std"])
    hi = (1 - torch.tensor(NORM["mean"])) / torch.tensor(NORM["std"])
    fast_b, old_b = [], []
    for k, img in enumerate(photos):
        for seed in range(3):
            a = seeded(fast, img, 100 * k + seed)
            old = seeded(fast.reference, img, 100 * k + seed)
            tens = seeded(ref_tensor, img, 100 * k + seed)
            assert a.shape == old.shape == (3, 64, 64) and a.dtype == old.dtype == torch.float32
            assert torch.isfinite(a).all()
            assert (a >= lo.view(3, 1, 1) - 1e-5).all() and (a <= hi.view(3, 1, 1) + 1e-5).all()
            # the same draws and torchvision's tensor formulas: equal up to the crop's resampling
            # (the box resize rounds within 1 grey level) carried through the jitter
            d = (unnormalise(a) - unnormalise(tens)).abs() * 255
            assert d.mean() < 0.6 and torch.quantile(d.flatten(), 0.99) < 3.0
            # the old PIL path rounds down after every jitter step and its hue goes through 8-bit
            # HSV: a few grey levels per pixel, the same image
            d_old = (unnormalise(a) - unnormalise(old)).abs() * 255
            assert d_old.mean() < 4.0
            fast_b.append(a)
            old_b.append(old)
    fast_b, old_b = torch.stack(fast_b), torch.stack(old_b)
    # over the batch: the same statistics per channel
    assert torch.allclose(fast_b.mean((0, 2, 3)), old_b.mean((0, 2, 3)), atol=0.03)
    assert torch.allclose(fast_b.std((0, 2, 3)), old_b.std((0, 2, 3)), rtol=0.03)


def test_fast_path_draws_the_same_random_numbers(photos):
    for aug, smart in ((FULL, True), (STUDENT, False), ({"resize": 64, "crop": 64}, False)):
        fast = build_train_transform(aug, 64, smart)
        for seed in range(6):
            seeded(fast, photos[seed], seed)
            after_fast = torch.rand(3)
            seeded(fast.reference, photos[seed], seed)
            assert torch.equal(after_fast, torch.rand(3))


def test_geometry_is_exactly_the_references_without_jitter(photos):
    """Crop offsets, flips and rotation: pixel for pixel the Compose's (within the box
    resize's rounding: at most 2 grey levels, almost everywhere none)."""
    aug = {
        "resize": 80,
        "crop": 64,
        "horizontal_flip": 0.5,
        "vertical_flip": 0.5,
        "rotation": 30,
        "normalize": {"mean": [0, 0, 0], "std": [1, 1, 1]},
    }
    fast = build_train_transform(aug, 64, smart_crop=True)
    for img in photos:
        for seed in range(4):
            d = (seeded(fast, img, seed) - seeded(fast.reference, img, seed)).abs() * 255
            assert d.max() <= 2.0 + 1e-4 and d.mean() < 0.1
    same_size = build_train_transform({"resize": 90, "crop": 64, "normalize": NORM}, 64)
    for seed in range(4):  # no resize needed (short side 90): a plain crop, identical
        assert torch.equal(seeded(same_size, photos[1], seed), seeded(same_size.reference, photos[1], seed))


def test_fast_path_takes_any_mode_and_the_plan_sizes():
    grey = photo(3, (200, 150)).convert("L")
    t = build_train_transform(FULL, 64, True)
    assert seeded(t, grey, 0).shape == (3, 64, 64)
    plan = build_train_transform({**FULL, "resize": 448, "crop": 384}, 384, True)
    x = seeded(plan, photo(1, (597, 448)), 0)
    assert x.shape == (3, 384, 384) and x.dtype == torch.float32 and x.is_contiguous()
    assert build_train_transform(FULL, 64, fast=False).__class__ is T.Compose
    with pytest.raises(ValueError, match="decode_upsample"):
        build_train_transform(FULL, 64, decode_upsample=0.5)


def test_deferred_photometric_on_the_device_is_the_fast_path(photos):
    """defer_photometric: the loader's uint8 crop and drawn parameters, finished batched by
    DevicePhotometric, give the fast path's tensors (same seeds)."""
    for aug, smart in ((FULL, True), (STUDENT, False), ({**FULL, "blur": 1.0}, False)):
        fast = build_train_transform(aug, 64, smart)
        defer = build_train_transform(aug, 64, smart, defer_photometric=True)
        expected, crops, params = [], [], []
        for k, img in enumerate(photos):
            expected.append(seeded(fast, img, k))
            u8, p = seeded(defer, img, k)
            assert u8.dtype == torch.uint8 and u8.shape == (3, 64, 64) and p.shape == (A.PARAMS,)
            crops.append(u8)
            params.append(p)
        out = defer.device_photometric()(torch.stack(crops), torch.stack(params))
        assert out.dtype == torch.float32 and torch.allclose(out, torch.stack(expected), atol=2e-5)


@pytest.mark.parametrize("model", ["teacher", "student"])
def test_deferred_is_the_fast_path_at_the_plans_sizes(model):
    """The plan's sections at their real sizes: the teacher's 384 crops (smart crop) from a
    448 file, the student's 224 crops from its 256 rendition (no resampling: a plain crop).
    Deferred + DevicePhotometric gives the fast path's tensors for each seed, and the
    same per-channel statistics as the old torchvision Compose over the batch."""
    from bench.bench_datapath import plan_sections

    aug, size, smart = plan_sections()[model]
    short = 448 if model == "teacher" else aug["resize"]
    fast = build_train_transform(aug, size, smart)
    defer = build_train_transform(aug, size, smart, defer_photometric=True)
    imgs = [photo(40 + i, (round(short * 4 / 3), short) if i % 2 else (short, round(short * 4 / 3))) for i in range(3)]
    expected, crops, params, old = [], [], [], []
    for seed in range(8):
        img = imgs[seed % 3]
        expected.append(seeded(fast, img, seed))
        old.append(seeded(fast.reference, img, seed))
        u8, p = seeded(defer, img, seed)
        crops.append(u8)
        params.append(p)
    out = defer.device_photometric()(torch.stack(crops), torch.stack(params))
    assert out.shape == (8, 3, size, size) and torch.allclose(out, torch.stack(expected), atol=2e-5)
    old = torch.stack(old)
    assert torch.allclose(out.mean((0, 2, 3)), old.mean((0, 2, 3)), atol=0.03)
    assert torch.allclose(out.std((0, 2, 3)), old.std((0, 2, 3)), rtol=0.05)


def test_trainer_finishes_deferred_batches_before_the_model(tmp_path, monkeypatch):
    """shared/train/loop.fit with a deferred train transform (what training.photometric_on_gpu
    builds on CUDA), here on the CPU: the loader's [uint8 crops, parameters] go through the
    transform's DevicePhotometric, and the model sees the normalised float batch."""
    from shared.train.loop import TrainSettings, fit

    recs, root = _cache(tmp_path)
    classes = class_list(recs)
    defer = build_train_transform(FULL, 64, True, defer_photometric=True)
    train = CachedImageDataset(recs * 2, root, classes, defer)
    val = CachedImageDataset(recs, root, classes, A.build_eval_transform({"resize": 80, "center_crop": 64}, 64))
    calls, seen = [], []
    forward = A.DevicePhotometric.forward

    def spy(self, x, params):
        calls.append((x.dtype, tuple(x.shape), tuple(params.shape)))
        return forward(self, x, params)

    monkeypatch.setattr(A.DevicePhotometric, "forward", spy)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=4),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, len(classes)),
    )
    model.register_forward_pre_hook(lambda m, args: seen.append((args[0].dtype, float(args[0].min()))))
    settings = TrainSettings(
        epochs=1,
        batch_size=4,
        lr=1e-3,
        optimizer="adam",
        num_classes=len(classes),
        max_steps_per_epoch=1,
        num_workers=0,
        amp="off",
    )
    r = fit(
        model,
        train,
        val,
        settings,
        tmp_path / "run",
        checkpoint_meta={"model_name": "tiny", "classes": classes, "image_size": 64},
        log=lambda *_: None,
    )
    assert r.epochs_run == 1 and r.global_step == 1
    assert calls == [(torch.uint8, (4, 3, 64, 64), (4, A.PARAMS))]  # one train batch, finished once
    assert seen[0][0] == torch.float32 and seen[0][1] < 0  # normalised, not 0..255


def _float_image(seed: int = 0) -> torch.Tensor:
    x = torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(seed))
    x[:, :4] = 0.5  # grey: no chroma
    x[:, 4:8] = 0.0  # black
    x[:, 8:10] = 1.0  # white
    x[0, 10:14] = x[1, 10:14]  # r = g ties
    x[2, 14:18] = x[0, 14:18]  # r = b ties
    x[1, 18:22] = x[2, 18:22]  # g = b ties
    return x


@pytest.mark.parametrize("hue", [-0.5, -0.15, -0.01, 0.0, 0.05, 0.2, 0.5])
def test_hue_is_torchvisions_tensor_hue(hue):
    x = _float_image(1)
    ours = A.adjust_hue(x.numpy().copy(), hue)
    assert np.abs(ours - F.adjust_hue(x, hue).numpy()).max() < 2e-6


@pytest.mark.parametrize("f", [0.0, 0.6, 1.0, 1.4])
def test_brightness_contrast_saturation_are_torchvisions(f):
    x = _float_image(2)
    for ours, theirs in (
        (A.adjust_brightness_, F.adjust_brightness),
        (A.adjust_contrast_, F.adjust_contrast),
        (A.adjust_saturation_, F.adjust_saturation),
    ):
        assert np.abs(ours(x.numpy().copy(), f) - theirs(x, f).numpy()).max() < 2e-6


@pytest.mark.parametrize("kernel,sigma", [(3, 0.5), (5, 1.3), (13, 2.0)])
def test_blur_is_torchvisions(kernel, sigma):
    x = _float_image(3)
    ours = A.gaussian_blur_float(x.numpy().copy(), kernel, sigma)
    assert np.abs(ours - F.gaussian_blur(x, [kernel, kernel], [sigma, sigma]).numpy()).max() < 2e-6


def test_photometric_bands_give_the_whole_images_result(monkeypatch):
    a = np.asarray(photo(5, (96, 70)))
    mean, std = np.array(NORM["mean"], np.float32).reshape(3, 1, 1), np.array(NORM["std"], np.float32).reshape(3, 1, 1)
    ops = [("brightness", 1.3), ("contrast", 0.7), ("hue", 0.1), ("saturation", 1.2)]
    whole = A.photometric(a, ops, mean, std)
    monkeypatch.setattr(A, "_BAND_PIXELS", 96 * 7)  # 7-row bands, the last one short
    banded = A.photometric(a, ops, mean, std)
    assert np.abs(banded - whole).max() < 1e-5
    x = torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255  # and both are torchvision's sequence
    x = F.adjust_brightness(x, 1.3)
    x = F.adjust_hue(F.adjust_contrast(x, 0.7), 0.1)
    x = F.normalize(F.adjust_saturation(x, 1.2), NORM["mean"], NORM["std"])
    assert np.abs(banded - x.numpy()).max() < 1e-4


def _jpeg(path, size, quality=90):
    photo(7, size).save(path, "JPEG", quality=quality)
    return str(path)


def test_decode_reduces_a_jpeg_only_as_far_as_the_crop_allows(tmp_path):
    p = _jpeg(tmp_path / "a.jpg", (597, 448))
    assert decode_image(p).size == (597, 448) and decode_image(p).mode == "RGB"
    assert decode_image(p, 448).size == (597, 448)
    assert decode_image(p, 224).size == (299, 224)  # 1/2
    assert decode_image(p, 100).size == (150, 112)  # 1/4
    assert decode_image(p, 56).size == (75, 56)  # 1/8
    assert [draft_factor(597, 448, m) for m in (0, 449, 300, 224, 113, 112, 1)] == [1, 1, 1, 2, 2, 4, 8]
    assert draft_factor(5, 5, 1) == 4  # never below one pixel
    png = tmp_path / "b.png"
    photo(1, (120, 90)).save(png)
    assert decode_image(png, 10).size == (120, 90)  # only JPEGs are decoded reduced
    grey = tmp_path / "g.jpg"
    photo(2, (64, 48)).convert("L").save(grey)
    assert decode_image(grey).mode == "RGB"
    teacher = build_train_transform({**FULL, "resize": 448, "crop": 384}, 384, smart_crop=True)
    student = build_train_transform({**STUDENT, "resize": 256, "crop": 224}, 224)
    # the plan's crops from a 448 cache: no reduction would keep the pixels they are resized to
    assert draft_factor(597, 448, teacher.min_decode_side) == 1  # 358 px box -> 448: needs all of it
    assert draft_factor(597, 448, student.min_decode_side) == 1  # 448 -> 256 needs more than 224
    half = build_train_transform({**STUDENT, "resize": 256, "crop": 224}, 224, decode_upsample=1.15)
    assert draft_factor(597, 448, half.min_decode_side) == 2  # allowed to upsample 224 -> 256
    assert draft_factor(1200, 900, student.min_decode_side) == 2  # a larger cache: 450 >= 256


def _cache(tmp_path, n=6):
    recs = []
    for i in range(n):
        rel = f"ab/{i:02d}.jpg"
        (tmp_path / "ab").mkdir(exist_ok=True)
        photo(20 + i, (120, 90) if i % 2 else (90, 120)).save(tmp_path / rel, quality=90)
        recs.append({"image_id": f"img{i}", "taxon": f"T{i % 3}", "cache_path": rel})
    return recs, str(tmp_path)


def test_dataset_through_a_loader_matches_the_old_path(tmp_path):
    """A batch as the trainer's DataLoader builds it: the fast path's statistics are the
    old path's on the same seed and images."""
    recs, root = _cache(tmp_path)
    classes = class_list(recs)
    batches = {}
    for fast in (True, False):
        ds = CachedImageDataset(recs * 4, root, classes, build_train_transform(FULL, 64, True, fast=fast))
        loader = DataLoader(ds, batch_size=24, shuffle=True, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        x, _, _ = next(iter(loader))
        batches[fast] = x
        assert x.shape == (24, 3, 64, 64) and x.dtype == torch.float32
    assert torch.allclose(batches[True].mean((0, 2, 3)), batches[False].mean((0, 2, 3)), atol=0.03)
    assert torch.allclose(batches[True].std((0, 2, 3)), batches[False].std((0, 2, 3)), rtol=0.03)
    # deferred: the loader yields [uint8 crops, parameters]; the device module finishes them
    defer = build_train_transform(FULL, 64, True, defer_photometric=True)
    ds = CachedImageDataset(recs * 4, root, classes, defer)
    loader = DataLoader(ds, batch_size=24, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    (u8, params), _, _ = next(iter(loader))
    assert u8.dtype == torch.uint8 and u8.shape == (24, 3, 64, 64) and params.shape == (24, A.PARAMS)
    x = defer.device_photometric()(u8, params)
    assert torch.allclose(x.mean((0, 2, 3)), batches[False].mean((0, 2, 3)), atol=0.03)


def test_smart_crop_boxes_are_computed_once_and_shared_with_workers(tmp_path, monkeypatch):
    recs, root = _cache(tmp_path)
    t = build_train_transform(FULL, 64, smart_crop=True)
    ds = CachedImageDataset(recs, root, class_list(recs), t)
    assert ds._boxes is not None and (ds._boxes == -1).all()
    first = [seeded(lambda i: ds[i][0], i, i) for i in range(len(recs))]
    assert (ds._boxes >= 0).all()
    img = decode_image(ds.path(2))
    packed = int(ds._boxes[2])
    assert tuple((packed >> s) & 0xFFFF for s in (0, 16, 32, 48)) == t.smart_box(img)
    monkeypatch.setattr(t, "smart_box", lambda img: pytest.fail("the box should come from the cache"))
    again = [seeded(lambda i: ds[i][0], i, i) for i in range(len(recs))]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    monkeypatch.undo()
    # DataLoader workers fill the same table
    ds2 = CachedImageDataset(recs, root, class_list(recs), build_train_transform(FULL, 64, smart_crop=True))
    for _ in DataLoader(ds2, batch_size=3, num_workers=2):
        pass
    assert (ds2._boxes >= 0).all()
    plain = CachedImageDataset(recs, root, class_list(recs), build_train_transform(FULL, 64, smart_crop=False))
    assert plain._boxes is None


def test_bench_datapath_runs_and_reports(tmp_path):
    from bench import bench_datapath

    lines = []
    res = bench_datapath.run(str(tmp_path), images=32, rounds=1, workers=(0,), log=lines.append)
    rows = {(r["model"], r["path"], r["workers"]) for r in res["rows"]}
    assert {("teacher", p, 0) for p in ("ours", "old", "timm", "timm_matched", "ours_deferred")} <= rows
    assert ("student", "ours_half_decode", 0) in rows
    # the student's path since issue 16: its 256 px rendition, photometric on the CPU or deferred
    assert {("student", "ours_rendition", 0), ("student", "ours_rendition_deferred", 0)} <= rows
    assert res["ratios"]["student_workers0"]["real_path"] == "ours_rendition"
    assert res["ratios"]["teacher_workers0"]["gpu_path"] == "ours_deferred"
    assert res["student_rendition_side"] == 256
    assert 0 < res["decode_ms_per_image_1_thread"]["pil_full_student_rendition"]
    steps = res["steps_ms_per_image_1_thread"]
    assert steps["ours_teacher"]["hue"] == pytest.approx(
        steps["ours_teacher"]["jitter_with_hue_to_float_normalise"]
        - steps["ours_teacher"]["jitter_without_hue_to_float_normalise"],
        abs=2e-3,
    )
    assert steps["timm_teacher"]["whole_transform"] > 0
    assert all(r["images_per_cpu_second"] > 0 for r in res["rows"])
    assert set(res["ratios"]) == {"teacher_workers0", "student_workers0"}
    assert res["pod_16_cores"]["teacher"]["gpu_need_images_per_s"] == 1340
    assert 1.0 < res["bits_per_pixel"] < 5.0
    assert "ours/timm" in lines[-1]


# bench/bench_gpu.py: its code on the CPU with timm's tiny test models (no GPU figure is
# measured or recorded here)


def _tiny_gpu_config():
    from bench import bench_gpu

    return bench_gpu.Config(
        teacher_model="test_vit",
        teacher_size=32,
        teacher_classes=10,
        student_model="test_efficientnet",
        student_size=32,
        student_classes=20,
        student_batch=4,
        soft_k=4,
        compile=False,
        start_batch=2,
        max_batch=4,
        max_infer_batch=8,
        warmup=1,
        iters=1,
    )


def test_bench_gpu_refuses_to_run_without_cuda(tmp_path, monkeypatch, capsys):
    from bench import bench_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "results.json"
    assert bench_gpu.main(["--output", str(out)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not out.exists()


def test_bench_gpu_steps_flops_and_record_on_cpu(tmp_path):
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    from bench import bench_gpu

    cfg = _tiny_gpu_config()
    res = bench_gpu.measure(cfg, torch.device("cpu"), log=lambda *_: None)
    assert res["peak_bf16_tflops"] is None and "unknown device" in res["peak_source"]
    t = res["teacher"]
    assert t["batch"] == 4 and [s["batch"] for s in t["batch_search"]] == [2, 4]
    assert t["train"]["eager"]["images_per_s"] > 0 and t["train"]["eager"]["mfu"] is None
    assert "compiled" not in t["train"]
    assert t["logits_inference"]["batch"] == 8 and t["logits_inference"]["images_per_s"] > 0
    model = timm.create_model("test_vit", num_classes=10, img_size=32)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.eval()(torch.randn(1, 3, 32, 32))
    assert t["forward_flops_per_image"] == fc.get_total_flops() > 0
    assert t["train_gflops_per_image"] == round(3 * fc.get_total_flops() / 1e9, 3)
    s = res["student"]
    assert s["kd_sparse_top4"]["images_per_s"] > 0 and s["plain_ce"]["images_per_s"] > 0 and s["kd_over_ce"] > 0
    assert res["device_photometric"]["teacher"]["images_per_s"] > 0
    out = tmp_path / "results.json"
    out.write_text('{"benchmarks": {"bench_split": {"x": 1}}}')
    bench_gpu.record(out, res)
    import json

    data = json.loads(out.read_text())
    assert data["benchmarks"] == {"bench_split": {"x": 1}} and data["gpu"]["teacher"]["batch"] == 4
    assert bench_gpu.mfu(1e9, 1000, 100.0) == pytest.approx(0.01)


def test_bench_gpu_records_a_failing_compile_and_goes_on(monkeypatch):
    import dataclasses

    from bench import bench_gpu

    def no_compile(model, *a, **k):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", no_compile)
    cfg = dataclasses.replace(_tiny_gpu_config(), compile=True, max_batch=2, max_infer_batch=8)
    t = bench_gpu.bench_teacher(cfg, torch.device("cpu"), None, log=lambda *_: None)
    assert t["train"]["eager"]["images_per_s"] > 0
    assert "no C++ compiler" in t["train"]["compiled"]["error"]
    assert t["logits_inference"]["images_per_s"] > 0


def test_bench_gpu_kd_step_uses_the_projects_loss():
    from bench import bench_gpu
    from shared.distill.losses import kd_loss

    cfg = _tiny_gpu_config()
    loss_fn = bench_gpu.synthetic_kd_loss(6, 20, 4, cfg)
    lookup = bench_gpu.synthetic_soft_labels(6, 20, 4, cfg.temperature)  # the same synthetic labels
    logits, labels, idx = torch.randn(6, 20), torch.randint(0, 20, (6,)), torch.arange(6)
    i, v, has = lookup(idx)
    assert torch.allclose(loss_fn(logits, labels, idx), kd_loss(logits, i, v, labels, cfg.temperature, 0.7, 0.3, has))
    assert torch.allclose(v.sum(1), torch.ones(6), atol=1e-2) and (i >= 0).all() and i.shape == (6, 4)


def test_bench_gpu_batch_search_backs_off_at_out_of_memory():
    from bench import bench_gpu

    def fits_below_64(b):
        if b >= 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    best, tried = bench_gpu.find_batch(fits_below_64, 8, 1024, torch.device("cpu"), log=lambda *_: None)
    assert best == 32 and tried[-1] == {"batch": 64, "fits": False} and len(tried) == 4
    assert bench_gpu.find_batch(lambda b: None, 8, 32, torch.device("cpu"), log=lambda *_: None)[0] == 32

    def broken(b):
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError):
        bench_gpu.find_batch(broken, 8, 32, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="not even batch 64"):
        bench_gpu.find_batch(fits_below_64, 64, 128, torch.device("cpu"), log=lambda *_: None)


def test_bench_gpu_peak_table():
    from bench.bench_gpu import peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3")[0] == 989
    assert peak_tflops("NVIDIA H100 PCIe")[0] == 756
    assert peak_tflops("NVIDIA H200")[0] == 989
    assert peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312
    assert peak_tflops("NVIDIA L4")[0] == 121 and peak_tflops("NVIDIA L40S")[0] == 362
    assert peak_tflops("NVIDIA GeForce RTX 4090")[0] is None
    assert peak_tflops("NVIDIA GeForce RTX 4090", 165.2) == (165.2, "--peak-tflops")
