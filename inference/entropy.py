"""Per-sample token entropy from top-k logprobs: the confidence signal of the AIMO-3 winners' vote.

The AIMO-3 notebooks asked vLLM for the top 5 logprobs of every generated token, took each token's entropy over
those 5 in bits, -Σ p·log2 p with p = exp(logprob) (not renormalized: the mass outside the top k is ignored), and
weighted each sample's vote by 1 / (mean entropy over its tokens). The 2nd place used the mean over the last N
tokens instead (the "tail window": how sure the model was while writing the answer). `EntropyMeter` keeps both as
tokens stream in; engines put `EntropyMeter.trace()` into each sample's trace (`entropy`, `entropy_tail`,
`entropy_tail_tokens`), and inference/voting.py turns them into vote weights.

DeepConf (arXiv 2508.15260) reads the same logprobs as token confidence, -(1/k) Σ logprob over the top k (high:
the model was sure), averaged over sliding windows of tokens. Fed logprobs (`add_logprobs`; vLLM's positions do it),
the meter also keeps a compact summary for the trace: the mean confidence of each block of `conf_window` tokens
(`conf_windows`), the lowest sliding-window mean (`conf_min`, DeepConf's "lowest group confidence") and the last
window's (`conf_tail`) - a few dozen numbers per sample, not every logprob.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Iterable, Mapping


def token_entropy(logprobs: Iterable[float]) -> float:
    """Entropy in bits of one token position over the given (top-k) logprobs: -Σ p·log2 p, p = exp(logprob)."""
    total = 0.0
    for logprob in logprobs:
        p = math.exp(logprob)
        if p > 0:
            total -= p * math.log2(p)
    return total


def top_logprobs(position: Mapping, k: int) -> list[float]:
    """The k largest logprobs of one position as vLLM returns it ({token id: Logprob}, or {token id: float}).

    vLLM adds the sampled token to the top k when it ranks lower, so a position can hold k + 1 entries: keep k."""
    values = [getattr(v, "logprob", v) for v in position.values()]
    return sorted(values, reverse=True)[:k]


class EntropyMeter:
    """Running mean token entropy of one sample, over all its tokens and over its last `tail_tokens` tokens."""

    def __init__(self, top_k: int, tail_tokens: int, conf_window: int = 256) -> None:
        if top_k < 1:
            raise ValueError(f"EntropyMeter: top_k must be ≥ 1, got {top_k}")
        if tail_tokens < 1:
            raise ValueError(f"EntropyMeter: tail_tokens must be ≥ 1, got {tail_tokens}")
        self.top_k = top_k
        self.tail_tokens = tail_tokens
        self.total = 0.0
        self.count = 0
        self.tail: deque[float] = deque(maxlen=tail_tokens)
        if conf_window < 1:
            raise ValueError(f"EntropyMeter: conf_window must be ≥ 1, got {conf_window}")
        self.conf_window = conf_window
        self._conf: deque[float] = deque(maxlen=conf_window)  # the sliding window of token confidences
        self._conf_sum = 0.0
        self.conf_min: float | None = None
        self.conf_blocks: list[float] = []
        self._block_sum, self._block_n = 0.0, 0

    def add(self, entropy: float) -> None:
        self.total += entropy
        self.count += 1
        self.tail.append(entropy)

    def add_logprobs(self, logprobs: list[float]) -> None:
        """One token from its top-k logprobs: its entropy and its DeepConf confidence."""
        self.add(token_entropy(logprobs))
        c = -sum(logprobs) / max(1, len(logprobs))
        if len(self._conf) == self.conf_window:
            self._conf_sum -= self._conf[0]
        self._conf.append(c)
        self._conf_sum += c
        if len(self._conf) == self.conf_window:  # a full window: DeepConf's group confidence
            mean = self._conf_sum / self.conf_window
            self.conf_min = mean if self.conf_min is None else min(self.conf_min, mean)
        self._block_sum += c
        self._block_n += 1
        if self._block_n == self.conf_window:
            self.conf_blocks.append(self._block_sum / self._block_n)
            self._block_sum, self._block_n = 0.0, 0

    def add_positions(self, positions: Iterable[Mapping | None]) -> None:
        """Add the tokens of one streamed delta (vLLM's `CompletionOutput.logprobs`: one mapping per token)."""
        for position in positions:
            if position:  # vLLM gives None for a position without logprobs (e.g. a prompt token)
                self.add_logprobs(top_logprobs(position, self.top_k))

    def confidence(self) -> dict:
        """The compact confidence summary (empty before any token came with logprobs)."""
        if not self._conf:
            return {}
        blocks = self.conf_blocks + ([self._block_sum / self._block_n] if self._block_n else [])
        tail = self._conf_sum / len(self._conf)
        return {"conf_window": self.conf_window, "conf_windows": [round(b, 4) for b in blocks],
                "conf_min": round(self.conf_min if self.conf_min is not None else tail, 4),
                "conf_tail": round(tail, 4)}

    @property
    def mean(self) -> float | None:
        """Mean entropy over every token; None before the first token."""
        return self.total / self.count if self.count else None

    @property
    def tail_mean(self) -> float | None:
        """Mean entropy over the last `tail_tokens` tokens (all of them if fewer); None before the first token."""
        return sum(self.tail) / len(self.tail) if self.tail else None

    def trace(self) -> dict:
        """The fields a sample's trace carries (inference/voting.py reads them)."""
        return {"entropy": self.mean, "entropy_tail": self.tail_mean, "entropy_tail_tokens": self.tail_tokens,
                **self.confidence()}
