"""Per-problem deadlines from the time left, the problems left, a bounded bank and a hard global cutoff.

All numbers come from configs: the competition's total time and safety margin (configs/competitions/*.yaml) and the
policy below (configs/inference/*.yaml, `time:`). The peers' policies are configurations of this one class:

- kit default:   kind "fixed", base = (total − margin) / problems, unused time banked (≤ bank_max_seconds)
- NemoSkills:    kind "fixed", base_seconds 350, bank_max_seconds 210
- AIMO-3 public: kind "reserve", reserve_seconds 240, min 240, max 840 → clamp(left − (remaining−1)·240, 240, 840)

Whatever the policy says, a problem's deadline never passes the global cutoff or the competition's per-call limit,
and with "fixed" it never takes the `min_seconds` each later problem keeps for itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from inference.clock import RealClock, VirtualClock

KINDS = ("fixed", "reserve")


@dataclass
class TimePolicy:
    kind: str = "fixed"
    base_seconds: float | None = None  # "fixed": seconds per problem; None = an even share of the whole run
    reserve_seconds: float = 0.0  # "reserve": seconds kept back for each later problem
    bank_max_seconds: float = 0.0  # "fixed": unused time carried forward, at most this much
    min_seconds: float = 0.0  # floor of a problem's budget while time allows; also kept back for each later problem
    max_seconds: float = math.inf  # cap of a problem's budget

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"time.kind: unknown policy {self.kind!r}; choose one of {', '.join(KINDS)}")
        for name in ("reserve_seconds", "bank_max_seconds", "min_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"time.{name} must be ≥ 0, got {getattr(self, name)}")
        if self.max_seconds < self.min_seconds:
            raise ValueError(f"time.max_seconds ({self.max_seconds}) is below time.min_seconds ({self.min_seconds})")
        if self.base_seconds is not None and self.base_seconds <= 0:
            raise ValueError(f"time.base_seconds must be > 0 or null, got {self.base_seconds}")


class TimeBudget:
    """Tracks one competition run. Call `start_problem()` for each problem's deadline, `finish_problem()` after it."""

    def __init__(
        self,
        policy: TimePolicy,
        total_seconds: float,
        problems: int,
        clock: RealClock | VirtualClock,
        safety_margin_seconds: float = 0.0,
        per_call_seconds: float | None = None,
    ) -> None:
        if problems < 1:
            raise ValueError(f"problems must be ≥ 1, got {problems}")
        self.policy = policy
        self.clock = clock
        self.problems = problems
        self.start = clock.now()
        self.cutoff = self.start + total_seconds - safety_margin_seconds  # hard global cutoff
        self.per_call_seconds = per_call_seconds
        self.base = policy.base_seconds or (total_seconds - safety_margin_seconds) / problems
        self.bank = 0.0
        self.done = 0
        self._problem_start: float | None = None
        self._allowance = 0.0

    @property
    def problems_left(self) -> int:
        """Problems not yet finished, the current one included (at least 1: the count is an estimate)."""
        return max(1, self.problems - self.done)

    def time_left(self) -> float:
        return self.cutoff - self.clock.now()

    def start_problem(self) -> float:
        """The absolute deadline (on the clock) for the problem starting now."""
        now = self.clock.now()
        left = self.cutoff - now
        later = self.problems_left - 1
        p = self.policy
        if p.kind == "fixed":
            self._allowance = self.base
            budget = self.base + self.bank
        else:  # reserve
            budget = left - later * p.reserve_seconds
        budget = min(max(budget, p.min_seconds), p.max_seconds)
        if p.kind == "fixed":  # later problems keep their minimum ("reserve" keeps reserve_seconds by itself)
            budget = min(budget, left - later * p.min_seconds)
        # Hard limits: the global cutoff, then the per-call limit.
        budget = min(budget, left)
        if self.per_call_seconds is not None:
            budget = min(budget, self.per_call_seconds)
        budget = max(budget, 0.0)
        self._problem_start = now
        return now + budget

    def finish_problem(self) -> float:
        """Record that the current problem is answered; returns the seconds it used."""
        now = self.clock.now()
        used = now - (self._problem_start if self._problem_start is not None else now)
        if self.policy.kind == "fixed":
            self.bank = min(self.policy.bank_max_seconds, max(0.0, self.bank + self._allowance - used))
        self.done += 1
        self._problem_start = None
        return used
