"""The AIMO-3 winners' vote: token entropy from top-k logprobs, the per-sample meter (mean and tail window), the
inverse-entropy weighted vote, and the solver picking by entropy while stopping on plain votes."""

import json
import math

import pytest

from inference.clock import VirtualClock
from inference.config import load_settings
from inference.engines.replay import ReplayEngine
from inference.entropy import EntropyMeter, token_entropy, top_logprobs
from inference.solver import Solver
from inference.voting import StopRule, entropy_vote, inverse_entropy_weight, selection_weight, uses_entropy

LN = math.log


def test_token_entropy_in_bits_over_the_top_k_without_renormalizing():
    assert token_entropy([LN(0.5), LN(0.25)]) == 1.0  # 0.5·1 + 0.25·2
    assert token_entropy([LN(0.5), LN(0.25), LN(0.25)]) == 1.5
    assert token_entropy([0.0]) == 0.0  # certain
    assert token_entropy([-math.inf, LN(0.5)]) == 0.5  # p = 0 adds nothing


def test_top_logprobs_keeps_the_k_largest_of_a_vllm_position():
    from vllm.logprobs import Logprob

    # vLLM returns the top k plus the sampled token when it ranked lower: k + 1 entries.
    position = {11: Logprob(LN(0.5), rank=1), 12: Logprob(LN(0.25), rank=2), 99: Logprob(LN(0.01), rank=40)}
    assert top_logprobs(position, 2) == [LN(0.5), LN(0.25)]
    assert top_logprobs({1: LN(0.25), 2: LN(0.5)}, 5) == [LN(0.5), LN(0.25)]  # plain floats too


def test_entropy_meter_mean_and_tail_window_over_vllm_flat_logprobs():
    from vllm.logprobs import FlatLogprobs, Logprob

    def position(*probs):
        return {i: Logprob(LN(p), rank=i + 1) for i, p in enumerate(probs)}

    flat = FlatLogprobs()  # what vLLM hands out per streamed delta with flat_logprobs on
    for p in [position(0.5, 0.25), position(1.0), position(0.5, 0.25, 0.25)]:
        flat.append(p)
    meter = EntropyMeter(top_k=5, tail_tokens=2)
    assert (meter.mean, meter.tail_mean) == (None, None)
    meter.add_positions(flat)  # entropies 1.0, 0.0, 1.5
    meter.add_positions([position(0.5), None])  # 0.5; a position without logprobs is skipped
    assert meter.count == 4
    assert meter.mean == 0.75  # (1 + 0 + 1.5 + 0.5) / 4
    assert meter.tail_mean == 1.0  # the last 2: (1.5 + 0.5) / 2
    trace = meter.trace()
    assert {k: trace[k] for k in ("entropy", "entropy_tail", "entropy_tail_tokens")} == {
        "entropy": 0.75, "entropy_tail": 1.0, "entropy_tail_tokens": 2}
    assert "conf_min" in trace and len(trace["conf_windows"]) == 1  # 4 tokens: one (partial) window of 256
    top1 = EntropyMeter(top_k=1, tail_tokens=8)
    top1.add_positions([position(0.5, 0.25)])
    assert top1.mean == 0.5  # only the top token counts


def test_inverse_entropy_vote_beats_the_majority_exactly():
    # 7: two samples, 1/0.5 + 1/1.0 = 3.0; 3: one confident sample, 1/0.25 = 4.0.
    assert entropy_vote([(7, 0.5), (7, 1.0), (3, 0.25), (None, 0.01)]) == 3
    assert entropy_vote([(7, 0.5), (7, 0.5), (3, 0.25)]) == 7  # 4.0 against 4.0: more raw votes wins the tie
    assert entropy_vote([]) is None
    assert inverse_entropy_weight(0.5) == 2.0
    assert inverse_entropy_weight(0.0) == 1 / 1e-9  # the notebooks' floor
    assert inverse_entropy_weight(None) == 0.0  # a sample without tokens


def test_selection_weight_reads_the_trace_and_names_what_is_missing():
    extra = {"entropy": 0.5, "entropy_tail": 0.25, "entropy_tail_tokens": 256}
    assert selection_weight(StopRule(), extra) == 1.0
    assert selection_weight(StopRule(weights=["entropy"]), extra) == 2.0
    assert selection_weight(StopRule(weights=["entropy_tail"]), extra) == 4.0
    assert uses_entropy(StopRule(weights=["entropy_tail"])) and not uses_entropy(StopRule(weights=["prior"]))
    with pytest.raises(ValueError, match="'entropy'"):
        selection_weight(StopRule(weights=["entropy"]), {"prompt_tokens": 3})
    with pytest.raises(ValueError, match="entropy_tail_tokens is 96 but .* last 256 tokens"):
        selection_weight(StopRule(weights=["entropy_tail"], entropy_tail_tokens=96), extra)
    with pytest.raises(ValueError, match="voting.entropy_top_k"):
        StopRule(weights=["entropy"], entropy_top_k=0)


def _traces(path, samples):
    """samples: (answer, seconds, entropy, entropy_tail) per sample of problem "p"."""
    with path.open("w") as f:
        for i, (answer, seconds, entropy, tail) in enumerate(samples):
            f.write(json.dumps({"problem_id": "p", "sample": i, "text": f"\\boxed{{{answer}}}", "tokens": 50,
                                "seconds": seconds, "entropy": entropy, "entropy_tail": tail,
                                "entropy_tail_tokens": 256}) + "\n")
    return path


@pytest.mark.parametrize(("weights", "answer"), [([], 7), (["entropy"], 3), (["entropy_tail"], 7)])
def test_solver_stops_on_four_votes_and_picks_by_inverse_entropy(tmp_path, weights, answer):
    # The first five finish before the 4th "7": 7 ×3 unsure (entropy 1.0), 3 ×2 sure (0.2); the stop rule fires
    # on raw votes at the 4th "7" (t = 60), and the pick is 3 (2/0.2 = 10 > 4/1.0) with entropy weights. The tail
    # entropies say the opposite (the "3" samples grew unsure at the end), so the tail variant keeps 7.
    path = _traces(tmp_path / "t.jsonl", [(7, 10, 1.0, 0.1), (3, 20, 0.2, 2.0), (7, 30, 1.0, 0.1),
                                          (3, 40, 0.2, 2.0), (7, 50, 1.0, 0.1), (7, 60, 1.0, 0.1),
                                          (3, 70, 0.2, 2.0), (3, 80, 0.2, 2.0)])
    overrides = {"voting.kind": "k_of_n", "voting.k": 4, "voting.straggler_fraction": None, "voting.weights": weights,
                 "sampling.samples": 8, "sampling.stop_rule": "none"}
    settings = load_settings(None, overrides, engine="replay", traces=str(path), virtual_clock=True)
    solver = Solver(ReplayEngine(path, clock=VirtualClock()), settings)
    requests = solver.requests("p", "q", 0, 2)
    assert [r.logprobs for r in requests] == [5 if weights else 0] * 2  # logprobs only when the policy asks
    r = solver.solve("p", "q", deadline=1000)
    assert (r.answer, r.stop_reason, r.samples, r.votes) == (answer, "k_of_n", 6, {7: 4, 3: 2})


def _problem_traces(pid, with_entropy=True):
    """8 samples: 7 (wrong, unsure: entropy 2.0) and 5 (right, sure: 0.1) alternate; four 7s arrive first."""
    records = []
    for i in range(8):
        answer, entropy = (7, 2.0) if i % 2 == 0 else (5, 0.1)
        r = {"problem_id": pid, "sample": i, "text": f"\\boxed{{{answer}}}", "tokens": 100, "seconds": 10.0 * (i + 1),
             "gold": "5"}
        if with_entropy:
            r.update(entropy=entropy, entropy_tail=entropy, entropy_tail_tokens=256)
        records.append(r)
    return records


@pytest.mark.parametrize("with_entropy", [True, False])
def test_simulator_runs_the_entropy_policies_on_traces_with_entropy(tmp_path, with_entropy):
    from inference.simulate import POLICIES_FILE, compare, load_trace_set

    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for pid in "abcd" for r in _problem_traces(pid, with_entropy)))
    result = compare(load_trace_set(path), "aimo3", "recorded", POLICIES_FILE, orders=3, seed=0, problems=4,
                     only=["aimo3_public", "aimo3_entropy", "aimo3_entropy_tail"], shuffle_samples=False)
    scores = {name: r["score"]["mean"] for name, r in result["policies"].items()}
    # Four 7s stop every problem after 7 samples: plain votes say 7 (4 against 3), entropy says 5 (30 against 2).
    if with_entropy:
        assert scores == {"aimo3_public": 0, "aimo3_entropy": 4, "aimo3_entropy_tail": 4}
        assert not any("warning" in r for r in result["policies"].values())
    else:
        assert scores == {"aimo3_public": 0, "aimo3_entropy": 0, "aimo3_entropy_tail": 0}
        assert "no `entropy`" in result["policies"]["aimo3_entropy"]["warning"]


def test_deepconf_confidence_summary_is_compact_and_finds_the_least_sure_window():
    # Token confidence = -(mean top-k logprob): a sure token (top 2 logprobs 0 and -8) scores 4, an unsure one (two
    # halves, ln 0.5 each) 0.693. Windows of 3 slide over sure×3, unsure×3, sure×2: the least confident is the
    # unsure run; blocks of 3 give sure, unsure, and the partial last block.
    meter = EntropyMeter(top_k=2, tail_tokens=4, conf_window=3)
    half = math.log(0.5)
    for lp in [[0.0, -8.0]] * 3 + [[half, half]] * 3 + [[0.0, -8.0]] * 2:
        meter.add_logprobs(lp)
    conf = meter.confidence()
    assert conf["conf_min"] == pytest.approx(0.6931, abs=1e-4)
    assert conf["conf_windows"] == [4.0, pytest.approx(0.6931, abs=1e-4), 4.0] and conf["conf_window"] == 3
    assert conf["conf_tail"] == pytest.approx((0.6931 + 8) / 3, abs=1e-3)
    assert EntropyMeter(top_k=2, tail_tokens=4).confidence() == {}
    with pytest.raises(ValueError, match="conf_window"):
        EntropyMeter(top_k=2, tail_tokens=4, conf_window=0)
