"""The transformers engine on real tiny models: seeds, max_tokens, stop rules, abort, threads, restart.

Also defines `make_scripted_model`, a tiny model that writes a chosen text deterministically, which the vLLM engine
tests use too: a random model never boxes an answer, so stop rules need a model that does.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from inference.answers import find_stop
from inference.engines.base import EngineError, SampleRequest
from inference.engines.transformers_engine import TransformersEngine, _Job

pytestmark = pytest.mark.slow

SCRIPT = "<think>\\boxed{7}</think>"  # what the scripted model writes right after the chat prompt
MESSAGES = [{"role": "user", "content": "What is 3 + 4?"}]


def make_scripted_model(out_dir: str | Path, script: str = SCRIPT, after: str = "\n") -> Path:
    """A one-layer tiny Qwen2 whose next token depends only on the current one, wired to write `script` after the
    token(s) of `after` (the end of the chat template's generation prompt), then random tokens.

    Attention and MLP outputs are zeroed, so the last hidden state is the current token's normalized embedding; the
    (untied) output head maps each script token's embedding onto the next script token with a large logit (~45
    against ~4), so the script comes out with any seed and temperature 1. Script tokens must all differ."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.toy.model_factory import make_tiny_model, successor_head

    out = make_tiny_model(out_dir, seed=0, num_layers=1)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = tokenizer.encode(after + script, add_special_tokens=False)
    head = successor_head(model.model.embed_tokens.weight.detach(), ids, scale=4.0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(out)
    return out


def requests(problem_id, seeds, max_tokens=24, stop_rule="none", messages=MESSAGES, temperature=1.0):
    return [SampleRequest(problem_id, i, messages, seed=seed, max_tokens=max_tokens, stop_rule=stop_rule,
                          temperature=temperature) for i, seed in enumerate(seeds)]


def collect(engine, count, timeout=120.0):
    """Poll until `count` samples finished (fails after `timeout` seconds)."""
    samples, deadline = [], time.monotonic() + timeout
    while len(samples) < count:
        assert time.monotonic() < deadline, f"only {len(samples)} of {count} samples finished in {timeout}s"
        samples += engine.poll(1.0)
    return sorted(samples, key=lambda s: (s.problem_id, s.sample))


@pytest.fixture(scope="module")
def scripted_dir(tmp_path_factory):
    return make_scripted_model(tmp_path_factory.mktemp("scripted-model"))


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    e = TransformersEngine(str(tiny_model_dir), batch_size=4)
    e.start()
    yield e
    e.shutdown()


@pytest.fixture(scope="module")
def scripted_engine(scripted_dir):
    e = TransformersEngine(str(scripted_dir), batch_size=4)
    e.start()
    yield e
    e.shutdown()


def test_samples_have_ids_tokens_and_seeded_text(engine):
    # Six samples in two batches of four: seeds 0, 1, 2 twice each.
    engine.submit(requests("p", [0, 1, 2, 0, 1, 2]))
    samples = collect(engine, 6)
    assert [(s.problem_id, s.sample) for s in samples] == [("p", i) for i in range(6)]
    for s in samples:
        assert 0 < s.tokens <= 24 and s.seconds > 0 and s.text
        assert s.finish_reason in ("length", "stop") and s.extra["prompt_tokens"] > 0
        if s.finish_reason == "length":
            assert s.tokens == 24
    texts = [s.text for s in samples]
    assert texts[0:3] == texts[3:6]  # same seed, same text, even in another batch
    assert len(set(texts[0:3])) == 3  # different seeds, different texts
    assert engine.progress().running == 0


def test_max_tokens_is_per_sample_inside_a_batch(engine):
    reqs = requests("m", [5, 6])
    reqs[0].max_tokens = 3
    engine.submit(reqs)
    short, long = collect(engine, 2)
    assert short.tokens <= 3 and long.tokens > 3


def test_stop_rules_cut_the_scripted_answer(scripted_engine):
    scripted_engine.submit(requests("think", [0, 1, 2], stop_rule="think")
                           + requests("boxed", [0, 1, 2], stop_rule="first_boxed")
                           + requests("none", [0, 1, 2], max_tokens=12, stop_rule="none")
                           + requests("final", [0, 1, 2], max_tokens=12, stop_rule="boxed_after_think"))
    samples = collect(scripted_engine, 12)
    by_rule = {rule: [s for s in samples if s.problem_id == rule] for rule in ("think", "boxed", "none", "final")}
    for s in by_rule["think"]:
        assert (s.text, s.tokens, s.finish_reason) == ("<think>\\boxed{7}</think>", 7, "answer")
    for s in by_rule["boxed"]:
        assert (s.text, s.tokens, s.finish_reason) == ("<think>\\boxed{7}", 6, "answer")
    for s in by_rule["none"]:
        assert s.text.startswith(SCRIPT) and s.finish_reason in ("length", "stop") and s.tokens <= 12
    for s in by_rule["final"]:  # never cut at </think>: only at a box the random continuation may write after it
        assert s.text.startswith(SCRIPT) and len(s.text) > len(SCRIPT) and s.tokens <= 12
        assert find_stop(s.text, "boxed_after_think") == (len(s.text) if s.finish_reason == "answer" else None)
    for s in samples:  # nothing after the cut point
        rule = {"think": "think", "boxed": "first_boxed", "none": "none", "final": "boxed_after_think"}[s.problem_id]
        assert find_stop(s.text, rule) in (None, len(s.text))


def _decode_one_by_one(engine, ids):
    job = _Job(SampleRequest("d", 0, MESSAGES, seed=0, max_tokens=10_000, stop_rule="none"), [0], 10_000, 0.0)
    pieces = []
    for token in ids:
        job.token_ids.append(token)
        pieces.append(engine._decode_new(job))
    return job.text, "".join(pieces)


def test_incremental_decoding_matches_the_full_decode(engine):
    tokenizer = engine._tokenizer
    text = "<think>\nLet x = 3.  \\boxed{7}\tünïcode — 数学 ∑ 😀\n</think>\nThe answer is \\boxed{12}."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert _decode_one_by_one(engine, ids) == (text, text)
    rng = random.Random(0)
    for _ in range(100):  # random tokens: split multi-byte characters, specials, anything a sampler may draw
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 60))]
        full = tokenizer.decode(ids, skip_special_tokens=True)
        incremental, pieces = _decode_one_by_one(engine, ids)
        assert incremental == pieces
        # equal, but for an unfinished character at the very end, which waits for the next token
        assert incremental == full or (full.endswith("\ufffd") and incremental == full.rstrip("\ufffd")), (full, ids)


def test_abort_stops_generation(engine):
    engine.submit(requests("long", [0, 1, 2, 3], max_tokens=4000))
    deadline = time.monotonic() + 60
    while engine.progress().tokens_in_flight < 20:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    returned = engine.abort("long")
    aborted = [s for s in returned if s.finish_reason == "aborted"]
    assert aborted and all(0 < s.tokens < 4000 and s.problem_id == "long" for s in aborted)
    assert engine.progress().running == 0 and engine.progress().tokens_in_flight == 0
    time.sleep(0.5)
    assert engine._active == []  # the running generate() ended at its next step
    assert engine.poll(0.2) == []  # and nothing of the aborted problem comes later


def test_calls_from_another_thread(engine):
    result = {}

    def solve():
        engine.submit(requests("thread", [7, 8]))
        result["samples"] = collect(engine, 2)

    worker = threading.Thread(target=solve)
    worker.start()
    worker.join(120)
    assert [s.sample for s in result["samples"]] == [0, 1]


def test_shutdown_then_start_again(scripted_dir):
    e = TransformersEngine(str(scripted_dir), batch_size=2)
    with pytest.raises(EngineError):
        e.submit(requests("x", [0]))  # not started
    e.start()
    e.submit(requests("a", [0, 1, 2], max_tokens=2000))
    e.shutdown()  # with work in flight
    with pytest.raises(EngineError):
        e.poll(0.1)
    e.start()
    e.submit(requests("b", [0], stop_rule="think"))
    assert collect(e, 1)[0].text == SCRIPT
    e.shutdown()


def test_prompt_longer_than_the_context_is_cut_to_fit_and_one_that_cannot_fit_is_refused(engine):
    engine.submit(requests("huge", [0], max_tokens=8, messages=[{"role": "user", "content": "1 + 1 " * 3000}]))
    assert len(collect(engine, 1)) == 1 and engine.prompt_cuts["huge"]["kept_tokens"] < engine._context
    system = {"role": "system", "content": "1 + 1 " * 3000}
    with pytest.raises(ValueError, match="context"):
        engine.submit(requests("none", [0], messages=[system, {"role": "user", "content": "1 + 1"}]))
