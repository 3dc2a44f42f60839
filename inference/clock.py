"""Clocks the policy reads time from.

The solver and time budget never call `time` directly: a live run uses `RealClock`, a replay with
`--virtual-clock` uses `VirtualClock`, which only moves when the replay engine advances it. That is what lets
a 5-hour competition be rehearsed in seconds with the exact policy code the server runs.
"""

from __future__ import annotations

import threading
import time


class RealClock:
    virtual = False

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        """Seconds since the clock was made."""
        return time.monotonic() - self._t0

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class VirtualClock:
    """Simulated time. `sleep` and `advance_to` move it forward instantly; it never goes back."""

    virtual = True

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance_to(self._t + seconds)

    def advance_to(self, t: float) -> None:
        with self._lock:
            self._t = max(self._t, float(t))
