"""Distributed training helpers (DDP under torchrun), kept apart from the loop as timm keeps
them in timm/utils/distributed.py: the rank and world from torchrun's environment, process
group set-up, the DDP wrapper, barriers and sums over ranks, each rank's validation shard,
class-balanced sampling that works under DDP (DistributedWeightedSampler), the DataLoader
worker seeding of deterministic runs, and `launch`, which starts a training module in this
process or under torchrun."""

from __future__ import annotations

import importlib
import math
import os
import random
import subprocess
import sys
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler, Subset


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device): this process's GPU (or the CPU), and the process group
    (NCCL on GPUs, gloo on CPUs) when torchrun started several processes."""
    rank, world, local = distributed_env()
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def shutdown_distributed() -> None:
    """Tear the process group down at the end of a torchrun worker: left to interpreter exit,
    gloo/NCCL threads can abort the process ("terminate called without an active exception")
    after the work succeeded, and torchrun then reports the task as failed."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether a process group with more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank; nothing to wait for in a single process."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """`values` summed element-wise over the ranks (float64: counts stay exact up to 2**53)."""
    sums = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    return sums.tolist()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel when several ranks train it, else itself."""
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def rank_shard(dataset: Dataset, rank: int, world: int) -> Dataset:
    """Every world-th item from `rank`: under DDP each rank scores its shard of the validation
    set and the counts are summed, the same figures as one process in 1/world of the time."""
    return Subset(dataset, range(rank, len(dataset), world)) if world > 1 else dataset  # type: ignore[arg-type]


class DistributedWeightedSampler(Sampler[int]):
    """Weighted sampling with replacement that also works under DDP (DistributedSampler
    ignores weights). Every rank draws the same global sample of total_size indices, with
    probabilities proportional to `weights`, from a generator seeded with (seed, epoch), so
    the ranks agree without communicating; rank r keeps draws r, r + R, r + 2R... The shards
    are thus disjoint parts of one multinomial draw and hold num_samples each. Call
    set_epoch(epoch) before each epoch, as with DistributedSampler. num_replicas=1 is the
    single-process case (resumable: an epoch's draw depends on the epoch alone)."""

    def __init__(
        self,
        weights: Sequence[float] | np.ndarray | torch.Tensor,
        num_samples: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ):
        w = np.asarray(weights.detach().cpu() if isinstance(weights, torch.Tensor) else weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0:
            raise ValueError(
                f"DistributedWeightedSampler: weights must be a non-empty 1-D sequence, got shape {w.shape}"
            )
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
        return iter(self.global_draw()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn (PyTorch's reproducibility notes): numpy and python seeded from
    the worker's torch seed, which derives from the loader's seeded generator."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def launch(args: list[str], nproc: int, module: str) -> None:
    """Run `module`'s main(args): in-process for one device, torchrun DDP for several."""
    if nproc <= 1:
        importlib.import_module(module).main(args)
        return
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        *args,
    ]
    print("launching:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
