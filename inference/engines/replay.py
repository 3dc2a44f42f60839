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

Tool-using samples (inference/tools.py) carry their `turns`: cut short, such a sample keeps the turns, tokens and
tool seconds up to the cut, and its seconds follow the turns' timeline (a tool call's seconds pass whole).

With a VirtualClock, waiting advances simulated time instead of sleeping, so a 5-hour run replays in seconds.
Cutting a 40 kB recorded text (finding its stop point) is the expensive part of a replay: pass a shared
`ReplayCuts` and every text is cut once per (stop rule, max_tokens), however many engines replay it.
"""

from __future__ import annotations

import heapq
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

from inference.answers import (
    _BOX_RE,
    _TAIL_CHARS,
    ANSWER_SCAN_CHARS,
    AnswerSpec,
    _holds_no_answer,
    _matching_braces,
    _unboxed_answer,
    extract_answer,
    extract_final_answer,
    find_stop,
    parse_integer,
)
from inference.clock import RealClock, VirtualClock
from inference.engines.base import Engine, EngineProgress, Sample, SampleRequest
from inference.entropy import ConfidenceGate
from inference.tools import cut_tool_trace

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
    fraction: float  # of the recorded text kept
    seconds: float  # of the recorded seconds it takes (the fraction of them, or a tool-using sample's timeline)
    extra: dict  # the record's other fields, passed through to the Sample
    trace: dict  # the record it was cut from


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
    seconds = float(trace["seconds"]) * fraction
    if trace.get("turns") and len(text) < len(trace["text"]):
        tokens, seconds, fields = cut_tool_trace(trace, len(text))
        extra.update(fields)
    return Cut(text, tokens, reason, fraction, seconds, extra, trace)


_THINK_END = "</think>"
_RUN_RE = re.compile(r"[^\s$]+")


class PrefixAnswers:
    """extract_answer(text[:n]) for any n from one parse of `text`: the vote (or rescued answer) of a replayed
    sample aborted part-way, without parsing each 40 kB prefix again (that was most of a simulated run's time).

    A prefix holds the boxes of the whole text that close inside it (brace matching is a left-to-right stack, so a
    pair closed before n is paired the same in the prefix, and a brace still open at n is unclosed there), a
    `\\boxed 5` whose argument runs past n cut at n, and the first `</think>` if it ends inside it; the unboxed
    answer reads only the prefix's last characters. A test checks it against extract_final_answer on every prefix."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.close = text.find(_THINK_END)
        braces: dict[int, int] | None = None
        # (start, end of the \boxed/\fbox literal, end of the match, kind, end of the argument, argument, empty)
        # kind 0: a {…} argument closed at `end` - 1; 1: a `\boxed 5` run ending at `end`; 2: never a box.
        self.boxes: list[tuple[int, int, int, int, int, str, bool]] = []
        for m in _BOX_RE.finditer(text):
            start, i = m.start(), m.end()
            boxed = m.group(0).startswith("\\boxed")
            literal = start + (len("\\boxed") if boxed else len("\\fbox"))
            kind, end, content = 2, i, ""
            if i < len(text) and text[i] == "{":
                if braces is None:
                    braces = _matching_braces(text)
                j = braces.get(i)
                if j is not None:
                    kind, end, content = 0, j + 1, text[i + 1: j]
            elif boxed and i > start + len("\\boxed"):
                run = _RUN_RE.match(text, i)
                if run:
                    kind, end, content = 1, run.end(), run.group(0)
            self.boxes.append((start, literal, i, kind, end, content, kind != 2 and _holds_no_answer(content)))

    def answer(self, n: int, spec: AnswerSpec | None) -> int | None:
        """extract_final_answer(self.text[:n], spec)."""
        text = self.text
        n = max(0, min(n, len(text)))
        if n > ANSWER_SCAN_CHARS:
            return extract_final_answer(text[:n], spec)
        if n == 0:
            return None
        boxes = []
        for start, literal, i, kind, end, content, empty in self.boxes:
            if literal > n:
                break
            if i >= n or kind == 2:
                continue
            if end <= n:
                if not empty:
                    boxes.append((start, content))
            elif kind == 1 and not _holds_no_answer(text[i:n]):
                boxes.append((start, text[i:n]))
        close = self.close if 0 <= self.close <= n - len(_THINK_END) else -1
        answer = None
        if close >= 0:
            final_boxes = [content for start, content in boxes if start > close]
            after = close + len(_THINK_END)
            answer = final_boxes[-1] if final_boxes else _unboxed_answer(text[max(after, n - _TAIL_CHARS):n])
        if answer is None:
            answer = boxes[-1][1] if boxes else _unboxed_answer(text[max(0, n - _TAIL_CHARS):n])
        value = parse_integer(answer)
        if value is None or spec is None:
            return value
        return spec.apply(value)


class ReplayCuts:
    """Cuts shared by many replay engines over the same recorded samples: each is computed once per
    (recorded sample, stop rule, max_tokens). Keyed by the record object itself, which the cache keeps alive."""

    def __init__(self, parse_once: bool = True) -> None:
        self.parse_once = parse_once  # False: cut and parse again on every call (the simulator benchmark's baseline)
        self._cuts: dict[tuple[int, str, int], tuple[dict, Cut]] = {}
        self._answers: dict[tuple[int, AnswerSpec | None], tuple[str, int | None]] = {}
        self._prefixes: dict[int, PrefixAnswers] = {}

    def get(self, trace: dict, stop_rule: str, max_tokens: int) -> Cut:
        if not self.parse_once:
            return cut_sample(trace, stop_rule, max_tokens)
        key = (id(trace), stop_rule, max_tokens)
        hit = self._cuts.get(key)
        if hit is None:
            hit = self._cuts[key] = (trace, cut_sample(trace, stop_rule, max_tokens))
        return hit[1]

    def answer(self, text: str, spec: AnswerSpec | None) -> int | None:
        """extract_answer(text, spec), computed once per text object (a cut's text is one object however often
        it is replayed; the cache keeps it alive, so its id is never reused)."""
        if not self.parse_once:
            return extract_answer(text, spec)
        key = (id(text), spec)
        hit = self._answers.get(key)
        if hit is None or hit[0] is not text:
            # the same parse serves the votes of its prefixes (extract_final_answer is extract_answer up to there)
            answer = self._prefix(text).answer(len(text), spec) if len(text) <= ANSWER_SCAN_CHARS else \
                extract_answer(text, spec)
            hit = self._answers[key] = (text, answer)
        return hit[1]

    def prefix_answer(self, text: str, n: int, spec: AnswerSpec | None) -> int | None:
        """extract_final_answer(text[:n], spec), `text` parsed once (see PrefixAnswers)."""
        if not self.parse_once:
            return extract_final_answer(text[:n], spec)
        return self._prefix(text).answer(n, spec)

    def _prefix(self, text: str) -> PrefixAnswers:
        hit = self._prefixes.get(id(text))
        if hit is None or hit.text is not text:
            hit = self._prefixes[id(text)] = PrefixAnswers(text)
        return hit

    def __len__(self) -> int:
        return len(self._cuts)


class SpeedModel(Protocol):
    """What the replay engine needs of a hardware speed profile (inference.simulate.SpeedProfile)."""

    load_seconds: float
    tool_call_seconds: float  # each tool call's overhead (dispatch, prefill of its output) on top of its run time

    def per_sample(self, running: int) -> float:
        """Tokens/s of each of `running` samples sharing the engine."""


@dataclass
class _Running:
    request: SampleRequest
    cut: Cut
    start: float  # clock time it was submitted
    begin: float  # position at submission: clock time (recorded timing) or per-sample work (speed profile)
    end: float  # position at which it finishes
    tool_seconds: float = 0.0  # speed profile: wall time in tool calls, out of the batch, after its tokens
    stopped_at: int | None = None  # tokens after which DeepConf's online rule terminated it (no vote)


class ReplayEngine(Engine):
    name = "replay"

    def __init__(
        self,
        traces: str | Path | Iterable[dict] | dict[tuple[str, int], dict],
        clock: RealClock | VirtualClock | None = None,
        speed: SpeedModel | None = None,
        cuts: ReplayCuts | None = None,
        confidence_stop: float | None = None,
        confidence_warmup: int = 4,
    ) -> None:
        """`traces`: a JSONL path or records (checked by load_traces), or an index load_traces already returned.
        `speed`: time samples by this profile instead of their recorded seconds (virtual clock only).
        `cuts`: a cache shared with other engines on the same records (default: this engine's own).
        `confidence_stop`: DeepConf online - once `confidence_warmup` samples of a problem finished, the threshold
        is this quantile of their lowest window confidence (`conf_min`), and a sample of that problem whose window
        confidence (`conf_windows`, blocks of `conf_window` tokens) falls below it is terminated at the end of that
        window: it finishes then, empty, with reason "low_confidence" (no vote). Samples without the fields run on.
        Without it the requests' own `confidence_stop` / `confidence_warmup` (the solver's policy) decide, as in the
        live engines; the threshold is inference.entropy.ConfidenceGate's."""
        super().__init__(clock)
        if speed is not None and not getattr(self.clock, "virtual", False):
            raise ValueError("replay: a speed profile needs a VirtualClock (--virtual-clock)")
        self.traces = traces if isinstance(traces, dict) else load_traces(traces)
        self.speed = speed
        self.cuts = cuts if cuts is not None else ReplayCuts()
        self._running: dict[tuple[str, int], _Running] = {}
        self._finished: list[Sample] = []  # finished, not yet polled
        # Samples in finishing order: (end position, submission order, key). Aborted ones are skipped when popped.
        self._heap: list[tuple[float, int, tuple[str, int]]] = []
        self._order = 0
        # Speed-profile timing. Every running sample gets the same share of the throughput, so one number tracks
        # them all: `_work`, the tokens each running sample has generated since the engine started. A sample
        # submitted at work w with n tokens finishes when _work reaches w + n.
        self._t = self.clock.now()  # the time up to which _work is accounted
        self._work = 0.0
        self._loaded = False
        self._tools: list[tuple[float, int, tuple[str, int]]] = []  # (tool calls end, order, key): off the batch
        self._partials: dict[int, tuple[Sample, Cut]] = {}  # the last abort's partials → the cuts they come from
        if confidence_stop is not None and not 0 < confidence_stop < 1:
            raise ValueError(f"replay: confidence_stop must be in (0, 1), got {confidence_stop}")
        self.confidence_stop, self.confidence_warmup = confidence_stop, confidence_warmup
        self._gates: dict[str, ConfidenceGate] = {}  # problem → its DeepConf threshold
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
                    r = _Running(req, cut, now, now, now + cut.seconds)
                else:
                    calls = int(cut.extra.get("tool_calls") or 0)
                    tool = float(cut.extra.get("tool_seconds") or 0.0) + calls * getattr(self.speed,
                                                                                           "tool_call_seconds", 0.0)
                    r = _Running(req, cut, now, self._work, self._work + max(1, cut.tokens), tool)
                self._running[key] = r
                self._order += 1
                heapq.heappush(self._heap, (r.end, self._order, key))
                gate = self._gate(req)
                if gate is not None and gate.threshold is not None:
                    self._terminate_if_unsure(r, gate, r.begin)

    def _gate(self, req: SampleRequest) -> ConfidenceGate | None:
        """The problem's DeepConf gate (made at its first request): the engine's settings, else the request's."""
        gate = self._gates.get(req.problem_id)
        if gate is None:
            if self.confidence_stop is not None:
                gate = ConfidenceGate(self.confidence_stop, self.confidence_warmup)
            elif req.confidence_stop is not None:
                gate = ConfidenceGate(req.confidence_stop, req.confidence_warmup)
            else:
                return None
            self._gates[req.problem_id] = gate
        return gate

    # -- timing -------------------------------------------------------------------------------------------------
    def _first(self) -> _Running | None:
        """The running sample that finishes first."""
        while self._heap:
            r = self._running.get(self._heap[0][2])
            if r is not None and r.end == self._heap[0][0]:
                return r
            heapq.heappop(self._heap)  # aborted (or a stale entry of a resubmitted key)
        return None

    def _finish_first(self, at: float) -> None:
        _, _, key = heapq.heappop(self._heap)
        r = self._running.pop(key)
        if r.stopped_at is not None:
            self._finished.append(self._sample(r, "", r.stopped_at, at - r.start, "low_confidence"))
            return
        self._finished.append(self._sample(r, r.cut.text, r.cut.tokens, at - r.start, r.cut.finish_reason))
        gate = self._gates.get(r.request.problem_id)
        if gate is not None and gate.finished(r.cut.extra.get("conf_min")):  # the warmup is complete
            position = at if self.speed is None else self._work
            for other in list(self._running.values()):
                if other.request.problem_id == r.request.problem_id:
                    self._terminate_if_unsure(other, gate, position)

    def _terminate_if_unsure(self, r: _Running, gate: ConfidenceGate, position: float) -> None:
        """DeepConf online: end `r` after the first recorded window the gate terminates at, if any, but not before
        `position` (now, on the clock or in per-sample work)."""
        windows, size = r.cut.extra.get("conf_windows"), r.cut.extra.get("conf_window")
        if not windows or not size or r.stopped_at is not None or r.tool_seconds > 0:
            return
        low = next((i for i, c in enumerate(windows) if gate.terminates(c)), None)
        if low is None or (low + 1) * size >= r.cut.tokens:
            return
        r.stopped_at = (low + 1) * size
        fraction = r.stopped_at / max(1, r.cut.tokens)
        r.end = max(position, r.begin + (r.end - r.begin) * fraction)
        self._order += 1
        heapq.heappush(self._heap, (r.end, self._order, (r.request.problem_id, r.request.sample)))

    def _advance(self, now: float) -> None:
        """Finish, in order, every sample due by `now` (into self._finished)."""
        if self.speed is None:
            while (r := self._first()) is not None and r.end <= now:
                self._finish_first(r.end)
            return
        while True:  # the throughput is re-shared each time the batch shrinks
            r = self._first()
            decoding = len(self._running) - len(self._tools)
            due = math.inf if r is None else self._t + (r.end - self._work) / self.speed.per_sample(decoding)
            tool_due = self._tools[0][0] if self._tools else math.inf
            if due > now and tool_due > now:
                break
            if tool_due <= due:  # a sample's tool calls end: it finishes
                _, _, key = heapq.heappop(self._tools)
                w = self._running.pop(key)
                if decoding:
                    self._work += self.speed.per_sample(decoding) * (tool_due - self._t)
                self._t = tool_due
                self._finished.append(self._sample(w, w.cut.text, w.cut.tokens, tool_due - w.start,
                                                   w.cut.finish_reason))
                continue
            self._t, self._work = due, r.end
            if r.tool_seconds > 0:  # its tokens are out; its tool calls take wall time, off the batch
                heapq.heappop(self._heap)
                self._order += 1
                heapq.heappush(self._tools, (due + r.tool_seconds, self._order, (r.request.problem_id,
                                                                                 r.request.sample)))
                continue
            self._finish_first(due)
        decoding = len(self._running) - len(self._tools)
        if decoding:
            self._work += self.speed.per_sample(decoding) * (now - self._t)
        self._t = max(self._t, now)

    def _decoding(self) -> int:
        """Samples generating tokens now (speed profile): the running ones not waiting on a tool call."""
        return len(self._running) - len(self._tools)

    def _next_finish(self) -> float | None:
        r = self._first()
        if self.speed is None:
            return None if r is None else r.end
        tool_due = self._tools[0][0] if self._tools else None
        if r is None:
            return tool_due
        due = self._t + max(0.0, r.end - self._work) / self.speed.per_sample(self._decoding())
        return due if tool_due is None else min(due, tool_due)

    def _fraction_done(self, r: _Running, now: float) -> float:
        position = now if self.speed is None else self._work
        return min(1.0, max(0.0, (position - r.begin) / max(r.end - r.begin, 1e-9)))

    def _sample(self, r: _Running, text: str, tokens: int, seconds: float, reason: str) -> Sample:
        return Sample(r.request.problem_id, r.request.sample, text, tokens, seconds, reason,
                      variant=r.request.variant, seed=r.request.seed, extra=dict(r.cut.extra))

    def _partial(self, r: _Running, now: float) -> Sample:
        frac = self._fraction_done(r, now)
        text = r.cut.text[: int(len(r.cut.text) * frac)]
        sample = self._sample(r, text, int(r.cut.tokens * frac), now - r.start, "aborted")
        self._partials[id(sample)] = (sample, r.cut)
        if r.cut.trace.get("turns") and len(text) < len(r.cut.trace["text"]):
            sample.extra.update(cut_tool_trace(r.cut.trace, len(text))[2])  # the turns up to where it stopped
        return sample

    # -- the Engine interface ------------------------------------------------------------------------------------
    def answer_of(self, sample: Sample, spec: AnswerSpec | None) -> int | None:
        """The sample's vote, as extract_answer gives it; each replayed text is parsed once (the solver asks). An
        aborted sample's prefix is answered from its cut's one parse (the solver rescues an answer from it)."""
        partial = self._partials.get(id(sample))
        if partial is not None and partial[0] is sample:
            return self.cuts.prefix_answer(partial[1].text, len(sample.text), spec)
        return self.cuts.answer(sample.text, spec)

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
        """Unfinished samples as "aborted" partials; samples already due but not yet polled keep their own finish
        reason (they finished, so they vote)."""
        now = self.clock.now()
        with self._lock:
            self._partials.clear()  # the solver is done with the last abort's partials
            self._advance(now)
            # Finished by now but not yet polled: they keep their own finish reason (they finished, so they vote).
            done = [s for s in self._finished if s.problem_id == problem_id]
            self._finished = [s for s in self._finished if s.problem_id != problem_id]
            keys = [k for k in self._running if k[0] == problem_id]
            if self._tools:
                self._tools = [t for t in self._tools if t[2][0] != problem_id]
                heapq.heapify(self._tools)
            return done + [self._partial(self._running.pop(k), now) for k in keys]  # their heap entries go stale

    def progress(self) -> EngineProgress:
        with self._lock:
            position = self.clock.now() if self.speed is None else self._work
            tokens = 0.0
            for r in self._running.values():  # Σ tokens × min(1, max(0, done)), without the calls (run per poll)
                span = r.end - r.begin
                done = (position - r.begin) / (span if span > 1e-9 else 1e-9)
                if done > 0.0:
                    tokens += r.cut.tokens * (done if done < 1.0 else 1.0)
            running = len(self._running)
        # Recorded samples stream steadily, so a replay never looks stalled.
        return EngineProgress(running=running, tokens_in_flight=int(tokens), seconds_since_token=0.0)

    def shutdown(self) -> None:
        with self._lock:
            self._running.clear()
            self._finished.clear()
            self._heap.clear()
            self._tools.clear()
            self._partials.clear()
            self._gates.clear()
