"""Plots of evaluation and simulation results (matplotlib, Agg backend, PNG).

    python inference/plots.py accuracy-vs-tokens runs/ckpt1/traces.jsonl runs/ckpt2/traces.jsonl --out runs/acc.png
    python inference/plots.py score-vs-budget runs/sim.json --out runs/budget.png

- accuracy vs tokens, one line per model: from a traces file (evaluate.py's, with `correct`), pass@1 when every
  sample is capped at a token budget (a sample longer than the cap counts as unanswered), against the mean tokens
  spent; an eval JSON adds its single (mean tokens, pass@1) point.
- simulated score vs time budget, one line per policy (± 1 SD band): from simulate.py's `budget_sweep`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python inference/plots.py` from anywhere

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402

import matplotlib  # noqa: E402

from inference.engines.replay import load_traces  # noqa: E402

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def accuracy_at_caps(traces_path: str | Path, caps: list[int] | None = None) -> list[tuple[float, float]]:
    """(mean tokens per sample, pass@1) with every sample capped at each budget; needs `correct` in the traces."""
    samples = list(load_traces(traces_path).values())  # checks every record, naming file and line
    if not samples:
        raise ValueError(f"{traces_path}: no samples")
    if any("correct" not in s for s in samples):
        raise ValueError(f"{traces_path}: samples without a `correct` field (record them with inference/evaluate.py)")
    longest = max(s["tokens"] for s in samples)
    if caps is None:
        caps, c = [], max(1, longest)
        while c >= max(1, longest // 64):  # halving down from the longest sample
            caps.append(c)
            c //= 2
        caps = sorted(set(caps))
    points = []
    for cap in caps:
        tokens = statistics.fmean(min(s["tokens"], cap) for s in samples)
        accuracy = statistics.fmean(bool(s["correct"]) and s["tokens"] <= cap for s in samples)
        points.append((tokens, accuracy))
    return points


def plot_accuracy_vs_tokens(sources: list[str | Path], out: str | Path, title: str = "accuracy vs tokens") -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, src in enumerate(sources):
        src = Path(src)
        label = src.parent.name if src.stem in ("traces", "eval") else src.stem  # runs/<model>/traces.jsonl
        if src.suffix == ".json":  # an eval report: one point
            r = json.loads(src.read_text())
            if r.get("pass@1") is None:
                raise ValueError(f"{src}: no pass@1 (no gold answers?)")
            ax.scatter([r["tokens"]["mean"]], [r["pass@1"]["mean"]], color=f"C{i}", marker="s", zorder=3,
                       label=f"{label} (eval, k={r['k']})")
        else:
            xs, ys = zip(*accuracy_at_caps(src))
            ax.plot(xs, ys, marker="o", color=f"C{i}", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("mean tokens per sample (samples capped at a budget)")
    ax.set_ylabel("pass@1")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    _save(fig, out)


def plot_score_vs_budget(sweep: dict[str, list[dict]], out: str | Path, title: str = "") -> None:
    """`sweep`: policy → [{"total_seconds", "score", "sd"}, ...] (simulate.budget_sweep)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in sweep.items():
        points = sorted(points, key=lambda p: p["total_seconds"])
        xs = [p["total_seconds"] / 3600 for p in points]
        ys = [p["score"] for p in points]
        sds = [p["sd"] for p in points]
        line, = ax.plot(xs, ys, marker="o", label=name)
        ax.fill_between(xs, [y - s for y, s in zip(ys, sds)], [y + s for y, s in zip(ys, sds)],
                        color=line.get_color(), alpha=0.12)
    ax.set_xlabel("time budget of the whole run (hours)")
    ax.set_ylabel("simulated score (mean ± SD over orders)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "simulated score vs time budget")
    _save(fig, out)


def _save(fig, out: str | Path) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="plot", required=True)
    acc = sub.add_parser("accuracy-vs-tokens", help="one line per traces file (or a point per eval JSON)")
    acc.add_argument("sources", nargs="+")
    acc.add_argument("--out", default="runs/accuracy_vs_tokens.png")
    bud = sub.add_parser("score-vs-budget", help="from simulate.py --budget-fractions ... --out sim.json")
    bud.add_argument("sim_json")
    bud.add_argument("--out", default="runs/score_vs_budget.png")
    args = parser.parse_args(argv)
    try:
        if args.plot == "accuracy-vs-tokens":
            plot_accuracy_vs_tokens(args.sources, args.out)
        else:
            result = json.loads(Path(args.sim_json).read_text())
            if "budget_sweep" not in result:
                raise ValueError(f"{args.sim_json}: no budget_sweep (run simulate.py with --budget-fractions)")
            plot_score_vs_budget(result["budget_sweep"], args.out,
                                 title=f"{result['competition']}, {result['hardware']}")
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
