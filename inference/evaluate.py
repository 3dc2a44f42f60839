"""Evaluate a model on a problem set with k samples per problem, and record every sample as a replayable trace.

    python inference/evaluate.py --model models/toy-math --problems configs/toy/demo_problems.csv -k 8 \\
        --config configs/inference/demo.yaml --traces runs/traces.jsonl --out runs/eval.json
    python inference/evaluate.py --model /path/to/14b --problems configs/data/aime2025.jsonl -k 16 \\
        --config configs/inference/aimo3.yaml --traces runs/aime25/traces.jsonl --out runs/aime25/eval.json

The samples come from the kit's own engines and prompts (the settings' engine, `Solver.requests`), with no early stop:
all k are submitted and every one runs to its end (`--stop-rule none` by default, so inference/simulate.py can
replay any stop rule on the full text later; DeepConf's `voting.confidence_stop` terminates nothing here either, but
its logprobs are requested, so each trace carries the compact confidence summary `conf_window`, `conf_windows`,
`conf_min`, `conf_tail` that the replay engine terminates on). Reported: pass@1 (mean ± SD over problems, and the
unbiased pass@j estimate for j = 1, 2, 4 … k), maj@k, mean tokens of correct and of wrong samples, finish reasons,
time and n.

Grading: integer answers (AIME, AIMO) go through `inference.answers.extract_answer` exactly as the server votes;
a set with any non-integer gold answer (MATH-500) is graded with math-verify (`inference.grading.grade`), and its
majority vote groups equivalent answers (`is_equivalent`). Every sample goes to the traces JSONL in the replay
format (problem_id, sample, text, tokens, seconds, finish_reason, variant, seed) plus answer, correct and gold.

`seconds` in the traces is time on the engine from submission to finish. It reflects the server's situation (one
problem's k samples at once) only with `--concurrent-problems 1`, the default.

The engines' own logs (vLLM's, its engine core included) go to `--log` (default runs/evaluate.log); `--verbose` shows
them. On a terminal one progress bar shows the problems done; otherwise a line per problem. Ctrl-C stops the run:
the problems finished so far are kept in the traces and the report (marked partial), exit status 130; a second
Ctrl-C quits at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python inference/evaluate.py` from anywhere

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Iterator  # noqa: E402

import yaml  # noqa: E402

from inference.answers import STOP_RULES, extract_answer, last_boxed, parse_integer  # noqa: E402
from inference.grading import grade, is_equivalent  # noqa: E402
from inference.clock import RealClock  # noqa: E402
from inference.config import REPO, Settings, load_settings, parse_override  # noqa: E402
from inference.engines.base import Engine, EngineError, Sample, SampleRequest  # noqa: E402
from inference.interrupt import EXIT_CODE, Interrupt, exit_now  # noqa: E402
from inference.solver import Solver  # noqa: E402
from inference.voting import Votes  # noqa: E402

log = logging.getLogger("inference.evaluate")
DEFAULT_CONFIG = REPO / "configs" / "inference" / "demo.yaml"
DEFAULT_LOG = "runs/evaluate.log"


# -- grading -------------------------------------------------------------------------------------------------------
def grading_mode(golds: list[str], settings: Settings) -> str:
    """"integer" when every gold answer is an integer the competition accepts, else "math" (math-verify)."""
    spec = settings.competition.answer
    ints = [parse_integer(g) for g in golds]
    return "integer" if all(i is not None and spec.min <= i <= spec.max for i in ints) else "math"


def grade_sample(text: str, gold: str | None, mode: str, settings: Settings) -> tuple[object, bool | None]:
    """(the sample's answer, whether it is correct); correct is None without a usable gold answer."""
    if mode == "integer":  # exactly the server's vote: the competition's range and modulus
        spec = settings.competition.answer
        return extract_answer(text, spec), (None if gold is None else grade(text, gold, spec))
    return last_boxed(text), (None if gold is None else grade(text, gold))


def majority(answers: list, mode: str) -> object:
    """The majority answer: the server's vote for integers; for free-form answers, the largest group of
    mutually equivalent answers (first seen wins a tie)."""
    if mode == "integer":
        return Votes.of(answers).leader()
    groups: list[list[str]] = []
    for a in answers:
        if a is None:
            continue
        for g in groups:
            if a == g[0] or is_equivalent(a, g[0]):
                g.append(a)
                break
        else:
            groups.append([a])
    return max(groups, key=len)[0] if groups else None


def pass_at(n: int, c: int, j: int) -> float:
    """Unbiased pass@j from n samples with c correct (Chen et al. 2021): 1 − C(n−c, j) / C(n, j)."""
    if n - c < j:
        return 1.0
    return 1.0 - math.comb(n - c, j) / math.comb(n, j)


# -- generation ----------------------------------------------------------------------------------------------------
def generate(engine: Engine, solver: Solver, problems: list[dict], k: int, concurrent: int = 1,
             timeout: float | None = None, stop: threading.Event | None = None) -> Iterator[tuple[dict, list[Sample]]]:
    """Yield (problem, its k samples in sample order) as problems complete; `concurrent` problems in flight.

    No early stop: a problem is done when all k samples finished (or, past `timeout` seconds, were aborted)."""
    queue = list(problems)
    active: dict[str, tuple[dict, float, list[Sample]]] = {}
    clock = engine.clock
    while queue or active:
        if stop is not None and stop.is_set():  # Ctrl-C: the problems in flight are dropped
            return
        while queue and len(active) < concurrent:
            p = queue.pop(0)
            engine.submit(full_samples(solver.requests(p["id"], p["problem"], 0, k)))
            active[p["id"]] = (p, clock.now(), [])
        for s in engine.poll(1.0):
            if s.problem_id in active:
                active[s.problem_id][2].append(s)
        for pid in list(active):
            p, started, samples = active[pid]
            if timeout is not None and len(samples) < k and clock.now() - started > timeout:
                samples.extend(engine.abort(pid))
            if len(samples) >= k:
                del active[pid]
                yield p, sorted(samples, key=lambda s: s.sample)


def full_samples(requests: list[SampleRequest]) -> list[SampleRequest]:
    """The requests without DeepConf termination: every sample runs to its end (its logprobs stay requested, so
    its trace carries the confidence summary a replay terminates on)."""
    for r in requests:
        r.confidence_stop = None
    return requests


def evaluate(settings: Settings, problems: list[dict], k: int, traces_path: str | Path, engine: Engine | None = None,
             concurrent: int = 1, timeout: float | None = None, show=print,
             stop: threading.Event | None = None) -> dict:
    """Run k samples per problem, write every sample to `traces_path`, return the report. Once `stop` is set
    (Ctrl-C) it stops, and the report of the problems finished so far says `"partial": true`."""
    from inference.server import build_engine

    if k < 1:
        raise ValueError(f"-k must be ≥ 1, got {k}")
    show = show or (lambda _line: None)
    golds = [p.get("answer") for p in problems]
    known = [g for g in golds if g is not None]
    mode = grading_mode(known, settings) if known else "integer"
    engine = engine or build_engine(settings, RealClock())
    solver = Solver(engine, settings)  # only for its requests: the server's exact prompts, variants and seeds
    traces_path = Path(traces_path)
    traces_path.parent.mkdir(parents=True, exist_ok=True)
    rows, sample_rows = [], []
    t0 = t1 = time.monotonic()
    load_seconds = 0.0
    try:
        engine.start()
        load_seconds = time.monotonic() - t0
        show(f"engine {settings.engine} ready in {load_seconds:.1f}s")
        t1 = time.monotonic()
        with traces_path.open("w") as f:
            for i, (p, samples) in enumerate(generate(engine, solver, problems, k, concurrent, timeout, stop), 1):
                gold = p.get("answer")
                graded = [grade_sample(s.text, gold, mode, settings) for s in samples]
                for s, (answer, correct) in zip(samples, graded):
                    record = s.to_trace()
                    record.update(answer=answer, correct=correct, gold=gold)
                    f.write(json.dumps(record) + "\n")
                    sample_rows.append(record)
                f.flush()
                maj = majority([a for a, _ in graded], mode)
                n_correct = sum(bool(c) for _, c in graded)
                row = {"id": p["id"], "gold": gold, "samples": len(samples), "correct": n_correct,
                       "pass@1": n_correct / len(samples) if gold is not None else None,
                       "maj": maj, "maj_correct": None if gold is None else _same(maj, gold, mode, settings),
                       "tokens_mean": round(statistics.fmean(s.tokens for s in samples), 1)}
                rows.append(row)
                show(f"[{i}/{len(problems)}] {p['id']}: {n_correct}/{len(samples)} correct, maj {maj} "
                     f"(gold {gold}), {row['tokens_mean']:.0f} tokens/sample")
    except EngineError:
        if stop is None or not stop.is_set():
            raise  # an engine crash; vLLM's engine core going down on the user's Ctrl-C is not one
    finally:
        if stop is not None and stop.is_set():  # the engine core got the same SIGINT: do not wait long on it
            stopper = threading.Thread(target=engine.shutdown, name="shutdown", daemon=True)
            stopper.start()
            stopper.join(timeout=3.0)
        else:
            engine.shutdown()
    seconds = time.monotonic() - t1
    out = report(rows, sample_rows, k, mode, settings, seconds, load_seconds)
    if stop is not None and stop.is_set():
        out.update(partial=True, interrupted=True)
    return out


def _same(answer: object, gold: str, mode: str, settings: Settings) -> bool:
    """Whether a (majority) answer matches the gold, by the kit's one scorer (grading.grade, as its samples and the
    simulator are graded): the answer is graded as the text of a sample boxing it."""
    if answer is None:
        return False
    spec = settings.competition.answer if mode == "integer" else None
    return bool(grade(f"\\boxed{{{answer}}}", gold, spec))


def report(rows: list[dict], samples: list[dict], k: int, mode: str, settings: Settings, seconds: float,
           load_seconds: float) -> dict:
    scored = [r for r in rows if r["gold"] is not None]
    per_problem = [r["pass@1"] for r in scored]
    correct_tokens = [s["tokens"] for s in samples if s["correct"]]
    wrong_tokens = [s["tokens"] for s in samples if s["correct"] is False]
    total_tokens = sum(s["tokens"] for s in samples)
    js = sorted({j for j in (1, 2, 4, 8, 16, 32, 64) if j <= k} | {k})
    out = {
        "n_problems": len(rows),
        "n_scored": len(scored),
        "k": k,
        "n_samples": len(samples),
        "grading": mode,
        "pass@1": None,
        "pass@k": None,
        "maj@k": None,
        "tokens": {"mean": round(total_tokens / max(1, len(samples)), 1),
                   "correct_mean": round(statistics.fmean(correct_tokens), 1) if correct_tokens else None,
                   "wrong_mean": round(statistics.fmean(wrong_tokens), 1) if wrong_tokens else None,
                   "total": total_tokens},
        "no_answer": round(sum(s["answer"] is None for s in samples) / max(1, len(samples)), 4),
        "finish_reasons": dict(Counter(s["finish_reason"] for s in samples)),
        "seconds": round(seconds, 2),
        "load_seconds": round(load_seconds, 2),
        "tokens_per_second": round(total_tokens / seconds, 1) if seconds > 0 else None,
        "engine": settings.engine,
        "model": settings.model,
        "competition": settings.competition.name,
        "sampling": vars(settings.sampling),
        "problems": rows,
    }
    if scored:
        sd = statistics.stdev(per_problem) if len(per_problem) > 1 else 0.0
        out["pass@1"] = {"mean": round(statistics.fmean(per_problem), 4), "sd": round(sd, 4),
                         "stderr": round(sd / math.sqrt(len(per_problem)), 4)}
        out["pass@k"] = {str(j): round(statistics.fmean(pass_at(r["samples"], r["correct"], j) for r in scored
                                                         if r["samples"] >= j), 4) for j in js}
        out["maj@k"] = round(statistics.fmean(bool(r["maj_correct"]) for r in scored), 4)
    return out


def format_report(r: dict) -> str:
    if r["pass@1"] is None:
        return (f"{r['n_problems']} problems × {r['k']} samples (no gold answers), "
                f"{r['tokens']['mean']:.0f} tokens/sample")
    p = r["pass@1"]
    lines = [f"{r['n_scored']} problems × {r['k']} samples ({r['grading']} grading), {r['seconds']:.1f}s, "
             f"{r['tokens_per_second']} tokens/s",
             f"pass@1 {p['mean']:.3f} ± {p['sd']:.3f} (SD over problems; stderr {p['stderr']:.3f})   "
             f"maj@{r['k']} {r['maj@k']:.3f}   pass@k " + ", ".join(f"{j}: {v:.3f}" for j, v in r["pass@k"].items()),
             f"tokens/sample {r['tokens']['mean']:.0f} (correct {r['tokens']['correct_mean']}, wrong "
             f"{r['tokens']['wrong_mean']}), no answer {r['no_answer']:.1%}, finish {r['finish_reasons']}"]
    return "\n".join(lines)


def read_problem_list(path: str | Path, limit: int | None = None) -> list[dict]:
    from inference.local_gateway import read_problems

    df = read_problems(path)
    if limit is not None:
        df = df.head(limit)
    return df.to_dicts()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: the config's)")
    parser.add_argument("--problems", required=True, help="CSV/JSONL with id, problem, answer")
    parser.add_argument("-k", type=int, default=8, help="samples per problem")
    parser.add_argument("--engine", choices=["vllm", "transformers"], help="default: the config's")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="inference settings YAML (prompts, sampling)")
    parser.add_argument("--competition", choices=["aimo2", "aimo3"], help="answer range rules (default: the config's)")
    parser.add_argument("--max-tokens", type=int, help="override sampling.max_tokens")
    parser.add_argument("--stop-rule", default="none", choices=STOP_RULES,
                        help="per-sample stop (default none: record full samples, any rule can be replayed)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--limit", type=int, help="only the first N problems")
    parser.add_argument("--concurrent-problems", type=int, default=1)
    parser.add_argument("--timeout-seconds", type=float, help="abort a problem's samples after this long")
    parser.add_argument("--traces", default="runs/traces.jsonl", help="every sample, in the replay format")
    parser.add_argument("--out", default="runs/eval.json", help="the report")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--log", default=DEFAULT_LOG, help=f"engine logs go here (default {DEFAULT_LOG})")
    parser.add_argument("--verbose", action="store_true", help="show the engine logs (with --workers: Ray's too) "
                        "instead of writing them to a file")
    parser.add_argument("--workers", type=int, help="N engine replicas on Ray (inference/distributed.py); the traces "
                        "file is resumed")
    parser.add_argument("--ray-address", help="with --workers: join this Ray cluster ('auto': the local node's)")
    args = parser.parse_args(argv)

    try:
        if args.k < 1:
            raise ValueError(f"-k must be ≥ 1, got {args.k}")
        overrides = dict(parse_override(s) for s in args.set)
        overrides.update({"sampling.samples": args.k, "sampling.stop_rule": args.stop_rule,
                          "sampling.seed": args.seed})
        if args.max_tokens is not None:
            overrides["sampling.max_tokens"] = args.max_tokens
        if args.engine and not any(s.startswith("engine_args") for s in args.set):
            file_engine = (yaml.safe_load(Path(args.config).read_text()) or {}).get("engine")
            if file_engine != args.engine:  # the config's engine_args belong to its own engine
                overrides["engine_args"] = {}
        settings = load_settings(args.config, overrides, competition=args.competition, engine=args.engine,
                                 model=args.model)
        if settings.engine == "replay":
            raise ValueError(f"{args.config}: evaluate needs a model engine (vllm or transformers), not replay")
        problems = read_problem_list(args.problems, args.limit)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    print(f"evaluate: {len(problems)} problems from {args.problems} × {args.k} samples, engine {settings.engine} "
          f"({settings.model}), max_tokens {settings.sampling.max_tokens}", flush=True)
    if args.workers is not None:
        return _main_distributed(args, settings, problems)
    from inference.local_gateway import engine_logs_to

    log_path = None if args.verbose else Path(args.log)
    if log_path is not None:
        print(f"engine logs → {log_path} (--verbose shows them)", flush=True)
    with engine_logs_to(log_path) as (out, err), Interrupt() as interrupt:
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        show, bar = _console(out, len(problems))
        try:
            result = evaluate(settings, problems, args.k, args.traces, concurrent=args.concurrent_problems,
                              timeout=args.timeout_seconds, show=show, stop=interrupt.stop)
        finally:
            if bar is not None:
                bar.close()
        result["problems_file"] = str(args.problems)
        result["traces"] = str(args.traces)
        result["config"] = str(args.config)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        if result.get("interrupted"):
            print(f"interrupted: kept the {result['n_problems']} of {len(problems)} problems finished in "
                  f"{args.traces} and {args.out} (marked partial)", file=err, flush=True)
            return EXIT_CODE
        print(format_report(result), file=out)
        print(f"wrote {args.traces} and {args.out}", file=out, flush=True)
    return 0


def _console(out, total: int):
    """(show, bar): on a terminal one progress bar (problems done, the last result), else a line per problem."""
    if not out.isatty():
        return (lambda line: print(line, file=out, flush=True)), None
    from tqdm import tqdm

    bar = tqdm(total=total, file=out, unit="problem", desc="evaluate ", dynamic_ncols=True,
               bar_format="{desc}{bar:24} {n_fmt}/{total_fmt} problems · {elapsed}<{remaining}{postfix}")
    bar.set_postfix_str("loading model", refresh=True)

    def show(line: str) -> None:
        if line.startswith("["):  # a problem done: "[i/n] id: c/k correct, maj …"
            bar.update(1)
            line = line.split(": ", 1)[-1]
        bar.set_postfix_str(line, refresh=True)

    return show, bar


def _main_distributed(args, settings: Settings, problems: list[dict]) -> int:
    """--workers N: the same report and traces from N engine replicas on Ray."""
    from inference.distributed import evaluate_distributed

    if args.timeout_seconds is not None:
        print("error: --timeout-seconds is not supported with --workers (every sample runs to its end)",
              file=sys.stderr)
        return 2
    try:
        result = evaluate_distributed(settings, problems, args.k, args.traces, args.workers, args.ray_address,
                                      verbose=args.verbose)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: the finished samples are in {args.traces}; rerun the same command to complete it",
              file=sys.stderr)
        return 130
    result.update(problems_file=str(args.problems), traces=str(args.traces), config=str(args.config))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(format_report(result))
    print(f"wrote {args.traces} and {args.out}")
    return 0


if __name__ == "__main__":
    code = main()
    if code == EXIT_CODE:
        exit_now(code)  # nothing left to wait for once the traces and report are written
    sys.exit(code)
