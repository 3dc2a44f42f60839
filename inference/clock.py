"""Clocks the policy reads time from.

The solver and time budget never call `time` directly: a live run uses `RealClock`, a replay with
`--virtual-clock` uses `VirtualClock`, which only moves when the replay engine advances it. That is what lets
a 5-hour competition be rehearsed in seconds with the exact policy code the server runs.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


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
    """Simulated time. `sleep` and `advance_to` move it forward instantly; it never goes back.

    A thread that must act at a given time (the server's deadline guard) waits with `wait_for`; the clock then stops
    at that time until the waiter has looked, as real time would let it, however far another thread advances it."""

    virtual = True

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)
        self._cond = threading.Condition()
        self._alarms: list[float] = []  # times some waiter must see before the clock passes them

    def now(self) -> float:
        return self._t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance_to(self._t + seconds)

    def advance_to(self, t: float) -> None:
        t = float(t)
        with self._cond:
            while True:
                alarm = min((a for a in self._alarms if a < t), default=None)
                if alarm is None:
                    self._t = max(self._t, t)
                    self._cond.notify_all()
                    return
                self._t = max(self._t, alarm)
                self._cond.notify_all()
                # Hold here until the waiter has seen its time (bounded: a dead waiter must not stop the clock).
                self._cond.wait_for(lambda: alarm not in self._alarms, timeout=5.0)
                if alarm in self._alarms:
                    self._alarms.remove(alarm)

    def wait_for(self, done: Callable[[float], bool], until: float | Callable[[], float],
                 held: list[float] | None = None) -> bool:
        """Wait until done(timeout) is true or the clock reaches `until` (a time, or a function giving a deadline
        that may move); returns done's final answer. Wakes every few milliseconds of real time to ask `done`, and
        gives up if the clock is stuck for 30 s of real time (a thread blocked in real time never moves it).
        `held`: if the clock reached `until`, it stays there (the time is appended to `held`) until `release(held)`:
        the waiter's next few real milliseconds of work take no simulated time, however fast other threads move it."""
        when = until if callable(until) else (lambda: until)
        with self._cond:
            alarm = when()
            self._alarms.append(alarm)
        try:
            stuck_since, last = time.monotonic(), self._t
            while not done(0.0):
                with self._cond:
                    moved = when()
                    if moved != alarm:  # swap in place, so no advance slips between the old and the new time
                        self._alarms.remove(alarm)
                        alarm = moved
                        self._alarms.append(alarm)
                        self._cond.notify_all()
                if self._t >= alarm:
                    return done(0.0)
                if self._t != last:
                    stuck_since, last = time.monotonic(), self._t
                elif time.monotonic() - stuck_since > 30.0:
                    return False
                with self._cond:
                    self._cond.wait(0.002)
            return True
        finally:
            with self._cond:
                if held is not None and self._t >= alarm and alarm in self._alarms:
                    held.append(alarm)
                elif alarm in self._alarms:
                    self._alarms.remove(alarm)
                self._cond.notify_all()

    def release(self, held: list[float]) -> None:
        """Let the clock pass the times wait_for held."""
        with self._cond:
            for alarm in held:
                if alarm in self._alarms:
                    self._alarms.remove(alarm)
            held.clear()
            self._cond.notify_all()
