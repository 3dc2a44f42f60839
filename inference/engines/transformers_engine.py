"""A slower engine on plain transformers `generate`, for machines without vLLM and for debugging.

Same semantics as the vLLM engine (inference/engines/vllm_engine.py): one seed per sample, the request's stop rule
applied while streaming, abort stops generation, progress shows tokens as they come. How:

- A background worker thread runs `model.generate` on batches of up to `batch_size` queued samples that share
  sampling settings (temperature, top_p, min_p), left-padded. Samples submitted while a batch runs wait for the
  next batch (no continuous batching: that is what vLLM is for).
- Per-sample seeds inside a batch: `generate` has one global random generator, so sampling is done by a logits
  processor instead — transformers' own temperature / top-p / min-p warpers, then one draw per row from that
  sample's own `torch.Generator` — and `generate` runs greedy over the result. A sample's text then depends only on
  its seed and prompt; batch composition changes it only through tiny float differences of padded matrix products.
- A StoppingCriteria called after every step counts each row's tokens, decodes the new token's text incrementally
  (a window of the last tokens, as vLLM's detokenizer does, so a step costs the same at token 10 and 10,000), feeds
  it to the row's stop rule (`inference.answers.StopDetector`), ends rows that hit their own max_tokens, EOS or an
  abort, and hands finished samples to `poll` right away.
- DeepConf online (`confidence_stop` on the requests, with logprobs): the row's sliding-window token confidence is
  tested against its problem's `inference.entropy.ConfidenceGate` at every step; under the threshold the row ends
  with reason "low_confidence".
- Tools (inference/tools.py): a row that ends at the chat format's tool-call stop string leaves its batch; a tool
  thread runs the call in the sandbox and queues the sample's next turn (prompt + turn + framed output) as a new job.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from inference.answers import StopDetector
from inference.clock import RealClock, VirtualClock
from inference.engines.base import Engine, EngineError, EngineProgress, Sample, SampleRequest
from inference.entropy import ConfidenceGate, EntropyMeter
from inference.formats import get_format
from inference.prompts import fit_prompt_ids
from inference.tools import Conversation, ToolSettings, start_tools, stop_tools

log = logging.getLogger(__name__)


@dataclass
class _Job:
    """One sample: queued, then generating in a batch row. Shared by the worker and callers under the engine lock."""

    request: SampleRequest
    prompt_ids: list[int]
    max_tokens: int  # the request's, capped to fit the model's context (with tools: what is left for this turn)
    submitted: float  # engine clock (of the sample, not of this turn)
    token_ids: list[int] = field(default_factory=list)
    done: bool = False  # finished or aborted: the worker ignores its row from then on
    text: str = ""  # decoded incrementally: token_ids[:read_offset]
    prefix_offset: int = 0  # token_ids[prefix_offset:read_offset] is the context the next token is decoded in
    read_offset: int = 0
    detector: StopDetector = field(init=False)  # the request's stop rule, fed every new piece of text
    conversation: Conversation | None = None  # with tools: the sample's earlier turns
    seed: int | None = None  # this turn's seed (the request's, shifted per turn)
    format: Any = None  # the engine's ChatFormat: the sample's text is its answer_text of the completion
    entropy: EntropyMeter | None = None  # when the request asked for logprobs (kept across turns)
    gate: ConfidenceGate | None = None  # the problem's DeepConf threshold, with confidence_stop (shared)

    def __post_init__(self) -> None:
        self.detector = StopDetector(self.request.stop_rule)

    def sample(self, text: str, seconds: float, finish_reason: str, now: float | None = None) -> Sample:
        """`text` is this turn's text; with tools the sample's text is the whole conversation."""
        r, conv = self.request, self.conversation
        entropy = self.entropy.trace() if self.entropy is not None else {}
        if conv is None:
            if self.format is not None:
                text = self.format.answer_text(text, [self.token_ids])
            return Sample(r.problem_id, r.sample, text, len(self.token_ids), seconds, finish_reason,
                          variant=r.variant, seed=r.seed, extra={"prompt_tokens": len(self.prompt_ids), **entropy})
        extra = {"prompt_tokens": conv.first_prompt_tokens, **entropy,
                 **conv.trace(text, len(self.token_ids), now if now is not None else self.submitted + seconds)}
        # The answer from the ids the model generated: the tool outputs in conv.text are no answer.
        return Sample(r.problem_id, r.sample, conv.format.answer_text(conv.text + text,
                                                                      conv.turn_token_ids + [self.token_ids]),
                      conv.tokens + len(self.token_ids), seconds, finish_reason, variant=r.variant, seed=r.seed,
                      extra=extra)


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(
        self,
        model: str,
        clock: RealClock | VirtualClock | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        chat_format: str = "r1",
        format_options: dict | None = None,
        tools: ToolSettings | None = None,
    ) -> None:
        """`device`: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...; `dtype`: "auto" (the
        checkpoint's on GPU, float32 on CPU), "bfloat16", "float16" or "float32"; `batch_size`: rows per generate;
        `chat_format` + `format_options`: inference.formats; `tools`: the tool loop (off unless `tools.enabled`)."""
        super().__init__(clock)
        if getattr(self.clock, "virtual", False):
            raise ValueError("clock: the transformers engine runs in real time; a VirtualClock works only with replay")
        if dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"dtype: {dtype!r} is not one of auto, bfloat16, float16, float32")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size: must be ≥ 1, got {batch_size}")
        self.model_path = str(model)
        self.device = device
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.format = get_format(chat_format, **(format_options or {}))
        self.tools = tools if tools is not None and tools.enabled else None
        self._pool = None  # sandbox interpreters, with tools
        self._tool_threads: ThreadPoolExecutor | None = None
        self._tooling: list[_Job] = []  # jobs whose turn ended at a tool call that is running
        self._model = None
        self._tokenizer = None
        self._context = 0  # max positions of the model
        self.prompt_cuts: dict[str, dict] = {}  # problem id → prompt tokens before and after fitting to the context
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # new work for the worker, or finished samples for poll
        self._queue: list[_Job] = []  # submitted, not yet in a batch
        self._active: list[_Job] = []  # rows of the running batch
        self._finished: list[Sample] = []
        self._gates: dict[str, ConfidenceGate] = {}  # problem id → its DeepConf threshold (confidence_stop)
        self._last_activity = 0.0
        self._stopping = False
        self._error: str | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._model is not None:
            return
        t0 = time.monotonic()
        if self.tools is not None and self._pool is None:  # interpreters start in the background while the model loads
            self._pool, self._tool_threads = start_tools(self.tools)
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.dtype == "auto":
            dtype = "auto" if device.startswith("cuda") else torch.float32
        else:
            dtype = getattr(torch, self.dtype)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            self._model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype).to(device).eval()
        except Exception as e:
            self._model = self._tokenizer = None
            raise EngineError(f"transformers engine failed to load {self.model_path}: {e!r}") from e
        self._context = getattr(self._model.config, "max_position_embeddings", None) or 1 << 30
        self._stopping, self._error = False, None
        self._worker = threading.Thread(target=self._work, name="transformers-engine", daemon=True)
        self._worker.start()
        log.info("transformers engine: loaded %s on %s in %.1fs", self.model_path, device, time.monotonic() - t0)

    def shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            for job in self._active:
                job.done = True  # ends the running generate at its next step
            self._queue.clear()
            self._finished.clear()
            self._gates.clear()
            tooling, self._tooling = self._tooling, []
            self._wake.notify_all()
        for job in tooling:
            job.conversation.stop()
        if self._worker is not None:
            self._worker.join(timeout=60)
            self._worker = None
        stop_tools(self._pool, self._tool_threads)
        self._pool = self._tool_threads = None
        self._model = self._tokenizer = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _check_alive(self) -> None:
        if self._model is None:
            raise EngineError("transformers engine is not started")
        if self._error is None and (self._worker is None or not self._worker.is_alive()):
            self._error = "transformers engine worker thread stopped"
        if self._error is not None:
            raise EngineError(self._error)

    # -- the solver's view ------------------------------------------------------------------------------------------

    def submit(self, requests: Sequence[SampleRequest]) -> None:
        self._check_alive()
        rendered: dict[str, list[int]] = {}
        jobs = []
        for req in requests:
            key = repr(req.messages)
            if key not in rendered:  # a prompt longer than the context has its middle cut (prompts.fit_prompt_ids)
                rendered[key], cut = fit_prompt_ids(req.messages, lambda m: self.format.prompt_ids(m, self._tokenizer),
                                                    self._context, req.max_tokens)
                if cut is not None:
                    self.prompt_cuts[req.problem_id] = cut
            prompt_ids = rendered[key]
            # Like vLLM at max_model_len: a sample that reaches the end of the context ends with "length".
            max_tokens = min(req.max_tokens, self._context - len(prompt_ids))
            now = self.clock.now()
            conversation = None
            if self.tools is not None:
                conversation = Conversation(self.format, self.tools, self._pool, prompt_ids, now)
            jobs.append(_Job(req, prompt_ids, max_tokens, now, conversation=conversation, seed=req.seed,
                             format=self.format,
                             entropy=EntropyMeter(req.logprobs, req.entropy_tail_tokens, req.confidence_window)
                             if req.logprobs else None))
        with self._lock:
            for job in jobs:
                req = job.request
                if job.entropy is not None and req.confidence_stop is not None:
                    if req.problem_id not in self._gates:
                        self._gates[req.problem_id] = ConfidenceGate(req.confidence_stop, req.confidence_warmup)
                    job.gate = self._gates[req.problem_id]
            self._queue.extend(jobs)
            if jobs:
                self._last_activity = jobs[-1].submitted
            self._wake.notify_all()

    def poll(self, timeout: float) -> list[Sample]:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            while not self._finished and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(min(left, 1.0))
            if self._finished:
                done, self._finished = self._finished, []
                return done
        self._check_alive()
        return []

    def abort(self, problem_id: str) -> list[Sample]:
        """Unfinished samples of this problem as "aborted" partials, plus finished ones poll has not handed out yet."""
        now = self.clock.now()
        with self._lock:
            jobs = [j for j in self._queue + self._active if j.request.problem_id == problem_id and not j.done]
            for job in jobs:
                job.done = True  # the stopping criteria ends its row at the next step
            self._queue = [j for j in self._queue if not j.done]
            tooling = [j for j in self._tooling if j.request.problem_id == problem_id]
            self._tooling = [j for j in self._tooling if j.request.problem_id != problem_id]
            done = [s for s in self._finished if s.problem_id == problem_id]
            self._finished = [s for s in self._finished if s.problem_id != problem_id]
            self._gates.pop(problem_id, None)
            token_lists = [list(j.token_ids) for j in jobs]
        for job in tooling:
            job.conversation.stop()  # a call in progress ends now; its thread drops the sample
        tokenizer = self._tokenizer
        aborted = [
            job.sample(tokenizer.decode(ids, skip_special_tokens=self.format.skip_special_tokens) if tokenizer else "",
                       now - job.submitted, "aborted", now)
            for job, ids in zip(jobs + tooling, token_lists + [[] for _ in tooling])
        ]
        for job in jobs + tooling:
            self._release(job)
        return done + aborted

    def progress(self) -> EngineProgress:
        now = self.clock.now()
        with self._lock:
            running = [j for j in self._queue + self._active if not j.done]
            # A sample waiting for its tool call is running too; the time it waits is not a stall.
            since = now - self._last_activity if running else 0.0
            return EngineProgress(running=len(running) + len(self._tooling),
                                  tokens_in_flight=sum(len(j.token_ids) + (j.conversation.tokens if j.conversation
                                                                           else 0) for j in running + self._tooling),
                                  seconds_since_token=since if not self._tooling else 0.0)

    # -- the worker -------------------------------------------------------------------------------------------------

    def _next_batch(self) -> list[_Job] | None:
        """Wait for queued jobs; take up to batch_size that share the first one's sampling settings."""
        with self._lock:
            while not self._queue and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return None

            def settings(j: _Job):
                return j.request.temperature, j.request.top_p, j.request.min_p

            first = settings(self._queue[0])
            batch = [j for j in self._queue if settings(j) == first][: self.batch_size]
            self._queue = [j for j in self._queue if j not in batch]
            self._active = batch
            return batch

    def _work(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._generate(batch)
                with self._lock:
                    self._active = []
        except Exception as e:  # noqa: BLE001 - reported to the solver through poll/submit as EngineError
            log.exception("transformers engine: generation failed")
            with self._lock:
                self._error = f"transformers engine crashed: {e!r}"
                self._active = []
                self._wake.notify_all()

    def _generate(self, batch: list[_Job]) -> None:
        tokenizer, model = self._tokenizer, self._model
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(len(j.prompt_ids) for j in batch)
        # Left padding, so every row's next token is at the end.
        input_ids = torch.tensor([[pad] * (width - len(j.prompt_ids)) + j.prompt_ids for j in batch])
        attention = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in batch])
        config = GenerationConfig(
            do_sample=False,  # sampling happens in _SeededSampling; greedy then takes its pick
            max_new_tokens=max(j.max_tokens for j in batch),
            pad_token_id=pad,
            eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
        )
        with torch.inference_mode():
            model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention.to(model.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([_SeededSampling(batch, model.device)]),
                stopping_criteria=StoppingCriteriaList([_Streaming(self, batch, width, config.eos_token_id)]),
            )

    def _step(self, batch: list[_Job], new_tokens: list[int], eos: set[int]) -> list[bool]:
        """Account one generated token per row; finish rows that ended or hand them to a tool call. Returns which
        rows are done."""
        now = self.clock.now()
        finished, calls = [], []
        skip = self.format.skip_special_tokens
        with self._lock:
            for job, token in zip(batch, new_tokens):
                if job.done:
                    continue
                job.token_ids.append(token)
                self._last_activity = now
                reason = None
                # gpt-oss lists its tool-call token <|call|> among its EOS ids: with tools it ends a turn, not the sample
                if token in eos and not (job.conversation is not None and token in self.format.stop_token_ids):
                    reason = "stop"
                elif len(job.token_ids) >= job.max_tokens:
                    reason = "length"
                new = self._decode_new(job)
                stop = job.detector.feed(new)  # with tools: an index into the whole conversation's text
                before = len(job.conversation.text) if job.conversation is not None else 0
                tool_stop = job.conversation is not None and reason != "stop" and (
                    token in self.format.stop_token_ids or any(job.text.endswith(s) for s in self.format.stop_strings))
                if stop is not None:
                    text, reason = job.text[: max(0, stop - before)], "answer"
                elif tool_stop:
                    job.done = True  # the row leaves this batch; the tool thread queues the next turn
                    self._tooling.append(job)
                    calls.append((job, self._tokenizer.decode(job.token_ids, skip_special_tokens=skip)))
                    continue
                elif reason:
                    text = self._tokenizer.decode(job.token_ids, skip_special_tokens=skip)
                elif job.gate is not None and job.gate.terminates(job.entropy.conf_min):
                    # DeepConf online: a full window fell under the problem's threshold
                    text, reason = self._tokenizer.decode(job.token_ids, skip_special_tokens=skip), "low_confidence"
                if reason:
                    job.done = True
                    if job.gate is not None and reason != "low_confidence":  # ended on its own: a warmup sample
                        job.gate.finished(job.entropy.lowest)
                    finished.append(job.sample(text, now - job.submitted, reason, now))
                    self._release(job)
            if finished:
                self._finished.extend(finished)
                self._wake.notify_all()
            for job, turn in calls:
                self._tool_threads.submit(self._tool_turn, job, turn, now)
            return [job.done or self._stopping for job in batch]

    def _tool_turn(self, job: _Job, turn: str, ended: float) -> None:
        """On a tool thread: close the turn, run its call, queue the sample's next turn (or finish it)."""
        conv = job.conversation
        try:
            with self._lock:
                if job not in self._tooling:
                    return  # aborted
                turn_ids, job.token_ids = job.token_ids, []
                action = conv.end_turn(turn, turn_ids, ended, job.request.max_tokens)
            if action == "tool":
                framed = conv.run_call()  # blocking, ≤ the tool timeout; abort() stops it early
                job.detector.feed(framed)  # the stop rule reads the whole conversation
            now = self.clock.now()
            with self._lock:
                if job not in self._tooling:
                    return  # aborted during the call
                self._tooling.remove(job)
                prompt_ids = conv.next_prompt_ids(self._tokenizer, now) if action != "done" else []
                left = min(job.request.max_tokens - conv.tokens, self._context - len(prompt_ids))
                if action == "done" or left <= 0:
                    if job.gate is not None:
                        job.gate.finished(job.entropy.lowest)
                    self._finished.append(job.sample("", now - job.submitted, conv.finish_reason or "length", now))
                    self._release(job)
                else:
                    turn = _Job(job.request, prompt_ids, left, job.submitted, conversation=conv,
                                seed=job.request.seed + conv.turn, format=job.format, entropy=job.entropy,
                                gate=job.gate)
                    turn.detector = job.detector
                    self._queue.append(turn)
                self._last_activity = now
                self._wake.notify_all()
        except Exception as e:  # noqa: BLE001 - a failed tool turn fails this sample, not the engine
            log.exception("transformers engine: tool turn of %s/%s failed", job.request.problem_id, job.request.sample)
            with self._lock:
                if job in self._tooling:
                    self._tooling.remove(job)
                    failed = job.sample("", self.clock.now() - job.submitted, "error")
                    failed.extra["error"] = repr(e)
                    self._finished.append(failed)
                    self._wake.notify_all()
            self._release(job)

    def _release(self, job: _Job) -> None:
        """The sample is over: reset its interpreter and return it to the pool, on a tool thread."""
        if job.conversation is None:
            return
        try:
            self._tool_threads.submit(job.conversation.close)
        except (RuntimeError, AttributeError):  # shut down meanwhile
            job.conversation.close()


    def _decode_new(self, job: _Job) -> str:
        """The text the newest token(s) added. Decoding them alone loses the leading space some tokenizers strip and
        splits multi-byte characters, so they are decoded after a few tokens of context and the context's own text
        is subtracted; an unfinished character ("\ufffd") waits for the next token."""
        ids = job.token_ids
        skip = self.format.skip_special_tokens
        context = self._tokenizer.decode(ids[job.prefix_offset:job.read_offset], skip_special_tokens=skip)
        both = self._tokenizer.decode(ids[job.prefix_offset:], skip_special_tokens=skip)
        if len(both) <= len(context) or both.endswith("\ufffd"):
            return ""
        new = both[len(context):]
        job.text += new
        job.prefix_offset, job.read_offset = job.read_offset, len(ids)
        return new


class _SeededSampling(LogitsProcessor):
    """Logits processor: sample each row with its own seeded generator; returns scores that are -inf everywhere but
    the drawn token, so greedy search picks it. Temperature 0 leaves the scores alone (plain greedy)."""

    def __init__(self, batch: list[_Job], device) -> None:
        r = batch[0].request  # a batch shares its sampling settings
        self.greedy = r.temperature <= 0
        self.warpers = LogitsProcessorList()
        if not self.greedy:
            self.warpers.append(TemperatureLogitsWarper(r.temperature))
            if r.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(r.top_p))
            if r.min_p > 0.0:
                self.warpers.append(MinPLogitsWarper(r.min_p))
        self.generators = [torch.Generator(device=device).manual_seed(j.seed) for j in batch]
        self.batch = batch

    def __call__(self, input_ids, scores):
        for row, job in enumerate(self.batch):  # the entropy vote: top-k of the raw distribution, as vLLM's logprobs
            if job.entropy is not None and not job.done:
                top = torch.log_softmax(scores[row].float(), dim=-1).topk(job.entropy.top_k).values
                job.entropy.add_logprobs(top.tolist())  # entropy and DeepConf confidence
        if self.greedy:
            return scores
        probs = torch.softmax(self.warpers(input_ids, scores), dim=-1)
        picked = torch.full_like(scores, float("-inf"))
        for row, generator in enumerate(self.generators):
            token = torch.multinomial(probs[row], 1, generator=generator)
            picked[row, token] = 0.0
        return picked


class _Streaming(StoppingCriteria):
    """Stopping criteria called after every step with the sequences so far: streams each row's newest token to the
    engine, which decides per row whether it is done (EOS, max_tokens, stop rule, abort, shutdown)."""

    def __init__(self, engine: TransformersEngine, batch: list[_Job], prompt_width: int, eos) -> None:
        self.engine, self.batch, self.prompt_width = engine, batch, prompt_width
        self.eos = set(eos) if isinstance(eos, (list, tuple)) else {eos}

    def __call__(self, input_ids, scores, **kwargs):
        new_tokens = input_ids[:, -1].tolist()
        done = self.engine._step(self.batch, new_tokens, self.eos)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
