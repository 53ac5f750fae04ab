"""A memory budget for decoding images across the cache's worker threads: each decode
reserves its pixel count before PIL allocates it and releases it when the rendition is
made, so N workers cannot hold N huge images at once (a pod OOM-killed in the middle of
a catalogue loses every in-flight image and restarts; a wait costs nothing)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class PixelBudget:
    """At most `total` pixels decoded at once across threads. A reservation larger than the
    whole budget is cut to it (it then waits until it decodes alone): the pixel cap
    (max_pixels), not the budget, decides which images are too large to cache."""

    def __init__(self, total: int):
        if int(total) <= 0:
            raise ValueError(f"decode pixel budget: {total!r} must be a positive number of pixels")
        self.total = int(total)
        self.in_flight = 0
        self.peak = 0
        self.waits = 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[int]:
        """Hold `pixels` (cut to the budget) for the duration of the block; yields the amount held."""
        need = max(1, min(int(pixels), self.total))
        with self._cond:
            if self.in_flight + need > self.total:
                self.waits += 1
            self._cond.wait_for(lambda: self.in_flight + need <= self.total)
            self.in_flight += need
            self.peak = max(self.peak, self.in_flight)
        try:
            yield need
        finally:
            with self._cond:
                self.in_flight -= need
                self._cond.notify_all()
