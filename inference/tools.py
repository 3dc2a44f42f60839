"""The tool loop: a sample becomes a conversation of turns with a Python sandbox.

    generate ──(turn ends at a tool call: the format's stop string or token)──▶ run the code in the sandbox
        ▲                                                                            │
        └──── next prompt = prompt + turn tokens + output framed by the format ◀─────┘

Both live engines drive it the same way (inference/engines/vllm_engine.py, transformers_engine.py): they generate a
turn with the format's stop strings, hand the turn to `Conversation.end_turn`, run the returned call with
`Conversation.run_call` on a worker thread (never on vLLM's event loop), and generate the next turn from
`Conversation.next_prompt_ids()`. The conversation counts generated tokens and tool seconds, enforces the limits
(`max_calls`, `max_turns`, the sample's max_tokens over all turns), and writes the trace record: every turn's text,
tokens and seconds, the code it ran, the output, the tool seconds. For the solver a tool-using sample stays a sample:
its text is the whole conversation (what the model wrote and what the tool answered), its tokens are the generated
ones, its seconds the wall time including the tool calls.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from inference.formats import ChatFormat, ToolCall
from inference.sandbox import DEFAULT_SETUP, SandboxPool, SandboxSession

ISOLATION = ("auto", "always", "never")


@dataclass
class ToolSettings:
    """The `tools:` section of an inference config."""

    enabled: bool = False
    max_calls: int = 8  # tool calls per sample; a call past it gets an error text instead of running
    max_turns: int = 16  # generation turns per sample; the sample ends after the last
    timeout_seconds: float = 6.0  # per call (AIMO-3 winners: 6 s; AIMO-2's: 2 s)
    memory_mb: int = 2048  # address-space limit of each interpreter
    max_output_chars: int = 1000  # longer output keeps its head and tail (AIMO-2's winner: 200)
    pool_size: int = 16  # interpreters kept warm: about twice the samples that run at once
    setup_code: str = DEFAULT_SETUP  # run in each sample's fresh namespace
    isolation: str = "auto"  # PID/network namespaces: "auto" where unshare works, "always" (fail without), "never"
    allow_unisolated: bool = False  # run tools even where samples cannot be kept from the server (not root, no userns)

    def __post_init__(self) -> None:
        for name in ("max_calls", "max_turns", "pool_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"tools.{name}: must be ≥ 0, got {getattr(self, name)}")
        if self.max_turns < 1:
            raise ValueError(f"tools.max_turns: must be ≥ 1, got {self.max_turns}")
        if self.timeout_seconds <= 0:
            raise ValueError(f"tools.timeout_seconds: must be > 0, got {self.timeout_seconds}")
        if self.isolation not in ISOLATION:
            raise ValueError(f"tools.isolation: {self.isolation!r} is not one of {', '.join(ISOLATION)}")

    def make_pool(self) -> SandboxPool:
        isolate = {"auto": "auto", "always": True, "never": False}[self.isolation]
        return SandboxPool(size=self.pool_size, timeout=self.timeout_seconds, memory_mb=self.memory_mb,
                           max_output_chars=self.max_output_chars, setup_code=self.setup_code, isolate=isolate,
                           allow_unisolated=self.allow_unisolated)


def start_tools(tools: ToolSettings) -> tuple[SandboxPool, ThreadPoolExecutor]:
    """An engine's tool machinery: the interpreter pool and the threads that run calls off the generation loop."""
    return tools.make_pool(), ThreadPoolExecutor(max(1, tools.pool_size), thread_name_prefix="tool-call")


def stop_tools(pool: SandboxPool | None, threads: ThreadPoolExecutor | None) -> None:
    """Undo start_tools: queued calls are dropped, every interpreter is killed."""
    if threads is not None:
        threads.shutdown(wait=False, cancel_futures=True)
    if pool is not None:
        pool.close()


class Conversation:
    """One sample's turns. The engine calls `end_turn` when a turn stops, `run_call` (blocking, off the event loop)
    when it returned "tool", then generates from `next_prompt_ids()`. Thread-safe enough for one engine thread plus
    one tool thread plus `stop()` from the solver's thread."""

    def __init__(self, fmt: ChatFormat, settings: ToolSettings, pool: SandboxPool | None, prompt_ids: list[int],
                 started: float) -> None:
        self.format, self.settings, self.pool = fmt, settings, pool
        self.prompt_ids = list(prompt_ids)  # the current turn's prompt
        self.first_prompt_tokens = len(prompt_ids)
        self.text = ""  # everything so far, before the current turn: generated text and framed tool outputs
        self.tokens = 0  # generated tokens of the finished turns
        self.calls = 0
        self.tool_seconds = 0.0
        self.turns: list[dict] = []
        self.turn_token_ids: list[list[int]] = []  # what the model generated, per finished turn (no tool output)
        self.turn_started = started  # engine clock
        self.finish_reason: str | None = None  # set when end_turn ends the sample ("max_turns" / "length")
        self._pending: ToolCall | None = None
        self._turn_ids: list[int] = []
        self._session: SandboxSession | None = None
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def turn(self) -> int:
        """Index of the turn being generated."""
        return len(self.turns)

    def end_turn(self, turn_text: str, turn_token_ids: list[int], now: float, max_tokens: int) -> str:
        """A turn stopped at one of the format's stop strings or tokens. Returns what to do next:
        "tool" (run `run_call`, then generate on), "continue" (no call after all: generate on), or "done" (a limit is
        reached; `finish_reason` says which)."""
        call = self.format.tool_call(turn_text, turn_token_ids)
        record = {"text": turn_text, "tokens": len(turn_token_ids), "seconds": round(now - self.turn_started, 4),
                  "call": call.code if call else None, "output": None, "framed": "", "tool_seconds": 0.0}
        self.turns.append(record)
        self.turn_token_ids.append(list(turn_token_ids))
        self.text += turn_text
        self.tokens += len(turn_token_ids)
        self._turn_ids = list(turn_token_ids)
        self.turn_started = now
        if self.tokens >= max_tokens:
            self.finish_reason = "length"
            return "done"
        if len(self.turns) >= self.settings.max_turns:
            self.finish_reason = "max_turns"
            return "done"
        self._pending = call
        return "tool" if call is not None else "continue"

    def run_call(self) -> str:
        """Run the pending call in this sample's interpreter (blocking: call it on a worker thread). Returns the
        framed output that now follows the turn in the conversation."""
        call, self._pending = self._pending, None
        record = self.turns[-1]
        if call is None:
            return ""
        if self.calls >= self.settings.max_calls:
            output, seconds = (f"Error: the limit of {self.settings.max_calls} tool calls per sample is reached; "
                               "continue without the tool."), 0.0
        else:
            with self._lock:
                if self._session is None and not self._stopped:
                    self._session = self.pool.session() if self.pool is not None else None
                session = self._session
            if session is None:
                output, seconds = "Error: the Python tool is not available.", 0.0
            else:
                result = session.run(call.code)
                output, seconds = result.output, result.seconds
            self.calls += 1
        self.tool_seconds += seconds
        framed = self.format.frame_output(output)
        record.update(output=output, framed=framed, tool_seconds=round(seconds, 4))
        self.text += framed
        return framed

    def next_prompt_ids(self, tokenizer, now: float) -> list[int]:
        """The next turn's prompt (extends the last one, so prefix caching reuses it)."""
        record = self.turns[-1]
        output = record["output"] if record["call"] is not None else None
        self.prompt_ids = self.format.continue_ids(self.prompt_ids, self._turn_ids, output, tokenizer)
        self.turn_started = now
        return self.prompt_ids

    def trace(self, final_text: str, final_tokens: int, now: float) -> dict:
        """Trace fields of the whole sample, given the last (unfinished or final) turn's text and tokens."""
        turns = self.turns + [{"text": final_text, "tokens": final_tokens,
                               "seconds": round(max(0.0, now - self.turn_started), 4), "call": None, "output": None,
                               "framed": "", "tool_seconds": 0.0}]
        return {"turns": turns, "tool_calls": self.calls, "tool_seconds": round(self.tool_seconds, 4)}

    def stop(self) -> None:
        """The sample was aborted: stop a running call now (from any thread)."""
        with self._lock:
            self._stopped = True
            session = self._session
        if session is not None:
            session.kill()

    def close(self) -> None:
        """End the sample's interpreter and all it started. Idempotent; blocking for a moment (call off the loop)."""
        with self._lock:
            self._stopped = True
            session, self._session = self._session, None
        if session is not None:
            session.close()


def replay_seconds(trace: dict, chars: int) -> float | None:
    """Seconds from the start of a recorded tool-using sample until its text reached `chars` characters: generated
    text advances linearly over its turn's seconds, a tool output appears whole when its call ends. None when the
    trace has no turns (the caller then scales the recorded seconds by the fraction of text kept)."""
    turns = trace.get("turns")
    if not turns:
        return None
    at, seconds = 0, 0.0
    for turn in turns:
        n = len(turn["text"])
        if chars <= at + n:
            return seconds + turn["seconds"] * ((chars - at) / n if n else 1.0)
        at, seconds = at + n, seconds + turn["seconds"]
        framed = len(turn.get("framed") or "")
        seconds += turn.get("tool_seconds") or 0.0
        if chars <= at + framed:
            return seconds
        at += framed
    return seconds


def cut_turns(trace: dict, chars: int) -> dict:
    """Tool fields of a recorded sample cut at `chars` characters of its text (calls after the cut are dropped)."""
    kept, at, calls, tool_seconds = [], 0, 0, 0.0
    for turn in trace.get("turns") or []:
        if at >= chars:
            break
        n, framed = len(turn["text"]), len(turn.get("framed") or "")
        if at + n >= chars:  # the cut falls in this turn's own text: its call (if any) never happened
            fraction = (chars - at) / n if n else 1.0
            kept.append({**turn, "text": turn["text"][: chars - at], "tokens": round(turn["tokens"] * fraction),
                         "seconds": turn["seconds"] * fraction, "call": None, "output": None, "framed": "",
                         "tool_seconds": 0.0})
            break
        kept.append(turn)
        if turn.get("call") is not None:
            calls += 1
            tool_seconds += turn.get("tool_seconds") or 0.0
        at += n + framed
    return {"turns": kept, "tool_calls": calls, "tool_seconds": round(tool_seconds, 4)}


def cut_tool_trace(trace: dict, chars: int) -> tuple[int, float, dict]:
    """A recorded tool-using sample cut at `chars` characters of its text (a stop rule or an abort in replay):
    its generated tokens, its seconds (the recorded seconds scaled along the turns' timeline, tool calls included)
    and its tool fields."""
    fields = cut_turns(trace, chars)
    full = replay_seconds(trace, len(trace["text"])) or 0.0
    at = replay_seconds(trace, chars) or 0.0
    seconds = float(trace["seconds"]) * (at / full) if full > 0 else 0.0
    return sum(t["tokens"] for t in fields["turns"]), seconds, fields


def summarize(traces_path: str) -> list[dict]:
    """Per problem of a traces JSONL: samples, generated tokens, tool calls and tool seconds (sums over samples)."""
    import json
    from collections import defaultdict

    rows: dict[str, dict] = defaultdict(lambda: {"samples": 0, "tokens": 0, "tool_calls": 0, "tool_seconds": 0.0})
    with open(traces_path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                row = rows[str(r["problem_id"])]
                row["samples"] += 1
                row["tokens"] += r["tokens"]
                row["tool_calls"] += r.get("tool_calls", 0)
                row["tool_seconds"] += r.get("tool_seconds", 0.0)
    return [{"problem_id": pid, **row, "tool_seconds": round(row["tool_seconds"], 3)} for pid, row in sorted(rows.items())]


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Tool use per problem in a traces JSONL (samples, tokens, calls, "
                                                 "tool seconds).")
    parser.add_argument("traces", help="traces JSONL (local_gateway.py --record-traces, evaluate.py --traces)")
    args = parser.parse_args()
    rows = summarize(args.traces)
    print(f"{'problem':<14} {'samples':>7} {'tokens':>7} {'calls':>6} {'tool s':>7}")
    for r in rows:
        print(f"{r['problem_id'][:14]:<14} {r['samples']:>7} {r['tokens']:>7} {r['tool_calls']:>6} "
              f"{r['tool_seconds']:>7.2f}")
    n = max(1, len(rows))
    print(f"{'mean':<14} {sum(r['samples'] for r in rows) / n:>7.1f} {sum(r['tokens'] for r in rows) / n:>7.1f} "
          f"{sum(r['tool_calls'] for r in rows) / n:>6.1f} {sum(r['tool_seconds'] for r in rows) / n:>7.2f}")


if __name__ == "__main__":
    main()
