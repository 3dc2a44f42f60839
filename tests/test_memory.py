"""The per-GPU memory plan (train/memory.py): every real recipe fits the hardware its header names, 14B GRPO is
refused on 24 GB GPUs, and the components move the way ZeRO, the optimizer, LoRA and the batch say they must.
Parameter counts come from accelerate's estimator on empty (meta) models: no weights, no hub.

    .venv/bin/python -m pytest tests/test_memory.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from train import memory

REPO = Path(__file__).resolve().parents[1]
REAL_RECIPES = sorted(str(p.relative_to(REPO)) for d in ("configs/sft", "configs/grpo") for p in (REPO / d).glob("*.yaml"))
GRPO_14B = "configs/grpo/r1-distill-qwen-14b.yaml"


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # recipes name their accelerate config relative to the repo


@pytest.mark.parametrize("recipe", REAL_RECIPES)
def test_every_real_recipe_names_its_hardware_and_fits_it(recipe, capsys):
    settings = memory.recipe_settings(recipe)
    assert all(key in settings for key in memory.HARDWARE_KEYS), f"{recipe}: hardware keys missing"
    assert settings["hardware_gpus"] and settings["hardware_gpu_memory_gb"] and settings["hardware_model"]
    assert memory.main(["--config", recipe]) == 0
    assert "FITS: peak" in capsys.readouterr().out


def test_14b_grpo_is_refused_on_24gb_gpus_naming_what_to_change(capsys):
    assert memory.main(["--config", GRPO_14B, "--gpu-memory-gb", "22.5"]) == 1  # a "24 GB" L4/A10 is 22.5 GiB
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "of 22.5 GiB" in out
    assert "change one of:" in out and "zero3.yaml" in out and "per_device_train_batch_size" in out


def test_fp32_adamw_14b_grpo_is_refused_on_80gb_and_8bit_states_are_a_quarter():
    settings = memory.recipe_settings(GRPO_14B)
    eight_bit = memory.plan(settings, 8, 80, zero_stage=2)
    fp32 = memory.plan(settings | {"optim": "adamw_torch"}, 8, 80, zero_stage=2)
    assert not fp32.fits and not eight_bit.fits  # 80 GiB GPUs need vLLM on its own GPUs (the recipe's header)
    assert eight_bit.components["optimizer states"] == pytest.approx(fp32.components["optimizer states"] / 4)
    # The figure: fp32 AdamW, ZeRO-2, full reference model = 85-94 GB of model states before activations.
    states = fp32.resident_gb * memory.GIB / 1e9
    assert 84 <= states <= 94
    assert "optim: paged_adamw_8bit" in fp32.advice() and "optim: paged_adamw_8bit" not in eight_bit.advice()


def test_model_states_follow_zero_stage_and_parameter_count():
    settings = memory.recipe_settings("configs/sft/r1-distill-qwen-14b.yaml")
    shape = memory.model_shape("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B")
    assert shape.params == pytest.approx(14.77e9, rel=1e-4)  # the published 14.8B, counted by accelerate (meta model)
    zero2 = memory.plan(settings, 8, 140, zero_stage=2)
    zero3 = memory.plan(settings, 8, 140, zero_stage=3)
    zero3_16 = memory.plan(settings, 16, 140, zero_stage=3)
    assert zero2.components["weights"] == pytest.approx(2 * shape.params / memory.GIB)  # whole bf16 copy per GPU
    assert zero3.components["weights"] < zero2.components["weights"] / 4  # sharded (plus the gathered layer)
    assert zero3_16.components["optimizer states"] == pytest.approx(zero3.components["optimizer states"] / 2)
    assert zero2.components["activations"] == zero3.components["activations"]
    offloaded = memory.plan(settings, 8, 140, zero_stage=3, offload_optimizer=True)
    assert offloaded.components["optimizer states"] == offloaded.components["fp32 master weights"] == 0


def test_checkpointing_lora_and_batch_move_the_right_components():
    settings = memory.recipe_settings("configs/sft/r1-distill-qwen-7b.yaml")
    base = memory.plan(settings, 8, 80, zero_stage=3)
    no_ckpt = memory.plan(settings | {"gradient_checkpointing": False}, 8, 80, zero_stage=3)
    assert no_ckpt.components["activations"] > 5 * base.components["activations"] and not no_ckpt.fits
    half = memory.plan(settings | {"max_length": 12000}, 8, 80, zero_stage=3)
    assert half.components["activations"] == pytest.approx(base.components["activations"] / 2, rel=0.01)
    lora = memory.plan(settings | {"use_peft": True, "lora_r": 16}, 1, 80, zero_stage=0)
    full_one_gpu = memory.plan(settings, 1, 48, zero_stage=0)
    assert lora.components["optimizer states"] < full_one_gpu.components["optimizer states"] / 50
    assert not full_one_gpu.fits  # full 7B training does not fit one 48 GiB GPU ...
    qlora = memory.plan(settings | {"use_peft": True, "load_in_4bit": True, "max_length": 8192}, 1, 48, zero_stage=0)
    assert qlora.fits and qlora.components["weights"] == pytest.approx(lora.components["weights"] / 4)  # ... QLoRA does


def test_the_training_scripts_parsed_arguments_give_the_same_plan():
    """What train/grpo.py hands the check (its three parsed dataclasses) plans like the recipe file."""
    from train import grpo

    parsed = grpo.make_parser().parse_args_and_config(["--config", GRPO_14B, "--use_cpu", "true", "--bf16", "false"])
    from_script = memory.plan({k: v for args in parsed for k, v in vars(args).items()}, 8, 140, zero_stage=2)
    from_file = memory.plan(memory.recipe_settings(GRPO_14B), 8, 140, zero_stage=2)
    assert from_script.components == from_file.components and from_script.fits


def test_a_local_model_directory_is_planned_from_its_config(tiny_model_dir):
    settings = memory.recipe_settings("configs/toy/sft.yaml") | {"model_name_or_path": str(tiny_model_dir)}
    result = memory.plan(settings, 1, 4.0)
    assert result.fits and 0 < result.components["weights"] < 0.01  # ~1 M parameters


def test_toy_recipes_name_no_hardware_and_unknown_settings_are_errors(capsys):
    assert memory.main(["--config", "configs/toy/grpo.yaml"]) == 2
    assert "no hardware_gpus" in capsys.readouterr().err
    with pytest.raises(memory.PlanError, match="optim: 'lion_8bit'"):
        memory.plan(memory.recipe_settings(GRPO_14B) | {"optim": "lion_8bit"}, 8, 140)
    with pytest.raises(memory.PlanError, match="hardware_model: 'nobody/unknown'"):
        memory.plan(memory.recipe_settings(GRPO_14B) | {"hardware_model": "nobody/unknown"}, 8, 140)


def test_14b_sft_fits_8_h100s_with_trls_fused_lm_head():
    """trl 1.16 never builds the 24k x 152k logits (add_fused_lm_head): the head costs a tile, the fp32 gradient of
    the hidden states and of the head itself, ~5 GiB, not the 40.8 GiB of full logits the planner used to count."""
    result = memory.plan("configs/sft/r1-distill-qwen-14b.yaml", gpus=8, gpu_gib=80)
    assert result.fits and result.peak_gib < 80
    assert 3 < result.components["logits (trl fused LM head)"] < 6
    full_logits = 12 * 24000 * 152064 / memory.GIB
    assert result.components["logits (trl fused LM head)"] < full_logits / 7


def test_model_states_are_deepspeeds_estimators_with_the_recipes_offload():
    settings = memory.recipe_settings("configs/sft/r1-distill-qwen-14b.yaml")
    shape = memory.model_shape("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B")
    states = ("weights", "gradients", "fp32 master weights", "optimizer states")
    for stage in (2, 3):
        for offload in (False, True):
            result = memory.plan(settings, 8, 80, zero_stage=stage, offload_optimizer=offload)
            planned = sum(result.components[k] for k in states)
            deepspeed = memory.deepspeed_model_states(shape.params, shape.largest_layer_params, 8, stage, offload)
            assert planned == pytest.approx(deepspeed / memory.GIB, rel=0.01), (stage, offload)
            assert f"offload_optimizer {'cpu' if offload else 'none'}" in result.report()
    # The published closed forms: ZeRO-2 2P + 18P/N, ZeRO-3 4 x largest layer + 18P/N (+ 2P/N offloaded).
    P, L = shape.params, shape.largest_layer_params
    assert memory.deepspeed_model_states(P, L, 8, 2, False) == pytest.approx(2 * P + 18 * P / 8)
    assert memory.deepspeed_model_states(P, L, 8, 3, True) == pytest.approx(4 * L + 2 * P / 8)


def test_advice_never_halves_a_micro_batch_of_one(capsys):
    argv = ["--config", "configs/sft/r1-distill-qwen-14b.yaml", "--gpus", "2", "--gpu-memory-gb", "80"]
    assert memory.main(argv) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "per_device_train_batch_size: halve" not in out
    assert "already 1 sequence" in out


@pytest.mark.parametrize("argv, message", [
    (["--config", "configs/nowhere.yaml"], "does not exist"),
    (["--config", "configs/sft/r1-distill-qwen-14b.yaml", "--gpus", "0"], "--gpus: must be > 0"),
    (["--config", "configs/sft/r1-distill-qwen-14b.yaml", "--gpus", "-3"], "--gpus: must be > 0"),
    (["--config", "configs/sft/r1-distill-qwen-14b.yaml", "--gpu-memory-gb", "eighty"], "is not a number"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert memory.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_model_exits_2(tmp_path, capsys):
    recipe = (REPO / "configs/sft/r1-distill-qwen-7b.yaml").read_text().replace(
        "hardware_model: deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "hardware_model: nobody/unknown")
    (tmp_path / "r.yaml").write_text(recipe)
    assert memory.main(["--config", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert "hardware_model: 'nobody/unknown'" in err and len(err.strip().splitlines()) == 1


def test_force_runs_a_plan_that_does_not_fit_and_prints_the_risk():
    result = memory.plan("configs/sft/r1-distill-qwen-14b.yaml", gpus=2, gpu_gib=80)
    with pytest.raises(MemoryError, match="DOES NOT FIT"):
        memory.enforce(result)
    text = memory.enforce(result, force=True)
    assert "force_memory: training anyway. RISK" in text and "exceeds the GPU (80 GiB)" in text


def test_moe_models_keep_every_expert_and_activate_top_k():
    """gpt-oss: 21 B / 117 B parameters in total (the model cards), 4 of 32 / 128 experts a token."""
    small = memory.model_shape("openai/gpt-oss-20b")
    large = memory.model_shape("openai/gpt-oss-120b")
    assert small.params == pytest.approx(20.9e9, rel=0.02) and large.params == pytest.approx(116.8e9, rel=0.02)
    assert (small.experts, large.experts) == (32, 128)
    assert small.intermediate == large.intermediate == 4 * 2880  # activations follow the active experts
    result = memory.plan(memory.recipe_settings("configs/sft/gpt-oss-120b-tir.yaml"), 8, 140)
    assert result.components["weights"] * memory.GIB > 2 * large.params / 8  # all experts resident (sharded)
    assert "128 experts, all resident in bf16" in result.report()


# Peaks measured by train/gpu_check.py on one H200 (torch's max_memory_reserved, GiB; random weights, the recipe's
# settings, one process without DeepSpeed, sdpa attention; GRPO completions capped at 2,048 tokens, no vLLM).
MEASURED_H200 = [("configs/sft/r1-distill-qwen-1.5b.yaml", {}, 16.89),
                 ("configs/grpo/r1-distill-qwen-1.5b.yaml", {"max_completion_length": 2048, "use_vllm": False}, 20.96),
                 ("configs/sft/r1-distill-qwen-7b.yaml", {}, 71.75)]


@pytest.mark.parametrize("recipe, changes, measured", MEASURED_H200)
def test_the_plan_is_within_20_percent_of_the_peaks_measured_on_an_h200(recipe, changes, measured):
    settings = memory.recipe_settings(recipe) | changes | {"eval_file": None}
    planned = memory.plan(settings, 1, 139.8, zero_stage=0, offload_optimizer=False)
    assert planned.peak_gb - memory.OVERHEAD_GIB == pytest.approx(measured, rel=0.20)
