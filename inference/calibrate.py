"""Fit the early-stop table on recorded traces: how often the leader at each point of a problem's finishing order
is not the answer all its samples would have voted, so a stop rule can stop early only where that risk is small.

    python -m inference.calibrate --traces runs/traces.jsonl --samples 16 --out runs/stop_table.json
    python -m inference.calibrate --traces a.jsonl b.jsonl --check held_out.jsonl   # fit on a, b; test on held_out

The voting model of `voting.kind: calibrated` treats the samples still running as exchangeable with the finished
ones; they are not (the first to finish are the short ones, and shorter samples differ in accuracy). This table
conditions on the finishing order instead: for each recorded problem, `draws` times, `samples` of its recorded
samples are drawn and sorted by when they finish (`--order seconds`: their recorded seconds; `tokens`: their length,
the order under a speed profile, where running samples share the throughput equally). After each finished sample
the tally gives a cell (leader's votes, runner-up's votes, samples finished); the cell's risk is how often its
leader differs from the majority of all `samples` drawn. Each problem counts once per cell (its draws averaged), and
risk = (Σ problems' rates + 1) / (problems + 2), so a cell few problems reach is never trusted.

The policy reads the table through `voting.stop_table` (a path) and `voting.max_risk`: a stop with the leader at 2
votes or fewer happens only in a cell whose risk is at most max_risk (inference/voting.py, StopTable).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from inference.answers import AnswerSpec, extract_answer
from inference.config import Competition
from inference.engines.replay import load_traces
from inference.voting import StopTable, Votes

ORDERS = ("seconds", "tokens")


def problem_samples(paths: list[str], spec: AnswerSpec) -> dict[str, list[tuple[float, float, int | None]]]:
    """problem → its recorded samples as (seconds, tokens, answer), from one or more traces files."""
    out: dict[str, list[tuple[float, float, int | None]]] = defaultdict(list)
    for i, path in enumerate(paths):
        for (pid, _), r in sorted(load_traces(path).items()):
            key = pid if len(paths) == 1 else f"{i}:{pid}"  # the same id in two files is two problems
            out[key].append((float(r["seconds"]), float(r["tokens"]), extract_answer(r["text"], spec)))
    return dict(out)


def cell_flips(samples: list[tuple[float, float, int | None]], n: int, draws: int, order: str,
               rng: random.Random) -> dict[tuple[int, int, int], list[float]]:
    """One problem: per cell (leader votes, runner-up votes, finished), the share of its draws in which the leader
    there is not the majority of the n samples drawn."""
    by = 0 if order == "seconds" else 1
    hits: dict[tuple[int, int, int], list[int]] = defaultdict(lambda: [0, 0])  # cell → [visits, flips]
    n = min(n, len(samples))
    for _ in range(draws):
        drawn = sorted(rng.sample(samples, n), key=lambda s: s[by])
        final = Votes.of(s[2] for s in drawn).leader()
        votes = Votes()
        for finished, (_, _, answer) in enumerate(drawn, 1):
            votes.add(answer)
            ranking = votes.ranking()
            if not ranking:
                continue
            cell = (votes.counts[ranking[0]], votes.counts[ranking[1]] if len(ranking) > 1 else 0, finished)
            hits[cell][0] += 1
            hits[cell][1] += ranking[0] != final
    return {cell: [v, f / v] for cell, (v, f) in hits.items()}


def fit(paths: list[str], samples: int = 16, draws: int = 200, order: str = "seconds", seed: int = 0,
        competition: str = "aimo3") -> dict:
    """The stop table (a JSON-able dict; StopTable reads it) fitted on the traces in `paths`."""
    if order not in ORDERS:
        raise ValueError(f"--order: {order!r} is not one of {', '.join(ORDERS)}")
    if samples < 2 or draws < 1:
        raise ValueError(f"--samples must be ≥ 2 and --draws ≥ 1, got {samples} and {draws}")
    spec = Competition.load(competition).answer
    problems = problem_samples(paths, spec)
    rng = random.Random(seed)
    rates: dict[tuple[int, int, int], list[float]] = defaultdict(list)
    for pid in sorted(problems):
        for cell, (_, rate) in cell_flips(problems[pid], samples, draws, order, rng).items():
            rates[cell].append(rate)
    cells = [{"leader": c[0], "runner_up": c[1], "finished": c[2], "problems": len(r),
              "risk": round((sum(r) + 1) / (len(r) + 2), 4)} for c, r in sorted(rates.items())]
    return {"samples": samples, "order": order, "draws": draws, "seed": seed, "problems": len(problems),
            "traces": [str(p) for p in paths], "cells": cells}


def check(table: dict, paths: list[str], draws: int = 200, seed: int = 1, competition: str = "aimo3",
          max_leader: int = 2) -> list[dict]:
    """The table against other traces: for each cell with the leader at ≤ max_leader votes, its fitted risk, the
    flip rate those traces show (problems averaged), and the exchangeable Dirichlet model's risk for the same tally
    (1 − P(leader keeps the lead), voting.kind calibrated)."""
    from inference.voting import StopRule, leader_keeps_lead_probability

    spec = Competition.load(competition).answer
    problems = problem_samples(paths, spec)
    rng = random.Random(seed)
    observed: dict[tuple[int, int, int], list[float]] = defaultdict(list)
    for pid in sorted(problems):
        for cell, (_, rate) in cell_flips(problems[pid], table["samples"], draws, table["order"], rng).items():
            observed[cell].append(rate)
    fitted = {(c["leader"], c["runner_up"], c["finished"]): c for c in table["cells"]}
    rule = StopRule(kind="calibrated")
    rows = []
    for cell in sorted(set(fitted) & set(observed)):
        leader, runner, finished = cell
        if leader > max_leader or len(observed[cell]) < 3:
            continue
        tally = Votes.of([0] * leader + [1] * runner + [None] * (finished - leader - runner))
        exchangeable = 1 - leader_keeps_lead_probability(tally, table["samples"] - finished, rule)
        rows.append({"leader": leader, "runner_up": runner, "finished": finished, "fitted": fitted[cell]["risk"],
                     "observed": round(statistics.fmean(observed[cell]), 4), "problems": len(observed[cell]),
                     "exchangeable": round(exchangeable, 4)})
    return rows


def dump(table: dict) -> str:
    """The table as JSON, one cell per line."""
    head = {k: v for k, v in table.items() if k != "cells"}
    cells = ",\n".join("  " + json.dumps(c) for c in table["cells"])
    return json.dumps(head)[:-1] + ', "cells": [\n' + cells + "\n]}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", nargs="+", required=True, help="traces JSONL (evaluate.py's output)")
    parser.add_argument("--samples", type=int, default=16, help="samples launched per problem (the policy's)")
    parser.add_argument("--draws", type=int, default=200, help="random draws of `samples` per problem")
    parser.add_argument("--order", choices=ORDERS, default="seconds", help="finishing order by recorded seconds "
                        "(recorded timing) or by tokens (a speed profile)")
    parser.add_argument("--competition", default="aimo3", choices=["aimo2", "aimo3"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the table JSON here (voting.stop_table reads it)")
    parser.add_argument("--check", nargs="+", metavar="TRACES", help="held-out traces: fitted vs observed risk")
    parser.add_argument("--max-risk", type=float, default=0.05, help="report the 2-vote cells at or below this")
    args = parser.parse_args(argv)
    try:
        table = fit(args.traces, args.samples, args.draws, args.order, args.seed, args.competition)
        StopTable(table, "fitted table")  # the policy must be able to read what we write
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(dump(table))
            print(f"wrote {args.out} ({len(table['cells'])} cells, {table['problems']} problems)")
        safe = [c for c in table["cells"] if c["leader"] == 2 and c["risk"] <= args.max_risk]
        print(f"cells where 2 votes may stop (risk ≤ {args.max_risk}): "
              + (", ".join(f"{c['leader']}-{c['runner_up']} after {c['finished']}" for c in safe) or "none"))
        if args.check:
            rows = check(table, args.check, args.draws, args.seed + 1, args.competition)
            print(f"{'cell':>14} {'fitted':>7} {'held-out':>8} {'exchangeable':>12} {'problems':>8}")
            for r in rows:
                print(f"{r['leader']}-{r['runner_up']} after {r['finished']:>2} {r['fitted']:>7.3f} "
                      f"{r['observed']:>8.3f} {r['exchangeable']:>12.3f} {r['problems']:>8}")
            if rows:
                err = statistics.fmean(abs(r["fitted"] - r["observed"]) for r in rows)
                ex = statistics.fmean(abs(r["exchangeable"] - r["observed"]) for r in rows)
                print(f"mean |fitted − held-out| {err:.3f}; exchangeable model {ex:.3f} ({len(rows)} cells)")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
