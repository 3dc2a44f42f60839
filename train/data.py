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

Tool-using traces (several turns) keep every turn. A source with `messages_column` holds chat messages:

    {"messages": [{"role": "system", "content": ...},                     # optional; the recipe's prompt wins
                  {"role": "user", "content": "What is 347 * 29?"},
                  {"role": "assistant", "content": "<think>\n", "tool_calls": [{"code": "print(347 * 29)"}]},
                  {"role": "tool", "content": "10063\n"},                   # the sandbox's output, unframed
                  {"role": "assistant", "content": "\\boxed{10063}\n</think>\nThe answer is \\boxed{10063}.",
                   "thinking": ...}],                                    # optional, harmony only: analysis channel
     "answer": "10063"}

A call is either `tool_calls` (one per assistant message: `{"code": ...}` or the OpenAI/transformers shape
`{"function": {"name": "python", "arguments": {"code": ...}}}`), or written inline at the end of the assistant
content in the recipe's format, exactly as the kit's engine generated it (a turn's `text`, then a `tool` message with
its `output`). Every call must be followed by a `tool` message and the trace must end with an assistant message;
anything else stops the build with an error naming the source and row. ShareGPT `from`/`value` keys are read too.
With `chat_format` set (python_block or tool_call for Qwen-family models, harmony for gpt-oss; inference/formats.py,
inference/harmony.py render them as the engines do) every SFT row is tokenized here into `{input_ids, labels}`:
the prompt as the engine builds it, each assistant turn as the model writes it, each tool output framed as the
engine appends it, with labels -100 on the prompt and on every tool-output token (`train_on_tool_outputs: true`
keeps the outputs in the loss, for comparison), which trl's SFTTrainer uses as they are.

Decontamination: a training row whose problem is an evaluation problem (configs/data: AIME 2024, AIME 2025,
MATH-500; the AIMO reference sets under runs/data/ when downloaded; the recipe's eval_file) is dropped before SFT
and GRPO, counted as "evaluation problem (SET)". Problems are compared as lowercase words (every character that is
not a letter or digit splits words, so spacing, case, `$` and LaTeX punctuation do not matter): a shared run of 13
words (`NGRAM`), or, for an evaluation problem shorter than that, all of its words in a row. Near-duplicates across
rows and sources (the same words after that normalisation) count as one problem.

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
from inference.formats import get_format
from inference.grading import grade
from inference.prompts import prompt_messages  # the one prompt builder of training and serving

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# Evaluation sets no training row may contain: shipped files, then the Kaggle reference sets where downloaded.
EVAL_SETS = {"AIME 2024": "configs/data/aime2024.jsonl", "AIME 2025": "configs/data/aime2025.jsonl",
             "MATH-500": "configs/data/math500.jsonl", "AIMO-2 reference": "runs/data/aimo2/reference.csv",
             "AIMO-3 reference": "runs/data/aimo3/reference.csv"}
NGRAM = 13  # words: the n-gram overlap open post-training pipelines (Tülu 3, OLMo) decontaminate with
MIN_CONTAINED_WORDS = 5  # a shorter evaluation problem matches only a training problem with exactly its words
WORD = re.compile(r"[^\W_]+|[^\w\s$\\{}]")  # letter/digit runs, and every other visible character but $ \ { }
EMBEDDED_FORMATS = ("python_block", "tool_call")  # formats whose calls and outputs can be read back from one text
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system",
         "tool": "tool"}


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
    # SFT: the trace is one generation with its code and output blocks embedded in this format's markers
    # (python_block: ```python / ```output; tool_call: <tool_call> / ```output), split into turns
    trace_format: str | None = None
    filters: dict | None = None  # {column: allowed value or list of values}; other rows are dropped, counted

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
        if source.trace_format is not None:
            if source.trace_format not in EMBEDDED_FORMATS:
                raise ValueError(f"dataset_sources[{source.path}].trace_format: {source.trace_format!r} is not one of "
                                 f"{', '.join(EMBEDDED_FORMATS)}")
            if source.messages_column:
                raise ValueError(f"dataset_sources[{source.path}]: trace_format splits trace_column; messages_column "
                                 "rows already have their turns")
        if source.filters is not None and not isinstance(source.filters, dict):
            raise ValueError(f"dataset_sources[{source.path}].filters: expected a mapping of column to allowed "
                             f"values, got {source.filters!r}")
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


def _tool_code(call, where: str) -> str:
    """The Python source of one `tool_calls` entry: {"code": ...} or {"function": {"arguments": {"code": ...}}}
    (arguments may be a JSON string, or the code itself)."""
    if isinstance(call, dict) and isinstance(call.get("code"), str):
        return call["code"]
    arguments = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    if isinstance(arguments, dict) and isinstance(arguments.get("code"), str):
        return arguments["code"]
    raise ValueError(f"{where}: a tool call needs its code ({{'code': ...}} or function.arguments.code), got {call!r}")


def parse_messages(messages, where: str) -> tuple[str, list[dict] | None, str]:
    """(problem, turns, flat trace) of one row's chat messages. `turns` is None for a plain trace (one assistant
    answer); else every turn after the user's, as {"role": "assistant", "content", "call", "thinking"} or
    {"role": "tool", "content"}. The flat trace (assistant text, calls and outputs as python_block text) is what
    grading, token bounds and the written rows read. Raises ValueError naming `where` on a malformed trace."""
    if not isinstance(messages, list):
        raise ValueError(f"{where}: messages must be a list of turns, got {type(messages).__name__}")
    problem, turns = None, []
    for j, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"{where}: messages[{j}] is not a mapping")
        role = ROLES.get(m.get("role") or m.get("from"))
        content = m.get("content", m.get("value")) or ""
        if role is None:
            raise ValueError(f"{where}: messages[{j}] has role {m.get('role') or m.get('from')!r}; expected "
                             f"{', '.join(ROLES)}")
        if role == "system" and problem is None:
            continue  # the recipe's system prompt is the one trained
        if role == "user":
            if problem is not None:
                raise ValueError(f"{where}: messages[{j}] is a second user turn (one problem per row)")
            problem = content
            continue
        if problem is None:
            raise ValueError(f"{where}: messages[{j}] ({role}) comes before the user's problem")
        calls = m.get("tool_calls") or []
        if len(calls) > 1:
            raise ValueError(f"{where}: messages[{j}] makes {len(calls)} tool calls; one per assistant turn")
        if role == "assistant":
            turns.append({"role": "assistant", "content": content, "thinking": m.get("thinking") or None,
                          "call": _tool_code(calls[0], f"{where}: messages[{j}]") if calls else None})
        elif role == "tool":
            if not turns or turns[-1]["role"] != "assistant":
                raise ValueError(f"{where}: messages[{j}] is a tool output that follows no assistant tool call")
            turns.append({"role": "tool", "content": content})
        else:
            raise ValueError(f"{where}: messages[{j}] is a system turn inside the conversation")
    if problem is None:
        return "", None, ""
    for j, turn in enumerate(turns):
        following = turns[j + 1]["role"] if j + 1 < len(turns) else None
        if turn["role"] == "assistant" and turn["call"] is not None and following != "tool":
            raise ValueError(f"{where}: a tool call ({turn['call'][:40]!r}) has no tool output after it")
    if turns and turns[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the trace ends with a tool output, not with the assistant's answer")
    if len(turns) == 1 and turns[0]["call"] is None and turns[0]["thinking"] is None:
        return problem, None, turns[0]["content"]
    block = get_format("python_block")
    flat = "".join(t["content"] + (block.call_text(t["call"]) if t.get("call") else "") if t["role"] == "assistant"
                   else block.frame_output(t["content"]) for t in turns)
    return problem, turns or None, flat


def split_generation(text: str, format_name: str, where: str) -> list[dict]:
    """The turns (parse_messages' shape) of one generation whose tool calls and outputs are embedded in it, as
    NeMo-Skills' TIR solutions are (OpenMathReasoning `tir`): assistant text up to a code block, the code as the
    turn's call, the following output block as the tool turn, and so on; the text after the last output block is
    the final assistant turn. Markers are matched without their surrounding newlines. A code block with no output
    block right after it, or an unclosed block, raises ValueError naming `where`."""
    fmt = get_format(format_name)
    code_begin, code_end = fmt.code_begin.strip(), fmt.code_end.strip()
    output_begin, output_end = fmt.output_begin.strip(), fmt.output_end.strip()
    turns, pos = [], 0
    while (start := text.find(code_begin, pos)) >= 0:
        body = start + len(code_begin)
        end = text.find(code_end, body)
        if end < 0:
            raise ValueError(f"{where}: the code block at character {start} is not closed ({code_end!r})")
        after = end + len(code_end)
        out = after + len(text[after:]) - len(text[after:].lstrip())
        if not text.startswith(output_begin, out):
            raise ValueError(f"{where}: the code block at character {start} has no output block "
                             f"({output_begin!r}) after it")
        out_body = out + len(output_begin)
        out_end = text.find(output_end, out_body)
        if out_end < 0:
            raise ValueError(f"{where}: the output block at character {out} is not closed ({output_end!r})")
        output = text[out_body:out_end].removeprefix("\n")
        turns += [{"role": "assistant", "content": text[pos:start], "thinking": None,
                   "call": text[body:end].strip("\n")},
                  {"role": "tool", "content": output}]
        pos = out_end + len(output_end)
        pos += text.startswith("\n", pos)  # the newline that closes the output block is part of its frame
    return turns + [{"role": "assistant", "content": text[pos:], "thinking": None, "call": None}]


def _row_filtered_out(row: dict, source: Source) -> str | None:
    """The drop reason when a `filters` column of `row` holds a value the source does not allow, else None."""
    for column, allowed in (source.filters or {}).items():
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if _column(row, column, source) not in allowed:
            return f"{column} not in {allowed}"
    return None


def _accuracy_value(value) -> float | None:
    """A solve rate from its column: a number, or a numeric string (OpenMathReasoning's pass_rate_72b_tir is a
    string, "n/a" when unknown)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return value


def problem_words(text: str) -> list[str]:
    """A problem as lowercase words and single symbols: spacing, case, `$`, backslashes and braces do not count."""
    return WORD.findall(text.lower())


def normalize_problem(text: str) -> str:
    """Key for deduplication: the same words and symbols (`problem_words`) are the same problem."""
    return " ".join(problem_words(text))


class Decontaminator:
    """Finds training problems that are evaluation problems (see the module docstring for the rule)."""

    def __init__(self, sets: dict[str, list[str]]):
        self.ngrams: dict[tuple, str] = {}
        self.short: list[tuple[str, str]] = []  # (" words ", set) of evaluation problems under NGRAM words
        self.exact: dict[str, str] = {}
        self.sizes = {name: len(problems) for name, problems in sets.items()}
        for name, problems in sets.items():
            for problem in problems:
                words = problem_words(problem)
                self.exact.setdefault(" ".join(words), name)
                if len(words) >= NGRAM:
                    for i in range(len(words) - NGRAM + 1):
                        self.ngrams.setdefault(tuple(words[i : i + NGRAM]), name)
                elif len(words) >= MIN_CONTAINED_WORDS:
                    self.short.append((f" {' '.join(words)} ", name))

    def match(self, problem: str) -> str | None:
        """The name of the evaluation set `problem` overlaps, or None."""
        words = problem_words(problem)
        joined = " ".join(words)
        if joined in self.exact:
            return self.exact[joined]
        for i in range(len(words) - NGRAM + 1):
            name = self.ngrams.get(tuple(words[i : i + NGRAM]))
            if name:
                return name
        padded = f" {joined} "
        return next((name for short, name in self.short if short in padded), None)


def load_decontaminator(eval_sets: dict[str, str] | None = None, extra: list[str] | tuple = ()) -> Decontaminator:
    """The evaluation problems of `eval_sets` (name → file; default EVAL_SETS, repo-relative; the AIMO reference
    files only where present) and of `extra` files or hub ids (a recipe's eval_file)."""
    sets: dict[str, list[str]] = {}
    for name, path in (EVAL_SETS if eval_sets is None else eval_sets).items():
        file = Path(path) if Path(path).is_absolute() or Path(path).exists() else REPO / path
        if not file.exists():
            if eval_sets is None and "reference" in name:
                continue  # Kaggle data, downloaded by `make reference-data`
            raise FileNotFoundError(f"decontamination: evaluation set {name} file {path} does not exist")
        sets[name] = [str(r["problem"]) for r in load_rows(Source(path=str(file)))]
    for path in extra:
        if path:
            sets[f"eval_file {path}"] = [str(r["problem"]) for r in load_rows(Source(path=path, split="test"))]
    return Decontaminator(sets)


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
    for index, row in enumerate(load_rows(source)):
        report.read[label] += 1
        turns = None
        if source.filters and (reason := _row_filtered_out(row, source)):
            report.drop(label, reason)
            continue
        if source.messages_column:
            problem, turns, trace = parse_messages(_column(row, source.messages_column, source),
                                                   f"dataset_sources[{label}] row {index}")
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
                accuracy = _accuracy_value(_column(row, source.accuracy_column, source))
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
            embedded = None  # a malformed trace fails whatever its answer
            if source.trace_format:
                embedded = split_generation(trace, source.trace_format, f"dataset_sources[{label}] row {index}")
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
            candidate = {"problem": problem.strip(), "generation": trace, "answer": answer, "source": label,
                         "verified": verified}
            if turns is not None:
                candidate["turns"] = turns
            elif embedded is not None and len(embedded) > 1:  # no call: a plain trace
                candidate["turns"] = embedded
            candidates.append(candidate)
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


def _decontaminate(rows: list[dict], decontaminator: Decontaminator, label: str, report: DataReport) -> list[dict]:
    kept = []
    for row in rows:
        name = decontaminator.match(row["problem"])
        if name is None:
            kept.append(row)
        else:
            report.drop(label, f"evaluation problem ({name})")
    return kept


_DEFAULT_DECONTAMINATOR: list[Decontaminator] = []


def default_decontaminator() -> Decontaminator:
    """The EVAL_SETS' decontaminator, built once per process."""
    if not _DEFAULT_DECONTAMINATOR:
        _DEFAULT_DECONTAMINATOR.append(load_decontaminator())
    return _DEFAULT_DECONTAMINATOR[0]


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
    renderer: "TraceRenderer | None" = None,
    decontaminator: Decontaminator | None = None,
) -> tuple[list[dict], DataReport]:
    """The SFT problems as flat `{problem, generation, answer, source, tokens}` rows (`turns` too for tool-using
    traces), and the DataReport.

    `max_length` drops rows whose whole example (system prompt included; rendered by `renderer` when given, else by
    the chat template) is longer, so no trace is cut before its answer. `decontaminator` (default: the EVAL_SETS)
    drops evaluation problems.
    """
    if not sources:
        raise ValueError("dataset_sources: no SFT data source given")
    decontaminator = decontaminator if decontaminator is not None else default_decontaminator()
    report, rng, merged = DataReport("SFT"), random.Random(seed), []
    for source in [s if isinstance(s, Source) else Source.from_dict(s) for s in sources]:
        rows = _decontaminate(_sft_candidates(source, report), decontaminator, source.display, report)
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
    if renderer is None and any("turns" in r for r in rows):
        n = sum("turns" in r for r in rows)
        raise ValueError(f"dataset_sources: {n} rows are tool-using traces (several turns); set chat_format "
                         "(python_block, tool_call or harmony) to render them in the model's format")
    if max_length is not None:
        if renderer is not None:
            lengths = [len(renderer(r)["input_ids"]) for r in rows]
        else:
            records = [sft_record(r, system_prompt) for r in rows]
            texts = [tokenizer.apply_chat_template(m["prompt"] + m["completion"], tokenize=False) for m in records]
            lengths = count_tokens(tokenizer, texts)
        fitting = [r for r, n in zip(rows, lengths, strict=True) if n <= max_length]
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


def build_sft_dataset(sources, tokenizer, system_prompt, max_length=None, seed=2025, chat_format=None,
                      chat_format_options=None, train_on_tool_outputs=False, eval_files=()):
    """The SFT set as a `datasets.Dataset`, and its DataReport: prompt/completion rows, or with `chat_format`
    `{input_ids, labels}` rows rendered by `TraceRenderer` (tool outputs out of the loss). Evaluation problems (the
    EVAL_SETS and `eval_files`) are dropped."""
    from datasets import Dataset

    renderer = (TraceRenderer(chat_format, tokenizer, system_prompt, chat_format_options, train_on_tool_outputs)
                if chat_format else None)
    decontaminator = load_decontaminator(extra=tuple(eval_files)) if any(eval_files) else None
    rows, report = select_sft_rows(sources, tokenizer, system_prompt, max_length, seed, renderer, decontaminator)
    if renderer is not None:
        return Dataset.from_list([renderer(r) for r in rows]), report
    return Dataset.from_list([sft_record(r, system_prompt) for r in rows]), report


# --- tool-using traces as token ids and labels ----------------------------------------------------------------------


class TraceRenderer:
    """SFT rows as `{input_ids, labels}` in the target model's chat format, built with the engines' own rendering
    (inference/formats.py, inference/harmony.py): the prompt is `prompt_ids`, each tool output is what
    `continue_ids` appends after a call, so training sees exactly the tokens serving feeds the model. Labels are -100
    on the prompt and on every tool-output token (unless `train_on_tool_outputs`), the token ids elsewhere."""

    def __init__(self, chat_format: str, tokenizer, system_prompt: str | None, options: dict | None = None,
                 train_on_tool_outputs: bool = False):
        try:
            self.format = get_format(chat_format, **(options or {}))
        except ValueError as e:
            raise ValueError(str(e).replace("prompts.format_options", "chat_format_options")
                             .replace("prompts.format", "chat_format")) from None
        self.tokenizer, self.system_prompt = tokenizer, system_prompt
        self.train_on_tool_outputs = train_on_tool_outputs
        self.harmony = self.format.name == "harmony"
        if not self.harmony:  # what the chat template writes after an assistant message (e.g. <|im_end|>\n)
            sentinel = "\u2063SENTINEL\u2063"
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "x"}, {"role": "assistant", "content": sentinel}], tokenize=False,
                **self.format.chat_template_kwargs)
            self.end_ids = tokenizer.encode(text[text.rindex(sentinel) + len(sentinel):], add_special_tokens=False)

    def __call__(self, row: dict) -> dict:
        ids = list(self.format.prompt_ids(prompt_messages(row["problem"], self.system_prompt), self.tokenizer))
        labels = [-100] * len(ids)
        turns = row.get("turns") or [{"role": "assistant", "content": row["generation"], "call": None,
                                      "thinking": None}]
        for j, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            output = turns[j + 1]["content"] if j + 1 < len(turns) and turns[j + 1]["role"] == "tool" else None
            last = j == len(turns) - 1
            turn_ids = self._assistant_ids(turn, last)
            if output is None:
                ids, labels = ids + turn_ids, labels + turn_ids
                continue
            if turn["call"] is None and self.format.tool_call(turn["content"], []) is None:
                raise ValueError(f"{row['source']}: the assistant turn before a tool output "
                                 f"({turn['content'][-40:]!r}) makes no {self.format.name} tool call (give "
                                 "tool_calls or end it with the call)")
            framed = self.format.continue_ids(ids, turn_ids, output, self.tokenizer)[len(ids) + len(turn_ids):]
            kept = framed if self.train_on_tool_outputs else [-100] * len(framed)
            ids, labels = ids + turn_ids + framed, labels + turn_ids + kept
        return {"input_ids": ids, "labels": labels}

    def _assistant_ids(self, turn: dict, last: bool) -> list[int]:
        """One assistant turn's tokens as the model writes them after the prompt or a tool output."""
        if self.harmony:
            return self._harmony_ids(turn, last)
        if turn.get("thinking"):
            raise ValueError(f"chat_format {self.format.name}: `thinking` is rendered by harmony only; write it in "
                             "the assistant content")
        text = turn["content"]
        if turn["call"] is not None:
            if not hasattr(self.format, "call_text"):
                raise ValueError(f"chat_format {self.format.name} has no tool calls (use python_block, tool_call or "
                                 "harmony)")
            text += self.format.call_text(turn["call"])
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids + self.end_ids if last else ids

    def _harmony_ids(self, turn: dict, last: bool) -> list[int]:
        from openai_harmony import Message, Role

        from inference.harmony import encoding, special_id, text_token_ids

        content = turn["content"]
        if "<|channel|>" in content:  # raw Harmony text as the kit's engine recorded the turn
            return text_token_ids(content)
        messages = []
        if turn.get("thinking"):
            messages.append(Message.from_role_and_content(Role.ASSISTANT, turn["thinking"]).with_channel("analysis"))
        if content:
            channel = "final" if last else "analysis"
            messages.append(Message.from_role_and_content(Role.ASSISTANT, content).with_channel(channel))
        if turn["call"] is not None:
            messages.append(Message.from_role_and_content(Role.ASSISTANT, turn["call"]).with_channel("analysis")
                            .with_recipient("python").with_content_type("code"))
        if last and not content:
            raise ValueError("harmony format: the last assistant message has no content (the final answer)")
        ids = [i for m in messages for i in encoding().render(m)]
        ids = ids[len(self.format.assistant_start):]  # the prompt or the tool output already ends in it
        if last:  # the model ends its answer with <|return|>, not <|end|>
            ids[-1] = special_id("<|return|>")
        return ids


# --- GRPO and evaluation problems -----------------------------------------------------------------------------------


def select_grpo_rows(
    sources: list[dict | Source],
    tokenizer=None,
    system_prompt: str | None = None,
    max_prompt_length: int | None = None,
    seed: int = 2025,
    kind: str = "GRPO",
    decontaminator: Decontaminator | None = None,
) -> tuple[list[dict], DataReport]:
    """Problems with gradable golds as flat `{problem, answer, source}` rows, and the DataReport.

    Prompts longer than `max_prompt_length` tokens (system prompt, chat template and generation prompt included) are
    dropped: the trainer would otherwise feed them whole. Evaluation problems (`decontaminator`, default the
    EVAL_SETS; none for kind "evaluation") are dropped.
    """
    if not sources:
        raise ValueError(f"dataset_sources: no {kind} data source given")
    if max_prompt_length is not None and tokenizer is None:
        raise ValueError("max_prompt_length needs a tokenizer")
    if decontaminator is None:
        decontaminator = Decontaminator({}) if kind == "evaluation" else default_decontaminator()
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
            elif (name := decontaminator.match(problem)) is not None:
                report.drop(label, f"evaluation problem ({name})")
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


def build_grpo_dataset(sources, tokenizer=None, system_prompt=None, max_prompt_length=None, seed=2025, eval_files=()):
    """The GRPO set as a `datasets.Dataset` of `{prompt, solution, source}`, and its DataReport. Evaluation problems
    (the EVAL_SETS and `eval_files`, e.g. the recipe's held-out eval_file) are dropped."""
    from datasets import Dataset

    decontaminator = load_decontaminator(extra=tuple(eval_files)) if any(eval_files) else None
    rows, report = select_grpo_rows(sources, tokenizer, system_prompt, max_prompt_length, seed,
                                    decontaminator=decontaminator)
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
        renderer = (TraceRenderer(recipe["chat_format"], tokenizer, system_prompt, recipe.get("chat_format_options"),
                                  recipe.get("train_on_tool_outputs", False)) if recipe.get("chat_format") else None)
        rows, report = select_sft_rows(recipe["dataset_sources"], tokenizer, system_prompt, recipe.get("max_length"),
                                       seed, renderer)
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
