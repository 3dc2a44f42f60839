"""The seed's token scheduler: the length regressor trains on traces (train/token_scheduler.py), and the policy
option `token_scheduler` (inference/token_scheduler.py) sets each problem's max_tokens and time share from it."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from inference.clock import VirtualClock
from inference.config import load_settings
from inference.engines.replay import ReplayEngine
from inference.server import Predictor
from inference.time_budget import TimeBudget, TimePolicy
from inference.token_scheduler import Scheduler, TokenSchedule

from tests.conftest import REPO, toy_trace_text

TOY_RECIPE = REPO / "configs" / "token_scheduler" / "toy.yaml"
BASE_RECIPE = REPO / "configs" / "token_scheduler" / "modernbert-base.yaml"


def _length_set(tmp_path, problems: int = 40):
    """Traces whose length is set by the text: 'Add these k numbers' takes 40·k tokens a sample."""
    texts, lines = [], []
    for i in range(problems):
        k = 1 + i % 8
        numbers = " ".join(str(7 * j + i) for j in range(k))
        texts.append({"id": f"p{i:02d}", "problem": f"Add these {k} numbers: {numbers}", "answer": "0"})
        for s in range(2):
            lines.append({"problem_id": f"p{i:02d}", "sample": s, "text": toy_trace_text(0), "tokens": 40 * k + 5 * s,
                          "seconds": 1.0, "correct": True, "gold": "0"})
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in lines))
    problems_file = tmp_path / "problems.jsonl"
    problems_file.write_text("".join(json.dumps(r) + "\n" for r in texts))
    return traces, problems_file


def _train(argv: list[str]):
    from train.token_scheduler import main, make_parser

    return main(*make_parser().parse_args_and_config(argv))


@pytest.mark.slow
def test_trained_regressor_tracks_lengths_and_serves_from_its_folder(tmp_path):
    traces, problems = _length_set(tmp_path)
    out = _train(["--config", str(TOY_RECIPE), "--traces", str(traces), "--problems", str(problems),
                  "--output_dir", str(tmp_path / "model"), "--num_train_epochs", "40", "--eval_fraction", "0.2"])
    meta = json.loads((out / "token_scheduler.json").read_text())
    assert meta["fit"]["train"]["pearson"] > 0.8, meta["fit"]
    assert meta["fit"]["train"]["rmse_log"] < 0.5 * meta["fit"]["train"]["rmse_log_constant"], meta["fit"]
    table = json.loads((out / "predictions.json").read_text())
    assert table["lo"] < table["hi"]
    # The server's path: the model folder as the policy's source predicts what the training run wrote.
    from inference.token_scheduler import LengthModel

    model = LengthModel(str(out))
    text = json.loads(problems.read_text().splitlines()[5])["problem"]
    assert math.isclose(model.predict("p05", text), table["predictions"][text], rel_tol=1e-3)
    # ... and through the Predictor, as the server runs it.
    settings = load_settings(REPO / "configs" / "inference" / "aimo3.yaml",
                             {"token_scheduler.source": str(out), "token_scheduler.min_tokens": 100,
                              "token_scheduler.max_tokens": 400, "sampling.samples": 2},
                             engine="replay", traces=str(traces), virtual_clock=True)
    clock = VirtualClock()
    predictor = Predictor(settings, engine=ReplayEngine(str(traces), clock=clock), problems=1, clock=clock,
                          total_seconds=600)
    predictor.solve("p05", text)
    assert predictor.max_tokens["p05"] == predictor.scheduler.max_tokens(table["predictions"][text])


@pytest.mark.slow
def test_modernbert_recipe_loads_a_local_folder(tmp_path):
    """modernbert-base.yaml's pretrained path (from_pretrained of model_name_or_path) on a tiny ModernBERT folder."""
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertModel

    folder = tmp_path / "tiny-modernbert"
    config = ModernBertConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=512, pad_token_id=0,
                              classifier_pooling="mean")
    ModernBertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(REPO / "models" / "toy-math").save_pretrained(folder)
    traces, problems = _length_set(tmp_path, problems=12)
    out = _train(["--config", str(BASE_RECIPE), "--model_name_or_path", str(folder), "--traces", str(traces),
                  "--problems", str(problems), "--output_dir", str(tmp_path / "out"), "--bf16", "false",
                  "--use_cpu", "true", "--num_train_epochs", "1", "--save_strategy", "no"])
    meta = json.loads((out / "token_scheduler.json").read_text())
    assert meta["random_init"] is False and meta["model_name_or_path"] == str(folder)
    assert (out / "predictions.json").exists()


def test_random_init_builds_modernbert_base_shape():
    from transformers import AutoTokenizer

    from train.token_scheduler import TokenSchedulerArguments, build_model

    args = TokenSchedulerArguments(traces=["x"], problems=["y"], random_init=True)
    tokenizer = AutoTokenizer.from_pretrained(REPO / "models" / "toy-math")
    import torch

    with torch.device("meta"):  # the real shape without allocating its 150M parameters
        model = build_model(args, tokenizer)
    c = model.config
    assert (c.model_type, c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size, c.num_labels) == (
        "modernbert", 768, 22, 1152, 50368, 1)
    assert c.problem_type == "regression"


@pytest.mark.parametrize("line, field", [("label: median", "label"), ("learning_rat: 0.1", "learning_rat"),
                                         ("max_problem_tokens: many", "max_problem_tokens")])
def test_bad_recipe_is_one_line_naming_the_field(tmp_path, line, field):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(TOY_RECIPE.read_text() + line + "\n")
    p = subprocess.run([sys.executable, "-m", "train.token_scheduler", "--config", str(recipe)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and field in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("override, field", [({"token_scheduler.min_tokens": 0}, "token_scheduler.min_tokens"),
                                             ({"token_scheduler.max_tokens": 5000}, "token_scheduler.max_tokens"),
                                             ({"token_scheduler.time_power": -1}, "token_scheduler.time_power"),
                                             ({"token_scheduler.source": "no/such.json"}, "token_scheduler.source"),
                                             ({"token_scheduler.sorce": "x"}, "sorce")])
def test_bad_policy_option_names_the_field(override, field):
    with pytest.raises(ValueError) as e:
        load_settings(REPO / "configs" / "inference" / "aimo3.yaml", override)
    assert field in str(e.value) and "\n" not in str(e.value)


def _predictions(tmp_path, table: dict, lo=100.0, hi=300.0):
    path = tmp_path / "lengths.json"
    path.write_text(json.dumps({"lo": lo, "hi": hi, "predictions": table}))
    return str(path)


def test_scale_between_min_and_max(tmp_path):
    s = Scheduler(TokenSchedule(source=_predictions(tmp_path, {}), min_tokens=10500, max_tokens=13300))
    assert [s.max_tokens(p) for p in (50, 100, 200, 300, 900)] == [10500, 10500, 11900, 13300, 13300]


def test_policy_option_sets_each_problems_max_tokens(tmp_path, write_traces):
    """A problem predicted short gets min_tokens (its long sample is cut), one predicted long max_tokens."""
    traces = write_traces({"short": [toy_trace_text(7)] * 2, "long": [toy_trace_text(7)] * 2}, tokens=200)
    source = _predictions(tmp_path, {"What is short?": 90.0, "long": 400.0})
    overrides = {"token_scheduler.source": source, "token_scheduler.min_tokens": 150,
                 "token_scheduler.max_tokens": 250, "sampling.samples": 2}

    def run(extra: dict) -> dict:
        settings = load_settings(REPO / "configs" / "inference" / "aimo3.yaml", extra, engine="replay",
                                 traces=str(traces), virtual_clock=True)
        clock = VirtualClock()
        predictor = Predictor(settings, engine=ReplayEngine(str(traces), clock=clock), problems=2, clock=clock,
                              total_seconds=600)
        results = {pid: predictor.solve(pid, text) for pid, text in [("short", "What is short?"),
                                                                     ("long", "What is long?")]}
        return {"max_tokens": predictor.max_tokens, "tokens": {k: r.tokens for k, r in results.items()}}

    on, off = run(overrides), run({"sampling.samples": 2})
    assert on["max_tokens"] == {"short": 150, "long": 250}  # by text, then by id
    assert off["max_tokens"] == {} and off["tokens"]["short"] > 2 * 150
    assert on["tokens"] == {"short": 2 * 150, "long": off["tokens"]["long"]}  # short: its ~200-token samples cut


def test_time_share_follows_the_prediction(tmp_path):
    s = Scheduler(TokenSchedule(source=_predictions(tmp_path, {"a": 100.0, "b": 300.0, "c": 10_000.0}),
                                min_tokens=100, max_tokens=200, time_power=1.0))
    assert s.plan("a", "a")[1] == 1.0  # the first problem is the run's mean so far
    assert s.plan("b", "b")[1] == pytest.approx(1.5)  # 300 / mean(100, 300)
    assert s.plan("c", "c")[1] == 2.0  # capped
    assert s.plan("new", "new") == (None, 1.0)  # unknown: the config's own
    clock = VirtualClock()
    plain = TimeBudget(TimePolicy(kind="share"), total_seconds=1000, problems=10, clock=clock)
    weighted = TimeBudget(TimePolicy(kind="share"), total_seconds=1000, problems=10, clock=clock)
    assert plain.start_problem() == 100 and weighted.start_problem(1.5) == 150


def test_a_scheduler_that_cannot_load_leaves_the_config_limits(tmp_path, write_traces):
    """A model folder whose weights are missing: the run goes on with sampling.max_tokens, never a lost run."""
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "token_scheduler.json").write_text(json.dumps({"lo": 1, "hi": 2, "mean": 0, "std": 1,
                                                             "max_problem_tokens": 8}))
    traces = write_traces({"a": [toy_trace_text(7)] * 2})
    settings = load_settings(REPO / "configs" / "inference" / "aimo3.yaml",
                             {"token_scheduler.source": str(folder), "sampling.samples": 2}, engine="replay",
                             traces=str(traces), virtual_clock=True)
    clock = VirtualClock()
    predictor = Predictor(settings, engine=ReplayEngine(str(traces), clock=clock), problems=1, clock=clock)
    assert predictor.scheduler is None
    assert predictor.solve("a", "What is a?").answer == 7 and predictor.max_tokens == {}
