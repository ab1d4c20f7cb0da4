"""Issue 13: never train on wrong data, never silently. Each test fails on the code before the fix (fa974d9):
wrong direction, non-finite numbers, empty OT inputs, bad rows found before training, and the smaller items
(a str corpus, NaN metrics in the card, a reloaded teacher route, a model name MTEB can read)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from conftest import features_for, make_training_args, tiny_sentence_transformer, toy_bitext, write_tiny_bert
from datasets import Dataset
from huggingface_hub import EvalResult, ModelCard
from sentence_transformers import SentenceTransformer

from optical_st import (
    ContrastiveDistillationLoss,
    OpticalModelCardData,
    OpticalTrainer,
    OTConfig,
    OTDistillationLoss,
    build_optical_model,
    check_bitext,
    load_optical_model,
    router_mapping,
    transport,
)
from optical_st.hub import eval_results_from_metrics
from optical_st.sampling import HardNegativeConfig

SWAP_WARNING = "the columns look swapped"


def _swapped(dataset: Dataset) -> Dataset:
    return dataset.select_columns(["lrl", "english"])


# ------------------------------------------------------------------------------------------------
# 1. wrong direction
# ------------------------------------------------------------------------------------------------
def test_swapped_columns_warn_when_the_trainer_is_built(teacher, tmp_path, caplog):
    """A dataset ordered (lrl, english) with router_mapping built from it routes every column "correctly" and
    trained in the wrong direction without a word."""
    model = build_optical_model(teacher)
    dataset = _swapped(toy_bitext(32))
    loss = OTDistillationLoss(model)
    with caplog.at_level(logging.WARNING, logger="optical_st"):
        OpticalTrainer(model=model, args=make_training_args(tmp_path, dataset), train_dataset=dataset, loss=loss)
    assert SWAP_WARNING in caplog.text and "function words" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="optical_st"):  # one warning per loss, not one per batch
        loss(features_for(model, dataset.select(range(4)), router_mapping(dataset)))
    assert SWAP_WARNING not in caplog.text


def test_right_order_gives_no_warning(teacher, caplog):
    model = build_optical_model(teacher)
    dataset = toy_bitext(32)
    with caplog.at_level(logging.WARNING, logger="optical_st"):
        check_bitext(dataset, OTDistillationLoss(model), router_mapping=router_mapping(dataset))
    assert SWAP_WARNING not in caplog.text


def test_swapped_columns_warn_on_the_first_batch_with_a_separate_teacher(tmp_path, caplog):
    """No Router, no card hook: the first batch is decoded once. Teacher with an English-only vocabulary, so its
    tokenizer splits the LRL words into letters (the pieces-per-word signal)."""
    teacher = tiny_sentence_transformer(write_tiny_bert(tmp_path / "en", words=["the", "god", "love", "is"]))
    loss = ContrastiveDistillationLoss(teacher, teacher=teacher)
    dataset = Dataset.from_dict({"lrl": ["mulungu ndi chikondi", "kuyera kunali"], "english": ["god is love", "god"]})
    with caplog.at_level(logging.WARNING, logger="optical_st"):
        loss(features_for(teacher, dataset))
    assert SWAP_WARNING in caplog.text and "pieces per word" in caplog.text


def test_router_mapping_against_the_column_order_raises_before_training(teacher, tmp_path):
    """Routes named correctly by column, but the dataset's order is (lrl, english): certain, so an error, at once."""
    model = build_optical_model(teacher)
    dataset = _swapped(toy_bitext(8))
    args = make_training_args(tmp_path, router_mapping={"english": "document", "lrl": "query"})
    with pytest.raises(ValueError, match="routed to"):
        OpticalTrainer(model=model, args=args, train_dataset=dataset, loss=OTDistillationLoss(model))


# ------------------------------------------------------------------------------------------------
# 3. non-finite numbers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"sentence_weight": math.inf},
        {"sentence_weight": math.nan},
        {"contrastive_weight": math.inf},
        {"temperature": math.nan},
        {"sentence_weight": -1},
        {"contrastive_weight": "0.1"},
    ],
)
def test_ot_loss_refuses_non_finite_and_out_of_range_numbers(teacher, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        OTDistillationLoss(build_optical_model(teacher), **kwargs)


@pytest.mark.parametrize("kwargs", [{"tol": math.nan}, {"reg": math.inf}, {"max_iter": 0}, {"max_iter": 10.5}])
def test_ot_config_refuses_non_finite_and_out_of_range_numbers(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        OTConfig(**kwargs)


def test_transport_settings_as_keywords_still_work_with_a_future_warning(teacher):
    model = build_optical_model(teacher)
    with pytest.warns(FutureWarning, match=r"ot_config=OTConfig\(reg=0.02, max_iter=50\)"):
        old = OTDistillationLoss(model, reg=0.02, max_iter=50)
    assert old.ot_config == OTConfig(reg=0.02, max_iter=50)
    assert (
        old.get_config_dict() == OTDistillationLoss(model, ot_config=OTConfig(reg=0.02, max_iter=50)).get_config_dict()
    )
    with pytest.raises(ValueError, match="either ot_config"):
        OTDistillationLoss(model, ot_config=OTConfig(), reg=0.02)
    with pytest.raises(TypeError, match=r"\['regularisation'\].*OTConfig's fields"):
        OTDistillationLoss(model, regularisation=0.02)
    with pytest.raises(ValueError, match="reg"):  # the old keywords are checked like OTConfig's
        OTDistillationLoss(model, reg=math.nan)


@pytest.mark.parametrize("temperature", [math.inf, math.nan, 0.0, -1.0, True])
def test_contrastive_loss_refuses_bad_temperature(teacher, temperature):
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveDistillationLoss(build_optical_model(teacher), temperature=temperature)


def test_numpy_and_tensor_scalars_are_accepted_as_floats(teacher):
    loss = OTDistillationLoss(
        build_optical_model(teacher),
        ot_config=OTConfig(reg=np.float32(0.1), tol=torch.tensor(1e-4), max_iter=np.int64(20)),
        sentence_weight=np.float64(0.5),
        temperature=torch.tensor(0.05),
    )
    for name in ("sentence_weight", "temperature"):
        assert type(getattr(loss, name)) is float, name
    for name in ("reg", "tol"):
        assert type(getattr(loss.ot_config, name)) is float, name
    assert type(loss.ot_config.max_iter) is int
    assert transport.check_reg(np.float32(0.25)) == 0.25
    assert transport.sinkhorn_log(torch.rand(2, 3, 4), reg=torch.tensor(0.1)).shape == (2, 3, 4)


def test_a_non_finite_loss_raises_instead_of_being_returned(teacher, bitext):
    model = build_optical_model(teacher)
    loss = ContrastiveDistillationLoss(model)
    features = features_for(model, bitext, router_mapping(bitext))
    run = loss._student.run

    def nan_student(f):
        out = run(f)
        out["sentence_embedding"] = out["sentence_embedding"] * math.nan
        return out

    loss._student.run = nan_student
    with pytest.raises(ValueError, match=r"not finite.*learning rate"):
        loss(features)

    ot_loss = OTDistillationLoss(model, sentence_weight=1.0)
    ot_loss.compute_loss_from_embeddings = lambda **_: {"ot": torch.tensor(1.0), "sentence": torch.tensor(math.inf)}
    with pytest.raises(ValueError, match=r"not finite: \{'sentence': inf\}"):
        ot_loss(features)


# ------------------------------------------------------------------------------------------------
# 4. empty inputs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0), (0, 0, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_problems_give_empty_plans_from_both_solvers(shape, dtype):
    cost = torch.rand(shape, dtype=dtype)
    plan, log = transport.sinkhorn_log(cost, reg=np.float64(0.05), return_log=True)
    exact = transport.emd(cost)
    assert plan.shape == exact.shape == shape and plan.dtype == exact.dtype == dtype
    assert log.converged and log.err.shape == (shape[0],)
    values, _ = transport.ot_distance(cost, reg=torch.tensor(0.05))
    assert values.shape == (shape[0],) and values.eq(0).all()


# ------------------------------------------------------------------------------------------------
# 5. bad rows, found before training, named by dataset row
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("", "empty"),
        ("   ", "whitespace only"),
        (None, "missing"),
        ("[CLS] [SEP]", "special tokens only"),
        ("\u200b", ""),
    ],
)
def test_bad_rows_stop_the_trainer_before_training_naming_the_dataset_row(teacher, tmp_path, bad, problem):
    model = build_optical_model(teacher)
    dataset = toy_bitext(40)
    lrl = list(dataset["lrl"])
    lrl[37] = bad
    dataset = Dataset.from_dict({"english": dataset["english"], "lrl": lrl})
    with pytest.raises(ValueError, match=rf"train_dataset has 1 row\(s\).*row 37, column 'lrl': {problem}.*filter"):
        OpticalTrainer(
            model=model,
            args=make_training_args(tmp_path, dataset),
            train_dataset=dataset,
            loss=OTDistillationLoss(model),
        )


def test_check_bitext_names_every_bad_row_and_column(teacher, student):
    loss = OTDistillationLoss(student, teacher=teacher)
    dataset = Dataset.from_dict({"english": ["god is love", "", "the light"], "lrl": ["mulungu", "madzi", " "]})
    with pytest.raises(ValueError, match=r"2 row\(s\).*row 1, column 'english': empty; row 2, column 'lrl'.*\[1, 2\]"):
        check_bitext(dataset, loss)
    check_bitext(dataset.select([0]), loss)  # a good dataset passes


def test_label_columns_and_column_count_raise_before_training(teacher, student):
    loss = OTDistillationLoss(student, teacher=teacher)
    with pytest.raises(ValueError, match="takes no labels"):
        check_bitext(Dataset.from_dict({"english": ["god"], "lrl": ["mulungu"], "label": [1.0]}), loss)
    with pytest.raises(ValueError, match="exactly 2 text columns"):
        check_bitext(Dataset.from_dict({"english": ["god"], "lrl": ["mulungu"], "other": ["x"]}), loss)


# ------------------------------------------------------------------------------------------------
# 6. smaller items
# ------------------------------------------------------------------------------------------------
def test_hard_negative_config_refuses_a_string_corpus_and_bad_numbers():
    with pytest.raises(ValueError, match="corpus must be a list of strings"):
        HardNegativeConfig(corpus="abc")
    with pytest.raises(ValueError, match="relative_margin"):
        HardNegativeConfig(relative_margin=math.nan)
    assert type(HardNegativeConfig(relative_margin=np.float32(0.5)).relative_margin) is float
    assert HardNegativeConfig(num_negatives=np.int64(2)).num_negatives == 2


def test_card_refuses_non_finite_training_flops():
    with pytest.raises(ValueError, match="training_flops"):
        OpticalModelCardData(training_flops=math.inf)
    assert OpticalModelCardData(training_flops=np.float32(2.0)).training_flops == 2.0


def test_nan_metrics_never_reach_the_card(teacher, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="optical_st"):
        results = eval_results_from_metrics(
            {"ndcg@10": 0.4, "mrr@10": math.nan}, dataset_name="toy", dataset_type="toy/toy", dataset_split="test"
        )
    assert [r.metric_type for r in results] == ["ndcg@10"] and "mrr@10" in caplog.text
    nan = EvalResult(
        task_type="text-retrieval", dataset_type="toy/toy", dataset_name="toy", metric_type="map", metric_value=math.nan
    )
    card = OpticalModelCardData(model_name="org/toy")
    card.add_eval_results([*results, nan])
    model = build_optical_model(teacher, model_card_data=card)
    model.model_card_data.eval_results.append(nan)  # set by hand: dropped when the card is written
    model.save_pretrained(str(tmp_path / "m"))
    readme = (tmp_path / "m" / "README.md").read_text()
    assert ".nan" not in readme and "ndcg@10" in readme


def test_load_optical_model_freezes_the_teacher_and_restores_the_name(teacher, tmp_path):
    """SentenceTransformer(path) gives back a trainable teacher route and no name (MTEB: no_model_name/available)."""
    for name in ("org/optical-a", "org/optical-b"):
        build_optical_model(teacher, model_card_data=OpticalModelCardData(model_name=name)).save_pretrained(
            str(tmp_path / name)
        )
    plain = SentenceTransformer(str(tmp_path / "org/optical-a"))
    assert plain.model_card_data.model_name is None  # what sentence-transformers restores by itself
    names = []
    for name in ("org/optical-a", "org/optical-b"):
        model = load_optical_model(str(tmp_path / name))
        router = model[0]
        assert not any(p.requires_grad for p in router.sub_modules["document"].parameters())
        assert all(p.requires_grad for p in router.sub_modules["query"].parameters())
        assert isinstance(model.model_card_data, OpticalModelCardData)
        names.append(model.model_card_data.model_name)
        assert ModelCard.load(tmp_path / name / "README.md").data.model_name == name
    assert names == ["org/optical-a", "org/optical-b"]


def test_mteb_reads_the_restored_name(teacher, tmp_path):
    mteb_meta = pytest.importorskip("mteb.models.model_meta")
    card = OpticalModelCardData(model_name="org/optical-mteb")
    build_optical_model(teacher, model_card_data=card).save_pretrained(str(tmp_path / "m"))
    meta = mteb_meta.ModelMeta._from_sentence_transformer_model(load_optical_model(str(tmp_path / "m")))
    assert meta.name == "org/optical-mteb"
