"""Plot the training curves a run logged to TensorBoard (`report_to: tensorboard`): SFT loss, and for GRPO the
loss, each reward, the mean completion length and the share of completions cut at max_completion_length.

    python -m train.curves --sft runs/toy/seed0/sft --grpo runs/toy/seed0/grpo --out train/toy_curves.png

Reads the event files with TensorBoard's own reader (every `runs/*` directory under the run, a resumed run's too).
"""

from __future__ import annotations

import argparse
from pathlib import Path

SFT_TAGS = ("train/loss",)
GRPO_TAGS = ("train/loss", "train/reward", "train/completions/mean_length", "train/completions/clipped_ratio")
REWARD_PREFIX = "train/rewards/"


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """tag → [(step, value)] of every TensorBoard event file under `run_dir`, ordered by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(run_dir).rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no TensorBoard event files (was the run made with report_to: tensorboard?)")
    scalars: dict[str, dict[int, float]] = {}
    for f in files:
        events = EventAccumulator(str(f), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            for e in events.Scalars(tag):
                scalars.setdefault(tag, {})[e.step] = e.value
    return {tag: sorted(points.items()) for tag, points in scalars.items()}


def plot(sft: str | Path | None, grpo: str | Path | None, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, dict, str]] = []  # (stage, its scalars, tag): one plot each, 4 to a row
    if sft:
        scalars = read_scalars(sft)
        panels += [("SFT", scalars, tag) for tag in SFT_TAGS if tag in scalars]
    if grpo:
        scalars = read_scalars(grpo)
        rewards = sorted(t for t in scalars if t.startswith(REWARD_PREFIX) and t.endswith("/mean"))
        tags = [GRPO_TAGS[0], GRPO_TAGS[1], *rewards, *GRPO_TAGS[2:]]
        panels += [("GRPO", scalars, tag) for tag in tags if tag in scalars]
    if not panels:
        raise ValueError("give --sft and/or --grpo (runs with TensorBoard scalars)")
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (stage, scalars, tag) in zip(axes.flat, panels):
        steps, values = zip(*scalars[tag], strict=True)
        ax.plot(steps, values, marker=".", linewidth=1)
        ax.set_title(f"{stage}: {tag.removeprefix('train/').removesuffix('/mean')}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", help="an SFT output_dir")
    parser.add_argument("--grpo", help="a GRPO output_dir")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    print(f"wrote {plot(args.sft, args.grpo, args.out)}")


if __name__ == "__main__":
    main()
