"""Public tool-integrated sets with the calls embedded in one generation (NVIDIA OpenMathReasoning's `tir` split):
train/data.py splits each generation into turns (`trace_format`), keeps the rows' turns, masks exactly the tool
outputs when rendering, filters by the dataset's fields, and stops on a code block without output naming the row.
The fixture is a small parquet file in the dataset's schema (the hub set is ~35 GB and not reachable here).

    .venv/bin/python -m pytest tests/test_data_openmath.py -q
"""

from __future__ import annotations

import pytest

from inference.formats import get_format
from train.data import Source, TraceRenderer, build_sft_dataset, select_sft_rows, split_generation

SYSTEM = "Use python to compute, and put your final answer within \\boxed{}."


def tir_solution(fmt_name: str, calls: list[tuple[str, str]], answer: str) -> str:
    """A generation as NeMo-Skills writes it: reasoning, code and output blocks inline, the boxed answer."""
    fmt = get_format(fmt_name)
    text = "<think>\nLet me compute.\n"
    for code, output in calls:
        text += fmt.call_text(code) + fmt.frame_output(output) + "So far so good.\n"
    return text + f"</think>\nThe answer is \\boxed{{{answer}}}."


def omr_row(problem, solution, answer, mode="tir", pass_rate="0.5", problem_type="has_answer_extracted"):
    """One row in OpenMathReasoning's schema (all columns are strings but used_in_kaggle)."""
    return {"expected_answer": answer, "problem_type": problem_type, "problem_source": "aops_c4_high_school_math",
            "generation_model": "DeepSeek-R1", "pass_rate_72b_tir": pass_rate, "problem": problem,
            "generated_solution": solution, "inference_mode": mode, "used_in_kaggle": False}


def write_parquet(path, rows) -> str:
    from datasets import Dataset

    Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


def source(path, fmt="python_block", **extra) -> dict:
    """The recipe entry for the `tir` split (configs/sft/qwen2.5-math-1.5b-tir.yaml), on a local file."""
    return {"path": path, "label": "omr-tir", "problem_column": "problem", "trace_column": "generated_solution",
            "answer_column": "expected_answer", "trace_format": fmt, **extra}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


TWO_CALLS = [("x = 6 * 7\nprint(x)", "42\n"), ("print(x + 1)", "43\n")]


@pytest.mark.parametrize("fmt", ["python_block", "tool_call"])
def test_rows_keep_their_turns_and_fields_filter(tokenizer, tmp_path, fmt):
    rows = [omr_row("What is 6 * 7 + 1?", tir_solution(fmt, TWO_CALLS, "43"), "43"),
            omr_row("What is 2 + 3?", tir_solution(fmt, [("print(2 + 3)", "5\n")], "5"), "5", pass_rate="n/a"),
            omr_row("What is 9 * 9?", tir_solution(fmt, [("print(9 * 9)", "81\n")], "81"), "81", mode="cot"),
            omr_row("Prove 1 < 2.", tir_solution(fmt, [("print(1 < 2)", "True\n")], "1"), "1",
                    problem_type="converted_proof")]
    path = write_parquet(tmp_path / "tir.parquet", rows)
    kept, report = select_sft_rows(
        [source(path, fmt, filters={"inference_mode": "tir", "problem_type": ["has_answer_extracted"]},
                accuracy_column="pass_rate_72b_tir", max_accuracy=0.9)],
        tokenizer, SYSTEM, renderer=TraceRenderer(fmt, tokenizer, SYSTEM))
    assert [r["problem"] for r in kept] == ["What is 6 * 7 + 1?"]
    assert report.dropped["omr-tir"] == {"inference_mode not in ['tir']": 1,
                                         "problem_type not in ['has_answer_extracted']": 1,
                                         "no accuracy value": 1}  # pass_rate "n/a"
    turns = kept[0]["turns"]
    assert [t["role"] for t in turns] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert [t["call"] for t in turns if t["role"] == "assistant"] == ["x = 6 * 7\nprint(x)", "print(x + 1)", None]
    assert [t["content"] for t in turns if t["role"] == "tool"] == ["42\n", "43\n"]
    assert turns[0]["content"] == "<think>\nLet me compute.\n"
    assert turns[-1]["content"] == "So far so good.\n</think>\nThe answer is \\boxed{43}."
    assert kept[0]["generation"] == rows[0]["generated_solution"]  # the row itself is kept intact


@pytest.mark.parametrize("fmt", ["python_block", "tool_call"])
def test_masks_cover_exactly_the_tool_output_tokens(tokenizer, tmp_path, fmt):
    solution = tir_solution(fmt, TWO_CALLS, "43")
    path = write_parquet(tmp_path / "tir.parquet", [omr_row("What is 6 * 7 + 1?", solution, "43")])
    dataset, _ = build_sft_dataset([source(path, fmt)], tokenizer, SYSTEM, chat_format=fmt)
    ids, labels = dataset[0]["input_ids"], dataset[0]["labels"]
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                            {"role": "user", "content": "What is 6 * 7 + 1?"}],
                                           add_generation_prompt=True, tokenize=False)
    n_prompt = len(tokenizer.encode(prompt, add_special_tokens=False))
    assert labels[:n_prompt] == [-100] * n_prompt
    # The completion is the generation exactly as the dataset wrote it (then the template's end of turn).
    assert tokenizer.decode(ids[n_prompt:]) == solution + "<|im_end|>\n"
    # Token by token: the masked runs after the prompt are exactly the framed outputs, the rest is trained as is.
    framed = [get_format(fmt).frame_output(out) for _, out in TWO_CALLS]
    runs, run = [], []
    for i in range(n_prompt, len(ids)):
        if labels[i] == -100:
            run.append(ids[i])
        else:
            assert labels[i] == ids[i]
            if run:
                runs, run = runs + [run], []
    assert run == []  # the trace ends with trained tokens
    assert [tokenizer.decode(r) for r in runs] == framed


def test_code_block_without_output_fails_naming_the_row(tokenizer, tmp_path):
    good = tir_solution("python_block", [("print(2 + 3)", "5\n")], "5")
    bad = "<think>\n```python\nprint(6 * 7)\n```\nIt prints 42.\n</think>\nThe answer is \\boxed{42}."
    path = write_parquet(tmp_path / "tir.parquet", [omr_row("What is 2 + 3?", good, "5"),
                                                    omr_row("What is 6 * 7?", bad, "42")])
    with pytest.raises(ValueError, match=r"dataset_sources\[omr-tir\] row 1: the code block at character 8 has no "
                                         r"output block \('```output'\) after it"):
        select_sft_rows([source(path)], tokenizer, SYSTEM)


def test_bad_embedded_blocks_and_options():
    with pytest.raises(ValueError, match="row 3: the code block at character 0 is not closed"):
        split_generation("```python\nprint(1)\n", "python_block", "row 3")
    with pytest.raises(ValueError, match="row 3: the output block at character 17 is not closed"):
        split_generation("```python\n1\n```\n\n```output\n1\n", "python_block", "row 3")
    assert split_generation("no code here", "python_block", "row 0") == [
        {"role": "assistant", "content": "no code here", "thinking": None, "call": None}]
    with pytest.raises(ValueError, match=r"trace_format: 'harmony' is not one of python_block, tool_call"):
        Source.from_dict({"path": "x.jsonl", "trace_format": "harmony"})
    with pytest.raises(ValueError, match="filters: expected a mapping"):
        Source.from_dict({"path": "x.jsonl", "filters": ["tir"]})
