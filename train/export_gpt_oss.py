"""A trained gpt-oss back into the released checkpoint's layout, so the kit's vLLM engine serves it like the original.

    python -m train.export_gpt_oss --config configs/export/gpt-oss-20b-tir.yaml [--base DIR] [--adapter DIR]
        [--model DIR] [--output_dir OUT]
    python -m train.export_gpt_oss --serving-plan openai/gpt-oss-120b [--gpu-memory-gb 80]

The released gpt-oss stores its expert weights in MXFP4 (`mlp.experts.{gate_up,down}_proj_{blocks,scales}`: 4-bit
E2M1 values, two a byte, with one power-of-two (E8M0) scale per 32 input features) and everything else in bf16
(attention, router, embeddings, head: `modules_to_not_convert` in its config.json). Training loads the experts
dequantized to bf16 (train/common.py). Two modes bring a trained model back:

- `merge` (LoRA on attention/router, configs/sft/gpt-oss-20b-tir.yaml): the adapter is merged in float32 into the
  bf16 weights it targets, and the base checkpoint's MXFP4 expert tensors are copied byte for byte. No expert is
  re-quantized, so nothing of the fine-tune is rounded into 4 bits. An adapter on the experts (peft
  `target_parameters`) is refused: serve it with vLLM's LoRA (`lora_path` in the inference config) or train full and
  re-quantize. The alternative without a new checkpoint: serve the base plus the adapter with vLLM's LoRA.
- `requantize` (full fine-tune, configs/sft/gpt-oss-{20b-tir-full,120b-tir}.yaml): the bf16 expert weights are
  quantized to MXFP4 in the released layout with the OCP MX rounding of vLLM's own MXFP4 quantizer (block scale
  2^(floor(log2(max|w|)) - 2), round to nearest even, clamp to ±6). Given `base` (the checkpoint training started
  from), the report says how much of the fine-tune's change to the experts survives: small updates fall inside one
  4-bit step and round back to the base value, which is how re-quantizing can erase a fine-tune. The kit's
  quantized-vs-unquantized check (train/quantize_check.py, `check:` section) then compares both models on the same
  prompts and seeds.

Tensors are streamed one at a time (safetensors), so a 120b export needs one tensor in memory, not the model.
`export_report.json` in the output records the mode, sizes and the per-tensor quantization figures.
`--serving-plan` prints the weights (bf16 vs MXFP4 experts) and the KV-cache room on one GPU for a served model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from inference.mappings import dataclass_from_mapping

REPORT_NAME = "export_report.json"
MODES = ("merge", "requantize")
BLOCK = 32  # MXFP4: input features per E8M0 scale
EXPERT_PROJS = ("gate_up_proj", "down_proj")
# The released gpt-oss config.json's quantization_config: only the experts are MXFP4.
QUANTIZATION_CONFIG = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                               "lm_head"],
}
# E2M1 magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6 (codes 0-7): rounding thresholds between neighbours, and the ties that
# round up because the upper neighbour's code is even (round to nearest even, as vLLM's quantizer).
_THRESHOLDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_TIES_UP = (0.75, 1.75, 3.5)
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                "generation_config.json")


# -- MXFP4 ----------------------------------------------------------------------------------------------------------


def quantize_mxfp4(w):
    """(blocks uint8 [..., n/32, 16], scales uint8 [..., n/32]) of `w` [..., n], blocks of 32 along the last axis.

    The rounding of vLLM's `downcast_to_mxfp` (vllm/model_executor/layers/quantization/utils/mxfp4_utils.py, a Triton
    kernel that needs a GPU): scale exponent floor(log2(max|block| rounded to 2 mantissa bits)) - 2, values divided
    by 2^exponent rounded to the nearest E2M1 value (ties to even) and clamped to ±6; low nibble = even element."""
    import torch

    *lead, n = w.shape
    if n % BLOCK:
        raise ValueError(f"MXFP4 needs the input size to be a multiple of {BLOCK}, got {n}")
    x = w.detach().to(torch.float32).contiguous().reshape(*lead, n // BLOCK, BLOCK)
    amax = x.abs().amax(dim=-1)
    rounded = ((amax.view(torch.int32) + 0x200000) & 0x7F800000).view(torch.float32)
    exponent = (torch.floor(torch.log2(rounded + (rounded == 0) * 2.0 ** -126)) - 2).clamp(-127, 127)
    scaled = x / torch.exp2(exponent).unsqueeze(-1)
    magnitude = scaled.abs()
    thresholds, ties = torch.tensor(_THRESHOLDS, device=x.device), torch.tensor(_TIES_UP, device=x.device)
    code = torch.bucketize(magnitude, thresholds, right=False)  # a tie goes to the lower code...
    code += torch.isin(magnitude, ties).to(code.dtype)  # ...unless the upper one is even
    nibbles = (code.clamp(max=7) | (torch.signbit(scaled).to(code.dtype) << 3)).to(torch.uint8)
    nibbles = nibbles.reshape(*lead, n // BLOCK, BLOCK // 2, 2)
    blocks = nibbles[..., 0] | (nibbles[..., 1] << 4)
    scales = (exponent + 127).to(torch.uint8)
    return blocks.contiguous(), scales.contiguous()


def quantize_expert(param):
    """Blocks and scales of a transformers expert parameter [experts, in, out] in the checkpoint's layout
    [experts, out, in/32, 16]: the inverse of transformers' `convert_moe_packed_tensors`."""
    return quantize_mxfp4(param.transpose(1, 2))


def dequantize_expert(blocks, scales):
    """bf16 [experts, in, out] from the checkpoint's blocks and scales (transformers' own dequantizer)."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    return convert_moe_packed_tensors(blocks, scales)


def expert_name(key: str) -> str | None:
    """"gate_up_proj"/"down_proj" for an expert weight key (bf16 or blocks/scales), else None (biases included)."""
    for proj in EXPERT_PROJS:
        if key.endswith(f".mlp.experts.{proj}") or key.endswith(f".mlp.experts.{proj}_blocks") \
                or key.endswith(f".mlp.experts.{proj}_scales"):
            return proj
    return None


def change_kept(base, tuned, served) -> dict:
    """How much of the fine-tune's change (tuned - base) the served weights keep (all float tensors, same shape).

    kept: the projection of (served - base) onto the change, as a share of it (1: all kept, 0: rounded away);
    noise: |served - tuned| / |tuned - base| (quantization error against the size of the change);
    moved: the share of weights whose served value differs from the base's."""
    import torch

    delta, got = (tuned - base).double(), (served - base).double()
    norm2 = float((delta * delta).sum())
    if norm2 == 0.0:
        return {"kept": None, "noise": None, "moved": float((got != 0).double().mean())}
    return {"kept": float((got * delta).sum()) / norm2,
            "noise": float(torch.linalg.vector_norm(served.double() - tuned.double())) / norm2 ** 0.5,
            "moved": float((got != 0).double().mean())}


# -- the recipe -----------------------------------------------------------------------------------------------------


@dataclass
class ExportSettings:
    mode: str = "merge"  # merge | requantize
    base: str | None = None  # the MXFP4 checkpoint training started from (merge: required; requantize: optional)
    adapter: str | None = None  # merge: the peft LoRA adapter directory (train.sft's output_dir with use_peft)
    model: str | None = None  # requantize: the full fine-tuned bf16 checkpoint
    output_dir: str | None = None
    max_shard_gb: float = 5.0  # safetensors shards of the output
    device: str = "auto"  # where experts are quantized: auto (cuda if available), cpu, cuda, cuda:1, ...
    check: dict = field(default_factory=dict)  # train/quantize_check.py's settings, not used here

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode == "merge" and not (self.base and self.adapter):
            raise ValueError("mode merge: set `base` (the MXFP4 checkpoint) and `adapter` (the LoRA adapter)")
        if self.mode == "requantize" and not self.model:
            raise ValueError("mode requantize: set `model` (the fine-tuned bf16 checkpoint)")
        if not self.output_dir:
            raise ValueError("output_dir: not set (the recipe's output_dir or --output_dir)")
        if self.max_shard_gb <= 0:
            raise ValueError(f"max_shard_gb: must be > 0, got {self.max_shard_gb}")


def load_settings(path: str | Path) -> ExportSettings:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no such file {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"config {path}: expected a mapping at the top level")
    return dataclass_from_mapping(ExportSettings, raw, f"config {path}")


# -- reading and writing checkpoints ---------------------------------------------------------------------------------


def weight_files(model_dir: str | Path, what: str) -> list[Path]:
    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{what}: {d} is not a model directory (no config.json)")
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{what}: {d} has no .safetensors weights")
    return files


def read_config(model_dir: str | Path, what: str) -> dict:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if config.get("model_type") != "gpt_oss":
        raise ValueError(f"{what}: {model_dir} is a {config.get('model_type')!r} model, not gpt_oss")
    return config


def iter_tensors(files: list[Path]):
    """(key, tensor) of every tensor in the files, one at a time."""
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                yield key, st.get_tensor(key)


class ShardWriter:
    """Writes tensors into model-0000i-of-0000n.safetensors shards of at most `max_bytes` and the index."""

    def __init__(self, out: Path, max_bytes: int) -> None:
        self.out, self.max_bytes = out, max_bytes
        self.pending: dict = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.total = 0

    def add(self, key: str, tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self._flush()
        self.pending[key] = tensor.contiguous()
        self.pending_bytes += size
        self.total += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        save_file(self.pending, str(self.out / f"part-{len(self.shards):05d}.safetensors"), metadata={"format": "pt"})
        self.shards.append(sorted(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.pending:
            self._flush()
        n = len(self.shards)
        weight_map = {}
        for i, keys in enumerate(self.shards):
            name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.out / f"part-{i:05d}.safetensors").rename(self.out / name)
            weight_map |= {k: name for k in keys}
        if n > 1:
            (self.out / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": self.total}, "weight_map": weight_map}, indent=2) + "\n")


def prepare_output(out: Path, sources: list[Path]) -> None:
    if any(out.resolve() == s.resolve() for s in sources):
        raise ValueError(f"output_dir: {out} is one of the inputs; write the export elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        old.unlink()


def copy_side_files(src: Path, out: Path) -> None:
    for name in COPIED_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    if (src / "tiktoken").is_dir():  # the tiny gpt-oss keeps its o200k file here
        shutil.copytree(src / "tiktoken", out / "tiktoken", dirs_exist_ok=True)


def write_config(config: dict, out: Path, quantized: bool) -> None:
    config = dict(config)
    config.pop("quantization_config", None)
    if quantized:
        config["quantization_config"] = dict(QUANTIZATION_CONFIG)
    config["torch_dtype"] = config.get("torch_dtype") or "bfloat16"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


# -- merge: LoRA into the bf16 weights, MXFP4 experts copied ----------------------------------------------------------


def read_adapter(adapter_dir: str | Path) -> tuple[dict, dict]:
    """(adapter_config, {base weight key: (A, B, scale)}) of a peft LoRA adapter; refuses what merging cannot keep."""
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    if not (d / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter: {d} has no adapter_config.json (a peft LoRA adapter directory)")
    cfg = json.loads((d / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"adapter: {d} is a {cfg.get('peft_type')} adapter, not LoRA")
    if cfg.get("use_dora"):
        raise ValueError(f"adapter: {d} uses DoRA; merge it with peft instead")
    if cfg.get("target_parameters"):
        raise ValueError(f"adapter: {d} trains expert parameters ({cfg['target_parameters']}); merging would "
                         "re-quantize the experts: serve it with vLLM's LoRA (inference config `lora_path`) or "
                         "merge with peft and use mode requantize")
    if cfg.get("modules_to_save"):
        raise ValueError(f"adapter: {d} saves full modules ({cfg['modules_to_save']}); not supported here")
    if (cfg.get("rank_pattern") or {}) or (cfg.get("alpha_pattern") or {}):
        raise ValueError(f"adapter: {d} has per-module ranks (rank_pattern/alpha_pattern); not supported here")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / r ** 0.5 if cfg.get("use_rslora") else alpha / r
    tensors = load_file(str(d / "adapter_model.safetensors"))
    pairs: dict = {}
    for key, t in tensors.items():
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                raise ValueError(f"adapter: unexpected tensor {key} (only lora_A/lora_B are merged)")
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        pairs[f"{module}.weight"] = (t, b, scale)
    if any(expert_name(k.removesuffix(".weight")) for k in pairs) or any(".mlp.experts" in k for k in pairs):
        raise ValueError(f"adapter: {d} has LoRA on the experts; see mode requantize or vLLM's LoRA")
    return cfg, pairs


def merge(settings: ExportSettings) -> dict:
    import torch

    base, out = Path(settings.base), Path(settings.output_dir)
    files = weight_files(base, "base")
    config = read_config(base, "base")
    if (config.get("quantization_config") or {}).get("quant_method") != "mxfp4":
        raise ValueError(f"base: {base} has no MXFP4 experts (quantization_config.quant_method != mxfp4); merge "
                         "writes the released layout from an MXFP4 base")
    adapter_cfg, pairs = read_adapter(settings.adapter)
    prepare_output(out, [base, Path(settings.adapter)])
    writer = ShardWriter(out, int(settings.max_shard_gb * 2 ** 30))
    merged, delta_kept = [], []
    for key, t in iter_tensors(files):
        if key in pairs:
            a, b, scale = pairs.pop(key)
            exact = t.float() + scale * (b.float() @ a.float())
            new = exact.to(t.dtype)
            delta_kept.append(change_kept(t.float(), exact, new.float()) | {"tensor": key})
            t = new
            merged.append(key)
        writer.add(key, t)  # expert blocks/scales: the base's bytes
    if pairs:
        raise ValueError(f"adapter: {len(pairs)} LoRA target(s) not in the base checkpoint, e.g. {next(iter(pairs))}")
    writer.close()
    write_config(config, out, quantized=True)
    copy_side_files(base, out)
    kept = [d["kept"] for d in delta_kept if d["kept"] is not None]
    return {"merged_tensors": len(merged), "lora_r": adapter_cfg.get("r"), "lora_alpha": adapter_cfg.get("lora_alpha"),
            "bf16_merge_kept_min": min(kept) if kept else None,
            "bf16_merge_kept_mean": sum(kept) / len(kept) if kept else None,
            "experts": "copied from base (MXFP4 bytes unchanged)", "per_tensor": delta_kept,
            "weights_bytes": writer.total, "base_weights_bytes": sum(f.stat().st_size for f in files)}


# -- requantize: bf16 experts → MXFP4 -------------------------------------------------------------------------------


def base_experts(base: str | Path | None) -> dict:
    """{bf16 expert key: (blocks key, scales key, file)} of the base checkpoint, to read one at a time."""
    if base is None:
        return {}
    from safetensors import safe_open

    found = {}
    for f in weight_files(base, "base"):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                if key.endswith("_blocks") and expert_name(key):
                    found[key.removesuffix("_blocks")] = f
    return found


def read_tensor(path: Path, key: str):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as st:
        return st.get_tensor(key)


def requantize(settings: ExportSettings) -> dict:
    model, out = Path(settings.model), Path(settings.output_dir)
    files = weight_files(model, "model")
    config = read_config(model, "model")
    if (config.get("quantization_config") or {}).get("quant_method") == "mxfp4" and not \
            (config["quantization_config"].get("dequantize")):
        raise ValueError(f"model: {model} is already MXFP4 (its config.json says so); requantize takes bf16 experts")
    base_files = base_experts(settings.base)
    device = quantize_device(settings.device)
    prepare_output(out, [model] + ([Path(settings.base)] if settings.base else []))
    writer = ShardWriter(out, int(settings.max_shard_gb * 2 ** 30))
    per_tensor, experts = [], 0
    for key, t in iter_tensors(files):
        if key.endswith("$"):
            raise ValueError(f"model: {model} holds the tensor {key!r}: transformers saved a model loaded with "
                             "Mxfp4Config(dequantize=True) under one key for all layers (experts lost); train with "
                             "train.sft, which saves them per layer (train.common.save_dequantized_experts)")
        proj = expert_name(key)
        if proj is None or not key.endswith(proj):
            writer.add(key, t)
            continue
        tuned = t.to(device).float()
        blocks, scales = quantize_expert(tuned)
        served = dequantize_expert(blocks, scales).float()
        row = {"tensor": key, "rel_error": float((served - tuned).norm() / tuned.norm().clamp_min(1e-30))}
        if key in base_files:
            b0 = read_tensor(base_files[key], f"{key}_blocks")
            s0 = read_tensor(base_files[key], f"{key}_scales")
            row |= change_kept(dequantize_expert(b0.to(device), s0.to(device)).float(), tuned, served)
        per_tensor.append(row)
        writer.add(f"{key}_blocks", blocks.cpu())
        writer.add(f"{key}_scales", scales.cpu())
        experts += 1
    if not experts:
        raise ValueError(f"model: {model} has no bf16 expert weights (*.mlp.experts.gate_up_proj / down_proj)")
    writer.close()
    write_config(config, out, quantized=True)
    copy_side_files(model, out)
    kept = [r["kept"] for r in per_tensor if r.get("kept") is not None]
    return {"expert_tensors": experts,
            "rel_error_mean": sum(r["rel_error"] for r in per_tensor) / len(per_tensor),
            "change_kept_mean": sum(kept) / len(kept) if kept else None,
            "change_kept_min": min(kept) if kept else None,
            "per_tensor": per_tensor, "weights_bytes": writer.total,
            "model_weights_bytes": sum(f.stat().st_size for f in files)}


def quantize_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: {name!r} is not a torch device (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name} asked for, but torch sees no CUDA GPU")
    return device


def export(settings: ExportSettings) -> dict:
    settings.validate()
    t0 = time.monotonic()
    result = merge(settings) if settings.mode == "merge" else requantize(settings)
    report = {"mode": settings.mode, "seconds": round(time.monotonic() - t0, 2), **result,
              "settings": asdict(settings)}
    (Path(settings.output_dir) / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return report


# -- serving memory -------------------------------------------------------------------------------------------------


def serving_plan(model: str, gpu_memory_gb: float = 80.0, gpu_memory_utilization: float = 0.96,
                 kv_bytes: int = 1, context_tokens: int = 8 * 81920) -> dict:
    """Weights on one GPU with bf16 and with MXFP4 experts, and the KV cache left for `context_tokens` (the serving
    config's 8 samples × 81,920 tokens); `kv_bytes` 1 for kv_cache_dtype fp8, 2 for bf16. gpt-oss alternates
    sliding-window (128 tokens) and full-attention layers: only the full ones grow with the context."""
    from transformers import AutoConfig

    from train.memory import KNOWN_ARCHITECTURES, model_shape

    if not (Path(model) / "config.json").exists() and model not in KNOWN_ARCHITECTURES:
        raise ValueError(f"--serving-plan: {model!r} is neither a model directory nor one of "
                         f"{sorted(k for k, v in KNOWN_ARCHITECTURES.items() if v[0] == 'gpt_oss')}")
    shape = model_shape(model)
    if (Path(model) / "config.json").exists():
        config = AutoConfig.from_pretrained(model)
    else:
        model_type, values = KNOWN_ARCHITECTURES[model]
        config = AutoConfig.for_model(model_type, **values)
    h, i, e, layers = config.hidden_size, config.intermediate_size, config.num_local_experts, config.num_hidden_layers
    expert_weights = layers * e * (h * 2 * i + i * h)  # gate_up and down matrices (biases stay bf16)
    other = shape.params - expert_weights
    bf16 = 2 * shape.params
    mxfp4 = 2 * other + expert_weights * (0.5 + 1 / BLOCK)  # 4 bits a weight + one byte per 32
    full_layers = sum(t == "full_attention" for t in config.layer_types)
    kv_per_token = 2 * full_layers * config.num_key_value_heads * config.head_dim * kv_bytes
    budget = gpu_memory_gb * 2 ** 30 * gpu_memory_utilization
    gib = 2 ** 30
    rows = {}
    for name, weights in (("bf16", bf16), ("mxfp4_experts", mxfp4)):
        free = budget - weights
        rows[name] = {"weights_gib": round(weights / gib, 1), "kv_room_gib": round(free / gib, 1),
                      "kv_tokens": int(free // kv_per_token) if free > 0 else 0,
                      "fits": free > kv_per_token * context_tokens}
    return {"model": model, "params": shape.params, "expert_params": expert_weights,
            "gpu_memory_gb": gpu_memory_gb, "gpu_memory_utilization": gpu_memory_utilization,
            "kv_bytes_per_token": kv_per_token, "context_tokens": context_tokens, **rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="export recipe YAML (configs/export/)")
    parser.add_argument("--base", help="the MXFP4 checkpoint training started from")
    parser.add_argument("--adapter", help="merge: the LoRA adapter directory")
    parser.add_argument("--model", help="requantize: the fine-tuned bf16 checkpoint")
    parser.add_argument("--output_dir")
    parser.add_argument("--serving-plan", metavar="MODEL", help="print the one-GPU serving memory of MODEL and exit")
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0)
    args = parser.parse_args(argv)
    try:
        if args.serving_plan:
            print(json.dumps(serving_plan(args.serving_plan, args.gpu_memory_gb), indent=2))
            return 0
        if not args.config:
            raise ValueError("pass --config (or --serving-plan MODEL)")
        settings = load_settings(args.config)
        for name in ("base", "adapter", "model", "output_dir"):
            if getattr(args, name):
                setattr(settings, name, getattr(args, name))
        report = export(settings)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    short = {k: v for k, v in report.items() if k not in ("per_tensor", "settings")}
    print(json.dumps(short, indent=2))
    print(f"wrote {settings.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
