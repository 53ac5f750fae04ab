"""Progress lines with rate and ETA for long loops (image caching, training epochs,
teacher logits): `Progress(total, unit, every_s=60, log=...)` logs at most one line
every `every_s` seconds, e.g.

    epoch 3/10  step 1200/4500  412 img/s  ETA 8m10s  loss 2.31

A pod's log (or a local run's run.log) then shows a long step is alive and when it
will end, without one line per batch. The clock is injectable, so tests need no sleeps."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


def _print_flush(line: str) -> None:
    # a task's stdout is a pipe (block-buffered): without flush a line could show up minutes late
    print(line, flush=True)


def format_duration(seconds: float | None) -> str:
    """45s, 8m10s, 2h05m; '?' when unknown (no rate yet, or no total)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Counts `done` out of `total` units (steps, images, batches) and logs a line with the
    rate and the ETA at most once every `every_s` seconds, and once more on finish().

    work: what the rate is measured in when it differs from the unit counted (a training
    step is counted, images per second are shown: update(1, work=batch_size), rate_unit="img").
    The ETA extrapolates the mean rate since the start (or since `start`, for a resumed count)."""

    def __init__(
        self,
        total: int | None,
        unit: str = "it",
        *,
        every_s: float = 60.0,
        label: str = "",
        rate_unit: str | None = None,
        start: int = 0,
        log: Callable[[str], None] = _print_flush,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.unit, self.every_s, self.label = total, unit, every_s, label
        self.rate_unit = rate_unit or unit
        self.log, self.clock = log, clock
        self.done = self.start = start
        self.work = 0.0
        self.t0 = self.last_logged = clock()
        self.lines = 0  # how many lines were logged (tests; "was anything said")

    def elapsed(self) -> float:
        return max(0.0, self.clock() - self.t0)

    def rate(self) -> float | None:
        """Work per second since the start; None before any time has passed."""
        dt = self.elapsed()
        return self.work / dt if dt > 0 else None

    def eta_s(self) -> float | None:
        """Seconds left at the mean rate so far; None without a total or before any progress."""
        if self.total is None:
            return None
        counted, dt = self.done - self.start, self.elapsed()
        if counted <= 0 or dt <= 0:
            return None
        return max(0, self.total - self.done) * dt / counted

    def line(self, **extra: object) -> str:
        """The progress line as it stands (extra: figures appended as 'name value')."""
        parts = [self.label] if self.label else []
        parts.append(f"{self.unit} {self.done}/{self.total}" if self.total is not None else f"{self.unit} {self.done}")
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:.3g} {self.rate_unit}/s" if rate < 100 else f"{rate:.0f} {self.rate_unit}/s")
        if self.total is not None and self.done < self.total:
            parts.append(f"ETA {format_duration(self.eta_s())}")
        else:
            parts.append(f"in {format_duration(self.elapsed())}")
        parts += [f"{k} {_format_value(v)}" for k, v in extra.items()]
        return "  ".join(parts)

    def update(self, n: int = 1, *, work: float | None = None, **extra: object) -> str | None:
        """Add n units done (and `work`, default n); log and return a line when one is due."""
        return self.set(self.done + n, work=work if work is not None else n, **extra)

    def set(self, done: int, *, work: float | None = None, **extra: object) -> str | None:
        """Set the count done (callbacks that report a running total); log a line when due."""
        self.work += work if work is not None else max(0, done - self.done)
        self.done = done
        now = self.clock()
        if now - self.last_logged < self.every_s or (self.total is not None and done >= self.total):
            return None  # the last line is finish()'s, with the time taken
        self.last_logged = now
        return self._emit(**extra)

    def finish(self, **extra: object) -> str:
        """Log the closing line (count, mean rate, time taken) whatever the interval."""
        return self._emit(**extra)

    def _emit(self, **extra: object) -> str:
        text = self.line(**extra)
        self.lines += 1
        self.log(text)
        return text
