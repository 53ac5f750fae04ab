"""Training throughput of our loop (shared/train/loop.fit) against a loop written to
mirror timm's reference train.py `train_one_epoch` (forward, loss, zero_grad,
backward, clip, optimizer step, scheduler step_update, loss.item() per step),
same model, batch, images, optimizer, scheduler and threads, on this CPU.
Also the teacher-logits storage per sample."""

from __future__ import annotations

import json
import tempfile
import time

import numpy as np
import torch

from shared.train.loop import TrainSettings, fit

MODEL, SIZE, BATCH, STEPS, CLASSES = "test_vit", 64, 32, 24, 100


def _data(n: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(
        torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (n,), generator=g), torch.arange(n)
    )


def _model():
    import timm

    torch.manual_seed(0)
    return timm.create_model(MODEL, pretrained=False, num_classes=CLASSES, img_size=SIZE)


def reference_loop(epochs: int = 2) -> float:
    """images/s of the last epoch of a timm-train.py-style loop."""
    import timm.optim
    import timm.scheduler
    from timm.loss import LabelSmoothingCrossEntropy

    model = _model()
    loader = torch.utils.data.DataLoader(_data(BATCH * STEPS), batch_size=BATCH, shuffle=True, drop_last=True)
    opt = timm.optim.create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    sched = timm.scheduler.CosineLRScheduler(opt, t_initial=STEPS * epochs, warmup_t=STEPS, t_in_epochs=False)
    loss_fn = LabelSmoothingCrossEntropy(0.1)
    updates, rate = 0, 0.0
    for _ in range(epochs):
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y, _ in loader:
            out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            updates += 1
            sched.step_update(num_updates=updates)
            loss.item()
            seen += len(x)
        rate = seen / (time.perf_counter() - t0)
    return rate


def our_loop(epochs: int = 2) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        s = TrainSettings(
            epochs=epochs,
            batch_size=BATCH,
            lr=1e-3,
            warmup_epochs=1,
            weight_decay=0.05,
            grad_clip=1.0,
            label_smoothing=0.1,
            early_stopping=False,
            amp="off",
        )
        r = fit(
            _model(),
            _data(BATCH * STEPS),
            _data(BATCH),
            s,
            tmp,
            log=lambda m: None,
            checkpoint_meta={"model_name": MODEL, "classes": [str(i) for i in range(CLASSES)], "image_size": SIZE},
        )
        return r.history[-1]["images_per_s"]


def run() -> dict:
    torch.set_num_threads(2)
    ours = [our_loop() for _ in range(2)]
    ref = [reference_loop() for _ in range(2)]
    from shared.distill.teacher_logits import TeacherLogits, bytes_per_sample, sparsify

    n, c, k = 20_000, 9000, 32
    rng = np.random.default_rng(0)
    rows = [sparsify(torch.from_numpy(rng.normal(0, 2, (1000, c)).astype(np.float32)), k) for _ in range(n // 1000)]
    idx, val, lse, conf = (np.concatenate(p) for p in zip(*rows, strict=True))
    tl = TeacherLogits(
        np.array([f"i{i:07d}" for i in range(n)]),
        idx,
        val,
        lse,
        conf,
        np.zeros(n, np.int32),
        [f"c{i}" for i in range(c)],
    )
    with tempfile.TemporaryDirectory() as tmp:
        tl.save(f"{tmp}/t.npz")
        import os

        file_bytes = os.path.getsize(f"{tmp}/t.npz") / n
    return {
        "train_model": MODEL,
        "train_image_size": SIZE,
        "train_batch": BATCH,
        "train_ours_images_per_s": round(max(ours), 1),
        "train_timm_reference_images_per_s": round(max(ref), 1),
        "train_ratio_ours_over_reference": round(max(ours) / max(ref), 3),
        "teacher_logits_k": k,
        "teacher_logits_bytes_per_sample": bytes_per_sample(tl),
        "teacher_logits_file_bytes_per_sample": round(file_bytes, 1),
        "teacher_logits_dense_float32_bytes_per_sample": c * 4,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
