"""inference/calibrate.py: the stop table fitted on recorded traces by finishing order, and the stop rule that
reads it."""

import json

import pytest

from inference.calibrate import fit, main
from inference.voting import StopRule, Votes, stop_reason


def traces(problems=6, samples=8, early_right=True):
    """Each problem: the first half to finish (short) split between two wrong answers, 1 and 2; the slow half all
    say the gold 7, which is the majority of all 8 — or the reverse order when not early_right."""
    out = []
    for p in range(problems):
        for s in range(samples):
            late = s >= samples // 2
            answer = 7 if late else (1 if s % 2 else 2)
            seconds = (10 + s) if late == early_right else (100 + s)
            out.append({"problem_id": f"p{p}", "sample": s, "text": f"</think> \\boxed{{{answer}}}",
                        "tokens": int(seconds * 10), "seconds": float(seconds), "gold": "7"})
    return out


def write(tmp_path, name, records):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_the_table_conditions_on_finishing_order(tmp_path):
    # Slow samples carry the majority: a 2-vote leader among the first finishers is never the final answer.
    slow_right = fit([write(tmp_path, "a.jsonl", traces(early_right=False))], samples=8, draws=20)
    cells = {(c["leader"], c["runner_up"], c["finished"]): c for c in slow_right["cells"]}
    assert cells[(1, 1, 2)]["risk"] == pytest.approx((6 + 1) / (6 + 2))  # every problem flips there
    # The 7s finish first: a 2-0 lead after 2 is the final majority every time.
    fast_right = fit([write(tmp_path, "b.jsonl", traces(early_right=True))], samples=8, draws=20)
    cells = {(c["leader"], c["runner_up"], c["finished"]): c for c in fast_right["cells"]}
    assert cells[(2, 0, 2)]["risk"] == pytest.approx(1 / 8) and cells[(2, 0, 2)]["problems"] == 6
    # tokens give the same order here (tokens = 10 × seconds)
    assert fit([write(tmp_path, "c.jsonl", traces())], samples=8, draws=20, order="tokens")["cells"] == \
        fast_right["cells"]


def test_two_votes_stop_only_where_the_table_says_the_risk_is_low(tmp_path):
    table = {"samples": 8, "cells": [{"leader": 2, "runner_up": 0, "finished": 2, "risk": 0.02},
                                     {"leader": 2, "runner_up": 1, "finished": 3, "risk": 0.3}]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table))
    rule = StopRule(kind="calibrated", confidence=0.8, min_votes=2, stop_table=str(path), max_risk=0.05)
    assert stop_reason(Votes.of([5, 5]), 2, 8, rule) == "stop_table"
    assert stop_reason(Votes.of([5, 6, 5]), 3, 8, rule) is None  # risk 0.3: the table says wait
    assert stop_reason(Votes.of([5, 6, 5]), 3, 8, StopRule(kind="calibrated", confidence=0.6)) == "calibrated"
    assert stop_reason(Votes.of([5, None, 5]), 3, 8, rule) is None  # a cell the traces never reached
    assert stop_reason(Votes.of([5, 5, 5, 5]), 4, 8, rule) == "calibrated"  # 3+ votes: the rule's own model
    assert stop_reason(Votes.of([5, 5]), 2, 8, StopRule(kind="calibrated", confidence=0.8)) == "calibrated"
    with pytest.raises(ValueError, match="voting.stop_table: no such file"):
        StopRule(stop_table=str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cells": []}))
    with pytest.raises(ValueError, match="is not a stop table"):
        StopRule(stop_table=str(bad))
    with pytest.raises(ValueError, match="voting.max_risk"):
        StopRule(max_risk=1.5)


def test_cli_writes_the_table_and_checks_it_on_held_out_traces(tmp_path, capsys):
    a, b = write(tmp_path, "a.jsonl", traces()), write(tmp_path, "b.jsonl", traces(problems=4))
    out = tmp_path / "table.json"
    assert main(["--traces", a, "--samples", "8", "--draws", "10", "--out", str(out), "--check", b]) == 0
    printed = capsys.readouterr().out
    assert "2-0 after  2" in printed and "held-out" in printed
    assert StopRule(stop_table=str(out)).stop_table == str(out)
    assert main(["--traces", str(tmp_path / "missing.jsonl")]) == 2
    assert "error: traces: no such file" in capsys.readouterr().err
