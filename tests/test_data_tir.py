"""Tool-using traces in SFT (train/data.py): multi-turn rows keep their turns, are rendered in the target model's
format as the engines render them, and the loss skips exactly the tool-output tokens (python_block and tool_call with
the toy tokenizer, Harmony with the tiny gpt-oss tokenizer); malformed traces fail with a clear error.

    .venv/bin/python -m pytest tests/test_data_tir.py -q
"""

from __future__ import annotations

import json

import pytest

from train.data import TraceRenderer, build_sft_dataset, parse_messages, select_sft_rows

SYSTEM = "Use python to compute, and put your final answer within \\boxed{}."
ANSWER = "\\boxed{42}\n</think>\nThe answer is \\boxed{42}."


def tool_trace(**call) -> list[dict]:
    """user, assistant with a call, tool output, assistant with the answer (train/data.py's schema)."""
    return [{"role": "system", "content": "ignored: the recipe's prompt is trained"},
            {"role": "user", "content": "What is 6 * 7?"},
            {"role": "assistant", "content": "<think>\n", "tool_calls": [call or {"code": "print(6 * 7)"}]},
            {"role": "tool", "content": "42\n"},
            {"role": "assistant", "content": ANSWER}]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def gpt_oss_tokenizer(tmp_path_factory):
    from train.toy.gpt_oss_factory import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("o200k"))


def test_multi_turn_rows_keep_their_turns(tokenizer, tmp_path):
    inline = [{"role": "user", "content": "What is 5 * 8?"},  # as the kit's engine records a turn: the call inline
              {"role": "assistant", "content": "<think>\n```python\nprint(5 * 8)\n```\n"},
              {"role": "tool", "content": "40\n"},
              {"role": "assistant", "content": ANSWER.replace("42", "40")}]
    sharegpt = [{"from": "human", "value": "What is 2 * 21?"}, {"from": "gpt", "value": ANSWER}]
    openai = tool_trace(type="function", function={"name": "python", "arguments": json.dumps({"code": "print(7*6)"})})
    openai[1]["content"] = "What is 7 * 6?"
    path = write_rows(tmp_path / "tir.jsonl", [{"messages": tool_trace(), "answer": "42"},
                                               {"messages": inline, "answer": 40},
                                               {"messages": openai, "answer": "42"},
                                               {"messages": sharegpt, "answer": "42"}])
    rows, report = select_sft_rows([{"path": path, "label": "t", "messages_column": "messages"}], tokenizer, SYSTEM,
                                   renderer=TraceRenderer("python_block", tokenizer, SYSTEM))
    by_problem = {r["problem"]: r for r in rows}
    assert report.kept == 4 and not report.dropped.get("t")
    assert [t["role"] for t in by_problem["What is 6 * 7?"]["turns"]] == ["assistant", "tool", "assistant"]
    assert by_problem["What is 6 * 7?"]["turns"][0]["call"] == "print(6 * 7)"
    assert by_problem["What is 6 * 7?"]["generation"] == (
        "<think>\n```python\nprint(6 * 7)\n```\n```output\n42\n```\n" + ANSWER)
    assert by_problem["What is 7 * 6?"]["turns"][0]["call"] == "print(7*6)"
    assert by_problem["What is 5 * 8?"]["turns"][0] == {"role": "assistant", "call": None, "thinking": None,
                                                         "content": "<think>\n```python\nprint(5 * 8)\n```\n"}
    assert "turns" not in by_problem["What is 2 * 21?"]  # one answer: a plain trace


def labels_of(pieces, tokenizer) -> tuple[list[int], list[int]]:
    """Token ids and labels built piece by piece: (text, trained?) pairs, each encoded on its own."""
    ids, labels = [], []
    for text, trained in pieces:
        piece = tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    return ids, labels


@pytest.mark.parametrize("fmt, framed", [("python_block", "```output\n42\n```\n"),
                                         ("tool_call", "\n```output\n42\n```\n")])
def test_code_block_formats_mask_exactly_the_tool_output(tokenizer, tmp_path, fmt, framed):
    path = write_rows(tmp_path / "tir.jsonl", [{"messages": tool_trace(), "answer": "42"}])
    source = [{"path": path, "messages_column": "messages"}]
    dataset, _ = build_sft_dataset(source, tokenizer, SYSTEM, chat_format=fmt)
    call = {"python_block": "```python\nprint(6 * 7)\n```\n", "tool_call": "<tool_call>\nprint(6 * 7)\n</tool_call>"}
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                            {"role": "user", "content": "What is 6 * 7?"}],
                                           add_generation_prompt=True, tokenize=False)
    ids, labels = labels_of([(prompt, False), ("<think>\n" + call[fmt], True), (framed, False), (ANSWER, True),
                             ("<|im_end|>\n", True)], tokenizer)
    assert dataset[0]["input_ids"] == ids
    assert dataset[0]["labels"] == labels  # token by token
    masked = [i for i, label in zip(ids, labels, strict=True) if label == -100][len(tokenizer.encode(prompt)):]
    assert tokenizer.decode(masked) == framed
    unmasked, _ = build_sft_dataset(source, tokenizer, SYSTEM, chat_format=fmt, train_on_tool_outputs=True)
    n_prompt = len(tokenizer.encode(prompt))
    assert unmasked[0]["labels"] == [-100] * n_prompt + ids[n_prompt:]


def test_harmony_masks_exactly_the_tool_output(gpt_oss_tokenizer, tmp_path):
    from inference.harmony import HarmonyFormat

    messages = tool_trace()
    messages[2] = {"role": "assistant", "content": "Multiply with python.", "tool_calls": [{"code": "print(6 * 7)"}]}
    messages[4] = {"role": "assistant", "content": "The answer is \\boxed{42}.", "thinking": "The tool printed 42."}
    path = write_rows(tmp_path / "tir.jsonl", [{"messages": messages, "answer": "42"}])
    dataset, _ = build_sft_dataset([{"path": path, "messages_column": "messages"}], gpt_oss_tokenizer, SYSTEM,
                                   chat_format="harmony", chat_format_options={"reasoning_effort": "low"})
    prompt = HarmonyFormat(reasoning_effort="low").prompt_ids([{"role": "system", "content": SYSTEM},
                                                               {"role": "user", "content": "What is 6 * 7?"}])
    assert gpt_oss_tokenizer.decode(prompt).endswith("<|start|>assistant")
    ids, labels = labels_of([
        ("<|channel|>analysis<|message|>Multiply with python.<|end|>"
         "<|start|>assistant to=python<|channel|>analysis <|constrain|>code<|message|>print(6 * 7)<|call|>", True),
        ("<|start|>python to=assistant<|channel|>analysis<|message|>42\n<|end|><|start|>assistant", False),
        ("<|channel|>analysis<|message|>The tool printed 42.<|end|>"
         "<|start|>assistant<|channel|>final<|message|>The answer is \\boxed{42}.<|return|>", True),
    ], gpt_oss_tokenizer)
    assert dataset[0]["input_ids"] == prompt + ids
    assert dataset[0]["labels"] == [-100] * len(prompt) + labels  # token by token


@pytest.mark.slow
def test_sft_trainer_trains_on_the_labels_as_given(tokenizer, tiny_model_dir, tmp_path):
    """trl 1.16 uses a pre-tokenized dataset's labels as they are: the tool output stays out of the loss."""
    from trl import SFTConfig, SFTTrainer

    path = write_rows(tmp_path / "tir.jsonl", [{"messages": tool_trace(), "answer": "42"}] * 4)
    dataset, _ = build_sft_dataset([{"path": path, "messages_column": "messages"}], tokenizer, SYSTEM,
                                   chat_format="python_block")
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, use_cpu=True,
                     report_to="none", max_length=256, save_strategy="no")
    trainer = SFTTrainer(model=str(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tokenizer)
    assert trainer.train_dataset[0]["labels"] == dataset[0]["labels"]
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert batch["labels"][0].tolist() == dataset[0]["labels"]
    assert trainer.train().training_loss > 0


def test_malformed_traces_and_unknown_formats_fail_clearly(tokenizer, tmp_path):
    no_output = tool_trace()[:3] + [{"role": "assistant", "content": ANSWER}]
    with pytest.raises(ValueError, match=r"row 0: a tool call \('print\(6 \* 7\)'\) has no tool output after it"):
        parse_messages(no_output, "row 0")
    with pytest.raises(ValueError, match="ends with a tool output"):
        parse_messages(tool_trace()[:4], "row 0")
    with pytest.raises(ValueError, match="role 'robot'"):
        parse_messages([{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}], "row 0")
    path = write_rows(tmp_path / "bad.jsonl", [{"messages": no_output, "answer": "42"}])
    with pytest.raises(ValueError, match=r"dataset_sources\[t\] row 0: a tool call"):
        select_sft_rows([{"path": path, "label": "t", "messages_column": "messages"}], tokenizer, SYSTEM)
    good = write_rows(tmp_path / "good.jsonl", [{"messages": tool_trace(), "answer": "42"}])
    source = [{"path": good, "label": "t", "messages_column": "messages"}]
    with pytest.raises(ValueError, match="chat_format: unknown format 'chatml'"):
        build_sft_dataset(source, tokenizer, SYSTEM, chat_format="chatml")
    with pytest.raises(ValueError, match="1 rows are tool-using traces .* set chat_format"):
        build_sft_dataset(source, tokenizer, SYSTEM)
    with pytest.raises(ValueError, match="chat_format r1 has no tool calls"):
        build_sft_dataset(source, tokenizer, SYSTEM, chat_format="r1")
    uncalled = tool_trace()
    uncalled[2] = {"role": "assistant", "content": "<think>\nlet me think\n"}  # an output nobody asked for
    path = write_rows(tmp_path / "uncalled.jsonl", [{"messages": uncalled, "answer": "42"}])
    with pytest.raises(ValueError, match="makes no python_block tool call"):
        build_sft_dataset([{"path": path, "label": "t", "messages_column": "messages"}], tokenizer, SYSTEM,
                          chat_format="python_block")


@pytest.mark.slow
def test_tiny_gpt_oss_trains_on_harmony_tool_traces(tmp_path):
    """The tiny gpt-oss the kit builds takes SFT steps on Harmony-rendered tool traces through trl, and learns them:
    the loss on the trained tokens falls by over half a nat in 6 steps."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from train.toy.gpt_oss_factory import build

    model_dir = build(tmp_path / "tiny-gpt-oss", hidden_size=64, num_layers=2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = tool_trace()
    messages[4] = {"role": "assistant", "content": "The answer is \\boxed{42}."}
    path = write_rows(tmp_path / "tir.jsonl", [{"messages": messages, "answer": "42"}] * 4)
    dataset, _ = build_sft_dataset([{"path": path, "messages_column": "messages"}], tokenizer, SYSTEM,
                                   chat_format="harmony", chat_format_options={"reasoning_effort": "low"})
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=2, use_cpu=True,
                     learning_rate=3e-3, report_to="none", save_strategy="no", logging_steps=1,
                     model_init_kwargs={"dtype": "float32"})
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] - 0.5, losses
