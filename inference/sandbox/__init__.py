"""A sandbox for model-written Python: a fresh interpreter per sample, forked from a pre-imported template.

    python -m inference.sandbox [--timeout S] FILE     # runs FILE as model code runs; prints what the model would see
    python -m inference.sandbox --benchmark            # per-sample start cost and calls/s

- pool.py: the server's side (`SandboxPool`, `SandboxSession`): sessions, timeouts, kills.
- template.py: the fork server: imports math, numpy, sympy, mpmath and runs the setup code once, forks per sample.
- worker.py: a sample's interpreter: isolates itself, runs the calls, captures output, the audit hook.
- limits.py: the OS-level guards (uid, namespaces, rlimits, no-new-privileges).
- wire.py: framed messages, read by a per-call nonce.
"""

from inference.sandbox.pool import DEFAULT_SETUP, SandboxPool, SandboxSession, ToolResult
from inference.sandbox.worker import truncate

__all__ = ["DEFAULT_SETUP", "SandboxPool", "SandboxSession", "ToolResult", "truncate"]
