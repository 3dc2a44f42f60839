"""Vote tallies, tie-breaks, weights and the early-stop rules, each at its exact boundary. Pure policy code, fast:
    .venv/bin/python -m pytest tests/test_voting.py -q"""

from pathlib import Path

import pytest
import yaml

from inference.voting import (
    StopRule,
    Votes,
    answer_prior_weight,
    leader_keeps_lead_probability,
    length_weight,
    stop_reason,
)

REPO = Path(__file__).resolve().parents[1]


def tally(*answers, weights=None) -> Votes:
    votes = Votes()
    for i, a in enumerate(answers):
        votes.add(a, 1.0 if weights is None else weights[i])
    return votes


def first_stop(answers, launched, rule):
    """Feed finished samples one by one; (how many had finished, reason) at the first stop."""
    votes = Votes()
    for finished, answer in enumerate(answers, start=1):
        votes.add(answer)
        reason = stop_reason(votes, finished, launched, rule)
        if reason is not None:
            return finished, reason
    return None


# -- Votes ----------------------------------------------------------------------------------------------------------


def test_votes_counts_valid_invalid_and_order():
    v = tally(7, None, 3, 7, None, 5)
    assert (v.valid, v.invalid, v.finished) == (4, 2, 6)
    assert v.order == [7, 3, 5]
    assert v.as_dict() == {7: 2, 3: 1, 5: 1}
    assert v.leader() == 7


def test_no_valid_votes_no_leader():
    assert Votes().leader() is None
    assert tally(None, None).leader() is None


@pytest.mark.parametrize("answers,weights,leader", [
    ((5, 7), None, 5),  # one vote each: the first to reach 1 vote
    ((5, 7, 7, 5), None, 7),  # two each: 7 reached 2 votes first
    ((5, 7, 5, 7), None, 5),
    ((5, 7, 7, 5, 9, 9, 9), None, 9),  # plain majority
    ((5, 7), (0.6, 1.0), 7),  # higher weight beats earlier
    ((5, 5, 7), (0.5, 0.5, 1.0), 5),  # equal weight: more raw votes
    ((7, 5, 5), (1.0, 0.5, 0.5), 5),
    ((5, 5, 7, 7, 7), (0.6, 0.6, 0.4, 0.4, 0.4), 7),  # 1.2 each: 7 has more raw votes
])
def test_leader_tie_breaks_are_deterministic(answers, weights, leader):
    assert tally(*answers, weights=weights).leader() == leader
    assert tally(*answers, weights=weights).leader() == leader  # same input, same answer


def test_votes_reject_negative_weight():
    with pytest.raises(ValueError, match="weight"):
        Votes().add(3, -1.0)


def test_window_of_first_n():
    v = tally(7, 3, 3, 3, 7)
    assert v.first(2).as_dict() == {7: 1, 3: 1}
    assert v.first(2).leader() == 7 and v.leader() == 3


# -- k_of_n ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("answers,launched,k,expected", [
    ([7, 7, 7, 7, 3, 3, 3, 3], 8, 4, (4, "k_of_n")),
    ([7, 3, 7, None, 7, 3, 7, 3], 8, 4, (7, "k_of_n")),  # the 4th agreeing vote is the 7th sample
    ([3, 7, 3, 7, 3, 7, 3, 9], 8, 4, (7, "k_of_n")),
    ([3, 7, 9, 1, 5, 2], 8, 1, (1, "k_of_n")),
    ([3, 7, 9, 1, 5, 2, 4, 6], 8, 2, None),  # never two alike, nothing left running at the end: not a rule stop
])
def test_k_of_n_boundary(answers, launched, k, expected):
    rule = StopRule(kind="k_of_n", k=k)
    result = first_stop(answers[:-1], launched, rule) if expected is None else first_stop(answers, launched, rule)
    assert result == expected


def test_k_of_n_window_counts_only_the_first_n():
    rule = StopRule(kind="k_of_n", k=4, n=5)  # NemoSkills' "4 of the first 5"
    assert first_stop([7, 7, 3, 7, 7, 7, 7], 12, rule) == (5, "k_of_n")
    assert first_stop([7, 7, 7, 7], 12, rule) == (4, "k_of_n")
    # The 4th 7 arrives 6th: outside the window, so the rule never fires (but k_of_n without a window does).
    assert first_stop([7, 7, 3, 9, 7, 7, 7, 7], 12, rule) is None
    assert first_stop([7, 7, 3, 9, 7, 7], 12, StopRule(kind="k_of_n", k=4)) == (6, "k_of_n")


def test_k_of_n_counts_weight():
    rule = StopRule(kind="k_of_n", k=2)
    v = tally(7, 7, 7, weights=(0.6, 0.6, 0.6))
    assert stop_reason(v.first(2), 2, 8, rule) is None  # 1.2 < 2
    assert stop_reason(v, 3, 8, rule) is None  # 1.8 < 2
    v.add(7, 0.6)
    assert stop_reason(v, 4, 8, rule) == "k_of_n"


# -- leader_safe ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("answers,launched,expected", [
    ([5, 5, 3, 5, 5], 8, (5, "leader_safe")),  # after 4: 3 vs 1 + 4 left → catchable; after 5: 4 vs 1 + 3 → safe
    ([5, 5, 5, 5], 8, (4, "leader_safe")),  # 4 vs a new answer with 4 left: a tie keeps the leader
    ([5, 5, 5, 5, 5], 10, (5, "leader_safe")),  # 4 with 6 left: a new answer could still win
    ([5, None, 5, None, 5], 7, (5, "leader_safe")),  # invalid samples finish without voting
    ([5, 3, 5], 4, (3, "leader_safe")),  # 2 vs 1 + 1 left: the runner-up could only tie
    ([5, 3, 9, 1], 4, (4, "all_finished")),  # undecided until the end: nothing saved, say so
])
def test_leader_safe_boundary(answers, launched, expected):
    assert first_stop(answers, launched, StopRule(kind="leader_safe")) == expected


def test_leader_safe_second_place_matters():
    rule = StopRule(kind="leader_safe")
    assert stop_reason(tally(5, 5, 5, 3, 3), 5, 7, rule) is None  # runner-up 2 + 2 left = 4 > 3
    assert stop_reason(tally(5, 5, 5, 5, 3, 3), 6, 8, rule) == "leader_safe"  # 2 + 2 = 4: a tie the leader keeps


def test_min_votes_holds_back_every_rule():
    v = tally(5, 5)
    assert stop_reason(v, 2, 3, StopRule(kind="leader_safe")) == "leader_safe"
    assert stop_reason(v, 2, 3, StopRule(kind="leader_safe", min_votes=3)) is None
    assert stop_reason(v, 2, 3, StopRule(kind="k_of_n", k=2, min_votes=3)) is None
    assert stop_reason(v, 2, 3, StopRule(kind="never", straggler_fraction=0.5, min_votes=3)) is None


# -- calibrated -----------------------------------------------------------------------------------------------------


def test_calibrated_is_deterministic():
    rule = StopRule(kind="calibrated")
    a = leader_keeps_lead_probability(tally(7, 7, 3, 7), 5, rule)
    b = leader_keeps_lead_probability(tally(7, 7, 3, 7), 5, rule)
    assert a == b and 0 < a < 1
    assert leader_keeps_lead_probability(tally(7, 7, 3, 7), 5, StopRule(kind="calibrated", seed=1)) != a


def test_calibrated_stops_exactly_at_its_confidence():
    v, remaining = tally(7, 7, 3, 7), 4
    p = leader_keeps_lead_probability(v, remaining, StopRule(kind="calibrated"))
    assert 0.5 < p < 1
    assert stop_reason(v, 4, 4 + remaining, StopRule(kind="calibrated", confidence=p)) == "calibrated"
    assert stop_reason(v, 4, 4 + remaining, StopRule(kind="calibrated", confidence=min(p + 1e-6, 0.999999))) is None


def test_calibrated_is_certain_when_the_leader_is_safe():
    rule = StopRule(kind="calibrated")
    assert leader_keeps_lead_probability(tally(5, 5, 5, 5), 4, rule) == 1.0
    assert leader_keeps_lead_probability(tally(5), 0, rule) == 1.0
    assert leader_keeps_lead_probability(Votes(), 4, rule) == 0.0


@pytest.mark.parametrize("others", [(), (3,), (3, 9), (None, None)])
def test_calibrated_probability_grows_with_agreement(others):
    rule = StopRule(kind="calibrated")
    probabilities = [leader_keeps_lead_probability(tally(*others, *[7] * n), 6, rule) for n in range(1, 7)]
    assert probabilities == sorted(probabilities)
    assert probabilities[-1] > probabilities[0]


def test_calibrated_more_agreement_stops_earlier():
    rule = StopRule(kind="calibrated", confidence=0.95)
    unanimous = first_stop([7] * 16, 16, rule)
    one_dissent = first_stop([7, 3] + [7] * 14, 16, rule)
    split = first_stop([7, 3, 9, 7, 3] + [7] * 11, 16, rule)
    assert unanimous[1] == one_dissent[1] == split[1] == "calibrated"
    assert unanimous[0] < one_dissent[0] < split[0]


def test_calibrated_higher_confidence_never_stops_earlier():
    answers = [7, 3, 7, 7, 9, 7, 7, 7, 7, 7, 7, 7]
    stops = [first_stop(answers, 12, StopRule(kind="calibrated", confidence=c))[0] for c in (0.8, 0.9, 0.95, 0.99)]
    assert stops == sorted(stops) and stops[0] < stops[-1]


# -- never, stragglers, all_finished --------------------------------------------------------------------------------


def test_never_runs_every_sample():
    assert first_stop([7] * 8, 8, StopRule(kind="never")) == (8, "all_finished")


@pytest.mark.parametrize("fraction,launched,stop_at", [(0.75, 8, 6), (0.8, 10, 8), (0.7, 10, 7), (0.5, 3, 2),
                                                       (1.0, 8, 8)])
def test_stragglers_boundary(fraction, launched, stop_at):
    rule = StopRule(kind="never", straggler_fraction=fraction)
    answers = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10][:launched]  # all different: no rule fires before
    expected = "all_finished" if stop_at == launched else "stragglers"
    assert first_stop(answers, launched, rule) == (stop_at, expected)


def test_stragglers_need_a_leader():
    rule = StopRule(kind="never", straggler_fraction=0.5)
    assert first_stop([None, None, None, 4], 4, rule) == (4, "all_finished")
    assert first_stop([None, None, 3, 4], 4, rule) == (3, "stragglers")


def test_rule_is_named_before_stragglers():
    rule = StopRule(kind="k_of_n", k=3, straggler_fraction=0.5)
    assert stop_reason(tally(7, 7, 7, 3), 4, 8, rule) == "k_of_n"
    assert stop_reason(tally(7, 7, 3, 3), 4, 8, rule) == "stragglers"


@pytest.mark.parametrize("kind", ["k_of_n", "leader_safe", "calibrated", "never"])
def test_all_finished(kind):
    assert stop_reason(tally(7, 3, 7, 3), 4, 4, StopRule(kind=kind)) == "all_finished"
    assert stop_reason(Votes(), 0, 0, StopRule(kind=kind)) == "all_finished"
    assert stop_reason(tally(None, None), 2, 2, StopRule(kind=kind)) == "all_finished"
    assert stop_reason(tally(None, None), 2, 4, StopRule(kind=kind)) is None


def test_k_of_n_is_named_even_when_the_kth_vote_comes_last():
    # e.g. the solver restarted a crashed engine and all relaunched samples finished in one poll
    assert stop_reason(tally(8, 8, 8, 8), 4, 4, StopRule(kind="k_of_n", k=4)) == "k_of_n"
    assert stop_reason(tally(8, 8, 8, 3), 4, 4, StopRule(kind="k_of_n", k=4)) == "all_finished"
    assert stop_reason(tally(8, 8, 8, 8), 4, 4, StopRule(kind="leader_safe")) == "all_finished"


# -- StopRule config ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "inference").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid_rules(path):
    section = yaml.safe_load(path.read_text()).get("voting")
    assert isinstance(StopRule.from_config(section), StopRule)


def test_settings_loader_reports_bad_voting_fields():
    from inference.config import load_settings

    s = load_settings(None, {"voting.kind": "leader_safe", "voting.min_votes": 2}, engine="replay", traces="t.jsonl")
    assert (s.voting.kind, s.voting.min_votes) == ("leader_safe", 2)
    with pytest.raises(ValueError, match="voting.confidence"):
        load_settings(None, {"voting.kind": "calibrated", "voting.confidence": 2}, engine="replay", traces="t.jsonl")


def test_from_config_reads_every_field():
    rule = StopRule.from_config({"kind": "calibrated", "k": 3, "n": 5, "confidence": 0.9, "prior": 0.5,
                                 "simulations": 500, "seed": 3, "min_votes": 2, "straggler_fraction": 0.75})
    assert (rule.kind, rule.k, rule.n, rule.confidence, rule.prior, rule.simulations, rule.seed, rule.min_votes,
            rule.straggler_fraction) == ("calibrated", 3, 5, 0.9, 0.5, 500, 3, 2, 0.75)
    assert StopRule.from_config(None) == StopRule()


@pytest.mark.parametrize("section,field", [
    ({"kind": "majority"}, "voting.kind"),
    ({"k": 0}, "voting.k"),
    ({"k": "4"}, "voting.k"),
    ({"k": True}, "voting.k"),
    ({"k": 4, "n": 3}, "voting.n"),
    ({"confidence": 1.0}, "voting.confidence"),
    ({"confidence": "high"}, "voting.confidence"),
    ({"prior": 0}, "voting.prior"),
    ({"simulations": 0}, "voting.simulations"),
    ({"min_votes": 0}, "voting.min_votes"),
    ({"straggler_fraction": 0}, "voting.straggler_fraction"),
    ({"straggler_fraction": 1.5}, "voting.straggler_fraction"),
    ({"kinds": "k_of_n"}, "kinds"),
    ("k_of_n", "voting"),
])
def test_from_config_errors_name_the_field(section, field):
    with pytest.raises(ValueError, match=field):
        StopRule.from_config(section)


# -- weights --------------------------------------------------------------------------------------------------------


def test_length_weight():
    assert length_weight(0, 1000) == 1.0
    assert length_weight(500, 1000) == pytest.approx(0.75)
    assert length_weight(1000, 1000) == length_weight(5000, 1000) == 0.5
    assert length_weight(1000, 1000, floor=0.2) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="max_tokens"):
        length_weight(10, 0)


@pytest.mark.parametrize("answer,weight", [(0, 0.6), (1, 0.6), (20, 0.6), (-3, 0.6), (21, 1.0), (300, 0.6),
                                           (301, 1.0), (None, 0.0)])
def test_answer_prior_weight(answer, weight):
    assert answer_prior_weight(answer) == weight


def test_prior_weight_changes_the_leader():
    # 2 × "0" against 2 × "137": plain voting gives the tie to 0 (it got there first); the prior weighs 0 at 0.6.
    plain, weighted = Votes(), Votes()
    for a in (0, 137, 0, 137):
        plain.add(a)
        weighted.add(a, answer_prior_weight(a))
    assert plain.leader() == 0 and weighted.leader() == 137


# -- contention (the time budget's difficulty signal) and the "hopeless" give-up ----------------------------------
def test_contention_is_the_runner_up_over_the_leader_and_zero_when_settled_or_unknown():
    from inference.voting import contention

    assert contention(Votes.of([1, 2]), 2, 8) == 1.0  # a real split
    assert contention(Votes.of([1, 1, 2]), 3, 8) == 0.5
    assert contention(Votes.of([1, 1, 1, 1, 2]), 5, 8) == 0.25
    assert contention(Votes.of([1, 1, 1]), 3, 8) == 0.0  # one answer: settled
    assert contention(Votes.of([None, None]), 2, 8) == 0.0  # nothing to go on
    assert contention(Votes.of([1, 2]), 8, 8) == 0.0  # nothing left running


def test_hopeless_gives_up_when_enough_finished_and_no_two_agree():
    rule = StopRule(kind="k_of_n", k=4, hopeless_after=4)
    assert stop_reason(Votes.of([1, 2, 3]), 3, 16, rule) is None
    assert stop_reason(Votes.of([1, 2, 3, None]), 4, 16, rule) == "hopeless"
    assert stop_reason(Votes.of([1, 2, 3, 1]), 4, 16, rule) is None  # two agree: worth waiting for
    assert stop_reason(Votes.of([1, 2, 3, 4]), 4, 16, StopRule(kind="k_of_n", k=4)) is None  # off by default
    with pytest.raises(ValueError, match="voting.hopeless_after"):
        StopRule(hopeless_after=1)


def test_the_calibrated_estimate_is_computed_once_per_tally_and_stays_the_same():
    from inference.voting import _KEEP_LEAD_MEMO, leader_keeps_lead_probability

    rule = StopRule(kind="calibrated", simulations=500, seed=3)
    votes = Votes.of([7, 7, 9, None])
    _KEEP_LEAD_MEMO.clear()
    first = leader_keeps_lead_probability(votes, 5, rule)
    assert len(_KEEP_LEAD_MEMO) == 1
    again = leader_keeps_lead_probability(Votes.of([7, 9, 7, None]), 5, rule)  # same tally, other order
    assert again == first and len(_KEEP_LEAD_MEMO) == 1
    _KEEP_LEAD_MEMO.clear()
    assert leader_keeps_lead_probability(votes, 5, rule) == first  # recomputed: the same estimate
    assert 0 < first < 1


def test_vote_first_rule_lets_tail_entropy_only_break_ties():
    from inference.voting import selection_weight

    rule = StopRule(weights=["votes_then_tail"])
    sure = {"entropy_tail": 0.01, "entropy_tail_tokens": 256}  # 1/entropy = 100
    unsure = {"entropy_tail": 2.0, "entropy_tail_tokens": 256}
    # 3 unsure votes for 5 beat 2 very sure votes for 6 (the plain entropy vote would pick 6) ...
    votes = Votes()
    for answer, extra in [(5, unsure), (6, sure), (5, unsure), (6, sure), (5, unsure)]:
        votes.add(answer, selection_weight(rule, extra))
    assert votes.leader() == 5
    entropy = Votes()
    for answer, extra in [(5, unsure), (6, sure), (5, unsure), (6, sure), (5, unsure)]:
        entropy.add(answer, selection_weight(StopRule(weights=["entropy_tail"]), extra))
    assert entropy.leader() == 6
    # ... and at 2-2 the surer answer wins, whichever reached 2 first
    tie = Votes()
    for answer, extra in [(5, unsure), (5, unsure), (6, sure), (6, sure)]:
        tie.add(answer, selection_weight(rule, extra))
    assert tie.leader() == 6


def test_confidence_weighted_vote_reads_the_samples_lowest_window_confidence():
    from inference.voting import selection_weight

    rule = StopRule(weights=["confidence"])
    assert selection_weight(rule, {"conf_min": 3.5}) == 3.5
    with pytest.raises(ValueError, match="'conf_min'"):
        selection_weight(rule, {})
