"""GPU throughput and MFU of the plan's models on one CUDA GPU (issue 16, part 3).

Needs a CUDA device: without one it prints why and exits with status 2, measuring
nothing. On one H100/H200 it takes about 4-6 minutes (most of it torch.compile).

    python -m bench.bench_gpu [--output bench/results.json] [--peak-tflops 989]
                              [--teacher-classes 9000] [--grad-accum 1] [--no-compile]

What it measures (synthetic input tensors already on the GPU: the GPU's own rate,
what the data path has to sustain):
- teacher training: timm vit_base_patch16_384, bf16 autocast, fused AdamW, SDPA
  attention (timm's fused_attn: F.scaled_dot_product_attention), label-smoothed CE and
  gradient clipping as the plan's config, with torch.compile off and on, at the largest
  power-of-two batch that fits (doubled until out of memory, then the last that fitted),
  optionally with gradient accumulation (--grad-accum: effective batch = batch x steps);
- teacher logits: forward only, bf16, inference mode, top-32 (what teacher_logits
  keeps), at the largest power-of-two batch that fits;
- student: mobilenetv2_100, 9,000 classes, 224 px, channels_last, bf16: one step with
  the project's distillation loss (shared/distill/losses.make_kd_loss_fn over top-32 sparse
  soft labels, looked up per sample index on the CPU as the trainer does) and a plain
  cross-entropy step of the same model and batch;
- the deferred data path's GPU side (shared/vision/augment.DevicePhotometric: the plan's colour
  jitter, blur and normalisation of uint8 batches), images/s at 384 and 224 px.
Images/s from timed loops after warm-up (torch.cuda.synchronize around them). Model
FLOPs per image from torch.utils.flop_counter.FlopCounterMode on one forward pass;
a training step counts 3 forwards (forward + backward). MFU = FLOPs/image x images/s
/ the GPU's dense bf16 peak (PEAK_BF16_TFLOPS by device name, or --peak-tflops).

Every figure goes into the results file under "gpu" (the file's other keys are kept),
with the date, GPU name, driver, CUDA, torch and timm versions.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets;
# matched in this order against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM / HBM3 ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


@dataclass
class Config:
    teacher_model: str = "vit_base_patch16_384"
    teacher_size: int = 384
    teacher_classes: int = 9000
    student_model: str = "mobilenetv2_100"
    student_size: int = 224
    student_classes: int = 9000
    student_batch: int = 256
    soft_k: int = 32
    grad_accum: int = 1
    compile: bool = True
    start_batch: int = 16
    max_batch: int = 1024  # training batch search stops here
    max_infer_batch: int = 2048
    warmup: int = 5
    iters: int = 20
    label_smoothing: float = 0.1  # teacher_global.yaml
    grad_clip: float = 1.0
    temperature: float = 3.0  # student.yaml's distillation
    kl_weight: float = 0.7
    ce_weight: float = 0.3


def peak_tflops(device_name: str, override: float | None = None) -> tuple[float | None, str]:
    """(dense bf16 peak TFLOP/s, where it came from) for a device name."""
    if override:
        return float(override), "--peak-tflops"
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value, f"table: {key}"
    return None, "unknown device: pass --peak-tflops for MFU"


def forward_flops(model: torch.nn.Module, image_size: int, device: torch.device, batch: int = 2) -> float:
    """Model FLOPs of one forward pass per image (FlopCounterMode: matmuls, convolutions,
    attention), counted on a small batch."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 3, image_size, image_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / batch


def mfu(flops_per_image: float, images_per_s: float, peak: float | None) -> float | None:
    return None if not peak else flops_per_image * images_per_s / (peak * 1e12)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def find_batch(
    try_batch: Callable[[int], None], start: int, limit: int, device: torch.device, log: Callable[[str], None] = print
) -> tuple[int, list[dict]]:
    """The largest power-of-two batch in [start, limit] for which try_batch runs: doubled
    until it runs out of memory, then backed off to the last that fitted. Raises when
    not even `start` fits."""
    tried, best, b = [], 0, start
    while b <= limit:
        try:
            try_batch(b)
            _sync(device)
            tried.append({"batch": b, "fits": True})
            best = b
        except Exception as e:  # only out-of-memory ends the search quietly
            if not is_oom(e):
                raise
            tried.append({"batch": b, "fits": False})
            log(f"  batch {b}: out of memory")
            break
        finally:
            _free(device)
        b *= 2
    if not best:
        raise RuntimeError(f"not even batch {start} fits")
    return best, tried


def time_loop(step: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per step after warm-up."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def make_optimizer(model: torch.nn.Module, device: torch.device, lr: float = 1e-4) -> torch.optim.Optimizer:
    """AdamW, fused on CUDA (one kernel for all parameters)."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, fused=device.type == "cuda")


def train_step_fn(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: int,
    image_size: int,
    num_classes: int,
    device: torch.device,
    loss_fn: Callable | None = None,
    grad_accum: int = 1,
    grad_clip: float = 0.0,
    label_smoothing: float = 0.0,
    channels_last: bool = False,
    dtype: torch.dtype | None = torch.bfloat16,
) -> Callable[[], torch.Tensor]:
    """One optimizer update as shared/train/loop.fit makes it (autocast forward, loss in
    float32, backward, clipping, step), over grad_accum micro-batches of `batch`, on fixed
    random inputs. loss_fn(logits, labels, sample_indices) replaces the CE (distillation)."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)
    idx = torch.arange(batch)  # sample indices stay on the CPU, as the DataLoader gives them
    use_amp = dtype is not None

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        for _ in range(grad_accum):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=use_amp):
                logits = model(x)
                if loss_fn is not None:
                    loss = loss_fn(logits.float(), y, idx)
                else:
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
            (loss / grad_accum).backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        return loss.detach()

    return step


def synthetic_soft_labels(num_samples: int, num_classes: int, k: int, temperature: float):
    """A shared/distill/losses.SoftLabelLookup over synthetic top-k soft labels (rows sum
    to 1), one per sample index."""
    import numpy as np

    from shared.distill.losses import SoftLabelLookup
    from shared.distill.soft_labels import SoftLabels

    rng = np.random.default_rng(0)
    idx = np.stack([rng.choice(num_classes, k, replace=False) for _ in range(num_samples)]).astype(np.int32)
    vals = rng.dirichlet(np.ones(k) * 0.3, num_samples).astype(np.float16)
    ids = np.array([f"s{i}" for i in range(num_samples)])
    classes = [f"c{i:05d}" for i in range(num_classes)]
    return SoftLabelLookup(SoftLabels(ids, idx, vals, classes, temperature), list(ids), classes)


def synthetic_kd_loss(num_samples: int, num_classes: int, k: int, cfg: Config) -> Callable:
    """The student's distillation loss (shared/distill/losses.make_kd_loss_fn, the plan's
    temperature and weights) over synthetic_soft_labels."""
    from shared.distill.losses import make_kd_loss_fn

    lookup = synthetic_soft_labels(num_samples, num_classes, k, cfg.temperature)
    return make_kd_loss_fn(lookup, cfg.temperature, cfg.kl_weight, cfg.ce_weight)


def _create(name: str, num_classes: int, image_size: int, device: torch.device) -> torch.nn.Module:
    import timm

    kw = {"img_size": image_size} if "vit" in name else {}
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kw).to(device)


def bench_teacher(cfg: Config, device: torch.device, peak: float | None, log=print) -> dict:
    """ViT training: batch search (eager), then images/s eager and compiled; logits inference."""
    model = _create(cfg.teacher_model, cfg.teacher_classes, cfg.teacher_size, device)
    flops = forward_flops(model, cfg.teacher_size, device)
    opt = make_optimizer(model, device)

    def try_train(b: int) -> None:
        train_step_fn(
            model,
            opt,
            b,
            cfg.teacher_size,
            cfg.teacher_classes,
            device,
            label_smoothing=cfg.label_smoothing,
            grad_clip=cfg.grad_clip,
        )()
        opt.zero_grad(set_to_none=True)

    batch, tried = find_batch(try_train, cfg.start_batch, cfg.max_batch, device, log)
    log(f"teacher {cfg.teacher_model}: batch {batch} fits ({tried})")
    out = {
        "model": cfg.teacher_model,
        "image_size": cfg.teacher_size,
        "classes": cfg.teacher_classes,
        "sdpa_fused_attention": any(getattr(m, "fused_attn", False) for m in model.modules()),
        "dtype": "bfloat16 autocast",
        "optimizer": "AdamW (fused)" if device.type == "cuda" else "AdamW",
        "forward_flops_per_image": flops,
        "forward_gflops_per_image": round(flops / 1e9, 3),
        "train_gflops_per_image": round(3 * flops / 1e9, 3),
        "batch_search": tried,
        "batch": batch,
        "grad_accum": cfg.grad_accum,
        "effective_batch": batch * cfg.grad_accum,
        # what config/cluster.yaml's teachers.overrides would say for this batch (its lr scaling
        # rule then adapts the plan's learning rate to the effective batch)
        "config_keys": {"training.per_gpu_batch_size": batch, "training.grad_accum_steps": cfg.grad_accum},
        "train": {},
    }
    for compiled in (False, True) if cfg.compile else (False,):
        key = "compiled" if compiled else "eager"
        try:
            out["train"][key] = _time_teacher(model, opt, batch, flops, compiled, cfg, device, peak, log)
        except Exception as e:  # torch.compile unavailable or failing here: recorded, the rest still runs
            if not compiled:
                raise
            out["train"][key] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
            log(f"teacher train compiled: failed: {e}")
        opt.zero_grad(set_to_none=True)
        _free(device)
    opt.zero_grad(set_to_none=True)
    opt.state.clear()  # the logits batch search gets the optimizer's memory
    _free(device)
    out["logits_inference"] = bench_logits(model, flops, cfg, device, peak, log)
    return out


def _time_teacher(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batch: int,
    flops: float,
    compiled: bool,
    cfg: Config,
    device: torch.device,
    peak: float | None,
    log=print,
) -> dict:
    """images/s of teacher updates at `batch` (halved while it runs out of memory)."""
    m = torch.compile(model) if compiled else model
    b = batch
    while True:
        try:
            step = train_step_fn(
                m,
                opt,
                b,
                cfg.teacher_size,
                cfg.teacher_classes,
                device,
                grad_accum=cfg.grad_accum,
                grad_clip=cfg.grad_clip,
                label_smoothing=cfg.label_smoothing,
            )
            t0 = time.perf_counter()
            step()  # compiles on the first call
            _sync(device)
            first = time.perf_counter() - t0
            sec = time_loop(step, device, cfg.warmup, cfg.iters)
            break
        except Exception as e:
            if not is_oom(e) or b <= 1:
                raise
            opt.zero_grad(set_to_none=True)
            _free(device)
            b //= 2
            log(f"  compile={compiled}: out of memory, batch {b}")
    rate = b * cfg.grad_accum / sec
    res = {
        "batch": b,
        "seconds_per_update": round(sec, 4),
        "images_per_s": round(rate, 1),
        "first_step_seconds": round(first, 1),
        "mfu": _round(mfu(3 * flops, rate, peak)),
    }
    log(
        f"teacher train {'compiled' if compiled else 'eager'}: batch {b} x {cfg.grad_accum}: {rate:.1f} img/s, "
        f"MFU {res['mfu']}"
    )
    return res


def bench_logits(
    model: torch.nn.Module, flops: float, cfg: Config, device: torch.device, peak: float | None, log=print
) -> dict:
    """Teacher logits: forward only, bf16, inference mode, top-k kept on the device."""
    model.eval()
    x_cache: dict[int, torch.Tensor] = {}

    def step_for(b: int) -> Callable[[], None]:
        if b not in x_cache:
            x_cache.clear()
            x_cache[b] = torch.randn(b, 3, cfg.teacher_size, cfg.teacher_size, device=device)
        x = x_cache[b]

        def step() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                logits = model(x).float()
                logits.topk(min(cfg.soft_k, logits.shape[1]), dim=1)
                torch.logsumexp(logits, dim=1)

        return step

    batch, tried = find_batch(lambda b: step_for(b)(), cfg.start_batch * 4, cfg.max_infer_batch, device, log)
    sec = time_loop(step_for(batch), device, cfg.warmup, cfg.iters)
    x_cache.clear()
    model.train()
    rate = batch / sec
    log(f"teacher logits: batch {batch}: {rate:.1f} img/s")
    return {
        "batch_search": tried,
        "batch": batch,
        "images_per_s": round(rate, 1),
        "gflops_per_image": round(flops / 1e9, 3),
        "mfu": _round(mfu(flops, rate, peak)),
    }


def bench_student(cfg: Config, device: torch.device, peak: float | None, log=print) -> dict:
    """MobileNetV2 training: the distillation step against a plain CE step."""
    model = _create(cfg.student_model, cfg.student_classes, cfg.student_size, device)
    model = model.to(memory_format=torch.channels_last)
    flops = forward_flops(model, cfg.student_size, device)
    kd = synthetic_kd_loss(cfg.student_batch, cfg.student_classes, cfg.soft_k, cfg)
    out = {
        "model": cfg.student_model,
        "image_size": cfg.student_size,
        "classes": cfg.student_classes,
        "batch": cfg.student_batch,
        "soft_label_k": cfg.soft_k,
        "channels_last": True,
        "dtype": "bfloat16 autocast",
        "forward_flops_per_image": flops,
        "forward_gflops_per_image": round(flops / 1e9, 4),
        "train_gflops_per_image": round(3 * flops / 1e9, 4),
    }
    kd_name = f"kd_sparse_top{cfg.soft_k}"
    for name, loss_fn in ((kd_name, kd), ("plain_ce", None)):
        opt = make_optimizer(model, device)
        step = train_step_fn(
            model,
            opt,
            cfg.student_batch,
            cfg.student_size,
            cfg.student_classes,
            device,
            loss_fn=loss_fn,
            channels_last=True,
        )
        sec = time_loop(step, device, cfg.warmup * 2, cfg.iters * 2)
        rate = cfg.student_batch / sec
        out[name] = {
            "images_per_s": round(rate, 1),
            "seconds_per_step": round(sec, 5),
            "mfu": _round(mfu(3 * flops, rate, peak)),
        }
        log(f"student {name}: {rate:.1f} img/s")
        del opt, step
        _free(device)
    kd_rate, ce_rate = out[kd_name]["images_per_s"], out["plain_ce"]["images_per_s"]
    out["kd_over_ce"] = round(kd_rate / ce_rate, 3) if ce_rate else None
    return out


def bench_device_photometric(cfg: Config, device: torch.device, log=print) -> dict:
    """The GPU side of the deferred data path (shared/vision/augment.DevicePhotometric): colour
    jitter, blur and normalisation of uint8 batches with the plan's augmentation
    (the teacher's 384 px section, the student's 224 px one), images/s."""
    from bench.bench_datapath import plan_sections
    from shared.vision.augment import (
        BLUR_SIGMA,
        build_train_transform,
        encode_photometric,
        jitter_ops,
    )

    out = {}
    for model, (aug, size, _) in plan_sections().items():
        size = cfg.teacher_size if model == "teacher" else cfg.student_size
        t = build_train_transform(aug, size, defer_photometric=True)
        batch = 256
        torch.manual_seed(0)
        params = []
        for _ in range(batch):  # the loader's draws: jitter order and factors, blur sigma
            ops = jitter_ops(t.jitter) if t.jitter is not None else []
            blurred = t.blur_p > 0 and not t.blur_p < torch.rand(1)
            sigma = torch.empty(1).uniform_(*BLUR_SIGMA).item() if blurred else None
            params.append(encode_photometric(ops, sigma))
        p = torch.stack(params).to(device)
        x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
        dev = t.device_photometric().to(device)
        sec = time_loop(lambda dev=dev, x=x, p=p: dev(x, p), device, cfg.warmup, cfg.iters)
        out[model] = {"image_size": size, "batch": batch, "images_per_s": round(batch / sec, 1)}
        log(f"device photometric {model} {size}px: {batch / sec:.0f} img/s")
    return out


def _round(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(v, nd)


def environment(device: torch.device) -> dict:
    import timm

    env = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            {
                "gpu": torch.cuda.get_device_name(device),
                "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "sm_count": props.multi_processor_count,
                "cudnn": torch.backends.cudnn.version(),
                "sdpa_backends": {
                    "flash": torch.backends.cuda.flash_sdp_enabled(),
                    "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                    "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                    "math": torch.backends.cuda.math_sdp_enabled(),
                },
            }
        )
    try:
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,name,power.limit", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        if q.returncode == 0 and q.stdout.strip():
            line = q.stdout.strip().splitlines()[0].split(", ")
            env["driver"] = line[0]
            env["nvidia_smi"] = ", ".join(line)
    except (OSError, subprocess.SubprocessError):
        env["driver"] = None
    return env


def measure(cfg: Config, device: torch.device, peak_override: float | None = None, log=print) -> dict:
    """Every figure, as the "gpu" section of bench/results.json."""
    env = environment(device)
    peak, peak_source = peak_tflops(env.get("gpu", device.type), peak_override)
    t0 = time.time()
    res = {
        **env,
        "peak_bf16_tflops": peak,
        "peak_source": peak_source,
        "config": asdict(cfg),
        "flops_method": "torch.utils.flop_counter.FlopCounterMode, one forward; training = 3 x forward",
    }
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    res["teacher"] = bench_teacher(cfg, device, peak, log)
    res["student"] = bench_student(cfg, device, peak, log)
    res["device_photometric"] = bench_device_photometric(cfg, device, log)
    res["bench_seconds"] = round(time.time() - t0, 1)
    return res


def record(results_path: str | Path, gpu: dict) -> None:
    """Put `gpu` under "gpu" in the results file, keeping its other keys."""
    path = Path(results_path)
    data = json.loads(path.read_text()) if path.exists() else {}
    data["gpu"] = gpu
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default="bench/results.json")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of this GPU, TFLOP/s")
    ap.add_argument("--teacher-classes", type=int, default=Config.teacher_classes)
    ap.add_argument("--student-batch", type=int, default=Config.student_batch)
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per update (effective batch)")
    ap.add_argument("--max-batch", type=int, default=Config.max_batch)
    ap.add_argument("--iters", type=int, default=Config.iters)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available() or not a.device.startswith("cuda"):
        print(
            "bench_gpu: no CUDA device here (torch.cuda.is_available() is False): nothing measured, "
            "nothing recorded. Run it on a GPU machine: python -m bench.bench_gpu",
            file=sys.stderr,
        )
        return 2
    cfg = Config(
        teacher_classes=a.teacher_classes,
        student_batch=a.student_batch,
        grad_accum=max(1, a.grad_accum),
        max_batch=a.max_batch,
        iters=a.iters,
        compile=not a.no_compile,
    )
    device = torch.device(a.device)
    res = measure(cfg, device, a.peak_tflops)
    record(a.output, res)
    print(json.dumps(res, indent=2))
    print(f"recorded under 'gpu' in {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
