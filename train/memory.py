"""Per-GPU memory plan of a training recipe, checked against the hardware its header names.

    python -m train.memory --config configs/grpo/r1-distill-qwen-14b.yaml
    python -m train.memory --config configs/grpo/r1-distill-qwen-14b.yaml --gpus 8 --gpu-memory-gb 22.5   # refused

Exit 0 when the plan fits, 1 (naming the settings to change) when it does not, 2 when the recipe names no hardware.
train/sft.py and train/grpo.py run the same check against the GPUs they find before loading a model.

Memory is in GiB (2^30 bytes, what `nvidia-smi` shows divided by 1024): an "80 GB" H100 is 80, an H200 140, a
"24 GB" L4 22.5. A recipe names its hardware with four keys:

    hardware_gpus: 8                                     # data-parallel processes (one per GPU)
    hardware_gpu_memory_gb: 140                          # GiB per GPU
    hardware_accelerate_config: configs/accelerate/zero2.yaml   # ZeRO stage and offload come from here
    hardware_model: deepseek-ai/DeepSeek-R1-Distill-Qwen-14B    # architecture (model_name_or_path may not exist yet)

Where the numbers come from:
- parameter count and largest layer: accelerate's own estimator (`calculate_maximum_sizes` on the architecture built
  with `init_empty_weights`, no weights loaded); LoRA's trainable count from peft's `get_peft_model` on that empty
  model. The single-GPU total without sharding is accelerate's `estimate_training_usage` (printed for reference).
- model states by ZeRO stage: DeepSpeed's rule (`estimate_zero2/3_model_states_mem_needs`: bf16 weights whole per
  GPU under ZeRO-2, sharded under ZeRO-3; gradients sharded from stage 2; fp32 master weights and optimizer states
  sharded from stage 1), with the optimizer's bytes per trainable parameter (fp32 AdamW 8, 8-bit/paged 8-bit AdamW
  2). DeepSpeed does not install without CUDA, so its formulas are applied here; where it is installed the plan
  prints DeepSpeed's own figure for the fp32-AdamW case next to it.
- reference model (GRPO, beta > 0, no LoRA): a bf16 copy, whole under ZeRO-2, sharded under ZeRO-3.
- activations per micro-batch of t tokens (hidden h, intermediate i, L layers, vocab V): a layer's working set with
  flash attention (no t x t score matrix) ~ t x (17 h + 8 i) bytes in bf16; gradient checkpointing keeps only each
  layer's input (2 t h L) plus one layer being recomputed. The logits dominate at long sequences: SFT keeps t x V
  in bf16 plus the loss's fp32 copy and both gradients (12 bytes per entry); GRPO keeps the completion's logits and
  their gradient in bf16 (4 bytes) plus one sequence's fp32 log-softmax.
- the held-out evaluation (model.generate between steps) adds its KV cache: accuracy_eval_batch_size x (prompt +
  accuracy_eval_max_new_tokens) tokens x 4 x layers x kv heads x head dim bytes.
- colocated vLLM takes `vllm_gpu_memory_utilization` of the GPU while it generates (training states stay resident);
  with `vllm_enable_sleep_mode` it releases weights and KV cache while the trainer steps, keeping ~2 GiB.
- 2 GiB per GPU for the CUDA context, NCCL buffers and allocator fragmentation.
These are estimates (within ~10-20 % in the literature); item 7 of issue 12 measures the real peak on a GPU.
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import yaml

GIB = 2**30
OVERHEAD_GIB = 2.0  # CUDA context + NCCL + allocator fragmentation, per GPU
SLEEPING_VLLM_GIB = 2.0  # what a sleeping colocated vLLM keeps (CUDA graphs, context)
HARDWARE_KEYS = ("hardware_gpus", "hardware_gpu_memory_gb", "hardware_accelerate_config", "hardware_model")

# Bytes of optimizer state per trainable parameter, on top of DeepSpeed's fp32 master copy (4 bytes).
OPTIMIZER_STATE_BYTES = {
    "adamw_torch": 8, "adamw_torch_fused": 8, "adamw_hf": 8, "adamw_apex_fused": 8, "paged_adamw_32bit": 8,
    "adamw_bnb_8bit": 2, "adamw_8bit": 2, "paged_adamw_8bit": 2, "adafactor": 4, "sgd": 0,
}

# The public config.json of the architectures the recipes train (no hub here: the numbers are copied).
KNOWN_ARCHITECTURES = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": dict(hidden_size=1536, num_hidden_layers=28, intermediate_size=8960,
                                                      num_attention_heads=12, num_key_value_heads=2,
                                                      vocab_size=151936, tie_word_embeddings=False),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": dict(hidden_size=3584, num_hidden_layers=28, intermediate_size=18944,
                                                    num_attention_heads=28, num_key_value_heads=4,
                                                    vocab_size=152064, tie_word_embeddings=False),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": dict(hidden_size=5120, num_hidden_layers=48, intermediate_size=13824,
                                                     num_attention_heads=40, num_key_value_heads=8,
                                                     vocab_size=152064, tie_word_embeddings=False),
}


@dataclass
class Shape:
    params: int
    largest_layer_params: int
    trainable: int
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    kv_bytes_per_token: int  # bf16 K and V of every layer


@functools.lru_cache(maxsize=16)
def model_shape(model: str, lora: tuple | None = None) -> Shape:
    """Parameter counts of `model` from accelerate's estimator on an empty (meta) model; `lora` = (r, targets)."""
    from accelerate import init_empty_weights
    from accelerate.utils import calculate_maximum_sizes
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

    if (Path(model) / "config.json").exists():
        config = AutoConfig.from_pretrained(model)
    elif model in KNOWN_ARCHITECTURES:
        config = Qwen2Config(**KNOWN_ARCHITECTURES[model])
    else:
        raise ValueError(f"hardware_model: {model!r} is neither a local model directory nor one of "
                         f"{sorted(KNOWN_ARCHITECTURES)}")
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config, dtype="float32")  # 4 bytes a parameter: sizes / 4 = counts
    total_bytes, (largest_bytes, _) = calculate_maximum_sizes(empty)
    trainable = total_bytes // 4
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        r, targets = lora
        with init_empty_weights():
            peft_model = get_peft_model(empty, LoraConfig(r=r, target_modules=list(targets) if targets else None,
                                                          task_type="CAUSAL_LM"))
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return Shape(params=total_bytes // 4, largest_layer_params=largest_bytes // 4, trainable=trainable,
                 hidden=config.hidden_size, layers=config.num_hidden_layers, intermediate=config.intermediate_size,
                 vocab=config.vocab_size, kv_bytes_per_token=2 * 2 * config.num_hidden_layers * kv_heads * head_dim)


def zero_settings(accelerate_config: str | None) -> tuple[int, bool]:
    """(ZeRO stage, optimizer offloaded to CPU) of an accelerate config; (0, False) without DeepSpeed."""
    if not accelerate_config:
        return 0, False
    path = Path(accelerate_config)
    if not path.exists():
        raise FileNotFoundError(f"hardware_accelerate_config: {accelerate_config} does not exist")
    config = yaml.safe_load(path.read_text())
    if config.get("distributed_type") != "DEEPSPEED":
        return 0, False
    ds = config.get("deepspeed_config") or {}
    return int(ds.get("zero_stage", 0)), ds.get("offload_optimizer_device", "none") not in ("none", None)


@dataclass
class Plan:
    """GiB per GPU, by component, and the verdict."""

    stage: str
    gpus: int
    gpu_memory_gb: float
    zero_stage: int
    optim: str
    components: dict[str, float]  # resident model states, activations and logits
    generation_gb: float  # colocated vLLM while it generates (0: none)
    eval_gb: float  # KV cache of the held-out evaluation (model.generate, between steps)
    training_vllm_gb: float  # what vLLM keeps while the trainer steps
    notes: list[str]

    @property
    def resident_gb(self) -> float:
        return sum(v for k, v in self.components.items() if k in RESIDENT)

    @property
    def peak_training_gb(self) -> float:
        return sum(self.components.values()) + self.training_vllm_gb

    @property
    def peak_generation_gb(self) -> float:
        return self.resident_gb + self.components["overhead"] + self.generation_gb

    @property
    def peak_eval_gb(self) -> float:
        return self.resident_gb + self.components["overhead"] + self.training_vllm_gb + self.eval_gb

    @property
    def peak_gb(self) -> float:
        return max(self.peak_training_gb, self.peak_generation_gb, self.peak_eval_gb)

    @property
    def fits(self) -> bool:
        return self.peak_gb <= self.gpu_memory_gb

    def report(self) -> str:
        lines = [f"{self.stage} memory plan per GPU ({self.gpus} GPUs of {self.gpu_memory_gb:g} GiB, "
                 f"ZeRO-{self.zero_stage}):"]
        lines += [f"  {name:<28}{gb:8.1f} GiB" for name, gb in self.components.items()]
        if self.generation_gb:
            lines.append(f"  {'vLLM while generating':<28}{self.generation_gb:8.1f} GiB")
            lines.append(f"  {'vLLM while training':<28}{self.training_vllm_gb:8.1f} GiB")
            lines.append(f"  peak while generating: {self.peak_generation_gb:.1f} GiB")
        lines.append(f"  peak while training:   {self.peak_training_gb:.1f} GiB")
        if self.eval_gb:
            lines.append(f"  peak while evaluating: {self.peak_eval_gb:.1f} GiB (model.generate: {self.eval_gb:.1f} GiB)")
        lines += [f"  note: {n}" for n in self.notes]
        verdict = "FITS" if self.fits else "DOES NOT FIT"
        lines.append(f"{verdict}: peak {self.peak_gb:.1f} of {self.gpu_memory_gb:g} GiB")
        return "\n".join(lines)

    def advice(self) -> str:
        """The settings to change, largest saving first."""
        tips = []
        c = self.components
        if c.get("optimizer states", 0) > 1 and "8bit" not in self.optim:
            tips.append("optim: paged_adamw_8bit (optimizer states 8 -> 2 bytes a parameter)")
        if self.zero_stage < 3:
            tips.append("hardware_accelerate_config: configs/accelerate/zero3.yaml (shard the weights too; colocated "
                        "vLLM then needs vllm_mode: server)")
        if c.get("logits", 0) + c.get("activations", 0) > 0.2 * self.gpu_memory_gb:
            tips.append("per_device_train_batch_size: halve it and double gradient_accumulation_steps (same batch)")
        if self.generation_gb and self.peak_generation_gb > self.gpu_memory_gb:
            tips.append("vllm_gpu_memory_utilization: lower it, or vllm_mode: server on separate GPUs")
        if self.peak_eval_gb > self.gpu_memory_gb:
            tips.append("accuracy_eval_batch_size: lower it (the held-out evaluation's KV cache)")
        if c.get("reference model", 0) > 1:
            tips.append("beta: 0.0 (no reference model), or use_peft: true (the adapter-free model is the reference)")
        tips.append("use_peft: true (LoRA) or more/larger GPUs (--gpus, --gpu-memory-gb)")
        return "change one of:\n  - " + "\n  - ".join(tips)


RESIDENT = ("weights", "gradients", "fp32 master weights", "optimizer states", "reference model")


def plan(settings: dict, gpus: int, gpu_memory_gb: float, zero_stage: int = 0, offload_optimizer: bool = False) -> Plan:
    """The memory plan of a recipe's settings (every key of the recipe, defaults filled) on `gpus` GPUs."""
    grpo = "num_generations" in settings
    stage, offload = zero_stage, offload_optimizer
    lora = settings.get("use_peft", False)
    targets = settings.get("lora_target_modules")
    shape = model_shape(settings.get("hardware_model") or settings["model_name_or_path"],
                        (settings.get("lora_r", 16), tuple(targets or ())) if lora else None)
    P, T, n = shape.params, shape.trainable, max(gpus, 1)
    optim = getattr(settings.get("optim", "adamw_torch"), "value", settings.get("optim"))  # TrainingArguments: an enum
    if optim not in OPTIMIZER_STATE_BYTES:
        raise ValueError(f"optim: {optim!r} has no memory figure here; known: {sorted(OPTIMIZER_STATE_BYTES)}")
    weight_bytes = 0.5 if settings.get("load_in_4bit") else 1 if settings.get("load_in_8bit") else 2
    notes = [f"optimizer {optim}, {OPTIMIZER_STATE_BYTES[optim]} bytes of state a parameter; "
             f"{P / 1e9:.2f} B parameters, {T / 1e9:.3f} B trainable"]

    c: dict[str, float] = {}
    if stage == 3:  # sharded; the largest layer is gathered whole (twice: the one in use and the prefetched one)
        c["weights"] = (weight_bytes * P / n + 2 * 2 * shape.largest_layer_params) / GIB
    else:
        c["weights"] = weight_bytes * P / GIB
    c["gradients"] = 2 * T / (n if stage >= 2 else 1) / GIB
    shard = n if stage >= 1 else 1
    c["fp32 master weights"] = 0.0 if offload else 4 * T / shard / GIB
    c["optimizer states"] = 0.0 if offload else OPTIMIZER_STATE_BYTES[optim] * T / shard / GIB
    if grpo and settings.get("beta", 0.0) > 0 and not lora:
        c["reference model"] = 2 * P / (n if stage == 3 else 1) / GIB

    batch = settings.get("per_device_train_batch_size", 8)
    if grpo:
        completion = settings.get("max_completion_length", 256)
        sequence = (settings.get("max_prompt_length") or 0) + completion
    else:
        sequence = settings.get("max_length", 1024)
    tokens = batch * sequence
    layer = tokens * (17 * shape.hidden + 8 * shape.intermediate)
    if settings.get("gradient_checkpointing", True):
        c["activations"] = (2 * tokens * shape.hidden * shape.layers + layer) / GIB
    else:
        c["activations"] = layer * shape.layers / GIB
        notes.append("gradient_checkpointing is off: every layer's activations are kept")
    if grpo:
        c["logits"] = (4 * batch * completion * shape.vocab + 4 * completion * shape.vocab) / GIB
    else:
        c["logits"] = 12 * tokens * shape.vocab / GIB
    c["overhead"] = OVERHEAD_GIB
    notes.append(f"{tokens} tokens per micro-batch ({batch} x {sequence})")

    generation = training_vllm = 0.0
    if grpo and settings.get("use_vllm") and settings.get("vllm_mode", "colocate") == "colocate":
        generation = settings.get("vllm_gpu_memory_utilization", 0.3) * gpu_memory_gb
        sleeps = settings.get("vllm_enable_sleep_mode", False)
        training_vllm = SLEEPING_VLLM_GIB if sleeps else generation
        vllm_weights = 2 * P / settings.get("vllm_tensor_parallel_size", 1) / GIB
        if vllm_weights > generation:
            notes.append(f"vLLM's share ({generation:.1f} GiB) cannot hold its weights ({vllm_weights:.1f} GiB): "
                         "raise vllm_gpu_memory_utilization or vllm_tensor_parallel_size")
            generation = max(generation, vllm_weights * 1.2)
    evaluation = 0.0
    if settings.get("eval_file"):
        prompt = settings.get("max_prompt_length") or 512
        tokens_in_flight = settings.get("accuracy_eval_batch_size", 16) * (
            prompt + settings.get("accuracy_eval_max_new_tokens", 1024))
        evaluation = tokens_in_flight * shape.kv_bytes_per_token / GIB
        if stage == 3:  # trl's unwrap_model_for_generation gathers the whole model for generate
            evaluation += weight_bytes * P / GIB - c["weights"]
    result = Plan("GRPO" if grpo else "SFT", n, gpu_memory_gb, stage, optim, c, generation, evaluation, training_vllm,
                  notes)
    result.notes.append(deepspeed_crosscheck(P, shape.largest_layer_params, n, stage))
    return result


def deepspeed_crosscheck(params: int, largest_layer: int, gpus: int, stage: int) -> str:
    """DeepSpeed's own model-states figure (fp32 AdamW) where deepspeed is installed; accelerate's single-GPU one."""
    from accelerate.commands.estimate import estimate_training_usage

    single = sum(estimate_training_usage(4 * params, "bfloat16").values()) / GIB
    text = f"accelerate's single-GPU estimate without sharding (fp32 AdamW): {single:.1f} GiB"
    try:
        if stage == 3:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

            gpu_bytes = estimate_zero3_model_states_mem_needs(params, largest_layer, num_gpus_per_node=gpus)[1]
        elif stage in (1, 2):
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

            gpu_bytes = estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=gpus)[1]
        else:
            return text
    except ImportError:
        return text + "; deepspeed not installed, its estimator not run"
    return text + f"; DeepSpeed's ZeRO-{stage} model states (fp32 AdamW): {gpu_bytes / GIB:.1f} GiB"


def recipe_settings(path: str | Path) -> dict:
    """A recipe's keys with the defaults of every field of its parser's dataclasses filled in."""
    recipe = yaml.safe_load(Path(path).read_text()) or {}
    from trl import ModelConfig

    from train.configs import GRPOConfig, GRPOScriptArguments, SFTConfig

    classes = (GRPOScriptArguments, GRPOConfig, ModelConfig) if "reward_funcs" in recipe or "num_generations" in recipe \
        else (SFTConfig, ModelConfig)
    settings = {}
    for cls in classes:
        for f in fields(cls):
            if f.default is not MISSING:
                settings[f.name] = f.default
            elif f.default_factory is not MISSING:
                settings[f.name] = f.default_factory()
    settings.update(recipe)
    return settings


def check(settings: dict, gpus: int, gpu_memory_gb: float) -> Plan:
    """The plan on this hardware; raises MemoryError with the plan and the settings to change when it does not fit."""
    result = plan(settings, gpus, gpu_memory_gb, *zero_settings(settings.get("hardware_accelerate_config")))
    if not result.fits:
        raise MemoryError(f"{result.report()}\n{result.advice()}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="an SFT or GRPO recipe YAML")
    parser.add_argument("--gpus", type=int, help="GPUs (default: the recipe's hardware_gpus)")
    parser.add_argument("--gpu-memory-gb", type=float, help="GiB per GPU (default: hardware_gpu_memory_gb)")
    args = parser.parse_args(argv)
    settings = recipe_settings(args.config)
    gpus = args.gpus or settings.get("hardware_gpus")
    memory = args.gpu_memory_gb or settings.get("hardware_gpu_memory_gb")
    if not gpus or not memory:
        print(f"{args.config}: no hardware_gpus / hardware_gpu_memory_gb in the recipe and none given "
              "(--gpus, --gpu-memory-gb)", file=sys.stderr)
        return 2
    try:
        result = check(settings, gpus, memory)
    except MemoryError as e:
        print(e)
        return 1
    print(result.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
