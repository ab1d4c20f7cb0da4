"""``optical_st.inference``: which compute dtype "auto" means on this machine, and route encoding through the
model's own ``encode_query`` / ``encode_document`` at float32 and under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_sentence_transformer

from optical_st import build_optical_model, inference
from optical_st.inference import encode_route, resolve_compute_dtype

TEXTS = ["mulungu ndi chikondi", "the light was good", "day and night"]


@pytest.mark.parametrize(("fast", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_auto_is_bf16_only_where_the_cpu_has_fast_bf16(monkeypatch, fast, expected):
    monkeypatch.setattr(inference, "fast_bf16_available", lambda device="cpu": fast)
    assert resolve_compute_dtype("auto", "cpu") == resolve_compute_dtype("auto", "cpu", "corpus") == expected
    assert resolve_compute_dtype("auto", "cpu", "queries") == "float32"  # the corpus is what costs
    assert resolve_compute_dtype("bfloat16", "cpu", "queries") == "bfloat16"  # asked for
    assert resolve_compute_dtype("float32", "cpu") == "float32"
    assert resolve_compute_dtype("auto", "cuda") == "float32"  # measured on CPUs only


def test_bf16_where_it_is_emulated_warns(monkeypatch, caplog):
    monkeypatch.setattr(inference, "fast_bf16_available", lambda device="cpu": False)
    assert resolve_compute_dtype("bfloat16", "cpu") == "bfloat16"
    assert "emulated and slower" in caplog.text
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        resolve_compute_dtype("int8")


def test_routes_are_the_models_own_encoders(tiny_dirs):
    teacher = tiny_sentence_transformer(tiny_dirs["teacher"])
    teacher.prompts = {"query": "query: ", "document": "passage: "}
    model = build_optical_model(teacher, tiny_sentence_transformer(tiny_dirs["student"]))
    queries = encode_route(model, TEXTS, route="query", compute_dtype="float32")
    documents = encode_route(model, TEXTS, route="document", compute_dtype="float32")
    assert queries.dtype == documents.dtype == torch.float32
    torch.testing.assert_close(queries, model.encode_query(TEXTS, convert_to_tensor=True))
    torch.testing.assert_close(documents, model.encode_document(TEXTS, convert_to_tensor=True))
    assert not torch.allclose(queries, documents)
    as_query = encode_route(model, TEXTS, route="document", prompt="query: ", compute_dtype="float32")
    torch.testing.assert_close(as_query, model.encode_document(TEXTS, prompt="query: ", convert_to_tensor=True))
    with pytest.raises(ValueError, match="route must be"):
        encode_route(model, TEXTS, route="teacher")
    with pytest.raises(ValueError, match="No texts"):
        encode_route(model, [], route="query")
    with pytest.raises(ValueError, match="resolve_compute_dtype"):
        encode_route(model, TEXTS, route="query", compute_dtype="auto")


def test_bf16_autocast_gives_float32_embeddings_close_to_float32(teacher):
    exact = encode_route(teacher, TEXTS, route="document", compute_dtype="float32")
    fast = encode_route(teacher, TEXTS, route="document", compute_dtype="bfloat16")
    assert fast.dtype == torch.float32 and not torch.equal(fast, exact)  # computed in bf16, returned as float32
    assert torch.nn.functional.cosine_similarity(fast, exact).min() > 0.99
