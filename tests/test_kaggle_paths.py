"""inference/kaggle_paths.py: Kaggle input lookup in both mount layouts, run kinds, the page-cache warm-up.

    .venv/bin/python -m pytest tests/test_kaggle_paths.py -q
"""

import sys

import polars as pl
import pytest

from inference import kaggle_paths as kp

COMP = "ai-mathematical-olympiad-progress-prize-3"


def make_model(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    return folder


@pytest.mark.parametrize("layout", ["old", "new"])
def test_competition_and_dataset_dirs_in_both_layouts(tmp_path, layout):
    comp = tmp_path / (COMP if layout == "old" else f"competitions/{COMP}")
    data = tmp_path / ("aimo-kit-code" if layout == "old" else "datasets/me/aimo-kit-code")
    comp.mkdir(parents=True)
    data.mkdir(parents=True)
    assert kp.competition_dir(COMP, tmp_path) == comp
    assert kp.dataset_dir("me/aimo-kit-code", tmp_path) == data


@pytest.mark.parametrize("layout", ["old", "new"])
def test_model_dir_in_both_layouts_with_kaggles_lower_case_framework(tmp_path, layout):
    prefix = tmp_path / ("models/me" if layout == "new" else "")
    model = make_model(prefix / "fast-math/transformers/awq/2")
    assert kp.model_dir("me/fast-math/Transformers/awq/2", tmp_path) == model
    assert kp.model_dir("me/fast-math/transformers/awq/2", tmp_path) == model


def test_model_dir_without_version_takes_the_highest_and_finds_a_nested_folder(tmp_path):
    base = tmp_path / "models/me/m/transformers/default"
    make_model(base / "2")
    nested = make_model(base / "10" / "checkpoint")  # 10 > 2 numerically, and the weights are one folder down
    assert kp.model_dir("me/m/transformers/default", tmp_path) == nested


def test_missing_input_lists_every_place_it_looked(tmp_path):
    (tmp_path / "something-else").mkdir()
    with pytest.raises(kp.KaggleInputNotFound) as err:
        kp.model_dir("me/m/transformers/default/1", tmp_path)
    text = str(err.value)
    assert str(tmp_path / "models/me/m/transformers/default/1") in text
    assert str(tmp_path / "m/transformers/default/1") in text
    assert "something-else" in text and kp.INPUT_ROOT_ENV in text
    with pytest.raises(kp.KaggleInputNotFound, match="competitions/" + COMP):
        kp.competition_dir(COMP, tmp_path)
    with pytest.raises(ValueError, match="owner/slug"):
        kp.dataset_dir("no-owner", tmp_path)


def test_input_root_env_var_and_code_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(kp.INPUT_ROOT_ENV, str(tmp_path))
    pkg = tmp_path / "datasets/me/aimo-kit-code/aimo-kit-code/inference"  # one level deeper, as an unpacked archive
    pkg.mkdir(parents=True)
    (pkg / "kaggle_paths.py").write_text("")
    assert kp.input_root() == tmp_path
    assert kp.code_dir("me/aimo-kit-code") == pkg.parent


def test_run_kind():
    assert kp.run_kind({}) == "local"
    assert kp.run_kind({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}) == "interactive"
    assert kp.run_kind({"KAGGLE_KERNEL_RUN_TYPE": "Batch"}) == "commit"
    assert kp.run_kind({"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_IS_COMPETITION_RERUN": "1"}) == "rerun"


def test_reference_problems_keep_string_ids_and_the_limit(tmp_path):
    comp = tmp_path / "competitions" / COMP
    comp.mkdir(parents=True)
    pl.DataFrame({"id": ["000aaa", "111bbb"], "problem": ["1+1?", "2+2?"], "answer": ["2", "4"]}).write_csv(
        comp / "reference.csv")
    df = kp.reference_problems(COMP, limit=1, root=tmp_path)
    assert df.to_dicts() == [{"id": "000aaa", "problem": "1+1?", "answer": "2"}]
    assert kp.reference_problems(COMP, root=tmp_path).height == 2


def test_page_cache_warmup_reads_every_byte(tmp_path):
    model = make_model(tmp_path / "m")
    (model / "sub").mkdir()
    (model / "sub" / "shard.safetensors").write_bytes(b"\1" * 5000)
    lines = []
    warm = kp.PageCacheWarmup(model, workers=2, chunk_bytes=512, show=lines.append).start()
    assert warm.wait(30)
    assert warm.bytes_read == warm.total_bytes == 2 + 1000 + 5000
    assert "3 files" in lines[-1]


def test_install_wheels_skips_a_satisfied_pin_and_names_a_missing_bundle(tmp_path, monkeypatch):
    monkeypatch.setenv(kp.INPUT_ROOT_ENV, str(tmp_path))
    polars_version = kp.installed_version("polars")
    assert polars_version == pl.__version__
    assert kp.install_wheels("me/wheels", f"polars=={polars_version}") is False
    with pytest.raises(kp.KaggleInputNotFound, match="datasets/me/wheels"):  # another version: install from the bundle
        kp.install_wheels("me/wheels", "polars==0.0.1")
    with pytest.raises(kp.KaggleInputNotFound, match="datasets/me/wheels"):
        kp.install_wheels("me/wheels", "surely-not-installed-package==1.0")


def test_inference_server_from_the_competition_folder(tmp_path, monkeypatch):
    """Off Kaggle there is no kaggle_evaluation (None); with one in the competition folder it is imported from there,
    the fallback public notebooks rely on."""
    assert kp.inference_server("no-such-comp", "kaggle_evaluation.aimo_3_inference_server", "AIMO3InferenceServer",
                               print, tmp_path) is None
    pkg = tmp_path / COMP / "kaggle_evaluation"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "aimo_3_inference_server.py").write_text(
        "class AIMO3InferenceServer:\n    def __init__(self, *listeners):\n        self.listeners = listeners\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m.startswith("kaggle_evaluation")]:
        monkeypatch.delitem(sys.modules, name)

    def predict(id_, problem):
        return None

    server = kp.inference_server(COMP, "kaggle_evaluation.aimo_3_inference_server", "AIMO3InferenceServer", predict,
                                 tmp_path)
    assert type(server).__name__ == "AIMO3InferenceServer" and server.listeners == (predict,)
    for name in [m for m in sys.modules if m.startswith("kaggle_evaluation")]:
        del sys.modules[name]
