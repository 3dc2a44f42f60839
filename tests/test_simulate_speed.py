"""The simulator's fast paths give exactly the results of the straightforward ones: aborted samples' votes from one
parse per recorded text, requests built once per slot, and whole comparisons equal to numbers the simulator gave
before these paths existed."""

import json
import random

import pytest

from inference.answers import AnswerSpec, extract_final_answer
from inference.clock import VirtualClock
from inference.engines.base import SampleRequest
from inference.engines.replay import PrefixAnswers, ReplayCuts, ReplayEngine
from inference.simulate import compare, hard_heavy_traces, load_trace_set, synthetic_traces

PIECES = ["\\boxed{", "\\boxed {", "\\boxed  ", "\\boxed 5", "\\boxed 42$", "\\fbox{7}", "}", "{", "</think>", "\n",
          "The final answer is 12.", "Answer: 3", " ", "x", "17", "\\boxed{}", "\\boxed{?}", "\\frac{1}{2}", "$",
          "**Final Answer**\n", "\\boxed{\\text{answer}}", "</th", "ink>", "\\boxedx", "\\fbox 9", "-4", "\\boxed{-3}"]


def test_prefix_answers_equal_extract_final_answer_on_every_prefix():
    rng = random.Random(0)
    texts = [r["text"] for r in synthetic_traces(problems=1, samples=2, seed=1, text_chars=400)]
    texts += ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 30))) for _ in range(80)]
    checked = 0
    for i, text in enumerate(texts):
        prefixes, spec = PrefixAnswers(text), (None, AnswerSpec())[i % 2]
        for n in range(len(text) + 1):
            assert prefixes.answer(n, spec) == extract_final_answer(text[:n], spec), (text[:n], spec)
            checked += 1
    assert checked > 10_000


def test_an_aborted_replay_sample_votes_what_its_text_says():
    text = "<think>\nso \\boxed{12} maybe " + "x" * 50 + "\n\\boxed{7}\n</think>\nThe answer is \\boxed{7}."
    traces = {("p", 0): {"problem_id": "p", "sample": 0, "text": text, "tokens": 100, "seconds": 100.0}}
    cuts, spec = ReplayCuts(), AnswerSpec()
    answers = []
    for seconds in (5, 50, 85, 99):
        engine = ReplayEngine(traces, VirtualClock(), cuts=cuts)  # one parse of the text serves every engine
        engine.submit([SampleRequest(problem_id="p", sample=0, messages=[], seed=0, max_tokens=1000,
                                     stop_rule="none")])
        assert engine.poll(seconds) == []
        (partial,) = engine.abort("p")
        assert partial.finish_reason == "aborted" and len(partial.text) == int(len(text) * seconds / 100)
        answers.append(engine.answer_of(partial, spec))
        assert answers[-1] == extract_final_answer(partial.text, spec)
    assert answers == [None, 12, 7, None]  # the last: a box after </think> not closed yet


# The simulator's own results on this case (3 policies, 3 hardware timings, 12 orders, AIMO-3's two-run score too),
# computed by inference/simulate.py at the commit before the fast paths: per policy [score mean, score SD, seconds
# mean, tokens mean, two-run score mean, stop reasons per run].
BASE = """competition: aimo3
engine: vllm
model: none
sampling: {samples: 16, max_tokens: 16384, temperature: 1.0, top_p: 0.9, min_p: 0.05, stop_rule: boxed_after_think}
prompts:
  variants:
    - {name: think, weight: 8, system: "Please reason step by step, and put your final answer within \\\\boxed{}."}
    - {name: verify, weight: 2,
       system: "Please reason step by step, check your result once, and put your final answer within \\\\boxed{}."}
  answer_reminder: "The answer is an integer between {min} and {max}."
voting: {kind: calibrated, confidence: 0.8, min_votes: 3, straggler_fraction: 0.75, hopeless_after: 4}
time: {kind: share, expected_use_factor: 0.8, expected_prior_seconds: 200, min_seconds: 60, max_seconds: 3600,
       stretch: 1.5}
watchdog: {stall_seconds: 180, max_restarts: 2, poll_seconds: 1.0}
"""
POLICIES = """base: {base}
policies:
  share:
    overrides: {{time.open_votes: 0, time.stretch_reserve_factor: null}}
  fixed:
    overrides: {{sampling.samples: 12, voting.kind: k_of_n, voting.k: 4, voting.n: 5,
      voting.straggler_fraction: 0.8334, time.kind: fixed, time.base_seconds: 350, time.bank_max_seconds: 210,
      time.min_seconds: 0, time.max_seconds: 560, time.stretch: 1.0, voting.hopeless_after: null}}
  reserve:
    overrides: {{sampling.samples: 8, voting.kind: k_of_n, voting.k: 4, voting.n: null,
      voting.straggler_fraction: null, time.kind: reserve, time.reserve_seconds: 240, time.min_seconds: 240,
      time.max_seconds: 840, time.stretch: 1.0, voting.hopeless_after: null}}
"""
BEFORE = {
    "recorded": {
        "share": [9.25, 0.754, 3524.8, 1292189.0, 9.458,
                  {"all_finished": 0.417, "calibrated": 6.083, "deadline": 5.333, "hopeless": 1.333,
                   "stragglers": 0.833}],
        "fixed": [8.333, 1.614, 3580.0, 980401.0, 8.333,
                  {"all_finished": 1.25, "deadline": 6.333, "global_cutoff": 2.0, "k_of_n": 4.417}],
        "reserve": [9.0, 0.953, 3517.0, 664743.0, 8.917, {"all_finished": 0.333, "deadline": 8.667, "k_of_n": 5.0}]},
    "h100": {
        "share": [11.0, 0.0, 1389.3, 1780395.0, 11.0, {"all_finished": 3.0, "calibrated": 8.0, "hopeless": 3.0}],
        "fixed": [10.167, 1.115, 1511.6, 1567461.0, 10.042, {"all_finished": 8.333, "k_of_n": 5.667}],
        "reserve": [9.833, 0.718, 1379.2, 1067964.0, 9.583, {"all_finished": 8.5, "k_of_n": 5.5}]},
    "l4x4": {
        "share": [10.167, 1.193, 5502.8, 1527721.0, 10.667,
                  {"all_finished": 1.583, "calibrated": 7.167, "deadline": 3.333, "hopeless": 1.917}],
        "fixed": [10.083, 0.793, 4583.1, 1144032.0, 10.042,
                  {"all_finished": 0.083, "deadline": 8.583, "k_of_n": 5.333}],
        "reserve": [9.833, 0.718, 5444.2, 1062785.0, 9.583,
                    {"all_finished": 8.167, "deadline": 0.333, "k_of_n": 5.5}]},
}


@pytest.mark.parametrize("hardware, total_seconds", [("recorded", 4000.0), ("h100", 2500.0), ("l4x4", 6000.0)])
def test_fast_paths_give_the_numbers_the_simulator_gave_before_them(tmp_path, hardware, total_seconds):
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "policies.yaml").write_text(POLICIES.format(base=tmp_path / "base.yaml"))
    records = synthetic_traces(problems=8, samples=16, seed=5, text_chars=3000)
    records += hard_heavy_traces(easy=2, medium=2, hard=2, samples=16, seed=5, text_chars=3000)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = compare(load_trace_set(tmp_path / "t.jsonl"), "aimo3", hardware, tmp_path / "policies.yaml", 12, seed=3,
                     problems=14, total_seconds=total_seconds, two_runs=True)
    got = {name: [p["score"]["mean"], p["score"]["sd"], p["seconds"]["mean"], p["tokens"]["mean"],
                  p["two_run"]["mean"], p["stop_reasons"]] for name, p in result["policies"].items()}
    assert got == BEFORE[hardware]
