"""Stage 1 of the recipe: full-parameter SFT for many epochs with TRL's SFTTrainer.

Real scale (8 GPUs, DeepSpeed ZeRO-3; multi-node: see configs/accelerate/zero3.yaml):
    accelerate launch --config_file configs/accelerate/zero3.yaml -m train.sft \
        --config configs/sft/r1-distill-qwen-14b.yaml
Toy scale (CPU; `python -m train.toy.recipe` runs it for you):
    python -m train.sft --config configs/toy/sft.yaml --model_name_or_path runs/toy/init --output_dir runs/toy/sft
Any recipe key can be overridden on the command line (`--num_train_epochs 3`). Rerunning the same command after a
crash or kill resumes from the newest checkpoint in output_dir.

What it does: builds the data (train/data.py: prompt/completion rows, so the loss covers the completion only),
trains, and, if the recipe names an `eval_file`, answers held-out problems greedily right before every checkpoint
(one per epoch) and grades them with inference.answers (AccuracyEvalCallback, shared with GRPO). The final model is
the last one, or with `select_checkpoint` the best evaluated checkpoint, written to output_dir.

Packing: `packing: true` with `packing_strategy: bfd` packs whole examples into rows of `max_length` tokens and
trains padding-free: each example keeps its own position_ids (restarting at 0), and transformers turns those into
a block-diagonal causal mask, so packed examples never attend to each other. That works with flash-attention
(varlen kernels, the GPU path) and also with `sdpa`/`eager` on CPU (tests/test_recipes.py checks that a packed
example's logits equal its logits alone). It relies on SFTTrainer calling the model with use_cache=False (it does):
with a KV cache transformers does not build the packed mask. On CPU packing is slower for short examples (the
block mask is a dense L x L matrix), so the toy recipe does not pack.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch
from transformers import TrainerCallback

from inference.answers import grade
from train.configs import AccuracyEvalArguments, DataArguments, SFTConfig

logger = logging.getLogger(__name__)


# --- held-out accuracy ----------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    problems: list[dict],
    max_new_tokens: int,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_samples: int = 1,
) -> list[dict]:
    """Answer `problems` ({prompt, solution}) with model.generate; one dict per sample, problem-major:
    {problem, text, tokens (generated, EOS included), truncated (no EOS within the budget), correct (bool | None)}.
    """
    was_training = model.training
    model.eval()
    prompts = [tokenizer.apply_chat_template(p["prompt"], add_generation_prompt=True, tokenize=False) for p in problems]
    jobs = [(i, prompts[i]) for i in range(len(problems)) for _ in range(num_samples)]
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    eos_id, results = tokenizer.eos_token_id, []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        inputs = tokenizer([text for _, text in batch], return_tensors="pt", padding=True, padding_side="left",
                           add_special_tokens=False).to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=eos_id, **sampling)
        for (i, _), ids in zip(batch, output[:, inputs["input_ids"].shape[1] :].tolist(), strict=True):
            finished = eos_id in ids
            ids = ids[: ids.index(eos_id) + 1] if finished else ids
            text = tokenizer.decode(ids, skip_special_tokens=True)
            results.append({"problem": i, "text": text, "tokens": len(ids), "truncated": not finished,
                            "correct": grade(text, problems[i]["solution"])})
    if was_training:
        model.train()
    return results


def summarize(results: list[dict]) -> dict:
    """accuracy (ungradable golds left out), mean_tokens, truncated fraction."""
    graded = [r for r in results if r["correct"] is not None]
    return {
        "accuracy": sum(r["correct"] for r in graded) / max(len(graded), 1),
        "mean_tokens": sum(r["tokens"] for r in results) / max(len(results), 1),
        "truncated": sum(r["truncated"] for r in results) / max(len(results), 1),
        "n": len(graded),
    }


def select_best(history: list[dict], rule: str, tolerance: float) -> dict | None:
    """The evaluation record ({step, accuracy, mean_tokens, checkpoint}) whose checkpoint becomes the final model.

    'last' → None (keep the final weights). 'accuracy' → the most accurate checkpoint (ties: fewer tokens).
    'accuracy_at_length' → among checkpoints within `tolerance` of the first evaluation's accuracy (the starting
    model, with accuracy_eval_on_start), the one with the shortest answers; if none qualifies, the most accurate.
    """
    candidates = [h for h in history if h.get("checkpoint")]
    if rule == "last" or not candidates:
        return None
    most_accurate = max(candidates, key=lambda h: (h["accuracy"], -h["mean_tokens"], h["step"]))
    if rule == "accuracy":
        return most_accurate
    floor = history[0]["accuracy"] - tolerance
    good = [h for h in candidates if h["accuracy"] >= floor - 1e-9]
    return min(good, key=lambda h: (h["mean_tokens"], -h["accuracy"])) if good else most_accurate


class AccuracyEvalCallback(TrainerCallback):
    """Greedy answers to held-out problems, graded by inference.answers, right before every checkpoint is written.

    The records go into `state.log_history` (so they are saved in each checkpoint's trainer_state.json and survive a
    resume) and `accuracy_eval.jsonl` in output_dir; the best checkpoint by `select_checkpoint` is recorded in
    `state.best_model_checkpoint`, which the Trainer's checkpoint rotation never deletes. On several processes each
    one answers a share of the problems (all take part in every generate call, as ZeRO-3 requires).
    """

    def __init__(self, problems: list[dict], tokenizer, settings: AccuracyEvalArguments):
        if not problems:
            raise ValueError("eval_file: no held-out problems to evaluate")
        self.problems, self.tokenizer, self.settings = problems, tokenizer, settings
        self.history: list[dict] = []
        self._last_step = -1

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.history = [h["accuracy_eval"] for h in state.log_history if "accuracy_eval" in h]  # resumed run
        if self.settings.accuracy_eval_on_start and not self.history:
            self._evaluate(args, state, model, checkpoint=None)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save:
            self._evaluate(args, state, model, checkpoint=os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))

    on_epoch_end = on_step_end  # save_strategy "epoch" decides to save here

    def _evaluate(self, args, state, model, checkpoint: str | None) -> None:
        if state.global_step == self._last_step:
            return
        self._last_step = state.global_step
        results = self._generate_on_all_processes(model)
        record = {"step": state.global_step, "epoch": state.epoch or 0.0, **summarize(results), "checkpoint": checkpoint}
        self.history.append(record)
        state.log_history.append({"step": state.global_step, "accuracy_eval": record})
        best = select_best(self.history, self.settings.select_checkpoint, self.settings.selection_tolerance)
        if best is not None:
            state.best_model_checkpoint, state.best_metric = best["checkpoint"], best["accuracy"]
        if args.process_index == 0:
            logger.info("held-out accuracy at step %d: %.3f, mean tokens %.1f, truncated %.3f (n=%d)",
                        record["step"], record["accuracy"], record["mean_tokens"], record["truncated"], record["n"])
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, "accuracy_eval.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def _generate_on_all_processes(self, model) -> list[dict]:
        from accelerate import PartialState
        from accelerate.utils import gather_object

        state, s = PartialState(), self.settings
        if state.num_processes == 1:
            return generate_answers(model, self.tokenizer, self.problems, s.accuracy_eval_max_new_tokens,
                                    s.accuracy_eval_batch_size)
        # Equal-sized shards (padded with a repeat of problem 0, dropped after) so every process calls generate the
        # same number of times.
        per_process = math.ceil(len(self.problems) / state.num_processes)
        mine = list(range(state.process_index, len(self.problems), state.num_processes))
        padded = mine + [0] * (per_process - len(mine))
        results = generate_answers(model, self.tokenizer, [self.problems[i] for i in padded],
                                   s.accuracy_eval_max_new_tokens, s.accuracy_eval_batch_size)
        for r, i in zip(results, padded, strict=True):
            r["problem"] = i
        results = results[: len(mine)]
        return gather_object(results)


def finish_with_selected_checkpoint(trainer, callback: AccuracyEvalCallback | None) -> dict | None:
    """Write the final model to output_dir: the last weights, or the selected checkpoint's model files."""
    args = trainer.args
    trainer.save_model(args.output_dir)
    best = None
    if callback is not None:
        best = select_best(callback.history, callback.settings.select_checkpoint, callback.settings.selection_tolerance)
    if best is not None and args.process_index == 0:
        source = Path(best["checkpoint"])
        for f in source.iterdir():
            if f.suffix in (".safetensors", ".bin") or f.name in ("config.json", "generation_config.json") or (
                f.name.startswith("model.safetensors.index")
            ):
                shutil.copy2(f, Path(args.output_dir) / f.name)
        (Path(args.output_dir) / "selected_checkpoint.json").write_text(json.dumps(best, indent=2) + "\n")
        logger.info("final model = %s (accuracy %.3f, mean tokens %.1f)", source, best["accuracy"], best["mean_tokens"])
    trainer.accelerator.wait_for_everyone()
    return best


# --- shared setup -------------------------------------------------------------------------------------------------


def load_tokenizer(model_args, chat_template_path: str | None):
    """The model's tokenizer, with the recipe's chat template if it names a .jinja file (saved with the model)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    if chat_template_path:
        if not chat_template_path.endswith((".jinja", ".j2")) or not Path(chat_template_path).is_file():
            raise FileNotFoundError(f"chat_template_path: {chat_template_path} is not a .jinja file")
        tokenizer.chat_template = Path(chat_template_path).read_text()
    if tokenizer.chat_template is None:
        raise ValueError(f"{model_args.model_name_or_path}: the tokenizer has no chat template; set chat_template_path")
    return tokenizer


def model_init_kwargs(model_args, training_args) -> dict:
    kwargs = {"revision": model_args.model_revision, "attn_implementation": model_args.attn_implementation,
              "dtype": model_args.dtype}
    kwargs.update(training_args.model_init_kwargs or {})
    return kwargs


def last_checkpoint(training_args) -> str | None:
    """An explicit resume_from_checkpoint, else the newest complete checkpoint in output_dir, else None.

    Complete = has trainer_state.json, which the Trainer writes last: a run killed while saving leaves a
    checkpoint directory without it, and resuming from that one would fail.
    """
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    found = sorted(Path(training_args.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    complete = [p for p in found if (p / "trainer_state.json").exists()]
    for partial in found[found.index(complete[-1]) + 1 :] if complete else found:
        logger.warning("ignoring incomplete checkpoint %s (killed while saving?)", partial)
    return str(complete[-1]) if complete else None


def eval_callback(data_args: DataArguments, training_args, tokenizer) -> AccuracyEvalCallback | None:
    from train.data import load_eval_problems

    if not data_args.eval_file:
        return None
    problems = load_eval_problems(data_args.eval_file, data_args.eval_problem_column, data_args.eval_answer_column,
                                  training_args.system_prompt, data_args.eval_limit, data_args.eval_split)
    return AccuracyEvalCallback(problems, tokenizer, training_args)


def save_data_report(report, training_args) -> None:
    logger.info(report.summary())
    if training_args.process_index == 0:
        os.makedirs(training_args.output_dir, exist_ok=True)
        Path(training_args.output_dir, "data_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def train_resumably(trainer, callback: AccuracyEvalCallback | None) -> Path:
    """Train from the newest complete checkpoint (if any), write the final model, return its directory."""
    args = trainer.args
    checkpoint = last_checkpoint(args)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    finish_with_selected_checkpoint(trainer, callback)
    if hasattr(trainer, "end"):  # transformers >= 5.18: close trackers and the process group
        trainer.end()
    return Path(args.output_dir)


# --- main -----------------------------------------------------------------------------------------------------------


def main(data_args: DataArguments, training_args: SFTConfig, model_args) -> Path:
    """Train and return the directory of the final model."""
    from accelerate import PartialState
    from transformers import set_seed
    from trl import SFTTrainer

    from train.data import build_sft_dataset

    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args, training_args.chat_template_path)
    with PartialState().main_process_first():  # rank 0 fills the datasets cache, the others read it
        dataset, report = build_sft_dataset(data_args.dataset_sources, tokenizer, training_args.system_prompt,
                                            training_args.max_length, data_args.dataset_seed)
    save_data_report(report, training_args)

    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    trainer = SFTTrainer(model=model_args.model_name_or_path, args=training_args, train_dataset=dataset,
                         processing_class=tokenizer)
    callback = eval_callback(data_args, training_args, tokenizer)
    if callback is not None:
        trainer.add_callback(callback)

    return train_resumably(trainer, callback)


def make_parser():
    from trl import ModelConfig, TrlParser

    return TrlParser((DataArguments, SFTConfig, ModelConfig))


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    main(*make_parser().parse_args_and_config())
