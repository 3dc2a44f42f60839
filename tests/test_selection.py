"""Checkpoint selection (train/common.py): the rule's exact choices, the standard errors it prints, sampled
held-out answers on the same random numbers at every evaluation, and the final model written from the chosen
checkpoint by a real transformers Trainer.

    .venv/bin/python -m pytest tests/test_selection.py -q
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from train.common import (
    AccuracyEvalCallback,
    finish_with_selected_checkpoint,
    paired_difference,
    per_problem_accuracy,
    select_best,
    selection_table,
    standard_error,
    summarize,
)
from train.configs import AccuracyEvalArguments


def record(step, accuracy, tokens, checkpoint=True, per_problem=None):
    return {"step": step, "accuracy": accuracy, "mean_tokens": tokens, "stderr": 0.01, "per_problem": per_problem,
            "checkpoint": f"out/checkpoint-{step}" if checkpoint else None}


START = record(0, 0.80, 900.0, checkpoint=False)
HISTORY = [START, record(10, 0.81, 700.0), record(20, 0.79, 500.0), record(30, 0.77, 300.0), record(40, 0.83, 650.0)]


def test_accuracy_at_length_takes_the_shortest_checkpoint_within_the_tolerance():
    # floor 0.78: steps 10, 20, 40 qualify; 20 answers shortest. Step 30 is shorter but 3 points down.
    assert select_best(HISTORY, "accuracy_at_length", 0.02)["step"] == 20
    assert select_best(HISTORY, "accuracy_at_length", 0.05)["step"] == 30
    assert select_best(HISTORY, "accuracy_at_length", 0.0)["step"] == 40  # only 10 and 40 keep 0.80: 40 is shorter
    # Nothing within the tolerance: the most accurate checkpoint, never the starting model.
    worse = [START, record(10, 0.70, 500.0), record(20, 0.75, 800.0)]
    assert select_best(worse, "accuracy_at_length", 0.02)["step"] == 20


def test_accuracy_rule_breaks_ties_by_length_and_last_keeps_the_final_weights():
    tied = [START, record(10, 0.81, 700.0), record(20, 0.81, 600.0), record(30, 0.81, 650.0)]
    assert select_best(tied, "accuracy", 0.02)["step"] == 20
    assert select_best(HISTORY, "accuracy", 0.02)["step"] == 40
    assert select_best(HISTORY, "last", 0.02) is None
    assert select_best([START], "accuracy_at_length", 0.02) is None  # no checkpoint evaluated yet


def test_summaries_and_paired_differences_carry_exact_standard_errors():
    results = [{"problem": p, "correct": c, "tokens": 10, "truncated": False}
               for p, c in [(0, True), (0, True), (1, True), (1, False), (2, False), (2, False), (3, None), (3, None)]]
    summary = summarize(results)
    assert per_problem_accuracy(results) == [1.0, 0.5, 0.0, None]
    assert (summary["accuracy"], summary["n"], summary["problems"]) == (0.5, 6, 3)
    assert summary["stderr"] == pytest.approx(0.5 / math.sqrt(3))  # sd of (1, .5, 0) is 0.5
    base = {"accuracy": 0.5, "per_problem": [1.0, 1.0, 0.0, 0.0]}
    later = {"accuracy": 0.5, "per_problem": [1.0, 0.0, 0.0, 1.0]}
    diff, se = paired_difference(later, base)
    assert diff == 0.0 and se == pytest.approx(math.sqrt(2 / 3) / 2)
    assert standard_error([0.3]) == 0.0


def test_selection_table_marks_the_choice_and_warns_when_the_tolerance_is_noise():
    base = record(0, 0.5, 100.0, checkpoint=False, per_problem=[1.0, 1.0, 0.0, 0.0])
    later = record(10, 0.5, 80.0, per_problem=[1.0, 0.0, 0.0, 1.0])
    table = selection_table([base, later], later, tolerance=0.02)
    assert "<- selected" in table.splitlines()[2] and "+0.000 ± 0.408" in table
    assert "warning: selection_tolerance 0.02 is under two standard errors" in table
    assert "warning" not in selection_table([base, later], later, tolerance=0.9)


def test_sampled_evaluation_repeats_its_random_numbers_and_leaves_training_rng_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.toy.task import SYSTEM_PROMPT, make_problem
    from train.data import prompt_messages

    import random

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    problems = [{"prompt": prompt_messages(p.problem, SYSTEM_PROMPT), "solution": p.answer}
                for p in (make_problem(random.Random(0), i) for i in range(3))]
    settings = AccuracyEvalArguments(accuracy_eval_samples=2, accuracy_eval_temperature=1.0,
                                     accuracy_eval_max_new_tokens=12, accuracy_eval_batch_size=6)
    callback = AccuracyEvalCallback(problems, tokenizer, settings, accelerator=None, seed=7)

    torch.manual_seed(123)
    first = callback._generate(model, problems)
    after_eval = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after_eval, torch.rand(3))  # the training RNG continues as if nothing happened
    second = callback._generate(model, problems)
    assert [r["problem"] for r in first] == [0, 0, 1, 1, 2, 2]
    assert [r["text"] for r in first] == [r["text"] for r in second]  # same dice at every evaluation
    assert len({r["text"] for r in first}) > 1  # sampled, not greedy


def test_final_model_is_the_selected_checkpoints(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tmp_path / "out"
    for step, shift in ((10, 0.5), (20, -0.5)):  # two checkpoints with different weights
        checkpoint = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        with torch.no_grad():
            checkpoint.model.norm.weight.add_(shift)
        checkpoint.save_pretrained(out / f"checkpoint-{step}")
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(out), use_cpu=True, report_to="none"),
                      processing_class=tokenizer)
    settings = AccuracyEvalArguments(select_checkpoint="accuracy_at_length", selection_tolerance=0.02)
    callback = AccuracyEvalCallback([{"prompt": [], "solution": "1"}], tokenizer, settings)
    callback.history = [
        {"step": 0, "accuracy": 0.90, "mean_tokens": 100.0, "per_problem": [0.9], "checkpoint": None},
        {"step": 10, "accuracy": 0.89, "mean_tokens": 60.0, "per_problem": [0.89], "checkpoint": str(out / "checkpoint-10")},
        {"step": 20, "accuracy": 0.80, "mean_tokens": 40.0, "per_problem": [0.8], "checkpoint": str(out / "checkpoint-20")},
    ]

    best = finish_with_selected_checkpoint(trainer, callback)

    assert best["step"] == 10
    final = load_file(out / "model.safetensors")
    chosen = load_file(out / "checkpoint-10" / "model.safetensors")
    assert all(torch.equal(final[k], chosen[k]) for k in chosen)
    assert not torch.equal(final["model.norm.weight"], model.model.norm.weight.detach())  # not the last weights
    selected = json.loads((out / "selected_checkpoint.json").read_text())
    assert selected["step"] == 10 and selected["vs_first"] == pytest.approx(-0.01) and "per_problem" not in selected
