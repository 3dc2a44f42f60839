"""The fork server: one process per pool that imports the maths libraries and runs the setup code once, then forks
a fresh interpreter for each sample (inference/sandbox/worker.py). It never runs model code, so every sample starts
from the same clean state: no signal handler, alarm, thread, module attribute, builtin or descriptor of one sample
reaches another.

Started by the pool as `python -m inference.sandbox.template` with its control socket (SOCK_SEQPACKET: one JSON
message per packet, a sample's socket passed along with SCM_RIGHTS) on stdin; stdin is moved off fd 0 at once and
every forked sample closes it. Requests: {"op": "fork", "dir", "hello"} + the sample's socket → {"pid", "handle"};
{"op": "kill", "handle"} → {"ok"} once everything the sample started is dead. {"op": "close"} or end-of-file: kill
all samples, exit.
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import signal
import socket
import time

from inference.sandbox import limits, worker

# Preloaded once (imports are slow and memory-hungry); forked samples share them copy-on-write.
PRELOAD = ("math", "numpy", "sympy", "mpmath", "fractions", "itertools", "functools", "collections", "decimal")


def describe(status: int | None) -> str:
    """How a process ended, from its wait status (an exit code over 128 is a namespace's PID 1 killed by a signal,
    as the process between reports it)."""
    if status is None:
        return ""
    code = os.waitstatus_to_exitcode(status)
    if code > 128:
        code = 128 - code
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _processes_of(uid: int) -> bool:
    """Whether any process (a zombie included) runs as `uid`: /proc/<pid> belongs to its process's uid."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    return True
            except OSError:
                pass
    return False


class Template:
    def __init__(self, control: socket.socket, config: dict) -> None:
        self.control = control
        self.memory_mb = int(config["memory_mb"])
        self.limit = int(config["max_output_chars"])
        for name in PRELOAD:
            importlib.import_module(name)
        self.namespace = {"__name__": "__main__", "__builtins__": builtins}
        if config.get("setup"):
            exec(compile(config["setup"], "<setup>", "exec"), self.namespace)
        if config.get("level") == "none":
            self.level, self.namespaces = "none", False
        elif config.get("level") == "userns":
            self.level, self.namespaces = "userns", limits.userns_works()
        else:
            self.level, self.namespaces = limits.isolation()
        if not config.get("namespaces", True):
            self.namespaces = False
        self.free_uids = list(reversed(limits.sandbox_uids(os.getpid()))) if self.level == "root" else []
        # Root samples run as another uid: import through descriptors opened here, once, inherited by every fork.
        self.import_fds = limits.open_import_paths() if self.level == "root" else {}
        limits.use_import_paths(self.import_fds)
        self.samples: dict[int, dict] = {}  # handle (our child's pid) -> {"uid", "pidfd", "pid"}
        self.ended: dict[int, str] = {}  # samples that ended by themselves -> how, until the pool asks
        self.exited: dict[int, int] = {}  # samples reaped -> wait status

    def fork(self, message: dict, channel: int) -> dict:
        uid = self.free_uids.pop() if self.level == "root" else None
        r, w = os.pipe()
        try:
            handle = os.fork()
        except OSError:
            for fd in (r, w):
                os.close(fd)
            if uid is not None:
                self.free_uids.append(uid)
            raise
        if handle == 0:
            os.close(r)
            self.control.close()
            worker.serve(channel, self.level, self.namespaces, uid, message["dir"], w, self.import_fds,
                         self.memory_mb, self.limit, self.namespace, bytes.fromhex(message["hello"]))
        os.close(w)
        os.close(channel)
        data = b""
        while chunk := os.read(r, 64):
            data += chunk
        os.close(r)
        pid = int(data) if data else handle
        try:
            pidfd = os.pidfd_open(pid)  # signals through it cannot reach a recycled pid
        except OSError:
            pidfd = None
        self.samples[handle] = {"uid": uid, "pidfd": pidfd, "pid": pid}
        return {"pid": pid, "handle": handle}

    def kill(self, handle: int) -> str:
        """Kill a sample and everything it started; returns how it ended ("" if it was already gone)."""
        sample = self.samples.get(handle)
        if sample is None:
            return self.ended.pop(handle, "")
        if sample["pidfd"] is not None:
            try:
                signal.pidfd_send_signal(sample["pidfd"], signal.SIGKILL)
            except OSError:
                pass
            os.close(sample["pidfd"])
        if not self.namespaces:  # no PID namespace takes its children along: kill them here
            if self.level == "root":
                self._kill_uid(sample["uid"])
            else:
                try:
                    os.killpg(handle, signal.SIGKILL)
                except OSError:
                    pass
        if handle not in self.exited:
            try:
                self.exited[handle] = os.waitpid(handle, 0)[1]
            except ChildProcessError:
                pass
        del self.samples[handle]
        if sample["uid"] is not None:
            self.free_uids.append(sample["uid"])
        return describe(self.exited.pop(handle, None))

    def _kill_uid(self, uid: int) -> None:
        """Kill every process of `uid` and reap them (we are their subreaper): as that uid, kill(-1) reaches exactly
        those, atomically against fork; repeated until /proc shows none, not even a zombie."""
        for _ in range(500):
            pid = os.fork()
            if pid == 0:
                try:
                    os.setresuid(uid, uid, uid)
                    os.kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
            self._collect()
            if not _processes_of(uid):
                return
            time.sleep(0.002)

    def _collect(self) -> None:
        """Reap every child that has ended: samples (their status is kept) and orphans handed to us."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.samples:
                self.exited[pid] = status

    def reap(self) -> None:
        """Samples that ended by themselves (a crash, os._exit): clean up after them."""
        self._collect()
        for handle in [h for h in self.samples if h in self.exited]:
            self.ended[handle] = self.kill(handle)

    def serve(self) -> None:
        while True:
            self.reap()
            try:
                data, fds, _, _ = socket.recv_fds(self.control, 1 << 16, 1)
            except OSError:
                break
            if not data:
                break
            message = json.loads(data)
            if message["op"] == "close":
                break
            try:
                if message["op"] == "fork":
                    reply = self.fork(message, fds[0])
                elif message["op"] == "kill":
                    reply = {"ok": True, "ended": self.kill(int(message["handle"]))}
                else:
                    reply = {"error": f"unknown op {message['op']!r}"}
            except Exception as e:  # noqa: BLE001 - out of uids, fork refused: the pool reports it
                for fd in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                reply = {"error": repr(e)}
            self.control.send(json.dumps(reply).encode())
        for handle in list(self.samples):
            self.kill(handle)


def main() -> None:
    control = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    limits.prctl(limits.PR_SET_CHILD_SUBREAPER, 1)  # orphans of samples come to us, to be reaped
    # No PDEATHSIG here (it follows the server's thread that started us): the server's end closing ends us.
    config = json.loads(control.recv(1 << 20))
    try:
        template = Template(control, config)
    except BaseException as e:  # noqa: BLE001 - the pool reports it
        control.send(json.dumps({"ready": False, "error": repr(e)}).encode())
        return
    control.send(json.dumps({"ready": True, "level": template.level, "namespaces": template.namespaces}).encode())
    template.serve()


if __name__ == "__main__":
    main()
