"""Replays recorded samples from a traces JSONL file, one line per sample:

    {"problem_id": "abc", "sample": 0, "text": "...", "tokens": 812, "seconds": 41.5, ...extra fields}

A request for (problem_id, sample) gets that recorded sample, streamed over its recorded `seconds` from the moment
it is submitted. The request's stop rule and max_tokens are applied to the recorded text, so traces recorded
without early stopping (inference/evaluate.py records full samples) replay what a stopping policy would have seen;
a cut sample's tokens and seconds shrink in proportion to the text kept. Problems or sample indices that are not in
the file never produce a sample: the policy must then fall back, as it would on a model that never answers.

Tool-using samples (inference/tools.py) carry their `turns`: cut short, such a sample keeps the turns, tokens and
tool seconds up to the cut, and its seconds follow the turns' timeline (a tool call's seconds pass whole).

With a VirtualClock, waiting advances simulated time instead of sleeping, so a 5-hour run replays in seconds.
The simulator (inference/simulate.py) replaces recorded seconds with a speed model of other hardware in its own engine.
"""

from __future__ import annotations

import heapq
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from inference.answers import find_stop
from inference.clock import RealClock, VirtualClock
from inference.engines.base import Engine, EngineProgress, Sample, SampleRequest
from inference.tools import cut_tool_trace

REQUIRED = {"problem_id": str, "sample": int, "text": str, "tokens": int, "seconds": (int, float)}


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


@dataclass
class _Pending:
    request: SampleRequest
    trace: dict
    text: str  # what the request will produce (after stop rule / max_tokens)
    tokens: int
    finish_reason: str
    start: float
    end: float


def _cut(trace: dict, request: SampleRequest) -> tuple[str, int, str, float]:
    """Text, tokens, finish reason and fraction of the recorded duration this request would produce."""
    text, tokens = trace["text"], trace["tokens"]
    reason = trace.get("finish_reason", "stop")
    fraction = 1.0
    stop = find_stop(text, request.stop_rule)
    if stop is not None and stop < len(text):
        fraction = stop / max(1, len(text))
        text, tokens, reason = text[:stop], max(1, round(tokens * fraction)), "answer"
    elif stop is not None:
        reason = "answer"
    if tokens > request.max_tokens:
        keep = request.max_tokens / tokens
        fraction *= keep
        text, tokens, reason = text[: int(len(text) * keep)], request.max_tokens, "length"
    return text, tokens, reason, fraction


class ReplayEngine(Engine):
    name = "replay"

    def __init__(
        self,
        traces: str | Path | Iterable[dict],
        clock: RealClock | VirtualClock | None = None,
    ) -> None:
        """A sample takes its recorded seconds, scaled by the fraction of its text kept."""
        super().__init__(clock)
        self.traces = load_traces(traces)
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._finish_heap: list[tuple[float, int, tuple[str, int]]] = []
        self._order = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        pass

    def submit(self, requests: Sequence[SampleRequest]) -> None:
        now = self.clock.now()
        with self._lock:
            for req in requests:
                trace = self.traces.get((req.problem_id, req.sample))
                if trace is None:
                    continue  # not recorded: this sample never finishes
                text, tokens, reason, fraction = _cut(trace, req)
                seconds = float(trace["seconds"]) * fraction
                if trace.get("turns") and len(text) < len(trace["text"]):
                    tokens, seconds, _ = cut_tool_trace(trace, len(text))
                key = (req.problem_id, req.sample)
                self._pending[key] = _Pending(req, trace, text, tokens, reason, now, now + seconds)
                self._order += 1
                heapq.heappush(self._finish_heap, (now + seconds, self._order, key))

    def _pop_due(self, now: float) -> list[Sample]:
        done = []
        while self._finish_heap and self._finish_heap[0][0] <= now:
            _, _, key = heapq.heappop(self._finish_heap)
            p = self._pending.pop(key, None)
            if p is None:
                continue  # aborted
            done.append(self._sample(p, p.text, p.tokens, p.end - p.start, p.finish_reason))
        return done

    def _sample(self, p: _Pending, text: str, tokens: int, seconds: float, reason: str) -> Sample:
        extra = {k: v for k, v in p.trace.items() if k not in REQUIRED and k not in ("finish_reason", "variant", "seed")}
        if p.trace.get("turns") and len(text) < len(p.trace["text"]):
            extra.update(cut_tool_trace(p.trace, len(text))[2])
        return Sample(p.request.problem_id, p.request.sample, text, tokens, seconds, reason,
                      variant=p.request.variant, seed=p.request.seed, extra=extra)

    def _next_finish(self) -> float | None:
        while self._finish_heap and self._finish_heap[0][2] not in self._pending:
            heapq.heappop(self._finish_heap)
        return self._finish_heap[0][0] if self._finish_heap else None

    def poll(self, timeout: float) -> list[Sample]:
        until = self.clock.now() + max(0.0, timeout)
        while True:
            with self._lock:
                done = self._pop_due(self.clock.now())
                nxt = self._next_finish()
            if done or self.clock.now() >= until:
                return done
            target = until if nxt is None else min(until, nxt)
            if isinstance(self.clock, VirtualClock):
                self.clock.advance_to(target)
            else:
                time.sleep(max(0.0, min(target - self.clock.now(), 0.05)))

    def _partial(self, p: _Pending, now: float) -> Sample:
        span = max(p.end - p.start, 1e-9)
        frac = min(1.0, max(0.0, (now - p.start) / span))
        return self._sample(p, p.text[: int(len(p.text) * frac)], int(p.tokens * frac), now - p.start, "aborted")

    def abort(self, problem_id: str) -> list[Sample]:
        """Unfinished samples as "aborted" partials; samples already due but not yet polled keep their own finish
        reason (they finished, so they vote)."""
        now = self.clock.now()
        with self._lock:
            keys = [k for k in self._pending if k[0] == problem_id]
            out = []
            for k in keys:
                p = self._pending.pop(k)
                done = p.end <= now
                out.append(self._sample(p, p.text, p.tokens, p.end - p.start, p.finish_reason) if done
                           else self._partial(p, now))
            return out

    def progress(self) -> EngineProgress:
        now = self.clock.now()
        with self._lock:
            partial = [self._partial(p, now) for p in self._pending.values()]
        # Recorded samples stream steadily, so a replay never looks stalled.
        return EngineProgress(running=len(partial), tokens_in_flight=sum(s.tokens for s in partial),
                              seconds_since_token=0.0)

    def shutdown(self) -> None:
        with self._lock:
            self._pending.clear()
            self._finish_heap.clear()
