"""LoRA through peft (`use_peft: true`, trl.ModelConfig's lora_* flags): one real SFT step on the tiny model
changes the adapter weights and nothing else, and the run writes an adapter that peft loads. QLoRA's flags fail
clearly where they cannot work (no LoRA, no bitsandbytes/GPU) instead of being ignored.

    .venv/bin/python -m pytest tests/test_peft.py -q
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from train.toy.task import make_problem, make_trace

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def sft_args(tiny_model_dir, tmp_path, monkeypatch):
    """Parsed arguments of the toy SFT recipe on the tiny model: one step, CPU, with `extra` flags."""
    from train import sft

    monkeypatch.chdir(REPO)
    rng = random.Random(0)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"problem": p.problem, "generation": make_trace(p, 0), "answer": p.answer})
                            + "\n" for p in (make_problem(rng, i) for i in range(8))))

    def parse(*extra: str):
        return sft.make_parser().parse_args_and_config([
            "--config", "configs/toy/sft.yaml", "--model_name_or_path", str(tiny_model_dir),
            "--output_dir", str(tmp_path / "out"), "--dataset_name", str(data), "--eval_file", "",
            "--max_steps", "1", "--warmup_steps", "0", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2",
            "--save_strategy", "no", "--report_to", "none", *extra])

    return parse


@pytest.mark.slow
def test_lora_sft_step_changes_only_the_adapter(sft_args, tmp_path):
    from peft import PeftModel

    from train import sft
    from train.common import train_resumably

    data_args, training_args, model_args = sft_args("--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8",
                                                    "--lora_target_modules", "q_proj", "v_proj", "down_proj")
    trainer, callback = sft.build_trainer(data_args, training_args, model_args)
    assert isinstance(trainer.model, PeftModel) and callback is None
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)

    final = train_resumably(trainer, callback)

    after = dict(trainer.model.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name].detach())}
    assert changed and changed <= trainable  # only adapter weights moved ...
    assert any(".lora_B." in name for name in changed)  # ... including B, which LoRA starts at zero
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == {"q_proj", "v_proj", "down_proj"}
    assert (final / "adapter_model.safetensors").exists() and not (final / "model.safetensors").exists()


def test_quantized_loading_needs_lora_and_says_what_is_missing(sft_args):
    from train.common import model_init_kwargs

    data_args, training_args, model_args = sft_args("--load_in_4bit", "true")
    with pytest.raises(ValueError, match="load_in_4bit: a quantized model trains only through LoRA"):
        model_init_kwargs(model_args, training_args)
    data_args, training_args, model_args = sft_args("--load_in_4bit", "true", "--use_peft", "true")
    with pytest.raises(ValueError, match="load_in_4bit needs (bitsandbytes|a CUDA GPU)"):
        model_init_kwargs(model_args, training_args)
