"""Every training recipe (configs/sft, configs/grpo, configs/toy) runs one real trainer step on the tiny local model
and tiny data, so no recipe rots; plus the facts the recipes rely on: the paper's hyperparameters, the R1 chat
template, packing without cross-example attention on CPU, and the toy system prompt matching the demo's.

    .venv/bin/python -m pytest tests/test_recipes.py -q
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import yaml

from train.toy.task import SYSTEM_PROMPT, make_problem, make_trace

REPO = Path(__file__).resolve().parents[1]
SFT_RECIPES = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs/sft").glob("*.yaml"))
GRPO_RECIPES = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs/grpo").glob("*.yaml"))
RECIPES = SFT_RECIPES + GRPO_RECIPES + ["configs/toy/sft.yaml", "configs/toy/grpo.yaml"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, str]:
    """Toy problems: 8 SFT traces, 4 GRPO problems, 2 held-out problems."""
    rng, out = random.Random(0), tmp_path_factory.mktemp("tiny-data")
    problems = [make_problem(rng, i) for i in range(14)]
    files = {
        "sft": [{"problem": p.problem, "generation": make_trace(p, i % 3), "answer": p.answer}
                for i, p in enumerate(problems[:8])],
        "grpo": [{"problem": p.problem, "answer": p.answer} for p in problems[8:12]],
        "eval": [{"problem": p.problem, "answer": p.answer} for p in problems[12:]],
    }
    paths = {}
    for name, rows in files.items():
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths[name] = str(path)
    return paths


def tiny_overrides(stage: str, model_dir, out_dir, eval_file: str) -> list[str]:
    """What the test swaps in: the tiny model and data, one step, CPU, float32, small lengths, no vLLM, torch's AdamW."""
    args = {
        "model_name_or_path": model_dir, "output_dir": out_dir, "max_steps": 1, "use_cpu": True, "bf16": False,
        "dtype": "float32", "attn_implementation": "sdpa", "gradient_accumulation_steps": 1, "report_to": "none",
        "save_strategy": "steps", "save_steps": 1, "logging_steps": 1, "eval_file": eval_file, "eval_limit": 2,
        "accuracy_eval_max_new_tokens": 8, "accuracy_eval_batch_size": 2, "per_device_train_batch_size": 2,
        "optim": "adamw_torch",  # bitsandbytes' paged 8-bit AdamW (the 14B GRPO recipe) needs CUDA
    }
    if stage == "sft":
        args |= {"max_length": 512, "dataset_num_proc": 1}
    else:
        args |= {"num_generations": 2, "max_completion_length": 16, "use_vllm": False, "max_prompt_length": 512,
                 "cosine_max_len": 16}  # the real recipes derive it from the SFT run's data report
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_one_step_on_the_tiny_model(recipe, tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    from train import grpo, sft

    monkeypatch.chdir(REPO)  # recipes name repo-relative files (the chat template)
    stage = "grpo" if recipe in GRPO_RECIPES or recipe.endswith("grpo.yaml") else "sft"
    module = grpo if stage == "grpo" else sft
    out = tmp_path / "out"
    data_args, training_args, model_args = module.make_parser().parse_args_and_config(
        ["--config", recipe, *tiny_overrides(stage, tiny_model_dir, out, tiny_data["eval"])]
    )
    data_args.dataset_sources = [{"path": tiny_data[stage], "label": "tiny"}]

    final = module.main(data_args, training_args, model_args)

    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert losses and all(math.isfinite(float(x)) for x in losses)
    evals = [h["accuracy_eval"] for h in state["log_history"] if "accuracy_eval" in h]
    assert evals[-1]["step"] == 1 and evals[-1]["problems"] == 2  # evaluated right before the checkpoint
    assert evals[-1]["n"] == 2 * training_args.accuracy_eval_samples
    weights = "adapter_model.safetensors" if model_args.use_peft else "model.safetensors"  # LoRA saves the adapter
    assert (final / weights).exists() and (final / "tokenizer_config.json").exists()
    assert json.loads((out / "data_report.json").read_text())["kept"] > 0


def load(recipe: str) -> dict:
    return yaml.safe_load((REPO / recipe).read_text())


def test_14b_recipes_carry_the_papers_hyperparameters():
    sft = load("configs/sft/r1-distill-qwen-14b.yaml")
    assert sft["model_name_or_path"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B"
    assert (sft["learning_rate"], sft["lr_scheduler_type"], sft["num_train_epochs"]) == (1e-5, "cosine", 10)
    assert (sft["per_device_train_batch_size"] * sft["gradient_accumulation_steps"] * 8, sft["max_length"]) == (64, 24000)
    assert sft["packing"] and sft["packing_strategy"] == "bfd" and sft["save_strategy"] == "epoch"
    grpo = load("configs/grpo/r1-distill-qwen-14b.yaml")
    assert grpo["reward_funcs"] == ["format", "cosine", "length"] and grpo["reward_weights"] == [1.0, 1.0, 1.0]
    assert (grpo["learning_rate"], grpo["beta"], grpo["num_generations"], grpo["max_completion_length"]) == (
        4e-6, 0.04, 8, 16384)
    assert (grpo["cosine_max_value_correct"], grpo["cosine_min_value_correct"],
            grpo["cosine_max_value_wrong"], grpo["cosine_min_value_wrong"]) == (1.0, 0.1, -0.1, -1.0)
    assert (grpo["temperature"], grpo["top_p"], grpo["min_p"]) == (1.0, 0.9, 0.05)
    # The seed's: truncated completions train as wrong answers; no vLLM importance-sampling correction (trl's default
    # would scale the policy gradient to ~0 at these lengths: train.recipe_check).
    assert grpo["mask_truncated_completions"] is False and grpo["vllm_importance_sampling_correction"] is False
    assert grpo["select_checkpoint"] == "accuracy_at_length"
    assert grpo["optim"] == "paged_adamw_8bit" and grpo["cosine_max_chars"] == 30000  # the seed's
    # Selection that can tell 2 points apart: all of MATH-500, several sampled answers each.
    assert (grpo["eval_limit"], grpo["accuracy_eval_samples"], grpo["selection_tolerance"]) == (500, 4, 0.02)
    assert grpo["accuracy_eval_temperature"] > 0
    # 16 prompts x 8 generations per optimizer step on 8 GPUs, and each GPU scores whole groups.
    per_gpu = grpo["per_device_train_batch_size"] * grpo["gradient_accumulation_steps"]
    assert per_gpu * 8 == 128 and per_gpu % grpo["num_generations"] == 0


def test_accelerate_configs_are_deepspeed_on_8_gpus():
    for name, stage in (("zero2", 2), ("zero3", 3)):
        config = load(f"configs/accelerate/{name}.yaml")
        assert config["distributed_type"] == "DEEPSPEED" and config["deepspeed_config"]["zero_stage"] == stage
        assert (config["num_processes"], config["mixed_precision"]) == (8, "bf16")


def test_r1_chat_template_keeps_the_thinking_and_prompt_is_a_prefix(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (REPO / "configs/sft/r1_distill_chat_template.jinja").read_text()
    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 1 + 2?"}]
    completion = [{"role": "assistant", "content": "<think>\n1+2=3\n\\boxed{3}\n</think>\n\\boxed{3}"}]
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    assert prompt_text == "S<｜User｜>What is 1 + 2?<｜Assistant｜>"
    assert full_text == prompt_text + completion[0]["content"] + tokenizer.eos_token


def test_padding_free_packing_keeps_examples_apart_on_cpu(tiny_model_dir):
    """What bfd packing feeds the model on CPU (sdpa): one row, position_ids restarting per example. The second
    example's logits must equal its logits alone; without the position_ids they differ (cross-attention).
    use_cache=False as SFTTrainer.compute_loss passes it: with a KV cache transformers skips the packed mask."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    first, second = list(range(5, 25)), list(range(30, 42))
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": first}, {"input_ids": second}])
    assert batch["position_ids"].tolist() == [list(range(20)) + list(range(12))]
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([second])).logits[0]
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0, 20:]
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits[0, 20:]
    assert torch.allclose(packed, alone, atol=1e-5)
    assert not torch.allclose(leaky, alone, atol=1e-3)


def test_dataset_flags_work_or_are_rejected(tiny_model_dir, tmp_path, monkeypatch):
    """--dataset_name replaces the recipe's sources; trl's other dataset flags are unknown here, so an error."""
    from train import sft

    monkeypatch.chdir(REPO)
    base = ["--config", "configs/toy/sft.yaml", "--model_name_or_path", str(tiny_model_dir)]
    data_args, _, _ = sft.make_parser().parse_args_and_config(
        base + ["--dataset_name", "org/set", "--dataset_config", "main", "--dataset_train_split", "test"])
    assert data_args.sources() == [{"path": "org/set", "name": "main", "split": "test"}]
    for flag in ("--dataset_streaming", "--dataset_test_split", "--ignore_bias_buffers"):
        with pytest.raises(ValueError, match=f"not used by the HfArgumentParser.*{flag}"):
            sft.make_parser().parse_args_and_config(base + [flag, "true"])
    data_args, _, _ = sft.make_parser().parse_args_and_config(base + ["--dataset_config", "main"])
    with pytest.raises(ValueError, match="dataset_config / dataset_train_split apply to dataset_name"):
        data_args.sources()


def test_grpo_cosine_length_comes_from_the_sft_traces_characters_per_token(tmp_path):
    from train.configs import GRPOConfig
    from train.grpo import cosine_length_in_tokens

    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, cosine_max_chars=30000,
                      max_completion_length=16384)
    with pytest.raises(FileNotFoundError, match="data_report.json not found"):
        cosine_length_in_tokens(args, str(tmp_path))
    (tmp_path / "data_report.json").write_text(json.dumps({"kind": "SFT", "chars_per_token": 3.2}))
    assert cosine_length_in_tokens(args, str(tmp_path)) == 9375  # 30,000 / 3.2
    args.cosine_max_len = 5000
    assert cosine_length_in_tokens(args, str(tmp_path)) == 5000  # explicit tokens win
    args.cosine_max_len = args.cosine_max_chars = None
    assert cosine_length_in_tokens(args, str(tmp_path)) == 16384


def test_training_serving_and_calibration_build_the_same_prompt(tiny_model_dir, tmp_path):
    """One prompt builder (inference.prompts.prompt_messages) and one system prompt for SFT, GRPO, held-out
    evaluation, quantize calibration and serving: the rendered prompt text is identical."""
    from transformers import AutoTokenizer

    from inference.config import load_settings
    from inference.prompts import build_messages
    from train.data import grpo_record, load_eval_problems, sft_record
    from train.quantize import read_calibration_rows

    problem = "What is 12 + 30?"
    serving = load_settings(REPO / "configs/inference/demo.yaml")
    system = serving.prompts.variants[0].system
    served = build_messages(problem, serving.prompts.variants[0], serving.prompts, serving.competition.answer)
    row = {"problem": problem, "generation": "\\boxed{42}", "answer": "42", "source": "s"}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"problem": problem, "answer": "42"}) + "\n")
    built = {
        "sft": sft_record(row, load("configs/toy/sft.yaml")["system_prompt"])["prompt"],
        "grpo": grpo_record(row, load("configs/toy/grpo.yaml")["system_prompt"])["prompt"],
        "eval": load_eval_problems(str(tmp_path / "eval.jsonl"), system_prompt=system)[0]["prompt"],
        "calibration": read_calibration_rows(
            tmp_path / "rows.jsonl", load("configs/quantize/toy.yaml")["calibration"]["system_prompt"])[0][0],
    }
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    render = lambda m: tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)  # noqa: E731
    assert all(render(messages) == render(served) for messages in built.values()), built
    # The real recipes: SFT, GRPO, quantize calibration and the AIMO-3 server share one system prompt (gpt-oss
    # recipes: the gpt-oss server's).
    aimo3 = load_settings(REPO / "configs/inference/aimo3.yaml").prompts.variants[0].system
    gpt_oss = load_settings(REPO / "configs/inference/aimo3-gpt-oss.yaml").prompts.variants[0].system
    for recipe in SFT_RECIPES + GRPO_RECIPES:
        served = gpt_oss if load(recipe)["hardware_model"].startswith("openai/gpt-oss") else aimo3
        assert load(recipe)["system_prompt"] == served, recipe
    assert load("configs/quantize/r1-distill-qwen-14b.yaml")["calibration"]["system_prompt"] == aimo3


def test_toy_system_prompt_is_the_demo_servers():
    from train.configs import DEFAULT_SYSTEM_PROMPT

    demo = load("configs/inference/demo.yaml")
    assert SYSTEM_PROMPT == DEFAULT_SYSTEM_PROMPT
    assert load("configs/toy/sft.yaml")["system_prompt"] == SYSTEM_PROMPT
    assert load("configs/toy/grpo.yaml")["system_prompt"] == SYSTEM_PROMPT
    assert demo["prompts"]["variants"][0]["system"] == SYSTEM_PROMPT


def test_sft_seed_schedule_recipe_ends_where_the_seed_kept_its_checkpoint():
    """The seed's SFT: a 20-epoch cosine from 1e-5, kept at checkpoint-350 (~epoch 9): LR there ~5.8e-6."""
    from train.recipe_check import lr_schedule

    seed = load("configs/sft/r1-distill-qwen-14b-seed-schedule.yaml")
    steps = 9 * 39  # ~39 optimizer steps an epoch in the seed's run
    rates = dict(lr_schedule({**seed, "max_steps": steps, "save_steps": steps}))
    assert rates[steps] == pytest.approx(5.8e-6, rel=0.03)
    assert seed["num_train_epochs"] == 9 and seed["learning_rate"] == 1e-5


@pytest.mark.parametrize("recipe, error", [
    ({"learning_rate": [1, 2]}, "learning_rate: [1, 2] is not float"),
    ({"max_length": -5}, "max_length: must be > 0, got -5"),
    ({"system_prompt": 5}, "system_prompt: 5 is not str | None"),
    ({"cosine_max_len": 0}, "cosine_max_len: must be > 0, got 0"),
    ({"reward_funcs": ["format", "cosin"]}, "reward_funcs: unknown ['cosin']"),
    ({"leraning_rate": 1e-5}, "unknown key 'leraning_rate'"),
])
def test_bad_recipe_values_are_errors_naming_the_field(recipe, error, tmp_path):
    """trl sets YAML values as argparse defaults, unchecked: the kit's parser checks them before anything loads."""
    from train import grpo, sft
    from train.configs import RecipeError

    stage = sft if "max_length" in recipe else grpo
    path = tmp_path / "bad.yaml"
    base = load(f"configs/{stage.__name__.split('.')[-1]}/r1-distill-qwen-1.5b.yaml")
    path.write_text(yaml.safe_dump(base | recipe))
    with pytest.raises(RecipeError) as caught:
        stage.make_parser().parse_args_and_config(["--config", str(path)])
    assert error in str(caught.value)


def test_a_bad_recipe_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(load("configs/grpo/r1-distill-qwen-1.5b.yaml") | {"learning_rate": [1, 2]}))
    done = subprocess.run([sys.executable, "-m", "train.grpo", "--config", str(path)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and "learning_rate: [1, 2] is not float" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_grpo_trains_on_the_prompt_the_aimo3_server_sends(tiny_model_dir):
    """The GRPO recipes' system prompt plus prompt_suffix render exactly as the AIMO-3 server's main prompt."""
    from transformers import AutoTokenizer

    from inference.config import load_settings
    from inference.prompts import build_messages
    from train.data import grpo_record
    from train.grpo import with_user_suffix

    problem = "Find the remainder when 7^100 is divided by 13."
    serving = load_settings(REPO / "configs/inference/aimo3.yaml")
    served = build_messages(problem, serving.prompts.variants[0], serving.prompts, serving.competition.answer)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    render = lambda m: tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)  # noqa: E731
    for recipe in GRPO_RECIPES:
        settings = load(recipe)
        trained = with_user_suffix(grpo_record({"problem": problem, "answer": "9", "source": "s"},
                                               settings["system_prompt"])["prompt"], settings["prompt_suffix"])
        assert render(trained) == render(served), recipe
