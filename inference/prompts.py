"""Chat messages for each sample: prompt variants mixed across a problem's samples, an optional answer-range
reminder from the competition config, a length guard for absurd inputs, and the fitting of a prompt to the model's
context (the engines call `fit_prompt_ids` with their tokenizer)."""

from __future__ import annotations

from typing import Callable

from inference.answers import AnswerSpec
from inference.config import Prompts, PromptVariant


def variant_schedule(variants: list[PromptVariant], samples: int) -> list[PromptVariant]:
    """Which variant each sample gets: weights as shares, spread evenly (8:2 over 10 → A A A A B A A A A B)."""
    total = sum(v.weight for v in variants)
    if total <= 0:
        raise ValueError("prompts.variants: the weights must add up to more than 0")
    schedule, credit = [], [0.0] * len(variants)
    for _ in range(samples):
        # Smooth weighted round-robin: deterministic and proportional over any prefix of the samples.
        for i, v in enumerate(variants):
            credit[i] += v.weight
        best = max(range(len(variants)), key=lambda i: credit[i])
        credit[best] -= total
        schedule.append(variants[best])
    return schedule


def clip_problem(problem: str, max_chars: int) -> str:
    """Keep the head and tail of an over-long problem (the question is usually at the end)."""
    if len(problem) <= max_chars:
        return problem
    half = max_chars // 2
    return problem[:half] + "\n...\n" + problem[-half:]


def prompt_messages(problem: str, system_prompt: str | None) -> list[dict]:
    """The chat messages of one problem: the system prompt (if any), then the problem as the user turn. Serving
    (build_messages) and training (train/data.py: SFT, GRPO, held-out evaluation, quantize calibration) all build
    their prompts here, so a model is trained on the prompts it is served."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + [{"role": "user", "content": problem}]


def build_messages(problem: str, variant: PromptVariant, prompts: Prompts, spec: AnswerSpec) -> list[dict]:
    user = variant.user_prefix + clip_problem(problem, prompts.max_problem_chars) + variant.user_suffix
    if prompts.answer_reminder:
        user += " " + prompts.answer_reminder.format(min=spec.min, max=spec.max, modulus=spec.modulus)
    return prompt_messages(user, variant.system)


class PromptTooLong(ValueError):
    """Even with the problem cut to nothing the prompt leaves no room for an answer in the model's context."""


def fit_prompt_ids(messages: list[dict], render: Callable[[list[dict]], list[int]], context: int,
                   max_tokens: int) -> tuple[list[int], dict | None]:
    """The prompt's token ids, fitted to a `context`-token model: a prompt longer than the context less the room
    left for the answer (`max_tokens`, at most half the context) has the middle of its last message cut (the
    question's start and end kept, as `clip_problem` does) until it fits. Returns (ids, None) when nothing was cut,
    else (ids, {"prompt_tokens": before, "kept_tokens": after}); raises PromptTooLong when nothing fits."""
    ids = render(messages)
    reserve = max(1, min(max_tokens, context // 2))
    limit = context - reserve
    if len(ids) <= limit:
        return ids, None
    before, content = len(ids), str(messages[-1]["content"])
    keep = len(content)
    for _ in range(30):  # shrink in proportion; the chat template's own tokens make it converge from above
        keep = min(keep - 1, int(keep * limit / len(ids) * 0.95))
        if keep <= 0:
            break
        ids = render(messages[:-1] + [{**messages[-1], "content": clip_problem(content, keep)}])
        if len(ids) <= limit:
            return ids, {"prompt_tokens": before, "kept_tokens": len(ids)}
    raise PromptTooLong(f"prompt of {before} tokens is longer than the model's {context}-token context, even with "
                        f"the problem cut to nothing ({reserve} tokens kept for the answer)")
