"""The seed's token scheduler: a regressor from a problem's text (first 256 tokens) to the expected generation length
of a sample, trained on recorded traces; the policy option `token_scheduler` (inference/token_scheduler.py) turns
its prediction into the problem's max_tokens and time share.

    python -m train.token_scheduler --config configs/token_scheduler/toy.yaml              # tiny encoder, CPU, ~1 min
    python -m train.token_scheduler --config configs/token_scheduler/modernbert-base.yaml  # the seed's (GPU, hub)
    python -m train.token_scheduler --config configs/token_scheduler/modernbert-base.yaml --random_init true \\
        --tokenizer_name_or_path models/toy-math --output_dir runs/token-scheduler/mb-random   # the real shape, offline
    python -m train.token_scheduler oracle --traces runs/hh1.jsonl --out runs/token-scheduler/lengths.json

Any recipe key can be overridden on the command line (`--learning_rate 1e-5`); an unknown key or a value of the
wrong type stops the script with one line naming it (exit 2). Ctrl-C stops after the current step with a
checkpoint; the same command resumes from it.

Data: `traces` (inference/evaluate.py's JSONL: one line per sample with `problem_id`, `tokens`, `correct`) and
`problems` (CSV/JSONL with id, problem: the texts, which traces do not carry). The label of a problem is `label`:
- `mean` (default): the mean tokens of all its recorded samples, cut ones counted at their cut. It is what a
  problem costs per sample, which is what max_tokens and the time share are about; it exists for every problem,
  the unsolved ones too (the long, contested ones the scheduler is for); and a mean of n samples is far less noisy
  than a minimum, whose value also shrinks as more samples are recorded.
- `shortest_correct`: the fewest tokens of a correct sample (the seed's framing: room for one right answer);
  problems without a correct sample are dropped.
Lengths are log-normal, so the model regresses the standardized log of the label with MSE (the seed: MSE, 3 epochs,
lr 1e-5, batch 32, cosine, a 90/10 split by problem) through transformers' AutoModelForSequenceClassification with
one regression output and its Trainer.

Output (output_dir): the model and tokenizer, `token_scheduler.json` (the label's log mean/std, max_problem_tokens,
lo/hi = the 10th/90th percentile of the training labels, the held-out fit) and `predictions.json` ({lo, hi,
predictions: {problem text and id: tokens}}, the file the simulator's policy reads). `oracle` writes the same file
from the traces' own labels, with no model: what a perfect regressor would give (an upper bound for the scheduler).

`random_init: true` builds the architecture (model_name_or_path's config if it is a local folder, else
`architecture` with `encoder_config` — the defaults of ModernBertConfig are ModernBERT-base's shape) with random
weights, so the recipe runs and can be timed without the hub.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from train.configs import RecipeError, RecipeParser, run_main
from train.interrupt import stop_on_ctrl_c

log = logging.getLogger("train.token_scheduler")

LABELS = ("mean", "shortest_correct")
META_FILE = "token_scheduler.json"
PREDICTIONS_FILE = "predictions.json"


@dataclass
class TokenSchedulerArguments:
    traces: list[str] = field(default_factory=list, metadata={"help": "Trace JSONL files (inference/evaluate.py)."})
    problems: list[str] = field(
        default_factory=list, metadata={"help": "Problem files (CSV/JSONL: id, problem) with the traces' texts."})
    model_name_or_path: str = field(
        default="answerdotai/ModernBERT-base", metadata={"help": "Encoder: a hub id or a local folder."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer (default: model_name_or_path's)."})
    random_init: bool = field(
        default=False, metadata={"help": "Random weights of the architecture instead of pretrained ones."})
    architecture: str = field(
        default="modernbert", metadata={"help": "random_init without a local folder: the transformers model_type."})
    encoder_config: dict = field(
        default_factory=dict, metadata={"help": "random_init: config values (e.g. hidden_size) over the defaults."})
    max_problem_tokens: int = field(default=256, metadata={"help": "Problem text truncated to this many tokens."})
    label: str = field(default="mean", metadata={"help": "Per-problem label: mean or shortest_correct.",
                                                 "choices": LABELS})
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of the problems held out (by problem)."})

    def check(self) -> None:
        if not self.traces:
            raise RecipeError("traces: name at least one trace file")
        if not self.problems:
            raise RecipeError("problems: name the problem files with the traces' texts (traces carry none)")
        if self.label not in LABELS:
            raise RecipeError(f"label: {self.label!r} is not one of {LABELS}")
        if not 0 < self.eval_fraction < 1:
            raise RecipeError(f"eval_fraction: must be between 0 and 1, got {self.eval_fraction}")
        if self.max_problem_tokens < 1:
            raise RecipeError(f"max_problem_tokens: must be ≥ 1, got {self.max_problem_tokens}")


# --- labels from traces ---------------------------------------------------------------------------------------------


def problem_labels(trace_files: list[str], label: str) -> dict[str, float]:
    """problem_id → its label in tokens (see the module docstring)."""
    from inference.engines.replay import load_traces

    lengths: dict[str, list[int]] = defaultdict(list)
    correct: dict[str, list[int]] = defaultdict(list)
    for path in trace_files:
        for (pid, _), r in load_traces(path).items():
            lengths[pid].append(int(r["tokens"]))
            if r.get("correct"):
                correct[pid].append(int(r["tokens"]))
    if label == "mean":
        return {pid: statistics.fmean(v) for pid, v in lengths.items()}
    return {pid: float(min(v)) for pid, v in correct.items()}


def problem_texts(problem_files: list[str]) -> dict[str, str]:
    from inference.local_gateway import read_problems

    texts: dict[str, str] = {}
    for path in problem_files:
        df = read_problems(path)
        texts.update(zip(df["id"], df["problem"]))
    return texts


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    x = q * (len(s) - 1)
    i = int(x)
    return s[i] + (s[min(i + 1, len(s) - 1)] - s[i]) * (x - i)


def predictions_file(rows: list[dict], lo: float, hi: float, label: str, source: str) -> dict:
    """The predictions JSON the policy reads: keyed by problem text where known, and by id."""
    table = {}
    for r in rows:
        table[r["id"]] = round(r["predicted"], 1)
        if r.get("problem"):
            table[r["problem"]] = round(r["predicted"], 1)
    return {"source": source, "label": label, "lo": round(lo, 1), "hi": round(hi, 1), "predictions": table}


def correlation(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return None
    return round(statistics.correlation(xs, ys), 4)


def spearman(xs: list[float], ys: list[float]) -> float | None:
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        out = [0.0] * len(v)
        for r, i in enumerate(order):
            out[i] = float(r)
        return out

    return correlation(ranks(xs), ranks(ys))


# --- model -----------------------------------------------------------------------------------------------------------


def load_tokenizer(args: TokenSchedulerArguments):
    from transformers import AutoTokenizer

    name = args.tokenizer_name_or_path or args.model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise RecipeError(f"tokenizer_name_or_path: cannot load {name!r} ({str(e).splitlines()[0][:160]}); offline, "
                          "name a local folder (e.g. models/toy-math)") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def build_model(args: TokenSchedulerArguments, tokenizer):
    """One-output regression head on the encoder: pretrained, or random weights of the architecture."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    head = {"num_labels": 1, "problem_type": "regression"}
    local = Path(args.model_name_or_path).is_dir()
    if not args.random_init:
        try:
            return AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, **head)
        except (OSError, ValueError) as e:
            raise RecipeError(f"model_name_or_path: cannot load {args.model_name_or_path!r} "
                              f"({str(e).splitlines()[0][:160]}); offline, name a local folder or use "
                              "--random_init true") from None
    if local:
        config = AutoConfig.from_pretrained(args.model_name_or_path, **head, **args.encoder_config)
    else:
        try:
            config = AutoConfig.for_model(args.architecture, **head, **args.encoder_config)
        except (ValueError, TypeError) as e:
            raise RecipeError(f"architecture / encoder_config: {str(e).splitlines()[0][:200]}") from None
    if getattr(config, "vocab_size", None) is not None and config.vocab_size < len(tokenizer):
        raise RecipeError(f"encoder_config: vocab_size {config.vocab_size} is smaller than the tokenizer's "
                          f"{len(tokenizer)}")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
        token_id = getattr(tokenizer, name, None)
        if hasattr(config, name) and token_id is not None:
            setattr(config, name, token_id)
        elif hasattr(config, name) and name != "pad_token_id":
            setattr(config, name, tokenizer.pad_token_id)  # the tokenizer has no such token: a harmless stand-in
    return AutoModelForSequenceClassification.from_config(config)


def predict(model, tokenizer, texts: list[str], max_tokens: int, batch_size: int = 32) -> list[float]:
    """The model's raw outputs (standardized log tokens) for these texts."""
    import torch

    model.eval()
    out: list[float] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], truncation=True, max_length=max_tokens, padding=True,
                            return_tensors="pt").to(device)
            out.extend(model(**enc).logits.reshape(-1).float().cpu().tolist())
    return out


# --- main ------------------------------------------------------------------------------------------------------------


def build_trainer(args: TokenSchedulerArguments, training_args):
    """(Trainer, None, the data: rows with id/problem/label/split, and the label's log mean/std)."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    args.check()
    set_seed(training_args.seed)
    labels = problem_labels(args.traces, args.label)
    texts = problem_texts(args.problems)
    missing = sorted(set(labels) - set(texts))
    if missing:
        raise RecipeError(f"problems: no text for {len(missing)} traced problem(s) (e.g. {missing[:3]}) in "
                          f"{', '.join(args.problems)}")
    ids = sorted(labels)
    if len(ids) < 2:
        raise RecipeError(f"traces: {len(ids)} problem(s) with a {args.label} label; need at least 2")
    random.Random(training_args.seed).shuffle(ids)
    n_eval = max(1, round(len(ids) * args.eval_fraction))
    held = set(ids[:n_eval])
    rows = [{"id": pid, "problem": texts[pid], "label": labels[pid], "split": "eval" if pid in held else "train"}
            for pid in sorted(labels)]
    logs = [math.log(max(1.0, r["label"])) for r in rows if r["split"] == "train"]
    mean, std = statistics.fmean(logs), (statistics.pstdev(logs) or 1.0)

    tokenizer = load_tokenizer(args)
    model = build_model(args, tokenizer)

    def dataset(split: str) -> Dataset:
        part = [r for r in rows if r["split"] == split]
        enc = tokenizer([r["problem"] for r in part], truncation=True, max_length=args.max_problem_tokens)
        return Dataset.from_dict({**enc, "labels": [(math.log(max(1.0, r["label"])) - mean) / std for r in part]})

    trainer = Trainer(model=model, args=training_args, train_dataset=dataset("train"), eval_dataset=dataset("eval"),
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    return trainer, None, rows, (mean, std)


def fit_report(rows: list[dict]) -> dict:
    """Pearson and Spearman correlation of predicted and label tokens, RMSE of log tokens against the constant
    prediction (the training labels' log mean), per split."""
    report = {}
    train_logs = [math.log(max(1.0, r["label"])) for r in rows if r["split"] == "train"]
    base = statistics.fmean(train_logs)
    for split in ("train", "eval"):
        part = [r for r in rows if r["split"] == split]
        y = [math.log(max(1.0, r["label"])) for r in part]
        p = [math.log(max(1.0, r["predicted"])) for r in part]
        report[split] = {
            "problems": len(part),
            "pearson": correlation([r["predicted"] for r in part], [r["label"] for r in part]),
            "spearman": spearman([r["predicted"] for r in part], [r["label"] for r in part]),
            "rmse_log": round(math.sqrt(statistics.fmean((a - b) ** 2 for a, b in zip(p, y))), 4),
            "rmse_log_constant": round(math.sqrt(statistics.fmean((base - b) ** 2 for b in y)), 4),
        }
    return report


def main(args: TokenSchedulerArguments, training_args) -> Path:
    from train.common import train_resumably

    trainer, callback, rows, (mean, std) = build_trainer(args, training_args)
    out = train_resumably(*stop_on_ctrl_c((trainer, callback)))  # Ctrl-C: checkpoint, same command resumes
    raw = predict(trainer.model, trainer.processing_class, [r["problem"] for r in rows], args.max_problem_tokens,
                  training_args.per_device_eval_batch_size)
    for r, z in zip(rows, raw):
        r["predicted"] = math.exp(z * std + mean)
    train_labels = [r["label"] for r in rows if r["split"] == "train"]
    lo, hi = percentile(train_labels, 0.1), percentile(train_labels, 0.9)
    report = fit_report(rows)
    meta = {"label": args.label, "target": "standardized log tokens", "mean": mean, "std": std,
            "max_problem_tokens": args.max_problem_tokens, "lo": lo, "hi": hi, "fit": report,
            "model_name_or_path": args.model_name_or_path, "random_init": args.random_init}
    if training_args.process_index == 0:
        trainer.processing_class.save_pretrained(out)
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (out / PREDICTIONS_FILE).write_text(json.dumps(
            predictions_file(rows, lo, hi, args.label, str(out)), indent=2) + "\n")
        for split, r in report.items():
            print(f"{split}: {r['problems']} problems, Pearson {r['pearson']}, Spearman {r['spearman']}, RMSE of "
                  f"log tokens {r['rmse_log']} (constant prediction {r['rmse_log_constant']})")
        print(f"wrote {out} ({META_FILE}, {PREDICTIONS_FILE}); max_tokens scale: {lo:.0f} … {hi:.0f} tokens")
    return out


def oracle(argv: list[str]) -> int:
    """`oracle`: the predictions file of a perfect regressor (each problem's own label from the traces)."""
    parser = argparse.ArgumentParser(prog="python -m train.token_scheduler oracle", description=oracle.__doc__)
    parser.add_argument("--traces", nargs="+", required=True)
    parser.add_argument("--problems", nargs="*", default=[], help="problem files: also key by text")
    parser.add_argument("--label", choices=LABELS, default="mean")
    parser.add_argument("--out", required=True)
    a = parser.parse_args(argv)
    try:
        labels = problem_labels(a.traces, a.label)
        texts = problem_texts(a.problems) if a.problems else {}
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = [{"id": pid, "problem": texts.get(pid), "predicted": v} for pid, v in labels.items()]
    values = list(labels.values())
    data = predictions_file(rows, percentile(values, 0.1), percentile(values, 0.9), a.label,
                            "oracle: " + " ".join(a.traces))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {a.out}: {len(labels)} problems, scale {data['lo']:.0f} … {data['hi']:.0f} tokens")
    return 0


def make_parser():
    from transformers import TrainingArguments

    return RecipeParser((TokenSchedulerArguments, TrainingArguments))


def _main(args: TokenSchedulerArguments, training_args) -> None:
    try:
        main(args, training_args)
    except (OSError, ValueError) as e:  # RecipeError, a missing or bad trace / problems file: one line, exit 2
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if sys.argv[1:2] == ["oracle"]:
        sys.exit(oracle(sys.argv[2:]))
    run_main(_main, make_parser())
