"""GRPO rewards of the paper (format, cosine-scaled correctness, length penalty), with TRL's reward signature, and
the name → reward registry the GRPO recipes pick from (`reward_funcs: [format, cosine, length]`).

TRL calls each reward as `f(prompts=..., completions=..., completion_ids=..., solution=..., trainer_state=..., ...)`
(every dataset column is passed by name) and wants one float per completion; `None` means "no opinion" and TRL
leaves that completion out of this reward. The rows of one prompt's group of generations arrive together.

Grading goes through inference.grading.grade, so training rewards exactly what the server's vote counts.

Fixes over the seed's finetune/grpo_rewards.py:
- lengths are completion TOKENS (`completion_ids`), not characters, so they match `max_completion_length`;
- an unparseable gold answer gives None (skip), never "correct";
- the Kimi-1.5 length penalty is computed within each prompt's group, not across the different problems that
  happen to share a call.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from inference.answers import last_boxed
from inference.grading import grade

THINK_END = "</think>"


def completion_text(completion) -> str:
    """The generated text: TRL passes `[{"role": "assistant", "content": text}]` for chat prompts, else a str."""
    if isinstance(completion, str):
        return completion
    return completion[0]["content"]


@functools.lru_cache(maxsize=1024)
def _grade(text: str, gold: str) -> bool | None:
    """inference.grading.grade, remembered: the cosine and length rewards grade the same completions each step."""
    return grade(text, gold)


def correctness(completions: list, solution: list[str]) -> list[bool | None]:
    """Whether each completion's final answer equals its gold; None where the gold cannot be parsed."""
    return [_grade(completion_text(c), gold) for c, gold in zip(completions, solution, strict=True)]


# --- rewards --------------------------------------------------------------------------------------------------------


def format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 when a non-empty \\boxed{} answer appears before `</think>` (the seed's `format2`), else 0.0.

    Committing the answer inside the thinking block lets inference stop at `</think>`.
    """
    rewards = []
    for completion in completions:
        text = completion_text(completion)
        end = text.find(THINK_END)
        boxed = last_boxed(text[:end]) if end >= 0 else None
        rewards.append(1.0 if boxed and boxed.strip() else 0.0)
    return rewards


def accuracy_reward(completions: list, solution: list[str], **kwargs) -> list[float | None]:
    """1.0 if the final answer is right, 0.0 if wrong, None if the gold is unparseable."""
    return [None if ok is None else float(ok) for ok in correctness(completions, solution)]


class CosineScaledReward:
    """Correctness scaled by token length on a cosine schedule ("Demystifying Long CoT", as in trl.rewards).

    progress = min(tokens / max_len, 1); a correct answer earns from `max_value_correct` (empty) down to
    `min_value_correct` (at max_len); a wrong one from `min_value_wrong` (empty: the most negative, so quick guesses
    are punished hardest) up to `max_value_wrong` (at max_len). The seed's values (1.0, 0.1, -1.0, -0.1) are the
    defaults. A class rather than a closure so it pickles like TRL's own rewards.
    """

    __name__ = "cosine_scaled_reward"

    def __init__(
        self,
        max_len: int,
        min_value_wrong: float = -1.0,
        max_value_wrong: float = -0.1,
        min_value_correct: float = 0.1,
        max_value_correct: float = 1.0,
    ):
        if max_len <= 0:
            raise ValueError(f"cosine_max_len must be positive, got {max_len}")
        self.max_len = max_len
        self.min_value_wrong, self.max_value_wrong = min_value_wrong, max_value_wrong
        self.min_value_correct, self.max_value_correct = min_value_correct, max_value_correct

    def __call__(self, completions: list, solution: list[str], completion_ids: list[list[int]], **kwargs):
        rewards = []
        for ok, ids in zip(correctness(completions, solution), completion_ids, strict=True):
            if ok is None:
                rewards.append(None)
                continue
            # Clamped: past max_len the cosine would climb back up and reward rambling.
            cosine = math.cos(min(len(ids) / self.max_len, 1.0) * math.pi)
            # (value at max_len, value at length 0)
            at_long, at_short = (
                (self.min_value_correct, self.max_value_correct) if ok else (self.max_value_wrong, self.min_value_wrong)
            )
            rewards.append(at_long + 0.5 * (at_short - at_long) * (1.0 + cosine))
        return rewards


def length_reward(
    completions: list, solution: list[str], completion_ids: list[list[int]], prompts: list, **kwargs
) -> list[float | None]:
    """Kimi k1.5 length penalty, within each prompt's group of generations.

    For the group's token lengths L: λ = 0.5 − (L − min L) / (max L − min L), in [−0.5, 0.5]. A correct completion
    earns λ (the shortest +0.5, the longest −0.5); a wrong one min(0, λ), so being short never helps a wrong answer.
    All lengths equal → 0. Unparseable gold → None for the whole group.
    """
    ok = correctness(completions, solution)
    lengths = [len(ids) for ids in completion_ids]
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(repr(prompt), []).append(i)  # identical prompts = the same problem's group

    rewards: list[float | None] = [None] * len(completions)
    for rows in groups.values():
        shortest, longest = min(lengths[i] for i in rows), max(lengths[i] for i in rows)
        for i in rows:
            if ok[i] is None:
                continue
            if longest == shortest:
                rewards[i] = 0.0
                continue
            lam = 0.5 - (lengths[i] - shortest) / (longest - shortest)
            rewards[i] = lam if ok[i] else min(0.0, lam)
    return rewards


# --- registry -------------------------------------------------------------------------------------------------------


def _soft_overlong(args) -> Callable:
    from trl.rewards import get_soft_overlong_punishment

    return get_soft_overlong_punishment(args.max_completion_length, args.soft_overlong_cache)


def _repetition(args) -> Callable:
    from trl.rewards import get_repetition_penalty_reward

    return get_repetition_penalty_reward(args.repetition_ngram_size, args.repetition_max_penalty)


# name → factory(args); `args` has the cosine_*/soft_overlong_*/repetition_* fields of train.configs.GRPOScriptArguments
# and `max_completion_length`.
REWARDS: dict[str, Callable] = {
    "format": lambda args: format_reward,
    "accuracy": lambda args: accuracy_reward,
    "cosine": lambda args: CosineScaledReward(
        max_len=args.cosine_max_len or args.max_completion_length,
        min_value_wrong=args.cosine_min_value_wrong,
        max_value_wrong=args.cosine_max_value_wrong,
        min_value_correct=args.cosine_min_value_correct,
        max_value_correct=args.cosine_max_value_correct,
    ),
    "length": lambda args: length_reward,
    "soft_overlong": _soft_overlong,  # trl.rewards (DAPO)
    "repetition": _repetition,  # trl.rewards (token n-grams)
}


def get_reward_funcs(names: list[str], args) -> list[Callable]:
    """The reward functions for `names`, parameterised from `args`."""
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(f"reward_funcs: unknown reward(s) {unknown}; known: {sorted(REWARDS)}")
    return [REWARDS[name](args) for name in names]
