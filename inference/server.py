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
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl

from inference.clock import RealClock, VirtualClock
from inference.config import Settings
from inference.engines import Engine, make_engine
from inference.solver import ProblemResult, Solver
from inference.time_budget import TimeBudget
from inference.voting import contention  # [sim]

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
    if settings.engine == "vllm":
        return make_engine("vllm", model=settings.model, clock=clock, engine_args=dict(settings.engine_args),
                           stall_seconds=settings.watchdog.stall_seconds)
    # A config written for vLLM can be run with `--engine transformers`: keep the arguments that engine takes.
    from inference.engines.transformers_engine import TransformersEngine

    accepted = sorted(set(inspect.signature(TransformersEngine).parameters) - {"model", "clock"})
    args = {k: v for k, v in settings.engine_args.items() if k in accepted}
    if ignored := sorted(set(settings.engine_args) - set(args)):
        log.warning("the transformers engine ignores engine_args %s (it takes %s)", ignored, accepted)
    return make_engine("transformers", model=settings.model, clock=clock, **args)


class Predictor:
    def __init__(
        self,
        settings: Settings,
        engine: Engine | None = None,
        total_seconds: float | None = None,
        problems: int | None = None,
        run_started_at: float | None = None,
    ) -> None:
        """`total_seconds` and `problems` override the competition's (e.g. a rehearsal on 10 problems in 20 min).
        `run_started_at` ([sim]): time.time() when the notebook started; the time since counts against the run."""
        self.settings = settings
        comp = settings.competition
        if engine is not None:
            self.clock = engine.clock
        else:
            self.clock = VirtualClock() if settings.virtual_clock else RealClock()
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
        self._lock = threading.Lock()
        self._trace_lock = threading.Lock()
        self._calls = 0

    # -- engine ---------------------------------------------------------------------------------------------------
    def _trace_sink(self, record: dict) -> None:
        with self._trace_lock, open(self.settings.record_traces, "a") as f:
            f.write(json.dumps(record) + "\n")

    def solver(self) -> Solver:
        """The solver with a started engine (starts it on first use: the slow model load)."""
        if self._solver is None:
            if self._engine is None:
                self._engine = build_engine(self.settings, self.clock)
            t0 = time.monotonic()
            self._engine.start()
            log.info("engine %s ready in %.1fs", self.settings.engine, time.monotonic() - t0)
            sink = None  # without record_traces the solver builds no trace records at all
            if self.settings.record_traces:
                Path(self.settings.record_traces).parent.mkdir(parents=True, exist_ok=True)
                sink = self._trace_sink
            self._solver = Solver(self._engine, self.settings, trace_sink=sink)
        return self._solver

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()

    # -- one problem ----------------------------------------------------------------------------------------------
    def solve(self, problem_id: str, problem: str) -> ProblemResult:
        fallback = self.settings.competition.fallback_answer
        if self.budget.time_left() <= 0:
            return ProblemResult(id=problem_id, answer=fallback, stop_reason="global_cutoff", fallback=True)
        try:
            solver = self.solver()  # the first call pays for the model load
        except Exception as e:  # noqa: BLE001 - the run must go on; the next call tries again
            log.exception("engine failed to start")
            self._solver = None
            return ProblemResult(id=problem_id, answer=fallback, stop_reason="engine_error", fallback=True,
                                 errors=[f"engine start failed: {e!r}"])
        deadline = self.budget.start_problem()
        try:
            extend = self._contested_deadline if self.settings.time.stretch > 1 else None  # [sim]
            return solver.solve(problem_id, problem, deadline, extend)
        finally:
            self.budget.finish_problem()

    def _contested_deadline(self, votes, finished: int, launched: int) -> float:
        """[sim] The deadline of the problem being solved, stretched while its votes are split."""
        return self.budget.extend(contention(votes, finished, launched))

    def predict(self, id_: Any, problem: Any) -> pl.DataFrame:
        """Kaggle's endpoint: one-row pl.Series in, one-row DataFrame (id, answer:int) out. Never raises."""
        with self._lock:
            self._calls += 1
            fallback = self.settings.competition.fallback_answer
            problem_id = f"call-{self._calls}"
            try:
                problem_id = str(_item(id_))
                text = _item(problem)
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"problem {problem_id}: expected non-empty text, got {text!r:.80}")
                result = self.solve(problem_id, text)
            except Exception as e:  # noqa: BLE001 - see the module docstring
                log.exception("predict failed for %s; answering the fallback", problem_id)
                result = ProblemResult(id=problem_id, answer=fallback, stop_reason="error", fallback=True,
                                       errors=[repr(e)])
            spec = self.settings.competition.answer
            if not spec.min <= result.answer <= spec.max:  # never send an answer the competition cannot score
                result.errors.append(f"answer {result.answer} out of range; fallback used")
                result.answer, result.fallback = fallback, True
            self.results[problem_id] = result
            log.info(
                "%s → %d (%s; %d/%d samples, %d tokens, %.1fs, %.0fs left)",
                problem_id, result.answer, result.stop_reason, result.samples, result.launched,
                result.tokens, result.seconds, self.budget.time_left(),
            )
            return pl.DataFrame({"id": [problem_id], "answer": [int(result.answer)]},
                                schema={"id": pl.String, "answer": pl.Int64})
