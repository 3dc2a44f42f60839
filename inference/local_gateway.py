"""A local mock of Kaggle's AIMO evaluation gateway that rehearses a whole competition run.

    python inference/local_gateway.py                                   # the demo: toy model, toy problems
    python inference/local_gateway.py --problems configs/data/aime2025.jsonl --competition aimo3 \\
        --config configs/inference/demo.yaml --model models/toy-math --budget-seconds 1200
    python inference/local_gateway.py --problems configs/toy/eval_mixed.csv --engine replay \\
        --traces runs/toy-traces.jsonl --virtual-clock                  # 5 h in seconds, on traces evaluate.py wrote

Like Kaggle's gateway it drops the answer column, shuffles the problems with the seed, serves one row at a time to
`predict` on a worker thread as one-row polars Series, waits for each answer before showing the next problem,
enforces the server-start, per-call and whole-run limits of the competition, validates every return value exactly
as that competition's gateway does, and fails with the same error kinds. Then it does what Kaggle does not: scores
against the gold answers (`inference.grading.grade`, with the competition's range and modulus), shows one live
progress display (problems done, score so far, tokens/s, time left), prints a table, and writes a JSON report next
to submission.parquet.

Run from the command line it checks its inputs first and stops at once, with a message naming the field or file,
on a setting of the wrong type, a missing model folder, traces that hold none of the problems, or an engine that
cannot start. The engines' own logs (vLLM's INFO lines, its engine core subprocess included) go to a file
(`--log`, default runs/local_gateway.log); `--verbose` shows them instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python inference/local_gateway.py` from anywhere

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from concurrent.futures import TimeoutError as FutureTimeout  # noqa: E402
from typing import Any, Callable  # noqa: E402

import polars as pl  # noqa: E402

from inference.grading import grade  # noqa: E402
from inference.clock import RealClock, VirtualClock  # noqa: E402
from inference.config import REPO, Competition, Settings, load_settings, parse_override  # noqa: E402
from inference.interrupt import EXIT_CODE, Interrupt, exit_now  # noqa: E402

# Kaggle's GatewayRuntimeErrorType names, plus the platform's own notebook timeout.
ERROR_KINDS = (
    "SERVER_NEVER_STARTED",
    "SERVER_CONNECTION_FAILED",
    "SERVER_RAISED_EXCEPTION",
    "SERVER_MISSING_ENDPOINT",
    "GATEWAY_RAISED_EXCEPTION",
    "INVALID_SUBMISSION",
    "GRPC_DEADLINE_EXCEEDED",
    "NOTEBOOK_TIMEOUT",
)
DEFAULT_CONFIG = REPO / "configs" / "inference" / "demo.yaml"
DEFAULT_LOG = "runs/local_gateway.log"


class _Stopped(Exception):
    """The user pressed Ctrl-C: stop serving, keep what was answered."""


class GatewayError(RuntimeError):
    def __init__(self, kind: str, details: str = "") -> None:
        assert kind in ERROR_KINDS, kind
        super().__init__(f"{kind}: {details}")
        self.kind = kind
        self.details = details


def read_problems(path: str | Path) -> pl.DataFrame:
    """Problems from CSV or JSONL with columns id, problem and optionally answer (all read as strings)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"problems: no such file {path}")
    try:
        if path.suffix in (".jsonl", ".ndjson"):
            df = pl.read_ndjson(path, infer_schema_length=None)
        else:
            df = pl.read_csv(path, infer_schema_length=0)  # every column as text, like ids "000aaa"
    except Exception as e:  # noqa: BLE001 - polars raises many kinds; the message is what matters
        raise ValueError(f"problems: cannot read {path}: {e}") from None
    for col in ("id", "problem"):
        if col not in df.columns:
            raise ValueError(f"problems: {path} has no {col!r} column (columns: {', '.join(df.columns)})")
    keep = [c for c in ("id", "problem", "answer") if c in df.columns]
    df = df.select([pl.col(c).cast(pl.String) for c in keep])
    if df.height == 0:
        raise ValueError(f"problems: {path} has no rows")
    dupes = df.filter(pl.col("id").is_duplicated())["id"].unique().to_list()
    if dupes:
        raise ValueError(f"problems: {path} has duplicate ids {dupes[:5]}")
    return df


def _check_endpoint(predict: Any, comp: Competition) -> None:
    """Kaggle registers listeners by function name; 0.9.0 accepts only plain functions."""
    name = getattr(predict, "__name__", None)
    if name == "<lambda>" or not callable(predict):
        raise GatewayError("SERVER_MISSING_ENDPOINT", "endpoint listeners must be named functions")
    if comp.gateway_version >= "0.9" and not isinstance(predict, types.FunctionType):
        raise GatewayError("SERVER_MISSING_ENDPOINT",
                           f"Endpoint listeners passed to `serve` must be functions, got {type(predict).__name__}")
    if name != "predict":
        raise GatewayError("SERVER_MISSING_ENDPOINT", "Server did not register a listener for predict")


def _rows(prediction: Any) -> int:
    return prediction.height if isinstance(prediction, pl.DataFrame) else len(prediction)


def validate_prediction(prediction: Any, served_id: str, comp: Competition) -> None:
    """The checks of that competition's gateway, after each call."""
    if prediction is None:
        raise GatewayError("INVALID_SUBMISSION", "No prediction received")
    if comp.requires_id_column:  # AIMO-2, core 0.3.0
        try:
            n = _rows(prediction)
        except TypeError as e:
            raise GatewayError("GATEWAY_RAISED_EXCEPTION", repr(e)) from None
        if n != 1:
            raise GatewayError("INVALID_SUBMISSION", f"Invalid predictions: expected 1 rows but received {n}")
        columns = list(getattr(prediction, "columns", []))
        if "id" not in columns:
            raise GatewayError("INVALID_SUBMISSION", "Prediction missing column id")
        if [str(x) for x in list(prediction["id"])] != [served_id]:
            raise GatewayError("INVALID_SUBMISSION", "Invalid values for id in batch of predictions.")
        return
    # AIMO-3, core 0.9.0
    if isinstance(prediction, (int, float, str, bool)) or type(prediction).__module__ == "numpy":
        return  # scalars count as one row here and fail when the submission is written
    module = type(prediction).__module__.split(".")[0]
    if module not in ("polars", "pandas") or type(prediction).__name__ not in ("DataFrame", "Series"):
        raise GatewayError("INVALID_SUBMISSION", f"Invalid prediction data type, received: {type(prediction)}")
    n = _rows(prediction)
    if n != 1:
        raise GatewayError("INVALID_SUBMISSION", f"Invalid predictions: expected 1 rows but received {n}")


def build_submission(predictions: list[Any], served_ids: list[str], comp: Competition) -> pl.DataFrame:
    """Concatenate the predictions the way the gateway does when it writes submission.parquet."""
    frames = []
    for p in predictions:
        if isinstance(p, pl.Series):
            raise GatewayError("GATEWAY_RAISED_EXCEPTION", "Series only supports 'vertical' concat strategy")
        if not isinstance(p, pl.DataFrame):
            if type(p).__module__.split(".")[0] == "pandas" and type(p).__name__ == "DataFrame":
                p = pl.from_pandas(p)
            elif comp.requires_id_column:
                p = pl.from_pandas(p.to_frame()) if hasattr(p, "to_frame") else p
            else:
                raise GatewayError(
                    "GATEWAY_RAISED_EXCEPTION",
                    "The gateway fields self.target_column_name and/or self.row_id_column_name must be set "
                    f"(predict returned a bare {type(p).__name__})",
                )
        frames.append(p)
    try:
        df = pl.concat(frames, how="vertical_relaxed")
    except Exception as e:  # noqa: BLE001
        raise GatewayError("INVALID_SUBMISSION", f"Inconsistent prediction types: {e}") from None
    if not comp.requires_id_column:  # 0.9.0 overwrites the id column with the served ids and puts it first
        df = df.with_columns(pl.Series("id", served_ids, dtype=pl.String))
        df = df.select(["id"] + [c for c in df.columns if c != "id"])
    return df


def _score(answer: Any, gold: str | None, comp: Competition) -> bool | None:
    """The evaluation's and the simulator's grader on the submitted integer (None: no usable gold)."""
    if gold is None:
        return None
    try:
        a = int(answer)
    except (TypeError, ValueError):
        return False if grade("", gold, comp.answer) is not None else None
    return grade(f"\\boxed{{{a}}}", gold, comp.answer)


class ProgressDisplay:
    """One live progress bar (tqdm) for a terminal: problems done, score so far, tokens/s, time left."""

    def __init__(self, total: int, budget: float, stream: Any) -> None:
        from tqdm import tqdm

        self.budget, self.tokens, self.correct, self.scored = budget, 0, 0, 0
        self.too_long = 0  # problems whose prompt fits no context: not attempted
        self.loading = False  # the engine is starting (the model loads): said on the bar
        self.serving_since = 0.0  # elapsed seconds when the first problem was served (after the engine start)
        try:  # a pseudo-terminal without a size (`script`, some CI) reports 0 columns: tqdm would draw nothing
            width = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            width = 0
        size = {"dynamic_ncols": True} if width > 0 else {"ncols": 120, "nrows": 20}
        self.bar = tqdm(total=total, file=stream, unit="problem", mininterval=0.5, **size,
                        bar_format="{desc}{bar:24} {n_fmt}/{total_fmt} problems{postfix}")
        self.bar.set_description_str("gateway ")

    def refresh(self, elapsed: float) -> None:
        if self.loading:
            left = max(0.0, self.budget - elapsed)
            self.bar.set_postfix_str(f"loading model · {_clock(elapsed)} elapsed · {_clock(left)} left", refresh=True)
            return
        score = f"score {self.correct}/{self.scored}" if self.scored else "score –"
        serving = elapsed - self.serving_since
        rate = f"{self.tokens / serving:,.0f} tok/s" if serving > 0 and self.tokens else "– tok/s"
        left = max(0.0, self.budget - elapsed)
        too_long = f" · {self.too_long} longer than the context" if self.too_long else ""
        self.bar.set_postfix_str(f"{score} · {rate}{too_long} · {_clock(elapsed)} elapsed · {_clock(left)} left",
                                 refresh=True)

    def problem_done(self, record: dict, elapsed: float) -> None:
        self.tokens += int(record.get("tokens") or 0)
        self.too_long += _too_long(record)
        if record["correct"] is not None:
            self.scored += 1
            self.correct += bool(record["correct"])
        self.bar.update(1)
        self.refresh(elapsed)

    def close(self) -> None:
        self.bar.close()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def run_gateway(
    predict: Callable,
    problems: str | Path | pl.DataFrame,
    competition: str | Competition = "aimo3",
    seed: int = 0,
    submission_path: str | Path | None = "submission.parquet",
    report_path: str | Path | None = None,
    budget_seconds: float | None = None,
    clock: RealClock | VirtualClock | None = None,
    details: Callable[[str], dict] | None = None,
    startup: Callable[[], Any] | None = None,
    show: Callable[[str], None] | None = print,
    display: ProgressDisplay | None = None,
    stop: threading.Event | None = None,
) -> dict:
    """Serve every problem to `predict` like Kaggle's gateway; return (and optionally write) the report.

    `clock` measures the limits (a VirtualClock for replays); `details(id)` adds the server's own record of a
    problem (votes, samples, tokens) to the report; `startup()` is run first, under the server-start limit.
    `show` gets a line per problem and the final table; with a `display` (a terminal) the display replaces the
    per-problem lines. Raises GatewayError on any failure Kaggle's gateway would fail on. Once `stop` is set (Ctrl-C)
    it stops within half a second, writes the submission and report of the problems answered so far, marked
    `"partial": true`, and returns that report (`report["interrupted"]` is true).
    """
    comp = competition if isinstance(competition, Competition) else Competition.load(competition)
    clock = clock or RealClock()
    show = show or (lambda _msg: None)
    df = problems if isinstance(problems, pl.DataFrame) else read_problems(problems)
    gold = dict(zip(df["id"], df["answer"])) if "answer" in df.columns else {}
    served = df.drop("answer", strict=False).sample(fraction=1.0, shuffle=True, seed=seed)
    budget = comp.total_seconds if budget_seconds is None else budget_seconds
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-predict")  # Kaggle: 1 gRPC worker
    run_start = clock.now()

    def call(fn: Callable, args: tuple, limit: float | None) -> Any:
        """Run fn on the worker thread; `limit` in seconds of the clock (None: no deadline)."""
        t0 = clock.now()
        future = pool.submit(fn, *args)
        if clock.virtual or (limit is None and display is None and stop is None):
            value = future.result()
        else:  # wake up every half second to keep the live display moving
            value = None
            while True:
                wait = 0.5 if limit is None else min(0.5, max(0.0, limit - (clock.now() - t0)))
                try:
                    value = future.result(timeout=wait)
                    break
                except FutureTimeout:
                    if stop is not None and stop.is_set():
                        raise _Stopped from None
                    if limit is not None and clock.now() - t0 >= limit:
                        value = TimeoutError
                        break
                    if display is not None:
                        display.refresh(clock.now() - run_start)
        elapsed = clock.now() - t0
        if value is TimeoutError or (limit is not None and elapsed > limit):
            raise TimeoutError(elapsed)
        return value

    rows, predictions = [], []
    interrupted = False
    try:
        if startup is not None:
            if display is not None:
                display.loading = True
                display.refresh(0.0)
            try:
                call(startup, (), comp.startup_seconds)
            except _Stopped:
                raise
            except TimeoutError:
                raise GatewayError("SERVER_NEVER_STARTED",
                                   f"Failed to connect to server after waiting {comp.startup_seconds:.0f} seconds") from None
            except Exception as e:  # noqa: BLE001
                raise GatewayError("SERVER_NEVER_STARTED", repr(e)) from None
        _check_endpoint(predict, comp)
        if display is not None:
            display.loading = False
            display.serving_since = clock.now() - run_start
        total = served.height
        for i, row in enumerate(served.iter_slices(n_rows=1)):
            if stop is not None and stop.is_set():
                raise _Stopped
            pid = row["id"].item(0)
            limit = comp.per_call_seconds if (i > 0 or comp.first_call_deadline) else None
            left = budget - (clock.now() - run_start)
            if left <= 0:
                raise GatewayError("NOTEBOOK_TIMEOUT", f"the {budget:.0f}s run limit passed before problem {i + 1}")
            limit = left if limit is None else min(limit, left)
            t0 = clock.now()
            try:
                prediction = call(predict, tuple(row.get_column(c) for c in row.columns), limit)
            except _Stopped:
                raise
            except TimeoutError:
                if clock.now() - run_start >= budget:
                    raise GatewayError("NOTEBOOK_TIMEOUT", f"run limit of {budget:.0f}s exceeded on {pid}") from None
                if comp.gateway_version >= "0.9":
                    raise GatewayError("GRPC_DEADLINE_EXCEEDED", f"predict({pid}) exceeded {limit:.0f}s") from None
                raise GatewayError("SERVER_CONNECTION_FAILED", "StatusCode.DEADLINE_EXCEEDED") from None
            except Exception as e:  # noqa: BLE001 - any exception inside predict fails the run on Kaggle
                raise GatewayError("SERVER_RAISED_EXCEPTION", str(e) or repr(e)) from None
            seconds = clock.now() - t0
            validate_prediction(prediction, pid, comp)
            predictions.append(prediction)
            answer = _answer_of(prediction)
            record = {"id": pid, "answer": answer, "gold": gold.get(pid),
                      "correct": _score(answer, gold.get(pid), comp), "seconds": round(seconds, 3)}
            if details is not None:
                try:
                    extra = details(pid) or {}
                except Exception:  # noqa: BLE001 - a report detail must never fail the run
                    extra = {}
                record.update({k: v for k, v in extra.items() if k not in ("id", "answer")})
                record["seconds"] = round(seconds, 3)
            rows.append(record)
            if display is not None:
                display.problem_done(record, clock.now() - run_start)
            else:
                show(_progress_line(i, total, record, budget - (clock.now() - run_start), rows))
        submission = build_submission(predictions, served["id"].to_list(), comp)
    except _Stopped:  # Ctrl-C: the problems answered so far make the submission; the one in flight is dropped
        interrupted = True
        submission = build_submission(predictions, served["id"].to_list()[:len(predictions)], comp) if predictions \
            else pl.DataFrame(schema={"id": pl.String, "answer": pl.Int64})
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if display is not None:
            display.close()

    if submission_path is not None:
        Path(submission_path).parent.mkdir(parents=True, exist_ok=True)
        submission.write_parquet(submission_path)
    report = _report(rows, comp, seed, clock.now() - run_start, clock.virtual)
    if interrupted:
        report.update(partial=True, interrupted=True, problems_total=served.height)
    if report_path is not None:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps(report, indent=2, default=str))
    if not interrupted:
        show(format_table(report))
    return report


def _answer_of(prediction: Any) -> Any:
    try:
        if isinstance(prediction, pl.DataFrame):
            return prediction["answer"].item(0) if "answer" in prediction.columns else prediction.to_series(-1).item(0)
        if hasattr(prediction, "columns"):  # pandas
            col = "answer" if "answer" in prediction.columns else prediction.columns[-1]
            return prediction[col].iloc[0]
        if isinstance(prediction, pl.Series):
            return prediction.item(0)
    except Exception:  # noqa: BLE001
        return None
    return prediction


def _too_long(record: dict) -> bool:
    """Whether the problem's prompt fit no context (inference.prompts.PromptTooLong): it was not attempted."""
    return any("PromptTooLong" in str(e) for e in record.get("errors") or [])


def _context_note(record: dict) -> str:
    if _too_long(record):
        return "  longer than the model's context: not attempted"
    cut = record.get("prompt_cut")
    if cut:
        return f"  prompt cut to fit the context ({cut['prompt_tokens']:,} → {cut['kept_tokens']:,} tokens)"
    return ""


def _progress_line(i: int, total: int, r: dict, left: float, rows: list[dict]) -> str:
    """The per-problem line where there is no live display (a log, a pipe, a test)."""
    mark = {True: "✓", False: "✗", None: "·"}[r["correct"]]
    votes = r.get("votes")
    votes = " votes " + ", ".join(f"{a}×{c:g}" for a, c in list(votes.items())[:4]) if votes else ""
    scored = [x["correct"] for x in rows if x["correct"] is not None]
    score = f"  score {sum(scored)}/{len(scored)}" if scored else ""
    return (f"[{i + 1}/{total}] {r['id']}: {r['answer']} {mark} (gold {r['gold']}){votes}  "
            f"{r['seconds']:.1f}s  {r.get('stop_reason', '')}{score}  {left:.0f}s left{_context_note(r)}")


def _report(rows: list[dict], comp: Competition, seed: int, seconds: float, virtual: bool) -> dict:
    scored = [r for r in rows if r["correct"] is not None]
    correct = sum(1 for r in scored if r["correct"])
    return {
        "competition": comp.name,
        "seed": seed,
        "problems": rows,
        "totals": {
            "problems": len(rows),
            "scored": len(scored),
            "correct": correct,
            "accuracy": correct / len(scored) if scored else None,
            "tokens": sum(r.get("tokens", 0) for r in rows),
            "samples": sum(r.get("samples", 0) for r in rows),
            ("simulated_seconds" if virtual else "wall_seconds"): round(seconds, 3),
        },
    }


def format_table(report: dict) -> str:
    head = f"{'id':<14} {'answer':>7} {'gold':>7} {'ok':>3} {'samples':>7} {'tokens':>7} {'seconds':>8}  stop"
    lines = [head, "-" * len(head)]
    for r in report["problems"]:
        ok = {True: "✓", False: "✗", None: "·"}[r["correct"]]
        lines.append(f"{str(r['id'])[:14]:<14} {str(r['answer']):>7} {str(r['gold']):>7} {ok:>3} "
                     f"{r.get('samples', ''):>7} {r.get('tokens', ''):>7} {r['seconds']:>8.1f}  "
                     f"{r.get('stop_reason', '')}")
    t = report["totals"]
    acc = f"{t['correct']}/{t['scored']} correct ({t['accuracy']:.0%})" if t["scored"] else "no gold answers"
    secs = t.get("wall_seconds", t.get("simulated_seconds"))
    kind = "wall" if "wall_seconds" in t else "simulated"
    lines.append(f"{report['competition']}: {acc}, {t['tokens']} tokens, {secs:.1f}s {kind}")
    too_long = [str(r["id"]) for r in report["problems"] if _too_long(r)]
    if too_long:
        lines.append(f"{len(too_long)} problems longer than the context: {', '.join(too_long)} "
                     "(not attempted: the fallback answer)")
    cut = [str(r["id"]) for r in report["problems"] if r.get("prompt_cut")]
    if cut:
        lines.append(f"{len(cut)} problems cut to fit the context (start and end kept): {', '.join(cut)}")
    return "\n".join(lines)


def check_inputs(settings: Settings, problem_ids: list[str] | None = None) -> list[str]:
    """Stop a run before it starts when an input cannot work; return warnings for ones that half work.

    Raises FileNotFoundError or ValueError naming the setting and the path: a model folder that does not exist or
    holds no config.json, 4-bit weights that vLLM cannot serve on this CPU, a traces file that is missing or holds
    none of `problem_ids`. Used by the local gateway and by the Kaggle notebook before it hands `predict` over.
    """
    warnings = []
    if settings.engine in ("vllm", "transformers"):
        model = Path(settings.model)
        first = Path(settings.model).parts[0] if Path(settings.model).parts else ""
        hub_id = (not model.is_absolute() and len(model.parts) == 2 and not settings.model.startswith(".")
                  and not Path(first).exists() and not (REPO / first).exists())
        if not model.exists() and not hub_id:
            raise FileNotFoundError(f"model: no such folder {settings.model} (set --model to a model folder)")
        if hub_id and not model.exists() and not _hub_model_available(settings.model):
            raise FileNotFoundError(f"model: {settings.model} is no local folder and the Hugging Face hub cannot be "
                                    "reached (offline, and not in the hub cache): set --model to a model folder")
        if model.exists() and not (model / "config.json").is_file():
            raise FileNotFoundError(f"model: {settings.model} is not a model folder (no config.json)")
        if settings.engine == "vllm" and model.exists():
            from inference.cpu_features import is_4bit_checkpoint, vllm_serves_4bit

            serves, why = vllm_serves_4bit()
            if is_4bit_checkpoint(model) and not serves:
                raise ValueError(f"model: {settings.model} has 4-bit weights and {why}; serve it with "
                                 "--engine transformers (slower), or the full-precision model with vLLM")
    if settings.engine == "replay":
        from inference.engines.replay import load_traces

        traces = Path(settings.traces)
        if not traces.is_file():
            raise FileNotFoundError(f"traces: no such file {settings.traces}")
        recorded = {pid for pid, _ in load_traces(traces)}
        if problem_ids is not None:
            missing = [p for p in problem_ids if p not in recorded]
            if len(missing) == len(problem_ids):
                raise ValueError(
                    f"traces: {settings.traces} hold none of the {len(problem_ids)} problems served (traces have "
                    f"{', '.join(sorted(recorded)[:3])}…; problems {', '.join(problem_ids[:3])}…): "
                    "pass --problems "
                    "with the file the traces were recorded on")
            if missing:
                warnings.append(f"traces: {settings.traces} hold no samples of {len(missing)} of the "
                                f"{len(problem_ids)} problems ({', '.join(missing[:3])}…): those get the fallback")
    return warnings


def _hub_model_available(repo_id: str, timeout: float = 3.0) -> bool:
    """Whether a hub id can load: its config is in the local hub cache, or the hub answers within `timeout` seconds
    (offline, transformers and vLLM would otherwise spend half a minute on retries before the same error)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return True
    except Exception:  # noqa: BLE001 - a malformed id: let the engine name it
        return True
    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    reached = threading.Event()

    def probe() -> None:  # on a thread: name resolution has no timeout of its own
        import socket

        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            reached.set()
        except OSError:
            pass

    threading.Thread(target=probe, name="hub-probe", daemon=True).start()
    return reached.wait(timeout)


@contextlib.contextmanager
def engine_logs_to(path: Path | None):
    """Send everything written to the process's stdout/stderr file descriptors to `path` (None: leave them), and
    yield (console_out, console_err) streams that still reach the terminal. File descriptors, not sys.stdout: vLLM's
    engine core is a subprocess that inherits them."""
    if path is None:
        yield sys.stdout, sys.stderr
        return
    try:
        fds = (sys.stdout.fileno(), sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # streams replaced (a test's capture): nothing to redirect
        fds = None
    if fds != (1, 2):
        yield sys.stdout, sys.stderr
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console_out = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    console_err = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        yield console_out, console_err
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        console_out.close()
        console_err.close()


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("  | " + line for line in text[-lines:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="inference settings YAML (default: configs/inference/<competition>.yaml "
                        "with --competition, else configs/inference/demo.yaml)")
    parser.add_argument("--problems", help="CSV/JSONL with id, problem[, answer] (default: the config's)")
    competitions = sorted(p.stem for p in (REPO / "configs" / "competitions").glob("*.yaml"))
    parser.add_argument("--competition", choices=competitions,
                        help="competition rules and, without --config, its settings")
    parser.add_argument("--engine", choices=["vllm", "transformers", "replay"])
    parser.add_argument("--model", help="model directory")
    parser.add_argument("--traces", help="traces JSONL for the replay engine")
    parser.add_argument("--virtual-clock", action="store_true", help="replay in simulated time")
    parser.add_argument("--budget-seconds", type=float, help="whole-run limit (default: the competition's 5 h)")
    parser.add_argument("--seed", type=int, default=0, help="problem order and sampling seed")
    parser.add_argument("--submission", default="submission.parquet")
    parser.add_argument("--report", default="report.json")
    parser.add_argument("--record-traces", help="write every sample to this traces JSONL")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set sampling.samples=4 (repeatable)")
    parser.add_argument("--log", default=DEFAULT_LOG, help=f"engine logs go here (default {DEFAULT_LOG})")
    parser.add_argument("--verbose", action="store_true", help="show the engine logs instead of writing them to --log")
    args = parser.parse_args(argv)
    if args.budget_seconds is not None and not args.budget_seconds > 0:
        print(f"error: --budget-seconds must be > 0 (the whole run's limit in seconds), got {args.budget_seconds:g}",
              file=sys.stderr)
        return 2

    from inference.server import Predictor  # after argument parsing: --help stays fast

    config = args.config or (REPO / "configs" / "inference" / f"{args.competition}.yaml" if args.competition
                             else DEFAULT_CONFIG)
    try:
        overrides = dict(parse_override(s) for s in args.set)
        overrides.setdefault("sampling.seed", args.seed)
        settings = load_settings(
            config, overrides, competition=args.competition, engine=args.engine, model=args.model,
            traces=args.traces, virtual_clock=True if args.virtual_clock else None,
            record_traces=args.record_traces,
        )
        problems_path = args.problems or settings.problems
        if not problems_path:
            raise ValueError(f"no problems: pass --problems or set `problems` in {config}")
        problems = read_problems(problems_path)
        warnings = check_inputs(settings, problems["id"].to_list())
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)

    source = (f"traces {settings.traces}" if settings.engine == "replay" else f"model {settings.model}")
    print(f"local gateway: {problems.height} problems from {problems_path}, competition {settings.competition.name}, "
          f"settings {Path(settings.source).name}, engine {settings.engine} ({source})"
          + (", virtual clock" if settings.virtual_clock else ""), flush=True)
    log_path = None if args.verbose or settings.engine == "replay" else Path(args.log)
    if log_path is not None:
        print(f"engine logs → {log_path} (--verbose shows them)", flush=True)
    budget = args.budget_seconds
    t0 = time.monotonic()
    with engine_logs_to(log_path) as (out, err), Interrupt() as interrupt:
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        predictor = Predictor(settings, total_seconds=budget, problems=problems.height)
        interrupt.on_stop.append(predictor.interrupt)  # the engine core got the same SIGINT: not a crash

        def predict(id_, problem):  # a plain function named predict, as Kaggle requires
            return predictor.predict(id_, problem)

        def details(pid: str) -> dict:
            record = predictor.results[pid].to_report()
            cut = getattr(predictor._engine, "prompt_cuts", {}).get(pid)  # a prompt fitted to the model's context
            return record | ({"prompt_cut": cut} if cut else {})

        live = out.isatty() and not settings.virtual_clock
        display = ProgressDisplay(problems.height, budget or settings.competition.total_seconds, out) if live else None
        try:
            report = run_gateway(predict, problems, settings.competition, seed=args.seed,
                                 submission_path=args.submission, report_path=args.report, budget_seconds=budget,
                                 clock=predictor.clock, details=details,
                                 startup=predictor.solver, show=lambda line: print(line, file=out, flush=True),
                                 display=display, stop=interrupt.stop)
        except GatewayError as e:
            print(f"gateway error {e.kind}: {e.details}", file=err, flush=True)
            if log_path is not None:
                print(f"last lines of {log_path}:\n{_tail(log_path)}", file=err, flush=True)
            return 1
        finally:
            if interrupt.is_set():  # the engine core is going down on the same SIGINT: do not wait long on it
                stopper = threading.Thread(target=predictor.shutdown, name="shutdown", daemon=True)
                stopper.start()
                stopper.join(timeout=3.0)
            else:
                predictor.shutdown()
        if report.get("interrupted"):
            print(f"interrupted: kept the {len(report['problems'])} of {report['problems_total']} problems answered "
                  f"in {args.submission} and {args.report} (marked partial)", file=err, flush=True)
            return EXIT_CODE
        print(f"wrote {args.submission} and {args.report} in {time.monotonic() - t0:.1f}s", file=out, flush=True)
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "main"
    code = main()
    if code == EXIT_CODE:
        exit_now(code)  # a solve still inside the engine is not waited for
    sys.exit(code)
