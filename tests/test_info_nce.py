"""The InfoNCE term both distillation losses share (optical_st.losses.info_nce), against one hand-computed oracle
and against sentence-transformers' MultipleNegativesRankingLoss."""

from __future__ import annotations

import math

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from optical_st.losses.info_nce import check_temperature, info_nce


def hand_info_nce(student, candidates, temperature, excluded=()):
    """-mean_i log softmax_i over ``candidates`` (row ``i`` is the positive of ``student[i]``), with plain Python
    floats; ``excluded`` = {(i, c)} pairs left out of the softmax."""
    total = 0.0
    for i, s in enumerate(student):
        logits = []
        for c, cand in enumerate(candidates):
            if (i, c) in excluded:
                continue
            cos = sum(x * y for x, y in zip(s, cand, strict=True)) / (
                math.sqrt(sum(x * x for x in s)) * math.sqrt(sum(y * y for y in cand))
            )
            logits.append((c, cos / temperature))
        top = max(v for _, v in logits)
        log_z = top + math.log(sum(math.exp(v - top) for _, v in logits))
        total += log_z - dict(logits)[i]
    return total / len(student)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_in_batch(temperature):
    s, t = randn(4, 6, seed=0), randn(4, 6, seed=1)
    assert float(info_nce(s, t, None, temperature)) == pytest.approx(
        hand_info_nce(s.tolist(), t.tolist(), temperature), abs=1e-10
    )


def test_hard_negatives_of_every_row_join_the_candidates():
    s, t, n1, n2 = (randn(3, 5, seed=i) for i in range(4))
    expected = hand_info_nce(s.tolist(), t.tolist() + n1.tolist() + n2.tolist(), 0.1)
    assert float(info_nce(s, t, [n1, n2], 0.1)) == pytest.approx(expected, abs=1e-10)
    # a hard negative close to the student raises the loss
    assert float(info_nce(s, t, [s + 0.01], 0.1)) > float(info_nce(s, t, None, 0.1))


def test_duplicate_texts_are_masked():
    s, t, neg = randn(3, 4, seed=2), randn(3, 4, seed=3), randn(3, 4, seed=4)
    t[2] = t[0]  # the same English verse twice in the batch
    neg[1] = t[1] * 3  # a mined "negative" that is the positive itself (same direction, cosine 1)
    candidates = t.tolist() + neg.tolist()
    masked = info_nce(s, t, [neg], 0.2)
    assert float(masked) == pytest.approx(
        hand_info_nce(s.tolist(), candidates, 0.2, {(0, 2), (2, 0), (1, 4)}), abs=1e-10
    )
    unmasked = info_nce(s, t, [neg], 0.2, mask_duplicates=False)
    assert float(unmasked) == pytest.approx(hand_info_nce(s.tolist(), candidates, 0.2), abs=1e-10)


def test_symmetric_adds_the_reverse_direction():
    s, t = randn(4, 5, seed=5), randn(4, 5, seed=6)
    forward = hand_info_nce(s.tolist(), t.tolist(), 0.5)
    backward = hand_info_nce(t.tolist(), s.tolist(), 0.5)
    assert float(info_nce(s, t, None, 0.5, symmetric=True)) == pytest.approx((forward + backward) / 2, abs=1e-10)


def test_gradient_reaches_only_the_student():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    info_nce(s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_equals_multiple_negatives_ranking_loss(teacher):
    """Independent oracle: ST's MNRL on (anchor=student, positive=teacher, negatives...) with scale = 1/T."""
    g = torch.Generator().manual_seed(2)
    s, t, n1, n2, n3 = (torch.randn(5, 8, generator=g) for _ in range(5))
    mnrl = MultipleNegativesRankingLoss(teacher, scale=1 / 0.05)
    expected = mnrl.compute_loss_from_embeddings([s, t, n1, n2, n3], None)
    torch.testing.assert_close(info_nce(s, t, [n1, n2, n3], 0.05), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        info_nce(s, t, None, 0.05), mnrl.compute_loss_from_embeddings([s, t], None), atol=1e-5, rtol=1e-5
    )


def test_bad_inputs_raise():
    for bad in (0, -1.0, float("nan"), float("inf"), "0.1"):
        with pytest.raises(ValueError, match="temperature"):
            check_temperature(bad)
    with pytest.raises(ValueError, match="same shape"):
        info_nce(torch.randn(2, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="Every negative column"):
        info_nce(torch.randn(2, 4), torch.randn(2, 4), [torch.randn(3, 4)])
