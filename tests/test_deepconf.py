"""DeepConf online termination (arXiv 2508.15260): the one threshold rule every engine uses
(inference.entropy.ConfidenceGate), and the policy reaching the replay engine through the solver's requests."""

import pytest

from inference.clock import VirtualClock
from inference.config import load_settings
from inference.engines.replay import ReplayEngine
from inference.entropy import ConfidenceGate, confidence_threshold
from inference.solver import Solver


def test_threshold_is_the_quantile_of_the_warmup_samples_lowest_confidence():
    assert confidence_threshold([5.0, 9.0, 7.0, 6.0], 0.5) == 7.0  # sorted[int(0.5 · 4)]
    assert confidence_threshold([5.0, 9.0, 7.0, 6.0], 0.1) == 5.0
    assert confidence_threshold([5.0, 9.0, 7.0, 6.0], 0.9) == 9.0  # never past the last
    assert confidence_threshold([3.0], 0.99) == 3.0
    with pytest.raises(ValueError, match="no warmup"):
        confidence_threshold([], 0.5)


def test_gate_holds_off_until_the_warmup_and_then_terminates_strictly_below():
    gate = ConfidenceGate(0.5, warmup=3)
    assert not gate.terminates(0.0)  # no threshold before the warmup
    assert gate.finished(None) is False  # a sample without logprobs does not count
    assert gate.finished(6.0) is False and gate.finished(4.0) is False and not gate.terminates(0.0)
    assert gate.finished(8.0) is True  # the third: the threshold is set now
    assert gate.threshold == 6.0 and gate.lowest == [6.0, 4.0, 8.0]
    assert gate.terminates(5.9) and not gate.terminates(6.0) and not gate.terminates(None)
    assert gate.finished(1.0) is False and gate.threshold == 6.0  # later samples never move it
    for bad, match in (((0.0, 2), "confidence_stop"), ((1.0, 2), "confidence_stop"), ((0.5, 0), "warmup"),
                       ((True, 2), "confidence_stop")):
        with pytest.raises(ValueError, match=match):
            ConfidenceGate(*bad)


def _traces():
    # Samples 0-1: short and sure (lowest window confidence 9, 10); with warmup 2 and quantile 0.5 the threshold is
    # 10. Sample 2 boxes 3 but dips to 2 in its second window: terminated at 200 tokens, no vote. Sample 3 stays
    # at 11 and votes 5.
    def trace(i, tokens, windows, answer):
        return {"problem_id": "p", "sample": i, "text": f"</think> \\boxed{{{answer}}}", "tokens": tokens,
                "seconds": tokens / 10, "conf_window": 100, "conf_windows": windows, "conf_min": min(windows)}

    return [trace(0, 100, [9.0], 5), trace(1, 120, [10.0, 12.0], 5), trace(2, 1000, [11.0, 2.0] + [11.0] * 8, 3),
            trace(3, 1000, [11.0] * 10, 5)]


def settings(stop, **top):
    top = {"traces": "unused.jsonl", "virtual_clock": True} | top
    return load_settings(None, {"sampling.samples": 4, "sampling.stop_rule": "none", "voting.kind": "never",
                                "voting.straggler_fraction": None, "voting.confidence_stop": stop,
                                "voting.confidence_warmup": 2, "watchdog.poll_seconds": 1.0}, engine="replay", **top)


@pytest.mark.parametrize("stop", [0.5, None])
def test_the_policy_reaches_the_engine_through_the_requests_and_a_terminated_sample_never_votes(stop):
    # The engine is built without confidence settings (as the server builds it): the voting section decides.
    engine = ReplayEngine(_traces(), clock=VirtualClock())
    records = []
    solver = Solver(engine, settings(stop), trace_sink=records.append)
    requests = solver.requests("p", "q", 0, 4)
    assert all(r.confidence_stop == stop and r.confidence_warmup == 2 for r in requests)
    assert all(r.logprobs == (5 if stop else 0) for r in requests)  # the live engines need logprobs only then
    r = solver.solve("p", "q", deadline=10_000)
    by_sample = {x["sample"]: x for x in records}
    assert r.answer == 5 and r.stop_reason == "all_finished" and r.samples == 4 and not r.fallback
    if stop is None:
        assert r.votes == {5: 3, 3: 1} and r.tokens == 2220
        assert (by_sample[2]["finish_reason"], by_sample[2]["answer"]) == ("stop", 3)
    else:
        assert r.votes == {5: 3} and r.valid == 3 and r.tokens == 100 + 120 + 200 + 1000
        assert (by_sample[2]["finish_reason"], by_sample[2]["answer"], by_sample[2]["tokens"]) == \
            ("low_confidence", None, 200)


def test_the_server_guard_answers_a_problem_whose_unsure_samples_were_terminated(tmp_path):
    # The server builds the replay engine itself (no confidence arguments) and solves on its guarded worker thread:
    # the terminated sample counts as finished (the problem ends "all_finished", not at its deadline), never votes.
    import json

    import polars as pl

    from inference.server import Predictor

    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in _traces()))
    recorded = tmp_path / "recorded.jsonl"
    predictor = Predictor(settings(0.5, traces=str(path), record_traces=str(recorded)), total_seconds=3600,
                          problems=1, isolate=True)
    answer = predictor.predict(pl.Series(["p"]), pl.Series(["q"]))
    result = predictor.results["p"]
    predictor.shutdown()
    assert answer["answer"].item() == 5 and result.stop_reason == "all_finished" and result.votes == {5: 3}
    records = [json.loads(line) for line in recorded.read_text().splitlines()]
    assert [(r["sample"], r["answer"]) for r in records if r["finish_reason"] == "low_confidence"] == [(2, None)]
