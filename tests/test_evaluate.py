"""inference/evaluate.py: k samples per problem through the kit's engines, graded as the server votes, every sample
recorded in the replay format, and a report whose numbers add up."""

import json
import math

import pytest

from inference.clock import RealClock
from inference.config import load_settings
from inference.engines.replay import ReplayEngine, load_traces
from inference.evaluate import evaluate, main, majority, pass_at, read_problem_list

REPLAY_FIELDS = {"problem_id", "sample", "text", "tokens", "seconds", "finish_reason", "variant", "seed", "answer",
                 "correct", "gold"}


def boxed(answer, tokens_note=""):
    return f"<think>\nwork{tokens_note}\n\\boxed{{{answer}}}\n</think>\nThe answer is \\boxed{{{answer}}}."


def replay_engine(tmp_path, samples: dict[str, list[tuple[str, int]]]) -> ReplayEngine:
    """A real replay engine (real clock, recorded seconds of a few ms) serving known completions."""
    path = tmp_path / "recorded.jsonl"
    with path.open("w") as f:
        for pid, items in samples.items():
            for i, (text, tokens) in enumerate(items):
                f.write(json.dumps({"problem_id": pid, "sample": i, "text": text, "tokens": tokens,
                                    "seconds": 0.01 * (i + 1)}) + "\n")
    return ReplayEngine(path, clock=RealClock())


def replay_settings(**overrides):
    base = {"sampling.stop_rule": "none"}
    base.update(overrides)
    return load_settings(None, base, engine="replay", traces="unused.jsonl")


def test_unbiased_pass_at_k():
    assert pass_at(4, 1, 1) == pytest.approx(0.25)
    assert pass_at(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))  # 0.5
    assert pass_at(4, 0, 4) == 0.0 and pass_at(4, 3, 2) == 1.0


def test_integer_set_report_matches_the_samples(tmp_path):
    # p1: 3 of 4 correct (gold 70), p2: 1 of 4 correct (gold 588) but the majority (3 × 12) is wrong.
    engine = replay_engine(tmp_path, {
        "p1": [(boxed(70), 100), (boxed(70), 200), (boxed(5), 900), (boxed(70), 300)],
        "p2": [(boxed(12), 800), (boxed(588), 100), (boxed(12), 700), ("no answer at all", 1000)],
    })
    problems = [{"id": "p1", "problem": "x", "answer": "70"}, {"id": "p2", "problem": "y", "answer": "588"}]
    traces = tmp_path / "out" / "traces.jsonl"
    r = evaluate(replay_settings(), problems, 4, traces, engine=engine, show=None)

    assert (r["n_problems"], r["n_samples"], r["k"], r["grading"]) == (2, 8, 4, "integer")
    assert r["pass@1"]["mean"] == pytest.approx((0.75 + 0.25) / 2)
    assert r["pass@1"]["sd"] == pytest.approx(0.3536, abs=1e-4)  # SD over problems of 0.75 and 0.25
    assert r["pass@k"]["1"] == pytest.approx(0.5)
    assert r["pass@k"]["4"] == pytest.approx(1.0)
    assert r["maj@k"] == pytest.approx(0.5)  # p1's majority is right, p2's is wrong
    assert r["tokens"]["correct_mean"] == pytest.approx((100 + 200 + 300 + 100) / 4)
    assert r["tokens"]["wrong_mean"] == pytest.approx((900 + 800 + 700 + 1000) / 4)
    assert r["no_answer"] == pytest.approx(1 / 8)

    records = [json.loads(line) for line in traces.read_text().splitlines()]
    assert len(records) == 8 and all(REPLAY_FIELDS <= set(rec) for rec in records)
    assert len(load_traces(traces)) == 8  # the replay engine accepts the file as it is
    assert sum(rec["tokens"] for rec in records) == r["tokens"]["total"]
    p2 = sorted((rec for rec in records if rec["problem_id"] == "p2"), key=lambda rec: rec["sample"])
    assert [rec["answer"] for rec in p2] == [12, 588, 12, None]
    assert [rec["correct"] for rec in p2] == [False, True, False, False]
    assert {rec["gold"] for rec in p2} == {"588"}


def test_free_form_answers_are_graded_with_math_verify(tmp_path, repo_root):
    problems = read_problem_list(repo_root / "tests/data/math500_mini.jsonl")
    golds = {p["id"]: p["answer"] for p in problems}
    assert golds["test/algebra/2584.json"] == "\\frac{14}{3}"
    engine = replay_engine(tmp_path, {
        "test/precalculus/807.json": [(boxed("(3, \\frac{\\pi}{2})"), 50), (boxed("(3, 90)"), 50)],
        "test/number_theory/572.json": [(boxed("9"), 50), (boxed("9.0"), 50)],
        "test/algebra/2584.json": [(boxed("4\\frac{2}{3}"), 50), (boxed("\\dfrac{14}{3}"), 50)],
    })
    r = evaluate(replay_settings(), problems, 2, tmp_path / "t.jsonl", engine=engine, show=None)
    assert r["grading"] == "math"  # the set has non-integer gold answers
    by_id = {row["id"]: row for row in r["problems"]}
    assert by_id["test/precalculus/807.json"]["correct"] == 1
    assert by_id["test/number_theory/572.json"]["correct"] == 2
    assert by_id["test/algebra/2584.json"]["correct"] >= 1  # \dfrac{14}{3}; the mixed number is math-verify's call
    assert by_id["test/number_theory/572.json"]["maj_correct"] is True


def test_free_form_majority_groups_equivalent_answers():
    assert majority(["\\frac{1}{2}", "3", "0.5", None], "math") == "\\frac{1}{2}"
    assert majority([None, None], "math") is None
    assert majority([5, 7, 7, None], "integer") == 7


@pytest.mark.slow
def test_tiny_model_end_to_end_on_cpu(tmp_path, tiny_model_dir, repo_root, capsys):
    traces, out = tmp_path / "traces.jsonl", tmp_path / "eval.json"
    code = main(["--model", str(tiny_model_dir), "--problems", str(repo_root / "tests/data/aime2025_mini.jsonl"),
                 "-k", "2", "--engine", "transformers", "--max-tokens", "12", "--traces", str(traces),
                 "--out", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    records = [json.loads(line) for line in traces.read_text().splitlines()]
    assert len(load_traces(traces)) == len(records) == 3 * 2
    assert all(REPLAY_FIELDS <= set(rec) for rec in records)
    assert all(0 < rec["tokens"] <= 12 and rec["seconds"] > 0 for rec in records)
    assert {rec["problem_id"] for rec in records} == {p["id"] for p in r["problems"]}
    assert (r["n_problems"], r["n_samples"], r["k"], r["engine"]) == (3, 6, 2, "transformers")
    for key in ("pass@1", "pass@k", "maj@k", "tokens", "seconds", "finish_reasons", "problems"):
        assert key in r
    assert set(r["pass@1"]) == {"mean", "sd", "stderr"} and set(r["pass@k"]) == {"1", "2"}
    assert sum(r["finish_reasons"].values()) == 6
    assert r["tokens"]["total"] == sum(rec["tokens"] for rec in records)
    assert r["pass@1"]["mean"] == pytest.approx(sum(bool(rec["correct"]) for rec in records) / 6)
    assert "pass@1" in capsys.readouterr().out


def test_cli_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["--problems", str(tmp_path / "none.jsonl"), "--model", "m"]) == 2
    assert "none.jsonl" in capsys.readouterr().err


def test_accuracy_vs_tokens_curve_and_plot(tmp_path):
    from inference.plots import accuracy_at_caps, plot_accuracy_vs_tokens

    samples = [(100, True), (400, True), (1000, False), (50, False)]
    traces = tmp_path / "model-a" / "traces.jsonl"
    traces.parent.mkdir()
    traces.write_text("".join(json.dumps({"problem_id": "p", "sample": i, "text": "", "tokens": t, "seconds": 1.0,
                                          "correct": c}) + "\n" for i, (t, c) in enumerate(samples)))
    points = accuracy_at_caps(traces, caps=[100, 400, 1000])
    assert points == [(pytest.approx(87.5), 0.25), (pytest.approx(237.5), 0.5), (pytest.approx(387.5), 0.5)]
    png = tmp_path / "acc.png"
    plot_accuracy_vs_tokens([traces], png)
    assert png.stat().st_size > 10_000
