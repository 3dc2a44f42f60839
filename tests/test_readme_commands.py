"""Every command of README.md runs, in order, on a fresh clone: each file or folder a command reads is shipped
(tracked by git) or written by an earlier README command. A static check (the commands themselves take hours and
GPUs); what each command writes is read from its flags and from the configs it names, as the scripts do."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TOP = ("configs/", "models/", "runs/", "inference/", "train/", "kaggle_notebooks/", "tests/")
# Flags whose value a script writes (the rest of the repo paths on a command line are read).
WRITES = {
    "inference/evaluate.py": {"--traces", "--out"},
    "inference/local_gateway.py": {"--submission", "--report", "--record-traces", "--log"},
    "inference/simulate.py": {"--out", "--write-synthetic"},
    "train.toy.gpt_oss_factory": {"--out"},
    "inference/benchmark.py": {"--out"},
}


def readme_commands(text: str) -> list[str]:
    """The shell commands of the ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _repo_path(token: str) -> str | None:
    token = token.split("=", 1)[1] if re.match(r"^[A-Z_]+=", token) else token
    return token.rstrip("/") if token.startswith(TOP) else None


def reads_and_writes(command: str) -> tuple[set[str], set[str]]:
    tokens = shlex.split(command, comments=True)
    reads, writes = set(), set()
    script = next((t for t in tokens if t in WRITES), None)
    for i, token in enumerate(tokens):
        path = _repo_path(token)
        if path is None:
            continue
        flag = tokens[i - 1] if i else ""
        (writes if script and flag in WRITES[script] else reads).add(path)
    if tokens[:1] == ["make"]:
        args = dict(t.split("=", 1) for t in tokens[2:] if "=" in t)
        target = tokens[1]
        if target == "toy":
            recipe = yaml.safe_load((REPO / "configs/toy/recipe.yaml").read_text())
            writes |= {recipe["model_dir"], recipe["run_dir"]}
        elif target == "install-toy-model":
            reads.add(args.get("TOY_MODEL", "runs/toy/model"))
            writes.add("models/toy-math")
        elif target == "quantize":
            reads.discard(args["OUT"])
            writes.add(args["OUT"])
        elif target == "reference-data":
            writes.add(f"runs/data/{args.get('COMPETITION', 'aimo3')}")
    for module in ("train.sft", "train.grpo"):  # trl recipes: output_dir and the model they start from
        if module in tokens:
            recipe = yaml.safe_load((REPO / tokens[tokens.index("--config", tokens.index(module)) + 1]).read_text())
            writes.add(recipe["output_dir"])
            if str(recipe.get("model_name_or_path", "")).startswith(TOP):
                reads.add(recipe["model_name_or_path"].rstrip("/"))
    return reads, writes


def tracked() -> set[str]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    folders = {str(Path(n).parent) for n in names for _ in [0]}
    folders |= {str(p) for n in names for p in Path(n).parents if str(p) != "."}
    return set(names) | folders


def unmet_reads(commands: list[str], shipped: set[str]) -> list[str]:
    written: set[str] = set()
    problems = []
    for command in commands:
        reads, writes = reads_and_writes(command)
        for path in sorted(reads):
            if path not in shipped and not any(path == w or path.startswith(w + "/") for w in written):
                problems.append(f"{path!r} read by: {command}")
        written |= writes
    return problems


def test_every_readme_command_reads_only_shipped_or_earlier_written_files():
    commands = readme_commands((REPO / "README.md").read_text())
    assert len(commands) >= 15  # the parser found the README's commands
    assert unmet_reads(commands, tracked()) == []


def test_the_checker_catches_a_file_no_command_writes():
    commands = readme_commands(
        "```bash\n"
        ".venv/bin/python inference/evaluate.py --model models/toy-math --problems configs/toy/eval_mixed.csv \\\n"
        "    --traces runs/toy-traces.jsonl --out runs/toy-eval.json\n"
        ".venv/bin/python inference/simulate.py --traces runs/toy-traces.jsonl   # recorded just above: fine\n"
        ".venv/bin/python inference/local_gateway.py --engine replay --traces runs/traces.jsonl --virtual-clock\n"
        "```\n")
    assert unmet_reads(commands, tracked()) == [
        "'runs/traces.jsonl' read by: .venv/bin/python inference/local_gateway.py --engine replay --traces "
        "runs/traces.jsonl --virtual-clock"]
    assert unmet_reads(["make quantize MODEL=runs/nowhere OUT=models/x-awq"], tracked()) == [
        "'runs/nowhere' read by: make quantize MODEL=runs/nowhere OUT=models/x-awq"]


def test_kaggle_notebook_commands_say_which_python_runs_them():
    """`python -m kaggle_notebooks...` with a system Python stops at a missing import: the README names .venv's."""
    text = (REPO / "README.md").read_text() + (REPO / "kaggle_notebooks/README.md").read_text()
    bare = re.findall(r"(?<![/\w])python -m kaggle_notebooks\.\w+", text)
    assert bare == []


@pytest.mark.parametrize("command", ["make toy", "make install-toy-model", "make reference-data COMPETITION=aimo3"])
def test_make_targets_the_readme_names_exist(command):
    result = subprocess.run(["make", "-n", *command.split()[1:]], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout, result.stderr


def bare_interpreter_commands(text: str) -> list[str]:
    """Commands that need the README's .venv but would run a system `python` (or a venv tool not on PATH): every
    command of a ```bash block starts with `make` or `.venv/bin/`, and no inline `python …` command is left."""
    bad = [c for c in readme_commands(text) if not c.startswith(("make ", ".venv/bin/"))]
    bad += re.findall(r"`((?:python3?|accelerate|kaggle|tensorboard|pytest) [^`]*)`", text)
    return bad


def test_every_readme_command_names_the_venv_interpreter():
    """One form for every command (`.venv/bin/python …` or a make target), so each runs as written after setup."""
    assert bare_interpreter_commands((REPO / "README.md").read_text()) == []
    assert bare_interpreter_commands("`python -m train.curves --out x.png`\n```bash\npython -m train.toy.tir\n```\n") \
        == ["python -m train.toy.tir", "python -m train.curves --out x.png"]
