"""Engine replicas as Ray actors: k samples per problem spread over N copies of a kit engine, on one machine or a
Ray cluster, written as they finish, resumable, and safe against a replica dying.

    python inference/evaluate.py --config configs/inference/demo-tir.yaml --problems configs/toy/tir_problems.csv \\
        -k 4 --workers 2 --traces runs/dist/traces.jsonl --out runs/dist/eval.json       # a local Ray, 2 replicas
    python inference/evaluate.py ... --workers 16 --ray-address auto                      # join `ray start` nodes
    python -m train.generate --config configs/generate/toy-tir.yaml                       # teacher traces → SFT rows
    python -m inference.distributed --config configs/inference/demo-tir.yaml \
        --problems configs/generate/toy_tir_problems.csv -k 4 --out runs/dist-bench.json    # in-process vs 1 vs 2

A work item is one (problem, sample) with its own seed: `Solver.requests(problem_id, problem, sample, 1)`, the
request a single-process run sends for that sample. Each actor (`EngineWorker`) owns one engine built by the
server's `build_engine` (prompts, chat format, tool loop as served) and grades every finished sample with the
evaluator's `grade_sample`; the driver keeps `inflight` items submitted per actor (twice the engine's
max_num_seqs by default), polls each actor, and
appends every record to the traces JSONL the moment it arrives (one whole line, flushed).

Ray actors directly rather than Ray Data's `map_batches` with an actor pool: an engine wants a steady stream of
requests (vLLM batches continuously; a sample can run for minutes), while map_batches hands an actor a batch and
waits for all of it (the batch's slowest sample idles the replica) and returns results per batch, in its own
bookkeeping. With plain actors the driver knows which items each replica holds, so it writes records as they
finish, resumes from the file, and requeues exactly the unfinished items of a replica that died.

Nothing lost: a rerun with the same traces file skips the (problem, sample) pairs already in it (a torn last line
from a kill is cut off first; `<traces>.meta.json` holds a fingerprint of the work so a changed config is refused
instead of mixed in). An actor that dies hands its unfinished items back to the queue and the others take them;
each item is written once. Ctrl-C stops the actors and leaves the file valid; rerunning completes it.

Logs: Ray's and the engines' go to Ray's session log folder (printed), not to the terminal, unless `verbose`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import sys
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from inference.config import Settings
from inference.engines.base import SampleRequest

log = logging.getLogger("inference.distributed")
POLL_SECONDS = 0.5


# -- work items and the traces file -----------------------------------------------------------------------------------
def work_items(settings: Settings, problems: list[dict], k: int) -> list[tuple[SampleRequest, str | None]]:
    """(request, gold) for every (problem, sample): the exact requests (prompt, variant, seed) a single-process
    run sends."""
    from inference.evaluate import full_samples
    from inference.solver import Solver

    solver = Solver(None, settings)  # only its requests: they need the settings, not the engine
    return [(full_samples(solver.requests(p["id"], p["problem"], s, 1))[0], p.get("answer"))
            for p in problems for s in range(k)]


def fingerprint(settings: Settings, items: list[tuple[SampleRequest, str | None]]) -> str:
    """What makes two runs the same work: model, engine, engine arguments, tools and every request."""
    what = {"model": settings.model, "engine": settings.engine, "engine_args": settings.engine_args,
            "tools": vars(settings.tools), "items": [asdict(r) for r, _ in items]}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TraceFile:
    """An append-only traces JSONL that a rerun resumes: whole lines only, one per (problem_id, sample)."""

    def __init__(self, path: str | Path, print_: str) -> None:
        self.path = Path(path)
        self.meta = self.path.with_name(self.path.name + ".meta.json")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[tuple[str, int], dict] = {}
        if self.path.exists():
            if self.meta.exists() and json.loads(self.meta.read_text()).get("fingerprint") != print_:
                raise ValueError(f"{self.path} holds samples of different work (another config, model, problems or "
                                 f"k); delete it or choose another output path")
            if not self.meta.exists() and self.path.stat().st_size:
                raise ValueError(f"{self.path} exists and was not written by a resumable run; delete it or choose "
                                 f"another output path")
            self._read()
        self.meta.write_text(json.dumps({"fingerprint": print_}))
        self._f = self.path.open("a")

    def _read(self) -> None:
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]  # a kill mid-write leaves a torn last line: drop it
        if len(whole) < len(data):
            with self.path.open("r+b") as f:
                f.truncate(len(whole))
        for line in whole.decode().splitlines():
            if line.strip():
                r = json.loads(line)
                self.records.setdefault((r["problem_id"], r["sample"]), r)

    def add(self, record: dict) -> bool:
        """Write the record unless its (problem_id, sample) is already there; True when written."""
        key = (record["problem_id"], record["sample"])
        if key in self.records:
            return False
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        self.records[key] = record
        return True

    def close(self) -> None:
        self._f.close()


# -- the actor --------------------------------------------------------------------------------------------------------
class EngineWorker:
    """One engine replica (a Ray actor): the server's engine, fed work items, handing back graded trace records."""

    def __init__(self, settings: Settings, mode: str, verbose: bool = False) -> None:
        from inference.clock import RealClock
        from inference.server import build_engine

        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
        self.settings, self.mode = settings, mode
        self.golds: dict[tuple[str, int], str | None] = {}
        t0 = time.monotonic()
        self.engine = build_engine(settings, RealClock())
        self.engine.start()
        self.load_seconds = time.monotonic() - t0

    def ready(self) -> dict:
        return {"pid": os.getpid(), "node": socket.gethostname(), "load_seconds": round(self.load_seconds, 2)}

    def submit(self, items: list[tuple[SampleRequest, str | None]]) -> None:
        for request, gold in items:
            self.golds[(request.problem_id, request.sample)] = gold
        self.engine.submit([r for r, _ in items])

    def poll(self, timeout: float) -> list[dict]:
        from inference.evaluate import grade_sample

        records = []
        for s in self.engine.poll(timeout):
            gold = self.golds.pop((s.problem_id, s.sample), None)
            answer, correct = grade_sample(s.text, gold, self.mode, self.settings)
            record = s.to_trace()
            record.update(answer=answer, correct=correct, gold=gold)
            records.append(record)
        return records

    def shutdown(self) -> None:
        self.engine.shutdown()


# -- Ray --------------------------------------------------------------------------------------------------------------
def _ray():
    try:
        import ray
    except ImportError as e:
        raise ValueError("--workers needs Ray: pip install 'ray[data]' (requirements.txt)") from e
    return ray


def check_address(address: str | None) -> None:
    """An explicit host:port must accept connections (Ray itself would retry it for a minute)."""
    if address and address not in ("auto", "local") and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or address, int(port or 6379)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise ValueError(f"--ray-address {address}: no Ray cluster reachable there ({e})") from None


def connect(address: str | None, verbose: bool, num_cpus: int | None = None) -> bool:
    """Start a local Ray (address None) or join a cluster; True when this call started/joined it (and so should
    shut it down). Fails in seconds on an address nothing listens at."""
    ray = _ray()
    if ray.is_initialized():
        return False
    check_address(address)
    paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]  # the actors import the kit
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, paths))}}
    if not verbose:
        runtime_env["env_vars"].update(VLLM_LOGGING_LEVEL="WARNING", TRANSFORMERS_VERBOSITY="error")
    try:
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=verbose, runtime_env=runtime_env,
                 logging_level=logging.INFO if verbose else logging.WARNING)
    except ConnectionError as e:
        raise ValueError(f"--ray-address {address}: {e}") from None
    return True


def actor_resources(settings: Settings, workers: int) -> dict:
    """Each replica's share: `tensor_parallel_size` GPUs on a GPU cluster; otherwise an equal share of the CPUs
    (Ray sets the actor's OMP_NUM_THREADS to it, so one replica on a node uses all its cores, as an in-process run
    does). Refuses more replicas than the cluster holds (they would wait forever)."""
    ray = _ray()
    total = ray.cluster_resources()
    if total.get("GPU", 0) > 0:
        tp = int(settings.engine_args.get("tensor_parallel_size", 1))
        need, have, what = workers * tp, total["GPU"], f"{tp} GPU(s) each"
        resources = {"num_gpus": tp, "num_cpus": 1}
    else:
        need, have, what = workers, total.get("CPU", 0), "1 CPU each"
        resources = {"num_cpus": max(1, int(have // workers))}
    if need > have:
        raise ValueError(f"--workers {workers}: {workers} replicas need {need:g} ({what}); the Ray cluster has "
                         f"{have:g}")
    return resources


def check_model(model: str) -> None:
    """The model must be a local folder or in the Hugging Face cache: no replica downloads it mid-run."""
    if Path(model).is_dir():
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(model, "config.json"), str):
            return
    except Exception:  # noqa: BLE001 - not a repo id either: the error below says what was looked for
        pass
    raise ValueError(f"model {model}: no such folder, and not in the Hugging Face cache")


# -- the driver -------------------------------------------------------------------------------------------------------
class Progress:
    """One bar across all replicas: done/total, samples/s, tokens/s, ETA."""

    def __init__(self, total: int, done: int, show: bool) -> None:
        self.t0, self.samples, self.tokens = time.monotonic(), 0, 0
        self.bar = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="sample", dynamic_ncols=True, mininterval=1.0,
                            file=sys.stderr)

    def add(self, record: dict) -> None:
        self.samples += 1
        self.tokens += int(record.get("tokens") or 0)
        if self.bar is not None:
            dt = max(1e-9, time.monotonic() - self.t0)
            self.bar.set_postfix_str(f"{self.tokens / dt:.0f} tok/s, {self.samples / dt:.2f} samples/s", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(settings: Settings, items: list[tuple[SampleRequest, str | None]], traces: TraceFile, workers: int,
        mode: str, ray_address: str | None = None, inflight: int | None = None, verbose: bool = False,
        progress: bool = True, on_record: Callable[[dict, "Replicas"], None] | None = None) -> dict:
    """Generate every item not yet in `traces` on `workers` replicas; returns run statistics."""
    replicas = Replicas(settings, workers, mode, ray_address, verbose)
    try:
        replicas.start()
        return replicas.drive(items, traces, inflight, progress, on_record)
    finally:
        replicas.stop()


class Replicas:
    def __init__(self, settings: Settings, workers: int, mode: str, ray_address: str | None, verbose: bool) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be ≥ 1, got {workers}")
        self.settings, self.workers, self.mode = settings, workers, mode
        self.address, self.verbose = ray_address, verbose
        self.actors: list = []
        self.owns_ray = False
        self.load_seconds = 0.0
        self.retried = 0  # items requeued from a dead replica
        self.held: list[dict] = []  # replica → its unfinished items by (problem_id, sample)

    def start(self) -> None:
        ray = _ray()
        t0 = time.monotonic()
        self.owns_ray = connect(self.address, self.verbose)
        resources = actor_resources(self.settings, self.workers)
        if not self.verbose:
            print(f"distributed: Ray and engine logs in {_log_dir()} (--verbose shows them)", file=sys.stderr)
        remote = ray.remote(max_restarts=0, max_task_retries=0, **resources)(EngineWorker)
        self.actors = [remote.remote(self.settings, self.mode, self.verbose) for _ in range(self.workers)]
        try:
            info = ray.get([a.ready.remote() for a in self.actors])
        except ray.exceptions.RayError as e:
            raise ValueError(f"an engine replica failed to start: {_cause(e)}") from None
        self.load_seconds = time.monotonic() - t0
        log.info("replicas ready: %s", info)

    def drive(self, items, traces: TraceFile, inflight: int | None, progress: bool, on_record) -> dict:
        ray = _ray()
        # Twice what the engine runs at once: its queue stays full while a poll travels (measured: Ray's overhead on
        # generation +17 % holding max_num_seqs, +12 % holding twice that).
        inflight = inflight or 2 * max(1, int(self.settings.engine_args.get("max_num_seqs", 0)) or 8)
        queue = deque((r, g) for r, g in items if (r.problem_id, r.sample) not in traces.records)
        held = self.held = [{} for _ in self.actors]
        polls: dict = {}  # poll ObjectRef → replica index
        alive = set(range(len(self.actors)))
        bar = Progress(len(items), len(items) - len(queue), progress)
        written, t0 = 0, time.monotonic()

        def feed(i: int) -> None:
            batch = []
            while queue and len(held[i]) + len(batch) < inflight:
                batch.append(queue.popleft())
            if batch:
                for r, g in batch:
                    held[i][(r.problem_id, r.sample)] = (r, g)
                self.actors[i].submit.remote(batch)  # a sequential actor: runs before the poll below
            if held[i] and i not in polls.values():
                polls[self.actors[i].poll.remote(POLL_SECONDS)] = i

        try:
            for i in alive:
                feed(i)
            while polls:
                ready, _ = ray.wait(list(polls), num_returns=1)
                i = polls.pop(ready[0])
                try:
                    records = ray.get(ready[0])
                except ray.exceptions.RayActorError as e:
                    alive.discard(i)
                    lost = list(held[i].values())
                    held[i].clear()
                    self.retried += len(lost)
                    queue.extendleft(reversed(lost))
                    log.warning("replica %d died (%s); %d items go to the others", i, _cause(e), len(lost))
                    if not alive:
                        raise ValueError(f"every engine replica died; the last: {_cause(e)}") from None
                    for j in alive:
                        feed(j)
                    continue
                for record in records:
                    key = (record["problem_id"], record["sample"])
                    if held[i].pop(key, None) is not None and traces.add(record):
                        written += 1
                        bar.add(record)
                        if on_record is not None:
                            on_record(record, self)
                feed(i)
        finally:
            bar.close()
        seconds = time.monotonic() - t0
        return {"written": written, "seconds": seconds, "load_seconds": self.load_seconds, "retried": self.retried,
                "workers": self.workers, "workers_alive": len(alive)}

    def stop(self) -> None:
        if not self.actors and not self.owns_ray:
            return
        ray = _ray()
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already dead
                pass
        self.actors = []
        if self.owns_ray:
            ray.shutdown()
            self.owns_ray = False


def _log_dir() -> str:
    try:
        from ray._private.worker import global_worker

        return str(Path(global_worker.node.get_session_dir_path()) / "logs")
    except Exception:  # noqa: BLE001 - on a remote cluster the logs live on its nodes
        return "the Ray session folder of each node (/tmp/ray/session_latest/logs)"


def _cause(e: Exception) -> str:
    """The root error's line of a Ray error (its text wraps the actor's traceback)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return (errors or lines or [type(e).__name__])[-1 if errors else 0]


# -- evaluation on replicas (inference/evaluate.py --workers) ---------------------------------------------------------
def evaluate_distributed(settings: Settings, problems: list[dict], k: int, traces_path: str | Path, workers: int,
                         ray_address: str | None = None, verbose: bool = False, progress: bool = True,
                         on_record=None, inflight: int | None = None) -> dict:
    """evaluate.evaluate's report and traces, the samples made by `workers` replicas; resumes `traces_path`."""
    from inference.evaluate import _same, grading_mode, majority, report

    if k < 1:
        raise ValueError(f"-k must be ≥ 1, got {k}")
    check_model(settings.model)
    golds = [p.get("answer") for p in problems]
    known = [g for g in golds if g is not None]
    mode = grading_mode(known, settings) if known else "integer"
    items = work_items(settings, problems, k)
    traces = TraceFile(traces_path, fingerprint(settings, items))
    try:
        stats = run(settings, items, traces, workers, mode, ray_address, inflight, verbose, progress, on_record)
    finally:
        traces.close()
    rows, sample_rows = [], []
    for p in problems:
        samples = [traces.records[(p["id"], s)] for s in range(k)]
        gold = p.get("answer")
        maj = majority([s["answer"] for s in samples], mode)
        n_correct = sum(bool(s["correct"]) for s in samples)
        rows.append({"id": p["id"], "gold": gold, "samples": k, "correct": n_correct,
                     "pass@1": n_correct / k if gold is not None else None,
                     "maj": maj, "maj_correct": None if gold is None else _same(maj, gold, mode, settings),
                     "tokens_mean": round(sum(s["tokens"] for s in samples) / k, 1)})
        sample_rows += samples
    out = report(rows, sample_rows, k, mode, settings, stats["seconds"], stats["load_seconds"])
    out["distributed"] = {k_: (round(v, 2) if isinstance(v, float) else v) for k_, v in stats.items()}
    return out


# -- benchmark: in-process vs 1 vs 2 replicas -------------------------------------------------------------------------
def benchmark(settings: Settings, problems: list[dict], k: int, work_dir: Path, workers: list[int],
              inflight: int | None = None) -> dict:
    """The same job in-process (evaluate.evaluate), then on each replica count in one Ray session. Times: wall time
    of the whole call (engine loads included) and of the generation alone."""
    import tempfile

    from inference.evaluate import evaluate

    work_dir.mkdir(parents=True, exist_ok=True)
    out: dict = {"problems": len(problems), "k": k, "engine": settings.engine, "model": settings.model,
                 "inflight": inflight}
    seqs = max(1, int(settings.engine_args.get("max_num_seqs", 0)) or 8)
    t0 = time.monotonic()  # in-process with as many samples in flight as the engine runs at once
    r = evaluate(settings, problems, k, work_dir / "in-process.jsonl", concurrent=max(1, seqs // k), show=None)
    out["in_process"] = {"wall": round(time.monotonic() - t0, 1), "generate": r["seconds"],
                         "tokens": r["tokens"]["total"]}
    t0 = time.monotonic()
    owns = connect(None, verbose=False)
    out["ray_start_seconds"] = round(time.monotonic() - t0, 1)
    answers = {}
    try:
        for n in workers:
            path = Path(tempfile.mkdtemp(dir=work_dir)) / f"workers-{n}.jsonl"
            t0 = time.monotonic()
            r = evaluate_distributed(settings, problems, k, path, n, progress=False, inflight=inflight)
            out[f"workers_{n}"] = {"wall": round(time.monotonic() - t0, 1), "generate": r["seconds"],
                                   "tokens": r["tokens"]["total"]}
            answers[n] = {(x["problem_id"], x["sample"]): x["answer"] for x in map(json.loads, path.open())}
    finally:
        if owns:
            _ray().shutdown()
    base = {(x["problem_id"], x["sample"]): x["answer"]
            for x in map(json.loads, (work_dir / "in-process.jsonl").open())}
    for n in workers:
        out[f"workers_{n}"]["answers_agree_with_in_process"] = round(
            sum(answers[n][key] == a for key, a in base.items()) / len(base), 4)
    if 1 in workers:
        ip, one = out["in_process"], out["workers_1"]
        out["ray_overhead_generate"] = round(one["generate"] / ip["generate"] - 1, 4)
        out["ray_overhead_wall"] = round(one["wall"] / ip["wall"] - 1, 4)
        for n in workers[1:]:
            out[f"throughput_{n}_vs_1"] = round(one["generate"] / out[f"workers_{n}"]["generate"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    from inference.config import load_settings
    from inference.evaluate import read_problem_list

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="inference settings YAML")
    parser.add_argument("--problems", required=True)
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--engine", choices=["vllm", "transformers"])
    parser.add_argument("--workers", default="1,2", help="replica counts to time, comma-separated")
    parser.add_argument("--inflight", type=int, help="items held per replica (default: 2 × engine_args.max_num_seqs)")
    parser.add_argument("--out", default="runs/dist-bench.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        settings = load_settings(args.config, {"sampling.stop_rule": "none", "sampling.samples": args.k},
                                 engine=args.engine)
        problems = read_problem_list(args.problems, args.limit)
        counts = [int(n) for n in args.workers.split(",")]
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = benchmark(settings, problems, args.k, Path(args.out).with_suffix(""), counts, args.inflight)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
