"""The training loop shared by teachers and the student, in timm's style:
AdamW (timm optimizers), warmup then cosine decay stepped per update (timm
scheduler), mixup/cutmix (timm Mixup), label smoothing, gradient clipping and
accumulation, AMP, channels_last, optional torch.compile, DDP under torchrun,
validation every epoch, TensorBoard, a resumable checkpoint every epoch, the
best checkpoint, early stopping, and a clear stop on a non-finite loss.

Also: class-balanced sampling that works under DDP (DistributedWeightedSampler), and
a deterministic mode (settings.deterministic) in which the same seed gives the same
weights bit for bit on the same hardware and software: torch's deterministic kernels,
RNGs reseeded from (seed, epoch, rank) every epoch, and each sample's augmentation
drawn from its own (seed, epoch, sample index) stream, whatever the worker count,
the rank or a resume."""
from __future__ import annotations

import io
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, Subset

from shared.atomic import atomic_open, verify_checksum, write_json
from shared.checkpoint import save_checkpoint, unwrap_model
from shared.progress import Progress, format_duration

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

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A seed in [0, 2**63) mixed from several integers (run seed, epoch, rank, sample index):
    SeedSequence hashes them, so neighbouring tuples give unrelated streams."""
    ss = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """torch's deterministic mode (PyTorch's reproducibility notes) while the block runs, restored
    after it: the student's two stages, tests and notebooks share one process.

    Ops torch has no deterministic kernel for warn (torch names them) instead of failing: on
    CUDA that includes adaptive_avg_pool2d's backward, which every timm CNN head uses and
    which with a 1x1 output still sums each gradient once."""
    if not enabled:
        yield
        return
    if torch.cuda.is_available():  # read when cuBLAS first runs; a value set by the user is kept
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              cudnn.deterministic, cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
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


class DistributedWeightedSampler(Sampler[int]):
    """Weighted sampling with replacement that also works under DDP (DistributedSampler
    ignores weights). Every rank draws the same global sample of total_size indices, with
    probabilities proportional to `weights`, from a generator seeded with (seed, epoch), so
    the ranks agree without communicating; rank r keeps draws r, r + R, r + 2R... The shards
    are thus disjoint parts of one multinomial draw and hold num_samples each. Call
    set_epoch(epoch) before each epoch, as with DistributedSampler. num_replicas=1 is the
    single-process case (resumable: an epoch's draw depends on the epoch alone)."""

    def __init__(self, weights: Sequence[float] | np.ndarray | torch.Tensor, num_samples: int | None = None,
                 num_replicas: int | None = None, rank: int | None = None, seed: int = 0):
        w = np.asarray(weights.detach().cpu() if isinstance(weights, torch.Tensor) else weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0:
            raise ValueError(f"DistributedWeightedSampler: weights must be a non-empty 1-D sequence, "
                             f"got shape {w.shape}")
        if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("DistributedWeightedSampler: weights must be finite, non-negative and not all 0")
        dist_on = dist.is_available() and dist.is_initialized()
        self.num_replicas = int(num_replicas if num_replicas is not None else dist.get_world_size() if dist_on else 1)
        self.rank = int(rank if rank is not None else dist.get_rank() if dist_on else 0)
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"DistributedWeightedSampler: rank {self.rank} is not in [0, {self.num_replicas})")
        total = len(w) if num_samples is None else int(num_samples)
        if total < 1:
            raise ValueError(f"DistributedWeightedSampler: num_samples must be at least 1, got {total}")
        self.p = w / w.sum()
        self.num_samples = math.ceil(total / self.num_replicas)  # per rank: every rank takes as many steps
        self.total_size = self.num_samples * self.num_replicas
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_draw(self) -> np.ndarray:
        """This epoch's draw over all ranks (what the shards are cut from)."""
        # numpy's Generator.choice: no category limit (torch.multinomial stops at 2**24 samples)
        rng = np.random.default_rng(np.random.SeedSequence([int(self.seed) & 0xFFFFFFFFFFFFFFFF, int(self.epoch)]))
        return rng.choice(len(self.p), size=self.total_size, replace=True, p=self.p)

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_draw()[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def _seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn (PyTorch's reproducibility notes): numpy and python seeded from
    the worker's torch seed, which derives from the loader's seeded generator."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed() -> tuple[int, int, torch.device]:
    rank, world, local = distributed_env()
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _better(metric: str, new: float, best: float | None) -> bool:
    if best is None:
        return True
    return new < best if metric == "loss" else new > best


@torch.no_grad()
def evaluate_top_k(model: torch.nn.Module, loader: DataLoader, device: torch.device,
                   dtype: torch.dtype | None, channels_last: bool, all_reduce: bool = False) -> dict[str, float]:
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
        sums = torch.tensor([n, hit1, hit5, loss_sum, loss_n], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        n, hit1, hit5, loss_sum, loss_n = (int(sums[0]), int(sums[1]), int(sums[2]), float(sums[3]),
                                           int(sums[4]))
    return {"top1_acc": hit1 / max(1, n), "top5_acc": hit5 / max(1, n),
            "loss": loss_sum / loss_n if loss_n else float("nan")}


def _save_training_state(path: Path, model, optimizer, scheduler, scaler, epoch: int, step: int,
                         best: float | None, best_epoch: int, bad_epochs: int, history: list) -> None:
    state = {"model": unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
             "epoch": epoch, "global_step": step, "best": best, "best_epoch": best_epoch,
             "bad_epochs": bad_epochs, "history": history,
             "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(),
                     "python": random.getstate()}}
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


def fit(model: torch.nn.Module, train_dataset: Dataset, val_dataset: Dataset, settings: TrainSettings,
        out_dir: str | os.PathLike, *, checkpoint_meta: dict,
        loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        sampler_weights: np.ndarray | None = None, log: Callable[[str], None] = print) -> FitResult:
    """Train `model`; resume from out_dir/last_checkpoint.pt when it is there.

    loss_fn(logits, targets, sample_indices) replaces the classification loss (the
    student's distillation); mixup is then off. checkpoint_meta holds the
    save_checkpoint fields (model_name, classes, image_size, ...). sampler_weights
    (one per train sample) are used when settings.weighted_sampling is on."""
    with deterministic_algorithms(settings.deterministic):
        return _fit(model, train_dataset, val_dataset, settings, Path(out_dir), checkpoint_meta=checkpoint_meta,
                    loss_fn=loss_fn, sampler_weights=sampler_weights, log=log)


def _fit(model: torch.nn.Module, train_dataset: Dataset, val_dataset: Dataset, settings: TrainSettings,
         out: Path, *, checkpoint_meta: dict, loss_fn: Callable | None, sampler_weights: np.ndarray | None,
         log: Callable[[str], None]) -> FitResult:
    import timm.optim
    import timm.scheduler
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    s = settings
    rank, world, device = init_distributed()
    main_proc = rank == 0
    seed_everything(s.seed + rank)
    out.mkdir(parents=True, exist_ok=True)
    say = log if main_proc else (lambda *_: None)

    model.to(device)
    if s.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = timm.optim.create_optimizer_v2(model, opt=s.optimizer, lr=s.lr, weight_decay=s.weight_decay)

    # Both reseeded every epoch, so an epoch's shuffle does not depend on the epochs before it and
    # a resumed run draws what the full one did. Two generators: the loader draws its workers' base
    # seed from its own when it starts them, every epoch or (persistent workers) the first only.
    shuffle_gen, loader_gen = torch.Generator().manual_seed(s.seed), torch.Generator().manual_seed(s.seed)
    if s.weighted_sampling and sampler_weights is None:
        say("WARNING: training.weighted_sampling is on but no sample weights were given; sampling uniformly")
    sampler: Sampler
    if s.weighted_sampling and sampler_weights is not None:
        if len(sampler_weights) != len(train_dataset):
            raise ValueError(f"sampler_weights: {len(sampler_weights)} weights for {len(train_dataset)} samples")
        # one global weighted draw per epoch, each rank its share (DistributedSampler would drop the weights)
        sampler = DistributedWeightedSampler(sampler_weights, num_samples=len(train_dataset), num_replicas=world,
                                             rank=rank, seed=s.seed)
    elif world > 1:
        sampler = DistributedSampler(train_dataset, num_replicas=world, rank=rank, shuffle=True, seed=s.seed)
    else:  # what shuffle=True builds, made explicit so that it can be wrapped below
        sampler = RandomSampler(train_dataset, generator=shuffle_gen)
    train_items: Dataset = train_dataset
    if s.deterministic:
        sampler, train_items = EpochTaggedSampler(sampler), SeededSamples(train_dataset, s.seed)
        say("deterministic: torch deterministic algorithms on, RNGs seeded per epoch and per sample")
    drop_last = len(train_dataset) // world > s.batch_size
    loader_kw = dict(num_workers=s.num_workers, pin_memory=device.type == "cuda",
                     persistent_workers=s.num_workers > 0)
    train_loader = DataLoader(train_items, batch_size=s.batch_size, sampler=sampler, drop_last=drop_last,
                              generator=loader_gen, worker_init_fn=_seed_worker if s.deterministic else None,
                              **loader_kw)
    # under DDP each rank scores every world-th val image and the counts are summed:
    # the same figures as one process, in 1/world of the time
    val_shard = Subset(val_dataset, range(rank, len(val_dataset), world)) if world > 1 else val_dataset
    val_loader = DataLoader(val_shard, batch_size=s.batch_size * 2, shuffle=False, **loader_kw)
    batches = len(train_loader) if not s.max_steps_per_epoch else min(len(train_loader), s.max_steps_per_epoch)
    updates_per_epoch = max(1, math.ceil(batches / s.grad_accum_steps))
    total_updates = updates_per_epoch * s.epochs
    scheduler = timm.scheduler.CosineLRScheduler(
        optimizer, t_initial=total_updates, lr_min=s.min_lr, warmup_t=int(s.warmup_epochs * updates_per_epoch),
        warmup_lr_init=s.lr * 0.01, warmup_prefix=True, t_in_epochs=False)

    dtype = amp_dtype(s.amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    mixup = None
    if loss_fn is None and s.mixup_active:
        mixup = Mixup(mixup_alpha=s.mixup_alpha, cutmix_alpha=s.cutmix_alpha, prob=s.mixup_prob,
                      label_smoothing=s.label_smoothing, num_classes=s.num_classes)
        criterion: Callable = SoftTargetCrossEntropy()
    elif s.label_smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(s.label_smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()

    result = FitResult(last_path=str(out / LAST), best_path=str(out / BEST))
    start_epoch, best, bad_epochs = 0, None, 0
    state = _load_training_state(out / LAST, say)
    if state is not None:
        unwrap_model(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, result.global_step = state["epoch"] + 1, state["global_step"]
        best, result.best_epoch, bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        result.history = state["history"]
        result.resumed_from_epoch = state["epoch"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(_numpy_rng_from(state["rng"]["numpy"]))
        random.setstate(state["rng"]["python"])
        say(f"resumed from {out / LAST}: epoch {state['epoch']} done, step {result.global_step}")
        if bad_epochs >= s.patience and s.early_stopping:
            start_epoch = s.epochs  # it had already stopped early
            result.stopped_early = True

    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if s.compile:
        train_model = torch.compile(train_model)
    writer = None
    if main_proc:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "logs"))

    # the run's ETA (on each epoch's line), from the epochs run in this process (a resume counts from there)
    run_progress = Progress(s.epochs, "epoch", start=start_epoch, every_s=math.inf, log=say)
    for epoch in range(start_epoch, s.epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        shuffle_gen.manual_seed(s.seed + epoch)
        loader_gen.manual_seed(derived_seed(s.seed, epoch))
        if s.deterministic:  # dropout, mixup/cutmix (numpy) etc. of this epoch: a function of (seed, epoch, rank)
            seed_everything(derived_seed(s.seed, epoch, rank))
        train_model.train()
        t0, seen, loss_sum, correct, n_loss = time.time(), 0, 0.0, 0, 0
        optimizer.zero_grad(set_to_none=True)
        # a line at most once a minute inside the epoch (an epoch at the plan's size takes hours)
        progress = Progress(batches, "step", label=f"epoch {epoch + 1}/{s.epochs}", rate_unit="img", log=say)
        # Deferred photometric augmentation (issue 16; training.photometric_on_gpu): a train
        # transform built with defer_photometric=True makes the loader yield [uint8 crops, the
        # jitter/blur parameters it drew]; its DevicePhotometric does the jitter, blur and
        # normalisation on the device, batched, so the CPU workers only decode and crop.
        tf = getattr(train_dataset, "transform", None)
        finish = tf.device_photometric().to(device) if getattr(tf, "defer_photometric", False) else None
        for i, (x, y, idx) in enumerate(train_loader):
            if i >= batches:
                break
            if finish is not None:
                x = finish(x[0].to(device, non_blocking=True), x[1].to(device, non_blocking=True))
            x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
            if s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            target = y
            if mixup is not None and len(x) % 2 == 0:
                x, target = mixup(x, y)
            elif mixup is not None:  # odd last batch: one-hot targets for the soft CE
                target = torch.nn.functional.one_hot(y, s.num_classes).float()
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = train_model(x)
                loss = loss_fn(logits.float(), y, idx) if loss_fn else criterion(logits.float(), target)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at epoch {epoch} step {result.global_step} (batch {i}); "
                    f"stopped, the last good checkpoint {out / LAST} is kept. Try a lower learning "
                    "rate, a longer warmup, or check the inputs/soft labels.")
            (scaler.scale(loss / s.grad_accum_steps) if scaler else loss / s.grad_accum_steps).backward()
            last_micro = (i + 1) % s.grad_accum_steps == 0 or i + 1 == batches
            if last_micro:
                if scaler:
                    scaler.unscale_(optimizer)
                if s.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                result.global_step += 1
                scheduler.step_update(result.global_step)
            loss_sum += loss.item() * len(x)
            n_loss += len(x)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(x)
            progress.update(1, work=len(x) * world, loss=loss_sum / max(1, n_loss))
        run_progress.update(1)
        train_metrics = {"train_loss": loss_sum / max(1, n_loss), "train_top1": correct / max(1, seen),
                         "images_per_s": seen * world / max(1e-9, time.time() - t0),
                         "lr": optimizer.param_groups[0]["lr"]}
        val = evaluate_top_k(model, val_loader, device, dtype, s.channels_last, all_reduce=world > 1)
        metric = val[s.early_stopping_metric]
        improved = _better(s.early_stopping_metric, metric, best)
        if improved:
            best, result.best_epoch, bad_epochs = metric, epoch, 0
        else:
            bad_epochs += 1
        row = {"epoch": epoch, "step": result.global_step, **train_metrics,
               **{f"val_{k}": v for k, v in val.items()}}
        result.history.append(row)
        say(f"epoch {epoch + 1}/{s.epochs} step {result.global_step} loss {row['train_loss']:.4f} "
            f"train_top1 {row['train_top1']:.3f} val_top1 {val['top1_acc']:.3f} "
            f"val_top5 {val['top5_acc']:.3f} val_loss {val['loss']:.4f} ({row['images_per_s']:.1f} img/s)"
            + (f"  ETA {format_duration(run_progress.eta_s())}" if epoch + 1 < s.epochs else ""))
        if main_proc:
            for k, v in row.items():
                if k not in ("epoch", "step"):
                    writer.add_scalar(k, v, epoch)
            writer.flush()
            if improved and s.save_best:
                save_checkpoint(out / BEST, model, metrics={**val, "epoch": epoch}, **checkpoint_meta)
            stop = s.early_stopping and bad_epochs >= s.patience
            if (epoch + 1) % max(1, s.checkpoint_every) == 0 or epoch + 1 == s.epochs or stop:
                _save_training_state(out / LAST, model, optimizer, scheduler, scaler, epoch,
                                     result.global_step, best, result.best_epoch, bad_epochs, result.history)
            write_json(out / "history.json", result.history)
        if s.early_stopping and bad_epochs >= s.patience:
            say(f"early stopping: no {s.early_stopping_metric} improvement for {bad_epochs} epochs")
            result.stopped_early = True
            break
        if world > 1:
            dist.barrier()
    result.epochs_run = len(result.history)
    result.best_metric = best
    if main_proc and not (out / BEST).exists() and s.save_best is False:
        save_checkpoint(out / BEST, model, metrics=result.history[-1] if result.history else {}, **checkpoint_meta)
    if world > 1:  # every rank sees the best checkpoint before the caller reads it (the next stage loads it)
        dist.barrier()
    if writer:
        writer.close()
    return result


def launch(args: list[str], nproc: int, module: str = "shared.teacher_training") -> None:
    """Run `module`'s main(args): in-process for one device, torchrun DDP for several."""
    if nproc <= 1:
        import importlib

        importlib.import_module(module).main(args)
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", module, *args]
    print("launching:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
