"""Shipping OPTICAL models: the model card, eval results as model-index, pushes (HfApi mocked), offline reloads."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from conftest import PAIRS, make_training_args, tiny_sentence_transformer
from datasets import Dataset
from huggingface_hub import CommitInfo, EvalResult, HfApi, ModelCard, RepoUrl
from huggingface_hub.errors import OfflineModeIsEnabled
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

import optical_st
from optical_st import OpticalModelCardData, OTConfig, OTDistillationLoss, build_optical_model, export_student
from optical_st.evaluation import FlopsCallback
from optical_st.hub import (
    HubPushError,
    add_eval_results_to_card,
    eval_results_from_metrics,
    push_folder_to_hub,
    push_to_hub,
)
from optical_st.origins import hub_model_id
from optical_st.utils import model_card_template_path

ROOT = Path(__file__).resolve().parents[1]
REPO = "me/tiny-optical"


def card_data(**kwargs) -> OpticalModelCardData:
    defaults = dict(
        target_language="ny",
        target_language_name="Chichewa",
        teacher_id="sentence-transformers/all-MiniLM-L6-v2",
        bitext={"name": "Tiny Bible", "pairs": 8, "url": "https://example.org/bible"},
        license="apache-2.0",
        local_files_only=True,
    )
    defaults.update(kwargs)
    return OpticalModelCardData(**defaults)


def front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n", 2)[1])


def results(ndcg: float = 0.5) -> list[EvalResult]:
    return eval_results_from_metrics(
        {"ndcg@10": ndcg, "mrr@10": 0.4},
        dataset_name="Tiny CLIR en-ny",
        dataset_type="me/tiny-clir",
        dataset_split="test",
    )


@pytest.fixture(scope="module")
def trained_once(tiny_dirs, tmp_path_factory):
    """A Router model trained for a few steps (card data filled by the trainer's callbacks, training FLOPs measured),
    trained once a module."""
    teacher = tiny_sentence_transformer(tiny_dirs["teacher"])
    wide_student = tiny_sentence_transformer(tiny_dirs["wide_student"], hidden=48)
    model = build_optical_model(teacher, wide_student, model_card_data=card_data())
    english, lrl = zip(*PAIRS, strict=True)
    dataset = Dataset.from_dict({"english": list(english) * 2, "lrl": list(lrl) * 2})
    args = make_training_args(tmp_path_factory.mktemp("trainer"), dataset)
    loss = OTDistillationLoss(model, ot_config=OTConfig(reg=0.05, max_iter=50))
    flops = FlopsCallback(model, loss, every_n_steps=2)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[flops])
    trainer.train()
    return model, trainer


@pytest.fixture
def trained(trained_once):
    """A fresh copy of the trained model for each test (tests set model ids, add results, ...), and the trainer."""
    model, trainer = trained_once
    return copy.deepcopy(model), trainer


class FakeHub:
    """``HfApi`` replaced by an autospec mock (wrong argument names fail); uploads are inspected during the call."""

    def __init__(self) -> None:
        self.cls = mock.create_autospec(HfApi)
        self.api = self.cls.return_value
        self.api.create_repo.side_effect = lambda repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}")
        self.api.upload_folder.side_effect = self._upload
        self.uploads: list[dict] = []

    def _upload(self, *, repo_id, folder_path, create_pr=False, **kwargs):
        folder = Path(folder_path)
        self.uploads.append(
            {
                "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
                "readme": (folder / "README.md").read_text(encoding="utf8"),
                "modules": json.loads((folder / "modules.json").read_text()),
                "create_pr": create_pr,
            }
        )
        oid = "a" * 40
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}",
            commit_message=kwargs.get("commit_message") or "",
            commit_description="",
            oid=oid,
            pr_url=f"https://huggingface.co/{repo_id}/discussions/1" if create_pr else None,
        )


@pytest.fixture
def fake_hub():
    hub = FakeHub()
    with mock.patch("sentence_transformers.base.model.HfApi", hub.cls):  # the upload is sentence-transformers' own
        yield hub


# ------------------------------------------------------------------------------------------------
# packaging
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_wheel_ships_the_template_and_every_subpackage(tmp_path):
    """The one packaging check: a wheel built from the sources holds the card template (the top-level model_cards/
    folder, installed as optical_st.model_cards) and every optical_st subpackage (setup.cfg lists them)."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # a clean copy, so the build writes nothing into the checkout
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("optical_st", "model_cards"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=src,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert f"optical_st/model_cards/{model_card_template_path().name}" in names
    assert not any(n.startswith("model_cards/") for n in names)
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "optical_st").rglob("*.py")}
    assert on_disk <= names, f"not in the wheel (add the package to setup.cfg): {sorted(on_disk - names)}"


# ------------------------------------------------------------------------------------------------
# the card
# ------------------------------------------------------------------------------------------------
def test_build_optical_model_attaches_optical_card_data(teacher, wide_student):
    model = build_optical_model(teacher, wide_student)
    assert isinstance(model.model_card_data, OpticalModelCardData)
    assert model.model_card_data.model is model and model.model_card_data.is_asymmetric
    assert model.model_card_data.template_path == model_card_template_path()
    # local fixtures are not Hub ids; explicit ids are kept, the student id becomes base_model
    assert model.model_card_data.teacher_id is None
    model = build_optical_model(teacher, wide_student, model_card_data=OpticalModelCardData(student_id="org/xlmr"))
    assert model.model_card_data.base_model == "org/xlmr"
    assert hub_model_id("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_model_id(str(ROOT)) is None and hub_model_id("not an id") is None


def test_trainer_save_writes_the_optical_card(trained, bitext, tmp_path):
    _, trainer = trained
    model = trainer.model
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    readme = (out / "README.md").read_text(encoding="utf8")
    meta = front_matter(readme)
    assert meta["language"] == ["ny", "en"] and meta["license"] == "apache-2.0"
    assert {"optical", "optimal-transport", "generated_from_trainer", "loss:OTDistillationLoss"} <= set(meta["tags"])
    assert "widget" not in meta  # the Hub widget would encode the LRL query with the teacher
    # method, data, negatives, compute
    for text in (
        "# OPTICAL Chichewa-English retrieval model distilled from sentence-transformers/all-MiniLM-L6-v2",
        "ε = 0.05, at most 50 iterations",
        "1 − cosine similarity of token embeddings",
        "special tokens ([CLS], [SEP], <s>, ...), prompt tokens and padding get zero mass",
        "[Tiny Bible](https://example.org/bible): 8 sentence pairs",
        "**Hard negatives:** none",
        "## Bias, Risks and Limitations",
        "`encode_query` runs the Chichewa student and `encode_document` runs the English teacher",
    ):
        assert text in readme, text
    # sentence-transformers' own card content still flows: loss config, dataset stats, citations, logs
    assert '"reg": 0.05' in readme and '"max_iter": 50' in readme
    assert "<code>optical_st.losses.ot_distillation.OTDistillationLoss</code>" in readme
    assert "huang2023optical" in readme and "reimers-2019-sentence-bert" in readme
    assert "### Training Logs" in readme
    # the usage snippet queries in the LRL and retrieves English documents
    snippet = readme.split("```python", 1)[1].split("```", 1)[0]
    query = snippet.split("queries = [", 1)[1].split("]", 1)[0]
    documents = snippet.split("documents = [", 1)[1].split("]", 1)[0]
    assert any(repr(text) in query for text in bitext["lrl"])
    assert sum(repr(text) in documents for text in bitext["english"]) == 3
    assert "model.encode_query(queries)" in snippet and "model.encode_document(documents)" in snippet
    # compute measured by FlopsCallback: both routes' forward passes and the student's backward pass
    measured = model.model_card_data.measured_flops
    assert {"student_forward", "teacher_forward", "backward"} <= set(measured) and min(measured.values()) > 0
    assert f"{sum(measured.values()):.3g} FLOPs (measured with `torch.utils.flop_counter.FlopCounterMode`" in readme
    model.model_card_data.training_flops = 1.5e18  # an explicit value wins over the measurement
    assert model.model_card_data.to_dict()["training_flops"] == 1.5e18


def test_card_without_trainer(teacher, wide_student, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="optical_st.hub"):
        card = card_data(target_language="Chichewa", bitext=[{"name": "Bible", "id": "org/bible", "pairs": "~30k"}])
    assert "'Chichewa' is not an ISO 639 code" in caplog.text
    model = build_optical_model(teacher, wide_student, model_card_data=card)
    model.save_pretrained(str(tmp_path / "saved"))
    readme = (tmp_path / "saved" / "README.md").read_text(encoding="utf8")
    meta = front_matter(readme)
    assert meta["datasets"] == ["org/bible"]  # the bitext is linked on the Hub
    assert "[Bible](https://huggingface.co/datasets/org/bible): ~30k sentence pairs" in readme
    # no trainer, so no loss and no loss citation (each loss owns its BibTeX); the prose links the paper, and no
    # compute is claimed
    assert "huang2023optical" not in readme and "[OPTICAL](https://arxiv.org/abs/2301.12566)" in readme
    assert "github.com/optical-st" not in readme  # no link to a repository that does not exist
    assert "Training compute" not in readme and "model-index" not in meta


def test_eval_results_and_st_evaluator_both_reach_model_index(trained, bitext, tmp_path):
    model, _ = trained
    queries = dict(enumerate(bitext["lrl"]))
    corpus = {f"d{i}": text for i, text in enumerate(bitext["english"])}
    evaluator = InformationRetrievalEvaluator(
        queries, corpus, {q: {f"d{q}"} for q in queries}, name="tiny-ir", write_csv=False
    )
    evaluator(model)  # records its metrics into the card data, as during training
    model.model_card_data.add_eval_results(results(0.5))
    model.save_pretrained(str(tmp_path / "saved"))
    readme = (tmp_path / "saved" / "README.md").read_text(encoding="utf8")
    index = front_matter(readme)["model-index"]
    assert len(index) == 1 and index[0]["name"].startswith("OPTICAL Chichewa-English")
    by_dataset = {r["dataset"]["type"]: r for r in index[0]["results"]}
    ours = by_dataset["me/tiny-clir"]
    assert ours["dataset"] == {"name": "Tiny CLIR en-ny", "type": "me/tiny-clir", "split": "test"}
    assert {m["type"]: m["value"] for m in ours["metrics"]} == {"ndcg@10": 0.5, "mrr@10": 0.4}
    st_result = by_dataset["tiny-ir"]
    assert "cosine_ndcg@10" in {m["type"] for m in st_result["metrics"]}
    # both under a task id the Hub lists (sentence-transformers would write "information-retrieval")
    assert ours["task"]["type"] == st_result["task"]["type"] == "text-retrieval"
    assert st_result["task"]["name"] == "Information Retrieval"
    assert "### Cross-Lingual Retrieval" in readme and "| Tiny CLIR en-ny | test  | ndcg@10 | 0.5" in readme
    assert "InformationRetrievalEvaluator" in readme
    # huggingface_hub reads the metadata back as the same results
    loaded = {
        (r.dataset_type, r.metric_type): r.metric_value
        for r in ModelCard.load(tmp_path / "saved" / "README.md").data.eval_results
    }
    assert loaded[("me/tiny-clir", "ndcg@10")] == 0.5


def test_eval_results_from_metrics(caplog):
    out = eval_results_from_metrics(
        {"clir_cosine_ndcg@10": np.float32(0.25), "clir_cosine_mrr@10": torch.tensor(0.5), "clir_note": "n/a"},
        dataset_name="d",
        dataset_type="org/d",
        strip_prefix="clir_cosine_",
    )
    assert [(r.metric_type, r.metric_value) for r in out] == [("ndcg@10", 0.25), ("mrr@10", 0.5)]
    assert all(isinstance(r.metric_value, float) and r.task_type == "text-retrieval" for r in out)
    with caplog.at_level(logging.WARNING, logger="optical_st.hub"):
        eval_results_from_metrics({"a": 1.0}, dataset_name="d", dataset_type="d", task_type="not-a-hub-task")
    assert "not a Hub task id" in caplog.text


# ------------------------------------------------------------------------------------------------
# push
# ------------------------------------------------------------------------------------------------
def encode_both(model: SentenceTransformer, bitext: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return model.encode_query(bitext["lrl"]), model.encode_document(bitext["english"])


def test_push_saves_locally_then_uploads_with_card(trained, bitext, tmp_path, fake_hub):
    model, _ = trained
    local = tmp_path / "ship"
    url = push_to_hub(
        model, REPO, local_dir=local, private=True, create_pr=True, token="hf_x", eval_results=results(), revision="v1"
    )
    assert url == f"https://huggingface.co/{REPO}/discussions/1"
    fake_hub.cls.assert_called_once_with(token="hf_x")
    fake_hub.api.create_repo.assert_called_once_with(repo_id=REPO, private=True, repo_type=None, exist_ok=True)
    fake_hub.api.create_branch.assert_called_once_with(repo_id=REPO, branch="v1", exist_ok=True)
    (upload,) = fake_hub.uploads
    assert upload["create_pr"] is True
    assert fake_hub.api.upload_folder.call_args.kwargs["folder_path"] == str(local)
    assert fake_hub.api.upload_folder.call_args.kwargs["revision"] == "v1"
    files = set(upload["files"])
    assert {"README.md", "modules.json", "config_sentence_transformers.json", "router_config.json"} <= files
    assert any(f.startswith("query_") and f.endswith("model.safetensors") for f in files), files
    assert any(f.startswith("document_") and f.endswith("model.safetensors") for f in files), files
    assert [m["type"] for m in upload["modules"]] == ["sentence_transformers.base.modules.router.Router"]
    readme = upload["readme"]
    assert f'SentenceTransformer("{REPO}")' in readme and "sentence_transformers_model_id" not in readme
    metrics = front_matter(readme)["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in metrics} == {"ndcg@10": 0.5, "mrr@10": 0.4}
    # the local copy stays and is the uploaded one
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == upload["files"]
    q0, d0 = encode_both(model, bitext)
    q1, d1 = encode_both(SentenceTransformer(str(local)), bitext)
    np.testing.assert_array_equal(q0, q1)
    np.testing.assert_array_equal(d0, d1)


def test_push_defaults_public_commit(trained, tmp_path, fake_hub):
    model, _ = trained
    url = push_to_hub(model, REPO, local_dir=tmp_path / "ship")
    assert url == f"https://huggingface.co/{REPO}/commit/{'a' * 40}"
    fake_hub.cls.assert_called_once_with(token=None)  # huggingface_hub resolves HF_TOKEN / the saved login
    assert fake_hub.api.create_repo.call_args.kwargs["private"] is False
    kwargs = fake_hub.api.upload_folder.call_args.kwargs
    assert kwargs["create_pr"] is False and kwargs["revision"] is None
    fake_hub.api.create_branch.assert_not_called()


def test_push_offline_raises_clear_error_and_keeps_local_copy(trained, bitext, tmp_path):
    model, _ = trained
    local = tmp_path / "ship"
    with pytest.raises(HubPushError) as info:
        push_to_hub(model, REPO, local_dir=local)
    message = str(info.value)
    assert str(local.resolve()) in message and "push_folder_to_hub" in message and REPO in message
    assert isinstance(info.value.__cause__, OfflineModeIsEnabled)
    assert info.value.local_dir == local
    reloaded = SentenceTransformer(str(local))
    for a, b in zip(encode_both(model, bitext), encode_both(reloaded, bitext), strict=True):
        np.testing.assert_array_equal(a, b)
    assert "OPTICAL" in (local / "README.md").read_text(encoding="utf8")


def test_push_guards(trained, tmp_path, fake_hub, monkeypatch):
    model, _ = trained
    with pytest.raises(ValueError, match="namespace/name"):
        push_to_hub(model, "no-namespace", local_dir=tmp_path / "a")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "checkpoint-1").mkdir()
    with pytest.raises(FileExistsError, match="not empty"):
        push_to_hub(model, REPO, local_dir=busy)
    with pytest.raises(FileNotFoundError, match=r"no modules\.json"):
        push_folder_to_hub(busy, REPO)
    # non-main ranks of a distributed run neither save nor push
    monkeypatch.setattr("optical_st.hub.get_rank", lambda: 1)
    assert push_to_hub(model, REPO, local_dir=tmp_path / "rank1") is None
    assert not (tmp_path / "rank1").exists()
    fake_hub.cls.assert_not_called()


def test_push_folder_of_reloaded_model_merges_eval_results(trained, tmp_path, fake_hub):
    model, _ = trained
    folder = tmp_path / "saved"
    model.save_pretrained(str(folder))
    # loaded without training, sentence-transformers re-saves the existing card: the push still adds the results
    reloaded = SentenceTransformer(str(folder))
    resaved = tmp_path / "resaved"
    reloaded.save_pretrained(str(resaved))
    assert "model-index" not in (resaved / "README.md").read_text(encoding="utf8")
    push_folder_to_hub(resaved, REPO, eval_results=results(0.5))
    push_folder_to_hub(resaved, REPO, eval_results=results(0.75))  # same metric again: replaced, not duplicated
    readme = fake_hub.uploads[-1]["readme"]
    assert f'SentenceTransformer("{REPO}")' in readme
    index = front_matter(readme)["model-index"]
    assert (
        index[0]["name"]
        == "OPTICAL Chichewa-English retrieval model distilled from sentence-transformers/all-MiniLM-L6-v2"
    )
    (entry,) = index[0]["results"]
    assert {m["type"]: m["value"] for m in entry["metrics"]} == {"ndcg@10": 0.75, "mrr@10": 0.4}
    assert "## Bias, Risks and Limitations" in readme  # the body is untouched
    card = add_eval_results_to_card(resaved, results(0.75))
    assert len(card.data.eval_results) == 2


def test_student_only_export_pushes_with_its_own_card(trained, bitext, tmp_path, fake_hub):
    model, _ = trained
    student = export_student(model)
    assert isinstance(student.model_card_data, OpticalModelCardData)
    assert student.model_card_data.model is student and not student.model_card_data.is_asymmetric
    assert model.model_card_data.model is model  # the Router model's card data is untouched
    push_to_hub(student, "me/tiny-optical-student", local_dir=tmp_path / "student")
    (upload,) = fake_hub.uploads
    assert "router_config.json" not in upload["files"]
    assert [m["type"].rsplit(".", 1)[-1] for m in upload["modules"]] == ["Transformer", "Dense", "Pooling"]
    readme = upload["readme"]
    assert "# OPTICAL Chichewa query encoder distilled from sentence-transformers/all-MiniLM-L6-v2" in readme
    assert 'student = SentenceTransformer("me/tiny-optical-student")' in readme
    assert 'teacher = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")' in readme
    assert "ε = 0.05" in readme and "huang2023optical" in readme  # the training record carried over
    np.testing.assert_allclose(
        SentenceTransformer(str(tmp_path / "student")).encode(bitext["lrl"]),
        model.encode_query(bitext["lrl"]),
        atol=1e-6,
        rtol=0,
    )
    # the export's card is a copy: editing it leaves the Router model's card as it was
    assert student.model_card_data.measured_flops == model.model_card_data.measured_flops
    student.model_card_data.measured_flops.clear()
    assert model.model_card_data.measured_flops


# ------------------------------------------------------------------------------------------------
# loading back
# ------------------------------------------------------------------------------------------------
def test_reload_from_folder_and_offline_hub_cache_is_identical(trained, bitext, tmp_path, monkeypatch):
    model, _ = trained
    folder = tmp_path / "saved"
    model.save_pretrained(str(folder))
    # the layout huggingface_hub's cache has after a download: blobs are symlinked in real caches, copies work too
    revision = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hf-cache"
    repo_dir = cache / f"models--{REPO.replace('/', '--')}"
    shutil.copytree(folder, repo_dir / "snapshots" / revision)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    expected = encode_both(model, bitext)
    from_folder = SentenceTransformer(str(folder))
    from_cache = SentenceTransformer(REPO, cache_folder=str(cache))
    for loaded in (from_folder, from_cache):
        assert optical_st.modeling.find_router(loaded) is not None
        for a, b in zip(expected, encode_both(loaded, bitext), strict=True):
            np.testing.assert_array_equal(a, b)
    # the card came along and is reused as-is when the loaded model is saved again
    assert from_cache._model_card_text == (folder / "README.md").read_text(encoding="utf8")


# ------------------------------------------------------------------------------------------------
# examples/push_to_hub.py
# ------------------------------------------------------------------------------------------------
def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_push_example_script(trained, tmp_path, fake_hub, capsys):
    model, _ = trained
    folder = tmp_path / "final"
    model.save_pretrained(str(folder))
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(
        json.dumps(
            {
                "dataset_name": "Tiny CLIR",
                "dataset_type": "me/clir",
                "dataset_split": "test",
                "metrics": {"ndcg@10": 0.3},
            }
        )
    )
    example = load_example("push_to_hub")
    argv = [str(folder), "--repo-id", REPO, "--private", "--create-pr", "--eval-results", str(eval_json)]
    assert example.main(argv) == 0
    assert capsys.readouterr().out.strip() == f"https://huggingface.co/{REPO}/discussions/1"
    assert fake_hub.api.create_repo.call_args.kwargs["private"] is True
    (upload,) = fake_hub.uploads
    assert upload["create_pr"] is True
    (entry,) = front_matter(upload["readme"])["model-index"][0]["results"]
    assert entry["dataset"]["type"] == "me/clir" and entry["metrics"][0] == {
        "type": "ndcg@10",
        "value": 0.3,
        "name": "ndcg@10",
    }


def test_push_example_script_offline_fails_cleanly(trained, tmp_path, capsys):
    model, _ = trained
    folder = tmp_path / "final"
    model.save_pretrained(str(folder))
    before = sorted(p.name for p in folder.rglob("*"))
    capsys.readouterr()
    assert load_example("push_to_hub").main([str(folder), "--repo-id", REPO]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the model-loading progress bar
    assert last.startswith("error: Pushing to https://huggingface.co/me/tiny-optical failed (OfflineModeIsEnabled")
    assert sorted(p.name for p in folder.rglob("*")) == before
