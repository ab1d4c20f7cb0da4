"""ContrastiveDistillationLoss: InfoNCE against a hand-computed oracle, equivalence with ST's MNRL, training runs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import features_for, make_training_args
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from optical_st import ContrastiveDistillationLoss, build_optical_model, router_mapping


def hand_infonce(student, candidates, temperature, excluded=()):
    """-mean_i log softmax_i over candidates, with plain Python floats; ``excluded`` = {(i, c)} pairs left out."""
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


def make_args(tmp_path, dataset=None, **kwargs) -> SentenceTransformerTrainingArguments:
    return make_training_args(tmp_path, dataset, **{"num_train_epochs": 2, **kwargs})


# ------------------------------------------------------------------------------------------------
# maths
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_in_batch_infonce_matches_hand_computation(teacher, temperature):
    loss = ContrastiveDistillationLoss(teacher, teacher=teacher, temperature=temperature)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 6, generator=g, dtype=torch.float64)
    t = torch.randn(4, 6, generator=g, dtype=torch.float64)
    value = loss.compute_loss_from_embeddings(s, t)
    assert float(value) == pytest.approx(hand_infonce(s.tolist(), t.tolist(), temperature), abs=1e-10)


def test_hard_negatives_join_the_candidates(teacher):
    loss = ContrastiveDistillationLoss(teacher, teacher=teacher, temperature=0.1)
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64)
    t = torch.randn(3, 5, generator=g, dtype=torch.float64)
    n1 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    n2 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    expected = hand_infonce(s.tolist(), t.tolist() + n1.tolist() + n2.tolist(), 0.1)
    as_list = loss.compute_loss_from_embeddings(s, t, [n1, n2])
    as_tensor = loss.compute_loss_from_embeddings(s, t, torch.stack([n1, n2], dim=1))
    assert float(as_list) == pytest.approx(expected, abs=1e-10)
    assert float(as_tensor) == pytest.approx(expected, abs=1e-10)
    # a hard negative close to the student raises the loss
    harder = loss.compute_loss_from_embeddings(s, t, [s + 0.01])
    assert float(harder) > float(loss.compute_loss_from_embeddings(s, t))


def test_duplicate_texts_are_masked(teacher):
    g = torch.Generator().manual_seed(2)
    s = torch.randn(3, 4, generator=g, dtype=torch.float64)
    t = torch.randn(3, 4, generator=g, dtype=torch.float64)
    t[2] = t[0]  # the same English verse twice in the batch
    neg = torch.randn(3, 4, generator=g, dtype=torch.float64)
    neg[1] = t[1] * 3  # a mined "negative" that is the positive itself (same direction, cosine 1)
    candidates = t.tolist() + neg.tolist()
    excluded = {(0, 2), (2, 0), (1, 4)}
    masked = ContrastiveDistillationLoss(teacher, teacher=teacher, temperature=0.2)
    value = masked.compute_loss_from_embeddings(s, t, [neg])
    assert float(value) == pytest.approx(hand_infonce(s.tolist(), candidates, 0.2, excluded), abs=1e-10)
    unmasked = ContrastiveDistillationLoss(teacher, teacher=teacher, temperature=0.2, mask_duplicates=False)
    assert float(unmasked.compute_loss_from_embeddings(s, t, [neg])) == pytest.approx(
        hand_infonce(s.tolist(), candidates, 0.2), abs=1e-10
    )


def test_symmetric_adds_the_reverse_direction(teacher):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(4, 5, generator=g, dtype=torch.float64)
    t = torch.randn(4, 5, generator=g, dtype=torch.float64)
    loss = ContrastiveDistillationLoss(teacher, teacher=teacher, temperature=0.5, symmetric=True)
    forward = hand_infonce(s.tolist(), t.tolist(), 0.5)
    backward = hand_infonce(t.tolist(), s.tolist(), 0.5)
    assert float(loss.compute_loss_from_embeddings(s, t)) == pytest.approx((forward + backward) / 2, abs=1e-10)


def test_gradient_reaches_only_the_student(teacher):
    loss = ContrastiveDistillationLoss(teacher, teacher=teacher)
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    loss.compute_loss_from_embeddings(s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_equals_sentence_transformers_mnrl_on_a_frozen_router_model(teacher, wide_student, bitext):
    """Independent oracle: ST's MultipleNegativesRankingLoss on (lrl, english, negative) with scale = 1/T."""
    model = build_optical_model(teacher, wide_student).eval()
    data = bitext.add_column("negative", list(bitext["english"][1:]) + list(bitext["english"][:1]))
    mapping = router_mapping(data)
    feats = features_for(model, data, mapping)
    ours = ContrastiveDistillationLoss(model, temperature=0.05, mask_duplicates=False)
    mnrl = MultipleNegativesRankingLoss(model, scale=20.0)
    with torch.no_grad():
        expected = mnrl([feats[1], feats[0], feats[2]], None)
        got = ours(features_for(model, data, mapping), None)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# training with SentenceTransformerTrainer
# ------------------------------------------------------------------------------------------------
def test_router_model_trains_and_teacher_stays_frozen(teacher, wide_student, bitext, tmp_path):
    model = build_optical_model(teacher, wide_student)
    teacher_before = {k: v.clone() for k, v in model[0].sub_modules["document"].state_dict().items()}
    loss = ContrastiveDistillationLoss(model, temperature=0.1)
    dataset = Dataset.from_dict({c: list(bitext[c]) * 4 for c in bitext.column_names})
    mapping = router_mapping(dataset)
    with torch.no_grad():
        before = float(loss(features_for(model.eval(), bitext, mapping)))
    SentenceTransformerTrainer(
        model=model, args=make_args(tmp_path, dataset, num_train_epochs=4), train_dataset=dataset, loss=loss
    ).train()
    with torch.no_grad():
        after = float(loss(features_for(model.eval(), bitext, mapping)))
    assert after < 0.8 * before, (before, after)
    for key, value in model[0].sub_modules["document"].state_dict().items():
        assert torch.equal(value, teacher_before[key]), key


def test_separate_teacher_with_negative_column(teacher, student, bitext, tmp_path):
    data = bitext.add_column("negative", list(bitext["english"][2:]) + list(bitext["english"][:2]))
    dataset = Dataset.from_dict({c: list(data[c]) * 4 for c in data.column_names})
    loss = ContrastiveDistillationLoss(student, teacher=teacher)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = SentenceTransformerTrainer(
        model=student, args=make_args(tmp_path, num_train_epochs=1), train_dataset=dataset, loss=loss
    )
    trainer.train()
    assert all(math.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    config = loss.get_config_dict()
    assert config["temperature"] == 0.05 and config["similarity_fct"] == "cos_sim"
    assert "Contrastive Representation Distillation" in loss.citation


# ------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(teacher, student, wide_student, bitext):
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            ContrastiveDistillationLoss(student, teacher=teacher, temperature=bad)
    with pytest.raises(ValueError, match="needs a teacher"):
        ContrastiveDistillationLoss(student)
    with pytest.raises(ValueError, match="build_optical_model"):
        ContrastiveDistillationLoss(wide_student, teacher=teacher)  # different tokenizer
    loss = ContrastiveDistillationLoss(student, teacher=teacher)
    feats = features_for(student, bitext)
    with pytest.raises(ValueError, match="english, lrl"):
        loss(feats[:1])
    with pytest.raises(ValueError, match="takes no labels"):
        loss(feats, torch.ones(len(bitext)))
    empty = Dataset.from_dict({"english": ["god is love", ""], "lrl": ["mulungu", "ndi"]})
    with pytest.raises(ValueError, match=r"english column \(teacher\): row\(s\) \[1\]"):
        loss(features_for(student, empty))
    with pytest.raises(ValueError, match="same shape"):
        loss.compute_loss_from_embeddings(torch.randn(2, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(B, K, d\)"):
        loss.compute_loss_from_embeddings(torch.randn(2, 4), torch.randn(2, 4), torch.randn(3, 1, 4))
    model = build_optical_model(teacher, wide_student)
    router_loss = ContrastiveDistillationLoss(model)
    with pytest.raises(ValueError, match="router_mapping"):
        router_loss(features_for(model, bitext, {"english": "query", "lrl": "query"}))
    with pytest.raises(ValueError, match="do not pass `teacher`"):
        ContrastiveDistillationLoss(model, teacher=teacher)
