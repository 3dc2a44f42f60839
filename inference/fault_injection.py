"""Fault drills: prove that every problem is answered on time whatever the engine does.

    python -m inference.fault_injection --runs 200 --clock virtual     # ~1 min on 2 cores
    python -m inference.fault_injection --runs 10 --clock real         # real threads and sleeps, ~1 min

`FaultyEngine` wraps any engine (replay here; the tests also wrap the real vLLM engine) and, at seeded random
points, makes it fail the way real engines do: the engine core dies; start, submit, poll, progress, abort or restart
hang; a restart or the first load is slow; a start or restart fails (transient); a call raises an exception of another
type; an abort is slow but returns (as parsing aborted gpt-oss samples was); a hung submit raises once a restart
frees it; a finished sample's text is garbage (empty, 10⁵ characters of braces, odd unicode), bytes, or 150 MB of
backslashes; a finished sample comes back twice; the engine's clock runs slow. `drill` runs one competition through
the local gateway with such an engine, on problem texts that include 10⁵-character and odd-unicode ones, and checks
what Kaggle would: every predict returns a valid one-row answer no later than its deadline + 0.5 s (the guard answers
at deadline + grace, 0.4 s here, leaving a real clock 0.1 s of scheduling jitter), nothing raises,
the run writes its submission, and a wedged engine leaks at most `max_restarts` threads. It also judges the answers
that survive: each problem's votes are samples the engine really gave (each once), its answer is their leader, and
(virtual clock) every problem before the first harmful fault answers exactly what the same run without faults does.
The command prints runs, faults by kind and the worst overrun; tests/test_faults.py runs the same drills in
`make test`. A virtual drill without hangs is reproducible (the same seed injects the same faults and gives the same
answers). With hangs it is in practice but not by construction: a hang moves the virtual clock from its own thread
while others run, and the clock waits for a slow waiter only 5 s of real time.

A hang under a virtual clock moves the clock forward in small steps (as real time passes during a real hang), so the
server's guard sees the deadline pass exactly as it would live.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python inference/fault_injection.py` from anywhere

import polars as pl  # noqa: E402

from inference.clock import RealClock, VirtualClock  # noqa: E402
from inference.engines.base import Engine, EngineError, EngineProgress, Sample, SampleRequest  # noqa: E402

KINDS = ("die", "hang", "slow_restart", "hang_restart", "slow_start", "raise", "garbage", "slow_abort",
         "raise_after_restart", "fail_start", "bytes_text", "huge_text", "duplicate", "slow_clock")
HARMLESS = ("slow_abort", "duplicate", "slow_clock", "slow_start")  # must not cost any answer
HUGE_CHARS = 150_000_000
HANGABLE = ("start", "submit", "poll", "progress", "abort")
OTHER_ERRORS = (RuntimeError, KeyError, ValueError, OSError, AttributeError, ZeroDivisionError)


def garbage_text(rng: random.Random) -> str:
    """Text a broken engine or a degenerate sample produces."""
    return rng.choice([
        "",
        "{" * 50_000 + "}" * 50_000,
        "\\boxed{" * 20_000,
        "}\\boxed{{}}{" * 10_000,
        "\x00\ufffd\u202e\U0001f600 ∑∫ \\boxed{٤٢}",
        "<think>" + "\\boxed{7}" * 3 + "</think>" * 2 + "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
    ])


@dataclass
class FaultPlan:
    """How often and how hard to fail. Seconds are on the engine's clock."""

    rate: float = 0.08  # probability that a given engine call injects a fault
    kinds: tuple[str, ...] = KINDS
    hang_seconds: tuple[float, float] = (2.0, 40.0)
    restart_seconds: tuple[float, float] = (1.0, 15.0)
    start_seconds: tuple[float, float] = (0.0, 8.0)
    abort_seconds: tuple[float, float] = (2.0, 3.0)  # a slow abort
    huge_chars: int = HUGE_CHARS  # a huge text's length (what it costs shows on a real clock only)


class SlowClock:
    """An engine clock that runs at `rate` × the real one (the run must not read time from it)."""

    def __init__(self, inner, rate: float = 0.1) -> None:
        self.inner, self.rate, self.virtual = inner, rate, inner.virtual

    def now(self) -> float:
        return self.inner.now() * self.rate

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds / self.rate)


class FaultyEngine(Engine):
    """An engine that fails at seeded random points (see the module docstring). Counts what it injected."""

    name = "faulty"

    def __init__(self, inner: Engine, plan: FaultPlan | None = None, seed: int = 0) -> None:
        super().__init__(inner.clock)
        self.inner = inner
        self.plan = plan or FaultPlan()
        self.rng = random.Random(seed)
        self.injected: Counter = Counter()
        self.real_clock = inner.clock  # what the faults wait on; `clock` may be a slow one
        self.problem: str | None = None  # the problem last submitted
        self.faulted: list[tuple[str | None, str]] = []  # (problem, kind) of every injected fault, in order
        self.garbled: set[tuple[str, int]] = set()  # samples whose text the engine broke: they may vote anything
        self._redeliver: list[Sample] = []  # finished samples to hand back once more
        if "slow_clock" in self.plan.kinds and self.rng.random() < self.plan.rate:
            self.clock = SlowClock(inner.clock)
            self._count("slow_clock")
        self.dead = False
        self._release = threading.Event()  # a restart or shutdown frees calls hung in the old engine
        self._lock = threading.Lock()
        self._closed = False

    # -- the faults -------------------------------------------------------------------------------------------------
    def _count(self, kind: str) -> None:
        self.injected[kind] += 1
        self.faulted.append((self.problem, kind))

    def _roll(self, method: str) -> str | None:
        with self._lock:
            if self._closed or self.rng.random() >= self.plan.rate:
                return None
            kinds = [k for k in self.plan.kinds if k in ("die", "hang", "raise", "garbage")]
            kinds = [k for k in kinds if not (k == "garbage" and method != "poll")]
            if method in ("start", "progress", "abort"):
                kinds = [k for k in kinds if k != "die"]
            kind = self.rng.choice(kinds) if kinds else None
            if kind == "hang" and method not in HANGABLE:
                return None
            if kind:
                self._count(f"{kind}:{method}" if kind == "hang" else kind)
            return kind

    def _wait(self, seconds: float, release: threading.Event | None) -> None:
        """Block like a hung call: real time on a real clock; small clock steps on a virtual one."""
        clock = self.real_clock
        if not clock.virtual:
            if release is not None:
                release.wait(seconds)
            else:
                time.sleep(seconds)
            return
        end = clock.now() + seconds
        while clock.now() < end and not (release is not None and release.is_set()) and not self._closed:
            clock.advance_to(min(end, clock.now() + 0.1))  # stops at every waiter's deadline
            time.sleep(0.0002)

    def _hang(self) -> None:
        self._wait(self.rng.uniform(*self.plan.hang_seconds), self._release)

    def _fail(self, method: str) -> None:
        """Maybe inject a fault into this call: raise, hang, or die."""
        if self.dead:
            raise EngineError("injected: the engine core is dead")
        kind = self._roll(method)
        if kind == "die":
            self.dead = True
            raise EngineError(f"injected: the engine core died in {method}")
        if kind == "raise":
            raise self.rng.choice(OTHER_ERRORS)(f"injected: {method} failed")
        if kind == "hang":
            self._hang()
        return None

    def _garbled(self, samples: list[Sample]) -> list[Sample]:
        """Break a finished sample's text now and then (garbage, bytes, 150 MB), or hand one back twice."""
        samples = self._redeliver + samples
        self._redeliver = []
        kinds = [k for k in ("garbage", "bytes_text", "huge_text", "duplicate") if k in self.plan.kinds]
        if samples and kinds and self.rng.random() < self.plan.rate:
            kind = self.rng.choice(kinds)
            with self._lock:
                self._count(kind)
            s = self.rng.choice(samples)
            if kind == "duplicate":  # once more in this poll, and again in the next one
                samples.append(dataclasses.replace(s))
                self._redeliver.append(dataclasses.replace(s))
                return samples
            self.garbled.add((s.problem_id, s.sample))
            s.text = {"garbage": lambda: garbage_text(self.rng), "bytes_text": lambda: s.text.encode(),
                      "huge_text": lambda: "\\" * self.plan.huge_chars}[kind]()
        return samples

    # -- the engine interface -----------------------------------------------------------------------------------------
    def start(self) -> None:
        if "slow_start" in self.plan.kinds and self.rng.random() < 0.5:
            self._count("slow_start")
            self._wait(self.rng.uniform(*self.plan.start_seconds), None)
        if "fail_start" in self.plan.kinds and self.rng.random() < 2 * self.plan.rate:
            self._count("fail_start")
            raise EngineError("injected: the engine failed to start (transient)")
        self._fail("start")
        self.inner.start()

    def submit(self, requests: Sequence[SampleRequest]) -> None:
        if requests:
            self.problem = requests[0].problem_id
        if "raise_after_restart" in self.plan.kinds and self.rng.random() < self.plan.rate / 2:
            # Hung until a restart frees it (or for a hang's time), then raises as a call into a killed engine does.
            self._count("raise_after_restart")
            self._wait(self.rng.uniform(*self.plan.hang_seconds), self._release)
            raise EngineError("injected: submit into an engine restarted under it")
        self._fail("submit")
        self.inner.submit(requests)

    def poll(self, timeout: float) -> list[Sample]:
        self._fail("poll")
        return self._garbled(self.inner.poll(timeout))

    def progress(self) -> EngineProgress:
        self._fail("progress")
        return self.inner.progress()

    def abort(self, problem_id: str) -> list[Sample]:
        if "slow_abort" in self.plan.kinds and self.rng.random() < 2 * self.plan.rate:
            self._count("slow_abort")
            self._wait(self.rng.uniform(*self.plan.abort_seconds), None)
        self._fail("abort")
        return self._garbled(self.inner.abort(problem_id))

    def restart(self) -> None:
        old, self._release = self._release, threading.Event()
        old.set()  # killing the old engine frees the calls hung in it
        kinds = self.plan.kinds
        if "hang_restart" in kinds and self.rng.random() < self.plan.rate:
            self._count("hang_restart")
            self._wait(self.rng.uniform(*self.plan.hang_seconds), None)
        if "slow_restart" in kinds and self.rng.random() < 0.5:
            self._count("slow_restart")
            self._wait(self.rng.uniform(*self.plan.restart_seconds), None)
        self._redeliver = []
        if "fail_start" in kinds and self.rng.random() < self.plan.rate:  # the restart's own start fails
            self._count("fail_start")
            self.inner.shutdown()
            self.dead = True
            raise EngineError("injected: the restarted engine failed to start")
        self.inner.restart()
        self.dead = False

    def shutdown(self) -> None:
        self._release.set()
        self.inner.shutdown()

    def close(self) -> None:
        """End every injected hang (drills call this after the run so no thread outlives it)."""
        self._closed = True
        self._release.set()


# -- a drill: one competition run through the local gateway -------------------------------------------------------------

PROBLEM_TEXTS = [
    "What is 2 + 3?",
    "Compute 7 * 6.",
    "x" * 100_000,  # 10⁵ characters
    "Ünïcödé ∑_{k=1}^{n} k² — \u202e\u200b \U0001f600 \ud7ff; what is 40 + 2?",
    "Find the remainder when $2^{10}$ is divided by $1000$.",
    "\\boxed{" * 500,
]


def drill_traces(rng: random.Random, ids: list[str], samples: int, seconds: tuple[float, float]) -> list[dict]:
    """Recorded samples for the drill's problems: mostly agreeing answers, some wrong, some never boxed."""
    records = []
    for pid in ids:
        right = rng.randrange(1000)
        for i in range(samples):
            roll = rng.random()
            answer = right if roll < 0.6 else rng.randrange(1000)
            text = (f"<think>\nwork\n\\boxed{{{answer}}}\n</think>\nThe answer is \\boxed{{{answer}}}."
                    if roll < 0.9 else "I am not sure.")
            records.append({"problem_id": pid, "sample": i, "text": text, "tokens": rng.randrange(50, 400),
                            "seconds": round(rng.uniform(*seconds), 3)})
    return records


def judge(results: dict, traces: list[dict], garbled: set, spec) -> list[str]:
    """What is wrong with the answers that survived: votes the engine never gave (or gave once and were counted
    twice), an answer that is not the leader of its votes."""
    from inference.answers import extract_answer

    given: dict[str, Counter] = {}
    for t in traces:
        given.setdefault(t["problem_id"], Counter())[extract_answer(t["text"], spec)] += 1
    wrong = []
    for pid, r in results.items():
        spare = sum(1 for g in garbled if g[0] == pid)  # a broken text may vote anything
        extra = sum(max(0, n - given.get(pid, Counter())[a]) for a, n in r.votes.items())
        if extra > spare:
            wrong.append(f"{pid}: votes {r.votes} are not the engine's samples")
        if r.votes and r.answer not in [a for a, n in r.votes.items() if n == max(r.votes.values())]:
            wrong.append(f"{pid}: answered {r.answer}, not the leader of {r.votes}")
    return wrong


def drill(seed: int, clock: str = "virtual", problems: int = 5, plan: FaultPlan | None = None,
          total_seconds: float | None = None, grace_seconds: float = 0.4, workdir: str | Path | None = None,
          twin: bool = True) -> dict:
    """One seeded competition run with injected faults. Returns its record; `ok` says whether every check held.
    `twin` (virtual clock): also run it without faults and compare the answers before the first harmful fault."""
    from inference.config import load_settings
    from inference.engines.replay import ReplayEngine
    from inference.local_gateway import GatewayError, run_gateway
    from inference.server import Predictor

    rng = random.Random(seed)
    virtual = clock == "virtual"
    if total_seconds is None:
        total_seconds = 60.0 * problems if virtual else 1.5 * problems
    if plan is None:
        scale = 1.0 if virtual else 0.05  # a real-clock drill must stay short
        plan = FaultPlan(hang_seconds=(2.0 * scale, 40.0 * scale), restart_seconds=(1.0 * scale, 15.0 * scale),
                         start_seconds=(0.0, 8.0 * scale), abort_seconds=(2.0, 3.0) if virtual else (0.5, 0.75),
                         huge_chars=HUGE_CHARS if not virtual else 5_000_000)
    sample_seconds = (1.0, 40.0) if virtual else (0.05, 1.5)
    ids = [f"p{i}" for i in range(problems)]
    texts = [PROBLEM_TEXTS[rng.randrange(len(PROBLEM_TEXTS))] for _ in ids]
    the_clock = VirtualClock() if virtual else RealClock()
    samples = 4
    traces = drill_traces(rng, ids, samples, sample_seconds)
    engine = FaultyEngine(ReplayEngine(traces, clock=the_clock), plan, seed=seed)
    settings = load_settings(None, {
        "sampling.samples": samples, "sampling.stop_rule": "think", "voting.kind": "k_of_n", "voting.k": 3,
        "prompts.max_problem_chars": 200_000, "watchdog.max_restarts": 2,
        "watchdog.poll_seconds": 1.0 if virtual else 0.05, "watchdog.stall_seconds": 30.0 if virtual else 1.0,
        "watchdog.answer_grace_seconds": grace_seconds, "time.kind": "share", "time.stretch": 1.5,  # the shipped policy
    }, engine="replay", traces="(in memory)", virtual_clock=virtual)
    # The server keeps a margin before the gateway's own limit, as a notebook does with the competition's.
    predictor = Predictor(settings, engine=engine, total_seconds=total_seconds - 1.0, problems=problems,
                          clock=the_clock, isolate=True)
    frame = pl.DataFrame({"id": ids, "problem": texts})
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fault-drill-"))
    submission = workdir / f"submission-{seed}.parquet"
    record = {"seed": seed, "clock": clock, "problems": problems, "error": None}
    threads_before = threading.active_count()
    try:
        def predict(id_, problem):  # Kaggle's gateway wants a plain function named predict
            return predictor.predict(id_, problem)

        run_gateway(predict, frame, settings.competition, seed=seed,
                    submission_path=submission, budget_seconds=total_seconds, clock=the_clock, show=None)
    except (GatewayError, Exception) as e:  # noqa: BLE001 - a drill reports, the caller asserts
        record["error"] = f"{type(e).__name__}: {e}"
    leaked = max(0, threading.active_count() - threads_before)
    engine.close()
    overruns = [answered - deadline for deadline, answered in predictor.deadlines.values()]
    order = list(predictor.results)  # the gateway's serving order
    harmful = [order.index(pid) if pid in order else 0 for pid, kind in engine.faulted if kind not in HARMLESS]
    wrong = judge(predictor.results, traces, engine.garbled, settings.competition.answer)
    record.update(
        injected=dict(engine.injected),
        worst_overrun=max(overruns, default=0.0),
        answered=len(predictor.results),
        answers={pid: r.answer for pid, r in predictor.results.items()},
        stop_reasons=dict(Counter(r.stop_reason for r in predictor.results.values())),
        leaked_threads=leaked,
        submission_rows=pl.read_parquet(submission).height if submission.exists() else 0,
        first_harmful=min(harmful, default=len(order)),
    )
    if twin and virtual and engine.faulted:
        clean = drill(seed, clock, problems, FaultPlan(rate=0.0, kinds=()), total_seconds, grace_seconds, workdir,
                      twin=False)
        for pid in order[: record["first_harmful"]]:
            if record["answers"][pid] != clean["answers"].get(pid):
                wrong.append(f"{pid}: answered {record['answers'][pid]}, without faults {clean['answers'].get(pid)}")
    record["wrong"] = wrong
    record["ok"] = (record["error"] is None and record["answered"] == record["submission_rows"] == problems
                    and record["worst_overrun"] <= 0.5 and leaked <= settings.watchdog.max_restarts + 1
                    and not wrong)
    return record


def summarize(records: list[dict]) -> dict:
    injected: Counter = Counter()
    reasons: Counter = Counter()
    for r in records:
        injected.update(r["injected"])
        reasons.update(r["stop_reasons"])
    return {
        "runs": len(records),
        "failed": [r["seed"] for r in records if not r["ok"]],
        "faults": dict(sorted(injected.items())),
        "faults_total": sum(injected.values()),
        "stop_reasons": dict(reasons.most_common()),
        "worst_overrun_seconds": round(max((r["worst_overrun"] for r in records), default=0.0), 3),
        "most_leaked_threads": max((r["leaked_threads"] for r in records), default=0),
        "wrong": [w for r in records for w in r["wrong"]],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--clock", choices=("virtual", "real"), default="virtual")
    ap.add_argument("--problems", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="first seed; run i uses seed + i")
    args = ap.parse_args(argv)
    import logging

    logging.disable(logging.CRITICAL)  # the drill's faults would flood the terminal with the server's error logs
    t0 = time.monotonic()
    records = []
    with tempfile.TemporaryDirectory(prefix="fault-drill-") as tmp:
        for i in range(args.runs):
            records.append(drill(args.seed + i, args.clock, args.problems, workdir=tmp))
            if (i + 1) % max(1, args.runs // 10) == 0:
                print(f"  {i + 1}/{args.runs} runs, {sum(not r['ok'] for r in records)} failed", flush=True)
    s = summarize(records)
    print(f"runs: {s['runs']} ({args.clock} clock, {args.problems} problems each) in {time.monotonic() - t0:.0f}s")
    print(f"failed runs: {len(s['failed'])}" + (f" (seeds {s['failed'][:10]})" if s["failed"] else ""))
    print(f"faults injected: {s['faults_total']}")
    for kind, n in s["faults"].items():
        print(f"  {kind:<16} {n}")
    print("stop reasons: " + ", ".join(f"{k} {v}" for k, v in s["stop_reasons"].items()))
    print(f"worst overrun past a deadline: {s['worst_overrun_seconds']:.3f}s (limit 0.5 s)")
    print(f"wrong answers: {len(s['wrong'])}" + (f" ({s['wrong'][:3]})" if s["wrong"] else ""))
    print(f"most threads left behind by one run: {s['most_leaked_threads']}")
    return 0 if not s["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
