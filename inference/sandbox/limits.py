"""OS-level guards for a sample's interpreter: what Python code inside it cannot switch off.

Three isolation levels, chosen once per pool (`isolation()`):
- "root": the server runs as root. Each sample runs as its own unprivileged uid (`sandbox_uids`, otherwise unused):
  it cannot read the server's /proc/<pid>/environ or files, cannot signal it, and RLIMIT_NPROC counts its processes
  only. Where unshare(2) works it also gets its own PID namespace (it is PID 1: killing it kills everything it
  started) and network namespace (no interface up: no network).
- "userns": not root, but unprivileged user namespaces work. Each sample gets user, PID, network and mount
  namespaces with a fresh /proc (the server is not in it), then a nested user namespace that drops its power over
  the others.
- "none": neither; the sample runs in its own session with the audit hook only. The pool refuses this unless
  `allow_unisolated` is set.
All levels set RLIMIT_NPROC, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_CORE, RLIMIT_CPU and no-new-privileges.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import stat
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
SAMPLES_PER_TEMPLATE = 256


def sandbox_uids(template_pid: int) -> range:
    """Uids no account uses, one per live sample, distinct between live templates (their pids differ)."""
    base = 2_000_000_000 + (template_pid % (1 << 22)) * SAMPLES_PER_TEMPLATE
    return range(base, base + SAMPLES_PER_TEMPLATE)
INNER_UID = 1000  # the sample's uid inside its user namespace
NPROC = 64  # processes and threads per sample
FSIZE = 64 << 20
CPU_SECONDS = 600  # a backstop: the parent's per-call timeout kills first

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), "prctl")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def enter_user_namespace(inner_uid: int, outer_uid: int, outer_gid: int, extra_flags: int = 0) -> None:
    """A new user namespace (plus `extra_flags` namespaces) in which this process is `inner_uid`."""
    unshare(CLONE_NEWUSER | extra_flags)
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{inner_uid} {outer_uid} 1")
    _write("/proc/self/gid_map", f"{inner_uid} {outer_gid} 1")


def mount_fresh_proc() -> None:
    """In a new mount + PID namespace (as its PID 1): /proc shows this namespace's processes only."""
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount proc")


def drop_to_uid(uid: int) -> None:
    """Root only: become `uid` (and gid) for good, with no supplementary groups."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def world_reachable(path: str) -> bool:
    """Whether any uid can list `path`: every ancestor world-searchable, the directory world-readable."""
    parts = os.path.realpath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        try:
            mode = os.stat(os.sep.join(parts[:i]) or os.sep).st_mode
        except OSError:
            return True  # not there: nothing to reach
        need = stat.S_IXOTH | (stat.S_IROTH if i == len(parts) else 0)
        if mode & need != need:
            return False
    return True


def open_import_paths() -> dict[str, int]:
    """Root only, before dropping to a sandbox uid: the import directories that uid could not reach (a Python
    installed under /root, say) → an O_PATH descriptor to each. Through /proc/self/fd/N the directory stays
    readable to the sample, and nothing else beside or above it does."""
    dirs = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    for module in list(sys.modules.values()):
        dirs.update(os.path.realpath(p) for p in (getattr(module, "__path__", None) or []) if isinstance(p, str))
    opened = {}
    for d in sorted(dirs):
        if any(d.startswith(top + os.sep) for top in opened) or world_reachable(d):
            continue
        opened[d] = os.open(d, os.O_PATH | os.O_DIRECTORY)
    return opened


def use_import_paths(opened: dict[str, int]) -> None:
    """Import through the descriptors of `open_import_paths` (done before forking: the descriptors are inherited)."""
    if not opened:
        return

    def moved(path: str) -> str:
        full = os.path.realpath(path)
        for top, fd in opened.items():
            if full == top or full.startswith(top + os.sep):
                return f"/proc/self/fd/{fd}" + full[len(top):]
        return path

    sys.path[:] = [moved(p) if p else p for p in sys.path]
    for module in list(sys.modules.values()):
        path = getattr(module, "__path__", None)
        if isinstance(path, list):
            path[:] = [moved(p) if isinstance(p, str) else p for p in path]
    sys.path_importer_cache.clear()


def apply_limits(memory_mb: int) -> None:
    """The limits every sample runs under; none can be raised again by an unprivileged process."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE, FSIZE))
    resource.setrlimit(resource.RLIMIT_NPROC, (NPROC, NPROC))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    if memory_mb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-long write fails with EFBIG instead of killing us


def _probe(fn) -> bool:
    """Run `fn` in a forked child; whether it returned without raising."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            code = 0
        except BaseException:  # noqa: BLE001 - any failure means "not available"
            code = 1
        os._exit(code)
    return os.waitpid(pid, 0)[1] == 0


def isolation() -> tuple[str, bool]:
    """(level, namespaces): the isolation this machine gives a sample (see the module docstring)."""
    if os.geteuid() == 0:
        return "root", _probe(lambda: unshare(CLONE_NEWPID | CLONE_NEWNET))
    if userns_works():
        return "userns", True
    return "none", False


def userns_works() -> bool:
    uid, gid = os.getuid(), os.getgid()
    return _probe(lambda: enter_user_namespace(INNER_UID, uid, gid, CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWNS))
