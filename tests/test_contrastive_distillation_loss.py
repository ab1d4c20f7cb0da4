"""ContrastiveDistillationLoss: the shared InfoNCE term on a Router model (equivalence with ST's MNRL), training runs,
bad inputs."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from conftest import features_for, make_training_args
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from optical_st import ContrastiveDistillationLoss, build_optical_model, router_mapping
from optical_st.losses.info_nce import info_nce


def make_args(tmp_path, dataset=None, **kwargs) -> SentenceTransformerTrainingArguments:
    return make_training_args(tmp_path, dataset, **{"num_train_epochs": 2, **kwargs})


# ------------------------------------------------------------------------------------------------
# maths
# ------------------------------------------------------------------------------------------------
def test_loss_is_the_shared_info_nce_term(teacher):
    """The maths is optical_st.losses.info_nce (tested against an oracle there); the loss passes its settings on and
    takes hard negatives as a list of (B, d) columns or one (B, K, d) tensor."""
    loss = ContrastiveDistillationLoss(teacher, teacher=teacher, temperature=0.2, symmetric=True, mask_duplicates=False)
    g = torch.Generator().manual_seed(1)
    s, t, n1, n2 = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(4))
    expected = info_nce(s, t, [n1, n2], 0.2, symmetric=True, mask_duplicates=False)
    torch.testing.assert_close(loss.compute_loss_from_embeddings(s, t, [n1, n2]), expected)
    torch.testing.assert_close(loss.compute_loss_from_embeddings(s, t, torch.stack([n1, n2], dim=1)), expected)
    torch.testing.assert_close(loss.compute_loss_from_embeddings(s, t), info_nce(s, t, None, 0.2, symmetric=True,
                                                                                  mask_duplicates=False))  # fmt: skip


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
@pytest.mark.slow  # a full training run
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
def test_bad_inputs_raise_clear_errors(teacher, student, wide_student, bitext, caplog):
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveDistillationLoss(student, teacher=teacher, temperature=0)
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
    with caplog.at_level(logging.WARNING, logger="optical_st"):  # named on the first batch, not fatal
        assert torch.isfinite(loss(features_for(student, empty)))
    assert "english column (teacher): row(s) [1]" in caplog.text
    with pytest.raises(ValueError, match=r"\(B, K, d\)"):
        loss.compute_loss_from_embeddings(torch.randn(2, 4), torch.randn(2, 4), torch.randn(3, 1, 4))
    model = build_optical_model(teacher, wide_student)
    router_loss = ContrastiveDistillationLoss(model)
    with pytest.raises(ValueError, match="router_mapping"):
        router_loss(features_for(model, bitext, {"english": "query", "lrl": "query"}))
    with pytest.raises(ValueError, match="do not pass `teacher`"):
        ContrastiveDistillationLoss(model, teacher=teacher)
