"""inference/distributed.py and train/generate.py: engine replicas as Ray actors on the toy TIR model (transformers
engine: it starts in seconds). One local Ray (2 CPUs) for the whole module."""

import json
from collections import Counter
from pathlib import Path

import pytest

from inference import distributed
from inference.config import load_settings
from inference.evaluate import evaluate, main as evaluate_main, read_problem_list
from train.generate import GenerateConfig, generate, select_rows

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "inference" / "demo-tir.yaml"
PROBLEMS = REPO / "configs" / "toy" / "tir_problems.csv"


def settings(**overrides):
    return load_settings(CONFIG, {"sampling.stop_rule": "none", "sampling.samples": 2, **overrides},
                         engine="transformers", engine_args={})


def keys(path) -> list[tuple[str, int]]:
    return [(r["problem_id"], r["sample"]) for r in map(json.loads, Path(path).read_text().splitlines())]


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    distributed.connect(None, verbose=False, num_cpus=2)
    yield ray
    ray.shutdown()


# -- bad input: clear errors in seconds, no Ray needed --------------------------------------------------------------
def test_unreachable_ray_address_fails_at_once():
    with pytest.raises(ValueError, match="--ray-address 127.0.0.1:1: no Ray cluster reachable"):
        distributed.check_address("127.0.0.1:1")


def test_missing_teacher_model_is_one_line_error(tmp_path, capsys):
    rc = evaluate_main(["--config", str(CONFIG), "--problems", str(PROBLEMS), "--model", str(tmp_path / "nope"),
                        "-k", "1", "--workers", "2", "--traces", str(tmp_path / "t.jsonl"),
                        "--out", str(tmp_path / "e.json")])
    assert rc == 2
    assert capsys.readouterr().err.strip() == f"error: model {tmp_path / 'nope'}: no such folder, and not in the " \
                                              "Hugging Face cache"


def test_generation_needs_answers(tmp_path):
    problems = tmp_path / "p.csv"
    problems.write_text("id,problem\na,What is 2 * 3?\n")
    cfg = GenerateConfig.load(REPO / "configs" / "generate" / "toy-tir.yaml",
                              {"problems": str(problems), "out_dir": str(tmp_path / "out")})
    with pytest.raises(ValueError, match="1 problem\\(s\\) without an answer"):
        generate(cfg, progress=False)


def test_generate_config_names_a_bad_key(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("inference_config: x.yaml\nproblems: p.csv\nout_dir: o\nsampels: 4\n")
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['sampels'\\]"):
        GenerateConfig.load(cfg)


def test_resume_refuses_other_work(tmp_path):
    s = settings()
    problems = read_problem_list(PROBLEMS, 2)
    items = distributed.work_items(s, problems, 2)
    distributed.TraceFile(tmp_path / "t.jsonl", distributed.fingerprint(s, items)).close()
    (tmp_path / "t.jsonl").write_text('{"problem_id": "x", "sample": 0}\n')
    other = distributed.work_items(s, problems, 3)
    with pytest.raises(ValueError, match="holds samples of different work"):
        distributed.TraceFile(tmp_path / "t.jsonl", distributed.fingerprint(s, other))


def test_rows_keep_tool_output_as_its_own_turn():
    call, output, final = "<think>\n```python\nprint(2*3)\n```", "```output\n6\n```\n", "\\boxed{6}\n</think>"
    record = {"problem_id": "p", "sample": 0, "correct": True, "tokens": 30, "tool_calls": 1, "seed": 7,
              "text": "6", "turns": [{"text": call, "framed": output}, {"text": final, "framed": ""}]}
    rows = select_rows([record, dict(record, sample=1, tokens=20), dict(record, sample=2, correct=False)],
                       [{"id": "p", "problem": "What is 2 * 3?", "answer": "6"}], keep_shortest=1, source="s")
    assert len(rows) == 1 and rows[0]["sample"] == 1  # the shortest correct
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert rows[0]["generation"] == call + output + final


# -- on Ray -----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_more_workers_than_cpus_is_refused(ray_session):
    with pytest.raises(ValueError, match="3 replicas need 3"):
        distributed.actor_resources(settings(), 3)


@pytest.mark.slow
def test_two_replicas_do_each_item_once_and_match_one_process(ray_session, tmp_path):
    s, problems = settings(), read_problem_list(PROBLEMS, 4)
    r = distributed.evaluate_distributed(s, problems, 2, tmp_path / "ray.jsonl", 2, progress=False, inflight=2)
    done = keys(tmp_path / "ray.jsonl")
    assert sorted(done) == sorted((p["id"], i) for p in problems for i in range(2))  # each once
    assert r["n_samples"] == 8 and r["distributed"]["workers"] == 2
    local = evaluate(s, problems, 2, tmp_path / "local.jsonl", concurrent=1, show=None)
    ray_answers = {(x["problem_id"], x["sample"]): x["answer"] for x in map(json.loads, open(tmp_path / "ray.jsonl"))}
    one = {(x["problem_id"], x["sample"]): x["answer"] for x in map(json.loads, open(tmp_path / "local.jsonl"))}
    assert ray_answers == one
    assert r["pass@1"] == local["pass@1"]


@pytest.mark.slow
def test_killed_replica_items_are_retried_on_the_other(ray_session, tmp_path):
    s, problems = settings(), read_problem_list(PROBLEMS, 4)
    killed = []

    def kill_one(record, replicas):
        if not killed:
            victim = next(i for i, held in enumerate(replicas.held) if held)  # a replica still holding items
            ray_session.kill(replicas.actors[victim])
            killed.append(victim)

    r = distributed.evaluate_distributed(s, problems, 2, tmp_path / "t.jsonl", 2, progress=False, inflight=3,
                                         on_record=kill_one)
    done = keys(tmp_path / "t.jsonl")
    assert killed and r["distributed"]["retried"] >= 1 and r["distributed"]["workers_alive"] == 1
    assert Counter(done) == Counter((p["id"], i) for p in problems for i in range(2))  # complete, no duplicates


@pytest.mark.slow
def test_interrupted_run_resumes_without_redoing(ray_session, tmp_path):
    s, problems = settings(), read_problem_list(PROBLEMS, 3)
    path = tmp_path / "t.jsonl"

    def interrupt(record, replicas):
        if len(keys(path)) >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distributed.evaluate_distributed(s, problems, 2, path, 2, progress=False, inflight=2, on_record=interrupt)
    first = keys(path)
    assert len(first) == 2
    with path.open("a") as f:
        f.write('{"problem_id": "tir-0')  # a torn line, as a kill mid-write leaves it
    r = distributed.evaluate_distributed(s, problems, 2, path, 2, progress=False, inflight=2)
    assert r["distributed"]["written"] == 6 - 2  # only the missing ones ran
    assert Counter(keys(path)) == Counter((p["id"], i) for p in problems for i in range(2))
    assert keys(path)[:2] == first


@pytest.mark.slow
def test_generate_writes_rows_train_data_reads(ray_session, tmp_path):
    from transformers import AutoTokenizer

    from train.data import select_sft_rows

    cfg = GenerateConfig.load(REPO / "configs" / "generate" / "toy-tir.yaml",
                              {"out_dir": str(tmp_path), "limit": 3, "samples": 2, "engine": "transformers",
                               "set": {"engine_args": {}, "sampling.temperature": 0.8}})
    report = generate(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert report["samples"] == 6 and report["kept_rows"] == len(rows) > 0
    assert all(r["messages"][0] == {"role": "user", "content": r["problem"]} for r in rows)
    assert any(m["role"] == "tool" and m["content"].startswith("```output") for r in rows for m in r["messages"])
    tokenizer = AutoTokenizer.from_pretrained(REPO / "models" / "toy-math-tir")
    kept, data_report = select_sft_rows([{"path": str(tmp_path / "rows.jsonl"), "label": "gen"}], tokenizer)
    assert data_report.kept == len({r["id"] for r in rows})  # one trace per problem, every problem kept
    assert {k["generation"] for k in kept} <= {r["generation"] for r in rows}
