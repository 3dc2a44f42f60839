"""Runs one problem: launches its samples, feeds finished answers to the vote, stops when the stop rule or the
deadline says so, aborts the rest and returns the answer with a record of what happened.

The solver sees only the Engine interface and the engine's clock, so the live server, the local gateway and the
simulator all run exactly this code. It never raises for engine trouble: a crash or a stall restarts the engine
(a bounded number of times per run, and only while the run has time for a model load) and the problem still gets
an answer. It does not trust the engine for time either: the server runs it on a worker thread and answers from
`result` (kept current after every vote) if an engine call hangs past the deadline, then sets `cancel`, after which
the solver touches the engine as little as it can and returns.

Every finished sample votes: samples `abort` hands back with their own finish reason (they finished between two
polls) count like polled ones, and samples of another problem that a poll returns (possible only after the server
gave up on a wedged solve) are kept for that problem instead of being lost.
"""

from __future__ import annotations

import logging
import threading
import zlib
from dataclasses import dataclass, field
from typing import Callable

from inference.answers import extract_answer
from inference.config import Settings
from inference.engines.base import Engine, EngineError, Sample, SampleRequest
from inference.prompts import build_messages, variant_schedule
from inference.voting import Votes, selection_weight, stop_reason, uses_entropy, vote_weight

log = logging.getLogger(__name__)


@dataclass
class ProblemResult:
    id: str
    answer: int
    # a voting rule, "all_finished", "deadline", "engine_error", "no_time", "engine_idle", "submit_failed", and from
    # the server's guard "deadline_guard", "engine_busy", "engine_dead", "global_cutoff"
    stop_reason: str
    launched: int = 0
    samples: int = 0  # finished samples
    valid: int = 0  # finished samples with a valid answer
    votes: dict = field(default_factory=dict)  # answer → count
    tokens: int = 0  # all generated tokens, aborted samples included
    seconds: float = 0.0
    fallback: bool = False  # no vote: the answer is the fallback (or a rescued partial answer)
    errors: list[str] = field(default_factory=list)

    def to_report(self) -> dict:
        return {
            "id": self.id,
            "answer": self.answer,
            "samples": self.samples,
            "launched": self.launched,
            "valid": self.valid,
            "votes": {str(k): v for k, v in self.votes.items()},
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "stop_reason": self.stop_reason,
            "fallback": self.fallback,
            "errors": self.errors,
        }


def sample_seed(base_seed: int, problem_id: str, sample: int) -> int:
    """Distinct, reproducible seeds per (run seed, problem, sample)."""
    return (base_seed * 1_000_003 + zlib.crc32(problem_id.encode()) * 1009 + sample) % (2**31 - 1)


class Solver:
    def __init__(self, engine: Engine, settings: Settings, trace_sink: Callable[[dict], None] | None = None,
                 may_restart: Callable[[], bool] | None = None) -> None:
        """`may_restart()` says whether the run still has time for an engine restart (the server compares the time
        left with the measured model load); without it a restart is always allowed."""
        self.engine = engine
        self.settings = settings
        self.trace_sink = trace_sink
        self.may_restart = may_restart or (lambda: True)
        self.restarts = 0  # engine restarts so far in this run
        self.restarting_since: float | None = None  # clock time of the restart in progress, if any
        self._inbox: dict[str, list[Sample]] = {}  # problem id → finished samples a poll returned to another solve
        self._inbox_lock = threading.Lock()

    @property
    def clock(self):
        return self.engine.clock

    def requests(self, problem_id: str, problem: str, first: int, count: int) -> list[SampleRequest]:
        s, p = self.settings.sampling, self.settings.prompts
        spec = self.settings.competition.answer
        schedule = variant_schedule(p.variants, first + count)[first:]
        return [
            SampleRequest(
                problem_id=problem_id,
                sample=first + i,
                messages=build_messages(problem, variant, p, spec),
                seed=sample_seed(s.seed, problem_id, first + i),
                max_tokens=s.max_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                min_p=s.min_p,
                stop_rule=s.stop_rule,
                variant=variant.name,
                logprobs=self.settings.voting.entropy_top_k if uses_entropy(self.settings.voting) else 0,
                entropy_tail_tokens=self.settings.voting.entropy_tail_tokens,
            )
            for i, variant in enumerate(schedule)
        ]

    def _recover(self, why: str, result: ProblemResult) -> bool:
        """Restart the engine after a crash or stall, if the run still has restarts left."""
        result.errors.append(why)
        if self.restarts >= self.settings.watchdog.max_restarts:
            log.error("engine failed (%s); no restarts left", why)
            return False
        if not self.may_restart():
            log.error("engine failed (%s); too little time left for a model load", why)
            result.errors.append("no restart: too little time left for a model load")
            return False
        self.restarts += 1
        log.warning("engine failed (%s); restart %d/%d", why, self.restarts, self.settings.watchdog.max_restarts)
        self.restarting_since = self.clock.now()
        try:
            self.engine.restart()
            return True
        except Exception as e:  # noqa: BLE001 - a failed restart is one more failure to report, not a crash
            result.errors.append(f"restart failed: {e!r}")
            return False
        finally:
            self.restarting_since = None

    def _route(self, finished: list[Sample], problem_id: str) -> list[Sample]:
        """This problem's samples; those of other open problems wait in their inbox (they finished while a wedged
        solve was polling), those of closed problems are dropped."""
        mine = [s for s in finished if s.problem_id == problem_id]
        if len(mine) < len(finished):
            with self._inbox_lock:
                for s in finished:
                    if s.problem_id != problem_id and s.problem_id in self._inbox:
                        self._inbox[s.problem_id].append(s)
        return mine

    def _record(self, sample: Sample, answer: int | None) -> None:
        if self.trace_sink is not None:
            record = sample.to_trace()
            record["answer"] = answer
            self.trace_sink(record)

    def solve(self, problem_id: str, problem: str, deadline: float, result: ProblemResult | None = None,
              cancel: threading.Event | None = None,
              extend: Callable[[Votes, int, int], float] | None = None) -> ProblemResult:
        """Answer one problem by `deadline` (engine clock). `result`, if given, is filled in as votes arrive, so a
        caller that stops waiting can answer its current leader; once `cancel` is set the solve returns at its next
        step without waiting on the engine again. `extend(votes, finished, launched)`, if given, re-sets the
        deadline after each poll ([sim]: the time budget stretches contested problems; see TimeBudget.extend)."""
        with self._inbox_lock:
            early = self._inbox.pop(problem_id, [])
            self._inbox[problem_id] = []
        try:
            return self._solve(problem_id, problem, deadline, result, cancel or threading.Event(), early, extend)
        finally:
            with self._inbox_lock:
                self._inbox.pop(problem_id, None)

    def _solve(self, problem_id: str, problem: str, deadline: float, result: ProblemResult | None,
               cancel: threading.Event, early: list[Sample],
               extend: Callable[[Votes, int, int], float] | None = None) -> ProblemResult:
        settings, clock = self.settings, self.clock
        spec, rule = settings.competition.answer, settings.voting
        start = clock.now()
        if result is None:
            result = ProblemResult(id=problem_id, answer=settings.competition.fallback_answer, stop_reason="no_time")
        result.id, result.stop_reason = problem_id, "no_time"
        votes = Votes()
        choice = Votes()  # the same votes weighted for picking the answer (differs with entropy weights)
        samples: list[Sample] = []
        lost = 0  # samples that died with a crashed or stalled engine
        odd_errors = 0  # engine calls in a row that raised something other than EngineError

        def tally(finished: list[Sample]) -> None:
            """Votes of finished samples; `result` keeps the current leader for a caller that stops waiting."""
            for s in finished:
                samples.append(s)
                # [sim] an engine that knows a sample's vote already (the replay engine parses each text once) says so
                answer = (self.engine.answer_of(s, spec) if hasattr(self.engine, "answer_of")
                          else extract_answer(s.text, spec))
                weight = vote_weight(rule, answer, s.tokens, settings.sampling.max_tokens)
                votes.add(answer, weight)
                choice.add(answer, weight * selection_weight(rule, s.extra))
                self._record(s, answer)
            if finished:
                leader = choice.leader()
                result.samples, result.valid, result.votes = len(samples), votes.valid, votes.as_dict()
                result.tokens = sum(s.tokens for s in samples)
                if leader is not None:
                    result.answer, result.fallback = int(leader), False

        def relaunch() -> bool:
            nonlocal lost
            outstanding = result.launched - lost - len(samples)
            lost += outstanding
            return launch(outstanding)

        def launch(count: int) -> bool:
            requests = self.requests(problem_id, problem, result.launched, count)
            while True:
                try:
                    self.engine.submit(requests)
                    result.launched += count
                    return True
                except EngineError as e:  # a dead engine (e.g. found dead between problems): restart, try again
                    if not self._recover(f"engine error on submit: {e}", result):
                        return False
                except Exception as e:  # noqa: BLE001 - e.g. a prompt longer than the model's context
                    result.errors.append(f"submit failed: {e!r}")
                    return False

        reason = "no_time"
        result.fallback = True  # until a sample votes
        if early:  # finished samples of this problem that an earlier, abandoned solve polled
            tally(early)
        if clock.now() < deadline:
            reason = None if launch(settings.sampling.samples) else "submit_failed"
        while reason is None:
            now = clock.now()
            if cancel.is_set():
                reason = "cancelled"
                break
            if now >= deadline:
                reason = "deadline"
                break
            finished: list[Sample] = []
            try:
                finished = self._route(self.engine.poll(min(settings.watchdog.poll_seconds, deadline - now)),
                                       problem_id)
                progress = self.engine.progress()
                if progress.running == 0 and not finished:
                    # The last sample may have finished between poll and progress: look once more before idling.
                    finished = self._route(self.engine.poll(0.0), problem_id)
                odd_errors = 0
            except Exception as e:  # noqa: BLE001 - EngineError, or an engine bug of another kind
                progress = None
                tally(finished)  # what a poll returned before a later call failed still votes
                finished = []
                if cancel.is_set():
                    reason = "cancelled"
                    break
                if not isinstance(e, EngineError):  # retry a stray error; three in a row is a broken engine
                    result.errors.append(f"engine call failed: {e!r}")
                    odd_errors += 1
                    if odd_errors < 3:
                        continue
                    odd_errors = 0
                if not self._recover(f"engine error: {e!r}", result):
                    reason = "engine_error"
                    break
                # The restarted engine lost the samples in flight: launch as many again.
                if not relaunch():
                    reason = "engine_error"
                    break
            tally(finished)
            reason = stop_reason(votes, len(samples), result.launched - lost, rule)
            if extend is not None:  # [sim] a difficulty-aware deadline
                deadline = extend(votes, len(samples), result.launched - lost)
            if reason is None and progress is not None and not finished and progress.running == 0:
                reason = "engine_idle"  # nothing in flight and nothing coming (e.g. a replay without this problem)
            if reason is None and progress is not None and progress.running:
                if progress.seconds_since_token > settings.watchdog.stall_seconds:
                    if not self._recover(f"engine stalled {progress.seconds_since_token:.0f}s", result):
                        reason = "engine_error"
                    elif not relaunch():
                        reason = "engine_error"

        returned: list[Sample] = []
        try:
            returned = self._route(self.engine.abort(problem_id), problem_id)
        except Exception as e:  # noqa: BLE001
            result.errors.append(f"abort failed: {e!r}")
        # abort hands back finished-but-unpolled samples with their own finish reason: they vote like polled ones.
        tally([s for s in returned if s.finish_reason != "aborted"])
        aborted = [s for s in returned if s.finish_reason == "aborted"]
        for s in aborted:
            self._record(s, None)

        leader = choice.leader()
        if leader is None:
            # No finished sample voted: rescue an answer an aborted sample had already boxed, else the fallback.
            leader = Votes.of(extract_answer(s.text, spec) for s in aborted).leader()
            result.fallback = True
        if leader is not None:
            result.answer = int(leader)
        result.stop_reason = reason
        result.samples = len(samples)
        result.valid = votes.valid
        result.votes = votes.as_dict()
        result.tokens = sum(s.tokens for s in samples) + sum(s.tokens for s in aborted)
        result.seconds = clock.now() - start
        return result
