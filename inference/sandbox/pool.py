"""The server's side of the sandbox: a pool of fresh interpreters, one per sample, forked by a template process.

One sample holds one interpreter for its whole conversation (`SandboxPool.session()`): its variables persist across
its calls; when the sample ends its interpreter is killed with everything it started, and the next sample gets a
fresh fork of the template (inference/sandbox/template.py). Every call returns text, never raises: the model reads
errors, timeouts and crashes as the call's output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from inference.sandbox import limits, wire

log = logging.getLogger("inference.sandbox")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SETUP = "import math\nimport numpy as np\nimport sympy as sp\nimport mpmath\nmpmath.mp.dps = 64\n"
# One thread for the maths libraries: samples run side by side, and BLAS threads would reserve address space.
THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")}
STARTUP_SECONDS = 120.0  # a template that is not ready by then is broken (imports take seconds on busy CPUs)
READY_SECONDS = 30.0  # a forked interpreter isolates itself in milliseconds
LEVELS = {"root": "each sample runs as its own unprivileged uid", "userns": "user namespaces, a private /proc",
          "none": "NO isolation from the server (same uid; audit hook only)"}


@dataclass
class ToolResult:
    output: str  # what the model reads
    seconds: float  # wall time of the call, as the parent measured it
    error: bool = False  # the code raised, timed out or crashed (the output says which)
    timed_out: bool = False
    restarted: bool = False  # the interpreter was replaced: the sample's variables are gone


class _Interpreter:
    """One forked interpreter: its socket, pid and private directory. One session uses it at a time."""

    def __init__(self, pool: "SandboxPool", sock: socket.socket, pid: int, handle: int, workdir: str) -> None:
        self.pool, self.sock, self.pid, self.handle, self.workdir = pool, sock, pid, handle, workdir
        self.reader = wire.Reader(sock.fileno())
        self.ended = ""  # how it ended, once killed
        self.pidfd: int | None = None
        self._kill_lock = threading.Lock()
        self._pidfd_lock = threading.Lock()  # a closed pidfd's number may be reused: never signal through it

    def request(self, message: dict, timeout: float | None) -> dict:
        nonce = wire.new_nonce()
        wire.send(self.sock.fileno(), message, nonce)
        return self.reader.read(nonce, None if timeout is None else time.monotonic() + timeout)

    def watch(self) -> None:
        """Once it answered: a pidfd, so that a kill from any thread is one syscall and can never hit a recycled
        pid."""
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except OSError:
            self.pidfd = None

    def signal_kill(self) -> None:
        """SIGKILL it at once (safe from any thread; a call blocked on it then reads end-of-file). With a PID
        namespace everything it started dies with it; `kill()` makes sure of the rest."""
        with self._pidfd_lock:
            if self.pidfd is not None:
                try:
                    signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                except OSError:
                    pass

    def kill(self) -> None:
        """Kill it and everything it started (through the template, which waits for them), free its directory."""
        with self._kill_lock:
            if self.handle:
                try:
                    self.ended = self.pool._control({"op": "kill", "handle": self.handle}).get("ended", "")
                except (OSError, EOFError, ValueError):  # the template is gone, and took its samples along
                    pass
                self.handle = 0
                self.sock.close()
                with self._pidfd_lock:
                    if self.pidfd is not None:
                        os.close(self.pidfd)
                        self.pidfd = None
                shutil.rmtree(self.workdir, ignore_errors=True)


class SandboxSession:
    """One sample's interpreter: `run(code)` as often as needed, then `close()` (or use it as a context manager)."""

    def __init__(self, pool: "SandboxPool") -> None:
        self.pool = pool
        self._worker: _Interpreter | None = None
        self._lock = threading.Lock()  # one call at a time
        self._killed = False  # kill() was called: the sample is gone, further calls do nothing
        self._busy = False  # a call is running
        self.calls = 0
        self.seconds = 0.0  # total tool time of this session

    def run(self, code: str, timeout: float | None = None) -> ToolResult:
        """Run one call; never raises. The output is what the model reads."""
        timeout = self.pool.timeout if timeout is None else float(timeout)
        start = time.monotonic()
        with self._lock:
            result = self._run(code, timeout)
        result.seconds = time.monotonic() - start
        self.calls += 1
        self.seconds += result.seconds
        return result

    def _run(self, code: str, timeout: float) -> ToolResult:
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
            reply = worker.request({"code": code}, timeout)
        except TimeoutError:
            self._drop(worker)
            return ToolResult(f"TimeoutError: the code ran longer than {timeout:g} seconds and was stopped. The "
                              "interpreter was restarted: variables from earlier calls are lost.", 0.0, error=True,
                              timed_out=True, restarted=True)
        except (EOFError, OSError, ValueError):
            self._drop(worker)
            if self._killed:
                return ToolResult("Error: the sample was stopped.", 0.0, error=True)
            why = worker.ended or "stopped answering"
            return ToolResult(f"Error: the Python interpreter {why} while running this code. It was restarted: "
                              "variables from earlier calls are lost.", 0.0, error=True, restarted=True)
        finally:
            self._busy = False
        output = reply.get("output", "")
        if restarted:
            output = ("[note: the interpreter was restarted after the last error; earlier variables are lost]\n"
                      + output)
        return ToolResult(output, 0.0, error=bool(reply.get("error")), restarted=restarted)

    def _drop(self, worker: _Interpreter) -> None:
        self._worker = None
        worker.kill()

    def kill(self) -> None:
        """Stop a call in progress (from another thread) and end the interpreter: the sample was aborted."""
        self._killed = True
        worker = self._worker
        if worker is not None and self._busy:
            worker.signal_kill()  # the run() blocked on it returns at once; close() frees the rest

    def close(self) -> None:
        """The sample is done: its interpreter and everything it started are killed."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.kill()

    def __enter__(self) -> "SandboxSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SandboxPool:
    """Fresh interpreters for the samples of a server. Thread-safe.

    A template process imports the maths libraries once and forks one interpreter per sample; `size` forks are kept
    ready so a sample's first call does not wait for one.
    """

    def __init__(self, size: int = 4, timeout: float = 6.0, memory_mb: int = 2048, max_output_chars: int = 2000,
                 setup_code: str = DEFAULT_SETUP, isolate: bool | str = "auto",
                 allow_unisolated: bool = False) -> None:
        """`isolate`: "auto" uses PID and network namespaces where they work; True requires them; False never uses
        them; "none" uses nothing (not even a uid of its own as root); "userns" takes the non-root path (user
        namespaces) even as root, to test it. Without namespaces and without root (for a
        uid of its own) a sample could read the server's environment and signal it: the pool refuses to start
        unless `allow_unisolated`."""
        if size < 0:
            raise ValueError(f"tools.pool_size: must be ≥ 0, got {size}")
        if timeout <= 0:
            raise ValueError(f"tools.timeout_seconds: must be > 0, got {timeout}")
        self.size, self.timeout, self.memory_mb = int(size), float(timeout), int(memory_mb)
        self.max_output_chars = int(max_output_chars)
        self.setup_code = setup_code
        if isolate not in ("auto", True, False, "none", "userns"):
            raise ValueError(f"isolate: {isolate!r} is not one of 'auto', True, False, 'none', 'userns'")
        self._isolate = isolate
        self._lock = threading.Lock()
        self._control_lock = threading.Lock()
        self._idle: list[_Interpreter] = []
        self._starting = 0
        self._closed = False
        self._template: subprocess.Popen | None = None
        self._start_template()
        if isolate is True and not self.isolated:
            self.close()
            raise RuntimeError("tools.isolation: always, but no PID/network namespaces can be created here")
        if self.level == "none" and not allow_unisolated:
            self.close()
            raise RuntimeError("tools.allow_unisolated: the sandbox cannot isolate model code here (not root, no user "
                               "namespaces), so it could read the server's environment and kill it; set "
                               "tools.allow_unisolated: true to run tools anyway")
        # A sample of its own uid must reach its directory: not under a private temporary directory.
        self._workroot = None
        if self.level == "root" and not limits.world_reachable(tempfile.gettempdir()):
            self._workroot = "/tmp"
        (log.info if self.isolated else log.warning)(
            "sandbox: %s%s", LEVELS[self.level],
            "; own PID and network namespaces" if self.isolated else "; NO PID/network namespaces")
        for _ in range(self.size):
            self._spawn_in_background()

    # -- the template -----------------------------------------------------------------------------------------
    def _start_template(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8", **THREAD_ENV}
        self._template = subprocess.Popen([sys.executable, "-B", "-m", "inference.sandbox.template"], stdin=theirs,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                          cwd=tempfile.gettempdir(), start_new_session=True)
        theirs.close()
        self._sock = ours
        ours.settimeout(STARTUP_SECONDS)
        ours.send(json.dumps({"memory_mb": self.memory_mb, "max_output_chars": self.max_output_chars,
                              "setup": self.setup_code, "namespaces": self._isolate in ("auto", True, "userns"),
                              "level": self._isolate if self._isolate in ("none", "userns") else None}).encode())
        try:
            reply = json.loads(ours.recv(1 << 16) or b"{}")
        except (OSError, ValueError) as e:
            reply = {"error": repr(e)}
        if not reply.get("ready"):
            self._stop_template()
            raise RuntimeError(f"sandbox: the template interpreter failed to start: {reply.get('error', reply)}")
        ours.settimeout(None)
        self.level, self.isolated = reply["level"], bool(reply["namespaces"])

    def _stop_template(self) -> None:
        try:  # a fork of the server may hold our end too: say it rather than rely on end-of-file
            self._sock.send(json.dumps({"op": "close"}).encode())
        except OSError:
            pass
        self._sock.close()  # the template kills every sample and exits
        try:
            self._template.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._template.kill()
            self._template.wait()

    def _control(self, message: dict, fd: int | None = None) -> dict:
        with self._control_lock:
            if self._sock.fileno() < 0:
                if fd is not None:
                    raise RuntimeError("the sandbox pool is closed")
                return {}  # a kill after close: the template killed everything on its way out
            if fd is None:
                self._sock.send(json.dumps(message).encode())
            else:
                socket.send_fds(self._sock, [json.dumps(message).encode()], [fd])
            data = self._sock.recv(1 << 16)
        if not data:
            raise EOFError("the sandbox template exited")
        return json.loads(data)

    # -- interpreters -----------------------------------------------------------------------------------------
    def _fork(self) -> _Interpreter:
        template = self._template
        try:
            return self._fork_once()
        except (EOFError, OSError) as e:  # the template died (out of memory, killed): start another, once
            with self._control_lock:
                if self._closed:
                    raise
                if self._template is template:  # no other thread replaced it meanwhile
                    try:
                        template.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        raise e from None
                    log.error("sandbox: the template interpreter died (%r); starting a new one", e)
                    self._sock.close()
                    self._start_template()
            return self._fork_once()

    def _fork_once(self) -> _Interpreter:
        workdir = os.path.realpath(tempfile.mkdtemp(prefix="sandbox-", dir=self._workroot))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        hello = wire.new_nonce()
        try:
            reply = self._control({"op": "fork", "dir": workdir, "hello": hello.hex()}, theirs.fileno())
        except Exception:
            ours.close()
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        finally:
            theirs.close()
        if "pid" not in reply:
            ours.close()
            shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError(f"the sandbox template could not fork: {reply.get('error', reply)}")
        worker = _Interpreter(self, ours, reply["pid"], reply["handle"], workdir)
        try:
            ready = worker.reader.read(hello, time.monotonic() + READY_SECONDS)
        except (TimeoutError, EOFError, OSError) as e:
            ready = {"error": repr(e)}
        if not ready.get("ready"):
            worker.kill()
            raise RuntimeError(f"a sandbox interpreter failed to start: {ready.get('error')} {worker.ended}".strip())
        worker.watch()
        return worker

    def _spawn_in_background(self) -> None:
        with self._lock:
            if self._closed or len(self._idle) + self._starting >= self.size:
                return
            self._starting += 1

        def spawn():
            try:
                worker = self._fork()
            except Exception:  # noqa: BLE001 - a later _acquire forks one itself and reports the error
                log.exception("sandbox: forking an interpreter failed")
                with self._lock:
                    self._starting -= 1
                return
            with self._lock:
                self._starting -= 1
                if not self._closed:
                    self._idle.append(worker)
                    return
            worker.kill()

        threading.Thread(target=spawn, name="sandbox-spawn", daemon=True).start()

    def _acquire(self) -> _Interpreter:
        with self._lock:
            if self._closed:
                raise RuntimeError("the sandbox pool is closed")
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = self._fork()  # none ready: fork one here (milliseconds)
        self._spawn_in_background()  # keep `size` ready
        return worker

    # -- public -----------------------------------------------------------------------------------------------
    def session(self) -> SandboxSession:
        """A session for one sample; it takes an interpreter on its first call."""
        return SandboxSession(self)

    def warm(self, timeout: float = STARTUP_SECONDS) -> int:
        """Wait until the background forks are ready (for benchmarks and tests); returns how many are."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._starting:
                    return len(self._idle)
            time.sleep(0.01)
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        """Kill every interpreter and everything they started, then the template."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()
        with self._control_lock:
            self._stop_template()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
