"""Stage 1 of the recipe: SFT for many epochs with TRL's SFTTrainer (full-parameter as in the paper, or LoRA).

Real scale (8 GPUs, DeepSpeed ZeRO-3; multi-node: see configs/accelerate/zero3.yaml):
    accelerate launch --config_file configs/accelerate/zero3.yaml -m train.sft \
        --config configs/sft/r1-distill-qwen-14b.yaml
Toy scale (CPU; `python -m train.toy.recipe` runs it for you):
    python -m train.sft --config configs/toy/sft.yaml --model_name_or_path runs/toy/init --output_dir runs/toy/sft
Any recipe key can be overridden on the command line (`--num_train_epochs 3`). Rerunning the same command after a
crash or kill resumes from the newest checkpoint in output_dir.

What it does: checks the recipe's memory plan on the GPUs it finds (train/memory.py), builds the data
(train/data.py: prompt/completion rows, so the loss covers the completion only), trains (all parameters, or LoRA
adapters with `use_peft: true`, on a 4-bit base with `load_in_4bit: true`), and, if the recipe names an `eval_file`,
answers held-out problems right before every checkpoint (one per epoch) and grades them with inference.grading
(train/common.py, shared with GRPO). The final model is the last one, or with `select_checkpoint` the best
evaluated checkpoint, written to output_dir. With LoRA output_dir holds the adapter (peft's
`AutoPeftModelForCausalLM.from_pretrained(dir).merge_and_unload()` gives a full model to quantize and serve).

Packing: `packing: true` with `packing_strategy: bfd` packs whole examples into rows of `max_length` tokens and
trains padding-free: each example keeps its own position_ids (restarting at 0), and transformers turns those into
a block-diagonal causal mask, so packed examples never attend to each other. That works with flash-attention
(varlen kernels, the GPU path) and also with `sdpa`/`eager` on CPU (tests/test_recipes.py checks that a packed
example's logits equal its logits alone). It relies on SFTTrainer calling the model with use_cache=False (it does):
with a KV cache transformers does not build the packed mask. On CPU packing is slower for short examples (the
block mask is a dense L x L matrix), so the toy recipe does not pack.
"""

from __future__ import annotations

import logging
from pathlib import Path

from train.common import (
    add_eval_callback,
    check_memory,
    load_tokenizer,
    model_init_kwargs,
    peft_config,
    save_data_report,
    save_dequantized_experts,
    train_resumably,
)
from train.configs import DataArguments, RecipeParser, SFTConfig, run_main
from train.interrupt import stop_on_ctrl_c


# --- main -----------------------------------------------------------------------------------------------------------


def build_trainer(data_args: DataArguments, training_args: SFTConfig, model_args):
    """(SFTTrainer, held-out evaluation callback or None), after the memory check, with the data built."""
    from accelerate import PartialState
    from transformers import set_seed
    from trl import SFTTrainer

    from train.data import build_sft_dataset

    set_seed(training_args.seed)
    check_memory(data_args, training_args, model_args)
    tokenizer = load_tokenizer(model_args, training_args.chat_template_path,
                               need_template=data_args.chat_format != "harmony" or bool(data_args.eval_file))
    with PartialState().main_process_first():  # rank 0 fills the datasets cache, the others read it
        dataset, report = build_sft_dataset(data_args.sources(), tokenizer, training_args.system_prompt,
                                            training_args.max_length, data_args.dataset_seed, data_args.chat_format,
                                            data_args.chat_format_options, data_args.train_on_tool_outputs,
                                            eval_files=[data_args.eval_file])
    save_data_report(report, training_args)

    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    trainer = SFTTrainer(model=model_args.model_name_or_path, args=training_args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=peft_config(model_args))
    save_dequantized_experts(trainer.model)  # gpt-oss: checkpoints keep every layer's bf16 experts
    return trainer, add_eval_callback(trainer, data_args, training_args, tokenizer)


def main(data_args: DataArguments, training_args: SFTConfig, model_args) -> Path:
    """Train and return the directory of the final model."""
    return train_resumably(*stop_on_ctrl_c(build_trainer(data_args, training_args, model_args)))  # Ctrl-C: checkpoint


def make_parser():
    from trl import ModelConfig

    return RecipeParser((DataArguments, SFTConfig, ModelConfig))


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    run_main(main, make_parser())
