"""Runs one problem: launches its samples, feeds finished answers to the vote, stops when the stop rule or the
deadline says so, aborts the rest and returns the answer with a record of what happened.

The solver sees only the Engine interface and the run's clock (the server's, not the engine's), so the live server,
the local gateway and the simulator all run exactly this code. It never raises for engine trouble: a crash or a stall
restarts the engine through the run's one `Restarts` (a bounded number of times per run, and only while the run has
time for a model load) and the problem still gets an answer. It does not trust the engine for time either: the
server runs it on a worker thread and answers from `result` (kept current after every vote) if an engine call hangs
past the deadline, then sets `cancel`, after which the solver calls the engine no more (no abort, progress or
restart: the next solve aborts the samples it left, or the server's restart ends them). An exception anywhere in a
solve still aborts its samples. `watch` shows the server which engine call the solve is in, and since when.

Every finished sample votes once: samples `abort` hands back with their own finish reason (they finished between two
polls) count like polled ones, a sample the engine hands back twice counts once, and samples of another open
problem that a poll returns (possible only after the server gave up on a wedged solve) go to that problem, which
votes them as they come. A sample the engine terminated for low confidence (finish reason "low_confidence", DeepConf
online: `voting.confidence_stop`) counts as finished and never votes. Only a bounded tail of a sample's text is
parsed (answers.extract_final_answer), so no sample, however long, holds the interpreter past a deadline.
"""

from __future__ import annotations

import logging
import threading
import zlib
from dataclasses import dataclass, field
from typing import Callable

from inference.answers import ANSWER_SCAN_CHARS, extract_final_answer
from inference.clock import RealClock
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


class Cancelled(Exception):
    """The server gave up on this solve: it must not call the engine again."""


class Restarts:
    """The run's engine restarts: the one place they are counted and run (the server's background restarts and a
    solve's restart after a crash alike), at most `limit` per run and only while `may_restart()` (time for a model
    load). `since` is the clock time of the restart in progress, if any; `down`: the last start or restart failed."""

    def __init__(self, engine: Engine, limit: int, clock, may_restart: Callable[[], bool] | None = None) -> None:
        self.engine, self.limit, self.clock = engine, limit, clock
        self.may_restart = may_restart or (lambda: True)
        self.count = 0
        self.since: float | None = None
        self.down = False
        self._lock = threading.Lock()

    def claim(self, why: str) -> str | None:
        """Take one restart; None if taken, else why not."""
        with self._lock:
            if self.count >= self.limit:
                log.error("engine failed (%s); no restarts left", why)
                return "no restarts left"
            if not self.may_restart():
                log.error("engine failed (%s); too little time left for a model load", why)
                return "no restart: too little time left for a model load"
            self.count += 1
            self.since = self.clock.now()
        log.warning("engine failed (%s); restart %d/%d", why, self.count, self.limit)
        return None

    def run(self, why: str, cancel: threading.Event | None = None) -> str | None:
        """Claim a restart and run it on this thread; None once the engine is back, else why not."""
        if cancel is not None and cancel.is_set():
            return "cancelled"
        refused = self.claim(why)
        return refused if refused is not None else self.restart_claimed()

    def restart_claimed(self) -> str | None:
        try:
            self.engine.restart()
            self.down = False
            return None
        except Exception as e:  # noqa: BLE001 - a failed restart is one more failure to report, not a crash
            log.error("engine restart failed: %r", e)
            self.down = True
            return f"restart failed: {e!r}"
        finally:
            self.since = None


class Solver:
    def __init__(self, engine: Engine, settings: Settings, trace_sink: Callable[[dict], None] | None = None,
                 clock=None, restarts: Restarts | None = None) -> None:
        """`clock`: the run's clock (default: the engine's, for a solver used on its own; a real clock without an
        engine, for a solver used only for its requests). `restarts`: the run's restart bookkeeping (the server
        passes its own; default: one for this solver)."""
        self.engine = engine
        self.settings = settings
        self.trace_sink = trace_sink
        self.clock = clock if clock is not None else engine.clock if engine is not None else RealClock()
        self.restarts = restarts or Restarts(engine, settings.watchdog.max_restarts, self.clock)
        self._inbox: dict[str, list[Sample]] = {}  # problem id → finished samples a poll returned to another solve
        self._inbox_lock = threading.Lock()
        self._unaborted: set[str] = set()  # problems whose solve was given up before it aborted their samples

    def requests(self, problem_id: str, problem: str, first: int, count: int,
                 max_tokens: int | None = None) -> list[SampleRequest]:
        """`max_tokens`: this problem's (the token scheduler's), else sampling.max_tokens."""
        s, p, v = self.settings.sampling, self.settings.prompts, self.settings.voting
        spec = self.settings.competition.answer
        schedule = variant_schedule(p.variants, first + count)[first:]
        return [
            SampleRequest(
                problem_id=problem_id,
                sample=first + i,
                messages=build_messages(problem, variant, p, spec),
                seed=sample_seed(s.seed, problem_id, first + i),
                max_tokens=max_tokens or s.max_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                min_p=s.min_p,
                stop_rule=s.stop_rule,
                variant=variant.name,
                logprobs=v.entropy_top_k if uses_entropy(v) or v.confidence_stop is not None else 0,
                entropy_tail_tokens=v.entropy_tail_tokens,
                confidence_stop=v.confidence_stop,
                confidence_warmup=v.confidence_warmup,
                confidence_window=v.confidence_window,
            )
            for i, variant in enumerate(schedule)
        ]

    def _route(self, finished: list[Sample], problem_id: str) -> list[Sample]:
        """This problem's samples; those of other open problems go to their inbox (they finished while a wedged
        solve was polling), those of closed problems are dropped."""
        mine = [s for s in finished if s.problem_id == problem_id]
        if len(mine) < len(finished):
            with self._inbox_lock:
                for s in finished:
                    if s.problem_id != problem_id and s.problem_id in self._inbox:
                        self._inbox[s.problem_id].append(s)
        return mine

    def _take_inbox(self, problem_id: str) -> list[Sample]:
        with self._inbox_lock:
            box = self._inbox.get(problem_id)
            if not box:
                return []
            self._inbox[problem_id] = []
            return box

    def _record(self, sample: Sample, answer: int | None) -> None:
        if self.trace_sink is not None:
            record = sample.to_trace()
            record["answer"] = answer
            self.trace_sink(record)

    def vote_of(self, sample: Sample) -> int | None:
        """A sample's vote, parsed from at most the last ANSWER_SCAN_CHARS characters of its text."""
        spec = self.settings.competition.answer
        # [sim] an engine that knows a sample's vote already (the replay engine parses each text once) says so
        if hasattr(self.engine, "answer_of") and len(sample.text) <= ANSWER_SCAN_CHARS:
            return self.engine.answer_of(sample, spec)
        return extract_final_answer(sample.text, spec)

    def solve(self, problem_id: str, problem: str, deadline: float, result: ProblemResult | None = None,
              cancel: threading.Event | None = None,
              extend: Callable[[Votes, int, int], float] | None = None, watch: dict | None = None,
              max_tokens: int | None = None) -> ProblemResult:
        """Answer one problem by `deadline` (the run's clock). `result`, if given, is filled in as votes arrive, so
        a caller that stops waiting can answer its current leader; once `cancel` is set the solve returns without
        calling the engine again. `extend(votes, finished, launched)`, if given, re-sets the deadline after each
        poll ([sim]: the time budget stretches contested problems; see TimeBudget.extend). `watch`, if given, holds
        the engine call in progress ("call": its name or None, "since": clock time it began). `max_tokens`: this
        problem's samples' limit (the token scheduler's), else sampling.max_tokens."""
        with self._inbox_lock:
            early = self._inbox.pop(problem_id, [])
            self._inbox[problem_id] = []
        try:
            return self._solve(problem_id, problem, deadline, result, cancel or threading.Event(), early, extend,
                               watch if watch is not None else {}, max_tokens)
        finally:
            with self._inbox_lock:
                self._inbox.pop(problem_id, None)

    def _solve(self, problem_id: str, problem: str, deadline: float, result: ProblemResult | None,
               cancel: threading.Event, early: list[Sample],
               extend: Callable[[Votes, int, int], float] | None, watch: dict,
               max_tokens: int | None = None) -> ProblemResult:
        settings, clock = self.settings, self.clock
        rule = settings.voting
        start = clock.now()
        if result is None:
            result = ProblemResult(id=problem_id, answer=settings.competition.fallback_answer, stop_reason="no_time")
        result.id, result.stop_reason = problem_id, "no_time"
        votes = Votes()
        choice = Votes()  # the same votes weighted for picking the answer (differs with entropy weights)
        samples: list[Sample] = []
        seen: set[int] = set()  # sample indices already voted: an engine may hand one back twice
        aborted: list[Sample] = []
        lost = 0  # samples that died with a crashed or stalled engine
        odd_errors = 0  # engine calls in a row that raised something other than EngineError

        def call(name: str, fn: Callable, *args):
            """One engine call, unless the server has given up on this solve."""
            if cancel.is_set():
                raise Cancelled
            watch["call"], watch["since"] = name, clock.now()
            try:
                return fn(*args)
            finally:
                watch["call"] = None

        def tally(finished: list[Sample]) -> None:
            """Votes of finished samples; `result` keeps the current leader for a caller that stops waiting."""
            fresh = []
            for s in finished:
                if s.sample not in seen:
                    seen.add(s.sample)
                    fresh.append(s)
            for s in fresh:
                samples.append(s)
                # DeepConf terminated it: finished, no vote (its partial text may hold a box it had not committed to)
                answer = None if s.finish_reason == "low_confidence" else self.vote_of(s)
                weight = vote_weight(rule, answer, s.tokens, settings.sampling.max_tokens)
                votes.add(answer, weight)
                choice.add(answer, weight * selection_weight(rule, s.extra))
                self._record(s, answer)
            if fresh:
                leader = choice.leader()
                result.samples, result.valid, result.votes = len(samples), votes.valid, votes.as_dict()
                result.tokens = sum(s.tokens for s in samples)
                if leader is not None:
                    result.answer, result.fallback = int(leader), False

        def recover(why: str) -> bool:
            result.errors.append(why)
            if cancel.is_set():
                raise Cancelled
            refused = self.restarts.run(why, cancel)
            if refused is not None:
                result.errors.append(refused)
            return refused is None

        def relaunch() -> bool:
            nonlocal lost
            outstanding = result.launched - lost - len(samples)
            lost += outstanding
            return launch(outstanding)

        def launch(count: int) -> bool:
            requests = self.requests(problem_id, problem, result.launched, count, max_tokens)
            while True:
                try:
                    call("submit", self.engine.submit, requests)
                    result.launched += count
                    return True
                except Cancelled:
                    raise
                except EngineError as e:  # a dead engine (e.g. found dead between problems): restart, try again
                    if not recover(f"engine error on submit: {e}"):
                        return False
                except Exception as e:  # noqa: BLE001 - e.g. a prompt longer than the model's context
                    result.errors.append(f"submit failed: {e!r}")
                    return False

        reason = "no_time"
        result.fallback = True  # until a sample votes
        try:
            for stale in sorted(self._unaborted):  # samples an earlier, given-up solve left running
                self._unaborted.discard(stale)
                try:
                    call("abort", self.engine.abort, stale)
                except Cancelled:
                    raise
                except Exception as e:  # noqa: BLE001 - a dead engine: this solve's submit meets it and restarts
                    result.errors.append(f"abort of {stale} failed: {e!r}")
            if early:  # finished samples of this problem that an earlier, abandoned solve polled
                tally(early)
            if clock.now() < deadline:
                reason = None if launch(settings.sampling.samples) else "submit_failed"
            while reason is None:
                now = clock.now()
                if cancel.is_set():
                    raise Cancelled
                if now >= deadline:
                    reason = "deadline"
                    break
                finished: list[Sample] = []
                try:
                    finished = self._route(call("poll", self.engine.poll,
                                                min(settings.watchdog.poll_seconds, deadline - now)), problem_id)
                    progress = call("progress", self.engine.progress)
                    if progress.running == 0 and not finished:
                        # The last sample may have finished between poll and progress: look once more before idling.
                        finished = self._route(call("poll", self.engine.poll, 0.0), problem_id)
                    odd_errors = 0
                except Cancelled:
                    tally(finished)
                    raise
                except Exception as e:  # noqa: BLE001 - EngineError, or an engine bug of another kind
                    progress = None
                    tally(finished)  # what a poll returned before a later call failed still votes
                    finished = []
                    if not isinstance(e, EngineError):  # retry a stray error; three in a row is a broken engine
                        result.errors.append(f"engine call failed: {e!r}")
                        odd_errors += 1
                        if odd_errors < 3:
                            continue
                        odd_errors = 0
                    if not recover(f"engine error: {e!r}"):
                        reason = "engine_error"
                        break
                    # The restarted engine lost the samples in flight: launch as many again.
                    if not relaunch():
                        reason = "engine_error"
                        break
                tally(finished + self._take_inbox(problem_id))  # the inbox: samples another solve's poll returned
                reason = stop_reason(votes, len(samples), result.launched - lost, rule)
                if extend is not None:  # [sim] a difficulty-aware deadline
                    deadline = extend(votes, len(samples), result.launched - lost)
                if reason is None and progress is not None and not finished and progress.running == 0:
                    reason = "engine_idle"  # nothing in flight and nothing coming (e.g. a replay without this problem)
                if reason is None and progress is not None and progress.running:
                    if progress.seconds_since_token > settings.watchdog.stall_seconds:
                        if not recover(f"engine stalled {progress.seconds_since_token:.0f}s"):
                            reason = "engine_error"
                        elif not relaunch():
                            reason = "engine_error"
        except Cancelled:
            reason = "cancelled"
            if result.launched:
                self._unaborted.add(problem_id)  # the next solve aborts them (a restart would end them too)
        except Exception as e:  # noqa: BLE001 - a bug or bad engine output must not leave the samples running
            reason = "error"
            result.errors.append(f"solve failed: {e!r}")
            log.exception("solve of %s failed; aborting its samples", problem_id)
        finally:
            if not cancel.is_set() and result.launched:
                returned: list[Sample] = []
                try:
                    returned = self._route(call("abort", self.engine.abort, problem_id), problem_id)
                except Cancelled:
                    self._unaborted.add(problem_id)
                except Exception as e:  # noqa: BLE001
                    result.errors.append(f"abort failed: {e!r}")
                # abort hands back finished-but-unpolled samples with their own finish reason: they vote like polled
                # ones (once; and those another solve's poll returned meanwhile).
                aborted = [s for s in returned if s.finish_reason == "aborted"]
                try:
                    tally([s for s in returned if s.finish_reason != "aborted"] + self._take_inbox(problem_id))
                    for s in aborted:
                        self._record(s, None)
                except Exception as e:  # noqa: BLE001
                    result.errors.append(f"solve failed after abort: {e!r}")

        leader = choice.leader()
        if leader is None:
            # No finished sample voted: rescue an answer an aborted sample had already boxed, else the fallback.
            rescued = []
            for s in aborted:
                try:
                    rescued.append(self.vote_of(s))  # extract_final_answer, or the replay engine's parse-once
                except Exception:  # noqa: BLE001 - an unreadable partial is no rescue
                    pass
            leader = Votes.of(rescued).leader()
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
