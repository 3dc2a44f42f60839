"""The time allocator over whole simulated runs: never past the cutoff, banks what is unused, keeps later
problems their minimum, and reproduces the peers' formulas."""

import math
import random

import pytest

from inference.clock import VirtualClock
from inference.time_budget import TimeBudget, TimePolicy

POLICIES = {
    "kit": TimePolicy(kind="fixed", bank_max_seconds=300, min_seconds=60, max_seconds=900),
    "nemoskills": TimePolicy(kind="fixed", base_seconds=350, bank_max_seconds=210),
    "aimo3_public": TimePolicy(kind="reserve", reserve_seconds=240, min_seconds=240, max_seconds=840),
    "greedy": TimePolicy(kind="reserve", reserve_seconds=0, max_seconds=math.inf),
}


def simulate(policy: TimePolicy, total: float, margin: float, problems: int, rng: random.Random, startup: float = 0):
    clock = VirtualClock()
    budget = TimeBudget(policy, total, problems, clock, safety_margin_seconds=margin, per_call_seconds=1800)
    clock.sleep(startup)  # model load on the first call
    spans = []
    for _ in range(problems):
        t0 = clock.now()
        deadline = budget.start_problem()
        # A problem stops early (consensus) or runs to its deadline; it never overruns (the solver enforces that).
        used = (deadline - t0) * rng.choice([1.0, 1.0, rng.random()])
        clock.sleep(used)
        budget.finish_problem()
        spans.append((t0, deadline, clock.now()))
    return budget, spans


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_whole_runs_never_exceed_the_budget(name):
    rng = random.Random(0)
    for _ in range(2000):
        total, margin, n = 18000, rng.choice([0, 420]), rng.choice([10, 50])
        budget, spans = simulate(POLICIES[name], total, margin, n, rng, startup=rng.uniform(0, 900))
        assert spans[-1][2] <= total - margin + 1e-6
        for t0, deadline, end in spans:
            assert t0 <= deadline <= budget.cutoff + 1e-6
            assert deadline - t0 <= 1800 + 1e-6  # the per-call limit
            assert end <= deadline + 1e-9


def test_fixed_policy_banks_unused_time_up_to_the_cap():
    clock = VirtualClock()
    b = TimeBudget(TimePolicy(kind="fixed", base_seconds=350, bank_max_seconds=210), 18000, 50, clock)
    d = b.start_problem()
    assert d - clock.now() == pytest.approx(350)
    clock.sleep(50)  # 300 s unused → bank capped at 210
    b.finish_problem()
    assert b.bank == pytest.approx(210)
    t = clock.now()
    assert b.start_problem() - t == pytest.approx(560)  # NemoSkills' maximum: 350 + 210
    clock.sleep(500)  # draws 150 from the bank
    b.finish_problem()
    assert b.bank == pytest.approx(60)


def test_default_base_is_an_even_share_of_the_run():
    clock = VirtualClock()
    b = TimeBudget(TimePolicy(kind="fixed"), 18000, 50, clock, safety_margin_seconds=450)
    assert b.start_problem() == pytest.approx((18000 - 450) / 50)


def test_reserve_policy_matches_the_aimo3_public_notebook():
    clock = VirtualClock()
    policy = POLICIES["aimo3_public"]
    b = TimeBudget(policy, 17400, 50, clock)
    # clamp(left − (remaining − 1)·240, 240, 840) with left = 17400, remaining = 50 → clamp(5640, ...) = 840
    assert b.start_problem() == pytest.approx(840)
    clock.advance_to(17400 - 1000)
    b.done = 45  # 5 problems left, 1000 s left → clamp(1000 − 4·240, 240, 840) = 240 (the floor)
    t = clock.now()
    assert b.start_problem() - t == pytest.approx(240)


def test_later_problems_keep_their_minimum_and_the_cutoff_is_hard():
    clock = VirtualClock()
    b = TimeBudget(TimePolicy(kind="fixed", base_seconds=1000, min_seconds=100), 1000, 5, clock)
    assert b.start_problem() == pytest.approx(1000 - 4 * 100)
    clock.advance_to(2000)  # far past the cutoff
    b.finish_problem()
    assert b.start_problem() == clock.now()  # zero seconds: the solver answers the fallback at once


def test_bad_policy_values_name_the_field():
    with pytest.raises(ValueError, match="time.kind"):
        TimePolicy(kind="linear")
    with pytest.raises(ValueError, match="time.max_seconds"):
        TimePolicy(min_seconds=100, max_seconds=10)
    with pytest.raises(ValueError, match="problems"):
        TimeBudget(TimePolicy(), 100, 0, VirtualClock())
