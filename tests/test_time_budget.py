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
    "share": TimePolicy(kind="share", min_seconds=60, max_seconds=1200, stretch=1.5),
}


def simulate(policy: TimePolicy, total: float, margin: float, problems: int, rng: random.Random, startup: float = 0):
    clock = VirtualClock()
    budget = TimeBudget(policy, total, problems, clock, safety_margin_seconds=margin, per_call_seconds=1800)
    clock.sleep(startup)  # model load on the first call
    spans = []
    for _ in range(problems):
        t0 = clock.now()
        deadline = budget.start_problem()
        if rng.random() < 0.5:  # the solver may stretch a contested problem's deadline
            deadline = budget.extend(rng.random())
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


def run_share(problems: int, total: float, use, startup: float = 0.0, elapsed: float = 0.0, margin: float = 0.0):
    """Budgets a "share" policy gives when problem i uses use(i, budget) seconds."""
    clock = VirtualClock()
    b = TimeBudget(TimePolicy(kind="share", min_seconds=10), total, problems, clock, safety_margin_seconds=margin,
                   elapsed_seconds=elapsed)
    clock.sleep(startup)
    budgets = []
    for i in range(problems):
        t0 = clock.now()
        budgets.append(b.start_problem() - t0)
        clock.sleep(use(i, budgets[-1]))
        b.finish_problem()
    return budgets, clock.now(), b


def test_share_replans_so_savings_reach_every_later_problem_without_a_cap():
    # 10 problems, 1000 s: the first five finish in 10 s each; the 450 s they save is spread over the last five.
    budgets, end, _ = run_share(10, 1000, lambda i, b: 10 if i < 5 else b)
    assert budgets[0] == pytest.approx(100)
    assert budgets[5:] == pytest.approx([190] * 5)
    assert end == pytest.approx(1000)  # the whole run is used


def test_model_load_and_notebook_start_are_spread_over_all_problems():
    # 100 s of notebook start before the Predictor existed and a 200 s model load on the first call: the 10
    # problems share the 700 s left evenly, instead of the last one paying for both.
    budgets, end, b = run_share(10, 1000, lambda i, b: b, startup=200, elapsed=100)
    assert b.start == -100 and b.cutoff == 900
    assert budgets == pytest.approx([70] * 10)
    assert end == pytest.approx(900)


def test_behind_schedule_every_problem_gets_an_even_share_not_zero():
    # The first problem of a fixed policy overruns (as a stalled engine might): 100 s left for 9 problems whose
    # minimum is 60 s each. The old rule kept 60 s back per later problem and gave 0 s; now each gets 100/9.
    clock = VirtualClock()
    b = TimeBudget(TimePolicy(kind="fixed", base_seconds=300, min_seconds=60), 1000, 10, clock)
    b.start_problem()
    clock.sleep(900)
    b.finish_problem()
    t = clock.now()
    assert b.start_problem() - t == pytest.approx(100 / 9)


def test_extend_stretches_only_a_contested_problem_and_never_past_the_cutoff():
    clock = VirtualClock()
    b = TimeBudget(TimePolicy(kind="share", stretch=2.0), 1000, 4, clock)
    assert b.start_problem() == pytest.approx(250)
    assert b.extend(0.0) == pytest.approx(250)  # settled: its share
    assert b.extend(0.5) == pytest.approx(375)
    assert b.extend(1.0) == pytest.approx(500)  # a real split: twice its share
    b.finish_problem()
    clock.advance_to(990)
    b.done = 3
    b.start_problem()
    assert b.extend(1.0) == pytest.approx(1000)  # the last problem: the cutoff is hard


def test_a_safety_margin_larger_than_the_run_is_an_error():
    with pytest.raises(ValueError, match="safety_margin_seconds"):
        TimeBudget(TimePolicy(), 300, 5, VirtualClock(), safety_margin_seconds=420)
    with pytest.raises(ValueError, match="time.stretch"):
        TimePolicy(stretch=0.5)


def test_the_notebook_start_and_a_shorter_runs_margin_reach_the_predictors_budget(tmp_path, repo_root):
    import json
    import time

    from inference.config import load_settings
    from inference.engines.replay import ReplayEngine
    from inference.server import Predictor

    traces = tmp_path / "t.jsonl"
    traces.write_text(json.dumps({"problem_id": "p", "sample": 0, "text": "\\boxed{1}", "tokens": 5, "seconds": 1.0}))
    settings = load_settings(repo_root / "configs/inference/aimo3.yaml")
    clock = VirtualClock()
    predictor = Predictor(settings, engine=ReplayEngine(traces, clock), total_seconds=1800, problems=10,
                          run_started_at=time.time() - 120)
    assert predictor.budget.start == pytest.approx(-120, abs=5)  # the notebook ran 120 s before the Predictor
    margin = settings.competition.safety_margin_seconds * 1800 / settings.competition.total_seconds
    assert predictor.budget.cutoff == pytest.approx(predictor.budget.start + 1800 - margin)  # the margin, scaled


def test_share_with_expected_use_gives_the_current_problem_what_later_ones_will_not_need():
    # 10 problems, 1000 s. The first three take 10 s each; with expected_use_factor 2 each later problem is planned
    # at 20 s, so the fourth may take 970 − 6·20 = 850 s instead of its even share 970 / 7.
    clock = VirtualClock()
    b = TimeBudget(TimePolicy(kind="share", expected_use_factor=2.0), 1000, 10, clock)
    for _ in range(3):
        b.start_problem()
        clock.sleep(10)
        b.finish_problem()
    t = clock.now()
    assert b.start_problem() - t == pytest.approx(1000 - 30 - 6 * 20)
    plain = TimeBudget(TimePolicy(kind="share"), 1000, 10, VirtualClock())
    assert plain.start_problem() == pytest.approx(100)
    with pytest.raises(ValueError, match="time.expected_use_factor"):
        TimePolicy(expected_use_factor=0)


def test_expected_use_prior_plans_from_the_first_problem_and_gives_way_to_what_problems_use():
    # 10 problems, 1000 s, a prior of 50 s weighing as 3 problems: the first may take 1000 − 9·50 = 550 s at once
    # (the old rule waited for 3 finished problems and gave it the even share, 100 s).
    clock = VirtualClock()
    policy = TimePolicy(kind="share", expected_use_factor=1.0, expected_prior_seconds=50)
    b = TimeBudget(policy, 1000, 10, clock)
    assert b.start_problem() == pytest.approx(1000 - 9 * 50)
    clock.sleep(10)
    b.finish_problem()
    # one 10 s problem pulls the expectation to (3·50 + 10) / 4 = 40 s
    assert b.expected_use() == pytest.approx(40)
    assert b.start_problem() - clock.now() == pytest.approx(990 - 8 * 40)
    without = TimeBudget(TimePolicy(kind="share", expected_use_factor=1.0), 1000, 10, VirtualClock())
    assert without.start_problem() == pytest.approx(100)
    with pytest.raises(ValueError, match="time.expected_prior_seconds"):
        TimePolicy(expected_use_factor=1.0, expected_prior_seconds=0)
