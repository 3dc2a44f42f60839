"""What SFT (train/sft.py) and GRPO (train/grpo.py) share: tokenizer and model loading (LoRA/QLoRA through peft and
bitsandbytes), the memory check before a model is loaded, held-out accuracy evaluation before every checkpoint with
its standard error, checkpoint selection, resuming, and the data report.

Held-out evaluation: each checkpoint answers the same problems (`accuracy_eval_samples` answers each, sampled at
`accuracy_eval_temperature` with a fixed seed, so checkpoints are compared on the same random numbers), graded by
inference.grading. The record of an evaluation keeps each problem's accuracy, so two checkpoints are compared on the
same problems: the standard error of their difference (paired) is what says whether `selection_tolerance` can tell
them apart, and the selection prints it.
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

from inference.grading import grade
from train.configs import AccuracyEvalArguments, DataArguments

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


def generate_answers_vllm(
    llm,
    tokenizer,
    problems: list[dict],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int = 0,
) -> list[dict]:
    """generate_answers' records, from a vLLM engine (GRPO's colocated one): one batched call, every prompt's
    samples seeded, truncated = stopped by the token budget."""
    from vllm import SamplingParams

    prompts = [{"prompt_token_ids": tokenizer.apply_chat_template(p["prompt"], add_generation_prompt=True,
                                                                  tokenize=True, return_dict=False)}
               for p in problems]
    params = SamplingParams(n=num_samples, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                            max_tokens=max_new_tokens, seed=seed)
    results = []
    for i, output in enumerate(llm.generate(prompts, sampling_params=params, use_tqdm=False)):
        for sample in output.outputs:
            text = tokenizer.decode(sample.token_ids, skip_special_tokens=True)
            results.append({"problem": i, "text": text, "tokens": len(sample.token_ids),
                            "truncated": sample.finish_reason == "length",
                            "correct": grade(text, problems[i]["solution"])})
    return results


def colocated_vllm(trainer):
    """The trainer's colocated vLLM generation (trl's VLLMGeneration with its `llm`), or None (no vLLM, server mode,
    or SFT): the held-out evaluation then uses model.generate."""
    generation = getattr(trainer, "vllm_generation", None)
    if not getattr(trainer, "use_vllm", False) or getattr(generation, "mode", None) != "colocate":
        return None
    return generation if getattr(generation, "llm", None) is not None else None


def per_problem_accuracy(results: list[dict], n_problems: int | None = None) -> list[float | None]:
    """Each problem's share of correct samples (None: its gold cannot be graded), in problem order."""
    n = n_problems if n_problems is not None else 1 + max((r["problem"] for r in results), default=-1)
    right, graded = [0] * n, [0] * n
    for r in results:
        if r["correct"] is not None:
            graded[r["problem"]] += 1
            right[r["problem"]] += bool(r["correct"])
    return [right[i] / graded[i] if graded[i] else None for i in range(n)]


def standard_error(values: list[float]) -> float:
    """Standard error of the mean of `values` (0 for fewer than two)."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def summarize(results: list[dict]) -> dict:
    """accuracy (ungradable golds left out) with its standard error over problems, mean_tokens, truncated
    fraction, n (graded samples) and problems (graded problems)."""
    graded = [r for r in results if r["correct"] is not None]
    per_problem = per_problem_accuracy(results)
    known = [a for a in per_problem if a is not None]
    return {
        "accuracy": sum(r["correct"] for r in graded) / max(len(graded), 1),
        "stderr": standard_error(known),
        "mean_tokens": sum(r["tokens"] for r in results) / max(len(results), 1),
        "truncated": sum(r["truncated"] for r in results) / max(len(results), 1),
        "n": len(graded),
        "problems": len(known),
    }


def paired_difference(record: dict, baseline: dict) -> tuple[float, float]:
    """(accuracy of `record` minus `baseline`, standard error of that difference) over the problems both graded."""
    pairs = [(a, b) for a, b in zip(record.get("per_problem") or [], baseline.get("per_problem") or [])
             if a is not None and b is not None]
    if not pairs:
        return record["accuracy"] - baseline["accuracy"], float("nan")
    differences = [a - b for a, b in pairs]
    return sum(differences) / len(differences), standard_error(differences)


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


def selection_table(history: list[dict], chosen: dict | None, tolerance: float) -> str:
    """Every evaluation against the first one: accuracy ± SE, the paired difference ± its SE, tokens; the choice
    marked. Warns when the tolerance is within two standard errors of a difference (the eval cannot tell)."""
    if not history:
        return "no evaluations"
    base = history[0]
    lines = [f"{'step':>6} {'accuracy':>16} {'vs first (paired)':>20} {'tokens':>8}  checkpoint"]
    noisy = False
    for h in history:
        diff, se = paired_difference(h, base)
        noisy |= h is not base and se == se and 2 * se > tolerance
        mark = "  <- selected" if chosen is not None and h is chosen else ""
        lines.append(f"{h['step']:>6} {h['accuracy']:>8.3f} ± {h.get('stderr', 0.0):.3f} {diff:>+11.3f} ± {se:.3f}"
                     f" {h['mean_tokens']:>8.1f}  {h.get('checkpoint') or '-'}{mark}")
    if noisy:
        lines.append(f"warning: selection_tolerance {tolerance} is under two standard errors of a paired difference: "
                     "raise eval_limit or accuracy_eval_samples")
    return "\n".join(lines)


class AccuracyEvalCallback(TrainerCallback):
    """Answers to held-out problems, graded by inference.grading, right before every checkpoint is written.

    The records go into `state.log_history` (so they are saved in each checkpoint's trainer_state.json and survive a
    resume) and `accuracy_eval.jsonl` in output_dir; the best checkpoint by `select_checkpoint` is recorded in
    `state.best_model_checkpoint`, which the Trainer's checkpoint rotation never deletes. On several processes each
    one answers a share of the problems; generation runs inside trl's `unwrap_model_for_generation`, which gathers
    ZeRO-3's sharded parameters (every process takes part in every generate call, as ZeRO-3 requires).
    """

    def __init__(self, problems: list[dict], tokenizer, settings: AccuracyEvalArguments, accelerator=None,
                 seed: int = 0, trainer=None):
        if not problems:
            raise ValueError("eval_file: no held-out problems to evaluate")
        self.problems, self.tokenizer, self.settings = problems, tokenizer, settings
        self.accelerator, self.seed, self.trainer = accelerator, seed, trainer
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
        results = self._generate_on_all_processes(model, state.global_step)
        record = {"step": state.global_step, "epoch": state.epoch or 0.0, **summarize(results),
                  "per_problem": per_problem_accuracy(results, len(self.problems)),  # for paired comparisons
                  "checkpoint": checkpoint}
        self.history.append(record)
        state.log_history.append({"step": state.global_step, "accuracy_eval": record})
        best = select_best(self.history, self.settings.select_checkpoint, self.settings.selection_tolerance)
        if best is not None:
            state.best_model_checkpoint, state.best_metric = best["checkpoint"], best["accuracy"]
        if args.process_index == 0:
            diff, se = paired_difference(record, self.history[0])
            logger.info("held-out accuracy at step %d: %.3f ± %.3f (SE over %d problems), %+.3f ± %.3f vs the first "
                        "evaluation, mean tokens %.1f, truncated %.3f", record["step"], record["accuracy"],
                        record["stderr"], record["problems"], diff, se, record["mean_tokens"], record["truncated"])
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, "accuracy_eval.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def _generate_vllm(self, generation, problems: list[dict], step: int) -> list[dict]:
        """The colocated vLLM answers (GRPO with use_vllm, colocate): the current weights pushed to it as trl does
        before a rollout, its KV cache woken and put back to sleep around the call."""
        s, trainer = self.settings, self.trainer
        if getattr(trainer, "_last_loaded_step", None) != step:
            generation.sync_weights()
            trainer._last_loaded_step = step
        elif generation.enable_sleep_mode and generation._llm_weights_sleeping:
            generation.sync_weights()
        if generation.enable_sleep_mode:
            generation.llm.wake_up(tags=["kv_cache"])
        try:
            return generate_answers_vllm(generation.llm, self.tokenizer, problems, s.accuracy_eval_max_new_tokens,
                                         s.accuracy_eval_temperature, s.accuracy_eval_top_p, s.accuracy_eval_samples,
                                         self.seed)
        finally:
            if generation.enable_sleep_mode:
                generation.llm.sleep(level=2)
                generation._llm_weights_sleeping = True

    def _generate(self, model, problems: list[dict], step: int = 0) -> list[dict]:
        from trl.models import unwrap_model_for_generation

        s = self.settings
        generation = colocated_vllm(self.trainer)
        if generation is not None:
            return self._generate_vllm(generation, problems, step)
        sampled = s.accuracy_eval_temperature > 0
        # The same seed at every evaluation (common random numbers: checkpoints differ by their weights, not their
        # dice); the training RNG is put back afterwards.
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            if self.accelerator is None:
                return generate_answers(model, self.tokenizer, problems, s.accuracy_eval_max_new_tokens,
                                        s.accuracy_eval_batch_size, do_sample=sampled,
                                        temperature=s.accuracy_eval_temperature, top_p=s.accuracy_eval_top_p,
                                        num_samples=s.accuracy_eval_samples)
            with unwrap_model_for_generation(model, self.accelerator) as unwrapped:
                return generate_answers(unwrapped, self.tokenizer, problems, s.accuracy_eval_max_new_tokens,
                                        s.accuracy_eval_batch_size, do_sample=sampled,
                                        temperature=s.accuracy_eval_temperature, top_p=s.accuracy_eval_top_p,
                                        num_samples=s.accuracy_eval_samples)

    def _generate_on_all_processes(self, model, step: int = 0) -> list[dict]:
        from accelerate import PartialState
        from accelerate.utils import gather_object

        state = PartialState()
        if state.num_processes == 1:
            return self._generate(model, self.problems, step)
        # Equal-sized shards (padded with a repeat of problem 0, dropped after) so every process calls generate the
        # same number of times. A colocated vLLM with tensor parallelism serves a group of processes that must
        # send it the same prompts: shards go to groups, and one process of each group reports.
        generation = colocated_vllm(self.trainer)
        group = generation.tensor_parallel_size if generation is not None else 1
        groups, index = state.num_processes // group, state.process_index // group
        per_group = math.ceil(len(self.problems) / groups)
        mine = list(range(index, len(self.problems), groups))
        padded = mine + [0] * (per_group - len(mine))
        results = self._generate(model, [self.problems[i] for i in padded], step)
        kept = []
        if state.process_index % group == 0:
            for r in results:
                if r["problem"] < len(mine):
                    kept.append(r | {"problem": mine[r["problem"]]})
        return sorted(gather_object(kept), key=lambda r: r["problem"])


MODEL_FILES = ("config.json", "generation_config.json", "adapter_config.json")


def finish_with_selected_checkpoint(trainer, callback: AccuracyEvalCallback | None) -> dict | None:
    """Write the final model to output_dir: the last weights, or the selected checkpoint's model (or adapter) files;
    print every evaluation with its standard errors and write the choice to selected_checkpoint.json."""
    args = trainer.args
    trainer.save_model(args.output_dir)
    best = None
    if callback is not None:
        settings = callback.settings
        best = select_best(callback.history, settings.select_checkpoint, settings.selection_tolerance)
        if args.process_index == 0:
            logger.info("held-out evaluations (selection %s, tolerance %s):\n%s", settings.select_checkpoint,
                        settings.selection_tolerance,
                        selection_table(callback.history, best, settings.selection_tolerance))
    if best is not None and args.process_index == 0:
        source = Path(best["checkpoint"])
        for f in source.iterdir():
            if f.suffix in (".safetensors", ".bin") or f.name in MODEL_FILES or f.name.startswith("model.safetensors.index"):
                shutil.copy2(f, Path(args.output_dir) / f.name)
        diff, se = paired_difference(best, callback.history[0])
        summary = {k: v for k, v in best.items() if k != "per_problem"} | {"vs_first": diff, "vs_first_stderr": se}
        (Path(args.output_dir) / "selected_checkpoint.json").write_text(json.dumps(summary, indent=2) + "\n")
        logger.info("final model = %s (accuracy %.3f ± %.3f, %+.3f ± %.3f vs the first evaluation, mean tokens %.1f)",
                    source, best["accuracy"], best.get("stderr", 0.0), diff, se, best["mean_tokens"])
    trainer.accelerator.wait_for_everyone()
    return best


# --- model, tokenizer, memory ---------------------------------------------------------------------------------------


def load_tokenizer(model_args, chat_template_path: str | None, need_template: bool = True):
    """The model's tokenizer, with the recipe's chat template if it names a .jinja file (saved with the model).
    `need_template` False: the rows are rendered without it (chat_format harmony: openai-harmony renders)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    if chat_template_path:
        if not chat_template_path.endswith((".jinja", ".j2")) or not Path(chat_template_path).is_file():
            raise FileNotFoundError(f"chat_template_path: {chat_template_path} is not a .jinja file")
        tokenizer.chat_template = Path(chat_template_path).read_text()
    if tokenizer.chat_template is None and need_template:
        raise ValueError(f"{model_args.model_name_or_path}: the tokenizer has no chat template; set chat_template_path")
    return tokenizer


def model_init_kwargs(model_args, training_args) -> dict:
    """from_pretrained keyword arguments: revision, attention, dtype, and a bitsandbytes quantization config for
    QLoRA (load_in_4bit / load_in_8bit; these need use_peft, bitsandbytes and a CUDA GPU)."""
    from accelerate import PartialState
    from trl import get_quantization_config

    kwargs = {"revision": model_args.model_revision, "attn_implementation": model_args.attn_implementation,
              "dtype": model_args.dtype}
    if model_args.load_in_4bit or model_args.load_in_8bit:
        flag = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit"
        if not model_args.use_peft:
            raise ValueError(f"{flag}: a quantized model trains only through LoRA adapters; set use_peft: true")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise ValueError(f"{flag} needs bitsandbytes (requirements-gpu.txt)") from e
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} needs a CUDA GPU (bitsandbytes' 4/8-bit layers)")
        # Quantized weights cannot be moved after loading: each process loads them onto its own GPU.
        kwargs |= {"quantization_config": get_quantization_config(model_args),
                   "device_map": {"": PartialState().local_process_index}}
    if is_mxfp4(model_args):  # gpt-oss on the hub: MXFP4 experts, which train only dequantized (bf16)
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
    kwargs.update(training_args.model_init_kwargs or {})
    return kwargs


def save_dequantized_experts(model) -> None:
    """Make `save_pretrained` write a model loaded with Mxfp4Config(dequantize=True) as plain bf16 keys.

    transformers 5.19 saves such a model through the reverse of its loading conversion, whose target patterns are
    regexes: every layer's experts land under the one key `down_proj$` / `gate_up_proj$` and all but one layer's are
    lost. Without the dequantize converters the checkpoint keeps `model.layers.N.mlp.experts.{gate_up,down}_proj`,
    which vLLM loads as bf16 and train/export_gpt_oss.py re-quantizes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    conversions = getattr(base, "_weight_conversions", None)
    if conversions:
        base._weight_conversions = [c for c in conversions if not any(
            type(op).__name__ == "Mxfp4Dequantize" for op in getattr(c, "operations", []))]


def is_mxfp4(model_args) -> bool:
    """Whether the model's config.json says its weights are MXFP4-quantized (gpt-oss's experts)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    except (OSError, ValueError):
        return False
    quantization = getattr(config, "quantization_config", None) or {}
    method = (quantization.get("quant_method") if isinstance(quantization, dict)
              else getattr(quantization, "quant_method", None))
    return str(getattr(method, "value", method)) == "mxfp4"


def peft_config(model_args):
    """The LoRA config of use_peft / lora_* (trl.get_peft_config), or None for full-parameter training."""
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if config is not None:
        logger.info("LoRA: r=%d, alpha=%d, targets %s", config.r, config.lora_alpha, config.target_modules or "peft's "
                    "defaults for this architecture")
    return config


def check_memory(data_args, training_args, model_args) -> None:
    """Before loading a model on GPUs: the recipe's memory plan (train/memory.py) on the GPUs and ZeRO stage this
    run really has; raises MemoryError naming the settings to change when it does not fit, unless force_memory
    (then the plan and the risk are logged and training goes on)."""
    from accelerate import PartialState

    from train import memory

    if training_args.use_cpu or not torch.cuda.is_available():
        logger.info("no GPU: memory plan not checked")
        return
    settings = {**vars(data_args), **vars(model_args), **vars(training_args)}
    state = PartialState()
    gib = torch.cuda.get_device_properties(state.local_process_index).total_memory / memory.GIB
    stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0")) if state.distributed_type.value == "DEEPSPEED" else 0
    offload = os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none") not in ("none", "")
    result = memory.plan(settings, state.num_processes, gib, zero_stage=stage, offload_optimizer=offload)
    text = memory.enforce(result, getattr(training_args, "force_memory", False))
    if state.is_main_process:
        (logger.warning if not result.fits else logger.info)(text)


# --- runs -----------------------------------------------------------------------------------------------------------


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


def add_eval_callback(trainer, data_args: DataArguments, training_args, tokenizer) -> AccuracyEvalCallback | None:
    """The held-out evaluation of `eval_file`, added to `trainer` (None when the recipe names no eval_file)."""
    from train.data import load_eval_problems

    if not data_args.eval_file:
        return None
    problems = load_eval_problems(data_args.eval_file, data_args.eval_problem_column, data_args.eval_answer_column,
                                  training_args.system_prompt, data_args.eval_limit, data_args.eval_split)
    callback = AccuracyEvalCallback(problems, tokenizer, training_args, trainer.accelerator, training_args.seed,
                                    trainer=trainer)
    trainer.add_callback(callback)
    return callback


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
