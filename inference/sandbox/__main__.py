"""Run a file as model code runs in the sandbox, or measure the sandbox.

    python -m inference.sandbox [--timeout S] FILE     # prints what the model would read; exit 1 if the code failed
    python -m inference.sandbox --benchmark            # per-sample start cost and calls/s
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from inference.sandbox.pool import SandboxPool


def benchmark(samples: int, calls: int) -> None:
    """Per-sample start cost and calls/s within one sample."""
    start = time.perf_counter()
    with SandboxPool(size=1, timeout=6.0) as pool:
        pool.warm()
        print(f"pool start (template imports): {time.perf_counter() - start:.2f} s  (isolation: {pool.level}, "
              f"namespaces: {'yes' if pool.isolated else 'no'})")
        fork = first = close = 0.0
        for _ in range(samples):
            start = time.perf_counter()
            worker = pool._fork()
            fork += time.perf_counter() - start
            worker.kill()
            pool.warm()  # a fork is ready, as in a server between samples
            session = pool.session()
            start = time.perf_counter()
            session.run("x = 1")
            first += time.perf_counter() - start
            start = time.perf_counter()
            session.close()
            close += time.perf_counter() - start
        print(f"per sample ({samples}): fork + isolate {fork / samples * 1e3:.1f} ms (in the background), "
              f"first call on a ready fork {first / samples * 1e3:.1f} ms, close (kill all) "
              f"{close / samples * 1e3:.1f} ms")
        start = time.perf_counter()
        for _ in range(samples):
            with pool.session() as session:
                session.run("x = 1")
        print(f"samples back to back: {(time.perf_counter() - start) / samples * 1e3:.1f} ms each")
        with pool.session() as session:
            session.run("x = 0")
            start = time.perf_counter()
            for _ in range(calls):
                session.run("x += 1")
            print(f"calls/s within one sample ({calls} calls): {calls / (time.perf_counter() - start):.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run FILE as model-written code runs in the sandbox and print what "
                                                 "the model would read.")
    parser.add_argument("file", nargs="?", help="a Python file")
    parser.add_argument("--timeout", type=float, default=6.0, help="seconds per call (default 6)")
    parser.add_argument("--memory-mb", type=int, default=2048)
    parser.add_argument("--max-output-chars", type=int, default=2000)
    parser.add_argument("--allow-unisolated", action="store_true", help="run even where model code cannot be "
                                                                        "isolated from this process")
    parser.add_argument("--benchmark", action="store_true", help="measure start cost and calls/s instead")
    args = parser.parse_args()
    if args.benchmark:
        benchmark(30, 300)
        return
    if not args.file:
        parser.error("FILE is required (or --benchmark)")
    path = Path(args.file)
    if not path.is_file():
        parser.error(f"FILE: {path} is not a file")
    try:
        with SandboxPool(size=0, timeout=args.timeout, memory_mb=args.memory_mb,
                         max_output_chars=args.max_output_chars, allow_unisolated=args.allow_unisolated) as pool, \
                pool.session() as session:
            result = session.run(path.read_text())
    except RuntimeError as e:
        sys.exit(f"error: {e}")
    print(result.output)
    sys.exit(1 if result.error else 0)


if __name__ == "__main__":
    main()
