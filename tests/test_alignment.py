"""The closed-form head start (optical_st.alignment): the solver against known maps, and the fitted map on a tiny
model equals what encode_query then gives."""

from __future__ import annotations

import pytest
import torch

from optical_st import build_optical_model, load_optical_model
from optical_st.alignment import fit_student_map, solve_linear_map
from tests.conftest import PAIRS


def test_procrustes_recovers_a_rotation_and_lstsq_a_general_map():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(200, 8, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert torch.allclose(solve_linear_map(source, source @ rotation), rotation, atol=1e-5)
    general = torch.randn(8, 5, generator=g)
    assert torch.allclose(solve_linear_map(source, source @ general, "lstsq"), general, atol=1e-4)
    with pytest.raises(ValueError, match=r"same width.*lstsq"):
        solve_linear_map(source, source @ general)
    with pytest.raises(ValueError, match="same rows"):
        solve_linear_map(source, source[:10])


@pytest.mark.parametrize("student_name", ["student", "wide_student"])
def test_fitted_map_is_on_the_student_tokens_and_saved(tiny_dirs, tmp_path, student_name):
    model = build_optical_model(str(tiny_dirs["teacher"]), str(tiny_dirs[student_name]))
    english = [e for e, _ in PAIRS]
    query_before = model.encode_query(english, convert_to_tensor=True)
    stats = fit_student_map(model, english, show_progress_bar=False)
    assert stats["cosine_after"] > 0.5
    if student_name == "student":  # same width: a rotation of the student's space
        assert stats["cosine_after"] > stats["cosine_before"]
    # the map acts on tokens before mean pooling: the pooled student embedding is the mapped one
    queries = model.encode_query(english, convert_to_tensor=True)
    docs = model.encode_document(english, convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(queries, docs, dim=-1)
    assert float(cosine.mean()) == pytest.approx(stats["cosine_after"], abs=1e-4)
    assert not torch.allclose(queries, query_before)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and "linear" in n]
    assert trainable, "the map trains with the student"
    model.save(str(tmp_path / "m"))
    again = load_optical_model(str(tmp_path / "m"))
    assert torch.allclose(again.encode_query(english, convert_to_tensor=True), queries, atol=1e-6)
