"""The Kaggle-facing server: `Predictor.predict(id_, problem) -> pl.DataFrame` with columns id and answer (int).

In a notebook:

    PREDICTOR = Predictor(load_settings("configs/inference/aimo3.yaml", model="/kaggle/input/..."))
    def predict(id_, problem):          # Kaggle's gateway registers listeners by function name
        return PREDICTOR.predict(id_, problem)

- The model loads lazily on the first call, which has no deadline on Kaggle (the server must only *start* within
  15 minutes).
- predict never raises: any internal error gives the competition's fallback answer and a log line, because an
  exception fails the whole Kaggle run.
- It works when called from a non-main thread (Kaggle calls it from a gRPC worker thread): no signals anywhere.
- Time: one TimeBudget for the whole run, started when the Predictor is made (≈ notebook start), gives each
  problem its deadline; past the global cutoff every problem gets the fallback at once.
- The engine is not trusted for time, nor for its clock: the run's clock is the Predictor's own (`clock=`; pass a
  VirtualClock shared with a replay engine to simulate). Each solve runs on a worker thread and predict waits for
  it only until the problem's deadline plus `watchdog.answer_grace_seconds`, then answers the solve's current
  leader (or the fallback) whatever the engine is doing: hung in poll, submit or abort, restarting slowly, or dead.
  A worker still busy when the next problem comes is waited for only while that can pay off: one still aborting (a
  slow abort is not a dead engine) or wrapping up for up to half the new problem's time; one wedged in any other
  call is given up at once (it never calls the engine again) and the engine restarted in the background. A failed
  start is retried in the background too. Restarts are counted in one place (solver.Restarts, owned here), at most
  `watchdog.max_restarts` per run (which also bounds the threads a wedged engine can leak) and only while the run
  has time for a model load (measured at the first start). Until the engine is back, problems get the fallback.
- Under a virtual clock (the simulator) the solve runs inline unless `isolate=True`: a replay does not hang, and
  inline is faster for thousands of simulated runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import polars as pl

from inference.clock import RealClock, VirtualClock
from inference.config import Settings
from inference.engines import Engine, make_engine
from inference.solver import ProblemResult, Restarts, Solver
from inference.time_budget import TimeBudget
from inference.token_scheduler import Scheduler

log = logging.getLogger("inference.server")


def _item(value: Any) -> Any:
    """The single value of a one-row pl.Series / pl.DataFrame / pandas object, or the value itself."""
    if isinstance(value, pl.DataFrame):
        value = value.to_series(0)
    if isinstance(value, pl.Series):
        return value.item(0)
    if hasattr(value, "iloc"):  # pandas, without importing it
        value = value.iloc[0]
        return value.iloc[0] if hasattr(value, "iloc") else value
    return value


def build_engine(settings: Settings, clock: RealClock | VirtualClock) -> Engine:
    if settings.engine == "replay":
        return make_engine("replay", traces=settings.traces, clock=clock)
    # The chat format and the tool loop, for either live engine.
    chat = {"chat_format": settings.prompts.format, "format_options": dict(settings.prompts.format_options),
            "tools": settings.tools}
    if settings.engine == "vllm":
        return make_engine("vllm", model=settings.model, clock=clock, engine_args=dict(settings.engine_args),
                           stall_seconds=settings.watchdog.stall_seconds, lora_path=settings.lora_path, **chat)
    # A config written for vLLM can be run with `--engine transformers`: keep the arguments that engine takes.
    from inference.engines.transformers_engine import TransformersEngine

    accepted = sorted(set(inspect.signature(TransformersEngine).parameters) - {"model", "clock"} - set(chat))
    args = {k: v for k, v in settings.engine_args.items() if k in accepted}
    if ignored := sorted(set(settings.engine_args) - set(args)):
        log.warning("the transformers engine ignores engine_args %s (it takes %s)", ignored, accepted)
    return make_engine("transformers", model=settings.model, clock=clock, **args, **chat)


class Predictor:
    def __init__(
        self,
        settings: Settings,
        engine: Engine | None = None,
        total_seconds: float | None = None,
        problems: int | None = None,
        isolate: bool | None = None,
        run_started_at: float | None = None,
        clock: RealClock | VirtualClock | None = None,
    ) -> None:
        """`total_seconds` and `problems` override the competition's (e.g. a rehearsal on 10 problems in 20 min).
        `isolate`: solve on a worker thread with a hard deadline (default: yes on a real clock, no on a virtual one).
        `run_started_at` ([sim]): time.time() when the notebook started; the time since counts against the run.
        `clock`: the run's clock (default: a VirtualClock with settings.virtual_clock, else a RealClock); never the
        engine's, which is not trusted. A replay on a virtual clock must be given the engine's clock here."""
        self.settings = settings
        comp = settings.competition
        if clock is None:
            clock = VirtualClock() if settings.virtual_clock else RealClock()
        self.clock = clock
        self._engine = engine
        self._solver: Solver | None = None
        total = total_seconds if total_seconds is not None else comp.total_seconds
        self.budget = TimeBudget(
            settings.time,
            total_seconds=total,
            problems=problems if problems is not None else comp.problems,
            clock=self.clock,
            # [sim] a shorter run keeps the competition's margin in proportion (it used to drop it silently)
            safety_margin_seconds=comp.safety_margin_seconds * min(1.0, total / comp.total_seconds),
            per_call_seconds=comp.per_call_seconds,
            elapsed_seconds=0.0 if run_started_at is None else max(0.0, time.time() - run_started_at),  # [sim]
        )
        self.results: dict[str, ProblemResult] = {}
        # the token scheduler (settings.token_scheduler): per problem, max_tokens and a time weight from its length;
        # its model loads here, before the first problem's clock starts
        self.scheduler: Scheduler | None = None
        if settings.token_scheduler.source:
            try:
                self.scheduler = Scheduler(settings.token_scheduler)
            except Exception:  # noqa: BLE001 - no scheduler is the config's own limits, never a lost run
                log.exception("token scheduler %s failed to load; using the config's max_tokens and time share",
                              settings.token_scheduler.source)
        self.max_tokens: dict[str, int] = {}  # problem id → the scheduler's max_tokens for it
        self._lock = threading.Lock()
        self._trace_lock = threading.Lock()
        self._calls = 0
        # The deadline guard (see the module docstring).
        self.isolate = (not self.clock.virtual) if isolate is None else isolate
        self.load_seconds: float | None = None  # the first engine start, on the clock: what a restart will cost
        self.restarts: Restarts | None = None  # the run's restart bookkeeping (made with the engine)
        self._first_start_tried = False
        self._watch: dict | None = None  # the engine call the last solve's worker is in (solver.solve's `watch`)
        self.engine_dead = False  # no restart left, or no time for one: every later problem gets the fallback
        self._worker: threading.Thread | None = None  # the last thread that entered the engine, maybe still in it
        self._worker_ready_at: float | None = None  # when a restarting worker should be done (clock)
        self.abandoned: list[threading.Thread] = []  # wedged workers given up on (each cost one restart)
        self.deadlines: dict[str, tuple[float, float]] = {}  # problem id → (deadline, answered at), on the clock
        self._deadline: float | None = None  # the current problem's
        self._held: list[float] = []  # [sim] virtual times the clock stays at until predict has answered
        self.interrupted = False  # set by interrupt(): the user stopped the run

    # -- engine ---------------------------------------------------------------------------------------------------
    def _trace_sink(self, record: dict) -> None:
        with self._trace_lock, open(self.settings.record_traces, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _build(self) -> None:
        if self._engine is None:
            self._engine = build_engine(self.settings, self.clock)
        if self.restarts is None:
            self.restarts = Restarts(self._engine, self.settings.watchdog.max_restarts, self.clock, self._may_restart)

    def _make_solver(self) -> Solver:
        sink = None  # without record_traces the solver builds no trace records at all
        if self.settings.record_traces:
            Path(self.settings.record_traces).parent.mkdir(parents=True, exist_ok=True)
            sink = self._trace_sink
        return Solver(self._engine, self.settings, trace_sink=sink, clock=self.clock, restarts=self.restarts)

    def solver(self) -> Solver:
        """The solver with a started engine (starts it on first use: the slow model load)."""
        if self._solver is None:
            self._build()
            self._first_start_tried = True
            t0 = self.clock.now()
            try:
                self._engine.start()
            except BaseException:
                self.restarts.down = True
                raise
            if self.load_seconds is None:  # measured once: the price of any later restart
                self.load_seconds = self.clock.now() - t0
            self.restarts.down = False
            log.info("engine %s ready in %.1fs", self.settings.engine, self.clock.now() - t0)
            self._solver = self._make_solver()
        return self._solver

    def _may_restart(self) -> bool:
        """A restart pays off only if the run has time for a whole model load (and the user has not stopped it)."""
        return not self.interrupted and self.budget.time_left() > (self.load_seconds or 0.0)

    def interrupt(self) -> None:
        """The user stopped the run (Ctrl-C): no engine restart from here on (vLLM's engine core got the same SIGINT
        and is shutting down: not a crash), and a predict in flight answers at once."""
        self.interrupted = True

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()

    # -- one problem ---------------------------------------------------------------------------------------------

    def _fallback(self, problem_id: str, reason: str, error: str | None = None) -> ProblemResult:
        return ProblemResult(id=problem_id, answer=self.settings.competition.fallback_answer, stop_reason=reason,
                             fallback=True, errors=[error] if error else [])

    def solve(self, problem_id: str, problem: str) -> ProblemResult:
        """One problem, solved inline on the calling thread (the simulator's path; predict adds the guard)."""
        if self.budget.time_left() <= 0:
            return self._fallback(problem_id, "global_cutoff")
        try:
            solver = self.solver()  # the first call pays for the model load
        except Exception as e:  # noqa: BLE001 - the run must go on; the next call tries again
            log.exception("engine failed to start")
            self._solver = None
            return self._fallback(problem_id, "engine_error", f"engine start failed: {e!r}")
        max_tokens, weight = self._schedule(problem_id, problem)
        deadline = self._deadline = self.budget.start_problem(weight)
        try:
            return solver.solve(problem_id, problem, deadline, extend=self._contested_deadline(),  # [sim]
                                max_tokens=max_tokens)
        finally:
            self.budget.finish_problem()

    def _answer(self, problem_id: str, problem: str) -> ProblemResult:
        if not self.isolate:
            return self.solve(problem_id, problem)
        if self.budget.time_left() <= 0:
            return self._fallback(problem_id, "global_cutoff")
        if self.engine_dead:
            return self._fallback(problem_id, "engine_dead")
        if not self._first_start_tried and self._joined(0.0):
            # The first call loads the model. Kaggle gives it no per-problem deadline; the run's cutoff still holds.
            # A failed start is retried in the background (_engine_free), not inside a problem's deadline.
            finished, box = self._in_worker("engine-start", self.solver, self.budget.cutoff)
            if not finished:
                return self._fallback(problem_id, "global_cutoff", "the model was still loading at the cutoff")
            if "error" in box:
                log.error("engine failed to start: %r", box["error"])
        max_tokens, weight = self._schedule(problem_id, problem)
        deadline = self._deadline = self.budget.start_problem(weight)
        try:
            if not self._engine_free(deadline):
                return self._fallback(problem_id, "engine_dead" if self.engine_dead else "engine_busy")
            live = self._fallback(problem_id, "deadline_guard")
            cancel = threading.Event()
            stretch = self._contested_deadline()
            current = {"deadline": deadline}  # the deadline this solve works to, stretched or not: the guard's

            def follow(votes, finished, launched) -> float:
                if cancel.is_set():  # a solve given up on must not move anything any more
                    return current["deadline"]
                # a deadline pulled back (the votes settled) ends the problem now, not in the past
                current["deadline"] = max(stretch(votes, finished, launched),
                                          min(current["deadline"], self.clock.now()))
                return current["deadline"]

            extend = follow if stretch is not None else None

            solver, watch = self._solver, {"call": None, "since": self.clock.now()}

            def work() -> ProblemResult:
                return solver.solve(problem_id, problem, deadline, result=live, cancel=cancel, extend=extend,
                                    watch=watch, max_tokens=max_tokens)

            grace = self.settings.watchdog.answer_grace_seconds
            finished, box = self._in_worker(f"solve-{problem_id}", work, lambda: current["deadline"] + grace,
                                            watch=watch)
            cancel.set()  # from here on the worker leaves the engine alone as soon as it wakes
            self._deadline = current["deadline"]
            if finished and "value" in box:
                return box["value"]
            result = dataclasses.replace(live, votes=dict(live.votes), errors=list(live.errors))
            if finished:
                result.stop_reason = "error"
                result.errors.append(f"solve failed: {box['error']!r}")
            else:
                result.stop_reason = "deadline_guard"
                result.errors.append("the engine had not returned at the deadline; answered the leader so far")
            return result
        finally:
            self.budget.finish_problem()

    def _schedule(self, problem_id: str, problem: str) -> tuple[int | None, float]:
        """(max_tokens, time weight) for this problem from the token scheduler; (None, 1.0) without one or when the
        prediction fails (the config's own limits: a scheduler error never costs an answer)."""
        if self.scheduler is None:
            return None, 1.0
        try:
            max_tokens, weight = self.scheduler.plan(problem_id, problem)
        except Exception:  # noqa: BLE001 - e.g. a model that fails to load
            log.exception("token scheduler failed on %s; using the config's max_tokens and time share", problem_id)
            return None, 1.0
        if max_tokens is not None:
            self.max_tokens[problem_id] = max_tokens
        return max_tokens, weight

    def _contested_deadline(self) -> Callable | None:
        """[sim] For the solver: the deadline of the problem being solved, stretched while its votes are split
        (time.stretch > 1; TimeBudget.extend), or None for a fixed deadline."""
        if self.settings.time.stretch <= 1:
            return None
        return lambda votes, finished, launched: self.budget.extend(self.budget.contention(votes, finished, launched))

    # -- the guard's threads ----------------------------------------------------------------------------------------

    def _wait(self, done: Callable[[float], bool], until: float | Callable[[], float], hold: bool = False) -> bool:
        """Wait until done(timeout) is true or the clock reaches `until` (a time, or a function of the moving
        deadline of a solve that may stretch it). `hold` (virtual clock): a wait that timed out keeps the clock at
        its time until predict has answered, as the few real milliseconds that takes would."""
        if self.clock.virtual:
            return self.clock.wait_for(done, until, self._held if hold else None)
        when = until if callable(until) else (lambda: until)
        while True:  # wake every 0.25 s to see whether a stretched deadline moved
            limit = when()
            finished = done(max(0.0, min(limit - self.clock.now(), 0.25)))
            if finished:
                return True
            if self.interrupted:
                return done(0.0)
            if self.clock.now() >= limit and when() <= limit:
                return done(0.0)

    def _in_worker(self, name: str, fn: Callable[[], Any], until: float | Callable[[], float],
                   watch: dict | None = None) -> tuple[bool, dict]:
        """Run fn on a fresh daemon thread and wait for it until `until` (clock). Returns (finished, box) with
        box["value"] or box["error"]; an unfinished thread stays in self._worker."""
        box: dict = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the waiting predict
                box["error"] = e
            finally:
                done.set()

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._worker, self._worker_ready_at, self._watch = thread, None, watch
        thread.start()
        return self._wait(done.wait, until, hold=True), box

    def _joined(self, timeout: float) -> bool:
        """Wait up to `timeout` for the current worker to end; whether it has."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return worker is None or not worker.is_alive()

    def _engine_free(self, deadline: float) -> bool:
        """Whether this problem may use the engine now: True once no earlier thread is inside it and the engine is
        up. Waits for a finishing, aborting or restarting worker while that leaves time to solve; gives up a wedged
        one and restarts a down engine in the background; False means answer the fallback at once."""
        self.abandoned = [t for t in self.abandoned if t.is_alive()]
        start = self.clock.now()
        half = start + 0.5 * (deadline - start)  # waiting must leave this problem at least half its time
        grace = self.settings.watchdog.answer_grace_seconds
        if not (self._joined(0.0) or self._wait(self._joined, min(deadline, start + grace))):
            if not self._wait_out_worker(deadline, half):
                return False
        if self.restarts is not None and self.restarts.down:  # a start or restart failed: try again, off-deadline
            if not self._restart_in_background("the engine is down (a start or restart failed)"):
                return False
            if not self._wait_out_worker(deadline, half):
                return False
        return self._solver is not None and self.restarts is not None and not self.restarts.down

    def _wait_out_worker(self, deadline: float, half: float) -> bool:
        """The last worker is still running: wait for it if it is restarting the engine or slow (aborting, or in
        the solve's own code), give it up if it is wedged in an engine call. True once it has ended."""
        now = self.clock.now()
        load = self.load_seconds or 0.0
        restarting = self.restarts.since if self.restarts is not None else None
        if self._worker_ready_at is None and restarting is not None:  # a solve is restarting the engine itself
            self._worker_ready_at = restarting + load
        if self._worker_ready_at is None:
            watch = self._watch or {}
            # A slow abort is not a dead engine: wait for it (and for the solve's wrapping up) up to half this
            # problem's time; only past that is it wedged.
            if watch.get("call") in (None, "abort") and self._wait(self._joined, half):
                return True
            if self._joined(0.0):
                return True
            if not self._restart_in_background(f"engine wedged in {watch.get('call') or 'a call'}"):
                return False
        elif now > self._worker_ready_at + max(load, self.settings.watchdog.stall_seconds):
            log.error("engine restart has not finished %.0fs after it was due; no more engine this run",
                      now - self._worker_ready_at)
            self.engine_dead = True
            return False
        # Wait for the restart only if it should leave this problem at least half its time (a load of unknown
        # length, after a failed first start, gets that half).
        now = self.clock.now()
        ready_at = self._worker_ready_at if self.load_seconds is not None else half
        if ready_at > now + 0.5 * (deadline - now) + 1e-9:
            return False
        grace = self.settings.watchdog.answer_grace_seconds
        return self._wait(self._joined, min(deadline, ready_at + grace))

    def _restart_in_background(self, why: str) -> bool:
        """Restart the engine on a thread of its own (the run's Restarts decide whether one is left); the worker
        still inside the old engine is given up. False: no restart left, the engine is dead for this run."""
        self._build()
        restarts = self.restarts
        if restarts.claim(why) is not None:
            log.error("%s and no restart left (or no time for one): fallback answers from here on", why)
            self.engine_dead = True
            return False
        if self._worker is not None and self._worker.is_alive():
            self.abandoned.append(self._worker)

        def restart() -> None:
            # a failed one leaves restarts.down set: the next problem tries again while restarts are left
            if restarts.restart_claimed() is None and self._solver is None:
                self._solver = self._make_solver()

        thread = threading.Thread(target=restart, name="engine-restart", daemon=True)
        self._worker, self._watch = thread, None
        self._worker_ready_at = self.clock.now() + (self.load_seconds or 0.0)
        thread.start()
        return True

    def predict(self, id_: Any, problem: Any) -> pl.DataFrame:
        """Kaggle's endpoint: one-row pl.Series in, one-row DataFrame (id, answer:int) out. Never raises."""
        with self._lock:
            self._calls += 1
            self._deadline = None
            fallback = self.settings.competition.fallback_answer
            problem_id = f"call-{self._calls}"
            try:
                problem_id = str(_item(id_))
                text = _item(problem)
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"problem {problem_id}: expected non-empty text, got {text!r:.80}")
                result = self._answer(problem_id, text)
            except Exception as e:  # noqa: BLE001 - see the module docstring
                log.exception("predict failed for %s; answering the fallback", problem_id)
                result = ProblemResult(id=problem_id, answer=fallback, stop_reason="error", fallback=True,
                                       errors=[repr(e)])
            spec = self.settings.competition.answer
            if not spec.min <= result.answer <= spec.max:  # never send an answer the competition cannot score
                result.errors.append(f"answer {result.answer} out of range; fallback used")
                result.answer, result.fallback = fallback, True
            self.results[problem_id] = result
            self.deadlines[problem_id] = (self._deadline if self._deadline is not None else self.clock.now(),
                                          self.clock.now())
            if self._held:
                self.clock.release(self._held)
            log.info(
                "%s → %d (%s; %d/%d samples, %d tokens, %.1fs, %.0fs left)",
                problem_id, result.answer, result.stop_reason, result.samples, result.launched,
                result.tokens, result.seconds, self.budget.time_left(),
            )
            return pl.DataFrame({"id": [problem_id], "answer": [int(result.answer)]},
                                schema={"id": pl.String, "answer": pl.Int64})
