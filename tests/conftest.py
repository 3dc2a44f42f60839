"""Shared fixtures. Models are built locally (no hub): the tiny random model once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight tiny Qwen2 with the toy tokenizer, saved with save_pretrained."""
    from train.toy.model_factory import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def toy_trace_text(answer: int, filler: int = 3) -> str:
    """A completion in the toy model's format: boxed answer inside the thinking, then a summary."""
    work = "\n".join("1+2+0=3" for _ in range(filler))
    return f"<think>\n{work}\n\\boxed{{{answer}}}\n</think>\nThe answer is \\boxed{{{answer}}}."


@pytest.fixture
def write_traces(tmp_path):
    """write_traces({problem_id: [answer or text, ...]}, seconds=..., tokens=...) → path of a traces JSONL."""
    import json

    def write(answers: dict, seconds: float | list = 10.0, tokens: int = 100, name: str = "traces.jsonl"):
        path = tmp_path / name
        with path.open("w") as f:
            for pid, items in answers.items():
                for i, item in enumerate(items):
                    text = item if isinstance(item, str) else toy_trace_text(item)
                    secs = seconds[i] if isinstance(seconds, list) else seconds
                    f.write(json.dumps({"problem_id": pid, "sample": i, "text": text, "tokens": tokens,
                                        "seconds": secs}) + "\n")
        return path

    return write
