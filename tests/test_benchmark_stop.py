"""inference/benchmark.py's CPU-only parts: stop detection on long synthetic samples (the kit's streaming path, the
detector alone, find_stop and the old whole-text rescan must all cut at the same place) and the stop-rule
comparison on traces. Speed is printed by the script, never asserted here."""

import inference.benchmark as benchmark
from inference.answers import extract_answer, find_stop


def test_stop_detection_benchmark_cuts_agree(capsys):
    benchmark.benchmark_stop_detection(tokens=3000, samples=2, old_samples=1)  # raises if any two cuts differ
    out = capsys.readouterr().out
    for rule in benchmark.shipped_stop_rules():
        assert out.count(f"rule {rule}") == 2  # few and many braces


def test_synthetic_samples_have_an_early_box_and_a_final_one():
    for braces in (False, True):
        deltas = benchmark.synthetic_deltas(5000, braces, seed=1)
        text = "".join(deltas)
        assert len(deltas) == 5000 and text.index("\\boxed{12}") < 5000 < len(text)
        assert extract_answer(text) == 13 and find_stop(text, "think") == text.index("</think>") + len("</think>")
        assert find_stop(text, "boxed_after_think") == len(text) - 2  # right after the final box, before "$."


def test_stop_rule_comparison_counts_changed_votes():
    traces = benchmark.changed_mind_traces(1.0, problems=3, samples=4)  # every sample changes its mind
    results = benchmark.measure_stop_rules(traces)
    assert results["boxed_after_think"]["votes_changed"] == 0 and results["none"]["votes_changed"] == 0
    assert results["think"]["votes_changed"] == 12 and results["think"]["correct_votes"] == 0
    assert results["boxed_after_think"]["correct_votes"] == 12 == results["none"]["correct_votes"]
    assert results["think"]["tokens"] < results["boxed_after_think"]["tokens"] <= results["none"]["tokens"]
