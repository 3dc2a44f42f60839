"""GRPO with the Python tool (train/grpo_tools.py, `rollout_tools` in a GRPO recipe): a real trl GRPOTrainer step on
the toy TIR model whose rollouts call the kit's sandbox (separate interpreter processes), with the tool-output tokens
out of the loss, checked token by token; and bad settings failing with one line.

    .venv/bin/python -m pytest tests/test_grpo_tools.py -q
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from inference.formats import get_format
from train.grpo_tools import completion_and_mask

REPO = Path(__file__).resolve().parents[1]
TIR_MODEL = REPO / "models/toy-math-tir"
# Run in every sample's interpreter: print also writes the interpreter's pid, which the trainer never has.
MARK = "import os as _os, builtins as _b\ndef print(*a, **k):\n    _b.print(*a, 'pid', _os.getpid(), **k)\n"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TIR_MODEL)


def test_completion_mask_replays_the_engine_turns(tokenizer):
    fmt = get_format("python_block")
    prompt = fmt.prompt_ids([{"role": "user", "content": "What is 2 * 3?"}], tokenizer)
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    turn1, turn2 = enc("<think>\n```python\nprint(2 * 3)\n```\n"), enc("\\boxed{6}\n</think>")
    engine_prompt = fmt.continue_ids(prompt, turn1, "6\n", tokenizer)  # what the engine generated turn 2 from
    completion, mask = completion_and_mask(fmt, tokenizer, prompt, [turn1, turn2], ["6\n", None], engine_prompt)
    framed = enc("```output\n6\n```\n")
    assert completion == turn1 + framed + turn2
    assert mask == [1] * len(turn1) + [0] * len(framed) + [1] * len(turn2)
    # A sample the limits ended right after its call (no output ran): the call's turn is the last prompt's tail.
    completion, mask = completion_and_mask(fmt, tokenizer, prompt, [turn1, []], ["6\n", None], prompt)
    assert (completion, mask) == (turn1, [1] * len(turn1))
    with pytest.raises(RuntimeError, match="did not give the engine's prompt"):
        completion_and_mask(fmt, tokenizer, prompt, [turn1, turn2], ["7\n", None], engine_prompt)


@pytest.mark.slow
def test_grpo_step_with_sandboxed_tool_masks_tool_outputs(tokenizer, tmp_path, monkeypatch):
    from train import grpo

    monkeypatch.chdir(REPO)
    problems = [(347, 29), (613, 48)]
    data = tmp_path / "grpo.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {a} * {b}?", "answer": a * b}) + "\n"
                            for a, b in problems))
    argv = ["--config", "configs/toy/grpo-tir.yaml", "--model_name_or_path", str(TIR_MODEL),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--num_generations", "4",
            "--per_device_train_batch_size", "8", "--max_completion_length", "80", "--cosine_max_len", "80",
            "--mask_truncated_completions", "false", "--save_strategy", "no", "--logging_steps", "1"]
    data_args, training_args, model_args = grpo.make_parser().parse_args_and_config(argv)
    data_args.dataset_sources = [{"path": str(data), "label": "t"}]
    training_args.rollout_tools = training_args.rollout_tools | {"setup_code": MARK, "pool_size": 2}
    trainer, callback = grpo.build_trainer(data_args, training_args, model_args)
    seen = []
    compute_loss = trainer.compute_loss

    def spy(model, inputs, *args, **kwargs):  # what trl's loss actually receives
        seen.append({k: inputs[k].detach().clone() for k in ("completion_ids", "completion_mask", "tool_mask")})
        return compute_loss(model, inputs, *args, **kwargs)

    monkeypatch.setattr(trainer, "compute_loss", spy)
    grpo.train_resumably(trainer, callback)

    assert trainer.state.global_step == 1
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)
    assert trainer.state.log_history[0]["tools/call_frequency"] > 0
    products = {a * b for a, b in problems}
    calls = 0
    for batch in seen:
        weight = batch["completion_mask"] * batch["tool_mask"]  # trl's loss mask (grpo_trainer._compute_loss)
        for ids, w, real in zip(batch["completion_ids"].tolist(), weight.tolist(),
                                batch["completion_mask"].tolist(), strict=True):
            ids = [i for i, r in zip(ids, real) if r]
            w = w[: len(ids)]
            text = tokenizer.decode(ids)
            # Token by token: weight 0 exactly on the framed outputs the sandbox printed, 1 everywhere else.
            expected = [1] * len(ids)
            token_at = {len(tokenizer.decode(ids[:k])): k for k in range(len(ids) + 1)}  # text offset → token
            for m in re.finditer(r"```output\n(\d+) pid (\d+)\n```\n", text):
                calls += 1
                value, pid = int(m.group(1)), int(m.group(2))
                assert value in products and pid != os.getpid()  # run by a sandbox interpreter, not the trainer
                start, end = token_at[m.start()], token_at[m.end()]
                assert tokenizer.decode(ids[start:end]) == m.group(0)
                expected[start:end] = [0] * (end - start)
            assert w == expected, text
    assert calls > 0


def write_recipe(tmp_path, rollout_tools: str, extra: str = "") -> str:
    recipe = (REPO / "configs/toy/grpo-tir.yaml").read_text()
    start = recipe.index("rollout_tools:")
    end = recipe.index("\n\n", start)
    path = tmp_path / "bad.yaml"
    path.write_text(recipe[:start] + rollout_tools + recipe[end:] + extra)
    return str(path)


@pytest.mark.parametrize("rollout_tools, extra, message", [
    ("rollout_tools:\n  format: r1", "", "rollout_tools.format: 'r1' has no tool calls; use python_block, tool_call "
                                         "or harmony"),
    ("rollout_tools:\n  format: jinja", "", "rollout_tools.format: unknown format 'jinja'"),
    ("rollout_tools:\n  max_cals: 2", "", "rollout_tools: unknown key(s) max_cals"),
    ("rollout_tools:\n  max_turns: 0", "", "rollout_tools.max_turns: must be ≥ 1, got 0"),
    ("rollout_tools:\n  format: python_block", "use_vllm: true\n", "rollout_tools: rollouts run through the kit's "
                                                                   "transformers engine; set use_vllm: false"),
])
def test_bad_rollout_tools_fail_with_one_line(tmp_path, rollout_tools, extra, message):
    path = write_recipe(tmp_path, rollout_tools, extra)
    result = subprocess.run([sys.executable, "-m", "train.grpo", "--config", path], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
