"""The repo is all a user clones: no tracked file may point outside it, and the data it uses is shipped."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A sibling checkout (a `..` path to the folders beside the repo) or an absolute path of one machine (its work,
# root or home folders).
OUTSIDE = re.compile(r"\.\./shared|\.\./data/|(?<![\w.])/(?:work|root|Users)/|/home/[a-z]")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = []
    for name in filter(None, names.split("\0")):
        path = REPO / name
        if path.is_file() and b"\0" not in path.read_bytes()[:8192]:  # text only (not model.safetensors)
            files.append(path)
    return files


def test_no_tracked_file_refers_outside_the_repo():
    offenders = []
    for path in tracked_text_files():
        if path == Path(__file__).resolve():  # this file names the patterns it looks for
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert len(tracked_text_files()) > 50  # the check really read the repo
    assert offenders == [], "files that point outside the repo:\n" + "\n".join(offenders)


def test_the_pattern_catches_what_it_must_and_spares_kaggle_paths():
    # The examples are assembled so that this file itself names no path outside the repo.
    sibling = "/".join(["..", "shared", "data", "aimo3_reference.jsonl"])
    machine = "/".join(["", "work", "shared", "data", "x.jsonl"])
    assert OUTSIDE.search(f"--problems {sibling}")
    assert OUTSIDE.search(f'pl.read_ndjson("{machine}")')
    assert OUTSIDE.search("cache in /root/.cache/huggingface") and OUTSIDE.search("/home/alice/models")
    assert not OUTSIDE.search("/kaggle/input/models/your-user/fast-math-14b") and not OUTSIDE.search("kaggle/working/")


def test_shipped_evaluation_sets_are_clean_and_documented():
    data = REPO / "configs" / "data"
    sources = (data / "SOURCES.md").read_text()
    files = sorted(data.glob("*.jsonl"))
    assert [f.name for f in files] == ["aime2024.jsonl", "aime2025.jsonl", "math500.jsonl"]
    for f in files:
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        assert all(set(r) == {"id", "problem", "answer", "source"} for r in rows), f.name
        assert len({r["id"] for r in rows}) == len(rows) and all(r["problem"].strip() for r in rows), f.name
        assert f"| {f.name} | {len(rows)} |" in sources  # its count, source and licence are in SOURCES.md
    assert "make reference-data" in sources  # what is not shipped says how to get it
