"""The live engine: vLLM's `AsyncLLM`, one streamed request per sample, behind the kit's `Engine` interface.

Why AsyncLLM and not `LLM`: early-stop voting needs to stream every sample and abort single samples mid-generation,
which only the async engine offers. AsyncLLM lives on an asyncio event loop; this engine runs that loop in one
background thread it owns, and its public methods are plain synchronous calls that hand coroutines to the loop
(`asyncio.run_coroutine_threadsafe`), so they are safe from any thread (Kaggle calls predict from a gRPC worker).

Each sample is one vLLM request with its own seed (prefix caching shares the prompt's KV cache among the samples of a
problem). A consumer task per request reads the streamed deltas, counts tokens, feeds the request's stop rule
(`inference.answers.StopDetector`, whose cost is linear in the new text) and aborts the request in vLLM the moment
the sample has committed to an answer. With `confidence_stop` on the requests (and logprobs), the problem's
`inference.entropy.ConfidenceGate` ends a sample the same way once its sliding-window token confidence falls below the
threshold of the problem's first finished samples: it finishes with reason "low_confidence".
Finished samples go to a list that `poll` hands out. If vLLM dies (its engine core process crashed, or the loop
stopped answering for `stall_seconds`), `submit` and `poll` raise `EngineError` and the watchdog restarts the engine.

With tools (inference/tools.py) a sample is several vLLM requests in a row, one per turn: a turn that stops at the
chat format's tool-call stop string or token goes to the sandbox on a worker thread (the event loop keeps streaming
the other samples), and the next turn is a new request whose prompt extends the last one (prefix-cached).

Scripts that build this engine need an `if __name__ == "__main__":` guard: vLLM starts its engine core in a new
process that may re-import the main module.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Coroutine, Sequence

from inference.answers import StopDetector
from inference.clock import RealClock, VirtualClock
from inference.entropy import ConfidenceGate, EntropyMeter
from inference.engines.base import Engine, EngineError, EngineProgress, Sample, SampleRequest
from inference.formats import get_format
from inference.prompts import fit_prompt_ids
from inference.tools import Conversation, ToolSettings, start_tools, stop_tools

log = logging.getLogger(__name__)

# vLLM's finish reasons → the kit's (base.Sample.finish_reason)
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "aborted", "error": "error"}


@dataclass
class _Stream:
    """One sample being generated. Touched by the loop thread (deltas) and callers (abort, progress) under a lock."""

    request: SampleRequest
    request_id: str
    prompt_tokens: int
    submitted: float  # engine clock
    tokens: int = 0
    pieces: list[str] = field(default_factory=list)  # the text so far, joined only when the sample ends
    detector: StopDetector = field(init=False)  # the request's stop rule, fed every delta
    entropy: EntropyMeter | None = None  # when the request asked for logprobs
    gate: ConfidenceGate | None = None  # the problem's DeepConf threshold, with confidence_stop (shared)
    conversation: Conversation | None = None  # with tools: the turns so far
    format: Any = None  # the engine's ChatFormat: the sample's text is its answer_text of the completion
    params: Any = None  # this sample's SamplingParams (each turn copies them)
    turn_ids: list[int] = field(default_factory=list)  # token ids the model generated in the current turn
    turn_pieces: list[str] = field(default_factory=list)  # its text

    def __post_init__(self) -> None:
        self.detector = StopDetector(self.request.stop_rule)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def sample(self, text: str, seconds: float, finish_reason: str) -> Sample:
        r, conv = self.request, self.conversation
        extra = {"prompt_tokens": self.prompt_tokens} | (self.entropy.trace() if self.entropy else {})
        if conv is not None:
            extra.update(conv.trace(text[len(conv.text):], self.tokens - conv.tokens, self.submitted + seconds))
        if self.format is not None:  # from the ids the model generated: tool output in the text is no answer
            text = self.format.answer_text(text, (conv.turn_token_ids if conv else []) + [self.turn_ids])
        return Sample(r.problem_id, r.sample, text, self.tokens, seconds, finish_reason, variant=r.variant,
                      seed=r.seed, extra=extra)


# peft target module → the vLLM layer that holds it (gpt-oss and Llama-family names; q/k/v are fused in vLLM).
_VLLM_LORA_MODULES = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "o_proj": "o_proj",
                      "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "down_proj": "down_proj"}
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks


def lora_engine_args(lora_path: str) -> dict:
    """The AsyncEngineArgs that serve the peft adapter in `lora_path`: enable_lora, max_lora_rank (the smallest
    vLLM rank ≥ r), and lora_target_modules = the vLLM layers it targets, so that layers it leaves alone keep their
    plain kernels (gpt-oss: attention-only LoRA leaves the MXFP4 experts unwrapped)."""
    config_file = Path(lora_path) / "adapter_config.json"
    if not config_file.is_file():
        raise ValueError(f"lora_path: {lora_path} has no adapter_config.json (a peft LoRA adapter directory)")
    cfg = json.loads(config_file.read_text())
    r = int(cfg.get("r", 0))
    if r < 1 or r > _VLLM_LORA_RANKS[-1]:
        raise ValueError(f"lora_path: {config_file}: LoRA rank r={r} is outside vLLM's 1..{_VLLM_LORA_RANKS[-1]}")
    args = {"enable_lora": True, "max_lora_rank": next(x for x in _VLLM_LORA_RANKS if x >= r), "max_loras": 1}
    targets = cfg.get("target_modules")
    if isinstance(targets, list) and not cfg.get("target_parameters"):
        names = [t.rsplit(".", 1)[-1] for t in targets]
        if all(n in _VLLM_LORA_MODULES for n in names):
            args["lora_target_modules"] = sorted({_VLLM_LORA_MODULES[n] for n in names})
    return args


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(
        self,
        model: str,
        clock: RealClock | VirtualClock | None = None,
        engine_args: dict | None = None,
        stall_seconds: float = 120.0,
        chat_format: str = "r1",
        format_options: dict | None = None,
        tools: ToolSettings | None = None,
        lora_path: str | None = None,
    ) -> None:
        """`engine_args` go straight to `vllm.AsyncEngineArgs` (tensor_parallel_size, gpu_memory_utilization,
        max_model_len, kv_cache_dtype, quantization, enable_prefix_caching, enforce_eager, max_num_seqs, dtype,
        seed, ...). `stall_seconds` bounds every wait on vLLM's event loop: longer means it hangs. `chat_format` +
        `format_options`: inference.formats; `tools`: the tool loop (off unless `tools.enabled`). `lora_path`: a
        peft LoRA adapter served on top of `model` with vLLM's LoRA (every request; `lora_engine_args`)."""
        super().__init__(clock)
        if getattr(self.clock, "virtual", False):
            raise ValueError("clock: the vllm engine generates in real time; a VirtualClock works only with replay")
        self.model = str(model)
        self.engine_args = dict(engine_args or {})
        if "model" in self.engine_args:
            raise ValueError("engine_args: set the model with `model`, not engine_args.model")
        self.lora_path = str(lora_path) if lora_path else None
        self._lora_request = None
        if self.lora_path:
            self.engine_args = lora_engine_args(self.lora_path) | self.engine_args
        self.stall_seconds = float(stall_seconds)
        self.format = get_format(chat_format, **(format_options or {}))
        self._turn_stops = set(self.format.stop_strings) | set(self.format.stop_token_ids)  # ends of a tool call
        self.tools = tools if tools is not None and tools.enabled else None
        self._pool = None  # sandbox interpreters, with tools
        self._tool_threads: ThreadPoolExecutor | None = None  # tool calls and interpreter resets, off the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._llm = None  # vllm AsyncLLM
        self._tokenizer = None
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._finished_cond = threading.Condition(self._lock)
        self._streams: dict[str, _Stream] = {}  # request id → sample in flight
        self._gates: dict[str, ConfidenceGate] = {}  # problem id → its DeepConf threshold (confidence_stop)
        self._finished: list[Sample] = []  # finished, not yet returned by poll
        self._last_activity = 0.0  # engine clock: last token or submission
        self._error: str | None = None  # set when vLLM died
        self._context = 0  # max_model_len, once started
        self.prompt_cuts: dict[str, dict] = {}  # problem id → prompt tokens before and after fitting to the context

    # -- lifecycle --------------------------------------------------------------------------------------------------

    @property
    def llm(self):
        """The underlying vllm AsyncLLM (for benchmarks and tests); None until started."""
        return self._llm

    def run_coroutine(self, coro: Coroutine, timeout: float | None = None) -> Any:
        """Run a coroutine on the engine's event loop and wait for its result (for benchmarks and tests)."""
        if self._loop is None:
            coro.close()
            raise EngineError("vllm engine is not started")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise EngineError(f"vllm engine did not answer within {timeout:.0f}s") from None

    def start(self) -> None:
        if self._llm is not None:
            return
        if self.lora_path:
            from inference.cpu_features import is_moe_checkpoint, vllm_serves_moe_lora

            ok, why = vllm_serves_moe_lora()
            if not ok and is_moe_checkpoint(self.model):
                raise ValueError(f"lora_path: {why}")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        t0 = time.monotonic()
        try:
            args = AsyncEngineArgs(model=self.model, **self.engine_args)
        except TypeError as e:  # an unknown key
            raise ValueError(f"engine_args: not an AsyncEngineArgs field ({e})") from None
        if self.tools is not None and self._pool is None:  # interpreters start in the background while vLLM loads
            self._pool, self._tool_threads = start_tools(self.tools)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()

        async def build():
            # Built on the loop so AsyncLLM's output handler runs there.
            return AsyncLLM.from_engine_args(args)

        try:
            self._llm = self.run_coroutine(build())
        except Exception as e:
            self._stop_loop()
            raise EngineError(f"vllm engine failed to start on {self.model}: {e!r}") from e
        self._tokenizer = self._llm.get_tokenizer()
        self._context = self._llm.model_config.max_model_len
        if self.lora_path:
            from vllm.lora.request import LoRARequest

            self._lora_request = LoRARequest("adapter", 1, self.lora_path)
        self._error = None
        log.info("vllm engine: loaded %s in %.1fs", self.model, time.monotonic() - t0)

    def shutdown(self) -> None:
        """Abort everything, stop vLLM (its engine core process) and the loop thread. `start()` works again after."""
        with self._lock:
            self._streams.clear()
            self._finished.clear()
            self._gates.clear()
        llm, self._llm = self._llm, None
        if llm is not None:

            async def stop():
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:  # the consumers of requests in flight
                    task.cancel()
                llm.shutdown()
                if tasks:
                    await asyncio.wait(tasks, timeout=5)

            try:
                self.run_coroutine(stop(), timeout=self.stall_seconds)
            except Exception as e:  # noqa: BLE001 - a hung or dead loop: shut vLLM down from here instead
                log.warning("vllm engine: clean shutdown failed (%r); forcing it", e)
                llm.shutdown()
        self._stop_loop()
        self._tokenizer = None
        stop_tools(self._pool, self._tool_threads)
        self._pool = self._tool_threads = None

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(timeout=30)
            if not loop.is_running():
                loop.close()

    def _check_alive(self) -> None:
        if self._llm is None:
            raise EngineError("vllm engine is not started")
        if self._error is None and self._llm.errored:
            self._error = "vllm engine core died"
        if self._error is None and (self._thread is None or not self._thread.is_alive()):
            self._error = "vllm engine loop thread stopped"
        if self._error is not None:
            raise EngineError(self._error)

    # -- generation -------------------------------------------------------------------------------------------------

    def _prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.format.prompt_ids(messages, self._tokenizer)

    def submit(self, requests: Sequence[SampleRequest]) -> None:
        """Add the requests to vLLM and return once it accepted them (raises on a bad request, e.g. a prompt longer
        than max_model_len, after adding none of them)."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        self._check_alive()
        rendered: dict[str, list[int]] = {}  # the samples of a problem share their messages: render once
        batch = []
        for req in requests:
            key = repr(req.messages)
            if key not in rendered:  # a prompt longer than the context has its middle cut (prompts.fit_prompt_ids)
                rendered[key], cut = fit_prompt_ids(req.messages, self._prompt_ids, self._context, req.max_tokens)
                if cut is not None:
                    self.prompt_cuts[req.problem_id] = cut
            tool_stops = {}
            if self.tools is not None:  # a turn ends at a tool call; the stop string stays in the text
                tool_stops = {"stop": list(self.format.stop_strings), "include_stop_str_in_output": True,
                              "stop_token_ids": list(self.format.stop_token_ids)}
            params = SamplingParams(
                n=1, max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, min_p=req.min_p,
                seed=req.seed, skip_special_tokens=self.format.skip_special_tokens,
                output_kind=RequestOutputKind.DELTA, logprobs=req.logprobs or None, **tool_stops,
            )
            request_id = f"{req.problem_id}/{req.sample}/{next(self._ids)}"
            batch.append((req, request_id, rendered[key], params))
        if batch:
            self.run_coroutine(self._add(batch, TokensPrompt), timeout=self.stall_seconds)

    async def _add(self, batch, TokensPrompt) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        added = []
        try:
            for req, request_id, prompt_ids, params in batch:
                collector = await self._llm.add_request(request_id, TokensPrompt(prompt_token_ids=prompt_ids), params,
                                                        lora_request=self._lora_request)
                added.append(request_id)
                meter = EntropyMeter(req.logprobs, req.entropy_tail_tokens, req.confidence_window) if req.logprobs \
                    else None
                stream = _Stream(req, request_id, len(prompt_ids), self.clock.now(), params=params,
                                 format=self.format, entropy=meter)
                if self.tools is not None:
                    stream.conversation = Conversation(self.format, self.tools, self._pool, prompt_ids,
                                                       stream.submitted)
                with self._lock:
                    if meter is not None and req.confidence_stop is not None:
                        stream.gate = self._gates.get(req.problem_id)
                        if stream.gate is None:
                            stream.gate = self._gates[req.problem_id] = ConfidenceGate(req.confidence_stop,
                                                                                       req.confidence_warmup)
                    self._streams[request_id] = stream
                    self._last_activity = stream.submitted
                asyncio.create_task(self._consume(self._llm, stream, collector))
        except EngineDeadError as e:
            self._died(e)
            raise EngineError("vllm engine core died") from e
        except BaseException:
            with self._lock:
                for request_id in added:
                    self._streams.pop(request_id, None)
            if added:
                await self._llm.abort(added)
            raise

    async def _consume(self, llm, stream: _Stream, collector) -> None:
        """Read one request's deltas until it finishes, is aborted, or its stop rule fires."""
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            while True:
                out = collector.get_nowait() or await collector.get()
                completion = out.outputs[0]
                if stream.entropy is not None and completion.logprobs:
                    stream.entropy.add_positions(completion.logprobs)
                reason = FINISH_REASONS.get(completion.finish_reason, "stop") if out.finished else None
                # With tools, the format's tool-call stop string or token ends a turn, not the sample. Any other
                # stop_reason is one of the model's EOS ids that vLLM adds from generation_config (gpt-oss:
                # <|endoftext|> next to <|return|>): the model ended the sample.
                tool_stop = (stream.conversation is not None and reason == "stop"
                             and completion.stop_reason in self._turn_stops)
                stream.turn_ids.extend(completion.token_ids)
                if stream.conversation is not None:
                    stream.turn_pieces.append(completion.text)
                if tool_stop:
                    reason = None
                if self._on_delta(stream, completion.text, len(completion.token_ids), reason) is not None:
                    await llm.abort(stream.request_id)  # answered or terminated: free its batch slot now
                    return
                if tool_stop:
                    collector = await self._next_turn(llm, stream)
                    if collector is None:
                        return
                elif out.finished:
                    return
        except asyncio.CancelledError:
            raise
        except EngineDeadError as e:
            self._died(e)
        except Exception as e:  # noqa: BLE001 - one bad request must not take the others down
            if llm.errored:
                self._died(e)
                return
            log.exception("vllm engine: request %s failed", stream.request_id)
            with self._lock:
                if self._streams.pop(stream.request_id, None) is not None:
                    failed = stream.sample("".join(stream.pieces), self.clock.now() - stream.submitted, "error")
                    failed.extra["error"] = repr(e)
                    self._finish(failed)
        finally:
            if stream.conversation is not None and self._tool_threads is not None:
                # Reset the interpreter and return it to the pool, off the loop.
                try:
                    self._tool_threads.submit(stream.conversation.close)
                except RuntimeError:  # shutting down
                    pass

    async def _next_turn(self, llm, stream: _Stream):
        """The turn stopped at a tool call: run it off the loop, then add the sample's next turn as a new request
        (a prompt that extends the last one, so the prefix cache reuses it). Returns its output collector, or None
        when the sample is over (aborted meanwhile, finished by a limit, or out of context)."""
        from vllm.inputs import TokensPrompt

        conv, req = stream.conversation, stream.request
        turn_text, turn_ids = "".join(stream.turn_pieces), list(stream.turn_ids)
        action = conv.end_turn(turn_text, turn_ids, self.clock.now(), req.max_tokens)
        stream.turn_pieces, stream.turn_ids = [], []  # after end_turn holds them: an abort meanwhile sees the turn
        if action == "tool":
            framed = await asyncio.get_running_loop().run_in_executor(self._tool_threads, conv.run_call)
        else:
            framed = ""
        now = self.clock.now()
        with self._lock:
            if self._streams.get(stream.request_id) is not stream:
                return None  # aborted during the call: abort() handed out the partial sample
            stream.pieces.append(framed)  # the tool's answer is part of the sample's text, not of its tokens
            stream.detector.feed(framed)  # keeps the detector's count of the text; a cut shows at the next delta
            if action == "done":
                del self._streams[stream.request_id]
                self._finish(stream.sample(stream.text, now - stream.submitted, conv.finish_reason or "length"),
                             stream)
                return None
            self._last_activity = now
        prompt_ids = conv.next_prompt_ids(self._tokenizer, now)
        params = stream.params.clone()
        params.max_tokens = req.max_tokens - conv.tokens
        params.seed = None if req.seed is None else req.seed + conv.turn
        request_id = f"{req.problem_id}/{req.sample}/{next(self._ids)}"
        try:
            collector = await llm.add_request(request_id, TokensPrompt(prompt_token_ids=prompt_ids), params,
                                              lora_request=self._lora_request)
        except ValueError as e:  # the conversation outgrew max_model_len
            log.info("vllm engine: %s ends at its context limit (%s)", stream.request_id, e)
            with self._lock:
                if self._streams.pop(stream.request_id, None) is stream:
                    self._finish(stream.sample(stream.text, self.clock.now() - stream.submitted, "length"), stream)
            return None
        with self._lock:
            if self._streams.get(stream.request_id) is stream:
                del self._streams[stream.request_id]
                stream.request_id = request_id  # abort() now aborts this turn's request
                self._streams[request_id] = stream
                return collector
        await llm.abort(request_id)  # aborted while the request was being added
        return None

    def _on_delta(self, stream: _Stream, delta: str, tokens: int, finish_reason: str | None) -> str | None:
        """Account one delta; finish the sample if it ended, committed to an answer or fell under the problem's
        confidence threshold. Returns "answer" when the stop rule fired, "low_confidence" when the gate terminated
        it (the caller aborts the request), else None."""
        now = self.clock.now()
        with self._lock:
            if self._streams.get(stream.request_id) is not stream:
                return None  # aborted meanwhile: abort() already handed out its partial sample
            stream.pieces.append(delta)
            stream.tokens += tokens
            self._last_activity = now
            stop = stream.detector.feed(delta)
            if stop is None and finish_reason is None:
                if stream.gate is None or not stream.gate.terminates(stream.entropy.conf_min):
                    return None
                del self._streams[stream.request_id]  # DeepConf online: a full window fell under the threshold
                self._finish(stream.sample(stream.text, now - stream.submitted, "low_confidence"))
                return "low_confidence"
            del self._streams[stream.request_id]
            text = stream.text
            if stop is not None:
                self._finish(stream.sample(text[:stop], now - stream.submitted, "answer"), stream)
                return "answer" if finish_reason is None else None
            self._finish(stream.sample(text, now - stream.submitted, finish_reason), stream)
            return None

    def _finish(self, sample: Sample, stream: _Stream | None = None) -> None:
        """Queue a finished sample for poll (caller holds the lock). `stream`: it ended on its own, so its lowest
        window confidence counts towards its problem's threshold (errors do not)."""
        if stream is not None and stream.gate is not None and sample.finish_reason not in ("aborted", "error"):
            stream.gate.finished(stream.entropy.lowest)
        self._finished.append(sample)
        self._finished_cond.notify_all()

    def _died(self, error: BaseException) -> None:
        log.error("vllm engine: died (%r)", error)
        with self._lock:
            self._error = self._error or f"vllm engine core died: {error!r}"
            self._finished_cond.notify_all()

    # -- the solver's view ------------------------------------------------------------------------------------------

    def poll(self, timeout: float) -> list[Sample]:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            while not self._finished and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._finished_cond.wait(min(left, 1.0))  # wake now and then to notice a silent death
                if self._llm is not None and self._llm.errored:
                    self._error = self._error or "vllm engine core died"
            if self._finished:
                done, self._finished = self._finished, []
                return done
        self._check_alive()
        return []

    def abort(self, problem_id: str) -> list[Sample]:
        """Stop this problem's samples in vLLM. Returns the unfinished ones as "aborted" partial samples, plus any
        finished ones poll has not handed out yet (with their own finish_reason), so none leaks into the next
        problem's poll."""
        now = self.clock.now()
        with self._lock:
            streams = [s for s in self._streams.values() if s.request.problem_id == problem_id]
            for s in streams:
                del self._streams[s.request_id]
            self._gates.pop(problem_id, None)
            done = [s for s in self._finished if s.problem_id == problem_id]
            self._finished = [s for s in self._finished if s.problem_id != problem_id]
        aborted = [s.sample("".join(s.pieces), now - s.submitted, "aborted") for s in streams]
        for s in streams:
            if s.conversation is not None:
                s.conversation.stop()  # a tool call in progress ends now
        if streams and self._llm is not None and self._error is None:
            self.run_coroutine(self._llm.abort([s.request_id for s in streams]), timeout=self.stall_seconds)
        return done + aborted

    def progress(self) -> EngineProgress:
        now = self.clock.now()
        with self._lock:
            running = len(self._streams)
            tokens = sum(s.tokens for s in self._streams.values())
            since = now - self._last_activity if running else 0.0
        return EngineProgress(running=running, tokens_in_flight=tokens, seconds_since_token=since)
