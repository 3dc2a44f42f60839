"""Per-problem deadlines from the time left, the problems left and a hard global cutoff.

All numbers come from configs: the competition's total time and safety margin (configs/competitions/*.yaml) and the
policy below (configs/inference/*.yaml, `time:`). The peers' policies are configurations of this one class:

- kit default:   kind "share", re-planned for every problem: an even share of the time left over the problems left
                 (so time one problem saves, the model load and the notebook start are spread over all the others);
                 a contested problem may stretch to `stretch` × its share while it stays contested
- NemoSkills:    kind "fixed", base_seconds 350, bank_max_seconds 210
- AIMO-3 public: kind "reserve", reserve_seconds 240, min 240, max 840 → clamp(left − (remaining−1)·240, 240, 840)

Whatever the policy says, a problem's deadline never passes the global cutoff or the competition's per-call limit,
with "share" and "fixed" it never takes the `min_seconds` each later problem keeps for itself, and when the run is
behind (less left than those minimums) a problem gets an even share of what is left instead of nothing.

The run's clock starts before the TimeBudget exists (notebook start, imports): pass `elapsed_seconds`, the time
already gone, and it counts against the run like any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from inference.clock import RealClock, VirtualClock

KINDS = ("share", "fixed", "reserve")


@dataclass
class TimePolicy:
    kind: str = "fixed"
    base_seconds: float | None = None  # "fixed": seconds per problem; None = an even share of the whole run
    reserve_seconds: float = 0.0  # "reserve": seconds kept back for each later problem
    bank_max_seconds: float = 0.0  # "fixed": unused time carried forward, at most this much
    min_seconds: float = 0.0  # floor of a problem's budget while time allows; also kept back for each later problem
    max_seconds: float = math.inf  # cap of a problem's budget
    stretch: float = 1.0  # a contested problem may run to this multiple of its budget (the solver asks; see extend)
    # "share": once 3 problems are done, keep back only this multiple of their mean use for each later problem and
    # give the current one the rest, when that is more than its even share (None: the even share only)
    expected_use_factor: float | None = None
    # with expected_use_factor: the use expected of each later problem before any finished; it counts as
    # `expected_prior_weight` problems in the mean, so the plan works from the first problem (None: wait for 3)
    expected_prior_seconds: float | None = None
    expected_prior_weight: float = 3.0
    # "share" with expected use: a contested problem may stretch past `stretch` × its budget, up to the time left
    # minus this × the expected use of each later problem (what later problems will likely leave goes to the problem
    # still contested now instead of being left unspent; None: `stretch` × its budget only)
    stretch_reserve_factor: float | None = None
    # a problem with at most this many valid votes, all for one answer, while samples still run is still open:
    # it counts as fully contested (0: only split votes do; see contention)
    open_votes: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"time.kind: unknown policy {self.kind!r}; choose one of {', '.join(KINDS)}")
        for name in ("reserve_seconds", "bank_max_seconds", "min_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"time.{name} must be ≥ 0, got {getattr(self, name)}")
        if self.max_seconds < self.min_seconds:
            raise ValueError(f"time.max_seconds ({self.max_seconds}) is below time.min_seconds ({self.min_seconds})")
        if self.expected_use_factor is not None and not self.expected_use_factor > 0:
            raise ValueError(f"time.expected_use_factor must be > 0 or null, got {self.expected_use_factor}")
        if self.expected_prior_seconds is not None and not self.expected_prior_seconds > 0:
            raise ValueError(f"time.expected_prior_seconds must be > 0 or null, got {self.expected_prior_seconds}")
        if not self.expected_prior_weight > 0:
            raise ValueError(f"time.expected_prior_weight must be > 0, got {self.expected_prior_weight}")
        if self.stretch_reserve_factor is not None and not self.stretch_reserve_factor >= 0:
            raise ValueError(f"time.stretch_reserve_factor must be ≥ 0 or null, got {self.stretch_reserve_factor}")
        if self.open_votes < 0:
            raise ValueError(f"time.open_votes must be ≥ 0, got {self.open_votes}")
        if not self.stretch >= 1:
            raise ValueError(f"time.stretch must be ≥ 1, got {self.stretch}")
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
        elapsed_seconds: float = 0.0,
    ) -> None:
        if problems < 1:
            raise ValueError(f"problems must be ≥ 1, got {problems}")
        if not 0 <= safety_margin_seconds < total_seconds:
            raise ValueError(f"safety_margin_seconds ({safety_margin_seconds}) must be ≥ 0 and below total_seconds "
                             f"({total_seconds})")
        if elapsed_seconds < 0:
            raise ValueError(f"elapsed_seconds must be ≥ 0, got {elapsed_seconds}")
        self.policy = policy
        self.clock = clock
        self.problems = problems
        self.start = clock.now() - elapsed_seconds  # when the run began (the notebook's start)
        self.cutoff = self.start + total_seconds - safety_margin_seconds  # hard global cutoff
        self.per_call_seconds = per_call_seconds
        self.base = policy.base_seconds or (total_seconds - safety_margin_seconds) / problems
        self.bank = 0.0
        self.done = 0
        self._problem_start: float | None = None
        self._allowance = 0.0
        self.used: list[float] = []  # seconds each finished problem took
        self._planned = 0.0  # the current problem's budget before any stretch
        self._stretch_limit = 0.0  # the most the current problem may take

    @property
    def problems_left(self) -> int:
        """Problems not yet finished, the current one included (at least 1: the count is an estimate)."""
        return max(1, self.problems - self.done)

    def time_left(self) -> float:
        return self.cutoff - self.clock.now()

    def _hard_limit(self, left: float, later: int) -> float:
        """The most the problem starting now may take: the later problems' minimums, or when the run is already
        behind an even share of what is left; never past the cutoff or the per-call limit."""
        limit = max(left - later * self.policy.min_seconds, left / (later + 1))
        limit = min(limit, left)
        if self.per_call_seconds is not None:
            limit = min(limit, self.per_call_seconds)
        return max(limit, 0.0)

    def start_problem(self, weight: float = 1.0) -> float:
        """The absolute deadline (on the clock) for the problem starting now. `weight` scales the policy's budget
        before its min/max and hard limits (the token scheduler's predicted length; inference/token_scheduler.py)."""
        now = self.clock.now()
        left = self.cutoff - now
        later = self.problems_left - 1
        p = self.policy
        if p.kind == "share":
            budget = left / self.problems_left
            expected = self.expected_use()
            if expected is not None:
                # Problems so far took less than their share: plan the later ones at what they are likely to take.
                budget = max(budget, left - later * max(expected, p.min_seconds))
        elif p.kind == "fixed":
            self._allowance = self.base
            budget = self.base + self.bank
        else:  # reserve
            budget = left - later * p.reserve_seconds
        budget = min(max(budget * weight, p.min_seconds), p.max_seconds)
        if p.kind == "reserve":  # the AIMO-3 notebook's formula as it is: reserve_seconds is its own guard
            hard = max(0.0, min(left, self.per_call_seconds if self.per_call_seconds is not None else left))
        else:
            hard = self._hard_limit(left, later)
        budget = min(budget, hard)
        self._problem_start = now
        self._planned = budget
        self._stretch_limit = min(hard, budget * p.stretch)
        expected = self.expected_use() if p.kind == "share" and p.stretch_reserve_factor is not None else None
        if expected is not None:
            spare = left - later * p.stretch_reserve_factor * max(expected, p.min_seconds)
            self._stretch_limit = min(hard, max(self._stretch_limit, spare))
        return now + budget

    def expected_use(self) -> float | None:
        """Seconds each later problem is planned at ("share" with expected_use_factor): the factor × the mean use
        so far, the prior counting as expected_prior_weight problems; None while there is nothing to go on."""
        p = self.policy
        if p.expected_use_factor is None:
            return None
        if p.expected_prior_seconds is None:
            if len(self.used) < 3:
                return None
            return p.expected_use_factor * sum(self.used) / len(self.used)
        w = p.expected_prior_weight
        return p.expected_use_factor * (w * p.expected_prior_seconds + sum(self.used)) / (w + len(self.used))

    def extend(self, contention: float) -> float:
        """The current problem's deadline given how contested it is now (0 settled … 1 split; see
        inference.voting.contention): its planned budget stretched by up to `stretch`, within the hard limits."""
        if self._problem_start is None:  # the problem was already given up (a late call from its solver): stop now
            return self.clock.now()
        c = min(max(contention, 0.0), 1.0)
        return self._problem_start + self._planned + c * max(0.0, self._stretch_limit - self._planned)

    def contention(self, votes, finished: int, launched: int) -> float:
        """How contested the current problem is for `extend`: inference.voting.contention, except that a problem
        with samples still running and at most `open_votes` valid votes, all for one answer, is still open (1)."""
        from inference.voting import contention

        p = self.policy
        if p.open_votes and finished < launched and votes.valid <= p.open_votes and len(votes.counts) < 2:
            return 1.0
        return contention(votes, finished, launched)

    def latest_deadline(self) -> float:
        """The latest deadline `extend` can give the current problem (a guard waiting on the solver waits this long)."""
        if self._problem_start is None:
            raise RuntimeError("TimeBudget.latest_deadline: no problem started")
        return self._problem_start + max(self._planned, self._stretch_limit)

    def finish_problem(self) -> float:
        """Record that the current problem is answered; returns the seconds it used."""
        now = self.clock.now()
        used = now - (self._problem_start if self._problem_start is not None else now)
        if self.policy.kind == "fixed":
            self.bank = min(self.policy.bank_max_seconds, max(0.0, self.bank + self._allowance - used))
        self.done += 1
        self.used.append(used)
        self._problem_start = None
        return used
