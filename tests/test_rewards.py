"""GRPO rewards on literal completions with exact expected values.

    .venv/bin/python -m pytest tests/test_rewards.py -q
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from train.rewards import (
    REWARDS,
    CosineScaledReward,
    accuracy_reward,
    format_reward,
    get_reward_funcs,
    length_reward,
)

GOOD = "<think>\n1+2+0=3\n\\boxed{3}\n</think>\nThe answer is \\boxed{3}."


def chat(text: str) -> list[dict]:
    """A completion as TRL passes it for conversational prompts."""
    return [{"role": "assistant", "content": text}]


def test_format_reward_wants_a_boxed_answer_before_the_end_of_thinking():
    completions = [
        GOOD,
        "<think>\n1+2+0=3\n</think>\nThe answer is \\boxed{3}.",  # boxed only after </think>
        "<think>\n1+2+0=3\n\\boxed{3}",  # no </think>: thinking never ended
        "<think>\\boxed{}</think>",  # empty box
        "\\boxed{\\frac{1}{2}} then </think>",  # nested braces
        "no markup at all",
    ]
    assert format_reward(completions) == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert format_reward([chat(GOOD)]) == [1.0]


def test_accuracy_reward_skips_unparseable_gold_instead_of_rewarding_it():
    completions = [chat(GOOD), chat(GOOD.replace("{3}", "{4}")), chat(GOOD), chat(GOOD)]
    assert accuracy_reward(completions, solution=["3", "3", "", "\\frac{"]) == [1.0, 0.0, None, None]


def test_accuracy_reward_compares_symbolically():
    completions = [chat("\\boxed{\\dfrac{1}{2}}"), chat("\\boxed{0.5}"), chat("\\boxed{\\frac{1}{3}}")]
    assert accuracy_reward(completions, solution=["\\frac{1}{2}", "\\frac{1}{2}", "\\frac{1}{2}"]) == [1.0, 1.0, 0.0]


def test_cosine_reward_on_token_length():
    reward = CosineScaledReward(max_len=100)  # the seed's values: correct 1.0 → 0.1, wrong -1.0 → -0.1
    right, wrong = chat("\\boxed{7}"), chat("\\boxed{8}")
    ids = lambda n: [0] * n  # noqa: E731 - only the token count matters
    got = reward(
        completions=[right, right, right, right, wrong, wrong, wrong, wrong],
        solution=["7"] * 8,
        completion_ids=[ids(0), ids(50), ids(100), ids(150), ids(0), ids(50), ids(100), ids(150)],
    )
    assert got == pytest.approx([1.0, 0.55, 0.1, 0.1, -1.0, -0.55, -0.1, -0.1])
    # Characters do not count: the same text at different token lengths scores differently.
    assert reward(completions=[right, right], solution=["7", "7"], completion_ids=[ids(10), ids(90)]) == pytest.approx(
        [0.1 + 0.45 * (1 + 0.9510565162951535), 0.1 + 0.45 * (1 - 0.9510565162951535)]
    )
    assert reward(completions=[right], solution=["???"], completion_ids=[ids(5)]) == [None]


def test_length_reward_is_computed_within_each_prompt_group():
    right, wrong = chat("\\boxed{7}"), chat("\\boxed{8}")
    prompt_a = [{"role": "user", "content": "What is 3 + 4?"}]
    prompt_b = [{"role": "user", "content": "What is 5 + 2?"}]
    got = length_reward(
        prompts=[prompt_a] * 3 + [prompt_b] * 2,
        completions=[right, wrong, right, right, wrong],
        solution=["7"] * 5,
        completion_ids=[[0] * 10, [0] * 20, [0] * 30, [0] * 100, [0] * 100],
    )
    # Group A: lengths 10/20/30 → λ = 0.5, 0, -0.5; the wrong one gets min(0, λ). Group B: equal lengths → 0.
    # Across the whole batch (the seed's bug) group A's λ would use min 10 / max 100 instead.
    assert got == pytest.approx([0.5, 0.0, -0.5, 0.0, 0.0])


def test_length_reward_never_pays_a_wrong_answer_for_being_short():
    right, wrong = chat("\\boxed{7}"), chat("\\boxed{8}")
    got = length_reward(prompts=["p"] * 3, completions=[wrong, right, right], solution=["7"] * 3,
                        completion_ids=[[0] * 10, [0] * 20, [0] * 50])
    assert got == pytest.approx([0.0, 0.5 - 10 / 40, -0.5])
    assert length_reward(prompts=["p"], completions=[right], solution=[""], completion_ids=[[0]]) == [None]


def test_registry_builds_the_named_rewards_with_their_parameters():
    args = SimpleNamespace(
        max_completion_length=64, cosine_max_len=None, cosine_min_value_wrong=-1.0, cosine_max_value_wrong=-0.1,
        cosine_min_value_correct=0.1, cosine_max_value_correct=1.0, soft_overlong_cache=16,
        repetition_ngram_size=3, repetition_max_penalty=-1.0,
    )
    funcs = get_reward_funcs(["format", "cosine", "length", "soft_overlong"], args)
    assert [f.__name__ for f in funcs] == [
        "format_reward", "cosine_scaled_reward", "length_reward", "soft_overlong_punishment_reward"]
    assert funcs[1].max_len == 64  # cosine_max_len None → max_completion_length
    # trl's DAPO soft overlong punishment: 0 up to 64-16 tokens, then linear down to -1 at 64.
    assert funcs[3](completion_ids=[[0] * 40, [0] * 56, [0] * 64]) == pytest.approx([0.0, -0.5, -1.0])
    with pytest.raises(ValueError, match="unknown reward"):
        get_reward_funcs(["format", "nope"], args)
    assert {"format", "accuracy", "cosine", "length", "soft_overlong", "repetition"} <= set(REWARDS)
