"""training.deterministic (plan 7.3, "Seed fijo produce mismo accuracy", "Script reproducible
genera exactamente mismo model"): the same seed gives bitwise-identical teacher and student
weights on CPU, with 0 or 2 data workers, and after a resume; a different seed does not."""

import copy
import random

import numpy as np
import pytest
import torch

from shared.config.student import load_student_config
from shared.config.teacher import load_teacher_config
from shared.io.checkpoint import load_checkpoint
from shared.train.distributed import DistributedWeightedSampler
from shared.train.loop import (
    EpochTaggedSampler,
    SeededSamples,
    TrainSettings,
    deterministic_algorithms,
    fit,
)
from shared.train.student import stage_settings, train_student
from shared.train.teacher import settings_from_config, train_teacher
from tests.conftest import TINY_TEACHER
from tests.unit.train.test_student_training import TINY_STUDENT, noisy_teacher_soft_labels

# Every source of randomness on: random augmentation (torchvision: torch's RNG), dropout
# (torch, main process), mixup/cutmix (numpy, main process), weighted sampling (sampler).
TEACHER = copy.deepcopy(TINY_TEACHER)
TEACHER["training"].update({"epochs": 2, "deterministic": True, "weighted_sampling": True})
TEACHER["augmentation"]["train"].update({"horizontal_flip": 0.5, "vertical_flip": 0.2, "rotation": 20, "blur": 0.3})
TEACHER["regularization"].update({"dropout": 0.2, "mixup_alpha": 0.4, "cutmix_alpha": 1.0, "mixup_prob": 0.8})
# The student's fine-tuning stage uses the aggressive augmentation: timm's RandAugment draws
# from python's `random`, RandomErasing and the crops from torch's.
STUDENT = copy.deepcopy(TINY_STUDENT)
STUDENT["model"]["dropout_rate"] = 0.2
STUDENT["training"].update({"distillation_epochs": 1, "finetune_epochs": 1, "deterministic": True})


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on 2 shared cores, 2 threads spin against other jobs and take 10x as long
    (results are bitwise-stable for a given thread count either way)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _with(cfg: dict, seed: int, workers: int, teacher: bool) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["training"]["seed"] = seed
    (cfg["data"] if teacher else cfg["training"])["num_workers"] = workers
    assert cfg["model"]["pretrained"] is False  # from scratch: no weights to stage
    return cfg


def _weights(best) -> dict[str, torch.Tensor]:
    """Every tensor of best_model.pt and of the final epoch's weights in last_checkpoint.pt beside it
    (the best epoch may be an early one)."""
    last = torch.load(best.parent / "last_checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    return {
        **{f"best.{k}": v for k, v in load_checkpoint(best)["state_dict"].items()},
        **{f"last.{k}": v for k, v in last.items()},
    }


def _identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_switch_defaults_on_and_reaches_the_trainer():
    """Plan 7.3 by default: teachers and the student train deterministically unless a config says not."""
    assert load_teacher_config({})["training"]["deterministic"] is True
    assert settings_from_config(load_teacher_config({}), 3).deterministic
    assert not settings_from_config(load_teacher_config({"training": {"deterministic": False}}), 3).deterministic
    s = load_student_config({})
    assert stage_settings(s, "distillation", 3).deterministic and stage_settings(s, "finetuning", 3).deterministic
    assert not stage_settings(
        load_student_config({"training": {"deterministic": False}}), "finetuning", 3
    ).deterministic


def test_deterministic_mode_names_the_ops_torch_alerts_on():
    """warn_only: an op without a deterministic kernel runs, and the block collects its name once
    (what the manifest reports); other warnings pass through and are not taken for alerts."""
    import warnings

    alert = (
        "adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but you set "
        "'torch.use_deterministic_algorithms(True, warn_only=True)'."
    )
    with warnings.catch_warnings(record=True):
        with deterministic_algorithms(True) as ops:
            assert torch.are_deterministic_algorithms_enabled()
            for _ in range(3):
                warnings.warn(alert, UserWarning, stacklevel=1)
            warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
        with deterministic_algorithms(False) as off:
            warnings.warn(alert, UserWarning, stacklevel=1)
    assert ops == ["adaptive_avg_pool2d_backward_cuda"]
    assert off == []  # not collected (nor set) when the mode is off
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_real_alert_is_named_in_warn_mode_and_an_error_in_strict_mode():
    """put_ without accumulate has no deterministic kernel on the CPU either: torch's own alert."""
    import warnings

    def nondeterministic_op():
        torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))

    with warnings.catch_warnings(record=True):
        with deterministic_algorithms(True, "warn") as ops:
            nondeterministic_op()
    assert ops == ["put_"]
    with pytest.raises(RuntimeError, match=r"put_ does not have(.|\n)*training.deterministic_ops: warn"):
        with deterministic_algorithms(True, "strict"):
            nondeterministic_op()
    assert not torch.are_deterministic_algorithms_enabled()  # given back after the error too
    with pytest.raises(ValueError, match="'loose'"):
        with deterministic_algorithms(True, "loose"):
            pass


def test_teachers_default_to_strict_and_the_student_to_warn():
    assert settings_from_config(load_teacher_config({}), 3).deterministic_ops == "strict"
    assert stage_settings(load_student_config({}), "distillation", 3).deterministic_ops == "warn"
    with pytest.raises(Exception, match="training.deterministic_ops: 'sometimes'"):
        load_teacher_config({"training": {"deterministic_ops": "sometimes"}})


def test_same_seed_same_teacher_bit_for_bit(cached_splits, tmp_path):
    runs = {}
    for name, seed, workers in (("a", 0, 0), ("b", 0, 0), ("workers", 0, 2), ("other_seed", 1, 0)):
        s = train_teacher(
            _with(TEACHER, seed, workers, True),
            cached_splits["train"],
            cached_splits["val"],
            cached_splits["cache_dir"],
            str(tmp_path / name),
            log=lambda m: None,
        )
        assert s["epochs_run"] == 2
        # what the manifest reports: deterministic, no op alerted on the CPU, the plan's batch
        assert s["determinism"] == {
            "deterministic": True,
            "mode": "strict",
            "nondeterministic_ops": [],
            "bitwise_reproducible": True,
        }
        assert s["stop_reason"].startswith("completed all 2 epochs") and s["batch_plan"]["effective_batch"] == 16
        curve = [{k: v for k, v in h.items() if k != "images_per_s"} for h in s["history"]]  # timing varies
        runs[name] = (_weights(tmp_path / name / "best_model.pt"), curve)
    a, a_hist = runs["a"]
    assert _identical(a, runs["b"][0]) and a_hist == runs["b"][1]
    # each sample's augmentation has its own seed: the worker count does not change the model
    assert _identical(a, runs["workers"][0]) and a_hist == runs["workers"][1]
    assert not _identical(a, runs["other_seed"][0])
    assert not torch.are_deterministic_algorithms_enabled()  # the process's mode is given back


def test_same_seed_same_student_bit_for_bit(cached_splits, tmp_path):
    soft = tmp_path / "soft.npz"
    noisy_teacher_soft_labels(cached_splits["train"], soft)
    finals = {}
    for name, seed, workers in (("a", 0, 0), ("b", 0, 0), ("workers", 0, 2), ("other_seed", 1, 0)):
        out = tmp_path / name
        r = train_student(
            _with(STUDENT, seed, workers, False),
            cached_splits["train"],
            cached_splits["val"],
            cached_splits["cache_dir"],
            str(out),
            str(soft),
            log=lambda m: None,
        )
        assert r["distillation"]["epochs_run"] == 1 and r["finetuning"]["epochs_run"] == 1
        # both stages, not only the one shipped
        finals[name] = [_weights(out / stage / "best_model.pt") for stage in ("distillation", "finetuning")]
    for stage in range(2):
        assert _identical(finals["a"][stage], finals["b"][stage])
        assert _identical(finals["a"][stage], finals["workers"][stage])
        assert not _identical(finals["a"][stage], finals["other_seed"][stage])


class Killed(Exception):
    """Stands for the job being killed."""


class _AugmentedToy(torch.utils.data.Dataset):
    """4 classes of 8x8 images with an augmentation drawing from torch, numpy and python;
    optionally fails at its n-th item, like a job killed in the middle of an epoch."""

    def __init__(self, n: int = 64, fail_at: int = 0):
        g = torch.Generator().manual_seed(0)
        self.y = torch.arange(n) % 4
        self.x = torch.randn(n, 3, 8, 8, generator=g) * 0.3 + self.y[:, None, None, None].float()
        self.fail_at, self.calls = fail_at, 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        self.calls += 1
        if self.fail_at and self.calls == self.fail_at:
            raise Killed(f"item {self.calls}")
        x = self.x[i] + 0.1 * torch.randn(3, 8, 8) + float(np.random.normal(0, 0.05))
        if random.random() < 0.5:
            x = x.flip(-1)
        return x, int(self.y[i]), i


def _toy_fit(out, workers: int = 0, fail_at: int = 0, deterministic: bool = True):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.3), torch.nn.Linear(192, 4))
    settings = TrainSettings(
        epochs=4,
        batch_size=16,
        lr=0.05,
        early_stopping=False,
        mixup_alpha=0.4,
        mixup_prob=1.0,
        num_classes=4,
        num_workers=workers,
        deterministic=deterministic,
    )
    r = fit(
        model,
        _AugmentedToy(fail_at=fail_at),
        _AugmentedToy(32),
        settings,
        out,
        checkpoint_meta={"model_name": "toy", "classes": list("abcd"), "image_size": 8},
        log=lambda m: None,
    )
    return model, r


def _killed_and_resumed(out, workers: int, deterministic: bool = True):
    # each worker counts its own items (half of the 64 per epoch with 2): fail in epoch 3
    with pytest.raises(Killed):
        _toy_fit(out, workers, fail_at=64 // max(1, workers) * 2 + 5, deterministic=deterministic)
    return _toy_fit(out, workers, deterministic=deterministic)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bit_for_bit_the_uninterrupted_run(tmp_path, workers):
    """Killed in epoch 3 (after epoch 2's checkpoint), resumed: the same weights as a run never
    stopped. The RNGs are reseeded from (seed, epoch, rank) each epoch and each sample's
    augmentation from (seed, epoch, index), so nothing depends on what the lost epoch drew,
    nor on persistent workers' RNG states (which a checkpoint cannot hold)."""
    full, r_full = _toy_fit(tmp_path / "full", workers)
    again, r = _killed_and_resumed(tmp_path / "killed", workers)
    assert r.resumed_from_epoch == 1 and r.global_step == r_full.global_step
    assert _identical(full.state_dict(), again.state_dict())
    assert [h["train_loss"] for h in r.history] == [h["train_loss"] for h in r_full.history]
    if workers:  # the control: without the switch, resumed workers draw other augmentations
        plain, _ = _toy_fit(tmp_path / "plain_full", workers, deterministic=False)
        plain_again, _ = _killed_and_resumed(tmp_path / "plain_killed", workers, deterministic=False)
        assert not _identical(plain.state_dict(), plain_again.state_dict())


def test_sample_augmentation_depends_on_seed_epoch_and_index_only():
    ds = SeededSamples(_AugmentedToy(8), seed=3)
    state = torch.get_rng_state()
    first = ds[(0, 5)][0]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG (dropout, mixup) is untouched
    torch.manual_seed(123), np.random.seed(1), random.seed(2)  # whatever the process drew before
    assert torch.equal(ds[(0, 5)][0], first)
    assert not torch.equal(ds[(1, 5)][0], first) and not torch.equal(SeededSamples(ds.dataset, 4)[(0, 5)][0], first)
    tagged = EpochTaggedSampler(DistributedWeightedSampler(np.ones(8), seed=0))
    tagged.set_epoch(2)
    assert all(e == 2 for e, _ in tagged) and len(list(tagged)) == len(tagged) == 8


def test_deterministic_mode_is_scoped():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled() == before
