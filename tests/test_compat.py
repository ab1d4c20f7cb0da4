"""optical_st.compat: one test per private symbol of sentence-transformers, transformers or datasets that optical_st
relies on. Each fails by name when a release renames or drops its symbol (tested: sentence-transformers 6.3.0,
transformers 5.25.0, datasets 5.2.0)."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import toy_bitext
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerModelCardData
from sentence_transformers.sentence_transformer.modules import Normalize
from transformers import TrainingArguments

from optical_st import OpticalModelCardData, build_optical_model, compat, export_student
from optical_st.recipe import OpticalTrainingArguments


class _OwnNormalize(Normalize):
    """A module class outside sentence-transformers' namespace, as optical_st's adapter modules are."""


def test_load_with_module_classes_resolves_the_given_classes_only(teacher, tmp_path):
    assert callable(getattr(SentenceTransformer, "_load_with_module_classes", None)), "sentence-transformers changed"
    SentenceTransformer(modules=[*teacher.children(), _OwnNormalize()]).save_pretrained(str(tmp_path / "m"))
    with pytest.raises(ValueError, match="trust_remote_code"):  # the public route for a class of another package
        SentenceTransformer(str(tmp_path / "m"))
    classes = {f"{_OwnNormalize.__module__}.{_OwnNormalize.__qualname__}": _OwnNormalize}
    model = compat.load_with_module_classes(SentenceTransformer, str(tmp_path / "m"), classes)
    assert isinstance(model[-1], _OwnNormalize) and type(model[0]) is type(teacher[0])


def test_loaded_card_text_is_the_readme_the_model_was_loaded_with(teacher, tmp_path):
    assert compat.loaded_card_text(teacher) is None  # built, not loaded
    teacher.save_pretrained(str(tmp_path / "m"))
    loaded = SentenceTransformer(str(tmp_path / "m"))
    assert compat.loaded_card_text(loaded) == (tmp_path / "m" / "README.md").read_text(encoding="utf-8")


def test_card_rendering_fields_are_the_card_datas_cache_of_one_rendering(teacher, student):
    names = {f.name for f in dataclasses.fields(SentenceTransformerModelCardData)}
    assert names >= compat.CARD_RENDERING_FIELDS, "sentence-transformers changed its card data's fields"
    model = build_optical_model(teacher, student, model_card_data=OpticalModelCardData(target_language="ny"))
    model.model_card_data.to_dict()  # caches the rendering for the to_yaml() that follows
    assert all(getattr(model.model_card_data, name) is not None for name in compat.CARD_RENDERING_FIELDS)
    exported = export_student(model).model_card_data  # another model: starts without that rendering
    assert all(getattr(exported, name) is None for name in compat.CARD_RENDERING_FIELDS)


def test_parse_as_dict_parses_a_json_string_like_transformers_own_dict_fields(tmp_path):
    assert isinstance(TrainingArguments._VALID_DICT_FIELDS, list), "transformers changed"
    assert "max_length" in OpticalTrainingArguments._VALID_DICT_FIELDS
    assert set(TrainingArguments._VALID_DICT_FIELDS) < set(OpticalTrainingArguments._VALID_DICT_FIELDS)
    args = OpticalTrainingArguments(output_dir=str(tmp_path), max_length='{"query": 32, "document": 64}')
    assert args.max_length == {"query": 32, "document": 64}


def test_dataset_fingerprint_tells_datasets_apart():
    data = toy_bitext(8)
    assert isinstance(data._fingerprint, str), "datasets changed"
    assert compat.dataset_fingerprint(data) == data._fingerprint
    assert compat.dataset_fingerprint(data.select(range(4))) != compat.dataset_fingerprint(data)
    assert compat.dataset_fingerprint(data.map(lambda row: {"lrl": row["lrl"] + "!"})) != compat.dataset_fingerprint(
        data
    )
    assert compat.dataset_fingerprint(Dataset.from_dict({"a": ["x"]}).to_iterable_dataset()) is None
    assert compat.dataset_fingerprint({"english": ["x"]}) is None
