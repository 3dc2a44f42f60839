"""The local gateway: Kaggle's serving protocol, validation and error kinds, submission file and report."""

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from inference.clock import VirtualClock
from inference.config import Competition, load_settings
from inference.local_gateway import GatewayError, main, read_problems, run_gateway
from inference.server import Predictor

REPO = Path(__file__).resolve().parents[1]

PROBLEMS = pl.DataFrame({"id": ["a1", "b2", "c3", "d4"], "problem": ["What is 1+1?", "x", "y", "z"],
                         "answer": ["2", "5", "7", "11"]})


def ok(id_, problem):
    return pl.DataFrame({"id": [id_.item(0)], "answer": [len(problem.item(0))]})


def run(predict, competition="aimo3", **kw):
    kw.setdefault("submission_path", None)
    kw.setdefault("show", None)
    return run_gateway(predict, PROBLEMS, competition, **kw)


def test_serves_one_row_series_on_a_worker_thread_in_seeded_order(tmp_path):
    seen = []

    def predict(id_, problem):
        assert isinstance(id_, pl.Series) and isinstance(problem, pl.Series)
        assert (id_.name, problem.name, len(id_)) == ("id", "problem", 1)
        seen.append((id_.item(0), threading.current_thread() is not threading.main_thread()))
        return pl.DataFrame({"id": id_, "answer": [0]})

    sub = tmp_path / "submission.parquet"
    run(predict, seed=1, submission_path=sub)
    order1 = [s[0] for s in seen]
    assert all(on_worker for _, on_worker in seen)
    assert sorted(order1) == sorted(PROBLEMS["id"])
    seen.clear()
    run(predict, seed=1)
    assert [s[0] for s in seen] == order1  # same seed, same order
    df = pl.read_parquet(sub)
    assert df.columns == ["id", "answer"] and df["id"].to_list() == order1  # served order


def test_answer_column_is_never_served():
    def predict(*args):
        assert len(args) == 2  # id and problem only
        return pl.DataFrame({"id": args[0], "answer": [2]})

    report = run(predict)
    assert report["totals"]["correct"] == 1  # only a1's gold is 2


@pytest.mark.parametrize(
    "ret, competition, kind",
    [
        (None, "aimo3", "INVALID_SUBMISSION"),
        ({"answer": 1}, "aimo3", "INVALID_SUBMISSION"),
        (pl.DataFrame({"id": ["x", "y"], "answer": [1, 2]}), "aimo3", "INVALID_SUBMISSION"),
        (7, "aimo3", "GATEWAY_RAISED_EXCEPTION"),  # passes per call, fails when the submission is written
        (pl.Series("answer", [7]), "aimo3", "GATEWAY_RAISED_EXCEPTION"),
        (7, "aimo2", "GATEWAY_RAISED_EXCEPTION"),  # len() of an int
        (pl.DataFrame({"answer": [7]}), "aimo2", "INVALID_SUBMISSION"),  # AIMO-2 needs the id column
        (pl.DataFrame({"id": ["wrong"], "answer": [7]}), "aimo2", "INVALID_SUBMISSION"),
    ],
)
def test_bad_return_values_fail_like_kaggle(ret, competition, kind):
    def predict(id_, problem):
        return ret

    with pytest.raises(GatewayError) as e:
        run(predict, competition)
    assert e.value.kind == kind


def test_accepted_return_forms():
    def predict(id_, problem):  # AIMO-3 adds the id itself
        return pl.DataFrame({"answer": [3]})

    assert run(predict)["totals"]["problems"] == 4

    def predict(id_, problem):  # noqa: F811 - pandas works too
        import pandas as pd

        return pd.DataFrame({"id": [id_.item(0)], "answer": [3]})

    assert run(predict, "aimo2")["totals"]["problems"] == 4


def test_predict_exception_fails_the_run():
    def predict(id_, problem):
        raise RuntimeError("boom in predict")

    with pytest.raises(GatewayError) as e:
        run(predict)
    assert (e.value.kind, e.value.details) == ("SERVER_RAISED_EXCEPTION", "boom in predict")


def test_endpoint_must_be_a_function_named_predict():
    def solve(id_, problem):
        return ok(id_, problem)

    for bad, comp in [(solve, "aimo3"), (lambda i, p: ok(i, p), "aimo2")]:
        with pytest.raises(GatewayError) as e:
            run(bad, comp)
        assert e.value.kind == "SERVER_MISSING_ENDPOINT"

    class Server:
        def predict(self, id_, problem):
            return ok(id_, problem)

    with pytest.raises(GatewayError) as e:
        run(Server().predict, "aimo3")  # 0.9.0 rejects bound methods
    assert e.value.kind == "SERVER_MISSING_ENDPOINT"
    assert run(Server().predict, "aimo2")["totals"]["problems"] == 4  # 0.3.0 accepts them


@pytest.mark.parametrize("competition, kind", [("aimo3", "GRPC_DEADLINE_EXCEEDED"), ("aimo2", "SERVER_CONNECTION_FAILED")])
def test_per_call_deadline_except_the_first_call(competition, kind):
    comp = dataclasses.replace(Competition.load(competition), per_call_seconds=0.3)
    calls = []

    def predict(id_, problem):
        calls.append(1)
        time.sleep(0.5 if len(calls) in (1, 2) else 0)  # the first call may be slow; the second may not
        return ok(id_, problem)

    with pytest.raises(GatewayError) as e:
        run(predict, comp)
    assert e.value.kind == kind and len(calls) == 2


def test_server_that_never_starts_and_the_run_limit():
    comp = dataclasses.replace(Competition.load("aimo3"), startup_seconds=0.2)
    with pytest.raises(GatewayError) as e:
        run(ok, comp, startup=lambda: time.sleep(0.5))
    assert e.value.kind == "SERVER_NEVER_STARTED"

    clock = VirtualClock()

    def predict(id_, problem):
        clock.sleep(100)
        return ok(id_, problem)

    with pytest.raises(GatewayError) as e:
        run(predict, budget_seconds=250, clock=clock)
    assert e.value.kind == "NOTEBOOK_TIMEOUT"


def test_problems_file_errors_name_the_file_and_column(tmp_path):
    bad = tmp_path / "p.csv"
    bad.write_text("identifier,problem\n1,x\n")
    with pytest.raises(ValueError, match=r"p.csv has no 'id' column"):
        read_problems(bad)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_problems(tmp_path / "nope.csv")
    dup = tmp_path / "d.csv"
    dup.write_text("id,problem\n1,x\n1,y\n")
    with pytest.raises(ValueError, match="duplicate ids"):
        read_problems(dup)
    ids = tmp_path / "ids.csv"
    ids.write_text('id,problem\n000aaa,"What is $1-1$?"\n')
    assert read_problems(ids)["id"].to_list() == ["000aaa"]  # ids stay text


def test_full_run_with_the_kit_server_on_replayed_traces(tmp_path, write_traces, repo_root):
    problems = read_problems(repo_root / "configs/toy/demo_problems.csv")
    answers = {pid: [int(a)] * 6 + [int(a) + 1] * 2 for pid, a in zip(problems["id"], problems["answer"])}
    answers.pop(problems["id"][3])  # one problem was never recorded: it must still get an answer
    traces = write_traces(answers, seconds=[30, 40, 50, 60, 70, 80, 20, 25])
    settings = load_settings(repo_root / "configs/inference/demo.yaml", engine="replay", traces=str(traces),
                             virtual_clock=True)
    predictor = Predictor(settings, total_seconds=600, problems=problems.height)

    def predict(id_, problem):
        return predictor.predict(id_, problem)

    report = run_gateway(predict, problems, settings.competition, seed=3, budget_seconds=600, clock=predictor.clock,
                         submission_path=tmp_path / "s.parquet", report_path=tmp_path / "r.json",
                         details=lambda pid: predictor.results[pid].to_report(), show=None)
    assert report["totals"]["correct"] == 9 and report["totals"]["problems"] == 10
    saved = json.loads((tmp_path / "r.json").read_text())
    row = next(r for r in saved["problems"] if r["correct"])
    assert {"id", "answer", "gold", "correct", "samples", "votes", "tokens", "seconds", "stop_reason"} <= set(row)
    assert saved["totals"]["simulated_seconds"] <= 600
    sub = pl.read_parquet(tmp_path / "s.parquet")
    assert sub.height == 10 and sub.schema["answer"] == pl.Int64


def test_cli_replay_run_writes_submission_and_report(tmp_path, write_traces, repo_root, capsys):
    problems = read_problems(repo_root / "configs/toy/demo_problems.csv")
    traces = write_traces({pid: [int(a)] * 8 for pid, a in zip(problems["id"], problems["answer"])})
    code = main(["--engine", "replay", "--traces", str(traces), "--virtual-clock", "--seed", "5",
                 "--submission", str(tmp_path / "sub.parquet"), "--report", str(tmp_path / "rep.json")])
    out = capsys.readouterr().out
    assert code == 0
    assert "[10/10]" in out and "10/10 correct" in out
    assert pl.read_parquet(tmp_path / "sub.parquet").height == 10


def test_cli_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["--problems", str(tmp_path / "none.csv"), "--engine", "replay", "--traces", "x"]) == 2
    assert "none.csv" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("engine: replay\ntraces: t.jsonl\nsampling: {samplez: 3}\n")
    assert main(["--config", str(cfg), "--problems", "x.csv"]) == 2
    assert "samplez" in capsys.readouterr().err


def test_cli_transformers_engine_runs_the_vllm_demo_config(tmp_path, tiny_model_dir, capsys):
    """`--engine transformers` on a config written for vLLM: vLLM-only engine_args are dropped, the run completes."""
    problems = tmp_path / "p.csv"
    problems.write_text("id,problem,answer\na,What is 1 + 2?,3\nb,What is 2 + 2?,4\n")
    code = main(["--engine", "transformers", "--model", str(tiny_model_dir), "--problems", str(problems),
                 "--set", "sampling.samples=2", "--set", "sampling.max_tokens=16",
                 "--submission", str(tmp_path / "sub.parquet"), "--report", str(tmp_path / "rep.json")])
    assert code == 0, capsys.readouterr().err
    assert pl.read_parquet(tmp_path / "sub.parquet")["id"].to_list() in (["a", "b"], ["b", "a"])


def test_record_traces_writes_every_finished_sample_in_the_replay_format(tmp_path, write_traces, repo_root):
    from inference.engines.replay import load_traces

    problems = read_problems(repo_root / "configs/toy/demo_problems.csv")
    traces = write_traces({pid: [int(a)] * 8 for pid, a in zip(problems["id"], problems["answer"])})
    recorded = tmp_path / "out" / "recorded.jsonl"
    assert main(["--engine", "replay", "--traces", str(traces), "--virtual-clock", "--record-traces", str(recorded),
                 "--submission", str(tmp_path / "sub.parquet"), "--report", str(tmp_path / "rep.json")]) == 0
    report = json.loads((tmp_path / "rep.json").read_text())
    index = load_traces(recorded)  # valid replay input
    assert len(index) == sum(p["samples"] for p in report["problems"]) > 0
    assert {pid for pid, _ in index} == set(problems["id"])


# -- bad input stops a local run at once, naming the field or path ------------------------------------------------
@pytest.mark.parametrize("setting, message", [
    ("sampling.temperature=hot", "sampling.temperature: expected a number, got 'hot'"),
    ("sampling.samples=abc", "sampling.samples: expected an integer, got 'abc'"),
])
def test_cli_setting_of_the_wrong_type_stops_the_run(tmp_path, capsys, setting, message):
    assert main(["--set", setting, "--engine", "replay", "--traces", "x", "--report", str(tmp_path / "r.json")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "r.json").exists()


def test_cli_missing_model_folder_stops_the_run(tmp_path, capsys):
    for engine in ("vllm", "transformers"):
        assert main(["--engine", engine, "--model", str(tmp_path / "nope"), "--report", str(tmp_path / "r.json")]) == 2
        assert f"model: no such folder {tmp_path / 'nope'}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--engine", "vllm", "--model", str(tmp_path / "empty")]) == 2
    assert "is not a model folder (no config.json)" in capsys.readouterr().err
    assert main(["--engine", "vllm", "--model", "models/missing-model"]) == 2  # a repo folder, not a hub id
    assert "model: no such folder models/missing-model" in capsys.readouterr().err


def test_cli_engine_that_cannot_start_fails_before_serving(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # a model folder transformers cannot load
    code = main(["--engine", "transformers", "--model", str(broken), "--submission", str(tmp_path / "s.parquet"),
                 "--report", str(tmp_path / "r.json"), "--budget-seconds", "600"])
    captured = capsys.readouterr()
    assert code == 1 and "gateway error SERVER_NEVER_STARTED" in captured.err and str(broken) in captured.err
    assert "[1/" not in captured.out and not (tmp_path / "s.parquet").exists()  # no problem was served


def test_cli_replay_whose_traces_hold_none_of_the_problems_says_so(tmp_path, write_traces, capsys):
    traces = write_traces({"other-1": [3] * 4, "other-2": [4] * 4})
    assert main(["--engine", "replay", "--traces", str(traces), "--virtual-clock",
                 "--report", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert f"traces: {traces} hold none of the 10 problems served" in err and "--problems" in err
    problems = read_problems(REPO / "configs/toy/demo_problems.csv")
    some = write_traces({problems["id"][0]: [int(problems["answer"][0])] * 8}, name="some.jsonl")
    assert main(["--engine", "replay", "--traces", str(some), "--virtual-clock", "--submission",
                 str(tmp_path / "s.parquet"), "--report", str(tmp_path / "r.json")]) == 0
    assert "hold no samples of 9 of the 10 problems" in capsys.readouterr().err


def test_cli_competition_selects_its_own_settings(tmp_path, write_traces, capsys):
    problems = read_problems(REPO / "configs/toy/demo_problems.csv")
    traces = write_traces({pid: [int(a)] * 8 for pid, a in zip(problems["id"], problems["answer"])})
    args = ["--engine", "replay", "--traces", str(traces), "--virtual-clock", "--problems",
            str(REPO / "configs/toy/demo_problems.csv"), "--submission", str(tmp_path / "s.parquet")]
    assert main(args + ["--competition", "aimo2", "--report", str(tmp_path / "a2.json")]) == 0
    out = capsys.readouterr().out
    assert "competition aimo2, settings aimo2.yaml, engine replay (traces " in out and "models/" not in out
    assert main(args + ["--report", str(tmp_path / "demo.json")]) == 0
    assert "competition aimo3, settings demo.yaml" in capsys.readouterr().out  # neither: the demo's
    a2 = json.loads((tmp_path / "a2.json").read_text())
    assert a2["competition"] == "aimo2" and a2["totals"]["correct"] == 10


def test_gateway_scores_with_the_competitions_modulus():
    from inference.local_gateway import _score

    aimo2, aimo3 = Competition.load("aimo2"), Competition.load("aimo3")
    assert _score(234, "1234", aimo2) is True  # AIMO-2 answers are taken modulo 1000, gold included
    assert _score(234, "1234", aimo3) is False and _score(1234, "1234", aimo3) is True
    assert _score("x", "7", aimo3) is False and _score(7, None, aimo3) is None


def test_progress_display_shows_problems_score_speed_and_time_left():
    import io

    from inference.local_gateway import ProgressDisplay

    stream = io.StringIO()
    display = ProgressDisplay(total=3, budget=600, stream=stream)
    display.problem_done({"correct": True, "tokens": 500}, elapsed=10.0)
    display.problem_done({"correct": False, "tokens": 300}, elapsed=20.0)
    display.close()
    last = stream.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "2/3 problems" in last and "score 1/2" in last and "40 tok/s" in last and "9:40 left" in last


def test_engine_logs_of_subprocesses_go_to_the_log_file(tmp_path):
    """The redirection works on file descriptors: a child process (like vLLM's engine core) writes into the log."""
    script = (
        "import subprocess, sys\n"
        "from pathlib import Path\n"
        "from inference.local_gateway import engine_logs_to\n"
        f"with engine_logs_to(Path({str(tmp_path / 'engine.log')!r})) as (out, err):\n"
        "    subprocess.run([sys.executable, '-c', 'import sys; print(\"child says INFO\"); "
        "print(\"child WARNING\", file=sys.stderr)'])\n"
        "    print('python INFO line')\n"
        "    print('for the user', file=out)\n"
        "print('after')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["for the user", "after"] and result.stderr == ""
    log = (tmp_path / "engine.log").read_text()
    assert "child says INFO" in log and "child WARNING" in log and "python INFO line" in log


def test_cli_4bit_model_on_a_cpu_whose_vllm_cannot_serve_it_names_the_way_out(tmp_path, capsys, monkeypatch):
    model = tmp_path / "awq"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {"num_bits": 4}}}}}))
    monkeypatch.setenv("AIMO_KIT_CPU_ISA", "avx2")  # the AVX2-only path, on any CPU
    assert main(["--engine", "vllm", "--model", str(model), "--report", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert f"model: {model} has 4-bit weights" in err and "cpu_gemm_wna16" in err and "--engine transformers" in err


@pytest.mark.parametrize("value", ["0", "-5"])
def test_cli_budget_seconds_not_positive_names_the_flag(tmp_path, capsys, value):
    code = main(["--engine", "replay", "--traces", "x", "--budget-seconds", value,
                 "--report", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2 and "error: --budget-seconds must be > 0" in err and "Traceback" not in err


def test_cli_set_error_blames_the_command_line(tmp_path, capsys):
    assert main(["--set", "sampling.tempreature=0.5", "--engine", "replay", "--traces", "x"]) == 2
    err = capsys.readouterr().err
    assert "error: --set sampling.tempreature=0.5: sampling: unknown key(s) tempreature" in err
    assert "demo.yaml" not in err


@pytest.mark.slow
def test_cli_problems_longer_than_the_context_are_attempted_or_named(tmp_path, capsys):
    """A 460k-character problem is cut to the context and attempted; a prompt nothing can fit is named on its
    progress line and in the summary (transformers engine, the toy model's 4096 positions)."""
    long_problem = "Let x be 12. " + "A long story about 1234 and more. " * 13900 + " What is 613 + 48?"
    problems = tmp_path / "p.jsonl"
    problems.write_text("\n".join(json.dumps(r) for r in [
        {"id": "long", "problem": long_problem, "answer": "661"}, {"id": "short", "problem": "What is 1 + 2?",
                                                                     "answer": "3"}]) + "\n")
    args = ["--engine", "transformers", "--model", str(REPO / "models/toy-math"), "--problems", str(problems),
            "--set", "sampling.samples=2", "--set", "sampling.max_tokens=48", "--budget-seconds", "600",
            "--submission", str(tmp_path / "s.parquet"), "--report", str(tmp_path / "r.json")]
    assert main(args) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    long = next(r for r in report["problems"] if r["id"] == "long")
    assert long["stop_reason"] != "submit_failed" and long["samples"] == 2
    assert long["prompt_cut"]["prompt_tokens"] > 4096 >= long["prompt_cut"]["kept_tokens"]
    assert "prompt cut to fit the context (" in out
    assert "1 problems cut to fit the context (start and end kept): long" in out
    huge_system = "--set", "prompts.variants=[{name: v, system: '" + "Reason step by step. " * 1500 + "'}]"
    assert main(args + list(huge_system)) == 0
    out = capsys.readouterr().out
    assert "longer than the model's context: not attempted" in out
    assert "2 problems longer than the context: " in out


def test_progress_display_says_loading_model_during_the_engine_start():
    import io

    from inference.local_gateway import ProgressDisplay

    stream = io.StringIO()
    display = ProgressDisplay(total=3, budget=600, stream=stream)

    def predict(id_, problem):
        return ok(id_, problem)

    run_gateway(predict, PROBLEMS.head(3), "aimo3", submission_path=None, show=None, display=display,
                startup=lambda: time.sleep(0.8))
    lines = stream.getvalue().replace("\r", "\n").splitlines()
    assert any("0/3 problems" in line and "loading model · 0:00 elapsed" in line for line in lines)
    assert "loading model" not in lines[-1] and "3/3 problems" in lines[-1]


def test_cli_hub_id_unreachable_offline_fails_at_once(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as without network: no 34 s of hub retries
    assert main(["--engine", "vllm", "--model", "foo/bar", "--report", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "model: foo/bar is no local folder and the Hugging Face hub cannot be reached" in err
