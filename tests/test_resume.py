"""Kill an SFT run after its first checkpoint, run the same command again: it resumes from the checkpoint and
finishes.

    .venv/bin/python -m pytest tests/test_resume.py -q
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from train.toy.task import make_problem, make_trace

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS, SAVE_STEPS = 60, 10


def sft_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "train.sft", "--config", str(config)]


@pytest.mark.slow
def test_sft_resumes_after_a_kill(tiny_model_dir, tmp_path):
    rng = random.Random(0)
    problems = [make_problem(rng, i) for i in range(66)]
    data, held_out = tmp_path / "sft.jsonl", tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"problem": p.problem, "generation": make_trace(p, 1), "answer": p.answer})
                            + "\n" for p in problems[:64]))
    held_out.write_text("".join(json.dumps({"problem": p.problem, "answer": p.answer}) + "\n" for p in problems[64:]))
    out = tmp_path / "out"
    recipe = yaml.safe_load((REPO / "configs/toy/sft.yaml").read_text())
    recipe |= {
        "model_name_or_path": str(tiny_model_dir), "output_dir": str(out),
        "dataset_sources": [{"path": str(data), "label": "toy"}], "eval_file": str(held_out), "eval_limit": 2,
        "accuracy_eval_max_new_tokens": 8, "max_steps": MAX_STEPS, "save_strategy": "steps",
        "save_steps": SAVE_STEPS, "save_total_limit": None, "per_device_train_batch_size": 8, "logging_steps": 5,
    }
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump(recipe))
    env = os.environ | {"PYTHONPATH": str(REPO)}

    # First run: killed (SIGKILL, no chance to clean up) once its first checkpoint is complete.
    first = subprocess.Popen(sft_command(config), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    first_state = out / f"checkpoint-{SAVE_STEPS}" / "trainer_state.json"
    deadline = time.monotonic() + 180
    try:
        while not first_state.exists():
            assert first.poll() is None, "the first run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.1)
        time.sleep(0.5)  # let the checkpoint's last files land
        assert first.poll() is None, "the first run finished before it could be killed"
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    saved = sorted(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json"))
    assert saved and max(saved) < MAX_STEPS
    newest = f"checkpoint-{max(saved)}"
    first_run_files = {p: p.stat().st_mtime_ns for p in out.glob("checkpoint-*/*")
                       if int(p.parent.name.split("-")[1]) <= max(saved)}

    # Second run, same command: resumes from the newest checkpoint and finishes.
    second = subprocess.run(sft_command(config), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {out / newest}" in second.stderr
    final_state = json.loads((out / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    assert final_state["global_step"] == MAX_STEPS
    # The second run did not redo the first run's steps: their checkpoints are untouched, and the history (carried
    # over from the checkpoint) has each logged step once.
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in first_run_files.items())
    train_log = [h for h in final_state["log_history"] if "loss" in h]
    assert [h["step"] for h in train_log] == list(range(5, MAX_STEPS + 1, 5))
    evaluated = [h["accuracy_eval"]["step"] for h in final_state["log_history"] if "accuracy_eval" in h]
    assert evaluated == list(range(SAVE_STEPS, MAX_STEPS + 1, SAVE_STEPS))
    assert (out / "model.safetensors").exists()
