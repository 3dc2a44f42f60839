"""Training curves (train/curves.py): the scalars a run wrote to TensorBoard are read back exactly and plotted.

    .venv/bin/python -m pytest tests/test_curves.py -q
"""

from __future__ import annotations

import pytest

from train.curves import plot, read_scalars


def test_scalars_are_read_back_and_plotted(tmp_path):
    from torch.utils.tensorboard import SummaryWriter  # what transformers' TensorBoardCallback writes with

    writer = SummaryWriter(log_dir=str(tmp_path / "grpo" / "runs" / "a"))
    for step in (1, 2, 3):
        writer.add_scalar("train/loss", 1.0 / step, step)
        writer.add_scalar("train/reward", float(step), step)
        writer.add_scalar("train/rewards/length_reward/mean", -0.5 * step, step)
        writer.add_scalar("train/completions/mean_length", 100.0 - step, step)
    writer.close()

    scalars = read_scalars(tmp_path / "grpo")
    assert scalars["train/rewards/length_reward/mean"] == [(1, -0.5), (2, -1.0), (3, -1.5)]
    out = plot(None, tmp_path / "grpo", tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars(tmp_path / "empty")
