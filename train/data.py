"""Training sets for SFT and GRPO, built from local JSONL/parquet/CSV files or `datasets` hub ids.

SFT (`build_sft_dataset`), the paper's recipe made explicit: read each source with its own column names (OpenR1-Math
style: one row per problem with a list of `generations` and a list of `correctness_math_verify` flags; Light-R1 style:
ShareGPT `conversations`), drop bad rows, keep correct traces within the source's per-problem accuracy and trace
token-length bounds, sample `weight` of each source's problems, then deduplicate across sources keeping the
shortest correct trace per problem, where a trace checked against a gold answer (or a correctness flag) always wins
over one whose answer was read from its own box (`answer_from_trace`: correct by construction, so unverified).
A per-problem accuracy bound drops rows whose accuracy is unknown (fewer than 2 correctness flags), counted.
Rows come out in TRL's conversational prompt/completion form: `{"prompt": [system, user], "completion":
[assistant], "answer", "source"}`, so SFT puts the loss on the completion.

GRPO (`build_grpo_dataset`): `{"prompt": [system, user], "solution": gold, "source"}` with every gold checked to be
gradable, and prompts longer than `max_prompt_length` tokens dropped (trl 1.16 no longer truncates prompts).

Nothing is dropped silently: every removed row is counted under a reason in a `DataReport`, which the scripts log
and save next to the checkpoints (data_report.json). The SFT report also gives the kept traces' characters per
token (`chars_per_token`, in the recipe's tokenizer): GRPO turns the seed's cosine length of 30,000 characters into
tokens with it (train/grpo.py, `cosine_max_chars`).

    python -m train.data sft --config configs/sft/r1-distill-qwen-14b.yaml --out data/fast-math-sft.jsonl
    python -m train.data grpo --config configs/grpo/r1-distill-qwen-14b.yaml --out data/fast-math-grpo.jsonl

write the selected rows flat ({problem, generation, answer, source}), to inspect them or to build once before a
multi-GPU run (every rank would otherwise repeat the build).
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

from inference.answers import last_boxed
from inference.grading import grade
from inference.prompts import prompt_messages  # the one prompt builder of training and serving

logger = logging.getLogger(__name__)

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class Source:
    """One data source and how to read and filter it. Keys of a `dataset_sources` entry in a recipe."""

    path: str  # a local .jsonl/.json/.parquet/.csv file, or a `datasets` hub id
    name: str | None = None  # hub dataset config
    data_files: str | None = None  # a file inside a hub dataset repo (e.g. Light-R1's stage2-3k.json)
    split: str = "train"
    label: str | None = None  # name in the data report (default: path)
    problem_column: str = "problem"
    trace_column: str | None = "generation"  # SFT: a str, or a list of str per row (OpenR1 `generations`)
    messages_column: str | None = None  # instead of problem/trace: chat turns ({role, content} or {from, value})
    answer_column: str | None = "answer"
    answer_from_trace: bool = False  # no gold: the trace's last \boxed{} is the answer (Light-R1 stage 2, per the seed)
    correct_column: str | None = None  # bool, or a list of bool aligned with the traces; None: grade the trace
    accuracy_column: str | None = None  # per-problem solve rate in [0, 1]; None: mean of a list correct_column
    min_accuracy: float | None = None  # bounds are inclusive
    max_accuracy: float | None = None
    min_trace_tokens: int | None = None
    max_trace_tokens: int | None = None
    weight: float = 1.0  # fraction of this source's surviving problems to keep (random, dataset_seed)
    max_problems: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "Source":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"dataset_sources: unknown key(s) {unknown} in {d}; known keys: {sorted(known)}")
        if "path" not in d:
            raise ValueError(f"dataset_sources: an entry has no 'path': {d}")
        source = cls(**d)
        if not 0 < source.weight <= 1:
            raise ValueError(f"dataset_sources[{source.path}].weight must be in (0, 1], got {source.weight}")
        return source

    @property
    def display(self) -> str:
        return self.label or self.path


@dataclass
class DataReport:
    """Rows kept and dropped (by reason) per source."""

    kind: str
    read: Counter = field(default_factory=Counter)  # source → rows read
    dropped: dict[str, Counter] = field(default_factory=dict)  # source → reason → rows
    kept: int = 0
    trace_chars: int = 0  # SFT: characters and tokens of the kept traces
    trace_tokens: int = 0

    @property
    def chars_per_token(self) -> float | None:
        return self.trace_chars / self.trace_tokens if self.trace_tokens else None

    def drop(self, source: str, reason: str, n: int = 1) -> None:
        if n:
            self.dropped.setdefault(source, Counter())[reason] += n

    def summary(self) -> str:
        lines = [f"{self.kind} data: kept {self.kept} rows"]
        if self.chars_per_token:
            lines[0] += (f" ({self.trace_tokens} trace tokens, {self.trace_chars} characters: "
                         f"{self.chars_per_token:.3f} characters per token)")
        for source, n in self.read.items():
            reasons = ", ".join(f"{r}: {c}" for r, c in self.dropped.get(source, Counter()).most_common())
            lines.append(f"  {source}: read {n}; dropped {reasons or 'none'}")
        for source in self.dropped.keys() - self.read.keys():  # cross-source steps (dedupe)
            lines.append(f"  {source}: " + ", ".join(f"{r}: {c}" for r, c in self.dropped[source].items()))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        result = {"kind": self.kind, "kept": self.kept, "read": dict(self.read),
                  "dropped": {s: dict(c) for s, c in self.dropped.items()}}
        if self.trace_tokens:
            result |= {"trace_chars": self.trace_chars, "trace_tokens": self.trace_tokens,
                       "chars_per_token": round(self.chars_per_token, 4)}
        return result


# --- reading --------------------------------------------------------------------------------------------------------


def load_rows(source: Source):
    """The source's rows as a `datasets.Dataset` (local file or hub id)."""
    from datasets import load_dataset

    suffix = Path(source.path).suffix.lower()
    if suffix in LOCAL_FORMATS:
        if not Path(source.path).exists():
            raise FileNotFoundError(f"dataset_sources: file {source.path} does not exist")
        return load_dataset(LOCAL_FORMATS[suffix], data_files=source.path, split="train")
    return load_dataset(source.path, name=source.name, data_files=source.data_files, split=source.split)


def _column(row: dict, column: str, source: Source):
    if column not in row:
        raise KeyError(f"dataset_sources[{source.display}]: no column {column!r}; columns are {sorted(row)}")
    return row[column]


def _from_messages(turns: list[dict]) -> tuple[str, str]:
    """(first user turn, first assistant turn) of {role, content} or ShareGPT {from, value} messages."""
    user = assistant = ""
    for turn in turns:
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value")) or ""
        if role in ("user", "human") and not user:
            user = content
        elif role in ("assistant", "gpt") and not assistant:
            assistant = content
    return user, assistant


def normalize_problem(text: str) -> str:
    """Key for deduplication: whitespace-insensitive."""
    return re.sub(r"\s+", " ", text).strip()


def gold_is_gradable(gold: str) -> bool:
    """A gold answer is usable when the grader accepts its own boxed form (None would mean unparseable)."""
    return grade(f"\\boxed{{{gold}}}", gold) is True


def _answer_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def count_tokens(tokenizer, texts: list[str], batch_size: int = 1000) -> list[int]:
    lengths = []
    for i in range(0, len(texts), batch_size):
        ids = tokenizer(texts[i : i + batch_size], add_special_tokens=False)["input_ids"]
        lengths += [len(x) for x in ids]
    return lengths


# --- SFT ------------------------------------------------------------------------------------------------------------


def _sft_candidates(source: Source, report: DataReport) -> list[dict]:
    """One candidate per (problem, trace): the source's rows normalized, bad rows and wrong traces counted out."""
    if (source.min_accuracy is not None or source.max_accuracy is not None) and not (
        source.accuracy_column or source.correct_column
    ):
        raise ValueError(f"dataset_sources[{source.display}]: min/max_accuracy needs accuracy_column or a list "
                         "correct_column")
    label, candidates = source.display, []
    for row in load_rows(source):
        report.read[label] += 1
        if source.messages_column:
            problem, trace = _from_messages(_column(row, source.messages_column, source))
            traces = [trace]
        else:
            problem = _column(row, source.problem_column, source) or ""
            value = _column(row, source.trace_column, source)
            traces = value if isinstance(value, list) else [value]
        if not problem.strip():
            report.drop(label, "empty problem")
            continue
        flags = _column(row, source.correct_column, source) if source.correct_column else None
        if flags is not None and not isinstance(flags, list):
            flags = [flags]
        if flags is not None and len(flags) != len(traces):
            report.drop(label, "correctness flags do not match the traces")
            continue
        if source.min_accuracy is not None or source.max_accuracy is not None:
            if source.accuracy_column:
                accuracy = _column(row, source.accuracy_column, source)
                unknown = "no accuracy value"
            else:  # one flag is not a solve rate
                accuracy = sum(map(bool, flags)) / len(flags) if flags and len(flags) > 1 else None
                unknown = "accuracy unknown (fewer than 2 correctness flags)"
            if accuracy is None:
                report.drop(label, unknown)
                continue
            if (source.min_accuracy is not None and accuracy < source.min_accuracy) or (
                source.max_accuracy is not None and accuracy > source.max_accuracy
            ):
                report.drop(label, "accuracy out of range")
                continue
        gold = _answer_text(_column(row, source.answer_column, source)) if source.answer_column else ""
        for i, trace in enumerate(traces):
            if not (trace or "").strip():
                report.drop(label, "empty trace")
                continue
            answer = gold
            if source.answer_from_trace and not answer:
                answer = (last_boxed(trace) or "").strip()
            if not answer:
                report.drop(label, "no answer")
                continue
            verified = True
            if flags is not None:
                correct = bool(flags[i])
            elif source.answer_from_trace and not gold:
                correct, verified = True, False  # the answer was read from this very trace: nothing was checked
            else:
                correct = grade(trace, answer)
                if correct is None:
                    report.drop(label, "unparseable gold")
                    continue
            if not correct:
                report.drop(label, "wrong trace")
                continue
            candidates.append({"problem": problem.strip(), "generation": trace, "answer": answer, "source": label,
                               "verified": verified})
    return candidates


def _shortest_per_problem(rows: list[dict]) -> list[dict]:
    """One row per (normalized) problem: a verified trace before a self-graded one, then the fewest trace tokens."""
    best: dict[str, dict] = {}
    for row in rows:
        key = normalize_problem(row["problem"])
        rank = (not row.get("verified", True), row["tokens"])
        if key not in best or rank < (not best[key].get("verified", True), best[key]["tokens"]):
            best[key] = row
    return list(best.values())


def _sample(rows: list[dict], source: Source, rng: random.Random, report: DataReport) -> list[dict]:
    """`weight` (a fraction) and at most `max_problems` of the rows, drawn with `rng`; the rest counted as dropped."""
    n = round(source.weight * len(rows))
    if source.max_problems is not None:
        n = min(n, source.max_problems)
    kept = rng.sample(rows, n) if n < len(rows) else rows
    report.drop(source.display, "not sampled (weight/max_problems)", len(rows) - len(kept))
    return kept


def _sample_problems(rows: list[dict], source: Source, rng: random.Random, report: DataReport) -> list[dict]:
    """Keep the shortest trace of each problem within the source, then `weight`/`max_problems` of the problems."""
    problems = _shortest_per_problem(rows)
    report.drop(source.display, "longer trace of the same problem", len(rows) - len(problems))
    return _sample(problems, source, rng, report)


def select_sft_rows(
    sources: list[dict | Source],
    tokenizer,
    system_prompt: str | None = None,
    max_length: int | None = None,
    seed: int = 2025,
) -> tuple[list[dict], DataReport]:
    """The SFT problems as flat `{problem, generation, answer, source, tokens}` rows, and the DataReport.

    `max_length` drops rows whose whole chat-formatted example (system prompt included) is longer, so no trace is cut
    before its answer.
    """
    if not sources:
        raise ValueError("dataset_sources: no SFT data source given")
    report, rng, merged = DataReport("SFT"), random.Random(seed), []
    for source in [s if isinstance(s, Source) else Source.from_dict(s) for s in sources]:
        rows = _sft_candidates(source, report)
        for row, n in zip(rows, count_tokens(tokenizer, [r["generation"] for r in rows]), strict=True):
            row["tokens"] = n
        in_bounds = [
            r for r in rows
            if (source.min_trace_tokens is None or r["tokens"] >= source.min_trace_tokens)
            and (source.max_trace_tokens is None or r["tokens"] <= source.max_trace_tokens)
        ]
        report.drop(source.display, "trace length out of range", len(rows) - len(in_bounds))
        merged += _sample_problems(in_bounds, source, rng, report)

    # Across sources: one row per problem, the shortest correct trace.
    rows = _shortest_per_problem(merged)
    report.drop("all sources", "duplicate problem (kept the shortest trace)", len(merged) - len(rows))
    if max_length is not None:
        records = [sft_record(r, system_prompt) for r in rows]
        texts = [tokenizer.apply_chat_template(m["prompt"] + m["completion"], tokenize=False) for m in records]
        fitting = [r for r, n in zip(rows, count_tokens(tokenizer, texts), strict=True) if n <= max_length]
        report.drop("all sources", f"longer than max_length={max_length}", len(rows) - len(fitting))
        rows = fitting
    rng.shuffle(rows)
    report.kept = len(rows)
    report.trace_chars = sum(len(r["generation"]) for r in rows)
    report.trace_tokens = sum(r["tokens"] for r in rows)
    if not rows:
        raise ValueError(f"dataset_sources: no SFT rows survived the filters\n{report.summary()}")
    return rows, report


def sft_record(row: dict, system_prompt: str | None) -> dict:
    """A flat SFT row in TRL's conversational prompt/completion form."""
    return {"prompt": prompt_messages(row["problem"], system_prompt),
            "completion": [{"role": "assistant", "content": row["generation"]}],
            "answer": row["answer"], "source": row["source"]}


def build_sft_dataset(sources, tokenizer, system_prompt, max_length=None, seed=2025):
    """The SFT set as a `datasets.Dataset` in prompt/completion form, and its DataReport."""
    from datasets import Dataset

    rows, report = select_sft_rows(sources, tokenizer, system_prompt, max_length, seed)
    return Dataset.from_list([sft_record(r, system_prompt) for r in rows]), report


# --- GRPO and evaluation problems -----------------------------------------------------------------------------------


def select_grpo_rows(
    sources: list[dict | Source],
    tokenizer=None,
    system_prompt: str | None = None,
    max_prompt_length: int | None = None,
    seed: int = 2025,
    kind: str = "GRPO",
) -> tuple[list[dict], DataReport]:
    """Problems with gradable golds as flat `{problem, answer, source}` rows, and the DataReport.

    Prompts longer than `max_prompt_length` tokens (system prompt, chat template and generation prompt included) are
    dropped: the trainer would otherwise feed them whole.
    """
    if not sources:
        raise ValueError(f"dataset_sources: no {kind} data source given")
    if max_prompt_length is not None and tokenizer is None:
        raise ValueError("max_prompt_length needs a tokenizer")
    report, rng, selected, seen = DataReport(kind), random.Random(seed), [], set()
    for source in [s if isinstance(s, Source) else Source.from_dict(s) for s in sources]:
        label, rows = source.display, []
        for row in load_rows(source):
            report.read[label] += 1
            problem = (_column(row, source.problem_column, source) or "").strip()
            gold = _answer_text(_column(row, source.answer_column or "answer", source))
            if not problem:
                report.drop(label, "empty problem")
            elif not gold:
                report.drop(label, "no answer")
            elif not gold_is_gradable(gold):
                report.drop(label, "unparseable gold")
            elif normalize_problem(problem) in seen:
                report.drop(label, "duplicate problem")
            else:
                seen.add(normalize_problem(problem))
                rows.append({"problem": problem, "answer": gold, "source": label})
        if max_prompt_length is not None:
            texts = [tokenizer.apply_chat_template(prompt_messages(r["problem"], system_prompt), tokenize=False,
                                                   add_generation_prompt=True) for r in rows]
            fitting = [r for r, n in zip(rows, count_tokens(tokenizer, texts), strict=True) if n <= max_prompt_length]
            report.drop(label, f"prompt longer than {max_prompt_length} tokens", len(rows) - len(fitting))
            rows = fitting
        selected += _sample(rows, source, rng, report)
    report.kept = len(selected)
    if not selected:
        raise ValueError(f"dataset_sources: no {kind} rows survived the filters\n{report.summary()}")
    return selected, report


def grpo_record(row: dict, system_prompt: str | None) -> dict:
    """A flat problem row as GRPO input: the chat prompt and the gold `solution` the rewards grade against."""
    return {"prompt": prompt_messages(row["problem"], system_prompt), "solution": row["answer"],
            "source": row["source"]}


def build_grpo_dataset(sources, tokenizer=None, system_prompt=None, max_prompt_length=None, seed=2025):
    """The GRPO set as a `datasets.Dataset` of `{prompt, solution, source}`, and its DataReport."""
    from datasets import Dataset

    rows, report = select_grpo_rows(sources, tokenizer, system_prompt, max_prompt_length, seed)
    return Dataset.from_list([grpo_record(r, system_prompt) for r in rows]), report


def load_eval_problems(path: str, problem_column: str = "problem", answer_column: str = "answer",
                       system_prompt: str | None = None, limit: int | None = None,
                       split: str = "test") -> list[dict]:
    """Held-out problems as `{prompt, solution, source}` dicts in file order; bad rows are dropped and logged."""
    source = Source(path=path, split=split, problem_column=problem_column, answer_column=answer_column,
                    label=f"eval:{path}")
    rows, report = select_grpo_rows([source], kind="evaluation")
    if any(report.dropped.values()):
        logger.warning(report.summary())
    return [grpo_record(r, system_prompt) for r in rows[:limit]]


def write_jsonl(rows, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def main() -> None:
    """Build a recipe's data once and write the flat rows; point the recipe's dataset_sources at the file after."""
    import argparse

    import yaml
    from transformers import AutoTokenizer

    from train.configs import DEFAULT_SYSTEM_PROMPT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["sft", "grpo"])
    parser.add_argument("--config", required=True, help="an SFT or GRPO recipe YAML")
    parser.add_argument("--out", required=True, help="JSONL file to write")
    args = parser.parse_args()
    recipe = yaml.safe_load(Path(args.config).read_text())
    tokenizer = AutoTokenizer.from_pretrained(recipe["model_name_or_path"])
    system_prompt = recipe.get("system_prompt", DEFAULT_SYSTEM_PROMPT)
    seed = recipe.get("dataset_seed", 2025)
    if args.stage == "sft":
        rows, report = select_sft_rows(recipe["dataset_sources"], tokenizer, system_prompt, recipe.get("max_length"),
                                       seed)
    else:
        rows, report = select_grpo_rows(recipe["dataset_sources"], tokenizer, system_prompt,
                                        recipe.get("max_prompt_length", 512), seed)
    print(report.summary())
    if report.chars_per_token:
        print(f"the seed's cosine length, 30,000 characters = {30000 / report.chars_per_token:.0f} tokens of these "
              "traces (GRPO derives it itself from the SFT run's data_report.json: cosine_max_chars)")
    print(f"wrote {write_jsonl(rows, args.out)}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
