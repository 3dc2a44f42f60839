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
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

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

log = logging.getLogger(__name__)


@dataclass
class _Job:
    """One sample: queued, then generating in a batch row. Shared by the worker and callers under the engine lock."""

    request: SampleRequest
    prompt_ids: list[int]
    max_tokens: int  # the request's, capped to fit the model's context
    submitted: float  # engine clock
    token_ids: list[int] = field(default_factory=list)
    done: bool = False  # finished or aborted: the worker ignores its row from then on
    text: str = ""  # decoded incrementally: token_ids[:read_offset]
    prefix_offset: int = 0  # token_ids[prefix_offset:read_offset] is the context the next token is decoded in
    read_offset: int = 0
    detector: StopDetector = field(init=False)  # the request's stop rule, fed every new piece of text

    def __post_init__(self) -> None:
        self.detector = StopDetector(self.request.stop_rule)

    def sample(self, text: str, seconds: float, finish_reason: str) -> Sample:
        r = self.request
        return Sample(r.problem_id, r.sample, text, len(self.token_ids), seconds, finish_reason, variant=r.variant,
                      seed=r.seed, extra={"prompt_tokens": len(self.prompt_ids)})


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(
        self,
        model: str,
        clock: RealClock | VirtualClock | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
    ) -> None:
        """`device`: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...; `dtype`: "auto" (the
        checkpoint's on GPU, float32 on CPU), "bfloat16", "float16" or "float32"; `batch_size`: rows per generate."""
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
        self._model = None
        self._tokenizer = None
        self._context = 0  # max positions of the model
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # new work for the worker, or finished samples for poll
        self._queue: list[_Job] = []  # submitted, not yet in a batch
        self._active: list[_Job] = []  # rows of the running batch
        self._finished: list[Sample] = []
        self._last_activity = 0.0
        self._stopping = False
        self._error: str | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._model is not None:
            return
        t0 = time.monotonic()
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
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=60)
            self._worker = None
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
            if key not in rendered:
                prompt = self._tokenizer.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
                rendered[key] = self._tokenizer.encode(prompt, add_special_tokens=False)
            prompt_ids = rendered[key]
            if len(prompt_ids) >= self._context:
                raise ValueError(f"problem {req.problem_id}: prompt of {len(prompt_ids)} tokens does not fit the "
                                 f"model's context of {self._context} tokens")
            # Like vLLM at max_model_len: a sample that reaches the end of the context ends with "length".
            max_tokens = min(req.max_tokens, self._context - len(prompt_ids))
            jobs.append(_Job(req, prompt_ids, max_tokens, self.clock.now()))
        with self._lock:
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
            done = [s for s in self._finished if s.problem_id == problem_id]
            self._finished = [s for s in self._finished if s.problem_id != problem_id]
            token_lists = [list(j.token_ids) for j in jobs]
        tokenizer = self._tokenizer
        return done + [
            job.sample(tokenizer.decode(ids, skip_special_tokens=True) if tokenizer else "", now - job.submitted,
                       "aborted")
            for job, ids in zip(jobs, token_lists)
        ]

    def progress(self) -> EngineProgress:
        now = self.clock.now()
        with self._lock:
            running = [j for j in self._queue + self._active if not j.done]
            since = now - self._last_activity if running else 0.0
            return EngineProgress(running=len(running), tokens_in_flight=sum(len(j.token_ids) for j in running),
                                  seconds_since_token=since)

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
        """Account one generated token per row; finish rows that ended. Returns which rows are done."""
        now = self.clock.now()
        finished = []
        with self._lock:
            for job, token in zip(batch, new_tokens):
                if job.done:
                    continue
                job.token_ids.append(token)
                self._last_activity = now
                reason = None
                if token in eos:
                    reason = "stop"
                elif len(job.token_ids) >= job.max_tokens:
                    reason = "length"
                stop = job.detector.feed(self._decode_new(job))
                if stop is not None:
                    text, reason = job.text[:stop], "answer"
                elif reason:
                    text = self._tokenizer.decode(job.token_ids, skip_special_tokens=True)
                if reason:
                    job.done = True
                    finished.append(job.sample(text, now - job.submitted, reason))
            if finished:
                self._finished.extend(finished)
                self._wake.notify_all()
            return [job.done or self._stopping for job in batch]


    def _decode_new(self, job: _Job) -> str:
        """The text the newest token(s) added. Decoding them alone loses the leading space some tokenizers strip and
        splits multi-byte characters, so they are decoded after a few tokens of context and the context's own text
        is subtracted; an unfinished character ("\ufffd") waits for the next token."""
        ids = job.token_ids
        context = self._tokenizer.decode(ids[job.prefix_offset:job.read_offset], skip_special_tokens=True)
        both = self._tokenizer.decode(ids[job.prefix_offset:], skip_special_tokens=True)
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
        self.generators = [torch.Generator(device=device).manual_seed(j.request.seed) for j in batch]

    def __call__(self, input_ids, scores):
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
