"""One SFT step and one GRPO step of a real recipe on this machine's GPU, with the measured peak memory next to
train/memory.py's plan for the same settings; optionally one LoRA step of gpt-oss-20b.

    make gpu-check                                  # on a GPU node, after `make setup-gpu`
    .venv-gpu/bin/python -m train.gpu_check --grpo-completion-tokens 1024 --gpt-oss-lora --out runs/gpu-check.json
    .venv/bin/python -m train.gpu_check --tiny      # the same code path on CPU with tiny shapes (seconds)

Nothing is downloaded: each model is its recipe's architecture (the config.json figures train/memory.py carries)
with random weights and the toy tokenizer; the data are synthetic rows as long as the recipe's lengths, so packing
fills whole `max_length` rows. What the recipe sets is kept (lengths, micro-batch, gradient checkpointing, bf16,
optimizer, packing, loss); what one GPU cannot reproduce is changed and printed: one process (ZeRO-0, so the plan
is computed for 1 GPU without DeepSpeed), one optimizer step, no held-out evaluation, flash-attn only where it is
installed (else sdpa), vLLM only where it is installed (else trl generates with model.generate), and with
`--grpo-completion-tokens N` shorter completions (a random model never stops, so every completion runs to the cap).
The peak is torch's `max_memory_reserved` (what the allocator holds; the CUDA context adds ~0.5 GiB on top) and the
plan's figure is printed with and without its fixed 2 GiB for context, NCCL and fragmentation.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import sys
import time
from pathlib import Path

from train import memory

logger = logging.getLogger("train.gpu_check")
SFT_RECIPE = "configs/sft/r1-distill-qwen-1.5b.yaml"
GRPO_RECIPE = "configs/grpo/r1-distill-qwen-1.5b.yaml"
# openai/gpt-oss-20b's config.json (no hub here: the figures are copied).
GPT_OSS_20B = dict(hidden_size=2880, num_hidden_layers=24, intermediate_size=2880, num_attention_heads=64,
                   num_key_value_heads=8, head_dim=64, num_local_experts=32, num_experts_per_tok=4,
                   vocab_size=201088, sliding_window=128, max_position_embeddings=131072)
TINY_QWEN2 = dict(hidden_size=128, num_hidden_layers=2, intermediate_size=256, num_attention_heads=2,
                  num_key_value_heads=1, vocab_size=151936, tie_word_embeddings=False)
TINY_GPT_OSS = dict(GPT_OSS_20B, hidden_size=128, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
                    num_key_value_heads=1, head_dim=32, num_local_experts=4, num_experts_per_tok=2)


def device_gib() -> float:
    import torch

    return torch.cuda.get_device_properties(0).total_memory / memory.GIB if torch.cuda.is_available() else 0.0


def peak_gib() -> tuple[float, float]:
    """(allocated, reserved) peak since the last reset, GiB; (0, 0) on CPU."""
    import torch

    if not torch.cuda.is_available():
        return 0.0, 0.0
    return torch.cuda.max_memory_allocated() / memory.GIB, torch.cuda.max_memory_reserved() / memory.GIB


def reset_peak() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def random_model(architecture: dict, out: Path) -> Path:
    """Save a random-weight bf16 model of `architecture` with the toy tokenizer (token ids < 400 fit any vocab)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from train.toy.model_factory import build_tokenizer
    from train.toy.task import tokenizer_corpus

    if (out / "config.json").exists():
        return out
    tokenizer = build_tokenizer(tokenizer_corpus())
    extra = dict(bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id)
    config = Qwen2Config(**architecture, **extra)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    reset_peak()
    return out


def synthetic_rows(tokenizer, n: int, trace_tokens: int, seed: int = 0) -> list[dict]:
    """Problem/trace/answer rows whose traces are about `trace_tokens` tokens, each ending in its boxed answer."""
    rng = random.Random(seed)
    line = "12+34=46\n"
    per_line = max(1, len(tokenizer(line)["input_ids"]))
    rows = []
    for i in range(n):
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        work = "".join(f"{rng.randint(10, 99)}+{rng.randint(10, 99)}=0\n" for _ in range(trace_tokens // per_line))
        rows.append({"problem": f"What is {a}+{b}?", "answer": str(a + b),
                     "generation": f"<think>\n{work}\\boxed{{{a + b}}}\n</think>\nThe answer is \\boxed{{{a + b}}}."})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def flags(values: dict) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def attention() -> str:
    try:
        import flash_attn  # noqa: F401

        return "flash_attention_2"
    except ImportError:
        return "sdpa"


def run_stage(stage: str, recipe: str, model_dir: Path, work: Path, tiny: bool, completion_tokens: int | None) -> dict:
    """One optimizer step of `recipe` through the kit's own train.sft / train.grpo; the measured peak and the plan."""
    import torch

    from train import grpo, sft

    module = sft if stage == "sft" else grpo
    cpu = not torch.cuda.is_available()
    overrides = {"model_name_or_path": model_dir, "output_dir": work / f"{stage}-out", "max_steps": 1,
                 "report_to": "none", "save_strategy": "no", "logging_steps": 1, "attn_implementation": attention()}
    if cpu:
        overrides |= {"use_cpu": True, "bf16": False, "dtype": "float32"}
    if stage == "sft":
        overrides |= {"dataset_num_proc": 1}
    else:
        overrides |= {"use_vllm": _vllm_installed() and not cpu}
    if tiny:
        overrides |= {"gradient_accumulation_steps": 1, "optim": "adamw_torch"}
        overrides |= {"max_length": 256} if stage == "sft" else {"max_completion_length": 16, "num_generations": 2}
    if stage == "grpo" and completion_tokens:
        overrides["max_completion_length"] = completion_tokens
    data_args, args, model_args = module.make_parser().parse_args_and_config(["--config", recipe, *flags(overrides)])
    args.chat_template_path = None  # the toy tokenizer's ChatML template (the R1 one needs R1's special tokens)
    data_args.eval_file = None  # the held-out evaluation needs its data set; its memory is planned separately
    if stage == "grpo":
        args.cosine_max_len = args.max_completion_length // 2  # real runs derive it from the SFT data report
    tokenizer = sft.load_tokenizer(model_args, None)
    length = args.max_length if stage == "sft" else 32
    per_row = max(64, length // 6)
    problems = (args.per_device_train_batch_size * args.gradient_accumulation_steps * 8) if stage == "sft" else 16
    rows = synthetic_rows(tokenizer, problems, per_row)
    data_args.dataset_sources = [{"path": write_jsonl(rows, work / f"{stage}.jsonl"), "label": "synthetic"}]

    settings = {**vars(data_args), **vars(model_args), **vars(args)}
    gib = device_gib() or float(args.hardware_gpu_memory_gb or 80)
    plan = memory.plan(settings, 1, gib, zero_stage=0, offload_optimizer=False)  # one process, no DeepSpeed
    reset_peak()
    started = time.perf_counter()
    module.check_memory = lambda *a: None  # measure, do not refuse: the plan is printed next to the measurement
    trainer, callback = module.build_trainer(data_args, args, model_args)
    trainer.train()
    seconds = time.perf_counter() - started
    allocated, reserved = peak_gib()
    loss = [h.get("loss") for h in trainer.state.log_history if "loss" in h]
    del trainer, callback
    reset_peak()
    return {"stage": stage, "recipe": recipe, "seconds": round(seconds, 1), "loss": loss[-1] if loss else None,
            "peak_allocated_gib": round(allocated, 2), "peak_reserved_gib": round(reserved, 2),
            "plan_peak_gib": round(plan.peak_gb, 2), "plan_without_overhead_gib": round(plan.peak_gb - memory.OVERHEAD_GIB, 2),
            "plan_components": {k: round(v, 2) for k, v in plan.components.items()},
            "settings": {"max_length": settings.get("max_length"), "max_completion_length":
                         settings.get("max_completion_length"), "micro_batch": args.per_device_train_batch_size,
                         "gradient_checkpointing": args.gradient_checkpointing, "optim": getattr(args.optim, "value", args.optim),
                         "attention": overrides["attn_implementation"], "use_vllm": settings.get("use_vllm", False)}}


def _vllm_installed() -> bool:
    try:
        import vllm  # noqa: F401

        return True
    except ImportError:
        return False


def gpt_oss_lora_step(architecture: dict, tokens: int, rank: int = 16) -> dict:
    """One LoRA step (attention projections, r=16, AdamW) of a random-weight gpt-oss in bf16 on `tokens` tokens. The
    experts stay frozen bf16 weights, which is how the MXFP4 checkpoint trains once dequantized; the model is built
    in place, not saved (gpt-oss-20b is 39 GiB in bf16)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GptOssConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    reset_peak()
    started = time.perf_counter()
    config = GptOssConfig(**architecture)
    config._attn_implementation = "eager"  # attention sinks: no sdpa kernel; flash/flex kernels come from the hub
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    weights = peak_gib()[1]
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, 300, (1, tokens), device=device)
    step_started = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    allocated, reserved = peak_gib()
    result = {"stage": "gpt-oss LoRA", "tokens": tokens, "lora_rank": rank, "trainable": trainable,
              "parameters": sum(p.numel() for p in model.parameters()), "loss": loss.item(),
              "step_seconds": round(time.perf_counter() - step_started, 1),
              "seconds": round(time.perf_counter() - started, 1), "weights_gib": round(weights, 2),
              "peak_allocated_gib": round(allocated, 2), "peak_reserved_gib": round(reserved, 2)}
    del model, optimizer, loss
    reset_peak()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft-recipe", default=SFT_RECIPE)
    parser.add_argument("--grpo-recipe", default=GRPO_RECIPE)
    parser.add_argument("--grpo-completion-tokens", type=int, default=None,
                        help="cap completions (default: the recipe's max_completion_length)")
    parser.add_argument("--gpt-oss-lora", action="store_true", help="also one LoRA step of gpt-oss-20b")
    parser.add_argument("--gpt-oss-tokens", type=int, default=4096)
    parser.add_argument("--stages", default="sft,grpo", help="comma-separated: sft, grpo (default both)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: checks the code path, not memory")
    parser.add_argument("--work", default="runs/gpu-check")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (use --tiny to check the code path on CPU)", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}, "
          f"{device_gib():.1f} GiB; torch {torch.__version__}; attention: {attention()}; vLLM: {_vllm_installed()}")
    results = []
    recipes = {"sft": args.sft_recipe, "grpo": args.grpo_recipe}
    for stage in [s for s in args.stages.split(",") if s]:
        recipe = recipes[stage]
        architecture = TINY_QWEN2 if args.tiny else memory.KNOWN_ARCHITECTURES[memory.recipe_settings(recipe)["hardware_model"]]
        name = "tiny-qwen2" if args.tiny else memory.recipe_settings(recipe)["hardware_model"].split("/")[-1]
        model_dir = random_model(architecture, work / name)  # SFT and GRPO of one model share it
        if args.tiny:  # plan the tiny model itself
            recipe = _with_model(recipe, model_dir, work)
        results.append(run_stage(stage, recipe, model_dir, work, args.tiny, args.grpo_completion_tokens))
        print(json.dumps(results[-1]), flush=True)
    if args.gpt_oss_lora:
        results.append(gpt_oss_lora_step(TINY_GPT_OSS if args.tiny else GPT_OSS_20B,
                                         64 if args.tiny else args.gpt_oss_tokens))
        print(json.dumps(results[-1]), flush=True)
    print(f"\n{'stage':<14}{'measured peak (reserved)':>26}{'plan (without 2 GiB overhead)':>32}")
    for r in results:
        plan = f"{r['plan_peak_gib']:.1f} ({r['plan_without_overhead_gib']:.1f})" if "plan_peak_gib" in r else "-"
        print(f"{r['stage']:<14}{r['peak_reserved_gib']:>22.1f} GiB{plan:>28} GiB")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


def _with_model(recipe: str, model_dir: Path, work: Path) -> str:
    """A copy of `recipe` whose hardware_model is `model_dir` (the tiny model plans itself)."""
    import yaml

    settings = yaml.safe_load(Path(recipe).read_text())
    settings["hardware_model"] = str(model_dir)
    path = work / Path(recipe).name
    path.write_text(yaml.safe_dump(settings))
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
