"""The timm-shaped pieces of shared/train/loop.py on tiny models: train_one_epoch (updates,
gradient accumulation, scheduler steps, progress, a non-finite loss), validate (top-k and
loss, unknown labels), TrainStep (mixup's odd batch), CheckpointSaver (save/resume in the
existing file format, best checkpoint, early stop) and shared/train/distributed.launch."""

import inspect
import random
import sys

import numpy as np
import pytest
import torch

from shared.io.checkpoint import load_checkpoint
from shared.io.progress import Progress
from shared.train.distributed import launch
from shared.train.loop import (
    CheckpointSaver,
    NonFiniteLossError,
    TrainSettings,
    TrainStep,
    _load_training_state,
    _save_training_state,
    build_scheduler,
    train_one_epoch,
    validate,
)

META = {"model_name": "toy", "classes": list("abcd"), "image_size": 8}


def _batches(n_batches: int = 6, batch: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """Separable 4-class toy batches of (x, y, sample index): class c lights up pixel c."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n_batches):
        y = torch.arange(batch) % 4
        x = torch.randn(batch, 3, 4, 4, generator=g) * 0.3
        x[torch.arange(batch), 0, 0, y] += 3.0
        out.append((x, y, torch.arange(b * batch, (b + 1) * batch)))
    return out


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4))


def _parts(settings: TrainSettings, model: torch.nn.Module, updates_per_epoch: int):
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr)
    step = TrainStep.from_settings(settings, torch.device("cpu"))
    return opt, build_scheduler(opt, settings, updates_per_epoch), step


def test_train_one_epoch_updates_counts_and_learns():
    s = TrainSettings(epochs=3, lr=0.1)
    model = _model()
    opt, sched, step = _parts(s, model, 6)
    lines = []
    progress = Progress(6, "step", every_s=0, rate_unit="img", log=lines.append)
    losses, global_step = [], 0
    for epoch in range(3):
        m, global_step = train_one_epoch(
            epoch,
            model,
            _batches(),
            opt,
            sched,
            step,
            global_step=global_step,
            progress=progress if epoch == 0 else None,
        )
        losses.append(m["train_loss"])
        assert set(m) == {"train_loss", "train_top1", "images_per_s", "lr"} and m["images_per_s"] > 0
    assert global_step == 18 and losses[2] < losses[0]
    assert m["train_top1"] > 0.9 and m["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert progress.done == 6 and progress.work == 48 and lines  # one count per batch, images as work
    assert validate(model, _batches(seed=1), torch.device("cpu"))["top1_acc"] > 0.9


def test_train_one_epoch_gradient_accumulation_and_batch_cap():
    s = TrainSettings(lr=0.1, grad_accum_steps=4)
    model = _model()
    opt, sched, step = _parts(s, model, 2)
    calls = []
    sched.step_update = lambda n: calls.append(n)
    _, global_step = train_one_epoch(0, model, _batches(6), opt, sched, step, global_step=10)
    assert global_step == 12 and calls == [11, 12]  # after micro-batches 4 and 6 (the epoch's last)
    _, global_step = train_one_epoch(1, model, _batches(6), opt, None, step, batches=3)
    assert global_step == 1  # 3 batches: one update, on the capped epoch's last micro-batch


def test_accumulated_update_equals_one_large_batch():
    """Two micro-batches of 8 with grad_accum_steps=2 make the update one batch of 16 makes."""
    data = _batches(2)
    big = [(torch.cat([data[0][0], data[1][0]]), torch.cat([data[0][1], data[1][1]]), torch.arange(16))]
    models = []
    for accum, batches in ((2, data), (1, big)):
        model = _model()
        s = TrainSettings(lr=0.1, grad_accum_steps=accum)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        train_one_epoch(0, model, batches, opt, None, TrainStep.from_settings(s, torch.device("cpu")))
        models.append(model)
    assert torch.allclose(models[0][1].weight, models[1][1].weight, atol=1e-6)


def test_non_finite_loss_names_the_kept_checkpoint():
    s = TrainSettings(lr=0.1)
    model = _model()
    opt, sched, _ = _parts(s, model, 6)
    step = TrainStep(
        torch.device("cpu"), torch.nn.CrossEntropyLoss(), loss_fn=lambda logits, y, idx: logits.sum() * float("nan")
    )
    before = model[1].weight.detach().clone()
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2 step 7 \(batch 0\).*/x/last_checkpoint.pt"):
        train_one_epoch(2, model, _batches(), opt, sched, step, global_step=7, checkpoint_path="/x/last_checkpoint.pt")
    assert torch.equal(model[1].weight, before)  # stopped before any backward or update


def test_mixup_targets_and_the_odd_batch():
    s = TrainSettings(mixup_alpha=0.4, mixup_prob=1.0, num_classes=4)
    step = TrainStep.from_settings(s, torch.device("cpu"))
    x, y, _ = _batches(1)[0]
    _, y_out, target = step.inputs(x, y)
    assert torch.equal(y_out, y) and target.shape == (8, 4) and torch.allclose(target.sum(1), torch.ones(8))
    _, _, odd = step.inputs(x[:7], y[:7])  # timm's Mixup needs pairs: one-hot targets instead
    assert torch.equal(odd, torch.nn.functional.one_hot(y[:7], 4).float())
    assert TrainStep.from_settings(s, torch.device("cpu"), loss_fn=lambda *a: 0).mixup is None  # distillation


def test_validate_counts_top_k_and_skips_unknown_labels_in_the_loss():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0], [0, 5.0, 4, 0, 0, 0], [0, 0, 0, 0, 0, 5.0], [5.0, 0, 0, 0, 0, 0]])
    y = torch.tensor([0, 2, 1, -1])
    m = validate(Fixed(), [(logits[:2], y[:2], None), (logits[2:], y[2:], None)], torch.device("cpu"))
    assert m["top1_acc"] == 0.25 and m["top5_acc"] == 0.5  # -1 counts as wrong
    want = torch.nn.functional.cross_entropy(logits[:3], y[:3]).item()
    assert m["loss"] == pytest.approx(want)


def test_timm_test_model_trains_and_validates():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    s = TrainSettings(lr=0.01, label_smoothing=0.1)
    opt, sched, step = _parts(s, model, 2)
    data = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), torch.arange(4)) for _ in range(2)]
    m, global_step = train_one_epoch(0, model, data, opt, sched, step)
    assert global_step == 2 and np.isfinite(m["train_loss"])
    assert set(validate(model, data, torch.device("cpu"))) == {"top1_acc", "top5_acc", "loss"}


def _saver(tmp_path, settings: TrainSettings | None = None, seed: int = 0) -> CheckpointSaver:
    s = settings or TrainSettings(epochs=5)
    torch.manual_seed(seed)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    return CheckpointSaver(tmp_path, model, opt, build_scheduler(opt, s, 4), None, s, META)


def _train_a_bit(saver: CheckpointSaver) -> None:
    step = TrainStep.from_settings(saver.settings, torch.device("cpu"))
    _, saver.global_step = train_one_epoch(0, saver.model, _batches(4), saver.optimizer, saver.scheduler, step)


def test_saver_save_and_resume_round_trip(tmp_path):
    saver = _saver(tmp_path)
    assert saver.resume(print) == 0 and saver.resumed_from_epoch == -1  # nothing there: from scratch
    _train_a_bit(saver)
    assert saver.update(0, {"epoch": 0, "x": 1.0}, 0.5) is True
    assert saver.update(1, {"epoch": 1, "x": 2.0}, 0.4) is False
    np.random.seed(3), random.seed(4), torch.manual_seed(5)
    saver.save()
    want = (np.random.random(), random.random(), torch.rand(1))

    other = _saver(tmp_path, seed=1)  # other weights, a fresh optimizer
    logged = []
    assert other.resume(logged.append) == 2 and "resumed from" in logged[0]
    assert (np.random.random(), random.random(), torch.rand(1)) == want  # the RNGs continue where saved
    assert (other.epoch, other.resumed_from_epoch, other.global_step) == (1, 1, 4)
    assert (other.best, other.best_epoch, other.bad_epochs) == (0.5, 0, 1)
    assert other.history == saver.history
    for a, b in zip(saver.model.state_dict().values(), other.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert other.optimizer.state_dict()["state"][0]["step"] == saver.optimizer.state_dict()["state"][0]["step"]
    assert other.scheduler.state_dict() == saver.scheduler.state_dict()
    r = other.result()
    assert r.resumed_from_epoch == 1 and r.epochs_run == 2 and r.last_path == str(tmp_path / "last_checkpoint.pt")


def test_saver_writes_the_existing_training_state_format(tmp_path):
    """saver.save writes what _save_training_state always wrote (old checkpoints resume, new ones
    read as before), and resumes a file written by _save_training_state directly."""
    saver = _saver(tmp_path / "new")
    _train_a_bit(saver)
    saver.update(0, {"epoch": 0}, 0.5)
    saver.save(0)
    new = _load_training_state(tmp_path / "new" / "last_checkpoint.pt", print)
    (tmp_path / "old").mkdir()
    _save_training_state(
        tmp_path / "old" / "last_checkpoint.pt",
        saver.model,
        saver.optimizer,
        saver.scheduler,
        None,
        0,
        saver.global_step,
        0.5,
        0,
        0,
        saver.history,
    )
    old = _load_training_state(tmp_path / "old" / "last_checkpoint.pt", print)
    assert (
        set(new)
        == set(old)
        == {
            "model",
            "optimizer",
            "scheduler",
            "scaler",
            "epoch",
            "global_step",
            "best",
            "best_epoch",
            "bad_epochs",
            "history",
            "rng",
        }
    )
    assert {k: new[k] for k in ("epoch", "global_step", "best", "best_epoch", "bad_epochs", "history", "scaler")} == {
        k: old[k] for k in ("epoch", "global_step", "best", "best_epoch", "bad_epochs", "history", "scaler")
    }
    resumed = _saver(tmp_path / "old", seed=1)
    assert resumed.resume(print) == 1 and resumed.global_step == saver.global_step


def test_saver_ignores_a_truncated_state(tmp_path):
    saver = _saver(tmp_path)
    saver.update(0, {"epoch": 0}, 0.5)
    saver.save()
    p = tmp_path / "last_checkpoint.pt"
    p.write_bytes(p.read_bytes()[:100])
    logged = []
    fresh = _saver(tmp_path)
    assert fresh.resume(logged.append) == 0 and "checksum" in logged[0] and fresh.history == []


def test_saver_best_checkpoint_early_stop_and_checkpoint_every(tmp_path):
    s = TrainSettings(epochs=6, patience=2, checkpoint_every=3, early_stopping_metric="loss")
    saver = _saver(tmp_path, s)
    for epoch, loss in enumerate([1.0, 0.8]):
        row = {"epoch": epoch, "val_loss": loss}
        saver.save_epoch(epoch, {"loss": loss}, saver.update(epoch, row, loss))
    assert not (tmp_path / "last_checkpoint.pt").exists()  # every 3 epochs: none due yet
    assert load_checkpoint(tmp_path / "best_model.pt")["metrics"] == {"loss": 0.8, "epoch": 1}
    for epoch, loss in ((2, 0.9), (3, 0.85)):  # lower is better: two epochs without improvement
        saver.save_epoch(epoch, {"loss": loss}, saver.update(epoch, {"epoch": epoch}, loss))
    assert saver.should_stop and saver.best == 0.8 and saver.best_epoch == 1
    assert _load_training_state(tmp_path / "last_checkpoint.pt", print)["epoch"] == 3  # the stop saves
    assert load_checkpoint(tmp_path / "best_model.pt")["metrics"]["epoch"] == 1
    stopped = _saver(tmp_path, s)
    assert stopped.resume(print) == 6 and stopped.stopped_early  # it had stopped: nothing left to run


def test_saver_final_best_when_save_best_is_off(tmp_path):
    saver = _saver(tmp_path, TrainSettings(epochs=1, save_best=False))
    saver.save_epoch(0, {"top1_acc": 0.5}, saver.update(0, {"epoch": 0, "val_top1_acc": 0.5}, 0.5))
    assert not (tmp_path / "best_model.pt").exists()
    saver.save_final()
    assert load_checkpoint(tmp_path / "best_model.pt")["metrics"] == {"epoch": 0, "val_top1_acc": 0.5}


def test_launch_needs_a_module_and_runs_it_in_process(tmp_path, monkeypatch):
    assert inspect.signature(launch).parameters["module"].default is inspect.Parameter.empty
    (tmp_path / "fake_train_module.py").write_text("SEEN = []\ndef main(args):\n    SEEN.append(list(args))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    launch(["--a", "1"], nproc=1, module="fake_train_module")
    assert sys.modules["fake_train_module"].SEEN == [["--a", "1"]]
