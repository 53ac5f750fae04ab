"""The training loop shared by teachers and the student, shaped like timm's train.py:
`train_one_epoch` (one pass over the train loader: forward, loss, backward, clip, optimizer
and scheduler step per update), `validate` (top-1/top-5 and CE loss), `CheckpointSaver`
(the resumable state and its files: save, resume, the best checkpoint, early stopping) and
`fit`, a short orchestration over them. DDP helpers live in shared/train/distributed.py.

What the loop does: AdamW (timm optimizers), warmup then cosine decay stepped per update
(timm scheduler), mixup/cutmix (timm Mixup), label smoothing, gradient clipping and
accumulation, AMP, channels_last, optional torch.compile, DDP under torchrun, photometric
augmentation finished on the device (training.photometric_on_gpu), progress lines with rate
and ETA, validation every epoch, TensorBoard, a resumable checkpoint every epoch, the best
checkpoint, early stopping, and a clear stop on a non-finite loss.

Also a deterministic mode (settings.deterministic) in which the same seed gives the same
weights bit for bit on the same hardware and software: torch's deterministic kernels,
RNGs reseeded from (seed, epoch, rank) every epoch, and each sample's augmentation
drawn from its own (seed, epoch, sample index) stream, whatever the worker count,
the rank or a resume."""

from __future__ import annotations

import io
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from shared.io.atomic import atomic_open, verify_checksum, write_json
from shared.io.checkpoint import save_checkpoint, unwrap_model
from shared.io.progress import Progress, format_duration
from shared.train.distributed import (
    DistributedWeightedSampler,
    all_reduce_sum,
    barrier,
    init_distributed,
    rank_shard,
    seed_worker,
    wrap_ddp,
)

LAST = "last_checkpoint.pt"
BEST = "best_model.pt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainSettings:
    epochs: int = 10
    batch_size: int = 32
    grad_accum_steps: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-7
    warmup_epochs: float = 0
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    grad_clip: float = 0.0
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 0.0
    num_classes: int = 0
    early_stopping: bool = True
    patience: int = 3
    early_stopping_metric: str = "top1_acc"  # top1_acc | top5_acc | loss
    min_epochs: int = 0  # epochs after warm-up before a stop or a best checkpoint can happen
    min_delta: float = 0.0  # an improvement smaller than this does not count (nor become the best)
    save_best: bool = True
    checkpoint_every: int = 1
    amp: str = "auto"  # auto | bf16 | fp16 | off
    channels_last: bool = False
    compile: bool = False
    num_workers: int = 0
    seed: int = 42
    weighted_sampling: bool = False
    max_steps_per_epoch: int = 0  # 0: whole epoch
    deterministic: bool = False  # bitwise-reproducible runs (slower kernels on GPU)
    deterministic_ops: str = "warn"  # strict: an op with no deterministic kernel is an error; warn: it runs, named

    @property
    def mixup_active(self) -> bool:
        return self.mixup_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int = -1
    epochs_run: int = 0
    stopped_early: bool = False
    global_step: int = 0
    resumed_from_epoch: int = -1
    best_path: str = ""
    last_path: str = ""
    stop_reason: str = ""  # why training ended and which epoch became the best checkpoint
    deterministic: bool = False
    deterministic_ops: str = "warn"  # strict | warn (TrainSettings.deterministic_ops)
    nondeterministic_ops: list[str] = field(default_factory=list)  # torch's warn_only alerts, by op

    def to_dict(self) -> dict:
        return asdict(self)

    def determinism(self) -> dict[str, Any]:
        """What the manifest says about this training's reproducibility (plan 7.3): whether torch's
        deterministic mode was on and the ops it alerted on (warn_only: those ran nondeterministically)."""
        return {
            "deterministic": self.deterministic,
            "mode": self.deterministic_ops if self.deterministic else "off",
            "nondeterministic_ops": list(self.nondeterministic_ops),
            "bitwise_reproducible": self.deterministic and not self.nondeterministic_ops,
        }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A seed in [0, 2**63) mixed from several integers (run seed, epoch, rank, sample index):
    SeedSequence hashes them, so neighbouring tuples give unrelated streams."""
    ss = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


# Ops seen without a deterministic CUDA kernel in these models (PyTorch 2.x; the run's own
# alerts are what the manifest reports, this list is what to expect): adaptive_avg_pool2d's
# backward (every timm CNN head, the student) and the memory-efficient SDPA attention backward
# (timm ViT's fused attention, the teachers). With warn_only they run and are named.
KNOWN_NONDETERMINISTIC_CUDA_OPS = ("adaptive_avg_pool2d_backward_cuda", "_efficient_attention_backward")
_NONDETERMINISTIC_ALERT = "does not have a deterministic implementation"
DETERMINISTIC_OPS = ("strict", "warn")


def _alerted_op(text: str) -> str | None:
    """The op an alert of torch's warn_only mode names ("<op> does not have a deterministic
    implementation, but you set ..."; "Memory Efficient attention defaults to a
    non-deterministic algorithm ..."), or None for any other warning."""
    if _NONDETERMINISTIC_ALERT in text:
        return text.split(_NONDETERMINISTIC_ALERT)[0].strip() or "unnamed op"
    if "non-deterministic algorithm" in text and "attention" in text.lower():
        return "_efficient_attention_backward"
    return None


@contextmanager
def deterministic_algorithms(enabled: bool, ops: str = "warn") -> Iterator[list[str]]:
    """torch's deterministic mode (PyTorch's reproducibility notes) while the block runs, restored
    after it: the student's two stages, tests and notebooks share one process. Yields a list
    that collects the ops torch alerted on (sorted, once each) for the manifest.

    ops "warn" (torch's warn_only): an op torch has no deterministic kernel for runs and is
    named instead of failing: on CUDA that includes adaptive_avg_pool2d's backward, which every
    timm CNN head uses and which with a 1x1 output still sums each gradient once
    (KNOWN_NONDETERMINISTIC_CUDA_OPS). ops "strict": such an op is an error (at the first step
    that uses it), and SDPA attention takes its deterministic backward, which torch uses only
    in strict mode (in warn_only mode it keeps the faster nondeterministic one)."""
    if ops not in DETERMINISTIC_OPS:
        raise ValueError(f"deterministic ops: {ops!r} is not one of {', '.join(DETERMINISTIC_OPS)}")
    alerted: list[str] = []
    if not enabled:
        yield alerted
        return
    if torch.cuda.is_available():  # read when cuBLAS first runs; a value set by the user is kept
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cudnn = torch.backends.cudnn
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=ops == "warn")
    cudnn.deterministic, cudnn.benchmark = True, False
    with warnings.catch_warnings():
        warnings.filterwarnings("default", message=".*deterministic.*")  # shown (and noted) once per place
        shown = warnings.showwarning

        def note(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            op = _alerted_op(str(message))
            if op is not None and op not in alerted:
                alerted.append(op)
                alerted.sort()
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = note
        try:
            yield alerted
        except RuntimeError as e:
            if _NONDETERMINISTIC_ALERT not in str(e):
                raise
            raise RuntimeError(
                f"{e}\n(training.deterministic_ops: strict.) Set training.deterministic_ops: warn to let this op "
                "run nondeterministically (the manifest names it), or training.deterministic: false."
            ) from e
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
            cudnn.deterministic, cudnn.benchmark = before[2], before[3]


@contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Python's, numpy's and torch's CPU RNGs seeded from `seed` inside the block and given back
    their states after it (only the CPU generator: reseeding CUDA would reset GPU dropout)."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)


class SeededSamples(Dataset):
    """A training dataset whose random augmentation is reproducible: item (epoch, i) is
    dataset[i] drawn with torchvision's (torch), timm RandAugment's (python) and any numpy
    randomness seeded from (seed, epoch, i). A sample is then augmented the same way whichever
    worker loads it, with 0 or 8 workers, on any rank, and after a resume."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, i = key
        with _seeded_rngs(derived_seed(self.seed, epoch, i)):
            return self.dataset[i]


class EpochTaggedSampler(Sampler):
    """Yields (epoch, index) pairs from another sampler, for SeededSamples: the epoch travels
    with each index, so worker processes (persistent ones too) need no other message."""

    def __init__(self, sampler: Sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _better(metric: str, new: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Whether `new` beats `best` by more than min_delta (lower is better for the loss)."""
    if best is None:
        return not math.isnan(new)  # the first eligible value is the best, unless it is NaN
    return new < best - min_delta if metric == "loss" else new > best + min_delta


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    loader: Iterable,
    device: torch.device,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    all_reduce: bool = False,
) -> dict[str, float]:
    """Validation top-1/top-5 accuracy and CE loss (labels of -1 count as wrong, not in the loss).
    all_reduce: the loader holds this rank's shard; the counts are summed over ranks."""
    model.eval()
    n = hit1 = hit5 = 0
    loss_sum, loss_n = 0.0, 0
    for x, y, _ in loader:
        x, y = x.to(device), torch.as_tensor(y).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit1 += (top[:, 0] == y).sum().item()
        hit5 += (top == y[:, None]).any(dim=1).sum().item()
        known = y >= 0
        if known.any():
            loss_sum += torch.nn.functional.cross_entropy(logits[known], y[known], reduction="sum").item()
            loss_n += int(known.sum())
        n += len(y)
    if all_reduce:
        sums = all_reduce_sum([n, hit1, hit5, loss_sum, loss_n], device)
        n, hit1, hit5, loss_sum, loss_n = int(sums[0]), int(sums[1]), int(sums[2]), float(sums[3]), int(sums[4])
    return {
        "top1_acc": hit1 / max(1, n),
        "top5_acc": hit5 / max(1, n),
        "loss": loss_sum / loss_n if loss_n else float("nan"),
    }


evaluate_top_k = validate  # its name before the timm-shaped split (callers and tests use both)


def _save_training_state(
    path: Path,
    model,
    optimizer,
    scheduler,
    scaler,
    epoch: int,
    step: int,
    best: float | None,
    best_epoch: int,
    bad_epochs: int,
    history: list,
) -> None:
    state = {
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler else None,
        "epoch": epoch,
        "global_step": step,
        "best": best,
        "best_epoch": best_epoch,
        "bad_epochs": bad_epochs,
        "history": history,
        "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_open(path, "wb", checksum=True) as f:
        f.write(buf.getvalue())


def _numpy_rng_state() -> tuple:
    """numpy's RNG state with its key array as a tensor: the training state then holds only
    types torch.load(weights_only=True) reads (no numpy pickles)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))


def _numpy_rng_from(state: tuple) -> tuple:
    name, keys, pos, has_gauss, gauss = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)


def _load_training_state(path: Path, log: Callable) -> dict | None:
    if not path.exists():
        return None
    if not verify_checksum(path):
        log(f"WARNING: {path} does not match its checksum (truncated?); starting from scratch")
        return None
    try:  # data, never code: a training state that needs pickled code is refused like a truncated one
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable: treat like truncated
        log(f"WARNING: cannot read {path} ({e}); starting from scratch")
        return None


class CheckpointSaver:
    """The resumable state of a run and its files, as timm's CheckpointSaver owns them: the
    model, optimizer, scheduler and AMP scaler; the epoch, update count, best metric, epochs
    without improvement and the history. `save` writes out/last_checkpoint.pt (all a resume
    needs, RNG states included, read back weights_only), `resume` restores from it and
    `save_best` writes out/best_model.pt (the model and its metadata, shared/io/checkpoint.py)."""

    def __init__(
        self,
        out: str | os.PathLike,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler | None,
        settings: TrainSettings,
        checkpoint_meta: dict,
    ) -> None:
        self.out, self.model, self.optimizer, self.scheduler = Path(out), model, optimizer, scheduler
        self.scaler = scaler
        self.settings, self.checkpoint_meta = settings, checkpoint_meta
        self.epoch, self.global_step, self.best, self.best_epoch, self.bad_epochs = -1, 0, None, -1, 0
        self.history: list[dict] = []
        self.resumed_from_epoch, self.stopped_early = -1, False
        self.last_path, self.best_path = self.out / LAST, self.out / BEST

    @property
    def should_stop(self) -> bool:
        """Early stopping: `patience` epochs in a row without a better metric (counted only from
        first_eligible_epoch on, so warm-up can never end a run)."""
        return self.settings.early_stopping and self.bad_epochs >= self.settings.patience

    @property
    def first_eligible_epoch(self) -> int:
        """The first epoch (0-based) that may become the best checkpoint or count towards a stop:
        after warm-up (rounded up to whole epochs) plus min_epochs, and never later than the
        last epoch, so a run shorter than that still ships its last epoch."""
        s = self.settings
        guard = math.ceil(s.warmup_epochs) + max(0, s.min_epochs)
        return max(0, min(guard, s.epochs - 1))

    def stop_reason(self) -> str:
        """Why training ended and which epoch is the best checkpoint, in words (the manifest's)."""
        s, metric = self.settings, self.settings.early_stopping_metric
        ran = len(self.history)
        if self.stopped_early:
            why = (
                f"early stop at epoch {self.epoch + 1}: {metric} did not improve by min_delta {s.min_delta:g} "
                f"for {self.bad_epochs} epochs after epoch {self.best_epoch + 1}"
            )
        elif ran >= s.epochs:
            why = f"completed all {s.epochs} epochs"
        else:
            why = f"ended after {ran} of {s.epochs} epochs"
        guard = self.first_eligible_epoch
        span = "epoch 1 was" if guard == 1 else f"epochs 1-{guard} were"
        held = f"; {span} not eligible (warm-up {s.warmup_epochs:g} + min_epochs {s.min_epochs})" if guard else ""
        if self.best_epoch >= 0 and self.best is not None:
            return f"{why}; best checkpoint: epoch {self.best_epoch + 1} ({metric} {self.best:.4f}){held}"
        return f"{why}; no epoch had a finite {metric}{held}"

    def resume(self, log: Callable[[str], None] = print) -> int:
        """Restore everything from last_checkpoint.pt when a readable one is there (a truncated or
        unreadable one is ignored, with a warning); returns the first epoch left to run."""
        state = _load_training_state(self.last_path, log)
        if state is None:
            return 0
        unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = self.resumed_from_epoch = state["epoch"]
        self.global_step, self.best, self.best_epoch = state["global_step"], state["best"], state["best_epoch"]
        self.bad_epochs, self.history = state["bad_epochs"], state["history"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(_numpy_rng_from(state["rng"]["numpy"]))
        random.setstate(state["rng"]["python"])
        log(f"resumed from {self.last_path}: epoch {state['epoch']} done, step {self.global_step}")
        if self.should_stop:  # it had already stopped early
            self.stopped_early = True
            return self.settings.epochs
        return self.epoch + 1

    def update(self, epoch: int, row: dict, metric: float) -> bool:
        """Record an epoch's history row and validation metric; whether the metric is the best yet
        (by more than min_delta; an epoch before first_eligible_epoch never is)."""
        s = self.settings
        improved = epoch >= self.first_eligible_epoch and _better(
            s.early_stopping_metric, metric, self.best, s.min_delta
        )
        if improved:
            self.best, self.best_epoch, self.bad_epochs = metric, epoch, 0
        elif epoch >= self.first_eligible_epoch:
            self.bad_epochs += 1
        self.epoch = epoch
        self.history.append(row)
        return improved

    def save(self, epoch: int | None = None) -> None:
        """The resumable state after `epoch` (default: the last one recorded), atomically."""
        _save_training_state(
            self.last_path,
            self.model,
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.epoch if epoch is None else epoch,
            self.global_step,
            self.best,
            self.best_epoch,
            self.bad_epochs,
            self.history,
        )

    def save_best(self, metrics: dict, epoch: int) -> None:
        """best_model.pt: the model with checkpoint_meta and the epoch's validation metrics."""
        save_checkpoint(self.best_path, self.model, metrics={**metrics, "epoch": epoch}, **self.checkpoint_meta)

    def save_epoch(self, epoch: int, val: dict, improved: bool) -> None:
        """The main process's files after an epoch: the best model when it improved, the resumable
        state when due (every checkpoint_every epochs, the last one, an early stop), then
        history.json (written after the state, which a kill between the two leaves consistent)."""
        s = self.settings
        if improved and s.save_best:
            self.save_best(val, epoch)
        if (epoch + 1) % max(1, s.checkpoint_every) == 0 or epoch + 1 == s.epochs or self.should_stop:
            self.save(epoch)
        write_json(self.out / "history.json", self.history)

    def save_final(self) -> None:
        """With save_best off, best_model.pt is the last epoch's model, written once at the end."""
        if not self.best_path.exists() and self.settings.save_best is False:
            save_checkpoint(
                self.best_path, self.model, metrics=self.history[-1] if self.history else {}, **self.checkpoint_meta
            )

    def result(self) -> FitResult:
        return FitResult(
            history=self.history,
            best_metric=self.best,
            best_epoch=self.best_epoch,
            epochs_run=len(self.history),
            stopped_early=self.stopped_early,
            global_step=self.global_step,
            resumed_from_epoch=self.resumed_from_epoch,
            best_path=str(self.best_path),
            last_path=str(self.last_path),
            stop_reason=self.stop_reason(),
            deterministic=self.settings.deterministic,
            deterministic_ops=self.settings.deterministic_ops,
        )


@dataclass
class TrainStep:
    """What turns one loader batch into a (micro-)step, the pieces timm's train.py hands to its
    train_one_epoch: the device's finishing of deferred photometric augmentation, channels_last,
    mixup/cutmix, the forward and loss under AMP, the (scaled) backward, and the update (unscale,
    clip, step) after grad_accum_steps micro-batches."""

    device: torch.device
    criterion: Callable[..., torch.Tensor]
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    mixup: Callable | None = None
    num_classes: int = 0
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False
    grad_accum_steps: int = 1
    grad_clip: float = 0.0
    finish: torch.nn.Module | None = None  # a DevicePhotometric when the train transform defers it

    @classmethod
    def from_settings(
        cls,
        s: TrainSettings,
        device: torch.device,
        loss_fn: Callable | None = None,
        finish: torch.nn.Module | None = None,
    ) -> TrainStep:
        """The criterion (soft-target CE under mixup, label smoothing, plain CE), Mixup, AMP dtype
        and (fp16 only) GradScaler of `s`. A loss_fn (distillation) replaces the criterion and
        turns mixup off."""
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        dtype = amp_dtype(s.amp, device)
        mixup = None
        if loss_fn is None and s.mixup_active:
            mixup = Mixup(
                mixup_alpha=s.mixup_alpha,
                cutmix_alpha=s.cutmix_alpha,
                prob=s.mixup_prob,
                label_smoothing=s.label_smoothing,
                num_classes=s.num_classes,
            )
            criterion: Callable = SoftTargetCrossEntropy()
        elif s.label_smoothing > 0:
            criterion = LabelSmoothingCrossEntropy(s.label_smoothing)
        else:
            criterion = torch.nn.CrossEntropyLoss()
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return cls(
            device,
            criterion,
            loss_fn,
            mixup,
            s.num_classes,
            dtype,
            scaler,
            s.channels_last,
            s.grad_accum_steps,
            s.grad_clip,
            finish,
        )

    def inputs(self, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images on the device, labels, the criterion's targets: mixed soft ones under mixup)."""
        if self.finish is not None:  # the loader yielded [uint8 crops, their drawn jitter/blur parameters]
            x = self.finish(x[0].to(self.device, non_blocking=True), x[1].to(self.device, non_blocking=True))
        x, y = x.to(self.device, non_blocking=True), torch.as_tensor(y).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.mixup is None:
            return x, y, y
        if len(x) % 2 == 0:
            x, target = self.mixup(x, y)
            return x, y, target
        # timm's Mixup mixes pairs: an odd last batch gets one-hot targets for the soft CE
        return x, y, torch.nn.functional.one_hot(y, self.num_classes).float()

    def forward(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, idx: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, loss) under autocast; the loss in float32."""
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            logits = model(x)
            loss = self.loss_fn(logits.float(), y, idx) if self.loss_fn else self.criterion(logits.float(), target)
        return logits, loss

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.grad_accum_steps
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def update(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        """Unscale (fp16), clip, step, zero the gradients."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def train_one_epoch(
    epoch: int,
    model: torch.nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: TrainStep,
    *,
    global_step: int = 0,
    batches: int | None = None,
    world: int = 1,
    progress: Progress | None = None,
    checkpoint_path: str | os.PathLike | None = None,
) -> tuple[dict[str, float], int]:
    """One epoch over the first `batches` batches of `loader` (default: all) of (x, y, sample
    index); the scheduler steps per update (timm's step_update(num_updates)). Returns the
    epoch's train metrics and the update count after it. progress: counted per batch, in
    images over all `world` ranks. A NaN/inf loss raises NonFiniteLossError before its
    backward, naming checkpoint_path (the last good checkpoint, kept)."""
    batches = len(loader) if batches is None else batches  # type: ignore[arg-type]
    model.train()
    params = list(unwrap_model(model).parameters())  # what is clipped: DDP/compile wrap the same tensors
    t0, seen, correct, loss_sum = time.time(), 0, 0, 0.0
    optimizer.zero_grad(set_to_none=True)
    for i, (x, y, idx) in enumerate(loader):
        if i >= batches:
            break
        x, y, target = step.inputs(x, y)
        logits, loss = step.forward(model, x, y, target, idx)
        if not torch.isfinite(loss):
            kept = f"the last good checkpoint {checkpoint_path} is kept" if checkpoint_path else "nothing was saved"
            raise NonFiniteLossError(
                f"loss is {loss.item()} at epoch {epoch} step {global_step} (batch {i}); stopped, {kept}. "
                "Try a lower learning rate, a longer warmup, or check the inputs/soft labels."
            )
        step.backward(loss)
        if (i + 1) % step.grad_accum_steps == 0 or i + 1 == batches:
            step.update(optimizer, params)
            global_step += 1
            if scheduler is not None:
                scheduler.step_update(global_step)
        loss_sum += loss.item() * len(x)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(x)
        if progress is not None:
            progress.update(1, work=len(x) * world, loss=loss_sum / max(1, seen))
    metrics = {
        "train_loss": loss_sum / max(1, seen),
        "train_top1": correct / max(1, seen),
        "images_per_s": seen * world / max(1e-9, time.time() - t0),
        "lr": optimizer.param_groups[0]["lr"],
    }
    return metrics, global_step


@dataclass
class EpochLoader:
    """The train DataLoader and what is reseeded before each epoch, so that an epoch's shuffle
    does not depend on the epochs before it and a resumed run draws what the full one did. Two
    generators: the loader draws its workers' base seed from its own when it starts them,
    every epoch or (persistent workers) the first only."""

    loader: DataLoader
    sampler: Sampler
    shuffle_gen: torch.Generator
    loader_gen: torch.Generator
    seed: int

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.shuffle_gen.manual_seed(self.seed + epoch)
        self.loader_gen.manual_seed(derived_seed(self.seed, epoch))


def _loader_kw(s: TrainSettings, device: torch.device) -> dict[str, Any]:
    return dict(num_workers=s.num_workers, pin_memory=device.type == "cuda", persistent_workers=s.num_workers > 0)


def build_train_loader(
    dataset: Dataset,
    s: TrainSettings,
    *,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
    sampler_weights: np.ndarray | None = None,
    log: Callable[[str], None] = print,
) -> EpochLoader:
    """The train loader: this rank's share of one weighted draw per epoch (weighted_sampling with
    weights), a DistributedSampler shard under DDP, else a shuffle; per-sample seeding in
    deterministic mode."""
    shuffle_gen, loader_gen = torch.Generator().manual_seed(s.seed), torch.Generator().manual_seed(s.seed)
    if s.weighted_sampling and sampler_weights is None:
        log("WARNING: training.weighted_sampling is on but no sample weights were given; sampling uniformly")
    n = len(dataset)  # type: ignore[arg-type]
    sampler: Sampler
    if s.weighted_sampling and sampler_weights is not None:
        if len(sampler_weights) != n:
            raise ValueError(f"sampler_weights: {len(sampler_weights)} weights for {n} samples")
        # one global weighted draw per epoch, each rank its share (DistributedSampler would drop the weights)
        sampler = DistributedWeightedSampler(sampler_weights, num_samples=n, num_replicas=world, rank=rank, seed=s.seed)
    elif world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=s.seed)
    else:  # what shuffle=True builds, made explicit so that it can be wrapped below
        sampler = RandomSampler(dataset, generator=shuffle_gen)
    items = dataset
    if s.deterministic:
        sampler, items = EpochTaggedSampler(sampler), SeededSamples(dataset, s.seed)
        log("deterministic: torch deterministic algorithms on, RNGs seeded per epoch and per sample")
    drop_last = n // world > s.batch_size
    loader = DataLoader(
        items,
        batch_size=s.batch_size,
        sampler=sampler,
        drop_last=drop_last,
        generator=loader_gen,
        worker_init_fn=seed_worker if s.deterministic else None,
        **_loader_kw(s, device or torch.device("cpu")),
    )
    return EpochLoader(loader, sampler, shuffle_gen, loader_gen, s.seed)


def build_val_loader(
    dataset: Dataset, s: TrainSettings, *, rank: int = 0, world: int = 1, device: torch.device | None = None
) -> DataLoader:
    """This rank's validation shard (the counts are summed over ranks), in batches of twice the train size."""
    return DataLoader(
        rank_shard(dataset, rank, world),
        batch_size=s.batch_size * 2,
        shuffle=False,
        **_loader_kw(s, device or torch.device("cpu")),
    )


def build_scheduler(optimizer: torch.optim.Optimizer, s: TrainSettings, updates_per_epoch: int) -> Any:
    """timm's cosine schedule over all updates, after a linear warmup from lr/100; stepped per update."""
    import timm.scheduler

    return timm.scheduler.CosineLRScheduler(
        optimizer,
        t_initial=updates_per_epoch * s.epochs,
        lr_min=s.min_lr,
        warmup_t=int(s.warmup_epochs * updates_per_epoch),
        warmup_lr_init=s.lr * 0.01,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def device_finisher(dataset: Dataset, device: torch.device) -> torch.nn.Module | None:
    """Deferred photometric augmentation (issue 16; training.photometric_on_gpu): a train
    transform built with defer_photometric=True makes the loader yield [uint8 crops, the
    jitter/blur parameters it drew]; its DevicePhotometric does the jitter, blur and
    normalisation on the device, batched, so the CPU workers only decode and crop."""
    tf = getattr(dataset, "transform", None)
    return tf.device_photometric().to(device) if getattr(tf, "defer_photometric", False) else None


def _quiet(*_: object) -> None:
    """The log of ranks other than 0: one line per event, from rank 0."""


@dataclass
class _Run:
    """What fit builds before its first epoch."""

    rank: int
    world: int
    device: torch.device
    say: Callable[[str], None]
    model: torch.nn.Module  # unwrapped: validated and saved
    train_model: torch.nn.Module  # in DDP / compiled when set: trained
    optimizer: torch.optim.Optimizer
    scheduler: Any
    data: EpochLoader
    val_loader: DataLoader
    batches: int
    step: TrainStep
    saver: CheckpointSaver
    writer: Any


def _setup(
    model: torch.nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset,
    s: TrainSettings,
    out: Path,
    checkpoint_meta: dict,
    loss_fn: Callable | None,
    sampler_weights: np.ndarray | None,
    log: Callable[[str], None],
) -> tuple[_Run, int]:
    """Everything fit needs, in the order the RNG states depend on: seeded, built, resumed (which
    restores the saved RNG states), then wrapped (DDP, compile). Returns it and the first epoch."""
    import timm.optim

    rank, world, device = init_distributed()
    seed_everything(s.seed + rank)
    out.mkdir(parents=True, exist_ok=True)
    say = log if rank == 0 else _quiet
    model.to(device)
    if s.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = timm.optim.create_optimizer_v2(model, opt=s.optimizer, lr=s.lr, weight_decay=s.weight_decay)
    data = build_train_loader(
        train_dataset, s, rank=rank, world=world, device=device, sampler_weights=sampler_weights, log=say
    )
    val_loader = build_val_loader(val_dataset, s, rank=rank, world=world, device=device)
    batches = len(data.loader) if not s.max_steps_per_epoch else min(len(data.loader), s.max_steps_per_epoch)
    scheduler = build_scheduler(optimizer, s, max(1, math.ceil(batches / s.grad_accum_steps)))
    step = TrainStep.from_settings(s, device, loss_fn, finish=device_finisher(train_dataset, device))
    saver = CheckpointSaver(out, model, optimizer, scheduler, step.scaler, s, checkpoint_meta)
    start = saver.resume(say)
    train_model = wrap_ddp(model, device)
    if s.compile:
        train_model = torch.compile(train_model)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "logs"))
    return _Run(
        rank,
        world,
        device,
        say,
        model,
        train_model,
        optimizer,
        scheduler,
        data,
        val_loader,
        batches,
        step,
        saver,
        writer,
    ), start


def _epoch_line(row: dict, epochs: int, run_progress: Progress) -> str:
    epoch = row["epoch"]
    return (
        f"epoch {epoch + 1}/{epochs} step {row['step']} loss {row['train_loss']:.4f} "
        f"train_top1 {row['train_top1']:.3f} val_top1 {row['val_top1_acc']:.3f} "
        f"val_top5 {row['val_top5_acc']:.3f} val_loss {row['val_loss']:.4f} ({row['images_per_s']:.1f} img/s)"
        + (f"  ETA {format_duration(run_progress.eta_s())}" if epoch + 1 < epochs else "")
    )


def _log_scalars(writer: Any, row: dict, epoch: int) -> None:
    for k, v in row.items():
        if k not in ("epoch", "step"):
            writer.add_scalar(k, v, epoch)
    writer.flush()


def fit(
    model: torch.nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset,
    settings: TrainSettings,
    out_dir: str | os.PathLike,
    *,
    checkpoint_meta: dict,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    sampler_weights: np.ndarray | None = None,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train `model`; resume from out_dir/last_checkpoint.pt when it is there.

    loss_fn(logits, targets, sample_indices) replaces the classification loss (the
    student's distillation); mixup is then off. checkpoint_meta holds the
    save_checkpoint fields (model_name, classes, image_size, ...). sampler_weights
    (one per train sample) are used when settings.weighted_sampling is on."""
    s = settings
    with deterministic_algorithms(s.deterministic, s.deterministic_ops) as alerted_ops:
        run, start = _setup(
            model, train_dataset, val_dataset, s, Path(out_dir), checkpoint_meta, loss_fn, sampler_weights, log
        )
        saver, say = run.saver, run.say
        # the run's ETA (on each epoch's line), from the epochs run in this process (a resume counts from there)
        run_progress = Progress(s.epochs, "epoch", start=start, every_s=math.inf, log=say)
        for epoch in range(start, s.epochs):
            run.data.set_epoch(epoch)
            if s.deterministic:  # dropout, mixup/cutmix (numpy) etc. of this epoch: a function of (seed, epoch, rank)
                seed_everything(derived_seed(s.seed, epoch, run.rank))
            # a line at most once a minute inside the epoch (an epoch at the plan's size takes hours)
            progress = Progress(run.batches, "step", label=f"epoch {epoch + 1}/{s.epochs}", rate_unit="img", log=say)
            train, saver.global_step = train_one_epoch(
                epoch,
                run.train_model,
                run.data.loader,
                run.optimizer,
                run.scheduler,
                run.step,
                global_step=saver.global_step,
                batches=run.batches,
                world=run.world,
                progress=progress,
                checkpoint_path=saver.last_path,
            )
            run_progress.update(1)
            val = validate(
                run.model, run.val_loader, run.device, run.step.dtype, s.channels_last, all_reduce=run.world > 1
            )
            row = {"epoch": epoch, "step": saver.global_step, **train, **{f"val_{k}": v for k, v in val.items()}}
            improved = saver.update(epoch, row, val[s.early_stopping_metric])
            say(_epoch_line(row, s.epochs, run_progress))
            if run.rank == 0:
                _log_scalars(run.writer, row, epoch)
                saver.save_epoch(epoch, val, improved)
            if saver.should_stop:
                saver.stopped_early = True
                say(saver.stop_reason())
                break
            barrier()
        if run.rank == 0:
            saver.save_final()
        barrier()  # every rank sees the best checkpoint before the caller reads it (the next stage loads it)
        if run.writer:
            run.writer.close()
        result = saver.result()
        result.nondeterministic_ops = list(alerted_ops)
        if not saver.stopped_early:
            say(result.stop_reason)
        return result
