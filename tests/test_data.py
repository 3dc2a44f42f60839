"""Training-set building (train/data.py) on small JSONL/parquet files written here: filters, dedupe, mixing, and
the count of every dropped row.

    .venv/bin/python -m pytest tests/test_data.py -q
"""

from __future__ import annotations

import json

import pytest

from train.data import (
    DataReport,
    Decontaminator,
    Source,
    build_grpo_dataset,
    build_sft_dataset,
    load_eval_problems,
    select_sft_rows,
)

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def trace(answer, work: int = 1) -> str:
    steps = "\n".join("1+2+0=3" for _ in range(work))
    return f"<think>\n{steps}\n\\boxed{{{answer}}}\n</think>\nThe answer is \\boxed{{{answer}}}."


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path, rows):
    import polars as pl

    pl.DataFrame(rows).write_parquet(path)
    return str(path)


@pytest.fixture
def openr1_file(tmp_path):
    """OpenR1-Math style: several generations per problem with math-verify correctness flags."""
    return write_jsonl(tmp_path / "openr1.jsonl", [
        # both correct: the shorter trace is kept
        {"problem": "What is 1 + 2?", "answer": "3", "generations": [trace(3, 5), trace(3, 1)],
         "correctness_math_verify": [True, True]},
        # solve rate 0.5: below min_accuracy 0.75
        {"problem": "What is 2 + 2?", "answer": "4", "generations": [trace(4), trace(5)],
         "correctness_math_verify": [True, False]},
        # 3 of 4 correct (0.75 passes): the wrong one is dropped as a wrong trace
        {"problem": "What is 3 + 3?", "answer": "6", "generations": [trace(6), trace(6, 2), trace(7), trace(6, 3)],
         "correctness_math_verify": [True, True, False, True]},
        {"problem": "  ", "answer": "1", "generations": [trace(1), trace(1)], "correctness_math_verify": [True, True]},
        {"problem": "What is 4 + 4?", "answer": None, "generations": [trace(8), trace(8)],
         "correctness_math_verify": [True, True]},
        # an overlong trace (over max_trace_tokens) next to a fitting one
        {"problem": "What is 5 + 5?", "answer": "10", "generations": [trace(10, 60), ""],
         "correctness_math_verify": [True, True]},
    ])


@pytest.fixture
def lightr1_file(tmp_path):
    """Light-R1 style: ShareGPT conversations, no answer column (answers come from the traces' boxes)."""
    return write_parquet(tmp_path / "lightr1.parquet", [
        {"conversations": [{"from": "human", "value": "What is  1 + 2?"}, {"from": "gpt", "value": "\\boxed{3}"}]},
        {"conversations": [{"from": "human", "value": "What is 7 + 7?"}, {"from": "gpt", "value": trace(14)}]},
        {"conversations": [{"from": "human", "value": "What is 9 + 9?"}, {"from": "gpt", "value": "no box here"}]},
    ])


def test_sft_filters_dedupes_and_counts_every_dropped_row(tokenizer, openr1_file, lightr1_file):
    sources = [
        {"path": openr1_file, "label": "openr1", "trace_column": "generations",
         "correct_column": "correctness_math_verify", "min_accuracy": 0.75, "max_trace_tokens": 200},
        {"path": lightr1_file, "label": "lightr1", "messages_column": "conversations", "answer_column": None,
         "answer_from_trace": True},
    ]
    rows, report = select_sft_rows(sources, tokenizer, SYSTEM, seed=0)
    by_problem = {r["problem"]: r for r in rows}
    # "What is 1 + 2?" is in both sources (spacing differs). Light-R1's trace is shorter, but its answer was read
    # from its own box (correct by construction): OpenR1's shortest trace, checked against the gold, wins.
    # "What is 5 + 5?" has no trace left (one empty, one over max_trace_tokens).
    assert set(by_problem) == {"What is 1 + 2?", "What is 3 + 3?", "What is 7 + 7?"}
    assert (by_problem["What is 1 + 2?"]["generation"], by_problem["What is 1 + 2?"]["source"]) == (
        trace(3, 1), "openr1")
    assert (by_problem["What is 7 + 7?"]["verified"], by_problem["What is 3 + 3?"]["verified"]) == (False, True)
    assert by_problem["What is 3 + 3?"]["generation"] == trace(6)
    assert by_problem["What is 7 + 7?"]["answer"] == "14"
    assert report.read == {"openr1": 6, "lightr1": 3}
    assert report.dropped["openr1"] == {
        "accuracy out of range": 1, "wrong trace": 1, "empty problem": 1, "no answer": 2,
        "longer trace of the same problem": 3, "empty trace": 1, "trace length out of range": 1,
    }
    assert report.dropped["lightr1"] == {"no answer": 1}
    assert report.dropped["all sources"] == {"duplicate problem (kept the shortest trace)": 1}
    assert report.kept == len(rows) == 3
    assert report.trace_chars == sum(len(r["generation"]) for r in rows)
    assert report.trace_tokens == sum(r["tokens"] for r in rows) == sum(
        len(tokenizer(r["generation"], add_special_tokens=False)["input_ids"]) for r in rows)
    assert report.to_dict()["chars_per_token"] == round(report.trace_chars / report.trace_tokens, 4)


def test_accuracy_bounds_count_rows_whose_accuracy_is_unknown(tokenizer, tmp_path):
    """One correctness flag is not a solve rate: under min/max_accuracy such rows are dropped and counted, not
    passed through (nor silently skipped)."""
    path = write_jsonl(tmp_path / "flags.jsonl", [
        {"problem": "one flag", "answer": "3", "generations": [trace(3)], "correctness_math_verify": [True],
         "rate": 0.5},
        {"problem": "two flags", "answer": "3", "generations": [trace(3), trace(3, 2)],
         "correctness_math_verify": [True, True], "rate": 1.0},
        {"problem": "rate column empty", "answer": "3", "generations": [trace(3)], "correctness_math_verify": [True],
         "rate": None},
    ])
    base = {"path": path, "label": "s", "trace_column": "generations", "correct_column": "correctness_math_verify"}
    rows, report = select_sft_rows([base | {"min_accuracy": 0.5}], tokenizer, SYSTEM)
    assert [r["problem"] for r in rows] == ["two flags"]
    assert report.dropped["s"]["accuracy unknown (fewer than 2 correctness flags)"] == 2
    rows, report = select_sft_rows([base], tokenizer, SYSTEM)  # no bounds: every row with a correct trace is kept
    assert len(rows) == 3 and "accuracy unknown (fewer than 2 correctness flags)" not in report.dropped.get("s", {})
    rows, report = select_sft_rows([base | {"accuracy_column": "rate", "max_accuracy": 0.9}], tokenizer, SYSTEM)
    assert [r["problem"] for r in rows] == ["one flag"]
    assert report.dropped["s"] == {"no accuracy value": 1, "accuracy out of range": 1}


def test_sft_rows_without_flags_are_graded_and_bad_golds_dropped(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl", [
        {"problem": "p1", "generation": trace(3), "answer": 3},
        {"problem": "p2", "generation": trace(5), "answer": 4},  # wrong
        {"problem": "p3", "generation": trace(5), "answer": "\\frac{"},  # unparseable gold
        {"problem": "p4", "generation": trace("\\frac{1}{2}"), "answer": "0.5"},  # equivalent, not equal
    ])
    rows, report = select_sft_rows([{"path": path}], tokenizer, SYSTEM)
    assert sorted(r["problem"] for r in rows) == ["p1", "p4"]
    assert report.dropped[path] == {"wrong trace": 1, "unparseable gold": 1}


def test_sft_weight_samples_a_fraction_of_problems_and_max_length_drops_long_rows(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", [
        {"problem": f"What is {i} + 0?", "generation": trace(i, 1 + 30 * (i == 0)), "answer": i} for i in range(10)
    ])
    rows, report = select_sft_rows([{"path": path, "weight": 0.5}], tokenizer, SYSTEM, seed=1)
    assert len(rows) == 5 and report.dropped[path] == {"not sampled (weight/max_problems)": 5}
    rows_again, _ = select_sft_rows([{"path": path, "weight": 0.5}], tokenizer, SYSTEM, seed=1)
    assert rows_again == rows  # the seed fixes the sample

    def tokens(i):
        text = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": f"What is {i} + 0?"},
                                              {"role": "assistant", "content": trace(i)}], tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    longest = max(tokens(i) for i in range(1, 10))
    rows, report = select_sft_rows([{"path": path}], tokenizer, SYSTEM, max_length=longest + 5)
    assert len(rows) == 9 and report.dropped["all sources"] == {f"longer than max_length={longest + 5}": 1}


def test_sft_dataset_is_conversational_prompt_completion(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [{"problem": "What is 1 + 2?", "generation": trace(3), "answer": 3}])
    dataset, _ = build_sft_dataset([{"path": path, "label": "toy"}], tokenizer, SYSTEM)
    row = dataset[0]
    assert row["prompt"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 1 + 2?"}]
    assert row["completion"] == [{"role": "assistant", "content": trace(3)}]
    assert (row["answer"], row["source"]) == ("3", "toy")
    no_system, _ = build_sft_dataset([{"path": path}], tokenizer, None)
    assert [m["role"] for m in no_system[0]["prompt"]] == ["user"]


def test_grpo_dataset_checks_golds_and_prompt_length(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "grpo.jsonl", [
        {"problem": "What is 1 + 2?", "answer": 3},
        {"problem": "What is 1 + 2?", "answer": 3},  # duplicate
        {"problem": "", "answer": 3},
        {"problem": "What is 2 + 2?", "answer": ""},
        {"problem": "What is 2 + 3?", "answer": "\\frac{"},
        {"problem": "What is 2 + 3?" + " and more" * 200, "answer": 5},
        {"problem": "Simplify 2/4.", "answer": "\\frac{1}{2}"},
    ])
    dataset, report = build_grpo_dataset([{"path": path, "label": "g"}], tokenizer, SYSTEM, max_prompt_length=128)
    assert [(r["prompt"][-1]["content"], r["solution"]) for r in dataset] == [
        ("What is 1 + 2?", "3"), ("Simplify 2/4.", "\\frac{1}{2}")]
    assert report.dropped["g"] == {"duplicate problem": 1, "empty problem": 1, "no answer": 1, "unparseable gold": 1,
                                   "prompt longer than 128 tokens": 1}
    assert report.kept == 2


def test_eval_problems_keep_file_order_and_limit(tmp_path):
    path = write_jsonl(tmp_path / "eval.jsonl", [{"problem": f"What is {i} + 1?", "answer": i + 1} for i in range(5)])
    problems = load_eval_problems(path, system_prompt=SYSTEM, limit=3)
    assert [p["solution"] for p in problems] == ["1", "2", "3"]
    assert problems[0]["prompt"][0] == {"role": "system", "content": SYSTEM}


def test_bad_source_settings_name_the_problem(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"problem": "p", "generation": trace(1), "answer": 1}])
    with pytest.raises(ValueError, match="unknown key.*'colums'"):
        Source.from_dict({"path": path, "colums": ["a"]})
    with pytest.raises(ValueError, match="weight"):
        Source.from_dict({"path": path, "weight": 2})
    with pytest.raises(KeyError, match="no column 'solution'"):
        select_sft_rows([{"path": path, "trace_column": "solution"}], tokenizer, SYSTEM)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        select_sft_rows([{"path": str(tmp_path / "missing.jsonl")}], tokenizer, SYSTEM)
    with pytest.raises(ValueError, match="min/max_accuracy needs"):
        select_sft_rows([{"path": path, "min_accuracy": 0.5}], tokenizer, SYSTEM)
    with pytest.raises(ValueError, match="no SFT rows survived"):
        select_sft_rows([{"path": path, "max_trace_tokens": 1}], tokenizer, SYSTEM)


def test_report_summary_lists_reasons():
    report = DataReport("SFT")
    report.read["a"] = 3
    report.drop("a", "no answer", 2)
    report.kept = 1
    assert "a: read 3; dropped no answer: 2" in report.summary()
    assert report.to_dict() == {"kind": "SFT", "kept": 1, "read": {"a": 3}, "dropped": {"a": {"no answer": 2}}}
    report.trace_chars, report.trace_tokens = 3300, 1000
    assert report.to_dict()["chars_per_token"] == 3.3 and "3.300 characters per token" in report.summary()


AIME_2025_I_5 = ("There are $8!= 40320$ eight-digit positive integers that use each of the digits 1, 2, 3, 4, 5, 6, "
                 "7, 8 exactly once. Let N be the number of these integers that are divisible by $22$. Find the "
                 "difference between $N$ and 2025.")
MATH500_SHORT = "Compute $\\dbinom{31}{28}$."  # a MATH-500 problem under 13 words


def contaminated_variants() -> list[str]:
    """An AIME 2025 problem as a training set might carry it: exact, re-spaced, case changed, `$` removed, text
    added at the edges; and a short MATH-500 problem inside a longer one."""
    return [
        AIME_2025_I_5,
        "  ".join(AIME_2025_I_5.split(" ")).replace("$8!= 40320$", "$8! = 40320$"),
        AIME_2025_I_5.upper(),
        AIME_2025_I_5.replace("$", ""),
        "Problem 5 (AIME I). " + AIME_2025_I_5 + " Put the answer in a box.",
        "Warm-up: " + MATH500_SHORT.lower() + " Then add 1.",
    ]


def test_evaluation_problems_are_dropped_from_sft_and_grpo_and_counted(tokenizer, tmp_path):
    clean = ["What is 1 + 2?", "A train leaves at noon at 60 miles per hour; when has it gone 90 miles?"]
    variants = contaminated_variants()
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"problem": p, "generation": trace(3), "answer": 3}
                                                  for p in variants + clean])
    rows, report = select_sft_rows([{"path": path, "label": "s"}], tokenizer, SYSTEM)
    assert sorted(r["problem"] for r in rows) == sorted(clean)
    assert report.dropped["s"] == {"evaluation problem (AIME 2025)": 5, "evaluation problem (MATH-500)": 1}
    assert "evaluation problem (AIME 2025): 5" in report.summary()
    dataset, report = build_grpo_dataset([{"path": path, "label": "g"}])
    assert sorted(r["prompt"][-1]["content"] for r in dataset) == sorted(clean)
    assert report.dropped["g"] == {"evaluation problem (AIME 2025)": 5, "evaluation problem (MATH-500)": 1}
    # the evaluation itself reads those problems untouched
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{"problem": AIME_2025_I_5, "answer": 279}])
    assert len(load_eval_problems(eval_file)) == 1


def test_a_recipes_eval_file_is_kept_out_of_training(tokenizer, tmp_path):
    held_out = write_jsonl(tmp_path / "held_out.jsonl", [{"problem": "Find the sum of 17 and 25.", "answer": 42}])
    train = write_jsonl(tmp_path / "train.jsonl", [{"problem": "find the sum of 17 and 25 .", "answer": 42},
                                                   {"problem": "Find the sum of 17 and 26.", "answer": 43}])
    dataset, report = build_grpo_dataset([{"path": train, "label": "g"}], eval_files=[held_out])
    assert [r["solution"] for r in dataset] == ["43"]
    assert report.dropped["g"] == {f"evaluation problem (eval_file {held_out})": 1}


def test_decontaminator_rules():
    d = Decontaminator({"E": ["one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
                              "What is 6 * 7?", "Add 2."]})
    assert d.match("Intro. ONE two $three$ four five six seven eight nine ten eleven twelve thirteen, and more") == "E"
    assert d.match("one two three four five six seven eight nine ten eleven twelve") is None  # 12 shared words
    assert d.match("So: what is 6*7 ? Then stop.") == "E"  # a short problem inside a longer one
    assert d.match("What is 6 + 7?") is None  # symbols count: another problem
    assert d.match("add 2 .") == "E" and d.match("Add 2 and 3.") is None  # under 5 words: only exactly


def test_near_duplicate_problems_across_sources_count_once(tokenizer, tmp_path):
    variants = ["What is $1+2$?", "what is 1 + 2?", "WHAT IS 1+2?", "What  is 1+2 ?", "What is {1}+{2}?"]
    a = write_jsonl(tmp_path / "a.jsonl", [{"problem": p, "generation": trace(3, i + 1), "answer": 3}
                                           for i, p in enumerate(variants[:3])])
    b = write_jsonl(tmp_path / "b.jsonl", [{"problem": p, "generation": trace(3, i + 4), "answer": 3}
                                           for i, p in enumerate(variants[3:])] +
                    [{"problem": "What is 1*2?", "generation": trace(2), "answer": 2}])
    rows, report = select_sft_rows([{"path": a, "label": "a"}, {"path": b, "label": "b"}], tokenizer, SYSTEM)
    assert sorted(r["problem"] for r in rows) == ["What is $1+2$?", "What is 1*2?"]  # the shortest trace wins
    assert report.dropped["a"] == {"longer trace of the same problem": 2}
    assert report.dropped["b"] == {"longer trace of the same problem": 1}
    assert report.dropped["all sources"] == {"duplicate problem (kept the shortest trace)": 1}
    grpo = write_jsonl(tmp_path / "g.jsonl", [{"problem": p, "answer": 3} for p in variants])
    dataset, report = build_grpo_dataset([{"path": grpo, "label": "g"}])
    assert len(dataset) == 1 and report.dropped["g"] == {"duplicate problem": 4}


def test_every_training_source_of_a_recipe_is_listed_with_its_licence(repo_root):
    import yaml

    listed = (repo_root / "configs" / "data" / "SOURCES.md").read_text().split("## Evaluation sets")[0]
    recipes = [r for stage in ("sft", "grpo", "toy") for r in sorted((repo_root / "configs" / stage).glob("*.yaml"))]
    hub_ids = {s["path"] for r in recipes for s in (yaml.safe_load(r.read_text()) or {}).get("dataset_sources", [])
               if not s["path"].startswith("runs/")}
    assert hub_ids and {h for h in hub_ids if f"| `{h}`" not in listed} == set()
