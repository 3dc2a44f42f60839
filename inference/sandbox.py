"""A sandbox for model-written Python: a pool of persistent interpreter processes.

    python -m inference.sandbox [--timeout S] FILE     # runs FILE as model code runs; prints what the model would see

One sample borrows one interpreter for its whole conversation (`SandboxPool.session()`): variables persist across
its calls, and when the sample ends the interpreter is reset (fresh namespace, fresh working directory, stray
processes killed) and goes back to the pool. Every call returns text, never raises: the model reads errors,
timeouts and crashes as the call's output.

Limits, from the outside in:
- Time: the parent waits at most `timeout` seconds for a call's answer, then kills the interpreter's whole process
  group and starts a fresh interpreter (the sample's variables are lost; the output says so). RLIMIT_CPU is a
  second line should the parent's wait fail.
- Processes and network: where unprivileged namespaces work (Linux with `unshare`; checked once per pool), the
  interpreter runs as PID 1 of its own PID namespace (killing it kills everything it started, `setsid` or not) in
  its own network namespace (no interfaces but a down loopback: no network at all). Where they do not, the pool logs
  so, the interpreter runs in its own process group (killed whole on timeout) with the Python-level guards below.
- Python-level guards (an audit hook, `sys.addaudithook`, which code cannot remove): starting processes (fork,
  exec, subprocess, os.system, posix_spawn) and creating sockets raise PermissionError; opening files for writing,
  deleting, renaming or creating anything outside the private working directory raises PermissionError. The hook
  stops model mistakes and casual misuse; code that loads native code through ctypes can get past it, which is
  what the OS limits are for.
- Memory: RLIMIT_AS (`memory_mb`), so a huge allocation raises MemoryError inside the call. Files: RLIMIT_FSIZE.
- Output: print/stdout/stderr and anything written to file descriptors 1 and 2 (by C code) is kept up to
  `max_output_chars`; longer output keeps its head and tail with a note of how much was cut.
- `sys.exit` and `raise SystemExit` become an error text; `os._exit` or a crash ends the interpreter, which is
  replaced (the output says the state was lost).

math, numpy, sympy and mpmath are imported once when an interpreter starts, so `import sympy` in model code is free;
each sample's namespace starts with `setup_code` run (default: those imports plus `mpmath.mp.dps = 64`). The value of
a last line that is an expression is printed, as in Jupyter.

Workers talk to the parent over two pipes with length-prefixed JSON messages; the worker's own stdout/stderr go to
a capture file, so nothing the code writes can corrupt the protocol.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SETUP = "import math\nimport numpy as np\nimport sympy as sp\nimport mpmath\nmpmath.mp.dps = 64\n"
# Preloaded by every interpreter before its limits apply (imports are slow and memory-hungry).
PRELOAD = ("math", "numpy", "sympy", "mpmath", "fractions", "itertools", "functools", "collections", "decimal")
# One thread for the maths libraries: pool workers run side by side, and BLAS threads would reserve address space.
THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")}
STARTUP_SECONDS = 120.0  # an interpreter that is not ready by then is broken (imports take seconds on busy CPUs)


@dataclass
class ToolResult:
    output: str  # what the model reads
    seconds: float  # wall time of the call, as the parent measured it
    error: bool = False  # the code raised, timed out or crashed (the output says which)
    timed_out: bool = False
    restarted: bool = False  # the interpreter was replaced: the sample's variables are gone


def truncate(text: str, limit: int) -> str:
    """Keep the head and tail of an over-long output, with a note of how much was cut between them."""
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - limit} characters cut ...]\n{text[len(text) - tail:]}"


# ----------------------------------------------------------------------------------------------------------------
# The wire: 4-byte length + JSON, both ways.


def _send(fd: int, message: dict) -> None:
    data = json.dumps(message).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _recv_exact(fd: int, n: int, deadline: float | None) -> bytes:
    import select

    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, n - got)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(fd: int, deadline: float | None = None) -> dict:
    (size,) = struct.unpack(">I", _recv_exact(fd, 4, deadline))
    return json.loads(_recv_exact(fd, size, deadline))


# ----------------------------------------------------------------------------------------------------------------
# The parent side.


def namespaces_available() -> bool:
    """Whether `unshare` can give an unprivileged process its own user, PID and network namespaces here."""
    global _NAMESPACES
    if _NAMESPACES is None:
        try:
            _NAMESPACES = shutil.which("unshare") is not None and subprocess.run(
                [*_UNSHARE, "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            _NAMESPACES = False
    return _NAMESPACES


_NAMESPACES: bool | None = None
_UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"]


class _Worker:
    """One interpreter process and its pipes. Not thread-safe: one session uses it at a time."""

    def __init__(self, memory_mb: int, isolate: bool) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        cmd = [sys.executable, "-B", "-m", "inference.sandbox", "--worker", str(to_child_r), str(from_child_w),
               str(memory_mb)]
        if isolate:
            cmd = _UNSHARE + cmd
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8", **THREAD_ENV}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, pass_fds=(to_child_r, from_child_w),
                                     start_new_session=True, env=env, cwd=tempfile.gettempdir())
        os.close(to_child_r)
        os.close(from_child_w)
        self.workdir: str | None = None
        self.ready = False

    def wait_ready(self, timeout: float) -> None:
        reply = _recv(self._from_child, time.monotonic() + timeout)
        if not reply.get("ready"):
            raise RuntimeError(f"sandbox interpreter failed to start: {reply.get('error', reply)}")
        self.ready = True

    def request(self, message: dict, timeout: float | None) -> dict:
        _send(self._to_child, message)
        return _recv(self._from_child, None if timeout is None else time.monotonic() + timeout)

    def reset(self, setup_code: str, timeout: float) -> None:
        """A fresh namespace in a fresh private directory."""
        self._remove_workdir()
        self.workdir = tempfile.mkdtemp(prefix="sandbox-")
        reply = self.request({"op": "reset", "dir": self.workdir, "setup": setup_code}, timeout)
        if not reply.get("ok"):
            raise RuntimeError(f"sandbox reset failed: {reply.get('message')}")

    def signal_kill(self) -> None:
        """SIGKILL the interpreter's process group (with namespaces: the whole PID namespace dies with its PID 1).
        Safe from any thread; a call blocked on this worker then reads end-of-file."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """Kill the interpreter and free its pipes and directory."""
        self.signal_kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("sandbox: interpreter %d did not die", self.proc.pid)
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._remove_workdir()

    def exit_description(self) -> str:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            return "stopped answering"
        if code < 0:
            return f"was killed by signal {signal.Signals(-code).name}"
        if code > 128:  # unshare reports a child killed by signal N as exit code 128 + N
            try:
                return f"was killed by signal {signal.Signals(code - 128).name}"
            except ValueError:
                pass
        return f"exited with code {code}"

    def _remove_workdir(self) -> None:
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


class SandboxSession:
    """One sample's interpreter: `run(code)` as often as needed, then `close()` (or use it as a context manager)."""

    def __init__(self, pool: "SandboxPool") -> None:
        self.pool = pool
        self._worker: _Worker | None = None
        self._lock = threading.Lock()  # one call at a time
        self._killed = False  # kill() was called: the sample is gone, further calls do nothing
        self._busy = False  # a call is running
        self._signalled = False  # kill() killed the interpreter mid-call
        self.calls = 0
        self.seconds = 0.0  # total tool time of this session

    def run(self, code: str, timeout: float | None = None) -> ToolResult:
        """Run one call; never raises. The output is what the model reads."""
        timeout = self.pool.timeout if timeout is None else float(timeout)
        start = time.monotonic()
        with self._lock:
            result = self._run(code, timeout, start)
        result.seconds = time.monotonic() - start
        self.calls += 1
        self.seconds += result.seconds
        return result

    def _run(self, code: str, timeout: float, start: float) -> ToolResult:
        if self._killed:
            return ToolResult("Error: the sample was stopped.", 0.0, error=True)
        restarted = False
        if self._worker is None:
            try:
                self._worker = self.pool._acquire()
            except Exception as e:  # noqa: BLE001 - the sample reads the failure; the server goes on
                log.exception("sandbox: no interpreter")
                return ToolResult(f"Error: the Python sandbox is unavailable ({e}).", 0.0, error=True)
            restarted = self.calls > 0  # a replacement after a timeout or crash
        worker = self._worker
        self._busy = True
        try:
            if self._killed:  # kill() came while the interpreter was being fetched
                raise EOFError
            reply = worker.request({"op": "run", "code": code, "timeout": timeout}, timeout)
        except TimeoutError:
            self._drop(worker)
            return ToolResult(f"TimeoutError: the code ran longer than {timeout:g} seconds and was stopped. The "
                              "interpreter was restarted: variables from earlier calls are lost.", 0.0, error=True,
                              timed_out=True, restarted=True)
        except (EOFError, OSError, ValueError):
            if self._killed:
                self._drop(worker)
                return ToolResult("Error: the sample was stopped.", 0.0, error=True)
            why = worker.exit_description()
            self._drop(worker)
            return ToolResult(f"Error: the Python interpreter {why} while running this code. It was restarted: "
                              "variables from earlier calls are lost.", 0.0, error=True, restarted=True)
        finally:
            self._busy = False
        output = reply.get("output", "")
        if restarted:
            output = "[note: the interpreter was restarted after the last error; earlier variables are lost]\n" + output
        return ToolResult(output, 0.0, error=bool(reply.get("error")), restarted=restarted)

    def _drop(self, worker: _Worker) -> None:
        self._worker = None
        self.pool._discard(worker)

    def kill(self) -> None:
        """Stop a call in progress (from another thread) and retire the interpreter: the sample was aborted."""
        self._killed = True
        worker = self._worker
        if worker is not None and self._busy:
            self._signalled = True
            worker.signal_kill()  # the run() blocked on it returns at once; close() frees the rest

    def close(self) -> None:
        """The sample is done: reset the interpreter and hand it back to the pool."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            if self._signalled:
                self.pool._discard(worker)
            else:
                self.pool._release(worker)

    def __enter__(self) -> "SandboxSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SandboxPool:
    """Interpreters kept warm for the samples of a server. Thread-safe.

    `size` interpreters are started in the background and kept ready; a session takes one when it makes its first
    call (starting an extra one when all are busy) and returns it reset. Size it at about twice the samples that run
    at once (the AIMO-3 winners' finding: the extra interpreters absorb resets and restarts).
    """

    def __init__(self, size: int = 4, timeout: float = 6.0, memory_mb: int = 2048, max_output_chars: int = 2000,
                 setup_code: str = DEFAULT_SETUP, isolate: bool | str = "auto") -> None:
        """`isolate`: "auto" uses PID and network namespaces where `unshare` works; True requires them; False
        never uses them (process group + audit hook only)."""
        if size < 0:
            raise ValueError(f"tools.pool_size: must be ≥ 0, got {size}")
        if timeout <= 0:
            raise ValueError(f"tools.timeout_seconds: must be > 0, got {timeout}")
        self.size, self.timeout, self.memory_mb = int(size), float(timeout), int(memory_mb)
        self.max_output_chars = int(max_output_chars)
        self.setup_code = setup_code
        available = namespaces_available() if isolate in ("auto", True) else False
        if isolate is True and not available:
            raise RuntimeError("sandbox: isolate=True but `unshare` cannot create user/PID/network namespaces here")
        self.isolated = bool(available)
        if not self.isolated:
            log.warning("sandbox: no PID/network namespaces (unshare unavailable or not permitted); interpreters run "
                        "in their own process group, with network and process creation blocked by an audit hook only")
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._starting = 0
        self._closed = False
        for _ in range(self.size):
            self._spawn_in_background()

    # -- workers --------------------------------------------------------------------------------------------------
    def _new_worker(self) -> _Worker:
        worker = _Worker(self.memory_mb, self.isolated)
        try:
            worker.wait_ready(STARTUP_SECONDS)
            worker.request({"op": "configure", "max_output_chars": self.max_output_chars}, STARTUP_SECONDS)
            worker.reset(self.setup_code, STARTUP_SECONDS)
        except Exception as e:
            why = worker.exit_description()
            worker.kill()
            raise RuntimeError(f"interpreter {why} during start-up ({e!r})") from e
        return worker

    def _spawn_in_background(self) -> None:
        with self._lock:
            if self._closed or len(self._idle) + self._starting >= self.size:
                return
            self._starting += 1

        def spawn():
            try:
                worker = self._new_worker()
            except Exception:  # noqa: BLE001 - a later _acquire starts one synchronously and reports the error
                log.exception("sandbox: starting an interpreter failed")
                with self._lock:
                    self._starting -= 1
                return
            with self._lock:
                self._starting -= 1
                if self._closed:
                    worker.kill()
                    return
                self._idle.append(worker)

        threading.Thread(target=spawn, name="sandbox-spawn", daemon=True).start()

    def _acquire(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("the sandbox pool is closed")
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = self._new_worker()  # all busy: one more, started here (seconds)
        self._spawn_in_background()  # keep `size` ready
        return worker

    def _release(self, worker: _Worker) -> None:
        try:
            worker.reset(self.setup_code, 30.0)
        except Exception as e:  # noqa: BLE001
            log.warning("sandbox: reset failed (%r); replacing the interpreter", e)
            self._discard(worker)
            return
        with self._lock:
            if not self._closed and len(self._idle) < self.size:
                self._idle.append(worker)
                return
        worker.kill()

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        self._spawn_in_background()

    # -- public ---------------------------------------------------------------------------------------------------
    def session(self) -> SandboxSession:
        """A session for one sample; it takes an interpreter on its first call."""
        return SandboxSession(self)

    def warm(self, timeout: float = STARTUP_SECONDS) -> int:
        """Wait until the background interpreters are ready (for benchmarks and tests); returns how many are."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._starting:
                    return len(self._idle)
            time.sleep(0.05)
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------------------
# The worker side: runs in the interpreter process (`python -m inference.sandbox --worker R W MEMORY_MB`).


class _BoundedText:
    """A text stream that keeps the first `limit` characters and counts the rest (stands in for sys.stdout)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.parts, self.kept, self.dropped = limit, [], 0, 0
        self.tail = ""  # the last `limit // 2` characters, for a head-and-tail cut

    def write(self, s) -> int:
        s = str(s)
        room = self.limit - self.kept
        if room > 0:
            self.parts.append(s[:room])
            self.kept += min(room, len(s))
        self.dropped += max(0, len(s) - max(room, 0))
        self.tail = (self.tail + s)[-(self.limit // 2 or 1):]
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"

    def text(self) -> str:
        head = "".join(self.parts)
        if not self.dropped:
            return head
        return (head[: self.limit // 2] + f"\n[... {self.dropped + self.kept - self.limit} characters cut ...]\n"
                + self.tail)


def _worker_main(read_fd: int, write_fd: int, memory_mb: int) -> None:
    import ast
    import builtins
    import importlib
    import resource
    import traceback

    for name in PRELOAD:
        importlib.import_module(name)

    # fds 1 and 2 (C code, os.write) go to an append-only capture file that is read and emptied after each call.
    capture_path = tempfile.mkstemp(prefix="sandbox-capture-")[1]
    capture = os.open(capture_path, os.O_RDWR | os.O_APPEND)
    os.unlink(capture_path)
    os.dup2(capture, 1)
    os.dup2(capture, 2)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-long write fails with EFBIG instead of killing us

    state = {"dir": None, "limit": 2000}
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
    if memory_mb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an already open descriptor
        path = os.fsdecode(path)
        if path in ("/dev/null", "/dev/stdout", "/dev/stderr"):
            return True
        full = os.path.realpath(os.path.join(os.getcwd(), path))
        return state["dir"] is not None and (full == state["dir"] or full.startswith(state["dir"] + os.sep))

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    blocked_events = {"os.system", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn",
                      "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill",
                      "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
                      "socket.sendto", "os.setuid", "resource.setrlimit", "resource.prlimit"}
    path_events = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
                   "os.utime": 1, "os.rename": 2, "os.link": 2, "os.symlink": 2, "shutil.rmtree": 1,
                   "shutil.copyfile": 2, "shutil.move": 2, "os.mkfifo": 1, "os.mknod": 1}
    guard = {"on": False}

    def audit(event: str, args) -> None:
        if not guard["on"]:
            return
        if event in blocked_events:
            what = "network access" if event.startswith("socket") else "this operation"
            raise PermissionError(f"{event}: {what} is not allowed in the sandbox")
        if event == "open":
            path, mode, flags = args
            writing = (any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & write_flags))
            if writing and path is not None and not inside(path):
                raise PermissionError(f"writing {os.fsdecode(path)!r}: only the working directory is writable")
        elif event in path_events:
            paths = args[: path_events[event]]
            if event in ("os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.move"):
                paths = args[1:2]  # the destination (a source may be read from anywhere)
                if event == "os.rename":
                    paths = args[:2]
            for p in paths:
                if p is not None and not inside(p):
                    raise PermissionError(f"{event} {os.fsdecode(p)!r}: only the working directory is writable")

    sys.addaudithook(audit)

    def kill_strays() -> None:
        """Kill processes this interpreter left behind (if any got past the guard)."""
        if os.getpid() == 1:  # PID 1 of our own namespace: -1 means every other process in it
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        me, group = os.getpid(), os.getpgid(0)
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != me:
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[2]) == group:
                        os.kill(int(entry), signal.SIGKILL)
                except (OSError, ValueError, IndexError):
                    pass

    namespace: dict = {}

    def run(code: str, timeout: float) -> dict:
        out = _BoundedText(state["limit"])
        sys.stdout = sys.stderr = out
        error = False
        used = resource.getrusage(resource.RUSAGE_SELF)
        cpu_now = int(used.ru_utime + used.ru_stime)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_now + int(timeout) + 2, resource.RLIM_INFINITY))
        guard["on"] = True
        try:
            tree = ast.parse(code, "<code>")
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, "<code>", "exec"), namespace)
            if last is not None:
                value = eval(compile(ast.Expression(last.value), "<code>", "eval"), namespace)
                if value is not None:
                    print(repr(value))
        except SystemExit as e:
            error = True
            print(f"SystemExit: {e.code!r} (exit is ignored in the sandbox; variables are kept)")
        except BaseException as e:  # noqa: BLE001 - everything the code raises is the model's to read
            error = True
            # Only the model's own lines: library and sandbox frames are noise to it.
            frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == "<code>"]
            lines = traceback.format_list(frames) if frames else []
            if isinstance(e, SyntaxError):
                lines = []
            print(("Traceback (most recent call last):\n" if lines else "") + "".join(lines)
                  + "".join(traceback.format_exception_only(type(e), e)).rstrip())
        finally:
            guard["on"] = False
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        text = out.text()
        size = os.fstat(capture).st_size
        if size:
            raw = os.pread(capture, min(size, 4 * state["limit"]), 0).decode("utf-8", "replace")
            if size > len(raw):
                raw += f"\n[... {size - len(raw)} more bytes ...]"
            text += raw
            os.ftruncate(capture, 0)
        if not text:
            text = "[no output: print() what you want to see]"
        return {"output": truncate(text, state["limit"]), "error": error}

    def reset(directory: str, setup: str) -> dict:
        kill_strays()
        namespace.clear()
        namespace.update({"__name__": "__main__", "__builtins__": builtins})
        state["dir"] = os.path.realpath(directory)
        os.chdir(directory)
        os.environ.update({"TMPDIR": directory, "HOME": directory})
        tempfile.tempdir = directory
        if setup:
            exec(compile(setup, "<setup>", "exec"), namespace)
        return {"ok": True}

    _send(write_fd, {"ready": True, "pid": os.getpid()})
    while True:
        try:
            message = _recv(read_fd)
        except EOFError:
            return
        op = message.get("op")
        try:
            if op == "run":
                reply = run(message["code"], float(message.get("timeout", 6.0)))
                kill_strays()
            elif op == "reset":
                reply = reset(message["dir"], message.get("setup", ""))
            elif op == "configure":
                state["limit"] = int(message["max_output_chars"])
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except BaseException as e:  # noqa: BLE001 - report, keep serving
            reply = {"ok": False, "error": True, "message": repr(e), "output": f"Error in the sandbox: {e!r}"}
        _send(write_fd, reply)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description="Run FILE as model-written code runs in the sandbox and print what "
                                                 "the model would read.")
    parser.add_argument("file", help="a Python file")
    parser.add_argument("--timeout", type=float, default=6.0, help="seconds per call (default 6)")
    parser.add_argument("--memory-mb", type=int, default=2048)
    parser.add_argument("--max-output-chars", type=int, default=2000)
    args = parser.parse_args()
    code = Path(args.file).read_text()
    with SandboxPool(size=0, timeout=args.timeout, memory_mb=args.memory_mb,
                     max_output_chars=args.max_output_chars) as pool, pool.session() as session:
        result = session.run(code)
    print(result.output)
    sys.exit(1 if result.error else 0)


if __name__ == "__main__":
    main()
