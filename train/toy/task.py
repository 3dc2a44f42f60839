"""A synthetic math task with integer answers and step-by-step traces of varied verbosity.

`What is A + B?` is solved one column at a time (`d1+d2+carry=sum`), then `so A+B=N`, and the whole working is
repeated 0, 1 or 2 times as "Let me double-check:" blocks. A correct trace much shorter than the average always
exists, which is what GRPO's length rewards can find. The answer is committed inside the thinking block
(`\\boxed{N}` before `</think>`), the format the paper's GRPO rewards train for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# The system prompt of the toy recipe and of the demo server (configs/inference/demo.yaml); the same text as
# train.configs.DEFAULT_SYSTEM_PROMPT. The tokenizer learns it, so it costs a few tokens rather than fifty.
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class ToyProblem:
    id: str
    problem: str
    answer: int


def make_problem(rng: random.Random, index: int, digits: int = 3) -> ToyProblem:
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    return ToyProblem(id=f"toy-{index:05d}", problem=f"What is {a} + {b}?", answer=a + b)


def _operands(problem: str) -> tuple[int, int]:
    body = problem.removeprefix("What is ").removesuffix("?")
    a, b = body.split(" + ")
    return int(a), int(b)


def _column_working(a: int, b: int) -> str:
    da, db = str(a)[::-1], str(b)[::-1]
    carry, lines = 0, []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        lines.append(f"{x}+{y}+{carry}={s}")
        carry = s // 10
    return "\n".join(lines) + f"\nso {a}+{b}={a + b}"


def make_trace(problem: ToyProblem, rechecks: int) -> str:
    """The assistant completion: thinking with `rechecks` repeated verifications, the boxed answer, then a summary."""
    a, b = _operands(problem.problem)
    work = _column_working(a, b)
    blocks = [work] + [f"Let me double-check:\n{work}" for _ in range(rechecks)]
    thinking = "\n".join(blocks)
    return f"<think>\n{thinking}\n\\boxed{{{problem.answer}}}\n</think>\nThe answer is \\boxed{{{problem.answer}}}."


def sample_rechecks(rng: random.Random, probs: tuple[float, ...] = (0.2, 0.3, 0.5)) -> int:
    return rng.choices(range(len(probs)), weights=probs)[0]


def tokenizer_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Text the toy tokenizer is trained on: toy problems and traces, and the system prompt."""
    rng = random.Random(seed)
    texts = [SYSTEM_PROMPT] * (n // 10)
    for i in range(n):
        p = make_problem(rng, i)
        texts += [p.problem, make_trace(p, sample_rechecks(rng))]
    return texts


def make_splits(sizes: dict[str, int], seed: int = 0, digits: int = 3) -> dict[str, list[ToyProblem]]:
    """Disjoint sets of distinct problems, e.g. {"sft": 4000, "grpo": 2000, "validation": 200, "test": 500}."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[ToyProblem]] = {}
    for name, size in sizes.items():
        problems = []
        while len(problems) < size:
            p = make_problem(rng, len(seen), digits)
            if p.problem not in seen:
                seen.add(p.problem)
                problems.append(ToyProblem(id=f"toy-{name}-{len(problems):05d}", problem=p.problem, answer=p.answer))
        splits[name] = problems
    return splits
