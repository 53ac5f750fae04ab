"""Early stopping that cannot ship warm-up (issue 20, item 8): CheckpointSaver neither stops
nor picks a best checkpoint before warm-up ends plus callbacks.min_epochs; min_delta decides
what counts as an improvement; stop_reason says in words why a run ended and which epoch
became its best checkpoint, and fit returns it."""

import torch
from torch.utils.data import Dataset

from shared.config.teacher import load_teacher_config
from shared.io.checkpoint import load_checkpoint
from shared.train.loop import CheckpointSaver, TrainSettings, build_scheduler, fit
from shared.train.teacher import settings_from_config

META = {"model_name": "toy", "classes": list("abcd"), "image_size": 4}


def _saver(tmp_path, s: TrainSettings) -> CheckpointSaver:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    return CheckpointSaver(tmp_path, model, opt, build_scheduler(opt, s, 4), None, s, META)


def _run(saver: CheckpointSaver, values: list[float]) -> list[bool]:
    """Feed one validation value per epoch as fit does; stop when the saver says so."""
    improved = []
    for epoch, v in enumerate(values):
        improved.append(saver.update(epoch, {"epoch": epoch}, v))
        saver.save_epoch(epoch, {"top1_acc": v}, improved[-1])
        if saver.should_stop:
            saver.stopped_early = True
            break
    return improved


def test_the_local_eu_core_case_cannot_ship_a_warm_up_epoch(tmp_path):
    """What happened locally: top-1 peaked in epoch 1 (inside a 2-epoch warm-up) and plateaued,
    so the run stopped and shipped epoch 1. Now epochs 1-2 are not eligible: the first
    eligible epoch is the first best, and patience counts from there."""
    s = TrainSettings(epochs=10, warmup_epochs=2, patience=3, early_stopping_metric="top1_acc")
    saver = _saver(tmp_path, s)
    assert saver.first_eligible_epoch == 2
    improved = _run(saver, [0.60, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55])
    assert improved[:2] == [False, False]  # a warm-up epoch never becomes the best
    assert improved[2] is True and saver.best_epoch == 2 and saver.best == 0.55
    assert saver.stopped_early and len(saver.history) == 6  # 3 epochs without improvement after epoch 3
    assert load_checkpoint(tmp_path / "best_model.pt")["metrics"]["epoch"] == 2
    assert saver.stop_reason() == (
        "early stop at epoch 6: top1_acc did not improve by min_delta 0 for 3 epochs after epoch 3; "
        "best checkpoint: epoch 3 (top1_acc 0.5500); epochs 1-2 were not eligible (warm-up 2 + min_epochs 0)"
    )


def test_min_epochs_and_min_delta(tmp_path):
    s = TrainSettings(
        epochs=12, warmup_epochs=1.5, min_epochs=1, min_delta=0.01, patience=2, early_stopping_metric="loss"
    )
    saver = _saver(tmp_path, s)
    assert saver.first_eligible_epoch == 3  # ceil(1.5) + 1
    # loss falls by less than min_delta after epoch 4: those epochs count as no improvement
    improved = _run(saver, [3.0, 2.0, 1.5, 1.0, 0.8, 0.795, 0.792, 0.5])
    assert improved == [False, False, False, True, True, False, False]
    assert saver.stopped_early and saver.best_epoch == 4 and saver.best == 0.8
    assert saver.stop_reason().startswith(
        "early stop at epoch 7: loss did not improve by min_delta 0.01 for 2 epochs after epoch 5; "
        "best checkpoint: epoch 5 (loss 0.8000); epochs 1-3 were not eligible (warm-up 1.5 + min_epochs 1)"
    )


def test_a_run_shorter_than_the_guard_ships_its_last_epoch(tmp_path):
    s = TrainSettings(epochs=3, warmup_epochs=2, min_epochs=4, patience=1)
    saver = _saver(tmp_path, s)
    assert saver.first_eligible_epoch == 2  # the last epoch: best_model.pt always exists
    assert _run(saver, [0.9, 0.5, 0.4]) == [False, False, True]
    assert not saver.stopped_early and saver.best_epoch == 2
    assert saver.stop_reason().startswith("completed all 3 epochs; best checkpoint: epoch 3 (top1_acc 0.4000)")


def test_no_guard_without_warm_up_and_a_resume_keeps_the_count(tmp_path):
    s = TrainSettings(epochs=5, patience=2)
    saver = _saver(tmp_path, s)
    assert saver.first_eligible_epoch == 0
    _run(saver, [0.5, 0.4])
    saver.save()
    again = _saver(tmp_path, s)
    assert again.resume(lambda _: None) == 2 and again.bad_epochs == 1 and again.best_epoch == 0
    assert again.stop_reason().startswith("ended after 2 of 5 epochs; best checkpoint: epoch 1 (top1_acc 0.5000)")
    assert "not eligible" not in again.stop_reason()
    one = _saver(tmp_path / "one", TrainSettings(epochs=5, warmup_epochs=1))
    assert one.stop_reason().endswith("; epoch 1 was not eligible (warm-up 1 + min_epochs 0)")


def test_teacher_config_keys_reach_the_loop():
    cfg = load_teacher_config({"callbacks": {"min_epochs": 2, "min_delta": 0.002, "early_stopping_metric": "loss"}})
    s = settings_from_config(cfg, 3)
    assert (s.min_epochs, s.min_delta, s.early_stopping_metric, s.warmup_epochs) == (2, 0.002, "loss", 2)
    plan = load_teacher_config({})["callbacks"]  # the plan's files leave them out: the plan's behaviour
    assert (plan["min_epochs"], plan["min_delta"]) == (0, 0.0)


class _Toy(Dataset):
    """32 separable 4-class samples of (x, label, index), as CachedImageDataset yields."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.y = torch.arange(32) % 4
        self.x = torch.randn(32, 3, 4, 4, generator=g) * 0.3
        self.x[torch.arange(32), 0, 0, self.y] += 3.0

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i]), i


def test_fit_reports_why_it_stopped_and_never_picks_warm_up(tmp_path):
    """A model that cannot learn (lr 0) plateaus from epoch 1: the old rule stopped after
    `patience` epochs and shipped epoch 1; now the best is the first eligible epoch."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4))
    s = TrainSettings(epochs=8, batch_size=8, lr=0.0, warmup_epochs=2, min_epochs=1, patience=1, weight_decay=0.0)
    logged: list[str] = []
    r = fit(model, _Toy(), _Toy(), s, tmp_path, checkpoint_meta=META, log=logged.append)
    assert r.stopped_early and r.best_epoch == 3 and r.epochs_run == 5
    assert r.stop_reason.startswith("early stop at epoch 5: top1_acc did not improve by min_delta 0 for 1 epochs")
    assert r.stop_reason in logged
    assert load_checkpoint(tmp_path / "best_model.pt")["metrics"]["epoch"] == 3
    assert r.deterministic is False and r.determinism() == {
        "deterministic": False,
        "mode": "off",
        "nondeterministic_ops": [],
        "bitwise_reproducible": False,
    }
