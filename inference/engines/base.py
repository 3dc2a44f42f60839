"""The engine interface: the only thing the policy (solver, voting, time budget) knows about a model.

An engine takes sample requests, generates them concurrently, and hands back finished samples. The solver drives it
with a plain loop (`submit` → `poll` … → `abort`), which works the same on a live model with a real clock and on
recorded traces with a virtual clock. Engines own their model, tokenizer and chat template; the policy only ever
sends chat messages and receives text.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Sequence

from inference.answers import STOP_RULES  # noqa: F401 - re-exported: the engines' and the config's list
from inference.clock import RealClock, VirtualClock

# How a sample ends early once it has committed to an answer (see inference.answers.StopDetector):
#   "boxed_after_think" - right after the first complete \boxed{} after `</think>`: the model's final answer
#   "think"             - at the first `</think>` with a complete \boxed{} before it, or as boxed_after_think
#   "first_boxed"       - right after the first complete \boxed{...}
#   "none"              - only at end-of-sequence or max_tokens


@dataclass
class SampleRequest:
    """One sample to generate for one problem."""

    problem_id: str
    sample: int  # index of this sample within the problem (0, 1, ...)
    messages: list[dict]  # chat messages [{"role": ..., "content": ...}]; the engine applies its chat template
    seed: int
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float = 0.0
    stop_rule: str = "boxed_after_think"
    variant: str = ""  # name of the prompt variant, recorded in traces
    logprobs: int = 0  # top-k logprobs per token for the entropy vote (inference/entropy.py); 0: none
    entropy_tail_tokens: int = 256  # the tail window of the sample's `entropy_tail`
    # DeepConf online termination (inference.entropy.ConfidenceGate; needs logprobs): once `confidence_warmup`
    # samples of the problem finished, a sample whose lowest window confidence (windows of `confidence_window`
    # tokens) falls below their `confidence_stop` quantile ends with finish_reason "low_confidence". None: off.
    confidence_stop: float | None = None
    confidence_warmup: int = 4
    confidence_window: int = 256


@dataclass
class Sample:
    """A sample that has finished (or was aborted). One line of a traces JSONL file."""

    problem_id: str
    sample: int
    text: str
    tokens: int  # completion tokens generated
    seconds: float  # from submission to finish, on the engine's clock
    # "stop" (EOS), "length" (max_tokens), "answer" (stop rule), "aborted", "error", "low_confidence" (terminated by
    # DeepConf online: finished, never votes)
    finish_reason: str
    variant: str = ""
    seed: int | None = None
    extra: dict = field(default_factory=dict)

    def to_trace(self) -> dict:
        record = asdict(self)
        extra = record.pop("extra")
        record.update(extra)
        return record


@dataclass
class EngineProgress:
    """What the watchdog and progress display look at."""

    running: int  # samples in flight
    tokens_in_flight: int  # tokens generated so far by samples still running
    seconds_since_token: float  # on the engine clock; 0.0 when nothing is running


class EngineError(RuntimeError):
    """The engine died or cannot start; the server restarts it or falls back."""


class Engine(abc.ABC):
    """Base class of the vllm, transformers and replay engines.

    Thread-safety: the solver calls every method from one thread (the predict thread); engines may run their own
    background threads internally.
    """

    name = "base"

    def __init__(self, clock: RealClock | VirtualClock | None = None) -> None:
        self.clock = clock or RealClock()

    @abc.abstractmethod
    def start(self) -> None:
        """Load the model. Idempotent; may take minutes on real hardware."""

    @abc.abstractmethod
    def submit(self, requests: Sequence[SampleRequest]) -> None:
        """Start generating these samples concurrently. Returns at once."""

    @abc.abstractmethod
    def poll(self, timeout: float) -> list[Sample]:
        """Finished samples since the last call, in finishing order.

        Waits up to `timeout` seconds of the engine's clock for at least one; returns [] if none finished by then.
        With a virtual clock, waiting advances the clock instead of sleeping.
        """

    @abc.abstractmethod
    def abort(self, problem_id: str) -> list[Sample]:
        """Stop every unfinished sample of this problem; returns them with finish_reason "aborted"."""

    @abc.abstractmethod
    def progress(self) -> EngineProgress:
        """Samples in flight and time since the last generated token."""

    def shutdown(self) -> None:
        """Release the model. The engine may be started again afterwards."""

    def restart(self) -> None:
        """Watchdog hook: a fresh engine after a crash or hang."""
        self.shutdown()
        self.start()
