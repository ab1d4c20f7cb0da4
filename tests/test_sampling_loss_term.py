"""OTDistillationLoss's optional InfoNCE term (contrastive_weight), which consumes the sampler's negative columns:
checked against a hand-computed cross-entropy and against ST's MultipleNegativesRankingLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from optical_st import OTDistillationLoss, build_optical_model
from optical_st.losses.contrastive_distillation import info_nce


def tokens(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 8, generator=g), torch.ones(b, 4), torch.randn(b, 5, 8, generator=g), torch.ones(b, 5)


def hand_info_nce(student, teacher, negatives, temperature, masked=()):
    """-log softmax by hand: candidates = every teacher row, then every negative row of every column."""
    candidates = [*teacher, *(n for column in negatives for n in column)]
    total = 0.0
    for i, s in enumerate(student):
        logits = [
            float(F.cosine_similarity(s, c, dim=0)) / temperature
            for j, c in enumerate(candidates)
            if (i, j) not in masked
        ]
        target = float(F.cosine_similarity(s, teacher[i], dim=0)) / temperature
        total += -(target - math.log(sum(math.exp(x) for x in logits)))
    return total / len(student)


def test_term_equals_hand_computed_cross_entropy(teacher):
    loss = OTDistillationLoss(teacher, teacher=teacher, contrastive_weight=0.3, temperature=0.1)
    g = torch.Generator().manual_seed(0)
    s_sent = torch.randn(3, 8, generator=g, requires_grad=True)
    t_sent, n1, n2 = (torch.randn(3, 8, generator=g) for _ in range(3))
    out = loss.compute_loss_from_embeddings(*tokens(3, 1), student_sentence=s_sent, teacher_sentence=t_sent,
                                            negative_sentences=[n1, n2])  # fmt: skip
    assert set(out) == {"ot", "contrastive"}
    expected = hand_info_nce(s_sent.detach(), t_sent, [n1, n2], 0.1)
    assert out["contrastive"].item() == pytest.approx(0.3 * expected, rel=1e-5)
    plain = OTDistillationLoss(teacher, teacher=teacher)
    assert out["ot"].item() == pytest.approx(plain.compute_loss_from_embeddings(*tokens(3, 1)).item(), rel=1e-6)
    out["contrastive"].backward()
    assert s_sent.grad is not None and s_sent.grad.abs().sum() > 0


def test_term_equals_multiple_negatives_ranking_loss(teacher):
    """ST's MNRL on (anchor=student, positive=teacher, negatives...) with scale = 1/temperature is the same loss."""
    g = torch.Generator().manual_seed(2)
    s, t, n1, n2, n3 = (torch.randn(5, 8, generator=g) for _ in range(5))
    mnrl = MultipleNegativesRankingLoss(teacher, scale=1 / 0.05)
    expected = mnrl.compute_loss_from_embeddings([s, t, n1, n2, n3], None)
    torch.testing.assert_close(info_nce(s, t, [n1, n2, n3], 0.05), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        info_nce(s, t, None, 0.05), mnrl.compute_loss_from_embeddings([s, t], None), atol=1e-5, rtol=1e-5
    )


def test_repeated_texts_are_not_negatives():
    g = torch.Generator().manual_seed(3)
    s, t, n = (torch.randn(3, 8, generator=g) for _ in range(3))
    t[2] = t[0]  # row 2's English text is row 0's (a repeated verse)
    n[1] = t[1]  # a negative column holding row 1's own positive
    masked = {(0, 2), (2, 0), (1, 3 + 1)}
    expected = hand_info_nce(s, t, [n], 0.05, masked=masked)
    assert info_nce(s, t, [n], 0.05).item() == pytest.approx(expected, rel=1e-5)


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
