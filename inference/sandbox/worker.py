"""A sample's interpreter: the process model code runs in, forked fresh from the template for each sample.

`serve()` takes over the forked process: it isolates it (inference/sandbox/limits.py), closes every descriptor but
its own socket and capture file, installs the audit hook and answers `run` requests until the socket closes. The
hook has no off switch: nothing in this process turns it off, so nothing model code finds in a frame can either.
"""

from __future__ import annotations

import ast
import os
import sys
import tempfile
import traceback

from inference.sandbox import limits, wire

BLOCKED_EVENTS = frozenset({
    "os.system", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "pty.spawn",
    "os.kill", "os.killpg", "signal.pthread_kill", "socket.__new__", "socket.connect", "socket.bind",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto", "os.setuid", "resource.setrlimit",
    "resource.prlimit", "sys.addaudithook"})
# event -> which arguments are paths that must lie inside the working directory
PATH_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
               "os.truncate": (0,), "os.utime": (0,), "os.rename": (0, 1), "os.link": (1,), "os.symlink": (1,),
               "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.move": (1,), "os.mkfifo": (0,),
               "os.mknod": (0,)}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class BoundedText:
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


def truncate(text: str, limit: int) -> str:
    """Keep the head and tail of an over-long output, with a note of how much was cut between them."""
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - limit} characters cut ...]\n{text[len(text) - tail:]}"


def make_audit_hook(workdir: str):
    """The second line behind the OS limits: refuses processes, sockets and writes outside `workdir`."""
    prefix = workdir + os.sep
    blocked, path_events, write_flags = BLOCKED_EVENTS, dict(PATH_EVENTS), WRITE_FLAGS

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an already open descriptor
        path = os.fsdecode(path)
        if path in ("/dev/null", "/dev/stdout", "/dev/stderr"):
            return True
        full = os.path.realpath(os.path.join(os.getcwd(), path))
        return full == workdir or full.startswith(prefix)

    def audit(event: str, args) -> None:
        if event in blocked:
            what = "network access" if event.startswith("socket") else "this operation"
            raise PermissionError(f"{event}: {what} is not allowed in the sandbox")
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & write_flags)
            if writing and path is not None and not inside(path):
                raise PermissionError(f"writing {os.fsdecode(path)!r}: only the working directory is writable")
        elif event in path_events:
            for i in path_events[event]:
                p = args[i] if i < len(args) else None
                if p is not None and not inside(p):
                    raise PermissionError(f"{event} {os.fsdecode(p)!r}: only the working directory is writable")

    return audit


def isolate(level: str, namespaces: bool, uid: int | None, workdir: str, pid_pipe: int,
            import_fds: dict[str, int]) -> set[int]:
    """Turn this freshly forked process into the sample's isolated interpreter. With PID namespaces it forks once
    more (the interpreter must be PID 1 of its namespace); the process left behind reports the interpreter's pid on
    `pid_pipe`, waits for it and exits with it. `import_fds`: the template's, see limits.open_import_paths. Returns
    descriptors to keep open."""
    os.setsid()
    limits.prctl(limits.PR_SET_PDEATHSIG, 9)  # the template dies → so do we
    if namespaces:
        if level == "root":
            limits.unshare(limits.CLONE_NEWPID | limits.CLONE_NEWNET)
        else:
            limits.enter_user_namespace(limits.INNER_UID, os.getuid(), os.getgid(),
                                        limits.CLONE_NEWPID | limits.CLONE_NEWNET | limits.CLONE_NEWNS)
        child = os.fork()
        if child:
            os.write(pid_pipe, str(child).encode())
            os.close(pid_pipe)
            for fd in range(3, 1024):
                try:
                    os.close(fd)
                except OSError:
                    pass
            code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
            os._exit(128 - code if code < 0 else code)
        if level == "userns":
            limits.mount_fresh_proc()
            limits.enter_user_namespace(limits.INNER_UID, limits.INNER_UID, limits.INNER_UID)
    else:
        os.write(pid_pipe, str(os.getpid()).encode())
    os.close(pid_pipe)
    if level == "root":
        os.chown(workdir, uid, uid)
        limits.drop_to_uid(uid)
    limits.prctl(limits.PR_SET_PDEATHSIG, 9)  # cleared by the uid change; our parent dies → so do we
    return set(import_fds.values())


def serve(channel: int, level: str, namespaces: bool, uid: int | None, workdir: str, pid_pipe: int,
          import_fds: dict[str, int], memory_mb: int, limit: int, namespace: dict, hello: bytes) -> None:
    """Never returns: runs the sample's calls, then exits."""
    code = 0
    try:
        keep = isolate(level, namespaces, uid, workdir, pid_pipe, import_fds)
        capture = os.memfd_create("sandbox-capture")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(capture, 1)
        os.dup2(capture, 2)
        os.close(capture)
        capture = 1  # fds 1 and 2 are the capture file, read back and emptied after each call
        keep |= {0, 1, 2, channel}
        for fd in range(3, 1024):
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update({"TMPDIR": workdir, "HOME": workdir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        tempfile.tempdir = workdir
        limits.apply_limits(memory_mb)
        sys.addaudithook(make_audit_hook(os.path.realpath(workdir)))
        wire.send(channel, {"ready": True}, hello)
        _loop(channel, capture, limit, namespace)
    except BaseException as e:  # noqa: BLE001 - the parent reads the reason, or end-of-file
        try:
            wire.send(channel, {"ready": False, "error": repr(e)}, hello)
        except BaseException:  # noqa: BLE001
            pass
        code = 70
    os._exit(code)


def _loop(channel: int, capture: int, limit: int, namespace: dict) -> None:
    reader = wire.Reader(channel)
    while True:
        try:
            nonce, message = reader.read_any()
        except EOFError:
            return
        try:
            reply = run(message["code"], namespace, capture, limit)
        except BaseException as e:  # noqa: BLE001 - report, keep serving
            reply = {"error": True, "output": f"Error in the sandbox: {e!r}"}
        wire.send(channel, reply, nonce)


def run(code: str, namespace: dict, capture: int, limit: int) -> dict:
    out = BoundedText(limit)
    sys.stdout = sys.stderr = out
    error = False
    try:
        tree = ast.parse(code, "<code>")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<code>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<code>", "eval"), namespace)
            if value is not None:
                out.write(repr(value) + "\n")
    except SystemExit as e:
        error = True
        out.write(f"SystemExit: {e.code!r} (exit is ignored in the sandbox; variables are kept)\n")
    except BaseException as e:  # noqa: BLE001 - everything the code raises is the model's to read
        error = True
        # Only the model's own lines: library and sandbox frames are noise to it.
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == "<code>"]
        lines = traceback.format_list(frames) if frames and not isinstance(e, SyntaxError) else []
        out.write(("Traceback (most recent call last):\n" if lines else "") + "".join(lines)
                  + "".join(traceback.format_exception_only(type(e), e)).rstrip() + "\n")
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    text = out.text()
    size = os.fstat(capture).st_size
    if size:
        raw = os.pread(capture, min(size, 4 * limit), 0).decode("utf-8", "replace")
        if size > len(raw):
            raw += f"\n[... {size - len(raw)} more bytes ...]"
        text += raw
        os.ftruncate(capture, 0)
    if not text:
        text = "[no output: print() what you want to see]"
    return {"output": truncate(text, limit), "error": error}
