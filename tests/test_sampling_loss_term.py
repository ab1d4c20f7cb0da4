"""OTDistillationLoss's optional InfoNCE term (contrastive_weight), which consumes the sampler's negative columns: the
shared info_nce term (its maths: test_info_nce.py), weighted, next to an unchanged OT term."""

from __future__ import annotations

import pytest
import torch

from optical_st import OTDistillationLoss, build_optical_model
from optical_st.losses import TokenEmbeddings
from optical_st.losses.info_nce import info_nce


def sides(
    b: int, seed: int, student_sentence: torch.Tensor | None = None, teacher_sentence: torch.Tensor | None = None
) -> tuple[TokenEmbeddings, TokenEmbeddings]:
    """Random student (4 tokens) and teacher (5 tokens) sides of ``b`` rows, with the given pooled embeddings."""
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, 4, 8, generator=g), torch.randn(b, 5, 8, generator=g)
    return (
        TokenEmbeddings(s, torch.ones(b, 4), sentence=student_sentence),
        TokenEmbeddings(t, torch.ones(b, 5), sentence=teacher_sentence),
    )


def test_term_is_the_weighted_info_nce_and_the_ot_part_is_unchanged(teacher):
    loss = OTDistillationLoss(teacher, teacher=teacher, contrastive_weight=0.3, temperature=0.1)
    g = torch.Generator().manual_seed(0)
    s_sent = torch.randn(3, 8, generator=g, requires_grad=True)
    t_sent, n1, n2 = (torch.randn(3, 8, generator=g) for _ in range(3))
    out = loss.compute_loss_from_embeddings(*sides(3, 1, s_sent, t_sent), negative_sentences=[n1, n2])
    assert set(out) == {"ot", "contrastive"}
    expected = info_nce(s_sent.detach(), t_sent, [n1, n2], 0.1)  # tested against an oracle in test_info_nce.py
    assert out["contrastive"].item() == pytest.approx(0.3 * expected.item(), rel=1e-6)
    plain = OTDistillationLoss(teacher, teacher=teacher)
    assert out["ot"].item() == pytest.approx(plain.compute_loss_from_embeddings(*sides(3, 1)).item(), rel=1e-6)
    out["contrastive"].backward()
    assert s_sent.grad is not None and s_sent.grad.abs().sum() > 0


def test_negative_columns_need_the_term(teacher, student):
    model = build_optical_model(teacher, student)
    feats = []
    for texts, task in ((["god is love"], "document"), (["mulungu ndi chikondi"], "query"), (["day"], "document")):
        f = model.preprocess(texts, task=task)
        f["task"] = task
        feats.append(f)
    with pytest.raises(ValueError, match="exactly 2 text columns"):
        OTDistillationLoss(model)(feats)
    with_term = OTDistillationLoss(model, contrastive_weight=0.1)
    out = with_term(feats)
    assert set(out) == {"ot", "contrastive"} and all(torch.isfinite(v) for v in out.values())
    feats[2]["task"] = "query"  # a negative routed to the student
    with pytest.raises(ValueError, match="negatives -> teacher"):
        with_term(feats)


@pytest.mark.parametrize(("kwargs", "match"), [({"contrastive_weight": -1}, "contrastive_weight"),
                                               ({"temperature": 0}, "temperature")])  # fmt: skip
def test_bad_term_hyperparameters_raise(teacher, kwargs, match):
    with pytest.raises(ValueError, match=match):
        OTDistillationLoss(teacher, teacher=teacher, **kwargs)


def test_config_lists_the_term(teacher):
    config = OTDistillationLoss(teacher, teacher=teacher, contrastive_weight=0.2, temperature=0.07).get_config_dict()
    assert config["contrastive_weight"] == 0.2 and config["temperature"] == 0.07


def test_symmetric_term_adds_the_reverse_direction(teacher):
    """symmetric=True: the term is the shared info_nce with the reverse direction (teacher anchors over student rows),
    which differs from the forward-only term on the same embeddings."""
    g = torch.Generator().manual_seed(3)
    s_sent, t_sent = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    out = {}
    for symmetric in (False, True):
        loss = OTDistillationLoss(teacher, teacher=teacher, contrastive_weight=1.0, symmetric=symmetric)
        out[symmetric] = loss.compute_loss_from_embeddings(*sides(4, 1, s_sent, t_sent))["contrastive"].item()
        assert loss.get_config_dict()["symmetric"] is symmetric
    assert out[True] == pytest.approx(info_nce(s_sent, t_sent, None, 0.05, symmetric=True).item(), rel=1e-6)
    assert out[True] != pytest.approx(out[False], rel=1e-3)


def test_symmetric_without_the_infonce_term_is_refused(teacher):
    """symmetric=True only changes the InfoNCE term; with contrastive_weight=0 it would silently do nothing."""
    with pytest.raises(ValueError, match="contrastive_weight > 0"):
        OTDistillationLoss(teacher, teacher=teacher, symmetric=True)
    OTDistillationLoss(teacher, teacher=teacher, symmetric=True, contrastive_weight=0.5)  # the term is on: fine
