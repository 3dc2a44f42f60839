"""Download a competition's reference problems (Kaggle competition data, which the kit may not redistribute).

    python -m kaggle_notebooks.reference_data --competition aimo3      # or: make reference-data COMPETITION=aimo3
    → runs/data/aimo3/reference.csv (id, problem, answer)

Needs Kaggle credentials and the competition's rules accepted on its Kaggle page. The kaggle CLI runs as a
subprocess (importing `kaggle` authenticates at import time). The problems the kit may ship are in configs/data/.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

from inference.config import REPO, Competition
from kaggle_notebooks.push import find_credentials, kaggle_cli

FILE = "reference.csv"


def download_command(slug: str, dest: Path) -> list[str]:
    return [kaggle_cli(), "competitions", "download", slug, "-f", FILE, "-p", str(dest), "--force"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--competition", default="aimo3", help="configs/competitions/<name>.yaml")
    parser.add_argument("--out", help="folder to write reference.csv into (default: runs/data/<competition>)")
    args = parser.parse_args(argv)
    try:
        comp = Competition.load(args.competition)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dest = Path(args.out or REPO / "runs" / "data" / comp.name)
    if find_credentials().source is None:
        print("error: no Kaggle credentials (~/.kaggle/kaggle.json, KAGGLE_USERNAME + KAGGLE_KEY, KAGGLE_API_TOKEN "
              "or `kaggle auth login`); the reference problems are Kaggle competition data", file=sys.stderr)
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    command = download_command(comp.kaggle_slug, dest)
    print("+ " + " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        print(f"error: the download failed; accept the rules at https://www.kaggle.com/competitions/"
              f"{comp.kaggle_slug}/rules first", file=sys.stderr)
        return 1
    archive = dest / f"{FILE}.zip"
    if archive.exists():  # the API zips single files above a size
        with zipfile.ZipFile(archive) as z:
            z.extract(FILE, dest)
        archive.unlink()
    print(f"wrote {dest / FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
