"""Per-sample token entropy from top-k logprobs: the confidence signal of the AIMO-3 winners' vote.

The AIMO-3 notebooks asked vLLM for the top 5 logprobs of every generated token, took each token's entropy over
those 5 in bits, -Σ p·log2 p with p = exp(logprob) (not renormalized: the mass outside the top k is ignored), and
weighted each sample's vote by 1 / (mean entropy over its tokens). The 2nd place used the mean over the last N
tokens instead (the "tail window": how sure the model was while writing the answer). `EntropyMeter` keeps both as
tokens stream in; engines put `EntropyMeter.trace()` into each sample's trace (`entropy`, `entropy_tail`,
`entropy_tail_tokens`), and inference/voting.py turns them into vote weights.
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

    def __init__(self, top_k: int, tail_tokens: int) -> None:
        if top_k < 1:
            raise ValueError(f"EntropyMeter: top_k must be ≥ 1, got {top_k}")
        if tail_tokens < 1:
            raise ValueError(f"EntropyMeter: tail_tokens must be ≥ 1, got {tail_tokens}")
        self.top_k = top_k
        self.tail_tokens = tail_tokens
        self.total = 0.0
        self.count = 0
        self.tail: deque[float] = deque(maxlen=tail_tokens)

    def add(self, entropy: float) -> None:
        self.total += entropy
        self.count += 1
        self.tail.append(entropy)

    def add_positions(self, positions: Iterable[Mapping | None]) -> None:
        """Add the tokens of one streamed delta (vLLM's `CompletionOutput.logprobs`: one mapping per token)."""
        for position in positions:
            if position:  # vLLM gives None for a position without logprobs (e.g. a prompt token)
                self.add(token_entropy(top_logprobs(position, self.top_k)))

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
        return {"entropy": self.mean, "entropy_tail": self.tail_mean, "entropy_tail_tokens": self.tail_tokens}
