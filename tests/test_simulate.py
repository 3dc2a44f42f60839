"""inference/simulate.py: the server's policy code replayed over many problem orders on a virtual clock."""

import json

import pytest

from inference.clock import VirtualClock
from inference.config import Competition, load_settings
from inference.engines.base import SampleRequest
from inference.engines.replay import ReplayEngine
from inference.local_gateway import main as gateway_main
from inference.simulate import (
    POLICIES_FILE,
    SpeedProfile,
    compare,
    load_hardware,
    load_policies,
    load_trace_set,
    main,
    plan_runs,
    policy_settings,
    served_in_gateway_order,
    simulate_run,
    synthetic_traces,
)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def synthetic(tmp_path):
    return write_jsonl(tmp_path / "syn.jsonl", synthetic_traces(problems=12, samples=10, seed=1))


def request(pid, sample, max_tokens=10_000, stop_rule="none"):
    return SampleRequest(problem_id=pid, sample=sample, messages=[], seed=0, max_tokens=max_tokens,
                         stop_rule=stop_rule)


def test_speed_profile_interpolates_and_stays_flat_past_the_table():
    p = SpeedProfile("x", {2: 100.0, 4: 300.0})
    assert p.aggregate(1) == pytest.approx(50)  # below the table: the first entry's per-sample speed
    assert p.aggregate(3) == pytest.approx(200) and p.aggregate(4) == pytest.approx(300)
    assert p.aggregate(10) == pytest.approx(300) and p.per_sample(10) == pytest.approx(30)
    with pytest.raises(ValueError, match="tokens_per_second"):
        SpeedProfile("bad", {0: 10.0})


def test_hardware_profiles_load_and_unknown_names_are_errors():
    assert load_hardware("recorded") is None
    h100, l4 = load_hardware("h100"), load_hardware("l4x4")
    assert h100.aggregate(8) > l4.aggregate(8) > 0
    assert l4.aggregate(9) == pytest.approx(238)  # the one published vLLM point (peers.md §8.1)
    with pytest.raises(ValueError, match="no profile 'tpu'"):
        load_hardware("tpu")


def test_running_samples_share_throughput_and_speed_up_when_one_ends():
    traces = {("p", 0): {"problem_id": "p", "sample": 0, "text": "a" * 100, "tokens": 100, "seconds": 1.0},
              ("p", 1): {"problem_id": "p", "sample": 1, "text": "b" * 300, "tokens": 300, "seconds": 1.0},
              ("q", 0): {"problem_id": "q", "sample": 0, "text": "c" * 100, "tokens": 100, "seconds": 1.0}}
    clock = VirtualClock()
    engine = ReplayEngine(traces, clock, speed=SpeedProfile("x", {1: 10.0, 2: 10.0}))
    engine.start()
    engine.submit([request("p", 0), request("p", 1)])
    # Two running share 10 tokens/s: sample 0 ends at 100 / 5 = 20 s; sample 1 has 200 left at 10/s → 40 s.
    first = engine.poll(1000)
    assert [(s.sample, s.tokens) for s in first] == [(0, 100)] and clock.now() == pytest.approx(20)
    second = engine.poll(1000)
    assert [s.sample for s in second] == [1] and clock.now() == pytest.approx(40)
    assert second[0].seconds == pytest.approx(40)
    engine.submit([request("q", 0)])
    assert engine.poll(3) == [] and clock.now() == pytest.approx(43)  # waiting moves the virtual clock only
    aborted = engine.abort("q")
    assert [(s.finish_reason, s.tokens) for s in aborted] == [("aborted", 30)]
    assert engine.progress().running == 0


def test_stop_rule_and_max_tokens_cut_the_recorded_sample():
    text = "<think>\n\\boxed{7}\n</think>" + "x" * 74  # 26 + 74 characters
    traces = {("p", 0): {"problem_id": "p", "sample": 0, "text": text, "tokens": 100, "seconds": 1.0}}
    engine = ReplayEngine(traces, VirtualClock(), speed=SpeedProfile("x", {1: 10.0}))
    engine.submit([request("p", 0, stop_rule="think")])
    [s] = engine.poll(1000)
    assert s.text.endswith("</think>") and s.finish_reason == "answer" and s.tokens == 26
    assert s.seconds == pytest.approx(2.6)  # only the kept tokens take time
    engine.submit([request("p", 0, max_tokens=40)])
    [s] = engine.poll(1000)
    assert (s.tokens, s.finish_reason) == (40, "length")


def test_runs_tile_the_problems_and_every_policy_sees_the_same_orders(synthetic):
    ts = load_trace_set(synthetic)
    runs = plan_runs(ts, problems=30, orders=3, seed=4)
    assert all(len(run) == 30 and len({s.id for s in run}) == 30 for run in runs)
    counts = [sorted(sum(s.problem_id == pid for s in run) for pid in ts.ids) for run in runs]
    assert all(set(c) <= {2, 3} for c in counts)  # 12 problems tiled twice, 6 drawn a third time
    assert [s.id for s in plan_runs(ts, 30, 3, seed=4)[2]] == [s.id for s in runs[2]]
    assert [s.id for s in plan_runs(ts, 30, 3, seed=5)[0]] != [s.id for s in runs[0]]


def test_same_seed_same_json(synthetic):
    ts = load_trace_set(synthetic)
    a = compare(ts, "aimo3", "l4x4", POLICIES_FILE, orders=8, seed=7, problems=20)
    b = compare(load_trace_set(synthetic), "aimo3", "l4x4", POLICIES_FILE, orders=8, seed=7, problems=20)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert set(a["policies"]) == {p.name for p in load_policies(POLICIES_FILE, "aimo3")[1]}
    for r in a["policies"].values():
        assert {"score", "seconds", "tokens", "p_score_at_least", "deadline_problems", "cutoff_problems"} <= set(r)
        assert r["score"]["min"] <= r["score"]["mean"] <= r["score"]["max"] <= 20


@pytest.mark.parametrize("hardware", ["recorded", "l4x4"])
def test_no_policy_ever_overruns_the_time_limit(tmp_path, hardware):
    # One hour for 20 problems of ~2-8 minute samples: time binds, so runs end with deadlines and, for the policies
    # with fixed per-problem seconds, the global cutoff.
    ts = load_trace_set(write_jsonl(tmp_path / "t.jsonl", synthetic_traces(problems=10, samples=16, seed=2)))
    result = compare(ts, "aimo2", hardware, POLICIES_FILE, orders=150, seed=0, problems=20, total_seconds=3600)
    limit = 3600 - Competition.load("aimo2").safety_margin_seconds
    for name, r in result["policies"].items():
        assert r["seconds"]["max"] <= limit + 1e-6, name
    assert len(result["policies"]) * result["orders"] >= 1000  # runs checked
    reasons = {k for r in result["policies"].values() for k in r["stop_reasons"]}
    assert {"deadline", "global_cutoff", "k_of_n"} <= reasons  # the limit really binds, and not everywhere


@pytest.mark.parametrize("unrecorded", [None, 3])
def test_simulator_and_local_gateway_agree_on_the_same_order(tmp_path, repo_root, capsys, unrecorded):
    # Ten toy problems: quick agreement, disagreement, slow samples cut by the 120 s deadline of demo.yaml, and
    # perhaps one problem never recorded (the simulator then keeps the config's poll interval).
    problems_csv = repo_root / "configs/toy/demo_problems.csv"
    import polars as pl

    problems = pl.read_csv(problems_csv, infer_schema_length=0)
    records = []
    for n, (pid, gold) in enumerate(zip(problems["id"], problems["answer"])):
        if n == unrecorded:
            continue
        for i in range(8):
            answer = int(gold) + (i % (n % 4 + 1))  # problem n: n % 4 + 1 different answers
            text = f"<think>\nwork\n\\boxed{{{answer}}}\n</think>\nThe answer is \\boxed{{{answer}}}."
            records.append({"problem_id": pid, "sample": i, "text": text, "tokens": 50 + 10 * i,
                            "seconds": 15.0 * (1 + (i * 7 + n) % 9) * (1 + n % 3)})
    traces = write_jsonl(tmp_path / "traces.jsonl", records)
    report = tmp_path / "report.json"
    config = repo_root / "configs/inference/demo.yaml"
    code = gateway_main(["--config", str(config), "--engine", "replay", "--traces", str(traces), "--virtual-clock",
                         "--seed", "5", "--problems", str(problems_csv), "--report", str(report),
                         "--submission", str(tmp_path / "sub.parquet")])
    assert code == 0
    capsys.readouterr()
    gateway = json.loads(report.read_text())["problems"]

    ts = load_trace_set(traces, problems_csv)
    settings = policy_settings(config, load_policies(POLICIES_FILE, "aimo3")[1][0],  # "default": no overrides
                               load_settings(config).competition, str(traces))
    slots = served_in_gateway_order(ts, seed=5)
    assert [s.id for s in slots] == [row["id"] for row in gateway]
    sim = simulate_run(settings, ts, slots, speed=None)["problems"]
    for g, s in zip(gateway, sim):
        assert (s["id"], s["answer"], s["stop_reason"], s["correct"]) == (g["id"], g["answer"], g["stop_reason"],
                                                                           g["correct"])
        assert s["seconds"] == pytest.approx(g["seconds"], abs=2e-3)
    reasons = {row["stop_reason"] for row in gateway}
    assert reasons >= {"k_of_n", "deadline", "stragglers"} and ("engine_idle" in reasons) == (unrecorded is not None)


def test_rank_prints_simulated_score_and_raw_accuracy(tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", synthetic_traces(problems=8, samples=8, seed=3))
    bad = [dict(r, text=r["text"].replace("\\boxed", "\\fbox"), tokens=r["tokens"] * 3)
           for r in synthetic_traces(problems=8, samples=8, seed=3)]
    for r in bad[::2]:  # half the samples lose their answer
        r["text"] = "<think>\nno idea"
    bad_path = write_jsonl(tmp_path / "bad.jsonl", bad)
    out = tmp_path / "rank.json"
    assert main(["--rank", str(bad_path), str(good), "--hardware", "l4x4", "--competition", "aimo2", "--orders",
                 "10", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["rank"]
    assert [r["traces"] for r in rows] == [str(good), str(bad_path)]
    assert rows[0]["score"] > rows[1]["score"]
    assert "pass@1" in printed and "maj@all" in printed



def test_rank_breaks_a_score_tie_by_tokens(tmp_path):
    """Same answers and timings, more tokens: equal simulated scores, the cheaper checkpoint ranks first."""
    cheap = synthetic_traces(problems=6, samples=8, seed=5)
    costly = [dict(r, tokens=r["tokens"] + 10) for r in cheap]  # (doubling would pass max_tokens and cut answers)
    paths = [str(write_jsonl(tmp_path / "costly.jsonl", costly)), str(write_jsonl(tmp_path / "cheap.jsonl", cheap))]
    out = tmp_path / "rank.json"
    assert main(["--rank", *paths, "--hardware", "recorded", "--orders", "5", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rank"]
    assert rows[0]["score"] == rows[1]["score"]
    assert [r["traces"] for r in rows] == paths[::-1] and rows[0]["tokens"] < rows[1]["tokens"]

def test_cli_writes_json_and_plot(tmp_path, synthetic, capsys):
    out, png = tmp_path / "sim.json", tmp_path / "budget.png"
    code = main(["--traces", str(synthetic), "--hardware", "h100", "--orders", "5", "--policy", "default",
                 "--policy", "aimo3_public", "--budget-fractions", "0.05", "0.2", "--sweep-orders", "5",
                 "--plot", str(png), "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["policies"]) == {"default", "aimo3_public"}
    assert [p["total_seconds"] for p in result["budget_sweep"]["default"]] == [900, 3600]
    assert png.stat().st_size > 10_000
    assert "default" in capsys.readouterr().out


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    no_gold = write_jsonl(tmp_path / "t.jsonl", [{"problem_id": "a", "sample": 0, "text": "x", "tokens": 1,
                                                   "seconds": 1.0}])
    assert main(["--traces", str(no_gold), "--orders", "2"]) == 2
    assert "no gold answer" in capsys.readouterr().err
    assert main(["--traces", str(no_gold), "--hardware", "tpu"]) == 2
    assert main(["--traces", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_policies_launching_more_samples_than_recorded_are_flagged(tmp_path):
    ts = load_trace_set(write_jsonl(tmp_path / "t.jsonl", synthetic_traces(problems=4, samples=8, seed=0)))
    result = compare(ts, "aimo3", "h100", POLICIES_FILE, orders=2, seed=0, problems=4,
                     only=["fixed_n8", "nemoskills"])
    assert "warning" not in result["policies"]["fixed_n8"]
    assert "launches 12 samples" in result["policies"]["nemoskills"]["warning"]


def test_each_recorded_text_is_cut_and_parsed_once_per_stop_rule_however_many_orders(synthetic, tmp_path):
    ts = load_trace_set(synthetic)
    samples = sum(len(v) for v in ts.samples.values())
    compare(ts, "aimo3", "h100", POLICIES_FILE, orders=6, seed=1, problems=20)
    assert len(ts.cuts) == samples  # every policy keeps aimo3.yaml's stop rule and max_tokens: one cut each
    compare(ts, "aimo3", "h100", POLICIES_FILE, orders=12, seed=2, problems=20, only=["default"])
    assert len(ts.cuts) == samples  # more orders: no new cuts
    shorter = tmp_path / "policies.yaml"
    shorter.write_text("base: configs/inference/{competition}.yaml\n"
                       "policies:\n  short:\n    overrides: {sampling.max_tokens: 5000}\n")
    compare(ts, "aimo3", "h100", shorter, orders=3, seed=2, problems=20)
    assert len(ts.cuts) == 2 * samples  # another max_tokens: each text cut once more


def test_parallel_orders_give_the_same_result_as_one_process(synthetic):
    one = compare(load_trace_set(synthetic), "aimo3", "l4x4", POLICIES_FILE, orders=6, seed=3, problems=15)
    two = compare(load_trace_set(synthetic), "aimo3", "l4x4", POLICIES_FILE, orders=6, seed=3, problems=15,
                  workers=2)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


def test_paired_differences_are_per_order_score_differences_against_the_first_policy(synthetic):
    ts = load_trace_set(synthetic)
    result = compare(ts, "aimo3", "l4x4", POLICIES_FILE, orders=10, seed=0, problems=20,
                     only=["default", "fixed_n8"])
    default, other = result["policies"]["default"], result["policies"]["fixed_n8"]
    assert default["paired"] == {"vs": "default", "mean": 0.0, "sd": 0.0, "min": 0.0, "max": 0.0}
    assert other["paired"]["mean"] == pytest.approx(other["score"]["mean"] - default["score"]["mean"], abs=2e-3)
    from inference.simulate import format_comparison

    text = format_comparison(result)
    assert "Δ vs default" in text and f"{other['paired']['mean']:+.2f} ± {other['paired']['sd']:.2f}" in text


def test_the_synthetic_benchmark_fixture_has_long_texts_and_unchanged_answers():
    short = synthetic_traces(problems=5, samples=16, seed=0)
    long = synthetic_traces(problems=5, samples=16, seed=0, text_chars=40_000)
    assert len(long) == 80 and min(len(r["text"]) for r in long) >= 40_000
    assert [(r["answer"], r["tokens"]) for r in long] == [(r["answer"], r["tokens"]) for r in short]


def test_benchmark_runs_the_old_and_new_way_and_reports_both(capsys):
    from inference.simulate import benchmark, format_benchmark

    b = benchmark("aimo3", "h100", POLICIES_FILE, orders=2, workers=1, baseline_orders=1, text_chars=2_000,
                  problems=5, samples=16)
    assert b["samples"] == 80 and "5 problems × 16" in format_benchmark(b) and b["orders"] == 2 and b["baseline_seconds_per_order"] > 0
    assert "parse every order (old)" in format_benchmark(b)


def test_one_replay_engine_times_by_recorded_seconds_or_by_a_speed_profile():
    traces = {("p", 0): {"problem_id": "p", "sample": 0, "text": "a" * 100, "tokens": 100, "seconds": 7.0}}
    recorded = ReplayEngine(traces, VirtualClock())
    recorded.submit([request("p", 0)])
    assert [s.seconds for s in recorded.poll(1000)] == [pytest.approx(7.0)]
    with pytest.raises(ValueError, match="VirtualClock"):
        from inference.clock import RealClock

        ReplayEngine(traces, RealClock(), speed=SpeedProfile("x", {1: 10.0}))


def test_hard_heavy_mix_has_its_difficulties_long_tails_and_time_outs():
    from inference.simulate import hard_heavy_traces

    records = hard_heavy_traces(seed=1)
    kinds = {}
    for r in records:
        kinds.setdefault(r["problem_id"], r["difficulty"])
    assert sorted(kinds.values()).count("easy") == 20 and list(kinds.values()).count("hard") == 10
    assert len(records) == 50 * 16
    timed_out = [r for r in records if r["finish_reason"] == "length"]
    assert timed_out and all(r["answer"] is None and r["tokens"] == 16384 for r in timed_out)
    # 16 samples of every problem at the recorded pace need more than AIMO-3's 5 hours (time binds)
    slowest = {}
    for r in records:
        slowest[r["problem_id"]] = max(slowest.get(r["problem_id"], 0), r["seconds"])
    assert sum(slowest.values()) > 18000
    assert hard_heavy_traces(seed=1) == records and hard_heavy_traces(seed=2) != records


def test_two_run_score_is_each_problem_1_if_both_runs_right_and_half_if_one(tmp_path, synthetic):
    from inference.simulate import rerun_plan

    ts = load_trace_set(synthetic)
    runs = plan_runs(ts, 20, 3, seed=4)
    again = rerun_plan(runs, seed=4)
    for a, b in zip(runs, again):  # the same problems served, in another order with other sample draws
        assert sorted(s.id for s in a) == sorted(s.id for s in b)
        assert [s.id for s in a] != [s.id for s in b]
    result = compare(ts, "aimo3", "l4x4", POLICIES_FILE, orders=3, seed=4, problems=20, only=["default", "fixed_n8"],
                     two_runs=True)
    base, policies = load_policies(POLICIES_FILE, "aimo3")
    settings = policy_settings(base, policies[0], Competition.load("aimo3"), ts.path)
    expected = []
    for first, second in zip(runs, again):
        r1, r2 = simulate_run(settings, ts, first, load_hardware("l4x4")), simulate_run(settings, ts, second,
                                                                                          load_hardware("l4x4"))
        right1 = {p["id"]: p["correct"] for p in r1["problems"]}
        right2 = {p["id"]: p["correct"] for p in r2["problems"]}
        expected.append(sum(1.0 if right1[i] and right2[i] else 0.5 if right1[i] or right2[i] else 0.0
                            for i in right1))
    two = result["policies"]["default"]["two_run"]
    assert two["mean"] == pytest.approx(sum(expected) / 3, abs=1e-3)
    assert "two_run" in result["policies"]["fixed_n8"] and two["paired"]["mean"] == 0


def test_tool_calls_cost_time_under_a_speed_profile():
    # Two samples share 20 tokens/s (15 alone). The tool-using one has 300 tokens, done at 30 s; it then waits its
    # 20 s of tool calls plus the profile's cost per call (2 calls), out of the batch, so the other runs alone at
    # 15 tokens/s: its last 300 tokens take 20 s (done at 50 s).
    text = "<think>x</think> \\boxed{7}"
    traces = [{"problem_id": "p", "sample": 0, "text": text, "tokens": 600, "seconds": 1.0},
              {"problem_id": "p", "sample": 1, "text": text, "tokens": 300, "seconds": 1.0,
               "tool_calls": 2, "tool_seconds": 20.0}]
    for cost in (0.0, 5.0):
        clock = VirtualClock()
        speed = SpeedProfile("x", {1: 15.0, 2: 20.0}, tool_call_seconds=cost)
        engine = ReplayEngine(traces, clock=clock, speed=speed)
        engine.submit([request("p", 0), request("p", 1)])
        done = {}
        while len(done) < 2:
            for s in engine.poll(1000):
                done[s.sample] = (clock.now(), s.seconds)
        assert done[0][0] == pytest.approx(50)
        assert done[1][0] == pytest.approx(30 + 20 + 2 * cost) and done[1][1] == pytest.approx(30 + 20 + 2 * cost)
    with pytest.raises(ValueError, match="tool_call_seconds"):
        SpeedProfile("bad", {1: 10.0}, tool_call_seconds=-1)
    assert load_hardware("h100").tool_call_seconds > 0


def test_default_gives_time_easy_problems_leave_to_the_hard_ones(tmp_path):
    # On a hard-heavy mix the old default (an even share, re-planned, capped at 1200 s) hit deadlines while time
    # was left at the end; planning later problems at their expected use spends it on the problems still running.
    from inference.simulate import hard_heavy_traces

    ts = load_trace_set(write_jsonl(tmp_path / "hh.jsonl", hard_heavy_traces(seed=1)))
    policies = tmp_path / "p.yaml"
    policies.write_text("base: configs/inference/{competition}.yaml\npolicies:\n  default: {}\n  even_share:\n"
                        "    overrides: {time.expected_use_factor: null, time.max_seconds: 1200}\n")
    result = compare(ts, "aimo3", "recorded", policies, orders=6, seed=0)
    new, old = result["policies"]["default"], result["policies"]["even_share"]
    assert new["deadline_problems"] < old["deadline_problems"]
    assert new["seconds"]["mean"] > old["seconds"]["mean"]
    assert old["unspent_when_bound"] > 0.1 and new["unspent_when_bound"] < old["unspent_when_bound"]


@pytest.mark.parametrize("hardware", ["recorded", "speed"])
def test_deepconf_online_terminates_unsure_samples_once_the_first_ones_set_the_threshold(hardware):
    # Samples 0-1 are short and sure (their lowest window confidence 5 and 6); with warmup 2 and quantile 0.5 the
    # threshold is 6. Sample 2's third window (tokens 200-300) is at 3: it ends at 300 tokens, empty, no vote.
    # Sample 3 never dips below 6 and runs to its end; with confidence_stop off sample 2 runs to its end too.
    def trace(i, tokens, windows):
        return {"problem_id": "p", "sample": i, "text": "</think> \\boxed{5}", "tokens": tokens,
                "seconds": tokens / 10, "conf_window": 100, "conf_windows": windows, "conf_min": min(windows)}

    traces = [trace(0, 100, [5.0]), trace(1, 120, [6.0, 7.0]), trace(2, 1000, [8.0] * 2 + [3.0] + [8.0] * 7),
              trace(3, 1000, [7.0] * 10)]
    for stop, ends in ((0.5, {2: (300, "low_confidence", "")}), (None, {2: (1000, "answer", "</think>")})):
        clock = VirtualClock()
        speed = SpeedProfile("x", {1: 10.0, 4: 40.0}) if hardware == "speed" else None
        engine = ReplayEngine(traces, clock=clock, speed=speed, confidence_stop=stop, confidence_warmup=2)
        engine.submit([request("p", i, stop_rule="boxed_after_think") for i in range(4)])
        done = {}
        while len(done) < 4:
            for s in engine.poll(10_000):
                done[s.sample] = s
        tokens, reason, text = ends[2]
        assert done[2].tokens == tokens and done[2].finish_reason == reason and done[2].text.startswith(text)
        assert done[3].tokens == 1000 and done[3].finish_reason == "answer"
        assert done[2].seconds < done[3].seconds if stop else True
    with pytest.raises(ValueError, match="voting.confidence_stop"):
        load_settings(POLICIES_FILE.parents[2] / "configs/inference/aimo3.yaml", {"voting.confidence_stop": 1.5})
