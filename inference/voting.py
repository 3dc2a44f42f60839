"""Vote tallies and early-stop rules for one problem: pure policy code, no engine and no clock, so the server, the
replay simulator and the tests run exactly the same decisions.

The solver adds each finished sample's answer (`Votes.add`), then asks `stop_reason(votes, finished, launched,
rule)` whether the samples still running can be cancelled. The rules cover what the winning AIMO solutions shipped
(their write-ups and code: NVIDIA/NeMo-Skills, imagination-research/aimo2, AIMO-3 notebooks), as configs (the
`voting:` section of configs/inference/*.yaml):

    kind: k_of_n, k: 4                      # AIMO-3 winners: stop at 4 identical answers (of 8)
    kind: k_of_n, k: 4, n: 5                # NemoSkills: "the first 4-5 completions agreed" (4 of the first 5)
    kind: leader_safe                       # AIMO-3 2nd place: stop when second + remaining ≤ leader
    kind: calibrated, confidence: 0.95      # stop when the leader will still lead with probability ≥ 95 %
    stop_table: T.json, max_risk: 0.05      # 2 votes stop only where a table fitted on traces says risk ≤ 5 %
    straggler_fraction: 0.8                 # NemoSkills: cancel the last pending samples once most have finished
    hopeless_after: 4                       # give up once 4 finished and no two agree (the kit's default)

Weights (`length_weight`, `answer_prior_weight`) are off unless the `voting.weights` setting names them.

The AIMO-3 winners' vote (`weights: [entropy]` or `[entropy_tail]`) picks the answer with the largest Σ 1/entropy
over its samples (`selection_weight`, entropies from inference/entropy.py), while the stop rules keep counting
plain votes ("stop at 4 identical answers, then pick by inverse entropy").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from inference.mappings import dataclass_from_mapping

STOP_KINDS = ("k_of_n", "leader_safe", "calibrated", "never")


class Votes:
    """The answers of one problem's finished samples, in the order they finished.

    `add(None)` records a finished sample without a valid answer: it counts as finished, never as a vote.
    Leader and tie-break (deterministic, documented here once): the highest total weight wins; among equal
    weights, more raw votes; then the answer that reached its count first (its latest vote came earliest).
    With all weights 1 that is plain majority, ties going to the answer that got there first.
    """

    def __init__(self) -> None:
        self.history: list[tuple[int | None, float]] = []  # (answer or None, weight) per finished sample
        self.counts: dict[int, int] = {}  # raw votes; insertion order = the order answers were first seen
        self.weights: dict[int, float] = {}
        self._last_vote: dict[int, int] = {}  # answer → index in history of its latest vote

    @classmethod
    def of(cls, answers) -> "Votes":
        """The unweighted votes of `answers` (None: a sample without a valid answer), in order."""
        votes = cls()
        for answer in answers:
            votes.add(answer)
        return votes

    def add(self, answer: int | None, weight: float = 1.0) -> None:
        if weight < 0 or math.isnan(weight):
            raise ValueError(f"Votes.add: weight must be ≥ 0, got {weight}")
        self.history.append((answer, weight))
        if answer is None:
            return
        self.counts[answer] = self.counts.get(answer, 0) + 1
        self.weights[answer] = self.weights.get(answer, 0.0) + weight
        self._last_vote[answer] = len(self.history) - 1

    @property
    def valid(self) -> int:
        return sum(self.counts.values())

    @property
    def invalid(self) -> int:
        return len(self.history) - self.valid

    @property
    def finished(self) -> int:
        return len(self.history)

    @property
    def order(self) -> list[int]:
        """Answers in the order they were first seen."""
        return list(self.counts)

    def ranking(self) -> list[int]:
        """All answers, leader first (see the class docstring for the tie-break)."""
        return sorted(self.counts, key=lambda a: (-self.weights[a], -self.counts[a], self._last_vote[a]))

    def leader(self) -> int | None:
        ranking = self.ranking()
        return ranking[0] if ranking else None

    def first(self, n: int) -> "Votes":
        """The tally of the first n finished samples only."""
        window = Votes()
        for answer, weight in self.history[:n]:
            window.add(answer, weight)
        return window

    def as_dict(self) -> dict[int, int]:
        """answer → raw vote count, in first-seen order (for reports)."""
        return dict(self.counts)

    def __repr__(self) -> str:
        return f"Votes({self.as_dict()}, invalid={self.invalid})"


@dataclass
class StopRule:
    """When to stop one problem early. Fields are the keys of the `voting:` config section.

    kind:
      "k_of_n"      - stop once an answer has `k` votes (total weight ≥ k); with `n` set, only the first n finished
                      samples count, so "4 of the first 5" never fires later on a slow 4th agreement.
      "leader_safe" - stop when the samples still running cannot take the lead away from the leader, even if all
                      of them voted for the runner-up (ties keep the leader: it reached the count first).
                      Exact for weights ≤ 1.
      "calibrated"  - stop when P(the current leader still leads once every launched sample has finished) ≥
                      `confidence`. Model: the answers of the remaining samples are drawn from a categorical
                      distribution with a Dirichlet(prior + observed tally) posterior over [each answer seen so far,
                      "invalid", "one new answer"]. The new-answer bucket pools all unseen answers into one
                      challenger (conservative). A final tie counts for the leader only if the leader got no
                      further votes (then it surely reached that count first). Future samples weigh 1. Estimated by
                      Monte Carlo with `simulations` draws and a fixed `seed`: the same tally always gives the same
                      decision (≈0.5 ms per call). With 8 samples and confidence 0.95, unanimous answers stop at 3.
      "never"       - never stop early (only `straggler_fraction` or all samples finishing end the problem).
    min_votes: no early stop (any kind, stragglers included) before this many valid votes.
    straggler_fraction: once this fraction of the launched samples has finished and there is a leader, cancel the
      rest (NemoSkills cancelled the last pending requests once the rest finished). None disables it.
    weights: weighted voting, a list of "length" (length_weight) and/or "prior" (answer_prior_weight); each vote
      weighs the product. Empty (the default): plain majority. "entropy" / "entropy_tail" (AIMO-3): the answer is
      picked by Σ 1/(the sample's mean token entropy) (over all its tokens / its last `entropy_tail_tokens`),
      times the other weights; stop rules still count votes. The engine then asks for `entropy_top_k` logprobs.
      "votes_then_tail": most votes wins, Σ inverse tail entropy only breaks ties (AIMO-3 runner-up);
      "confidence": each vote weighs its sample's lowest sliding-window confidence (DeepConf, `conf_min`).
    entropy_top_k: logprobs per token the entropy is computed over (the AIMO-3 notebooks: 5).
    entropy_tail_tokens: the tail window of "entropy_tail" (AIMO-3 2nd place: 256 in the write-up, 96 in the code).
    hopeless_after: give up once this many samples finished and no two of them agree (reason "hopeless"): the
      model is guessing, the remaining samples rarely change that, and the time goes to the problems left (the
      time budget re-plans). None disables it.
    stop_table: a table `python -m inference.calibrate` fitted on recorded traces (a path; relative ones from the
      repository root). With it, while the leader has ≤ 2 votes the table decides instead of the rule's kind: stop
      (reason "stop_table") only in a cell (leader, runner-up, finished) whose fitted risk is ≤ `max_risk`.
    confidence_stop: DeepConf online termination, in every engine (inference.entropy.ConfidenceGate): once
      `confidence_warmup` samples finished, a sample whose window confidence (windows of `confidence_window` tokens)
      falls below this quantile of their lowest window confidence ends there without a vote. The live engines then
      ask for `entropy_top_k` logprobs. None: off.
    """

    kind: str = "k_of_n"
    k: int = 4
    n: int | None = None
    confidence: float = 0.95
    prior: float = 1.0
    simulations: int = 2000
    seed: int = 0
    min_votes: int = 1
    straggler_fraction: float | None = None
    weights: list[str] = field(default_factory=list)
    entropy_top_k: int = 5
    entropy_tail_tokens: int = 256
    hopeless_after: int | None = None
    stop_table: str | None = None
    max_risk: float = 0.05
    confidence_stop: float | None = None
    confidence_warmup: int = 4
    confidence_window: int = 256

    def __post_init__(self) -> None:
        bad = [w for w in self.weights if w not in VOTE_WEIGHTS]
        if bad:
            raise ValueError(f"voting.weights: unknown {', '.join(bad)}; choose from {', '.join(VOTE_WEIGHTS)}")
        if self.kind not in STOP_KINDS:
            raise ValueError(f"voting.kind: {self.kind!r} is not one of {', '.join(STOP_KINDS)}")
        for name in ("k", "simulations", "min_votes", "entropy_top_k", "entropy_tail_tokens"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if self.hopeless_after is not None:
            _check_int("hopeless_after", self.hopeless_after, minimum=2)
        if self.n is not None:
            _check_int("n", self.n, minimum=1)
            if self.n < self.k:
                raise ValueError(f"voting.n ({self.n}) must be ≥ voting.k ({self.k}): k votes must fit in n")
        if not _is_number(self.confidence) or not 0 < self.confidence < 1:
            raise ValueError(f"voting.confidence must be a number in (0, 1), got {self.confidence!r}")
        if not _is_number(self.prior) or self.prior <= 0:
            raise ValueError(f"voting.prior must be a number > 0, got {self.prior!r}")
        if self.confidence_stop is not None and (not _is_number(self.confidence_stop)
                                                 or not 0 < self.confidence_stop < 1):
            raise ValueError(f"voting.confidence_stop must be in (0, 1) or null, got {self.confidence_stop!r}")
        _check_int("confidence_warmup", self.confidence_warmup, minimum=1)
        _check_int("confidence_window", self.confidence_window, minimum=1)
        if not _is_number(self.max_risk) or not 0 <= self.max_risk < 1:
            raise ValueError(f"voting.max_risk must be a number in [0, 1), got {self.max_risk!r}")
        if self.stop_table is not None:
            load_stop_table(self.stop_table)  # a missing or malformed table is an error when the config loads
        if self.straggler_fraction is not None and (
            not _is_number(self.straggler_fraction) or not 0 < self.straggler_fraction <= 1
        ):
            raise ValueError(f"voting.straggler_fraction must be in (0, 1] or null, got {self.straggler_fraction!r}")

    @classmethod
    def from_config(cls, d: dict | None) -> "StopRule":
        """From the `voting:` section of an inference config; missing keys take the defaults."""
        return cls() if d is None else dataclass_from_mapping(cls, d, "voting")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"voting.{name} must be an integer ≥ {minimum}, got {value!r}")


# -- the stop decision ------------------------------------------------------------------------------------------


def stop_reason(votes: Votes, finished: int, launched: int, rule: StopRule) -> str | None:
    """Why to stop this problem now, or None to keep waiting for samples.

    `finished` counts finished samples (valid or not) and `launched` the samples started; the samples still running
    are `launched - finished`. Reasons, first match wins:
      the rule's kind - "k_of_n" whenever k agree (also when the k-th vote came last); "leader_safe" and
                        "calibrated" only while samples are running (with none left they would hold trivially);
      "all_finished"  - nothing left running;
      "stragglers"    - straggler_fraction of the launched samples finished and there is a leader;
      "hopeless"      - hopeless_after samples finished and no two agree.
    No early stop (rule or stragglers) before `min_votes` valid votes.
    """
    remaining = launched - finished
    if launched <= 0:
        return "all_finished"
    table_decides = False
    if rule.stop_table is not None and remaining > 0 and votes.valid >= rule.min_votes:
        ranking = votes.ranking()
        leader = votes.counts[ranking[0]] if ranking else 0
        if 0 < leader <= 2:  # a 1- or 2-vote leader: only the fitted table may stop here
            table_decides = True
            runner = votes.counts[ranking[1]] if len(ranking) > 1 else 0
            risk = load_stop_table(rule.stop_table).risk(leader, runner, finished)
            if risk is not None and risk <= rule.max_risk:
                return "stop_table"
    if votes.valid >= rule.min_votes and not table_decides:
        if rule.kind == "k_of_n" and _k_of_n(votes, rule):
            return "k_of_n"
        if remaining > 0 and rule.kind == "leader_safe" and not _can_be_caught(votes, remaining):
            return "leader_safe"
        if remaining > 0 and rule.kind == "calibrated":
            if leader_keeps_lead_probability(votes, remaining, rule) >= rule.confidence:
                return "calibrated"
    if remaining <= 0:
        return "all_finished"
    no_two_agree = max(votes.counts.values(), default=0) < 2
    if rule.hopeless_after is not None and finished >= rule.hopeless_after and no_two_agree:
        return "hopeless"
    if votes.valid >= rule.min_votes and rule.straggler_fraction is not None:
        if finished >= math.ceil(rule.straggler_fraction * launched - 1e-9):
            return "stragglers"
    return None


class StopTable:
    """A fitted stop table (inference/calibrate.py's JSON): risk that the leader of a cell is not the final
    majority, by (leader votes, runner-up votes, samples finished)."""

    def __init__(self, data: dict, where: str) -> None:
        try:
            self.samples = int(data["samples"])
            self.cells = {(int(c["leader"]), int(c["runner_up"]), int(c["finished"])): float(c["risk"])
                          for c in data["cells"]}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"voting.stop_table: {where} is not a stop table (inference/calibrate.py writes one): "
                             f"{e!r}") from None

    def risk(self, leader: int, runner_up: int, finished: int) -> float | None:
        """The fitted risk of this cell; None where the traces never reached it (then nobody stops there)."""
        return self.cells.get((leader, runner_up, finished))


_TABLES: dict[str, StopTable] = {}


def load_stop_table(path: str) -> StopTable:
    """The table at `path` (relative paths from the repository root), read once per process."""
    if path not in _TABLES:
        import json
        from pathlib import Path

        file = Path(path) if Path(path).is_absolute() else Path(__file__).resolve().parents[1] / path
        if not file.exists():
            raise ValueError(f"voting.stop_table: no such file {path}")
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"voting.stop_table: {path} is not valid JSON ({e.msg})") from None
        _TABLES[path] = StopTable(data, path)
    return _TABLES[path]


def _k_of_n(votes: Votes, rule: StopRule) -> bool:
    window = votes if rule.n is None else votes.first(rule.n)
    leader = window.leader()
    return leader is not None and window.weights[leader] >= rule.k - 1e-9


def _can_be_caught(votes: Votes, remaining: int) -> bool:
    """Could `remaining` more samples (weight ≤ 1 each) make another answer the leader? A brand-new answer is a
    challenger too. A challenger that ties in weight and raw votes loses: the leader reached that count first."""
    leader = votes.leader()
    if leader is None:
        return True
    best = (votes.weights[leader], votes.counts[leader])
    challengers = [(votes.weights[a], votes.counts[a]) for a in votes.counts if a != leader] + [(0.0, 0)]
    for weight, count in challengers:
        if (weight + remaining, count + remaining) > best:
            return True
    return False


def leader_keeps_lead_probability(votes: Votes, remaining: int, rule: StopRule) -> float:
    """Monte Carlo estimate of P(the current leader still leads after `remaining` more samples) under the
    Dirichlet-multinomial model of StopRule ("calibrated"). Deterministic: the generator is seeded by rule.seed."""
    leader = votes.leader()
    if leader is None:
        return 0.0
    if remaining <= 0 or not _can_be_caught(votes, remaining):
        return 1.0
    answers = votes.ranking()  # leader first
    weights = tuple(votes.weights[a] for a in answers) + (float(votes.invalid), 0.0)  # + invalid, + one new answer
    key = (weights, remaining, rule.prior, rule.simulations, rule.seed)
    if key not in _KEEP_LEAD_MEMO:  # the same tally always gives the same estimate: compute each once
        if len(_KEEP_LEAD_MEMO) >= 100_000:
            _KEEP_LEAD_MEMO.clear()
        _KEEP_LEAD_MEMO[key] = _keep_lead_estimate(weights, remaining, rule)
    return _KEEP_LEAD_MEMO[key]


_KEEP_LEAD_MEMO: dict[tuple, float] = {}


def _keep_lead_estimate(weights: tuple[float, ...], remaining: int, rule: StopRule) -> float:
    import numpy as np

    tally = np.array(weights)
    rng = np.random.default_rng(rule.seed)
    probabilities = rng.dirichlet(tally + rule.prior, size=rule.simulations)
    future = rng.multinomial(remaining, probabilities)  # (simulations, buckets) future votes per bucket
    final = tally + future
    final[:, -2] = -np.inf  # the invalid bucket is nobody's vote
    # A final tie keeps the leader only if it got no further votes: then it surely reached that count first.
    best_challenger = final[:, 1:].max(axis=1)
    keeps = (final[:, 0] > best_challenger) | ((final[:, 0] == best_challenger) & (future[:, 0] == 0))
    return float(keeps.mean())


# -- optional weights for weighted voting (off by default) --------------------------------------------------------


def length_weight(tokens: int, max_tokens: int, floor: float = 0.5) -> float:
    """Weight of a sample by its length: 1.0 for an empty one, falling linearly to `floor` at max_tokens.
    Long samples are more often wrong (imagination-research's length figure: wrong answers fill the long tail)."""
    if max_tokens <= 0:
        raise ValueError(f"length_weight: max_tokens must be > 0, got {max_tokens}")
    if not 0 <= floor <= 1:
        raise ValueError(f"length_weight: floor must be in [0, 1], got {floor}")
    fraction = min(max(tokens / max_tokens, 0.0), 1.0)
    return 1.0 - (1.0 - floor) * fraction


# choose the answer only; stop rules never see them. "votes_then_tail": the AIMO-3 runner-up's vote-first rule (most
# votes wins, tail entropy only breaks ties); "confidence": DeepConf's vote weighted by the sample's lowest
# sliding-window confidence (`conf_min`, inference/entropy.py).
ENTROPY_WEIGHTS = ("entropy", "entropy_tail", "votes_then_tail", "confidence")
VOTE_WEIGHTS = ("length", "prior") + ENTROPY_WEIGHTS


def vote_weight(rule: StopRule, answer: int | None, tokens: int, max_tokens: int) -> float:
    """The weight of one sample's vote under `rule.weights` (1.0 with none). Entropy weights are not vote weights:
    see `selection_weight`."""
    w = 1.0
    if "length" in rule.weights:
        w *= length_weight(tokens, max_tokens)
    if "prior" in rule.weights:
        w *= answer_prior_weight(answer)
    return w


def answer_prior_weight(answer: int | None, small: int = 20, round_multiple: int | None = 100,
                        weight: float = 0.6) -> float:
    """Down-weight answers models guess: |answer| ≤ `small` (0, 1, 2, ...) and multiples of `round_multiple`
    get `weight`, everything else 1.0 (imagination-research's AIMO-2 aggregator: ≤ 20 or ×100 → 0.6).
    round_multiple None disables the second test."""
    if answer is None:
        return 0.0
    if abs(answer) <= small or (round_multiple and answer % round_multiple == 0):
        return weight
    return 1.0


# -- how contested a problem is (the time budget stretches contested problems) -------------------------------------


def contention(votes: Votes, finished: int, launched: int) -> float:
    """How contested a problem looks from its finished samples, 0 (settled or nothing to go on) … 1 (a real split),
    for the time budget (TimeBudget.extend: a contested problem may run longer, the others keep their share).

    The runner-up's votes over the leader's: 1-1 and 3-3 are 1, 2-1 is 0.5, 4-1 is 0.25. A lone answer (however
    many votes) is 0, and so is a problem with no valid vote yet: more time there mostly buys the long samples,
    which are the wrong ones more often (imagination-research's length figure). Nothing running
    (finished ≥ launched): 0.
    """
    if finished >= launched or votes.valid == 0:
        return 0.0
    ranking = votes.ranking()
    if len(ranking) < 2:
        return 0.0
    return votes.counts[ranking[1]] / votes.counts[ranking[0]]


# -- the AIMO-3 inverse-entropy vote -----------------------------------------------------------------------------


def uses_entropy(rule: StopRule) -> bool:
    """Whether the rule needs per-token logprobs (engines request `entropy_top_k` of them only then)."""
    return any(w in ENTROPY_WEIGHTS for w in rule.weights)


def inverse_entropy_weight(entropy: float | None, floor: float = 1e-9) -> float:
    """1 / max(entropy, floor) (the AIMO-3 notebooks' floor); 0 for a sample without tokens (entropy None)."""
    if entropy is None:
        return 0.0
    return 1.0 / max(float(entropy), floor)


def selection_weight(rule: StopRule, extra: dict) -> float:
    """How much one sample's answer counts when the final answer is chosen, beyond its vote weight: the product of
    its inverse entropies under rule.weights (1.0 with no entropy weight). `extra` is the sample's trace fields."""
    w = 1.0
    if "entropy" in rule.weights:
        w *= inverse_entropy_weight(_trace_field(extra, "entropy"))
    if "entropy_tail" in rule.weights:
        window = _trace_field(extra, "entropy_tail_tokens")
        if window != rule.entropy_tail_tokens:
            raise ValueError(f"voting.entropy_tail_tokens is {rule.entropy_tail_tokens} but the sample's entropy_tail "
                             f"was measured over the last {window} tokens")
        w *= inverse_entropy_weight(_trace_field(extra, "entropy_tail"))
    if "votes_then_tail" in rule.weights:
        # 1 + a bounded tie-breaker: 1e-3 · x / (1 + x) < 1e-3 per sample, so up to 999 samples can never outweigh
        # one vote, and among equal counts the larger Σ of inverse tail entropies wins.
        x = inverse_entropy_weight(_trace_field(extra, "entropy_tail"))
        w *= 1.0 + 1e-3 * x / (1.0 + x)
    if "confidence" in rule.weights:
        w *= max(0.0, float(_trace_field(extra, "conf_min")))
    return w


def _trace_field(extra: dict, name: str):
    if name not in extra:
        raise ValueError(f"voting.weights: the sample has no {name!r} (engines record it only when voting.weights "
                         f"includes entropy or entropy_tail; traces recorded without it cannot be entropy-weighted)")
    return extra[name]


def entropy_vote(answers_and_entropies, floor: float = 1e-9) -> int | None:
    """The AIMO-3 winners' answer: argmax over answers of Σ 1/max(entropy, floor) of the samples that gave it
    (None: no valid answer). Ties as in `Votes` (more raw votes, then the answer that got there first)."""
    votes = Votes()
    for answer, entropy in answers_and_entropies:
        votes.add(answer, inverse_entropy_weight(entropy, floor))
    return votes.leader()
