"""The `fast` early stop: gpt-oss-120b-shaped traces, the shipped stop table's decisions, and the policy files."""

import json
import statistics
from collections import defaultdict

from inference.config import REPO, Competition, load_settings
from inference.simulate import (
    POLICIES_FILE,
    compare,
    gpt_oss_traces,
    load_policies,
    load_trace_set,
    policy_settings,
)
from inference.voting import StopRule, Votes, stop_reason

GPT_OSS_POLICIES = REPO / "configs" / "simulate" / "policies-gpt-oss.yaml"


def test_gpt_oss_traces_have_its_shape():
    records = gpt_oss_traces(seed=1)
    by = defaultdict(list)
    for r in records:
        by[r["problem_id"]].append(r)
    assert len(by) == 10 and all(len(v) == 80 for v in by.values())
    kinds = [v[0]["difficulty"] for v in by.values()]
    assert sorted(kinds) == ["easy"] * 6 + ["hard"] * 2 + ["medium"] * 2
    accuracy = {k: statistics.fmean(r["correct"] for v in by.values() if v[0]["difficulty"] == k for r in v)
                for k in ("easy", "medium", "hard")}
    assert accuracy["easy"] > 0.85 and 0.45 < accuracy["medium"] < 0.9 and accuracy["hard"] < 0.45
    right = statistics.median(r["tokens"] for r in records if r["correct"])
    wrong = statistics.median(r["tokens"] for r in records if not r["correct"])
    assert wrong > 1.3 * right  # long ⇒ wrong
    # wrong answers agree: on each hard problem one distractor takes most of the wrong votes
    for v in by.values():
        if v[0]["difficulty"] == "hard":
            wrong_answers = [r["answer"] for r in v if not r["correct"] and r["answer"] is not None]
            top = max(set(wrong_answers), key=wrong_answers.count)
            assert wrong_answers.count(top) > 0.45 * len(wrong_answers)
    assert gpt_oss_traces(seed=1) == records and gpt_oss_traces(seed=2) != records
    padded = gpt_oss_traces(seed=1, text_chars=2000)
    assert [(r["answer"], r["tokens"]) for r in padded] == [(r["answer"], r["tokens"]) for r in records]


def shipped_rule() -> StopRule:
    return load_settings(REPO / "configs/inference/aimo3-gpt-oss.yaml").voting


def test_shipped_gpt_oss_rule_stops_at_two_only_where_the_table_allows():
    rule = shipped_rule()
    assert rule.stop_table == "configs/inference/stop_table-gpt-oss.json" and rule.k == 3
    assert stop_reason(Votes.of([7]), 1, 8, rule) is None  # one vote: the table's risk is above 0.15
    assert stop_reason(Votes.of([7, 7]), 2, 8, rule) == "stop_table"  # 2-0 after 2
    assert stop_reason(Votes.of([7, 5, 7]), 3, 8, rule) == "stop_table"  # 2-1 after 3
    assert stop_reason(Votes.of([7, 5, 5, 7]), 4, 8, rule) is None  # 2-2: wait
    assert stop_reason(Votes.of([7, 5, 9]), 3, 8, rule) == "hopeless"  # three answers, none twice
    assert stop_reason(Votes.of([7, 5, 7, 5, 7]), 5, 8, rule) == "k_of_n"  # 3 agree
    # the winners' rule on the same tallies waits for 4
    winners = StopRule(kind="k_of_n", k=4)
    assert stop_reason(Votes.of([7, 7]), 2, 8, winners) is None
    assert stop_reason(Votes.of([7, 5, 7, 5, 7]), 5, 8, winners) is None


def test_policy_files_resolve_to_the_rules_they_name():
    comp = Competition.load("aimo3")
    base, policies = load_policies(GPT_OSS_POLICIES, "aimo3")
    settings = {p.name: policy_settings(base, p, comp, "t.jsonl") for p in policies}
    assert set(settings) == {"default", "aimo3_public", "winners", "kit_default"}
    for name in ("aimo3_public", "winners", "kit_default"):  # none inherits the fast rule's table
        assert settings[name].voting.stop_table is None, name
    public = settings["aimo3_public"]
    assert (public.voting.kind, public.voting.k, public.voting.hopeless_after, public.sampling.samples) == \
        ("k_of_n", 4, None, 8)
    assert (public.time.kind, public.time.min_seconds, public.time.max_seconds) == ("reserve", 240, 840)
    assert settings["default"].voting == shipped_rule()
    base, policies = load_policies(POLICIES_FILE, "aimo3")
    fast = policy_settings(base, next(p for p in policies if p.name == "fast"), comp, "t.jsonl")
    assert (fast.voting.kind, fast.voting.k, fast.voting.stop_table, fast.voting.max_risk,
            fast.voting.hopeless_after, fast.sampling.samples) == \
        ("k_of_n", 3, "configs/inference/stop_table-gpt-oss.json", 0.15, 3, 8)


def test_fast_takes_well_under_the_public_policys_time_on_gpt_oss_shaped_traces(tmp_path):
    path = tmp_path / "go.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in gpt_oss_traces(seed=3)))  # not fitted on (seeds 1, 2)
    result = compare(load_trace_set(path), "aimo3", "recorded", GPT_OSS_POLICIES, orders=20, seed=0,
                     only=["default", "aimo3_public"])["policies"]
    fast, public = result["default"], result["aimo3_public"]
    assert fast["seconds"]["mean"] < 0.6 * public["seconds"]["mean"]
    assert fast["score"]["mean"] >= public["score"]["mean"]
