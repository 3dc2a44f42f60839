"""Chat formats and the tool loop: parsing tool calls, framing outputs, prompts that extend each other, limits, trace
records and their replay; then the loop end to end on both live engines with the toy tool-using model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.engines.base import SampleRequest
from inference.formats import FORMATS, ChatFormat, CodeBlockFormat, ToolCall, get_format
from inference.tools import Conversation, ToolSettings, cut_turns, replay_seconds

REPO = Path(__file__).resolve().parents[1]
TIR_MODEL = REPO / "models" / "toy-math-tir"
TIR_SYSTEM = "Use python to compute, and put your final answer within \\boxed{}."


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_registry_names_and_errors():
    assert isinstance(get_format("r1"), ChatFormat) and set(FORMATS) >= {"r1", "python_block", "tool_call"}
    with pytest.raises(ValueError, match="prompts.format: unknown format 'nope'"):
        get_format("nope")
    with pytest.raises(ValueError, match="prompts.format_options"):
        get_format("python_block", bogus=1)


def test_python_block_tool_call_parsing():
    fmt = get_format("python_block")
    assert fmt.stop_strings == ["```\n"] and fmt.stop_token_ids == [] and fmt.skip_special_tokens
    turn = "Let me compute.\n```python\nx = 3\nprint(x * 7)\n```\n"
    assert fmt.tool_call(turn, []) == ToolCall(code="x = 3\nprint(x * 7)\n")
    assert fmt.tool_call("no code here\n```\n", []) is None  # a stop that closed some other block
    assert fmt.tool_call("```python\nx\n```\n```output\n3\n```\n", []) is None  # closed the output block
    assert fmt.tool_call("```python\nx = 1\n", []) is None  # not closed: no stop string yet
    assert fmt.frame_output("21\n") == "```output\n21\n```\n" and fmt.frame_output("21") == "```output\n21\n```\n"
    assert fmt.call_text("print(1)") == "```python\nprint(1)\n```\n"


def test_tool_call_tag_format():
    fmt = get_format("tool_call")
    assert fmt.stop_strings == ["</tool_call>"]
    assert fmt.tool_call("think\n<tool_call>\nprint(2 ** 10)\n</tool_call>", []) == ToolCall("print(2 ** 10)\n")
    assert fmt.frame_output("1024\n") == "\n```output\n1024\n```\n"


def test_r1_format_renders_the_chat_template_and_never_calls(tokenizer):
    fmt = get_format("r1")
    messages = [{"role": "user", "content": "What is 1 + 2?"}]
    expected = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                                add_special_tokens=False)
    assert fmt.prompt_ids(messages, tokenizer) == expected
    assert fmt.tool_call("```python\nprint(1)\n```\n", []) is None and fmt.stop_strings == []


def test_continue_ids_extend_the_previous_prompt(tokenizer):
    fmt = get_format("python_block")
    prompt = fmt.prompt_ids([{"role": "user", "content": "What is 6 * 7?"}], tokenizer)
    turn = tokenizer.encode("```python\nprint(6 * 7)\n```\n", add_special_tokens=False)
    nxt = fmt.continue_ids(prompt, turn, "42\n", tokenizer)
    assert nxt[: len(prompt) + len(turn)] == prompt + turn  # a prefix: vLLM's prefix cache reuses it
    assert tokenizer.decode(nxt[len(prompt) + len(turn):]) == "```output\n42\n```\n"
    assert fmt.continue_ids(prompt, turn, None, tokenizer) == prompt + turn


def test_config_reads_tools_and_format(tmp_path):
    from inference.config import load_settings

    settings = load_settings(REPO / "configs" / "inference" / "demo-tir.yaml")
    assert settings.tools.enabled and settings.prompts.format == "python_block"
    import csv

    from train.toy.tir import operands

    with open(settings.problems) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 10  # the demo serves at least 10 tool problems, all inside AIMO-3's answer range
    for row in rows:
        a, b = operands(row["problem"])
        assert a * b == int(row["answer"]) and settings.competition.answer.apply(a * b) == a * b
    with pytest.raises(ValueError, match="tools: unknown key"):
        load_settings(REPO / "configs" / "inference" / "demo.yaml", overrides={"tools.bogus": 1})
    with pytest.raises(ValueError, match="tools.max_turns"):
        load_settings(REPO / "configs" / "inference" / "demo.yaml", overrides={"tools.max_turns": 0})


def test_conversation_runs_calls_counts_and_records(tokenizer):
    settings = ToolSettings(enabled=True, max_calls=1, max_turns=4, timeout_seconds=5, pool_size=1)
    fmt = get_format("python_block")
    pool = settings.make_pool()
    try:
        prompt = fmt.prompt_ids([{"role": "user", "content": "q"}], tokenizer)
        conv = Conversation(fmt, settings, pool, prompt, started=0.0)
        turn1 = "```python\nx = 6 * 7\nprint(x)\n```\n"
        assert conv.end_turn(turn1, [1, 2, 3], now=2.0, max_tokens=100) == "tool"
        assert conv.run_call() == "```output\n42\n```\n"
        ids = conv.next_prompt_ids(tokenizer, now=2.5)
        assert ids[: len(prompt) + 3] == prompt + [1, 2, 3]
        # A second call is over max_calls: it does not run, the model reads why.
        assert conv.end_turn("```python\nprint(x)\n```\n", [4, 5], now=3.0, max_tokens=100) == "tool"
        assert "limit of 1 tool calls" in conv.run_call()
        assert conv.calls == 1 and conv.tokens == 5 and conv.turn == 2
        record = conv.trace("\\boxed{42}", 4, now=4.0)
        assert [t["call"] for t in record["turns"]] == ["x = 6 * 7\nprint(x)\n", "print(x)\n", None]
        assert record["turns"][0]["output"] == "42\n" and record["turns"][0]["seconds"] == 2.0
        assert record["tool_calls"] == 1 and record["tool_seconds"] > 0
        assert conv.text + "\\boxed{42}" == "".join(t["text"] + t["framed"] for t in record["turns"])
        # max_turns ends the sample; so does running out of tokens.
        assert conv.end_turn("more\n```\n", [6], now=5.0, max_tokens=100) == "continue"
        assert conv.end_turn("```python\nprint(1)\n```\n", [7], now=6.0, max_tokens=100) == "done"
        assert conv.finish_reason == "max_turns"
        conv.close()
        short = Conversation(fmt, settings, pool, prompt, started=0.0)
        assert short.end_turn(turn1, list(range(10)), now=1.0, max_tokens=10) == "done"
        assert short.finish_reason == "length"
    finally:
        pool.close()


def test_replay_timeline_and_cuts():
    turns = [
        {"text": "a" * 10, "tokens": 10, "seconds": 2.0, "call": "print(1)", "output": "1\n", "framed": "o" * 5,
         "tool_seconds": 3.0},
        {"text": "b" * 10, "tokens": 10, "seconds": 4.0, "call": None, "output": None, "framed": "",
         "tool_seconds": 0.0},
    ]
    trace = {"turns": turns, "tool_calls": 1, "tool_seconds": 3.0}
    assert replay_seconds(trace, 5) == 1.0  # halfway through the first turn's generation
    assert replay_seconds(trace, 12) == 5.0  # the tool output appears whole when the call ends
    assert replay_seconds(trace, 20) == 7.0 and replay_seconds(trace, 25) == 9.0
    assert replay_seconds({}, 3) is None
    cut = cut_turns(trace, 5)
    assert cut["tool_calls"] == 0 and cut["turns"][0]["call"] is None and cut["turns"][0]["text"] == "aaaaa"
    cut = cut_turns(trace, 20)
    assert cut["tool_calls"] == 1 and cut["tool_seconds"] == 3.0 and cut["turns"][1]["text"] == "bbbbb"


# ---- end to end, on the toy tool-using model ------------------------------------------------------------------------

def tir_requests(problems: list[tuple[str, str]], samples: int = 2, max_tokens: int = 120):
    """Greedy requests: the engine tests check the loop, not the toy model's sampling accuracy."""
    return [SampleRequest(pid, i, [{"role": "system", "content": TIR_SYSTEM}, {"role": "user", "content": text}],
                          seed=100 + i, max_tokens=max_tokens, temperature=0.0, stop_rule="think")
            for pid, text in problems for i in range(samples)]


def check_tool_samples(samples, answers: dict[str, int]):
    from inference.answers import extract_answer

    assert samples
    for s in samples:
        assert s.extra["tool_calls"] == 1, s.text
        first = s.extra["turns"][0]
        assert first["call"].startswith("print(") and first["output"] == f"{answers[s.problem_id]}\n"
        assert s.text == "".join(t["text"] + t["framed"] for t in s.extra["turns"])
        assert s.tokens == sum(t["tokens"] for t in s.extra["turns"])
        assert s.seconds >= s.extra["tool_seconds"] > 0
        # The answer is the model's copy of that output (it can miss a digit: the demo's vote measures accuracy).
        assert extract_answer(s.text) is not None and s.text.index("\\boxed") > s.text.index("```output")
        json.dumps(s.to_trace())  # the trace record is plain JSON


# Every print of the model's code waits a moment first, so a test can abort a sample in the middle of its call.
SLOW_PRINT = "import time\n_print = print\ndef print(*args, **kwargs):\n    time.sleep(1.5)\n    _print(*args, **kwargs)\n"


def wait_for(condition, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def calling(conversation) -> bool:
    """Whether this sample's code is running in the sandbox right now."""
    session = conversation._session if conversation is not None else None
    return session is not None and session._busy


def check_engine(engine, collect, in_tool_call):
    problems = [("p1", "What is 347 * 29?"), ("p2", "What is 918 * 64?")]
    answers = {"p1": 347 * 29, "p2": 918 * 64}
    engine.submit(tir_requests(problems))
    check_tool_samples(collect(engine, 4, timeout=300), answers)
    # Abort in the middle of a tool call: the sample comes back at once as "aborted", with its turns so far.
    engine.submit(tir_requests([("slow", "What is 123 * 45?")], samples=1))
    wait_for(lambda: in_tool_call(engine))
    (aborted,) = engine.abort("slow")
    assert aborted.finish_reason == "aborted" and aborted.text.rstrip().endswith("```")
    assert "```output" not in aborted.text and aborted.extra["turns"][0]["call"].startswith("print(")
    assert engine.progress().running == 0
    assert engine.poll(2.0) == []  # nothing of the aborted sample leaks out later


@pytest.mark.slow
def test_tool_loop_on_the_transformers_engine():
    from inference.engines.transformers_engine import TransformersEngine
    from tests.test_engine_transformers import collect

    tools = ToolSettings(enabled=True, pool_size=2, timeout_seconds=10, setup_code=SLOW_PRINT)
    engine = TransformersEngine(str(TIR_MODEL), batch_size=4, chat_format="python_block", tools=tools)
    engine.start()
    try:
        check_engine(engine, collect, lambda e: any(calling(j.conversation) for j in list(e._tooling)))
    finally:
        engine.shutdown()


@pytest.mark.slow
@pytest.mark.vllm
def test_tool_loop_on_the_vllm_engine():
    pytest.importorskip("vllm")
    from inference.engines.vllm_engine import VLLMEngine
    from tests.test_engine_transformers import collect

    tools = ToolSettings(enabled=True, pool_size=2, timeout_seconds=10, setup_code=SLOW_PRINT)
    engine = VLLMEngine(str(TIR_MODEL), engine_args={"enforce_eager": True, "max_model_len": 1024, "max_num_seqs": 8,
                                                     "seed": 0, "enable_prefix_caching": True},
                        stall_seconds=60, chat_format="python_block", tools=tools)
    engine.start()
    try:
        check_engine(engine, collect, lambda e: any(calling(s.conversation) for s in list(e._streams.values())))
    finally:
        engine.shutdown()


@pytest.mark.slow
def test_tool_disabled_means_the_model_guesses_the_output():
    from inference.engines.transformers_engine import TransformersEngine
    from tests.test_engine_transformers import collect

    engine = TransformersEngine(str(TIR_MODEL), batch_size=4, chat_format="python_block")
    engine.start()
    try:
        engine.submit(tir_requests([("p1", "What is 347 * 29?")]))
        for s in collect(engine, 2, timeout=300):
            assert "turns" not in s.extra and "```output" in s.text  # one turn; the model wrote the output itself
    finally:
        engine.shutdown()


def tool_trace_record(problem_id="p", sample=0, answer=42, seconds=9.5) -> dict:
    """A recorded tool-using sample as the engines write it (two turns around one call)."""
    turns = [
        {"text": "<think>\n```python\nprint(6 * 7)\n```\n", "tokens": 12, "seconds": 2.0, "call": "print(6 * 7)\n",
         "output": f"{answer}\n", "framed": f"```output\n{answer}\n```\n", "tool_seconds": 3.0},
        {"text": f"\\boxed{{{answer}}}\n</think>\nThe answer is \\boxed{{{answer}}}.", "tokens": 20, "seconds": 4.0,
         "call": None, "output": None, "framed": "", "tool_seconds": 0.0},
    ]
    text = "".join(t["text"] + t["framed"] for t in turns)
    return {"problem_id": problem_id, "sample": sample, "text": text, "tokens": 32, "seconds": seconds,
            "finish_reason": "stop", "turns": turns, "tool_calls": 1, "tool_seconds": 3.0}


def test_replay_engine_replays_tool_samples():
    from inference.clock import VirtualClock
    from inference.engines.replay import ReplayEngine

    record = tool_trace_record()
    engine = ReplayEngine([record], clock=VirtualClock())
    request = SampleRequest("p", 0, [], seed=0, max_tokens=1000, stop_rule="none")
    engine.submit([request])
    (full,) = engine.poll(60)
    assert full.text == record["text"] and full.tokens == 32 and full.seconds == pytest.approx(9.5)
    assert full.extra["tool_calls"] == 1 and full.extra["turns"] == record["turns"]

    # The "think" stop rule cuts the sample at </think>, inside its second turn: the call and its 3 tool seconds
    # stay, the turn's generated part shrinks.
    engine.submit([SampleRequest("p", 0, [], seed=0, max_tokens=1000, stop_rule="think")])
    (cut,) = engine.poll(60)
    kept = len("\\boxed{42}\n</think>") / len(record["turns"][1]["text"])
    assert cut.finish_reason == "answer" and cut.text.endswith("</think>")
    assert cut.extra["tool_calls"] == 1 and cut.extra["tool_seconds"] == 3.0
    assert cut.tokens == 12 + round(20 * kept)
    assert cut.seconds == pytest.approx(9.5 * (2.0 + 3.0 + 4.0 * kept) / 9.0)


def test_solver_votes_on_replayed_tool_samples(tmp_path):
    from inference.config import load_settings
    from inference.server import Predictor

    path = tmp_path / "tool-traces.jsonl"
    path.write_text("".join(json.dumps(tool_trace_record("p", i)) + "\n" for i in range(8)))
    settings = load_settings(REPO / "configs" / "inference" / "demo-tir.yaml", engine="replay", traces=str(path),
                             virtual_clock=True)
    predictor = Predictor(settings, total_seconds=600, problems=1)
    assert predictor.predict("p", "What is 6 * 7?")["answer"].item() == 42
    assert predictor.results["p"].valid >= 4


def test_simulator_scores_tool_traces(tmp_path):
    from inference.simulate import compare, load_trace_set

    path = tmp_path / "tool-traces.jsonl"
    with path.open("w") as f:
        for pid, answer in (("a", 42), ("b", 17)):
            for i in range(8):
                f.write(json.dumps({**tool_trace_record(pid, i, answer), "gold": str(answer)}) + "\n")
    result = compare(load_trace_set(path), "aimo3", "recorded", REPO / "configs" / "simulate" / "policies.yaml",
                     orders=3, seed=0, problems=2, only=["default"])
    default = result["policies"]["default"]
    assert default["p_correct"] == {"a": 1.0, "b": 1.0} and default["score"]["mean"] == 2
