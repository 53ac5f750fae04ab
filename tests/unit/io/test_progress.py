"""shared.io.progress: rate and ETA lines at most every every_s seconds, on a fake clock."""

import pytest

from shared.io.progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_format_duration():
    assert [format_duration(s) for s in (0, 44.6, 60, 490, 3599, 3600, 7500)] == [
        "0s",
        "45s",
        "1m00s",
        "8m10s",
        "59m59s",
        "1h00m",
        "2h05m",
    ]
    assert format_duration(None) == format_duration(float("inf")) == format_duration(-1) == "?"


def test_logs_at_most_every_interval_with_rate_and_eta():
    clock, lines = FakeClock(), []
    p = Progress(4500, "step", label="epoch 3/10", rate_unit="img", every_s=60, log=lines.append, clock=clock)
    for _ in range(1199):  # 1199 steps of 32 images in 59 s: no line yet
        clock.now += 59 / 1199
        assert p.update(1, work=32, loss=2.31) is None
    clock.now = 1000.0 + 93.2  # the 1200th step lands past the minute
    line = p.update(1, work=32, loss=2.3149)
    assert lines == [line]
    # 1200 steps in 93.2 s: 412 img/s, and 3300 steps left at 12.9 steps/s: 4m16s
    assert line == "epoch 3/10  step 1200/4500  412 img/s  ETA 4m16s  loss 2.315"
    clock.now += 30
    assert p.update(1) is None  # 30 s after the last line
    clock.now += 31
    assert p.update(1) is not None and len(lines) == 2


def test_finish_always_logs_and_the_last_update_leaves_it_to_finish():
    clock, lines = FakeClock(), []
    p = Progress(10, "image", label="cache_images", every_s=0, log=lines.append, clock=clock)
    clock.now += 5
    p.set(4)
    assert lines == ["cache_images  image 4/10  0.8 image/s  ETA 8s"]
    clock.now += 5
    assert p.set(10) is None  # done: the closing line is finish()'s, said once
    assert p.finish() == "cache_images  image 10/10  1 image/s  in 10s"
    assert len(lines) == 2 and p.lines == 2


def test_unknown_total_and_resumed_count():
    clock, lines = FakeClock(), []
    p = Progress(None, "batch", every_s=10, log=lines.append, clock=clock)
    clock.now += 20
    assert p.update(5) == "batch 5  0.25 batch/s  in 20s" and p.eta_s() is None
    # resumed at epoch 4 of 10: the ETA comes from the epochs run here, not from the first 4
    r = Progress(10, "epoch", start=4, every_s=float("inf"), log=lines.append, clock=clock)
    assert r.eta_s() is None
    clock.now += 100
    r.update(1)
    assert r.eta_s() == pytest.approx(500)


def test_default_log_prints_and_flushes(capsys):
    clock = FakeClock()
    p = Progress(2, "batch", label="teacher logits global", rate_unit="img", clock=clock)
    clock.now += 1
    p.update(2, work=64)
    p.finish()
    assert capsys.readouterr().out == "teacher logits global  batch 2/2  64 img/s  in 1s\n"
