"""Settings files: every shipped config loads; mistakes name the key and the file."""

import pytest

from inference.config import Competition, Prompts, PromptVariant, load_settings
from inference.prompts import build_messages, clip_problem, variant_schedule


@pytest.mark.parametrize("name", ["demo", "aimo2", "aimo3"])
def test_shipped_inference_configs_load(repo_root, name):
    s = load_settings(repo_root / f"configs/inference/{name}.yaml")
    assert s.engine == "vllm" and s.sampling.samples >= 1
    assert s.competition.name in ("aimo2", "aimo3")


def test_competition_facts_come_from_config():
    a2, a3 = Competition.load("aimo2"), Competition.load("aimo3")
    assert (a2.answer.max, a2.answer.modulus, a2.per_call_seconds, a2.requires_id_column) == (999, 1000, 1800, True)
    assert (a3.answer.max, a3.answer.modulus, a3.per_call_seconds, a3.requires_id_column) == (99999, None, 32400, False)
    assert a2.total_seconds == a3.total_seconds == 5 * 3600 and a3.startup_seconds == 900 and a3.problems == 50
    with pytest.raises(FileNotFoundError, match="known competitions: aimo2, aimo3"):
        Competition.load("aimo9")


def test_overrides_and_errors(tmp_path):
    s = load_settings(None, {"sampling.samples": 3, "voting.k": 2}, engine="replay", traces="t.jsonl")
    assert (s.sampling.samples, s.voting.k) == (3, 2)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("engine: vllm\nmodel: m\nsampling:\n  tempreature: 0.5\n")
    with pytest.raises(ValueError, match=r"bad.yaml: sampling: unknown key\(s\) tempreature"):
        load_settings(cfg)
    cfg.write_text("engine: vllm\nmodel: m\nsampling:\n  samples: 0\n")
    with pytest.raises(ValueError, match="sampling.samples must be ≥ 1"):
        load_settings(cfg)
    cfg.write_text("engine: replay\n")
    with pytest.raises(ValueError, match="needs `traces`"):
        load_settings(cfg)
    cfg.write_text("engine: vllm\nmodel: m\nvirtual_clock: true\n")
    with pytest.raises(ValueError, match="virtual_clock works only with the replay engine"):
        load_settings(cfg)
    cfg.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="mapping at the top level"):
        load_settings(cfg)


def test_variant_schedule_spreads_weights_evenly():
    a, b = PromptVariant("a", weight=8), PromptVariant("b", weight=2)
    names = "".join(v.name for v in variant_schedule([a, b], 10))
    assert names.count("a") == 8 and names.count("b") == 2 and "bb" not in names
    assert [v.name for v in variant_schedule([a, b], 5)].count("b") == 1  # proportional on any prefix


def test_messages_have_reminder_and_clipped_problem():
    spec = Competition.load("aimo2").answer
    prompts = Prompts(answer_reminder="Answer modulo {modulus}.", max_problem_chars=100)
    msgs = build_messages("Q" * 1000 + " find x", PromptVariant("v", system="S"), prompts, spec)
    assert msgs[0] == {"role": "system", "content": "S"}
    assert msgs[1]["content"].endswith("find x Answer modulo 1000.") and len(msgs[1]["content"]) < 200
    assert clip_problem("short", 100) == "short"


@pytest.mark.parametrize("override, message", [
    ({"sampling.temperature": "hot"}, "^--set sampling.temperature: expected a number, got 'hot'"),
    ({"sampling.samples": "abc"}, "^--set sampling.samples: expected an integer, got 'abc'"),
    ({"sampling.samples": 2.5}, "^--set sampling.samples: expected an integer, got 2.5"),
    ({"voting.k": True}, "^--set voting.k: expected an integer, got True"),
    ({"time.base_seconds": "x"}, "^--set time.base_seconds: expected a number or nothing \\(null\\), got 'x'"),
    ({"voting.weights": ["length", 3]},
     r"^--set voting.weights=\[length, 3\]: voting.weights\[1\]: expected text, got 3"),
    ({"engine_args": 3}, "^--set engine_args: expected a mapping, got 3"),
    ({"model": 5}, r"^--set model: expected text or nothing \(null\), got 5"),
    ({"sampling.samples": 0}, "^--set sampling.samples=0: sampling.samples must be ≥ 1, got 0"),
    ({"sampling.tempreature": 1}, r"^--set sampling.tempreature=1: sampling: unknown key\(s\) tempreature"),
])
def test_a_wrong_override_blames_the_command_line_not_the_file(repo_root, override, message):
    with pytest.raises(ValueError, match=message):
        load_settings(repo_root / "configs/inference/demo.yaml", override)


def test_the_file_is_blamed_for_its_own_mistake_whatever_the_overrides(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("engine: vllm\nmodel: m\nsampling:\n  temperature: hot\n")
    with pytest.raises(ValueError, match="^.*bad.yaml: sampling.temperature: expected a number"):
        load_settings(cfg, {"sampling.samples": 4})


def test_numbers_widen_where_a_float_is_expected(repo_root):
    s = load_settings(repo_root / "configs/inference/demo.yaml",
                      {"sampling.temperature": 1, "time.max_seconds": "1e3", "time.base_seconds": None})
    assert s.sampling.temperature == 1.0 and isinstance(s.sampling.temperature, float)
    assert s.time.max_seconds == 1000.0 and s.time.base_seconds is None  # YAML reads 1e3 (no dot) as text


def test_speculative_decoding_is_a_checked_engine_args_switch(repo_root):
    demo = repo_root / "configs/inference/demo.yaml"
    ngram = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}
    s = load_settings(demo, {"engine_args.speculative_config": ngram})
    assert s.engine_args["speculative_config"] == ngram  # handed to vllm.AsyncEngineArgs as it is
    with pytest.raises(ValueError, match="method 'eagle3' needs `model`, a draft model"):
        load_settings(demo, {"engine_args.speculative_config": {"method": "eagle3", "num_speculative_tokens": 3}})
    with pytest.raises(ValueError, match="speculative_config: expected a mapping with a `method`"):
        load_settings(demo, {"engine_args.speculative_config": "ngram"})


def _toy_render(repo_root):
    from transformers import AutoTokenizer

    from inference.formats import get_format

    tokenizer, chat = AutoTokenizer.from_pretrained(repo_root / "models/toy-math"), get_format("r1")
    return tokenizer, lambda messages: chat.prompt_ids(messages, tokenizer)


def test_a_prompt_longer_than_the_context_keeps_the_questions_start_and_end(repo_root):
    from inference.prompts import fit_prompt_ids

    settings = load_settings(repo_root / "configs/inference/demo.yaml")
    problem = "Let x be 12. " + "A long story about 1234 and more. " * 13900 + " What is 613 + 48?"
    assert len(problem) > 460_000
    messages = build_messages(problem, settings.prompts.variants[0], settings.prompts, settings.competition.answer)
    tokenizer, render = _toy_render(repo_root)
    ids, cut = fit_prompt_ids(messages, render, context=1024, max_tokens=320)
    assert len(ids) <= 1024 - 320 and cut["kept_tokens"] == len(ids) and cut["prompt_tokens"] > 10_000
    text = tokenizer.decode(ids)
    assert "user\nLet x be 12. A long story" in text and text.rstrip().endswith("What is 613 + 48?<|im_end|>\n"
                                                                                "<|im_start|>assistant")
    short = build_messages("What is 1 + 2?", settings.prompts.variants[0], settings.prompts,
                           settings.competition.answer)
    assert fit_prompt_ids(short, render, 1024, 320) == (render(short), None)  # a prompt that fits is left alone
    assert len(fit_prompt_ids(messages, render, 1024, 4000)[0]) <= 512  # half the context at most goes to the answer


def test_a_prompt_that_fits_no_context_says_so(repo_root):
    from inference.prompts import PromptTooLong, fit_prompt_ids

    _, render = _toy_render(repo_root)
    messages = [{"role": "system", "content": "Reason step by step. " * 40}, {"role": "user", "content": "1+1?"}]
    with pytest.raises(PromptTooLong, match="longer than the model's 64-token context, even with the problem cut"):
        fit_prompt_ids(messages, render, context=64, max_tokens=16)
