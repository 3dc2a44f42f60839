"""Stage 2 of the recipe: GRPO with the paper's rewards (format, cosine-scaled correctness, length penalty), on
TRL's GRPOTrainer, starting from the SFT model.

Real scale (8 GPUs, DeepSpeed ZeRO-2, vLLM colocated with training):
    accelerate launch --config_file configs/accelerate/zero2.yaml -m train.grpo \
        --config configs/grpo/r1-distill-qwen-14b.yaml
  With a separate vLLM server instead (GPUs 6-7 generate, 0-5 train; details in the recipe's header):
    CUDA_VISIBLE_DEVICES=6,7 trl vllm-serve --model runs/sft-14b --tensor_parallel_size 2 &
    CUDA_VISIBLE_DEVICES=0,1,2,3,4,5 accelerate launch --config_file configs/accelerate/zero2.yaml \
        --num_processes 6 -m train.grpo --config configs/grpo/r1-distill-qwen-14b.yaml --vllm_mode server
Toy scale (CPU, generation with model.generate; `python -m train.toy.recipe` runs it for you):
    python -m train.grpo --config configs/toy/grpo.yaml --model_name_or_path runs/toy/sft --output_dir runs/toy/grpo
Rerunning the same command resumes from the newest checkpoint in output_dir.

Checkpoint selection: the paper's run degraded after ~60 steps and the team picked an earlier checkpoint by hand.
Here every checkpoint is first evaluated on held-out problems (sampled answers, `accuracy_eval_max_new_tokens`
budget; train/common.py), the starting model too (`accuracy_eval_on_start`), and with `select_checkpoint:
accuracy_at_length` the final model is the checkpoint with the shortest answers among those within
`selection_tolerance` of the starting accuracy; the selection prints every evaluation with its standard error and
the paired standard error of its difference from the start.

Training curves (loss, each reward, completion length, clipped ratio, KL) go to TensorBoard with `report_to:
tensorboard` (`tensorboard --logdir <output_dir>`; `python -m train.curves` plots them).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from train.common import (
    add_eval_callback,
    check_memory,
    load_tokenizer,
    model_init_kwargs,
    peft_config,
    save_data_report,
    train_resumably,
)
from train.configs import GRPOConfig, GRPOScriptArguments, RecipeParser, run_main
from train.interrupt import stop_on_ctrl_c
from train.rewards import get_reward_funcs

logger = logging.getLogger(__name__)


def check_groups_stay_whole(args: GRPOConfig) -> None:
    """The length reward compares a prompt's generations with each other, and TRL scores each process's generation
    batch on its own: that batch must hold whole groups."""
    per_process = args.per_device_train_batch_size * args.steps_per_generation
    if "length" in args.reward_funcs and per_process % args.num_generations:
        raise ValueError(
            f"per_device_train_batch_size ({args.per_device_train_batch_size}) x steps_per_generation "
            f"({args.steps_per_generation}) = {per_process} completions per process is not a multiple of "
            f"num_generations ({args.num_generations}): the length reward would see partial groups"
        )


def cosine_length_in_tokens(args: GRPOConfig, model_dir: str) -> int:
    """The cosine reward's length in tokens: cosine_max_len if given; else cosine_max_chars divided by the characters
    per token of the SFT traces (the SFT run writes data_report.json next to the model GRPO starts from); else
    max_completion_length."""
    if args.cosine_max_len is not None:
        return args.cosine_max_len
    if args.cosine_max_chars is None:
        return args.max_completion_length
    report_path = Path(model_dir) / "data_report.json"
    if not report_path.exists():
        raise FileNotFoundError(
            f"cosine_max_chars: {report_path} not found (the SFT run writes it; `python -m train.data sft --config "
            "<sft recipe> --out x.jsonl` prints the same figure); or give cosine_max_len in tokens")
    chars_per_token = json.loads(report_path.read_text()).get("chars_per_token")
    if not chars_per_token:
        raise ValueError(f"cosine_max_chars: {report_path} has no chars_per_token (not an SFT data report?)")
    tokens = round(args.cosine_max_chars / chars_per_token)
    logger.info("cosine reward length: %d characters / %.3f characters per token (%s) = %d tokens",
                args.cosine_max_chars, chars_per_token, report_path, tokens)
    return tokens


def with_user_suffix(messages: list[dict], suffix: str | None) -> list[dict]:
    """The chat messages with `suffix` added to each user turn as the server adds its answer reminder
    (inference/prompts.py: user + " " + reminder)."""
    if not suffix:
        return messages
    return [m | {"content": m["content"] + " " + suffix} if m["role"] == "user" else m for m in messages]


def tool_rollouts(args: GRPOConfig):
    """With `rollout_tools`: trl's rollout_func that generates through the kit's tool loop (train/grpo_tools.py)."""
    if args.rollout_tools is None:
        return None
    import os

    from train.grpo_tools import RolloutTools, ToolRollouts

    settings = RolloutTools.from_mapping(args.rollout_tools)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in trl 1.16: pinned
    return ToolRollouts(settings)


def build_trainer(data_args: GRPOScriptArguments, training_args: GRPOConfig, model_args):
    """(GRPOTrainer, held-out evaluation callback or None), after the checks, with the data built."""
    from accelerate import PartialState
    from transformers import set_seed
    from trl import GRPOTrainer

    from train.data import build_grpo_dataset

    set_seed(training_args.seed)
    check_groups_stay_whole(training_args)
    if training_args.rollout_tools is not None and data_args.eval_file:
        raise ValueError("eval_file: the held-out accuracy evaluation generates without the tool; with rollout_tools "
                         "leave it out and evaluate with the tool afterwards (train/toy/grpo_tir.py)")
    training_args.cosine_max_len = cosine_length_in_tokens(training_args, model_args.model_name_or_path)
    check_memory(data_args, training_args, model_args)
    tokenizer = load_tokenizer(model_args, chat_template_path=None)  # the SFT checkpoint's own template
    with PartialState().main_process_first():
        dataset, report = build_grpo_dataset(data_args.sources(), tokenizer, training_args.system_prompt,
                                             data_args.max_prompt_length, data_args.dataset_seed,
                                             eval_files=[data_args.eval_file])  # held-out problems never trained
    save_data_report(report, training_args)
    if training_args.prompt_suffix:
        suffix = training_args.prompt_suffix
        dataset = dataset.map(lambda row: {"prompt": with_user_suffix(row["prompt"], suffix)})

    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    rollouts = tool_rollouts(training_args)
    trainer = GRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=get_reward_funcs(training_args.reward_funcs, training_args),
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(model_args),  # with LoRA the adapter-free model is the KL reference
        rollout_func=rollouts,
    )
    if rollouts is not None:
        trainer.add_callback(rollouts.closing_callback())  # ends the sandbox interpreters with training
    callback = add_eval_callback(trainer, data_args, training_args, tokenizer)
    if callback is not None:
        callback.problems = [p | {"prompt": with_user_suffix(p["prompt"], training_args.prompt_suffix)}
                             for p in callback.problems]
    return trainer, callback


def main(data_args: GRPOScriptArguments, training_args: GRPOConfig, model_args) -> Path:
    """Train and return the directory of the final (selected) model."""
    return train_resumably(*stop_on_ctrl_c(build_trainer(data_args, training_args, model_args)))  # Ctrl-C: checkpoint


def make_parser():
    from trl import ModelConfig

    return RecipeParser((GRPOScriptArguments, GRPOConfig, ModelConfig))


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    run_main(main, make_parser())
