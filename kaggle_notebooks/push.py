"""From a trained model folder to a running Kaggle submission notebook, in one command.

    python -m kaggle_notebooks.push --competition aimo3 --model models/fast-math-14b-awq --dry-run   # show commands
    python -m kaggle_notebooks.push --competition aimo3 --model models/fast-math-14b-awq
    make kaggle-push COMPETITION=aimo3 MODEL=models/fast-math-14b-awq
    python -m kaggle_notebooks.push --competition aimo3 --settings aimo3-gpt-oss --model-source \
        openai/gpt-oss-120b/transformers/default/1            # a public Kaggle model: nothing to upload

Steps, each a `kaggle` CLI call printed before it runs (the CLI is run as a subprocess: importing `kaggle`
authenticates at import time):
  1. the kit's code (inference/, configs/competitions/, configs/inference/) → dataset <owner>/aimo-kit-code
  2. the offline wheel bundle (kaggle_notebooks/wheels.py: vLLM for Kaggle's Python) → dataset
     <owner>/aimo-kit-wheels
     (skip with --skip-wheels once uploaded: it is large and changes only with the vLLM pin)
  3. the model folder → Kaggle model <owner>/<model-slug>/transformers/<variation>, a new version each push
     (skip with --model-version N to reuse an uploaded version, or --model-source for any Kaggle model)
  4. the notebook and kernel-metadata.json (kaggle_notebooks/build.py, with your user name and the model version)
     → `kaggle kernels push`, which starts a commit run: a one-problem smoke test on the competition's GPU
  5. `kaggle kernels status`
A dataset or model that exists already gets a new version; one that does not is created. Needs Kaggle credentials
(~/.kaggle/kaggle.json, KAGGLE_USERNAME + KAGGLE_KEY, KAGGLE_API_TOKEN or `kaggle auth login`); without them it
exits with status 2 before doing anything. --dry-run needs no credentials and runs nothing.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kaggle_notebooks.build import CODE_DATASET_SLUG, PLACEHOLDER_OWNER, WHEELS_DATASET_SLUG, kernel_spec, write_kernel
from inference.harmony import write_o200k_base
from kaggle_notebooks.wheels import WheelPlan, build_bundle, dataset_metadata

REPO = Path(__file__).resolve().parents[1]
# What serving needs on Kaggle, relative to the repo: the inference package and the configs it reads.
CODE_PATHS = ["inference", "configs/competitions", "configs/inference"]
FRAMEWORK = "transformers"  # Kaggle model framework of a save_pretrained folder (mounted in lower case)
DATASET_READY_SECONDS = 900


def kaggle_cli() -> str:
    """The `kaggle` script of this environment (next to its python), else the one on PATH."""
    here = Path(sys.executable).with_name("kaggle")
    return str(here) if here.exists() else "kaggle"


# -- credentials -----------------------------------------------------------------------------------------------------
@dataclass
class Credentials:
    source: str | None  # where they were found; None: nowhere
    username: str | None  # None when only a token was found (the token's owner is known to Kaggle only)


def find_credentials(env: dict | None = None, home: Path | None = None) -> Credentials:
    """Look where the kaggle CLI 2.x looks, without importing it or touching the network."""
    env = os.environ if env is None else env
    home = home or Path.home()
    config_dir = Path(env.get("KAGGLE_CONFIG_DIR") or home / ".kaggle")
    username = env.get("KAGGLE_USERNAME")
    kaggle_json = config_dir / "kaggle.json"
    if kaggle_json.exists():
        try:
            username = username or json.loads(kaggle_json.read_text()).get("username")
        except (OSError, ValueError):
            pass
    if env.get("KAGGLE_API_TOKEN"):
        return Credentials("KAGGLE_API_TOKEN", username)
    for name in ("access_token", "access_token.txt"):
        if (home / ".kaggle" / name).exists():
            return Credentials(str(home / ".kaggle" / name), username)
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return Credentials("KAGGLE_USERNAME/KAGGLE_KEY", username)
    if kaggle_json.exists():
        return Credentials(str(kaggle_json), username)
    if (home / ".kaggle" / "credentials.json").exists():  # `kaggle auth login` (OAuth)
        return Credentials(str(home / ".kaggle" / "credentials.json"), username)
    return Credentials(None, None)


NO_CREDENTIALS = """\
error: no Kaggle credentials found. Provide one of:
  - an API token: export KAGGLE_API_TOKEN=... (from https://www.kaggle.com/settings/api), or ~/.kaggle/access_token
  - a legacy key: ~/.kaggle/kaggle.json with {"username": ..., "key": ...}, or KAGGLE_USERNAME and KAGGLE_KEY
  - OAuth: kaggle auth login
Then run this again (add --dry-run to see the commands without credentials)."""


# -- running commands ------------------------------------------------------------------------------------------------
class Runner:
    """Prints every command; runs it unless this is a dry run."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run

    def run(self, command: list[str], capture: bool = False, check: bool = True) -> subprocess.CompletedProcess:
        print("$", shlex.join(command), flush=True)
        if self.dry_run:
            return subprocess.CompletedProcess(command, 0, "", "")
        result = subprocess.run(command, text=True, capture_output=capture)
        if capture:
            print(result.stdout, end="", flush=True)
            print(result.stderr, end="", file=sys.stderr, flush=True)
        if check and result.returncode != 0:
            raise PushError(f"command failed (exit {result.returncode}): {shlex.join(command)}")
        return result

    def exists(self, check_command: list[str], if_exists: list[list[str]], if_new: list[list[str]]) -> None:
        """Run `if_exists` when check_command succeeds, else `if_new`. A dry run prints both branches."""
        if self.dry_run:
            print("$", shlex.join(check_command), "   # does it exist?")
            for label, commands in (("if it exists", if_exists), ("if not", if_new)):
                for command in commands:
                    print(f"  [{label}] $", shlex.join(command))
            return
        print("$", shlex.join(check_command), flush=True)
        found = subprocess.run(check_command, capture_output=True, text=True).returncode == 0
        for command in if_exists if found else if_new:
            self.run(command)


class PushError(RuntimeError):
    pass


# -- the pieces ------------------------------------------------------------------------------------------------------
def build_code_dataset(dest: Path, dataset_id: str) -> Path:
    """Copy what serving needs into dest (a fresh folder) with its dataset-metadata.json."""
    if dest.exists():
        shutil.rmtree(dest)
    for rel in CODE_PATHS:
        shutil.copytree(REPO / rel, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    write_o200k_base(dest / "tiktoken")  # gpt-oss: CUDA vLLM's openai-harmony cannot download it offline (3.6 MB)
    (dest / "dataset-metadata.json").write_text(
        json.dumps(dataset_metadata(dataset_id, "aimo kit code", "other"), indent=2) + "\n")
    return dest


def stage_model(model: Path, dest: Path, owner: str, model_slug: str, variation: str) -> Path:
    """A folder of symlinks to the model's files plus model-instance-metadata.json (the model stays untouched)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for path in sorted(model.iterdir()):
        (dest / path.name).symlink_to(path.resolve())
    meta = {
        "ownerSlug": owner, "modelSlug": model_slug, "instanceSlug": variation, "framework": FRAMEWORK,
        "overview": "", "usage": "", "licenseName": "Apache 2.0", "fineTunable": False, "trainingData": [],
        "modelInstanceType": "Unspecified",
    }
    (dest / "model-instance-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return dest


def model_metadata(owner: str, model_slug: str) -> dict:
    """model-metadata.json as `kaggle models init` writes it."""
    return {"ownerSlug": owner, "title": model_slug, "slug": model_slug, "subtitle": "", "isPrivate": True,
            "description": "Trained with the aimo kit (SFT + GRPO, optionally AWQ).", "publishTime": "",
            "provenanceSources": ""}


def latest_model_version(runner: Runner, instance: str) -> int:
    """Highest version number of a Kaggle model variation (CSV listing of the CLI)."""
    result = runner.run([kaggle_cli(), "models", "variations", "versions", "list", instance, "--csv"], capture=True)
    if runner.dry_run:
        print("  (the notebook uses the highest versionNumber listed; this dry run assumes 1)")
        return 1
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    numbers = [int(r["versionNumber"]) for r in rows if str(r.get("versionNumber", "")).isdigit()]
    if not numbers:
        raise PushError(f"no versions listed for model {instance}")
    return max(numbers)


def wait_for_dataset(runner: Runner, dataset_id: str) -> None:
    """Kaggle processes an upload for a while; a notebook pushed before that attaches the previous version."""
    command = [kaggle_cli(), "datasets", "status", dataset_id]
    if runner.dry_run:
        print("$", shlex.join(command), "   # repeated until it prints 'ready'")
        return
    deadline = time.monotonic() + DATASET_READY_SECONDS
    while time.monotonic() < deadline:
        status = subprocess.run(command, capture_output=True, text=True).stdout.strip()
        if status.lower() == "ready":
            print(f"{dataset_id}: ready", flush=True)
            return
        print(f"{dataset_id}: {status or '...'}", flush=True)
        time.sleep(15)
    raise PushError(f"dataset {dataset_id} not ready after {DATASET_READY_SECONDS}s (check kaggle.com)")


def push_dataset(runner: Runner, folder: Path, dataset_id: str, notes: str) -> None:
    k = kaggle_cli()
    runner.exists([k, "datasets", "status", dataset_id],
                  if_exists=[[k, "datasets", "version", "-p", str(folder), "-m", notes, "-r", "zip"]],
                  if_new=[[k, "datasets", "create", "-p", str(folder), "-r", "zip"]])
    wait_for_dataset(runner, dataset_id)


def push_model(runner: Runner, staged: Path, owner: str, model_slug: str, variation: str, notes: str) -> None:
    k = kaggle_cli()
    model_meta_dir = staged.parent / "model-metadata"
    model_meta_dir.mkdir(parents=True, exist_ok=True)
    (model_meta_dir / "model-metadata.json").write_text(json.dumps(model_metadata(owner, model_slug), indent=2) + "\n")
    instance = f"{owner}/{model_slug}/{FRAMEWORK}/{variation}"
    runner.exists([k, "models", "get", f"{owner}/{model_slug}"],
                  if_exists=[], if_new=[[k, "models", "create", "-p", str(model_meta_dir)]])
    runner.exists([k, "models", "variations", "get", instance],
                  if_exists=[[k, "models", "variations", "versions", "create", instance, "-p", str(staged),
                              "-n", notes, "-r", "zip"]],
                  if_new=[[k, "models", "variations", "create", "-p", str(staged), "-r", "zip"]])


# -- main ------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--competition", required=True, choices=["aimo2", "aimo3"])
    parser.add_argument("--model", help="trained model folder (save_pretrained: config.json, weights, tokenizer)")
    parser.add_argument("--model-source", help="use this Kaggle model instead of uploading one: "
                                               "owner/model/framework/variation/version (e.g. the public "
                                               "openai/gpt-oss-120b/transformers/default/1)")
    parser.add_argument("--settings", help="configs/inference/<settings>.yaml (default: the competition's), e.g. "
                                           "aimo3-gpt-oss")
    parser.add_argument("--owner", help="Kaggle user name (default: from the credentials)")
    parser.add_argument("--model-slug", help="Kaggle model slug (default: the model folder's name)")
    parser.add_argument("--variation", default="default", help="Kaggle model variation slug")
    parser.add_argument("--model-version", type=int, help="use this uploaded model version; do not upload the model")
    parser.add_argument("--skip-wheels", action="store_true", help="reuse the uploaded wheels dataset")
    parser.add_argument("--work-dir", help="staging folder (default: outputs/kaggle/<competition>)")
    parser.add_argument("--notes", default="pushed by kaggle_notebooks.push", help="version notes")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run none of them")
    args = parser.parse_args(argv)

    if (args.model is None) == (args.model_source is None):
        print("error: give --model (a folder to upload) or --model-source (a Kaggle model), not both",
              file=sys.stderr)
        return 2
    model = Path(args.model or ".")
    if args.model is not None and not (model / "config.json").exists():
        print(f"error: --model {model}: no config.json there (expected a save_pretrained model folder)",
              file=sys.stderr)
        return 2
    creds = find_credentials()
    if creds.source is None and not args.dry_run:
        print(NO_CREDENTIALS, file=sys.stderr)
        return 2
    owner = args.owner or creds.username
    if owner is None:
        if not args.dry_run:
            print(f"error: cannot tell your Kaggle user name from {creds.source}: pass --owner", file=sys.stderr)
            return 2
        owner = PLACEHOLDER_OWNER
    model_slug = args.model_slug or model.resolve().name.lower().replace("_", "-").replace(".", "-")
    notebook = args.settings or args.competition
    work = Path(args.work_dir or REPO / "outputs" / "kaggle" / notebook)
    runner = Runner(args.dry_run)
    code_dataset, wheels_dataset = f"{owner}/{CODE_DATASET_SLUG}", f"{owner}/{WHEELS_DATASET_SLUG}"
    print(f"{'DRY RUN: ' if args.dry_run else ''}pushing {args.model_source or model} for {notebook} as Kaggle user "
          f"{owner} "
          f"(credentials: {creds.source or 'none'}); staging in {work}", flush=True)
    try:
        print("\n# 1. the kit's code")
        push_dataset(runner, build_code_dataset(work / "code", code_dataset), code_dataset, args.notes)

        print("\n# 2. the offline wheel bundle")
        if args.skip_wheels:
            print(f"skipped (--skip-wheels): the notebook uses the current version of {wheels_dataset}")
        else:
            plan = WheelPlan(work / "wheels")
            if args.dry_run:
                print("$", shlex.join(plan.download_command()))
            else:
                build_bundle(plan, wheels_dataset)
            push_dataset(runner, plan.dest, wheels_dataset, args.notes)

        print("\n# 3. the model")
        instance = f"{owner}/{model_slug}/{FRAMEWORK}/{args.variation}"
        if args.model_source is not None:
            instance, version = args.model_source.rsplit("/", 1)
            print(f"skipped (--model-source): the notebook uses {args.model_source}")
        elif args.model_version is not None:
            version = args.model_version
            print(f"skipped (--model-version {version}): the notebook uses {instance}/{version}")
        else:
            staged = stage_model(model, work / "model", owner, model_slug, args.variation)
            push_model(runner, staged, owner, model_slug, args.variation, args.notes)
            version = latest_model_version(runner, instance)

        print("\n# 4. the notebook")
        spec = kernel_spec(args.competition, owner, f"{instance}/{version}", code_dataset, wheels_dataset,
                           args.settings)
        kernel_dir = write_kernel(spec, work / "kernel")
        print(f"wrote {kernel_dir / spec.code_file} and kernel-metadata.json (model {spec.model_source})")
        result = runner.run([kaggle_cli(), "kernels", "push", "-p", str(kernel_dir)], capture=True)
        if "error" in result.stdout.lower() or "not valid" in result.stdout:
            raise PushError("kaggle kernels push reported a problem (see above)")

        print("\n# 5. status")
        runner.run([kaggle_cli(), "kernels", "status", f"{owner}/{spec.kernel_slug}"], check=False)
    except PushError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.dry_run:
        print(f"\nThe commit run answers {spec.commit_run_problems} reference problem(s). When it succeeds, submit "
              f"the notebook from its page (Submit to competition), or:\n  kaggle competitions submit "
              f"{spec.kaggle_slug} -k {owner}/{spec.kernel_slug} -v <version> -f submission.parquet -m 'kit'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
