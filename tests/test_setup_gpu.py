"""`make setup-gpu` builds its own environment (.venv-gpu) and refuses a CPU torch; the CPU targets never touch it.

    .venv/bin/python -m pytest tests/test_setup_gpu.py -q
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def dry_run(*targets: str) -> list[str]:
    """The commands `make -n` would run (nothing is executed)."""
    done = subprocess.run(["make", "-n", "-B", *targets, "PY=python3"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_setup_gpu_uses_its_own_environment_and_cpu_targets_never_touch_it():
    gpu = dry_run("setup-gpu")
    assert any("-m venv .venv-gpu" in line for line in gpu)
    assert not any(".venv/bin" in line for line in gpu)  # never the CPU environment
    for target in ("test", "demo", "toy"):
        assert not any(".venv-gpu" in line for line in dry_run(target)), target


def test_setup_gpu_refuses_a_cpu_torch():
    """The check setup-gpu runs after installing torch, run with this (CPU) environment's torch: it fails."""
    checks = [line for line in dry_run("setup-gpu") if "torch.version.cuda" in line]
    assert len(checks) == 2  # after torch, and again after requirements-gpu.txt
    command = checks[0].replace(".venv-gpu/bin/python", sys.executable)
    done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=120)
    import torch

    if torch.version.cuda:
        pytest.skip("this environment's torch is a CUDA build")
    assert done.returncode != 0 and "is a CPU build (torch.version.cuda is None)" in done.stderr
