"""train/gpu_check.py's code path on CPU with tiny shapes (the GPU figures in the README come from the same code on
an H200): one SFT and one GRPO step through train.sft / train.grpo with a recipe's settings, the plan next to each,
and one LoRA step of a tiny gpt-oss.

    .venv/bin/python -m pytest tests/test_gpu_check.py -q
"""

from __future__ import annotations

import json
import math

import pytest


@pytest.mark.slow
def test_gpu_check_runs_a_step_of_each_stage_on_cpu(tmp_path, monkeypatch, repo_root):
    from train import gpu_check

    monkeypatch.chdir(repo_root)
    out = tmp_path / "results.json"
    assert gpu_check.main(["--tiny", "--gpt-oss-lora", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    results = {r["stage"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"sft", "grpo", "gpt-oss LoRA"}
    assert math.isfinite(results["sft"]["loss"]) and results["sft"]["loss"] > 0
    assert results["sft"]["settings"]["max_length"] == 256  # --tiny shortens the recipe's 24,000
    assert results["grpo"]["settings"]["max_completion_length"] == 16
    for stage in ("sft", "grpo"):  # the plan of the same settings sits next to each measurement
        assert results[stage]["plan_peak_gib"] > results[stage]["plan_without_overhead_gib"] > 0
    assert 0 < results["gpt-oss LoRA"]["trainable"] < results["gpt-oss LoRA"]["parameters"] / 100


def test_gpu_check_without_a_gpu_says_so(capsys):
    import torch

    from train import gpu_check

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert gpu_check.main([]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
