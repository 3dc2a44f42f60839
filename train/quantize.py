"""AWQ 4-bit weight quantization with llm-compressor, calibrated on math reasoning traces.

    python -m train.quantize --config configs/quantize/toy.yaml --model DIR --output_dir OUT

Runs in the quantization environment (`make setup-quantize` builds .venv-quantize): llm-compressor and vLLM pin
different compressed-tensors versions and cannot share one. `make quantize` runs this, then the check against full
precision (train/quantize_check.py) in the serving environment.

What it does: AWQ (`AWQModifier`, which only rescales channels) followed by `QuantizationModifier` (W4A16 or
W4A16_ASYM: 4-bit integer weights in groups of 128 input features, 16-bit activations, `lm_head` left alone),
run by llm-compressor's `oneshot` over chat-templated SFT traces. The result is saved in compressed-tensors format
(`save_compressed=True`) with the tokenizer; vLLM detects it from config.json (Marlin kernels on GPUs from sm_75, L4
included; CPUWNA16 on CPU). A `quantize_report.json` next to it records the time, peak memory and sizes.
Two patches to llm-compressor 0.14.0.1 (pinned): without a GPU, no pinned memory (apply_cpu_workaround); always,
AWQ drops attention weights as it goes (apply_awq_memory_fix; without it 256 × 2048 tokens run out of GPU memory).

The recipe YAML has three sections: the model and scheme (top level), `calibration:` (where the traces come from),
and `check:` (read only by train/quantize_check.py). Bad inputs fail before the model is loaded: a missing model
directory or config.json, a Linear layer whose input size is not a multiple of the group size, an empty
calibration set.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from inference.mappings import dataclass_from_mapping
from train.data import prompt_messages

log = logging.getLogger("train.quantize")

# The 4-bit schemes of llm-compressor's presets (both use groups of 128 input features per scale).
SCHEMES = ("W4A16", "W4A16_ASYM")
GROUP_SIZE = 128
WEIGHT_FILE_RE = re.compile(r"(model|pytorch_model)(-[\w-]+)?\.(safetensors|bin)")  # model-00001-of-00006.safetensors
REPORT_NAME = "quantize_report.json"


# -- the recipe ------------------------------------------------------------------------------------------------------


@dataclass
class Calibration:
    """Calibration traces: a JSONL file of SFT rows, or (toy model only) freshly generated toy traces."""

    file: str | None = None  # JSONL rows: {prompt, completion} (TRL conversational or plain strings) or
    #                          {problem, generation} (what `python -m train.data sft --out` writes)
    toy_problems: int | None = None  # instead of a file: this many toy addition traces from train/toy/task.py
    samples: int = 256  # rows used (a seeded random subset when the file has more)
    max_length: int = 2048  # tokens per row; longer rows are truncated
    system_prompt: str | None = None  # system message of every prompt; None: no system message
    seed: int = 0


@dataclass
class Recipe:
    model: str | None = None  # local directory or hub id; --model overrides
    output_dir: str | None = None  # --output_dir overrides
    scheme: str = "W4A16_ASYM"  # W4A16 (symmetric) or W4A16_ASYM (with zero points, AWQ's usual choice)
    ignore: list[str] = field(default_factory=lambda: ["lm_head"])  # module names or "re:" patterns kept unquantized
    dtype: str = "auto"  # dtype the full-precision model is loaded in ("auto": the checkpoint's)
    awq_duo_scaling: bool | str = True  # AWQModifier.duo_scaling: True, False or "both" (twice the grid search)
    awq_n_grid: int = 20  # AWQModifier.n_grid: scale candidates tried per layer
    calibration: Calibration = field(default_factory=Calibration)
    check: dict = field(default_factory=dict)  # settings of train/quantize_check.py, not used here

    def validate(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme: {self.scheme!r} is not one of {', '.join(SCHEMES)}")
        if not self.ignore or "lm_head" not in self.ignore:
            raise ValueError("ignore: must contain lm_head (vLLM serves the output head unquantized)")
        if self.awq_duo_scaling not in (True, False, "both"):
            raise ValueError(f"awq_duo_scaling: expected true, false or \"both\", got {self.awq_duo_scaling!r}")
        c = self.calibration
        if (c.file is None) == (c.toy_problems is None):
            raise ValueError("calibration: set exactly one of `file` (a JSONL of traces) and `toy_problems`")
        if c.samples < 1 or c.max_length < 16:
            raise ValueError(f"calibration: samples must be ≥ 1 and max_length ≥ 16, got {c.samples}, "
                             f"{c.max_length}")


def load_recipe(path: str | Path) -> Recipe:
    """Read a quantization recipe YAML. Unknown keys are errors. Also used by train/quantize_check.py."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no such file {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"config {path}: expected a mapping at the top level")
    raw = dict(raw)
    calibration = dataclass_from_mapping(Calibration, raw.pop("calibration", {}) or {}, "calibration")
    recipe = dataclass_from_mapping(Recipe, raw, f"config {path}")
    recipe.calibration = calibration
    recipe.validate()
    return recipe


# -- checks before any heavy work ------------------------------------------------------------------------------------


def check_model_source(model: str) -> None:
    """A local model must be a directory with config.json. Anything that is not an existing path and looks like
    `org/name` is taken as a hub id (transformers reports download errors itself)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"model: {model} is a file; expected a model directory (config.json, weights, tokenizer)")
        if not (path / "config.json").is_file():
            raise ValueError(f"model: {model} has no config.json; is it a save_pretrained() directory?")
        return
    looks_local = path.is_absolute() or model.startswith((".", "~")) or Path(model.split("/")[0]).exists()
    if looks_local or not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        raise FileNotFoundError(f"model: directory {model} does not exist")


def check_group_divisibility(config, ignore: list[str], group_size: int = GROUP_SIZE) -> int:
    """Every Linear layer that will be quantized needs in_features divisible by the group size. Builds the model on
    the meta device (no memory, no weights) to see the real layer names. Returns the number of such layers."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not _ignored(n, ignore)]
    bad = [f"{n} (in_features {m.in_features})" for n, m in linears if m.in_features % group_size]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"model: {len(bad)} Linear layer(s) have in_features not divisible by the group size {group_size}: "
            f"{shown}. Add them to `ignore` or use a model whose hidden sizes are multiples of {group_size}."
        )
    return len(linears)


def _ignored(name: str, ignore: list[str]) -> bool:
    """compressed-tensors' rule for names: "re:PATTERN" matches with re.match, anything else must equal the name."""
    return any(re.match(t[3:], name) if t.startswith("re:") else t == name for t in ignore)


# -- calibration data ------------------------------------------------------------------------------------------------


def _message_text(value, where: str) -> str:
    """The text of a completion: a string, or the content of a list of chat messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "".join(m["content"] for m in value)
    raise ValueError(f"{where}: expected a string or a list of {{role, content}} messages, got {type(value).__name__}")


def read_calibration_rows(path: str | Path, system_prompt: str | None) -> list[tuple[list[dict], str]]:
    """(prompt messages, completion text) pairs from a JSONL file of prompt/completion or problem/generation rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration.file: no such file {path}")
    rows = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"calibration.file {path}, line {line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e})") from None
            if "prompt" in row and "completion" in row:
                prompt = row["prompt"]
                messages = prompt if isinstance(prompt, list) else prompt_messages(prompt, system_prompt)
                completion = _message_text(row["completion"], f"{where}, completion")
            elif "problem" in row and "generation" in row:
                messages = prompt_messages(row["problem"], system_prompt)
                completion = _message_text(row["generation"], f"{where}, generation")
            else:
                raise ValueError(f"{where}: expected keys prompt/completion or problem/generation, got {sorted(row)}")
            if completion.strip():
                rows.append((messages, completion))
    return rows


def toy_calibration_rows(n: int, seed: int, system_prompt: str | None) -> list[tuple[list[dict], str]]:
    """Toy addition problems with their step-by-step traces, as the toy SFT data has them."""
    from train.toy.task import make_splits, make_trace, sample_rechecks

    rng = random.Random(seed)
    problems = make_splits({"calibration": n}, seed=seed)["calibration"]
    return [(prompt_messages(p.problem, system_prompt), make_trace(p, sample_rechecks(rng))) for p in problems]


def render(tokenizer, messages: list[dict], completion: str) -> str:
    """The text the served model sees and writes: the chat-templated prompt, then the completion as generated.

    The completion is appended verbatim rather than rendered as an assistant message because reasoning-model
    templates (DeepSeek-R1's) strip everything up to `</think>` from assistant turns, which would drop the very
    traces we want to calibrate on.
    """
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if prompt.rstrip().endswith("<think>") and completion.lstrip().startswith("<think>"):
        completion = completion.lstrip().removeprefix("<think>").lstrip("\n")  # the template already opened it
    eos = tokenizer.eos_token or ""
    return prompt + completion + ("" if completion.endswith(eos) else eos)


def build_calibration_set(recipe: Recipe, tokenizer):
    """A `datasets.Dataset` of tokenized rows (input_ids, attention_mask) and a summary for the report."""
    from datasets import Dataset

    c = recipe.calibration
    if c.file is not None:
        rows, source = read_calibration_rows(c.file, c.system_prompt), c.file
    else:
        rows, source = toy_calibration_rows(c.toy_problems, c.seed, c.system_prompt), f"toy traces ({c.toy_problems})"
    if not rows:
        raise ValueError(f"calibration: no usable rows in {source} (empty file, or every completion is empty)")
    if len(rows) > c.samples:
        rows = random.Random(c.seed).sample(rows, c.samples)
    elif len(rows) < c.samples:
        log.warning("calibration: only %d rows in %s (recipe asks for %d); using them all", len(rows), source,
                    c.samples)
    texts = [render(tokenizer, messages, completion) for messages, completion in rows]
    # The chat template writes its own special tokens (BOS included where the model has one).
    encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=c.max_length)
    dataset = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    lengths = [len(ids) for ids in encoded["input_ids"]]
    summary = {"source": source, "rows": len(lengths), "tokens": sum(lengths), "max_length": c.max_length,
               "truncated_rows": sum(n >= c.max_length for n in lengths), "mean_tokens": sum(lengths) / len(lengths)}
    return dataset, summary


# -- quantization ----------------------------------------------------------------------------------------------------


def weights_bytes(model_dir: str | Path) -> int | None:
    """Bytes of the weight files in a local model directory (None for a hub id)."""
    path = Path(model_dir)
    if not path.is_dir():
        return None
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and WEIGHT_FILE_RE.fullmatch(p.name))


def build_modifiers(recipe: Recipe) -> list:
    from compressed_tensors.quantization import preset_name_to_scheme
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    preset_group = preset_name_to_scheme(recipe.scheme, ["Linear"]).weights.group_size
    if preset_group != GROUP_SIZE:  # the divisibility check ran with GROUP_SIZE
        raise RuntimeError(f"llm-compressor's {recipe.scheme} preset uses group size {preset_group}, not {GROUP_SIZE}")
    return [
        # AWQ mappings (which norm scales which projections) are found from the architecture (Qwen2, Llama, ...).
        AWQModifier(duo_scaling=recipe.awq_duo_scaling, n_grid=recipe.awq_n_grid),
        QuantizationModifier(targets=["Linear"], scheme=recipe.scheme, ignore=list(recipe.ignore)),
    ]


def apply_cpu_workaround() -> None:
    """llm-compressor 0.14 pins calibration activations in page-locked memory for fast GPU copies, which raises
    "Cannot access accelerator device when none is available" without a GPU. Pinning is only an optimization."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None


def apply_awq_memory_fix() -> None:
    """llm-compressor 0.14 forces eager attention while calibrating, and `AWQModifier._run_samples` keeps each
    parent module's whole output tuple for every calibration sample before taking the first element. For an attention
    block that tuple holds its attention weights (samples × heads × tokens² values): 64 GB for 256 × 2048 tokens on a
    1B model, an out-of-memory error on an 80 GB H100 (measured). This version keeps the first element of each batch
    as it goes; it returns exactly what the original returns."""
    import torch
    from llmcompressor.core import active_session
    from llmcompressor.modifiers.transform.awq.base import AWQModifier

    if not hasattr(AWQModifier, "_run_samples"):  # the pinned 0.14.0.1 has it; a newer release must be re-checked
        raise RuntimeError("llmcompressor: AWQModifier._run_samples not found; check apply_awq_memory_fix")

    @torch.no_grad()
    def run_samples(self, module):
        cache = self._parent_args_cache[module]
        batches = cache.iter_prefetch() if active_session().state.sequential_prefetch else cache
        outputs = []
        for batch in batches:
            output = module(**batch)
            outputs.append(output[0] if isinstance(output, tuple) else output)  # drop attention weights at once
        return outputs

    AWQModifier._run_samples = run_samples


def quantize(recipe: Recipe, model: str, output_dir: str | Path) -> dict:
    """Quantize `model` into `output_dir`; return the report (also written to output_dir/quantize_report.json)."""
    t_start = time.monotonic()
    check_model_source(model)
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.chat_template is None:
        raise ValueError(f"model: the tokenizer in {model} has no chat_template; calibration needs chat text")
    quantized_layers = check_group_divisibility(config, recipe.ignore)
    dataset, calibration = build_calibration_set(recipe, tokenizer)
    log.info("calibration: %d rows, %d tokens from %s", calibration["rows"], calibration["tokens"],
             calibration["source"])

    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    if not cuda:
        apply_cpu_workaround()
    apply_awq_memory_fix()
    modifiers = build_modifiers(recipe)

    t0 = time.monotonic()
    # Loaded on the CPU: on a GPU, llm-compressor onloads one decoder layer at a time (sequential pipeline).
    full_model = AutoModelForCausalLM.from_pretrained(model, dtype=recipe.dtype)
    load_seconds = time.monotonic() - t0

    t0 = time.monotonic()
    oneshot(model=full_model, tokenizer=tokenizer, dataset=dataset, recipe=modifiers,
            max_seq_length=recipe.calibration.max_length, num_calibration_samples=len(dataset))
    calibrate_seconds = time.monotonic() - t0

    t0 = time.monotonic()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    full_model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    save_seconds = time.monotonic() - t0

    import compressed_tensors
    import llmcompressor
    import transformers

    report = {
        "model": str(model),
        "output_dir": str(out),
        "scheme": recipe.scheme,
        "group_size": GROUP_SIZE,
        "ignore": list(recipe.ignore),
        "quantized_linear_layers": quantized_layers,
        "awq": {"duo_scaling": recipe.awq_duo_scaling, "n_grid": recipe.awq_n_grid},
        "calibration": calibration,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "seconds": {"load": round(load_seconds, 2), "calibrate": round(calibrate_seconds, 2),
                    "save": round(save_seconds, 2), "total": round(time.monotonic() - t_start, 2)},
        # ru_maxrss is in KiB on Linux: the peak resident memory of this whole process.
        "peak_memory_gib": {"cpu_rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
                            "cuda": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None},
        "weights_bytes": {"before": weights_bytes(model), "after": weights_bytes(out)},
        "versions": {"llmcompressor": llmcompressor.__version__, "compressed_tensors": compressed_tensors.__version__,
                     "transformers": transformers.__version__, "torch": torch.__version__},
        "recipe": asdict(recipe),
    }
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="quantization recipe YAML (configs/quantize/*.yaml)")
    parser.add_argument("--model", help="full-precision model directory or hub id (default: the recipe's `model`)")
    parser.add_argument("--output_dir", help="where to write the quantized model (default: the recipe's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        recipe = load_recipe(args.config)
        model = args.model or recipe.model
        output_dir = args.output_dir or recipe.output_dir
        if not model:
            raise ValueError("model: pass --model or set `model` in the recipe")
        if not output_dir:
            raise ValueError("output_dir: pass --output_dir or set `output_dir` in the recipe")
        report = quantize(recipe, model, output_dir)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sizes = report["weights_bytes"]
    ratio = f" ({sizes['before'] / sizes['after']:.2f}x smaller)" if sizes["before"] and sizes["after"] else ""
    print(f"quantized {model} → {output_dir} ({report['scheme']}, group {GROUP_SIZE}) in "
          f"{report['seconds']['total']:.1f}s; peak memory {report['peak_memory_gib']['cpu_rss']:.2f} GiB RSS; "
          f"weights {sizes['before']} → {sizes['after']} bytes{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
