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

DeepConf online termination is `ConfidenceGate`, one per problem, the same code in every engine: once `warmup` of
the problem's samples finished on their own, the threshold is the `quantile` of their lowest window confidence
(`confidence_threshold`), and a sample whose lowest window confidence so far falls below it is terminated (the
engines finish it with reason "low_confidence"; the solver gives it no vote). The live engines test the lowest
sliding window while tokens stream; the replay engine tests the recorded blocks (`conf_windows`).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Iterable, Mapping, Sequence


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


def confidence_threshold(lowest: Sequence[float], quantile: float) -> float:
    """DeepConf's online threshold: the `quantile` of the warmup samples' lowest window confidences, by rank from
    below (sorted[int(quantile · n)], the last one at most)."""
    if not lowest:
        raise ValueError("confidence_threshold: no warmup confidences")
    ordered = sorted(lowest)
    return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


class ConfidenceGate:
    """DeepConf online termination for one problem: the threshold from its first `warmup` finished samples, and
    whether a running sample falls below it. Pure bookkeeping: engines call it under their own lock."""

    def __init__(self, quantile: float, warmup: int) -> None:
        if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 < quantile < 1:
            raise ValueError(f"confidence_stop must be in (0, 1), got {quantile!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"confidence_warmup must be an integer ≥ 1, got {warmup!r}")
        self.quantile, self.warmup = quantile, warmup
        self.lowest: list[float] = []  # lowest window confidence of each warmup sample, in finishing order
        self.threshold: float | None = None

    def finished(self, lowest: float | None) -> bool:
        """A sample finished on its own (not terminated, not aborted) with this lowest window confidence (None:
        no logprobs, not counted). True when it completed the warmup: the threshold holds from now on."""
        if lowest is None or self.threshold is not None:
            return False
        self.lowest.append(float(lowest))
        if len(self.lowest) < self.warmup:
            return False
        self.threshold = confidence_threshold(self.lowest, self.quantile)
        return True

    def terminates(self, confidence: float | None) -> bool:
        """Whether a sample whose (lowest) window confidence is `confidence` ends now; never before the warmup."""
        return self.threshold is not None and confidence is not None and confidence < self.threshold


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
    def lowest(self) -> float | None:
        """The sample's lowest window confidence (`conf_min` unrounded; the mean of all its tokens while it is
        shorter than a window); None before any token came with logprobs."""
        if not self._conf:
            return None
        return self.conf_min if self.conf_min is not None else self._conf_sum / len(self._conf)

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
