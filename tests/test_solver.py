"""The solver on recorded samples (replay engine, virtual clock): early stop, deadlines, fallbacks and faults."""

import pytest

from inference.clock import VirtualClock
from inference.config import load_settings
from inference.engines.base import EngineError, EngineProgress
from inference.engines.replay import ReplayEngine
from inference.solver import Solver


def settings(**overrides):
    base = {"voting.kind": "k_of_n", "voting.k": 4, "voting.straggler_fraction": None, "sampling.samples": 8,
            "watchdog.poll_seconds": 1.0, "sampling.stop_rule": "none"}
    base.update(overrides)
    return load_settings(None, base, engine="replay", traces="unused.jsonl", virtual_clock=True)


def solver_for(traces, **overrides):
    engine = ReplayEngine(traces, clock=VirtualClock())
    return Solver(engine, settings(**overrides)), engine


def test_stops_once_k_samples_agree_and_aborts_the_rest(write_traces):
    # Samples finish at 10, 20, ... 80 s; the first four agree at t = 40 s.
    path = write_traces({"p": [7, 7, 7, 7, 3, 3, 3, 3]}, seconds=[10, 20, 30, 40, 50, 60, 70, 80], tokens=100)
    solver, engine = solver_for(path)
    r = solver.solve("p", "What is 3 + 4?", deadline=1000)
    assert (r.answer, r.stop_reason, r.samples, r.launched) == (7, "k_of_n", 4, 8)
    assert r.seconds == pytest.approx(40)
    assert r.votes == {7: 4}
    assert r.tokens < 8 * 100  # the four aborted samples stopped half-way
    assert engine.progress().running == 0


def test_deadline_cuts_the_problem_and_the_leader_wins(write_traces):
    path = write_traces({"p": [5, 5, 9, 1, 1, 1, 1, 1]}, seconds=[10, 20, 30, 500, 500, 500, 500, 500])
    solver, _ = solver_for(path)
    r = solver.solve("p", "q", deadline=100)
    assert (r.answer, r.stop_reason, r.samples) == (5, "deadline", 3)
    assert r.seconds == pytest.approx(100)


def test_problem_without_samples_gets_the_fallback_at_once(write_traces):
    solver, _ = solver_for(write_traces({"other": [1] * 8}))
    r = solver.solve("missing", "q", deadline=300)
    assert (r.answer, r.fallback, r.stop_reason) == (0, True, "engine_idle")
    assert r.seconds <= 1.0


def test_garbage_output_is_not_a_vote(write_traces):
    garbage = ["\x00\ufffd" * 50, "boxed{12", "The answer is \\boxed{1.5}", "\\boxed{-3}", "\\boxed{123456}"]
    solver, _ = solver_for(write_traces({"p": garbage + [42, "<think>\\boxed{42}</think>", "zz"]}))
    r = solver.solve("p", "q", deadline=1000)
    assert r.answer == 42 and r.valid == 2 and r.votes == {42: 2}


def test_no_time_left_answers_the_fallback_without_launching(write_traces):
    solver, engine = solver_for(write_traces({"p": [7] * 8}))
    engine.clock.advance_to(50)
    r = solver.solve("p", "q", deadline=50)
    assert (r.answer, r.stop_reason, r.launched) == (0, "no_time", 0)


def test_stop_rule_cuts_recorded_text(write_traces):
    text = "<think>\n1+1=2\n\\boxed{2}\n</think>\nThe answer is \\boxed{2}." + " more" * 200
    solver, _ = solver_for(write_traces({"p": [text] * 8}, tokens=1000), **{"sampling.stop_rule": "think"})
    records = []
    solver.trace_sink = records.append
    r = solver.solve("p", "q", deadline=1000)
    assert r.answer == 2
    assert all(rec["text"].endswith("</think>") and rec["finish_reason"] == "answer" for rec in records)
    assert all(rec["tokens"] < 100 for rec in records)


class FlakyEngine(ReplayEngine):
    """Fault injection around the real replay engine: the first poll after `crash_at` raises, as a dead vLLM
    engine core does; `stall` makes progress report a hang once."""

    def __init__(self, *a, crash_at=None, stall=False, **kw):
        super().__init__(*a, **kw)
        self.crash_at, self.stall, self.polls, self.restarts = crash_at, stall, 0, 0

    def poll(self, timeout):
        self.polls += 1
        if self.crash_at is not None and self.polls == self.crash_at:
            raise EngineError("engine core died")
        return super().poll(timeout)

    def progress(self):
        p = super().progress()
        if self.stall and p.running:
            self.stall = False
            return EngineProgress(p.running, p.tokens_in_flight, seconds_since_token=10_000)
        return p

    def restart(self):
        self.restarts += 1
        super().restart()


def test_engine_crash_restarts_and_still_answers(write_traces):
    path = write_traces({"p": [8] * 16}, seconds=5)
    engine = FlakyEngine(path, clock=VirtualClock(), crash_at=2)
    r = Solver(engine, settings()).solve("p", "q", deadline=1000)
    assert engine.restarts == 1
    assert r.answer == 8 and r.stop_reason == "k_of_n"
    assert any("engine core died" in e for e in r.errors)
    assert r.launched == 16  # the 8 lost samples were launched again (indices 8..15)


def test_engine_hang_restarts(write_traces):
    path = write_traces({"p": [8] * 16}, seconds=[100] * 8 + [5] * 8)
    engine = FlakyEngine(path, clock=VirtualClock(), stall=True)
    r = Solver(engine, settings()).solve("p", "q", deadline=1000)
    assert engine.restarts == 1 and r.answer == 8 and r.seconds < 100


def test_engine_that_keeps_crashing_gives_up_and_falls_back(write_traces):
    class Dead(FlakyEngine):
        def poll(self, timeout):
            raise EngineError("gone")

    engine = Dead(write_traces({"p": [8] * 8}), clock=VirtualClock())
    r = Solver(engine, settings(**{"watchdog.max_restarts": 2})).solve("p", "q", deadline=1000)
    assert (r.answer, r.stop_reason, r.fallback) == (0, "engine_error", True)
    assert engine.restarts == 2


def test_weighted_voting_prefers_unlikely_guesses_less(write_traces):
    # 3 × "0" (a typical guess, weight 0.6) against 2 × 137: plain majority says 0, prior-weighted says 137.
    path = write_traces({"p": [0, 0, 0, 137, 137]})
    plain, _ = solver_for(path, **{"sampling.samples": 5, "voting.kind": "never"})
    weighted, _ = solver_for(path, **{"sampling.samples": 5, "voting.kind": "never", "voting.weights": ["prior"]})
    assert plain.solve("p", "q", deadline=1000).answer == 0
    assert weighted.solve("p", "q", deadline=1000).answer == 137


def test_engine_found_dead_on_submit_is_restarted(write_traces):
    class DeadOnce(FlakyEngine):
        def submit(self, requests):
            if self.restarts == 0:
                raise EngineError("engine core died between problems")
            super().submit(requests)

    engine = DeadOnce(write_traces({"p": [8] * 8}), clock=VirtualClock())
    r = Solver(engine, settings()).solve("p", "q", deadline=1000)
    assert (engine.restarts, r.answer, r.launched) == (1, 8, 8)
