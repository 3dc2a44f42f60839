"""Spending the whole budget: time later problems are not expected to need goes to the problem still contested
now (time.stretch_reserve_factor), a problem with too few votes to judge counts as contested (time.open_votes), and
the simulator reports the worst run's unspent time, not only the mean."""

import random

import pytest

from inference.clock import VirtualClock
from inference.config import Competition, load_settings
from inference.simulate import simulate_policy
from inference.time_budget import TimeBudget, TimePolicy
from inference.voting import Votes, contention


def test_a_contested_problem_may_stretch_into_what_later_problems_will_not_need():
    # 10 problems, 1000 s, each later problem expected to use 100 s: the first is planned at its even share, 100 s.
    # Plain stretch lets a split vote run to 1.5 × 100 s; with stretch_reserve_factor 0.5 it may run until only
    # 0.5 × 100 s is left for each of the 9 later problems: 1000 − 450 = 550 s.
    def first_problem(**extra):
        policy = TimePolicy(kind="share", expected_use_factor=1.0, expected_prior_seconds=100, stretch=1.5,
                            min_seconds=40, **extra)
        b = TimeBudget(policy, 1000, 10, VirtualClock())
        return b, b.start_problem()

    plain, deadline = first_problem()
    assert deadline == pytest.approx(100) and plain.extend(1.0) == pytest.approx(150)
    b, deadline = first_problem(stretch_reserve_factor=0.5)
    assert deadline == pytest.approx(100)  # the plan itself does not change
    assert b.extend(0.0) == pytest.approx(100)  # settled: its plan
    assert b.extend(1.0) == pytest.approx(550) and b.latest_deadline() == pytest.approx(550)
    assert b.extend(0.5) == pytest.approx(325)
    # Never into the minimum each later problem keeps (9 × 40 s), whatever the factor.
    greedy, _ = first_problem(stretch_reserve_factor=0.0)
    assert greedy.extend(1.0) == pytest.approx(1000 - 9 * 40)


def test_whole_runs_with_the_reserve_stretch_never_pass_the_cutoff():
    rng = random.Random(1)
    policy = TimePolicy(kind="share", expected_use_factor=0.8, expected_prior_seconds=200, min_seconds=60,
                        max_seconds=3600, stretch=1.5, stretch_reserve_factor=0.75, open_votes=3)
    for _ in range(300):
        clock = VirtualClock()
        b = TimeBudget(policy, 18000, 50, clock, safety_margin_seconds=420, per_call_seconds=None)
        clock.sleep(rng.uniform(0, 600))
        for _ in range(50):
            t0 = clock.now()
            deadline = b.start_problem()
            if rng.random() < 0.5:
                deadline = b.extend(rng.random())
            clock.sleep((deadline - t0) * rng.choice([1.0, rng.random()]))
            b.finish_problem()
            assert t0 <= deadline <= b.cutoff + 1e-6
        assert clock.now() <= 18000 - 420 + 1e-6


def test_too_few_votes_to_judge_count_as_contested_while_samples_run():
    b = TimeBudget(TimePolicy(kind="share", open_votes=3), 1000, 10, VirtualClock())
    assert b.contention(Votes.of([None]), 1, 16) == 1.0  # no valid vote yet
    assert b.contention(Votes.of([5, 5, 5]), 3, 16) == 1.0  # a lone answer with 3 votes is not settled yet
    assert b.contention(Votes.of([5, 5, 5, 5]), 4, 16) == 0.0  # with 4 it is
    assert b.contention(Votes.of([5, 5, 6]), 3, 16) == 0.5  # a split: voting.contention's own measure
    assert b.contention(Votes.of([5]), 16, 16) == 0.0  # nothing running: nothing to wait for
    off = TimeBudget(TimePolicy(kind="share"), 1000, 10, VirtualClock())
    for votes, finished in [(Votes.of([None]), 1), (Votes.of([5, 5, 5]), 3), (Votes.of([5, 6]), 2)]:
        assert off.contention(votes, finished, 16) == contention(votes, finished, 16)


def test_bad_values_name_the_field():
    with pytest.raises(ValueError, match="time.stretch_reserve_factor"):
        TimePolicy(stretch_reserve_factor=-0.1)
    with pytest.raises(ValueError, match="time.open_votes"):
        TimePolicy(open_votes=-1)


def test_the_simulator_reports_the_worst_bound_run_not_only_the_mean(repo_root):
    settings = load_settings(repo_root / "configs" / "inference" / "aimo3.yaml", engine="replay", traces="t.jsonl",
                             virtual_clock=True)
    comp = Competition.load("aimo3")
    limit = comp.total_seconds - comp.safety_margin_seconds

    def run(seconds, reason):
        return {"score": 1, "seconds": seconds, "tokens": 10,
                "problems": [{"problem_id": "a", "correct": True, "stop_reason": reason}]}

    records = [run(limit - 100, "deadline"), run(limit - 2000, "calibrated"), run(limit - 1000, "deadline_guard")]
    r = simulate_policy(settings, None, [], None, records)
    assert r["deadline_runs"] == pytest.approx(2 / 3, abs=1e-3)
    assert r["unspent_when_bound"] == pytest.approx(round(550 / limit, 4))  # the 2000 s run hit no deadline
    assert r["unspent_when_bound_max"] == pytest.approx(round(1000 / limit, 4))
