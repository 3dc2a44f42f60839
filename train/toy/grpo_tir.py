"""Toy GRPO with the Python tool: the TIR toy model before and after GRPO whose rollouts call the sandbox.

    python -m train.toy.grpo_tir                       # data → evaluate → GRPO (configs/toy/grpo-tir.yaml) → evaluate
    python -m train.toy.grpo_tir --evaluate-only runs/toy-grpo-tir/grpo/final   # one model on the held-out set

Problems come from the TIR toy (train/toy/tir.py): its `test` split (the same 200 held-out problems as the TIR toy's,
same seed and sizes) and a `grpo` split disjoint from it and from the SFT split. The evaluation answers the held-out
problems through the kit's transformers engine with the sandbox on, greedily and sampled as in training
(temperature 1, top-p 0.9, min-p 0.05, one seeded sample per problem), and reports accuracy, mean generated tokens
(tool outputs not counted) and tool calls per answer. Results go to <run-dir>/results.json. Any argument after the
script's own goes to train/grpo.py (`--max_steps 10`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from train.toy.tir import FORMAT, SYSTEM_PROMPT, make_splits

logger = logging.getLogger("train.toy.grpo_tir")
SPLITS = {"sft": 1500, "test": 200, "grpo": 1000}  # sft and test as configs/toy/tir.yaml: the same problems


def evaluate(model: str, rows: list[dict], sampled: bool, max_tokens: int = 120) -> dict:
    """Accuracy, mean generated tokens and tool calls per answer on `rows`, with the tool."""
    from inference.answers import extract_answer
    from inference.engines.base import SampleRequest
    from inference.engines.transformers_engine import TransformersEngine
    from inference.tools import ToolSettings

    engine = TransformersEngine(model, batch_size=50, chat_format=FORMAT,
                                tools=ToolSettings(enabled=True, pool_size=8, max_calls=2, max_turns=4))
    sampling = dict(temperature=1.0, top_p=0.9, min_p=0.05) if sampled else dict(temperature=0.0)
    engine.start()
    try:
        engine.submit([SampleRequest(r["id"], 0, [{"role": "system", "content": SYSTEM_PROMPT},
                                                  {"role": "user", "content": r["problem"]}],
                                     seed=i, max_tokens=max_tokens, stop_rule="none", **sampling)
                       for i, r in enumerate(rows)])
        samples = []
        while len(samples) < len(rows):
            samples += engine.poll(1.0)
    finally:
        engine.shutdown()
    gold = {r["id"]: str(r["answer"]) for r in rows}
    n = len(samples)
    return {"problems": n,
            "accuracy": round(sum(str(extract_answer(s.text)) == gold[s.problem_id] for s in samples) / n, 4),
            "mean_tokens": round(sum(s.tokens for s in samples) / n, 2),
            "tool_calls": round(sum(s.extra.get("tool_calls", 0) for s in samples) / n, 3)}


def evaluate_both(model: str, rows: list[dict]) -> dict:
    return {"greedy": evaluate(model, rows, sampled=False), "sampled": evaluate(model, rows, sampled=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/toy/grpo-tir.yaml")
    parser.add_argument("--model", default="models/toy-math-tir", help="the model GRPO starts from")
    parser.add_argument("--run-dir", default="runs/toy-grpo-tir")
    parser.add_argument("--limit", type=int, default=200, help="held-out problems evaluated")
    parser.add_argument("--evaluate-only", metavar="MODEL", help="evaluate MODEL and exit")
    args, grpo_overrides = parser.parse_known_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for name in ("httpx", "inference.sandbox"):
        logging.getLogger(name).setLevel(logging.WARNING)

    splits = make_splits(SPLITS, seed=0)
    test = [{"id": p.id, "problem": p.problem, "answer": p.answer} for p in splits["test"][: args.limit]]
    if args.evaluate_only:
        print(json.dumps({"model": args.evaluate_only, **evaluate_both(args.evaluate_only, test)}))
        return

    from train import grpo
    from train.data import write_jsonl

    root = Path(args.run_dir)
    if root.exists():
        shutil.rmtree(root)  # a fresh run (train/grpo.py would otherwise resume old checkpoints)
    start = time.perf_counter()
    data = write_jsonl([{"problem": p.problem, "answer": p.answer} for p in splits["grpo"]],
                       root / "data" / "grpo.jsonl")
    write_jsonl(test, root / "data" / "test.jsonl")
    before = evaluate_both(args.model, test)
    logger.info("before: %s", before)

    grpo_args = ["--config", args.config, "--model_name_or_path", args.model, "--output_dir", str(root / "grpo"),
                 *grpo_overrides]
    data_args, training_args, model_args = grpo.make_parser().parse_args_and_config(grpo_args)
    data_args.dataset_sources = [{"path": str(data), "label": "toy-grpo-tir"}]
    trained = str(grpo.main(data_args, training_args, model_args))
    train_seconds = time.perf_counter() - start

    after = evaluate_both(trained, test)
    results = {"start_model": args.model, "trained_model": trained, "max_steps": training_args.max_steps,
               "before": before, "after": after, "seconds": round(time.perf_counter() - start),
               "seconds_to_trained": round(train_seconds)}
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
