"""Per-GPU memory plan of a training recipe, checked against the hardware its header names.

    python -m train.memory --config configs/grpo/r1-distill-qwen-14b.yaml
    python -m train.memory --config configs/grpo/r1-distill-qwen-14b.yaml --gpus 8 --gpu-memory-gb 22.5   # refused

Exit 0 when the plan fits, 1 (naming the settings to change) when it does not, 2 on bad input (a missing or invalid
recipe, an unknown model, no hardware, --gpus < 1, a memory that is not a positive number), as one line on stderr.
train/sft.py and train/grpo.py run the same check against the GPUs they find before loading a model; with
`force_memory: true` (or `--force_memory true`) they print the plan and the risk and train anyway.
From Python: `train.memory.plan("configs/sft/x.yaml", gpus=8, gpu_gib=80)` → Plan (.peak_gib, .fits, .report()).

Memory is in GiB (2^30 bytes, what `nvidia-smi` shows divided by 1024): an "80 GB" H100 is 80, an H200 140, a
"24 GB" L4 22.5. A recipe names its hardware with four keys:

    hardware_gpus: 8                                     # data-parallel processes (one per GPU), all nodes
    hardware_gpu_memory_gb: 140                          # GiB per GPU
    hardware_accelerate_config: configs/accelerate/zero2.yaml   # ZeRO stage and offload come from here
    hardware_model: deepseek-ai/DeepSeek-R1-Distill-Qwen-14B    # architecture (model_name_or_path may not exist yet)

Where the numbers come from:
- parameter count and largest layer: accelerate's own estimator (`calculate_maximum_sizes` on the architecture built
  with `init_empty_weights`, no weights loaded); LoRA's trainable count from peft's `get_peft_model` on that empty
  model. Mixture-of-experts models (gpt-oss): every expert's weights are resident (MXFP4 experts are dequantized to
  bf16 for training, so 2 bytes a parameter), activations follow the active experts (top-k x expert width).
- model states by ZeRO stage: DeepSpeed's own estimators (deepspeed/runtime/zero/stage_1_and_2.py
  `estimate_zero2_model_states_mem_needs`, stage3.py `estimate_zero3_model_states_mem_needs`; documented at
  deepspeed.readthedocs.io "Memory Requirements"), with the recipe's offload setting. ZeRO-2: 2 bytes of bf16 weights
  a parameter whole on every GPU + 18/N (bf16 and fp32 gradients, fp32 master weights, 8 bytes of Adam states);
  offloaded: the 2 bytes only. ZeRO-3: 4 x the largest layer (gathered whole) + 18/N; offloaded optimizer: + 2/N.
  The optimizer's share follows `optim` (8-bit Adam: 2 bytes instead of 8). DeepSpeed does not install without
  CUDA, so the formulas are applied here; where it is installed its functions are called too and printed.
- reference model (GRPO, beta > 0, no LoRA): a bf16 copy, whole under ZeRO-2, sharded under ZeRO-3.
- activations per micro-batch of t tokens (hidden h, intermediate i or top-k x expert width, L layers): gradient
  checkpointing keeps each layer's input (2 t h L bytes) plus one layer being recomputed, whose working set with
  flash attention (no t x t scores) is ~ t x (17 h + 8 i) bytes; without checkpointing every layer's.
- logits: trl 1.16's SFT and GRPO trainers patch the model with `add_fused_lm_head` (trl/trainer/utils.py): log-probs
  come from 4,096-token x 32,768-vocab tiles, full logits are never built. What stays is one bf16 tile, the fp32
  gradient of the hidden states (4 t h) and, when the LM head trains, its fp32 gradient and bf16 copy (6 V h).
- GRPO's scoring pass (reference and, with the IS correction, old-policy log-probs) is a no-grad forward: one layer's
  working set while the training states are resident.
- the held-out evaluation: colocated vLLM generates it (use_vllm, colocate) inside vLLM's share; otherwise
  model.generate adds its KV cache (accuracy_eval_batch_size x (prompt + budget) tokens x K and V of every layer).
- colocated vLLM takes `vllm_gpu_memory_utilization` of the GPU while it generates (its weights and KV cache); with
  `vllm_enable_sleep_mode` it releases both while the trainer steps, keeping ~2 GiB.
- 2 GiB per GPU for the CUDA context and NCCL buffers, and 5 % of the rest for allocator fragmentation.
These are estimates: README ("Memory plans") compares them with published measured peaks.
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

GIB = 2**30
OVERHEAD_GIB = 2.0  # CUDA context + NCCL buffers, per GPU
FRAGMENTATION = 0.05  # PyTorch caching-allocator fragmentation, a share of everything else
SLEEPING_VLLM_GIB = 2.0  # what a sleeping colocated vLLM keeps (CUDA graphs, context)
LOGPROB_TILE = (4096, 32768)  # trl 1.16 chunked_logprob: TOKEN_CHUNK_SIZE x _CHUNKED_LOGPROB_CHUNK_SIZE
HARDWARE_KEYS = ("hardware_gpus", "hardware_gpu_memory_gb", "hardware_accelerate_config", "hardware_model")

# Bytes of optimizer state per trainable parameter (DeepSpeed's estimators assume fp32 Adam: 8).
OPTIMIZER_STATE_BYTES = {
    "adamw_torch": 8, "adamw_torch_fused": 8, "adamw_hf": 8, "adamw_apex_fused": 8, "paged_adamw_32bit": 8,
    "adamw_bnb_8bit": 2, "adamw_8bit": 2, "paged_adamw_8bit": 2, "adafactor": 4, "sgd": 0,
}

# The public config.json of the architectures the recipes train (no hub here: the numbers are copied).
QWEN2 = "qwen2"
GPT_OSS = "gpt_oss"
KNOWN_ARCHITECTURES = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": (QWEN2, dict(
        hidden_size=1536, num_hidden_layers=28, intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2,
        vocab_size=151936, tie_word_embeddings=False)),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": (QWEN2, dict(
        hidden_size=3584, num_hidden_layers=28, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
        vocab_size=152064, tie_word_embeddings=False)),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": (QWEN2, dict(
        hidden_size=5120, num_hidden_layers=48, intermediate_size=13824, num_attention_heads=40, num_key_value_heads=8,
        vocab_size=152064, tie_word_embeddings=False)),
    # Published measurements the README compares the planner with (Qwen2.5-7B/14B share the R1-distill shapes).
    "meta-llama/Llama-2-7b-hf": ("llama", dict(
        hidden_size=4096, num_hidden_layers=32, intermediate_size=11008, num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000, tie_word_embeddings=False)),
    "meta-llama/Meta-Llama-3-8B": ("llama", dict(
        hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
        vocab_size=128256, tie_word_embeddings=False)),
    # MoE, MXFP4 experts on the hub (dequantized to bf16 for training; the shapes are what counts here).
    "openai/gpt-oss-20b": (GPT_OSS, dict(
        hidden_size=2880, num_hidden_layers=24, intermediate_size=2880, num_local_experts=32, num_experts_per_tok=4,
        num_attention_heads=64, num_key_value_heads=8, head_dim=64, vocab_size=201088, tie_word_embeddings=False)),
    "openai/gpt-oss-120b": (GPT_OSS, dict(
        hidden_size=2880, num_hidden_layers=36, intermediate_size=2880, num_local_experts=128, num_experts_per_tok=4,
        num_attention_heads=64, num_key_value_heads=8, head_dim=64, vocab_size=201088, tie_word_embeddings=False)),
}


class PlanError(ValueError):
    """Bad input to the planner (missing file, unknown model or optimizer, impossible hardware): one line."""


@dataclass
class Shape:
    params: int
    largest_layer_params: int
    trainable: int
    hidden: int
    layers: int
    intermediate: int  # per token: the MLP width, or top-k x the expert width for mixture-of-experts models
    vocab: int
    kv_bytes_per_token: int  # bf16 K and V of every layer
    experts: int = 0  # 0: dense
    lm_head_trainable: bool = True


@functools.lru_cache(maxsize=32)
def model_shape(model: str, lora: tuple | None = None) -> Shape:
    """Parameter counts of `model` from accelerate's estimator on an empty (meta) model; `lora` = (r, targets)."""
    from accelerate import init_empty_weights
    from accelerate.utils import calculate_maximum_sizes
    from transformers import AutoConfig, AutoModelForCausalLM

    if (Path(model) / "config.json").exists():
        config = AutoConfig.from_pretrained(model)
        config.quantization_config = None  # MXFP4 / AWQ on disk: trained dequantized (bf16)
    elif model in KNOWN_ARCHITECTURES:
        model_type, values = KNOWN_ARCHITECTURES[model]
        config = AutoConfig.for_model(model_type, **values)
    else:
        raise PlanError(f"hardware_model: {model!r} is neither a local model directory nor one of "
                        f"{sorted(KNOWN_ARCHITECTURES)}")
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config, dtype="float32")  # 4 bytes a parameter: sizes / 4 = counts
    total_bytes, (largest_bytes, _) = calculate_maximum_sizes(empty)
    largest = max(largest_bytes // 4, max(p.numel() for p in empty.parameters()))  # a fused expert tensor counts
    trainable, head_trains = total_bytes // 4, True
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        r, targets = lora
        with init_empty_weights():
            names = targets[0] if targets == ("all-linear",) else list(targets) or None  # peft: a str for all-linear
            peft_model = get_peft_model(empty, LoraConfig(r=r, target_modules=names,
                                                          task_type="CAUSAL_LM"))
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        head_trains = False
    experts = getattr(config, "num_local_experts", 0) or getattr(config, "num_experts", 0) or 0
    width = config.intermediate_size
    if experts:
        width = (getattr(config, "moe_intermediate_size", None) or width) * config.num_experts_per_tok
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return Shape(params=total_bytes // 4, largest_layer_params=largest, trainable=trainable, hidden=config.hidden_size,
                 layers=config.num_hidden_layers, intermediate=width, vocab=config.vocab_size,
                 kv_bytes_per_token=2 * 2 * config.num_hidden_layers * kv_heads * head_dim, experts=experts,
                 lm_head_trainable=head_trains)


def zero_settings(accelerate_config: str | None) -> tuple[int, bool]:
    """(ZeRO stage, optimizer offloaded to CPU) of an accelerate config; (0, False) without DeepSpeed."""
    if not accelerate_config:
        return 0, False
    path = Path(accelerate_config)
    if not path.is_file():
        raise PlanError(f"hardware_accelerate_config: {accelerate_config} does not exist")
    config = yaml.safe_load(path.read_text()) or {}
    if config.get("distributed_type") != "DEEPSPEED":
        return 0, False
    ds = config.get("deepspeed_config") or {}
    return int(ds.get("zero_stage", 0)), ds.get("offload_optimizer_device", "none") not in ("none", None)


def deepspeed_model_states(params: int, largest_layer: int, gpus: int, stage: int, offload: bool) -> float:
    """Bytes per GPU of DeepSpeed's own estimators (fp32 Adam) with the recipe's optimizer offload, as published in
    deepspeed/runtime/zero/stage_1_and_2.py and stage3.py (called directly where deepspeed is installed)."""
    try:
        if stage == 3:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

            return estimate_zero3_model_states_mem_needs(params, largest_layer, num_gpus_per_node=gpus,
                                                         cpu_offload=offload, cpu_offload_params=False)[1]
        if stage in (1, 2):
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

            return estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=gpus, cpu_offload=offload)[1]
    except ImportError:
        pass
    if stage == 3:
        return 4 * largest_layer + (2 if offload else 18) * params / gpus
    if stage in (1, 2):
        return 2 * params + (0 if offload else 18 * params / gpus)
    return 16 * params


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
    eval_gb: float  # KV cache of the held-out evaluation with model.generate (0: none, or vLLM evaluates)
    training_vllm_gb: float  # what vLLM keeps while the trainer steps
    scoring_gb: float  # GRPO's no-grad forwards (reference / old log-probs) on top of the resident states
    micro_batch: int
    notes: list[str]

    @property
    def resident_gb(self) -> float:
        return sum(v for k, v in self.components.items() if k in RESIDENT)

    def _with_overhead(self, gib: float) -> float:
        return gib * (1 + FRAGMENTATION) + OVERHEAD_GIB

    @property
    def peak_training_gb(self) -> float:
        return self._with_overhead(sum(self.components.values()) + self.training_vllm_gb)

    @property
    def peak_generation_gb(self) -> float:
        return self._with_overhead(self.resident_gb + self.generation_gb)

    @property
    def peak_scoring_gb(self) -> float:
        return self._with_overhead(self.resident_gb + self.training_vllm_gb + self.scoring_gb)

    @property
    def peak_eval_gb(self) -> float:
        return self._with_overhead(self.resident_gb + self.training_vllm_gb + self.eval_gb)

    @property
    def peak_gb(self) -> float:
        return max(self.peak_training_gb, self.peak_generation_gb, self.peak_eval_gb, self.peak_scoring_gb)

    peak_gib = peak_gb

    @property
    def fits(self) -> bool:
        return self.peak_gb <= self.gpu_memory_gb

    def report(self) -> str:
        lines = [f"{self.stage} memory plan per GPU ({self.gpus} GPUs of {self.gpu_memory_gb:g} GiB, "
                 f"ZeRO-{self.zero_stage}):"]
        lines += [f"  {name:<28}{gb:8.1f} GiB" for name, gb in self.components.items()]
        lines.append(f"  {'CUDA context + NCCL':<28}{OVERHEAD_GIB:8.1f} GiB, + {FRAGMENTATION:.0%} fragmentation")
        if self.generation_gb:
            lines.append(f"  {'vLLM while generating':<28}{self.generation_gb:8.1f} GiB")
            lines.append(f"  {'vLLM while training':<28}{self.training_vllm_gb:8.1f} GiB")
            lines.append(f"  peak while generating: {self.peak_generation_gb:.1f} GiB")
        if self.scoring_gb:
            lines.append(f"  peak while scoring:    {self.peak_scoring_gb:.1f} GiB (no-grad forward: "
                         f"{self.scoring_gb:.1f} GiB)")
        lines.append(f"  peak while training:   {self.peak_training_gb:.1f} GiB")
        if self.eval_gb:
            lines.append(f"  peak while evaluating: {self.peak_eval_gb:.1f} GiB (model.generate: {self.eval_gb:.1f} GiB)")
        lines += [f"  note: {n}" for n in self.notes]
        verdict = "FITS" if self.fits else "DOES NOT FIT"
        lines.append(f"{verdict}: peak {self.peak_gb:.1f} of {self.gpu_memory_gb:g} GiB")
        return "\n".join(lines)

    def advice(self) -> str:
        """The settings to change, largest saving first (only those that still can change)."""
        tips = []
        c = self.components
        if c.get("optimizer states", 0) > 1 and "8bit" not in self.optim:
            tips.append("optim: paged_adamw_8bit (optimizer states 8 -> 2 bytes a parameter)")
        if self.zero_stage < 3:
            tips.append("hardware_accelerate_config: configs/accelerate/zero3.yaml (shard the weights too; colocated "
                        "vLLM then needs vllm_mode: server)")
        if c.get("optimizer states", 0) + c.get("fp32 master weights", 0) > 0.2 * self.gpu_memory_gb:
            tips.append("offload_optimizer_device: cpu in the accelerate config (optimizer states in CPU memory)")
        if c.get("logits (trl fused LM head)", 0) + c.get("activations", 0) > 0.2 * self.gpu_memory_gb:
            if self.micro_batch > 1:
                tips.append("per_device_train_batch_size: halve it and double gradient_accumulation_steps "
                            "(same batch)")
            else:
                tips.append("a shorter max_length / max_completion_length (activations grow with the tokens of a "
                            "micro-batch, already 1 sequence)")
        if self.generation_gb and self.peak_generation_gb > self.gpu_memory_gb:
            tips.append("vllm_gpu_memory_utilization: lower it, or vllm_mode: server on separate GPUs")
        if self.eval_gb and self.peak_eval_gb > self.gpu_memory_gb:
            tips.append("accuracy_eval_batch_size: lower it (the held-out evaluation's KV cache)")
        if c.get("reference model", 0) > 1:
            tips.append("beta: 0.0 (no reference model), or use_peft: true (the adapter-free model is the reference)")
        tips.append("use_peft: true (LoRA) or more/larger GPUs (--gpus, --gpu-memory-gb)")
        return "change one of:\n  - " + "\n  - ".join(tips)


RESIDENT = ("weights", "LoRA adapters (fp32)", "gradients", "fp32 master weights", "optimizer states",
            "reference model")


def plan(recipe, gpus: int | None = None, gpu_gib: float | None = None, zero_stage: int | None = None,
         offload_optimizer: bool | None = None) -> Plan:
    """The memory plan of a recipe (a YAML path, or its settings with every key's default filled) on `gpus` GPUs of
    `gpu_gib` GiB (default: the recipe's hardware_*); ZeRO stage and offload from its accelerate config unless
    given."""
    settings = recipe_settings(recipe) if isinstance(recipe, (str, Path)) else recipe
    gpus = gpus if gpus is not None else settings.get("hardware_gpus")
    gpu_gib = gpu_gib if gpu_gib is not None else settings.get("hardware_gpu_memory_gb")
    if not gpus or not gpu_gib:
        raise PlanError("no hardware_gpus / hardware_gpu_memory_gb in the recipe and none given "
                        "(--gpus, --gpu-memory-gb)")
    if gpus < 1 or gpu_gib <= 0:
        raise PlanError(f"gpus must be >= 1 and GPU memory > 0 GiB, got {gpus} and {gpu_gib}")
    if zero_stage is None or offload_optimizer is None:
        stage, offload = zero_settings(settings.get("hardware_accelerate_config"))
        zero_stage = stage if zero_stage is None else zero_stage
        offload_optimizer = offload if offload_optimizer is None else offload_optimizer
    return _plan(settings, gpus, gpu_gib, zero_stage, offload_optimizer)


def _plan(settings: dict, gpus: int, gpu_memory_gb: float, stage: int, offload: bool) -> Plan:
    grpo = "num_generations" in settings
    lora = settings.get("use_peft", False)
    targets = settings.get("lora_target_modules")
    targets = (targets,) if isinstance(targets, str) else tuple(targets or ())
    shape = model_shape(settings.get("hardware_model") or settings["model_name_or_path"],
                        (settings.get("lora_r", 16), targets) if lora else None)
    P, T, n = shape.params, shape.trainable, gpus
    optim = getattr(settings.get("optim", "adamw_torch"), "value", settings.get("optim"))  # TrainingArguments: an enum
    if optim not in OPTIMIZER_STATE_BYTES:
        raise PlanError(f"optim: {optim!r} has no memory figure here; known: {sorted(OPTIMIZER_STATE_BYTES)}")
    opt = OPTIMIZER_STATE_BYTES[optim]
    weight_bytes = 0.5 if settings.get("load_in_4bit") else 1 if settings.get("load_in_8bit") else 2
    notes = [f"optimizer {optim}, {opt} bytes of state a parameter; {P / 1e9:.2f} B parameters"
             + (f" ({shape.experts} experts, all resident in bf16)" if shape.experts else "")
             + f", {T / 1e9:.3f} B trainable"]

    # Model states: DeepSpeed's split (see the module docstring), the optimizer's bytes in place of fp32 Adam's 8.
    c: dict[str, float] = {}
    shard = n if stage >= 1 else 1
    if stage == 3:
        c["weights"] = (weight_bytes * P / n + 4 * shape.largest_layer_params) / GIB
    else:
        c["weights"] = weight_bytes * P / GIB
    if lora:
        c["LoRA adapters (fp32)"] = 4 * T / GIB  # peft keeps adapters in fp32 (autocast_adapter_dtype)
    if stage == 0:
        c["gradients"] = (4 if lora else 2) * T / GIB
    else:  # bf16 gradients (reduced in buckets) and the fp32 gradient partition
        c["gradients"] = (0 if offload else 2 + 4 if stage < 3 else 4) * T / shard / GIB
    # Without DeepSpeed a full model loaded in bf16/fp16 trains in that dtype: no fp32 master copy, and torch's AdamW
    # keeps its two moments in the parameters' dtype (measured on an H200: train/gpu_check.py, README).
    half = stage == 0 and not lora and str(settings.get("dtype") or "").replace("torch.", "") in ("bfloat16", "float16")
    c["fp32 master weights"] = 0.0 if offload or half or (stage == 0 and lora) else 4 * T / shard / GIB
    c["optimizer states"] = 0.0 if offload else (min(opt, 4) if half else opt) * T / shard / GIB
    if grpo and settings.get("beta", 0.0) > 0 and not lora:
        c["reference model"] = 2 * P / (n if stage == 3 else 1) / GIB
    if offload:
        notes.append("optimizer offloaded to CPU: fp32 master weights, gradients and states live in CPU memory "
                     f"(DeepSpeed's estimate: {offload_cpu_gib(P, n, stage, settings):.0f} GiB per node)")

    batch = settings.get("per_device_train_batch_size", 8)
    if grpo:
        completion = settings.get("max_completion_length", 256)
        sequence = (settings.get("max_prompt_length") or 0) + completion
        scored = batch * completion  # trl scores only completion tokens through the fused head
    else:
        sequence = settings.get("max_length") or 1024
        scored = batch * sequence
    tokens = batch * sequence
    layer = tokens * (17 * shape.hidden + 8 * shape.intermediate)
    if settings.get("gradient_checkpointing", True):
        c["activations"] = (2 * tokens * shape.hidden * shape.layers + layer) / GIB
    else:
        c["activations"] = layer * shape.layers / GIB
        notes.append("gradient_checkpointing is off: every layer's activations are kept")
    attention = settings.get("attn_implementation") or "sdpa"
    if attention == "eager":
        heads = shape.kv_bytes_per_token // (4 * shape.layers)  # kv heads x head dim; scores are per query head
        c["attention scores (eager)"] = 2 * 2 * batch * sequence**2 * max(heads // 64, 1) * 8 / GIB
        notes.append("attn_implementation eager builds t x t scores per head: use flash attention at long context")
    head = 2 * LOGPROB_TILE[0] * LOGPROB_TILE[1] + 4 * scored * shape.hidden
    if shape.lm_head_trainable:
        head += 6 * shape.vocab * shape.hidden
    c["logits (trl fused LM head)"] = head / GIB
    notes.append(f"{tokens} tokens per micro-batch ({batch} x {sequence})")

    scoring = 0.0
    if grpo:  # reference / old-policy log-probs: a no-grad forward, one layer's working set at a time
        scoring = (layer + 2 * LOGPROB_TILE[0] * LOGPROB_TILE[1]) / GIB
        if c.get("reference model") is None and settings.get("beta", 0.0) > 0 and not lora:
            scoring = 0.0
    generation = training_vllm = 0.0
    colocated = grpo and settings.get("use_vllm") and settings.get("vllm_mode", "colocate") == "colocate"
    if colocated:
        generation = settings.get("vllm_gpu_memory_utilization", 0.3) * gpu_memory_gb
        sleeps = settings.get("vllm_enable_sleep_mode", False)
        training_vllm = SLEEPING_VLLM_GIB if sleeps else generation
        vllm_weights = 2 * P / settings.get("vllm_tensor_parallel_size", 1) / GIB
        if vllm_weights > generation:
            notes.append(f"vLLM's share ({generation:.1f} GiB) cannot hold its weights ({vllm_weights:.1f} GiB): "
                         "raise vllm_gpu_memory_utilization or vllm_tensor_parallel_size")
            generation = max(generation, vllm_weights * 1.2)
        else:
            notes.append(f"colocated vLLM: {vllm_weights:.1f} GiB of weights, {generation - vllm_weights:.1f} GiB "
                         "for its KV cache and CUDA graphs")
    evaluation = 0.0
    if settings.get("eval_file"):
        if colocated:
            notes.append("held-out evaluation runs in the colocated vLLM (inside its share)")
        else:
            prompt = settings.get("max_prompt_length") or 512
            tokens_in_flight = settings.get("accuracy_eval_batch_size", 16) * (
                prompt + settings.get("accuracy_eval_max_new_tokens", 1024))
            evaluation = tokens_in_flight * shape.kv_bytes_per_token / GIB
            if stage == 3:  # trl's unwrap_model_for_generation gathers the whole model for generate
                evaluation += weight_bytes * P / GIB - c["weights"]
    result = Plan("GRPO" if grpo else "SFT", n, gpu_memory_gb, stage, optim, c, generation, evaluation, training_vllm,
                  scoring, batch, notes)
    if stage:
        ds = deepspeed_model_states(P, shape.largest_layer_params, n, stage, offload) / GIB
        result.notes.append(f"DeepSpeed's ZeRO-{stage} estimator (fp32 Adam, offload_optimizer "
                            f"{'cpu' if offload else 'none'}): {ds:.1f} GiB of model states per GPU")
    return result


def offload_cpu_gib(params: int, gpus: int, stage: int, settings: dict) -> float:
    """CPU memory per node of an offloaded optimizer: DeepSpeed's estimators (additional_buffer_factor 1.5)."""
    per_node = min(gpus, 8)
    nodes = max(gpus // per_node, 1)
    if stage == 3:
        return params * 16 / nodes * 1.5 / GIB  # zero_init (accelerate's zero3_init_flag)
    return params * max(4 * gpus, 16) * 1.5 / GIB


def recipe_settings(path: str | Path) -> dict:
    """A recipe's keys, type-checked (train.configs), with the defaults of its parser's dataclasses filled in."""
    from train.configs import RecipeError, load_recipe

    try:
        return load_recipe(path)
    except RecipeError as e:
        raise PlanError(str(e)) from None


def enforce(result: Plan, force: bool = False) -> str:
    """The plan's report when it fits, or with `force` the report and the risk; else MemoryError naming the settings
    to change."""
    if result.fits:
        return result.report()
    if not force:
        raise MemoryError(f"{result.report()}\n{result.advice()}")
    return (f"{result.report()}\nforce_memory: training anyway. RISK: the plan's peak ({result.peak_gb:.1f} GiB) "
            f"exceeds the GPU ({result.gpu_memory_gb:g} GiB) by {result.peak_gb - result.gpu_memory_gb:.1f} GiB: "
            "expect CUDA out-of-memory at the first step or evaluation unless the plan overestimates.\n"
            f"{result.advice()}")


def check(settings: dict, gpus: int, gpu_memory_gb: float) -> Plan:
    """The plan on this hardware; raises MemoryError with the plan and the settings to change when it does not fit."""
    result = plan(settings, gpus, gpu_memory_gb)
    if not result.fits:
        raise MemoryError(f"{result.report()}\n{result.advice()}")
    return result


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the usage too)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="an SFT or GRPO recipe YAML")
    parser.add_argument("--gpus", type=_positive(int), help="GPUs (default: the recipe's hardware_gpus)")
    parser.add_argument("--gpu-memory-gb", type=_positive(float), help="GiB per GPU (default: hardware_gpu_memory_gb)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        result = plan(args.config, args.gpus, args.gpu_memory_gb)
    except (PlanError, FileNotFoundError) as e:
        print(f"error: {e}" if str(args.config) in str(e) else f"error: {args.config}: {e}", file=sys.stderr)
        return 2
    print(result.report())
    if not result.fits:
        print(result.advice())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
