"""Replays recorded samples from a traces JSONL file, one line per sample:

    {"problem_id": "abc", "sample": 0, "text": "...", "tokens": 812, "seconds": 41.5, ...extra fields}

A request for (problem_id, sample) gets that recorded sample. The request's stop rule and max_tokens are applied to
the recorded text, so traces recorded without early stopping (inference/evaluate.py records full samples) replay
what a stopping policy would have seen; a cut sample's tokens and seconds shrink in proportion to the text kept.
Problems or sample indices that are not in the file never produce a sample: the policy must then fall back, as it
would on a model that never answers.

How long a sample takes comes from one of two timings:
- recorded (the default): its recorded `seconds` from the moment it is submitted;
- a speed profile (`speed=`, virtual clock only; inference/simulate.py's hardware models): the running samples
  share the profile's aggregate tokens/s equally (continuous batching) and speed up when others finish or are
  aborted.

With a VirtualClock, waiting advances simulated time instead of sleeping, so a 5-hour run replays in seconds.
Cutting a 40 kB recorded text (finding its stop point) is the expensive part of a replay: pass a shared
`ReplayCuts` and every text is cut once per (stop rule, max_tokens), however many engines replay it.
"""

from __future__ import annotations

import heapq
import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

from inference.answers import find_stop
from inference.clock import RealClock, VirtualClock
from inference.engines.base import Engine, EngineProgress, Sample, SampleRequest

REQUIRED = {"problem_id": str, "sample": int, "text": str, "tokens": int, "seconds": (int, float)}
NOT_EXTRA = set(REQUIRED) | {"finish_reason", "variant", "seed"}  # a replayed sample uses the request's own values


def load_traces(source: str | Path | Iterable[dict]) -> dict[tuple[str, int], dict]:
    """Index traces by (problem_id, sample), checking every record; errors name the file, line and field."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"traces: no such file {path}")
        records = []
        with path.open() as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    else:
        records = [(f"traces[{i}]", r) for i, r in enumerate(source)]
    index: dict[tuple[str, int], dict] = {}
    for where, r in records:
        if not isinstance(r, dict):
            raise ValueError(f"{where}: expected a JSON object")
        for key, typ in REQUIRED.items():
            if key not in r:
                raise ValueError(f"{where}: missing field {key!r}")
            if not isinstance(r[key], typ) or isinstance(r[key], bool):
                raise ValueError(f"{where}: field {key!r} has the wrong type ({type(r[key]).__name__})")
        if r["tokens"] < 0 or r["seconds"] < 0:
            raise ValueError(f"{where}: tokens and seconds must be ≥ 0")
        index[(str(r["problem_id"]), int(r["sample"]))] = r
    return index


@dataclass(frozen=True)
class Cut:
    """What a request produces from a recorded sample: its text after the stop rule and max_tokens."""

    text: str
    tokens: int
    finish_reason: str
    fraction: float  # of the recorded text (and so of its recorded seconds) kept
    extra: dict  # the record's other fields, passed through to the Sample


def cut_sample(trace: dict, stop_rule: str, max_tokens: int) -> Cut:
    """Apply a stop rule and max_tokens to one recorded sample."""
    text, tokens = trace["text"], trace["tokens"]
    reason = trace.get("finish_reason", "stop")
    fraction = 1.0
    stop = find_stop(text, stop_rule)
    if stop is not None and stop < len(text):
        fraction = stop / max(1, len(text))
        text, tokens, reason = text[:stop], max(1, round(tokens * fraction)), "answer"
    elif stop is not None:
        reason = "answer"
    if tokens > max_tokens:
        keep = max_tokens / tokens
        fraction *= keep
        text, tokens, reason = text[: int(len(text) * keep)], max_tokens, "length"
    extra = {k: v for k, v in trace.items() if k not in NOT_EXTRA}
    return Cut(text, tokens, reason, fraction, extra)


class ReplayCuts:
    """Cuts shared by many replay engines over the same recorded samples: each is computed once per
    (recorded sample, stop rule, max_tokens). Keyed by the record object itself, which the cache keeps alive."""

    def __init__(self) -> None:
        self._cuts: dict[tuple[int, str, int], tuple[dict, Cut]] = {}

    def get(self, trace: dict, stop_rule: str, max_tokens: int) -> Cut:
        key = (id(trace), stop_rule, max_tokens)
        hit = self._cuts.get(key)
        if hit is None:
            hit = self._cuts[key] = (trace, cut_sample(trace, stop_rule, max_tokens))
        return hit[1]

    def __len__(self) -> int:
        return len(self._cuts)


class SpeedModel(Protocol):
    """What the replay engine needs of a hardware speed profile (inference.simulate.SpeedProfile)."""

    load_seconds: float

    def per_sample(self, running: int) -> float:
        """Tokens/s of each of `running` samples sharing the engine."""


@dataclass
class _Running:
    request: SampleRequest
    cut: Cut
    start: float
    end: float = math.inf  # recorded timing: when it finishes
    done: float = 0.0  # speed-profile timing: tokens generated so far


class ReplayEngine(Engine):
    name = "replay"

    def __init__(
        self,
        traces: str | Path | Iterable[dict] | dict[tuple[str, int], dict],
        clock: RealClock | VirtualClock | None = None,
        speed: SpeedModel | None = None,
        cuts: ReplayCuts | None = None,
    ) -> None:
        """`traces`: a JSONL path or records (checked by load_traces), or an index load_traces already returned.
        `speed`: time samples by this profile instead of their recorded seconds (virtual clock only).
        `cuts`: a cache shared with other engines on the same records (default: this engine's own)."""
        super().__init__(clock)
        if speed is not None and not getattr(self.clock, "virtual", False):
            raise ValueError("replay: a speed profile needs a VirtualClock (--virtual-clock)")
        self.traces = traces if isinstance(traces, dict) else load_traces(traces)
        self.speed = speed
        self.cuts = cuts if cuts is not None else ReplayCuts()
        self._running: dict[tuple[str, int], _Running] = {}
        self._finished: list[Sample] = []  # speed-profile timing: finished, not yet polled
        self._finish_heap: list[tuple[float, int, tuple[str, int]]] = []  # recorded timing: (end, order, key)
        self._order = 0
        self._t = self.clock.now()  # speed-profile timing: the time up to which progress is accounted
        self._loaded = False
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.speed is not None and not self._loaded:  # the model load the profile says the first call pays for
            self.clock.sleep(self.speed.load_seconds)
            self._loaded = True
        self._t = max(self._t, self.clock.now())

    def submit(self, requests: Sequence[SampleRequest]) -> None:
        now = self.clock.now()
        with self._lock:
            self._advance(now)
            for req in requests:
                trace = self.traces.get((req.problem_id, req.sample))
                if trace is None:
                    continue  # not recorded: this sample never finishes
                cut = self.cuts.get(trace, req.stop_rule, req.max_tokens)
                key = (req.problem_id, req.sample)
                if self.speed is None:
                    end = now + float(trace["seconds"]) * cut.fraction
                    self._running[key] = _Running(req, cut, now, end=end)
                    self._order += 1
                    heapq.heappush(self._finish_heap, (end, self._order, key))
                else:
                    self._running[key] = _Running(req, cut, self._t)

    # -- timing -------------------------------------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        """Finish, in order, every sample due by `now` (into self._finished)."""
        if self.speed is None:
            while self._finish_heap and self._finish_heap[0][0] <= now:
                _, _, key = heapq.heappop(self._finish_heap)
                r = self._running.pop(key, None)
                if r is not None:  # else aborted
                    self._finished.append(self._sample(r, r.cut.text, r.cut.tokens, r.end - r.start,
                                                       r.cut.finish_reason))
            return
        running = self._running
        while running:  # re-share the throughput each time the batch shrinks
            rate = self.speed.per_sample(len(running))
            first, left = None, math.inf
            for r in running.values():
                if max(1, r.cut.tokens) - r.done < left:
                    first, left = r, max(1, r.cut.tokens) - r.done
            nxt = self._t + max(0.0, left) / rate
            step = rate * (min(now, nxt) - self._t)
            for r in running.values():
                r.done += step
            if nxt > now:
                break
            self._t = nxt
            first.done = max(1, first.cut.tokens)  # exact, whatever the rounding
            for key in [k for k, r in running.items() if max(1, r.cut.tokens) - r.done <= 1e-9 * r.cut.tokens]:
                r = running.pop(key)
                self._finished.append(self._sample(r, r.cut.text, r.cut.tokens, self._t - r.start,
                                                   r.cut.finish_reason))
        self._t = max(self._t, now)

    def _next_finish(self) -> float | None:
        if self.speed is None:
            while self._finish_heap and self._finish_heap[0][2] not in self._running:
                heapq.heappop(self._finish_heap)
            return self._finish_heap[0][0] if self._finish_heap else None
        if not self._running:
            return None
        left = min(max(1, r.cut.tokens) - r.done for r in self._running.values())
        return self._t + max(0.0, left) / self.speed.per_sample(len(self._running))

    def _fraction_done(self, r: _Running, now: float) -> float:
        if self.speed is None:
            return min(1.0, max(0.0, (now - r.start) / max(r.end - r.start, 1e-9)))
        return min(1.0, r.done / max(1, r.cut.tokens))

    def _sample(self, r: _Running, text: str, tokens: int, seconds: float, reason: str) -> Sample:
        return Sample(r.request.problem_id, r.request.sample, text, tokens, seconds, reason,
                      variant=r.request.variant, seed=r.request.seed, extra=dict(r.cut.extra))

    def _partial(self, r: _Running, now: float) -> Sample:
        frac = self._fraction_done(r, now)
        return self._sample(r, r.cut.text[: int(len(r.cut.text) * frac)], int(r.cut.tokens * frac), now - r.start,
                            "aborted")

    # -- the Engine interface ------------------------------------------------------------------------------------
    def poll(self, timeout: float) -> list[Sample]:
        until = self.clock.now() + max(0.0, timeout)
        while True:
            with self._lock:
                self._advance(self.clock.now())
                done, self._finished = self._finished, []
                nxt = self._next_finish()
            if done or self.clock.now() >= until:
                return done
            target = until if nxt is None else min(until, nxt)
            if isinstance(self.clock, VirtualClock):
                self.clock.advance_to(target)
            else:
                time.sleep(max(0.0, min(target - self.clock.now(), 0.05)))

    def abort(self, problem_id: str) -> list[Sample]:
        now = self.clock.now()
        with self._lock:
            self._advance(now)
            keys = [k for k in self._running if k[0] == problem_id]
            return [self._partial(self._running.pop(k), now) for k in keys]

    def progress(self) -> EngineProgress:
        now = self.clock.now()
        with self._lock:
            tokens = sum(int(r.cut.tokens * self._fraction_done(r, now)) for r in self._running.values())
            running = len(self._running)
        # Recorded samples stream steadily, so a replay never looks stalled.
        return EngineProgress(running=running, tokens_in_flight=tokens, seconds_since_token=0.0)

    def shutdown(self) -> None:
        with self._lock:
            self._running.clear()
            self._finished.clear()
            self._finish_heap.clear()
