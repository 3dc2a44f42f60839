"""Generate the Kaggle submission notebook and its kernel-metadata.json from the kit's configs.

    python -m kaggle_notebooks.build --competition aimo3            # writes kaggle_notebooks/aimo3/
    python -m kaggle_notebooks.build --competition aimo2 --owner me --model-source me/my-model/transformers/awq/2 \\
        --out outputs/kaggle/aimo2/kernel
    python -m kaggle_notebooks.build --competition aimo3 --check    # exit 1 if the committed files are stale
    python -m kaggle_notebooks.build --competition aimo3 --settings aimo3-gpt-oss   # kaggle_notebooks/aimo3-gpt-oss/

Everything competition-specific comes from configs/competitions/<name>.yaml (Kaggle slug, inference-server class,
hardware → accelerator) and configs/inference/<settings>.yaml (the serving settings, by default the competition's;
its `model` path names the Kaggle model). A notebook is named after its settings (aimo3, aimo3-gpt-oss, ...). The
notebook itself stays short: it puts the kit's code dataset on sys.path and calls inference.kaggle_paths,
inference.config and inference.server. The committed notebooks use the placeholder owner
"your-user"; `python -m kaggle_notebooks.push` regenerates them with your Kaggle user name.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

from inference.config import Competition
from kaggle_notebooks.wheels import vllm_pin

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO / "kaggle_notebooks"
PLACEHOLDER_OWNER = "your-user"
CODE_DATASET_SLUG = "aimo-kit-code"
WHEELS_DATASET_SLUG = "aimo-kit-wheels"
# Kaggle accelerator ids (`machine_shape`, the CLI's --accelerator) for the configs' hardware: (gpu, count) → id.
ACCELERATORS = {("H100", 1): "NvidiaH100", ("L4", 4): "NvidiaL4", ("L4", 1): "NvidiaL4X1"}
# A commit run ("Save version") answers this many reference problems: a smoke test that costs little GPU quota.
COMMIT_RUN_PROBLEMS = 1


@dataclass
class KernelSpec:
    """Everything that differs between generated notebooks."""

    competition: str  # aimo2 | aimo3
    kaggle_slug: str  # ai-mathematical-olympiad-progress-prize-3
    server_module: str  # kaggle_evaluation.aimo_3_inference_server
    server_class: str  # AIMO3InferenceServer
    machine_shape: str  # NvidiaH100
    owner: str
    code_dataset: str  # owner/slug
    wheels_dataset: str  # owner/slug
    model_source: str  # owner/model/framework/variation/version
    settings: str  # settings YAML, relative to the code dataset
    vllm_requirement: str  # vllm==X, the version the kit is tested with
    commit_run_problems: int = COMMIT_RUN_PROBLEMS
    name: str | None = None  # the notebook's name, from its settings file (None: the competition's)
    harmony: bool = False  # the settings use gpt-oss's Harmony format (prompts.format: harmony)

    @property
    def notebook_name(self) -> str:
        return self.name or self.competition

    @property
    def kernel_slug(self) -> str:
        return f"{self.notebook_name}-kit-submission"

    @property
    def title(self) -> str:  # the kaggle CLI warns unless slugify(title) equals the kernel slug
        return f"{self.notebook_name.upper()} kit submission"

    @property
    def code_file(self) -> str:
        return f"{self.kernel_slug}.ipynb"


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"no config {path}")
    return yaml.safe_load(path.read_text()) or {}


def model_source_from_path(path: str) -> str | None:
    """/kaggle/input/models/<owner>/<model>/<framework>/<variation>/<version> → the model_sources handle."""
    match = re.fullmatch(r"/kaggle/input/models/([^/]+/[^/]+/[^/]+/[^/]+/\d+)/?", path or "")
    return match.group(1) if match else None


def kernel_spec(competition: str, owner: str | None = None, model_source: str | None = None,
                code_dataset: str | None = None, wheels_dataset: str | None = None,
                settings_name: str | None = None) -> KernelSpec:
    comp = Competition.load(competition)  # the same checked facts the server and gateway use
    settings_name = settings_name or competition
    settings_rel = f"configs/inference/{settings_name}.yaml"
    settings = _read_yaml(REPO / settings_rel)
    if settings.get("competition", competition) != competition:
        raise ValueError(f"{settings_rel}: competition is {settings['competition']!r}, not {competition!r}")
    owner = owner or PLACEHOLDER_OWNER
    if model_source is None:
        model_source = model_source_from_path(settings.get("model", ""))
        if model_source is None:
            raise ValueError(f"{settings_rel}: `model` is not a /kaggle/input/models/<owner>/<model>/<framework>/"
                             f"<variation>/<version> path; pass --model-source")
    hardware = comp.hardware
    gpu = str(hardware.get("gpu", "")).split()[0] if hardware.get("gpu") else ""
    key = (gpu, int(hardware.get("gpus", 1)))
    if key not in ACCELERATORS:
        raise ValueError(f"configs/competitions/{competition}.yaml: no Kaggle accelerator for hardware {key}; "
                         f"known: {sorted(ACCELERATORS)}")
    name = re.fullmatch(r"([a-z]+)(\d+)", comp.name)
    return KernelSpec(
        competition=competition,
        kaggle_slug=comp.kaggle_slug,
        server_module=f"kaggle_evaluation.{name.group(1)}_{name.group(2)}_inference_server",
        server_class=comp.server_class,
        machine_shape=ACCELERATORS[key],
        owner=owner,
        code_dataset=code_dataset or f"{owner}/{CODE_DATASET_SLUG}",
        wheels_dataset=wheels_dataset or f"{owner}/{WHEELS_DATASET_SLUG}",
        model_source=model_source,
        settings=settings_rel,
        vllm_requirement=vllm_pin(),
        name=None if settings_name == competition else settings_name,
        harmony=(settings.get("prompts") or {}).get("format") == "harmony",
    )


# -- the notebook ----------------------------------------------------------------------------------------------------
INTRO = """\
# {title}

Generated by `python -m kaggle_notebooks.build --competition {competition}` from the kit's configs: change those and
regenerate, do not edit this notebook.

- Inputs: the competition, the kit's code (`{code_dataset}`), the offline wheels (`{wheels_dataset}`) and the model
  (`{model_source}`). Internet is off.
- Competition rerun (the hidden problems): `serve()` hands `predict` to Kaggle's gateway.
- Commit run ("Save version"): a smoke test on {commit_run_problems} reference problem(s), to save GPU quota.
- Editor / off Kaggle: every reference problem through the local gateway (the kit's own mock when Kaggle's
  `kaggle_evaluation` package is absent)."""

BOOTSTRAP = """\
import os, sys, time
from pathlib import Path

NOTEBOOK_START = time.time()
# The kit's code dataset goes on sys.path. Kaggle mounts datasets at /kaggle/input/<slug> (before Feb 2026) or
# /kaggle/input/datasets/<owner>/<slug>; AIMO_KIT_INPUT_ROOT points at a local folder laid out the same way.
INPUT_ROOT = Path(os.environ.get("AIMO_KIT_INPUT_ROOT") or "/kaggle/input")
owner, slug = CODE_DATASET.split("/")
candidates = [INPUT_ROOT / "datasets" / owner / slug, INPUT_ROOT / slug]
found = [p.parents[1] for d in candidates for p in sorted(d.glob("**/inference/kaggle_paths.py"))]
if not found:
    raise FileNotFoundError(f"the kit's code dataset {CODE_DATASET} is not attached; looked in {candidates}")
CODE_DIR = found[0]
sys.path.insert(0, str(CODE_DIR))

from inference import kaggle_paths

kaggle_paths.prepare_environment()
RUN = kaggle_paths.run_kind()  # rerun | commit | interactive | local
print(f"run: {RUN}, code: {CODE_DIR}")"""

SETUP = """\
import json, logging

from inference.config import load_settings
from inference.local_gateway import check_inputs
from inference.server import Predictor

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
MODEL_DIR = kaggle_paths.model_dir(MODEL)
warmup = kaggle_paths.PageCacheWarmup(MODEL_DIR).start()  # weights into the page cache while the rest starts
# AIMO_KIT_SETTINGS_OVERRIDES: JSON of dotted settings overrides, e.g. {"sampling.samples": 4} (rehearsals, tests).
overrides = json.loads(os.environ.get("AIMO_KIT_SETTINGS_OVERRIDES") or "{}")
settings = load_settings(CODE_DIR / SETTINGS, overrides, model=str(MODEL_DIR))
if settings.engine == "vllm":
    kaggle_paths.install_wheels(WHEELS_DATASET, VLLM)
# Inputs are checked here, before Kaggle's gateway gets predict (which then never raises): a model folder without
# config.json, or weights this machine's vLLM cannot serve, stop the notebook now instead of answering fallbacks.
for warning in check_inputs(settings):
    print("warning:", warning)
# The run's clock counts from the notebook start (installs and warm-up included); the model loads on the first
# predict call, and its load time is spread over the problems by the time budget.
predictor = Predictor(settings, run_started_at=NOTEBOOK_START)
print(f"{settings.engine} engine, model {MODEL_DIR}, {time.time() - NOTEBOOK_START:.0f}s since start")"""

HARMONY = """\
# gpt-oss: CUDA vLLM's openai-harmony loads the o200k vocabulary from TIKTOKEN_ENCODINGS_BASE or downloads it, and
# internet is off. The code dataset carries the file (kaggle_notebooks.push writes tiktoken/o200k_base.tiktoken).
TIKTOKEN_DIR = CODE_DIR / "tiktoken"
if (TIKTOKEN_DIR / "o200k_base.tiktoken").exists():
    os.environ.setdefault("TIKTOKEN_ENCODINGS_BASE", str(TIKTOKEN_DIR))
print("TIKTOKEN_ENCODINGS_BASE:", os.environ.get("TIKTOKEN_ENCODINGS_BASE"))"""

PREDICT = """\
def predict(id_, problem):
    \"\"\"Kaggle's gateway calls this by name, one problem at a time, with one-row polars Series.\"\"\"
    return predictor.predict(id_, problem)"""

SERVE = """\
from inference.local_gateway import run_gateway

server = kaggle_paths.inference_server(COMPETITION_SLUG, SERVER_MODULE, SERVER_CLASS, predict)
if RUN == "rerun":
    if server is None:
        raise RuntimeError(f"competition rerun but {SERVER_MODULE} does not import")
    server.serve()  # blocks while Kaggle's gateway serves the hidden problems; nothing below runs
else:
    problems = kaggle_paths.reference_problems(COMPETITION_SLUG, COMMIT_RUN_PROBLEMS if RUN == "commit" else None)
    if server is not None:  # Kaggle's own gateway passes every CSV column to predict: drop the answers
        problems.drop("answer").write_csv("reference_problems.csv")
        server.run_local_gateway(("reference_problems.csv",))
    else:  # off Kaggle: the kit's mock of the gateway, which also scores against the answers
        run_gateway(predict, problems, competition=COMPETITION, report_path="report.json",
                    details=lambda pid: predictor.results[pid].to_report())
    predictor.shutdown()"""

SHOW = """\
import polars as pl

print(pl.read_parquet("submission.parquet"))"""


def _constants(spec: KernelSpec) -> str:
    rows = [
        ("COMPETITION", spec.competition, "configs/competitions/<name>.yaml"),
        ("COMPETITION_SLUG", spec.kaggle_slug, None),
        ("CODE_DATASET", spec.code_dataset, "inference/ and configs/ (python -m kaggle_notebooks.push)"),
        ("WHEELS_DATASET", spec.wheels_dataset, "vLLM wheels for offline pip (kaggle_notebooks/wheels.py)"),
        ("VLLM", spec.vllm_requirement, "installed from WHEELS_DATASET unless already there"),
        ("MODEL", spec.model_source, "as in kernel-metadata.json's model_sources"),
        ("SETTINGS", spec.settings, "serving settings, inside the code dataset"),
        ("SERVER_MODULE", spec.server_module, None),
        ("SERVER_CLASS", spec.server_class, None),
        ("COMMIT_RUN_PROBLEMS", spec.commit_run_problems, "reference problems answered in a commit run"),
    ]
    return "\n".join(f"{name} = {value!r}" + (f"  # {note}" if note else "") for name, value, note in rows)


def build_notebook(spec: KernelSpec) -> nbformat.NotebookNode:
    v4 = nbformat.v4
    cells = [
        v4.new_markdown_cell(INTRO.format(title=spec.title, **vars(spec))),
        v4.new_code_cell(_constants(spec)),
        v4.new_code_cell(BOOTSTRAP),
        *([v4.new_code_cell(HARMONY)] if spec.harmony else []),
        v4.new_code_cell(SETUP),
        v4.new_code_cell(PREDICT),
        v4.new_code_cell(SERVE),
        v4.new_code_cell(SHOW),
    ]
    for i, cell in enumerate(cells):
        cell.id = f"{spec.notebook_name}-cell-{i}"  # fixed ids: a rebuild must give byte-identical files
    accelerator = spec.machine_shape[0].lower() + spec.machine_shape[1:]  # NvidiaH100 → nvidiaH100
    metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python", "version": "3.12"},
        "kaggle": {"accelerator": accelerator, "isGpuEnabled": True, "isInternetEnabled": False,
                   "language": "python", "sourceType": "notebook"},
    }
    nb = v4.new_notebook(cells=cells, metadata=metadata)
    nbformat.validate(nb)
    return nb


def build_metadata(spec: KernelSpec) -> dict:
    """kernel-metadata.json for `kaggle kernels push` (field meanings: the kaggle CLI's docs/kernels_metadata.md)."""
    return {
        "id": f"{spec.owner}/{spec.kernel_slug}",
        "title": spec.title,
        "code_file": spec.code_file,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": False,  # the CLI's default is true; competition notebooks must run offline
        "machine_shape": spec.machine_shape,
        "dataset_sources": [spec.code_dataset, spec.wheels_dataset],
        "competition_sources": [spec.kaggle_slug],
        "kernel_sources": [],
        "model_sources": [spec.model_source],
        "keywords": [],
    }


def render(spec: KernelSpec) -> dict[str, str]:
    """File name → text of the kernel folder."""
    return {
        spec.code_file: nbformat.writes(build_notebook(spec)) + "\n",
        "kernel-metadata.json": json.dumps(build_metadata(spec), indent=2) + "\n",
    }


def write_kernel(spec: KernelSpec, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in render(spec).items():
        (out_dir / name).write_text(text)
    return out_dir


def stale_files(spec: KernelSpec, out_dir: Path) -> list[str]:
    """Files in out_dir that differ from what build would write."""
    return [name for name, text in render(spec).items()
            if not (out_dir / name).exists() or (out_dir / name).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--competition", required=True, choices=["aimo2", "aimo3"])
    parser.add_argument("--owner", help=f"Kaggle user name (default: {PLACEHOLDER_OWNER})")
    parser.add_argument("--model-source", help="owner/model/framework/variation/version (default: from the "
                                               "settings' /kaggle/input/models/... path)")
    parser.add_argument("--code-dataset", help=f"owner/slug (default: <owner>/{CODE_DATASET_SLUG})")
    parser.add_argument("--wheels-dataset", help=f"owner/slug (default: <owner>/{WHEELS_DATASET_SLUG})")
    parser.add_argument("--settings", help="configs/inference/<settings>.yaml (default: the competition's), e.g. "
                                           "aimo3-gpt-oss; the notebook is named after it")
    parser.add_argument("--out", help="output folder (default: kaggle_notebooks/<settings>)")
    parser.add_argument("--check", action="store_true", help="only compare with the files in --out")
    args = parser.parse_args(argv)
    try:
        spec = kernel_spec(args.competition, args.owner, args.model_source, args.code_dataset, args.wheels_dataset,
                           args.settings)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else NOTEBOOKS_DIR / spec.notebook_name
    if args.check:
        stale = stale_files(spec, out_dir)
        for name in stale:
            print(f"{out_dir / name} is stale: run python -m kaggle_notebooks.build --competition {args.competition}"
                  + (f" --settings {args.settings}" if args.settings else ""))
        if not stale:
            print(f"{out_dir}: the notebook and kernel-metadata.json are up to date with the configs")
        return 1 if stale else 0
    write_kernel(spec, out_dir)
    print(f"wrote {out_dir / spec.code_file} and {out_dir / 'kernel-metadata.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
