"""DynamicHardNegativeSampler inside SentenceTransformerTrainer: what the loss receives, refreshes, static and random
modes, an OPTICAL Router model with OTDistillationLoss, checkpoint resume, and misuse."""

from __future__ import annotations

import logging
import pickle
import shutil

import numpy as np
import pytest
import torch
from conftest import make_training_args, tiny_sentence_transformer, toy_bitext, write_tiny_bert
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from optical_st import (
    ContrastiveDistillationLoss,
    DynamicHardNegativeSampler,
    OTDistillationLoss,
    build_optical_model,
    router_mapping,
)
from optical_st.sampling import (
    CHECKPOINT_FILE,
    HardNegativeConfig,
    HardNegativeMiningCallback,
    LengthGroupedBatchSampler,
    NegativesTransform,
    mine_negatives,
)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
class RecordingMNRL(MultipleNegativesRankingLoss):
    """MNRL that keeps the texts of every batch it receives (decoded from the token ids it was given)."""

    def __init__(self, model, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.tokenizer = model.tokenizer
        self.calls: list[list[list[str]]] = []

    def forward(self, sentence_features, labels=None):
        features = list(sentence_features)
        self.calls.append([self.tokenizer.batch_decode(f["input_ids"], skip_special_tokens=True) for f in features])
        return super().forward(features, labels)


@pytest.fixture
def fetches(monkeypatch) -> list[dict]:
    """Every batch the dataset transform serves: position, the table used, and the rows it produced."""
    records: list[dict] = []
    original = NegativesTransform.__call__

    def recording(self, batch):
        out = original(self, batch)
        state = self.state
        table = state.table_at(state.cursor)
        if table is not None and state.negative_columns[0] in out:
            anchors = [state.anchor_index[a] for a in out[state.anchor_column]]
            records.append(
                {
                    "position": state.cursor,
                    "refresh": table.refresh,
                    "mined_step": table.mined_step[anchors].tolist(),
                    "rows": [list(r) for r in zip(*(out[c] for c in out), strict=True)],
                    # the newest refresh when the batch was fetched, and the step that refresh mined at
                    "latest": state.latest.refresh,
                    "latest_step": int(state.latest.mined_step.max()),
                }
            )
        return out

    monkeypatch.setattr(NegativesTransform, "__call__", recording)
    return records


def make_trainer(**kwargs) -> SentenceTransformerTrainer:
    """A trainer with the sampler of its arguments attached (the second of the two set-up lines)."""
    trainer = SentenceTransformerTrainer(**kwargs)
    DynamicHardNegativeSampler.attach(trainer)
    return trainer


def make_args(tmp_path, **kwargs) -> SentenceTransformerTrainingArguments:
    return make_training_args(tmp_path, **{"per_device_train_batch_size": 8, **kwargs})


def pairs(n: int, seed: int = 0) -> Dataset:
    """(anchor = lrl, positive = english): the retrieval direction, in ST's column order."""
    return toy_bitext(n, seed).select_columns(["lrl", "english"])


def callback_of(trainer) -> HardNegativeMiningCallback:
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, HardNegativeMiningCallback))


def mining_logs(trainer) -> list[dict]:
    return [e for e in trainer.state.log_history if "hard_negatives/refresh" in e]


# ------------------------------------------------------------------------------------------------
# behaviour
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a full training run
def test_refreshed_negatives_reach_the_loss(tiny_dirs, tmp_path, fetches):
    model = tiny_sentence_transformer(tiny_dirs["student"])
    dataset = pairs(96)
    anchors, pool = list(dict.fromkeys(dataset["lrl"])), list(dict.fromkeys(dataset["english"]))
    positives = [[pool.index(e) for a2, e in zip(dataset["lrl"], dataset["english"], strict=True) if a2 == a]
                 for a in anchors]  # fmt: skip
    initial_negatives = mine_negatives(
        model.encode_query(anchors, convert_to_tensor=True, normalize_embeddings=True),
        model.encode_document(pool, convert_to_tensor=True, normalize_embeddings=True),
        positives,
        HardNegativeConfig(num_negatives=2),
    ).indices.tolist()
    loss = RecordingMNRL(model)
    sampler = DynamicHardNegativeSampler.configure(num_negatives=2, refresh_steps=2)
    trainer = make_trainer(
        model=model, args=make_args(tmp_path, batch_sampler=sampler), train_dataset=dataset, loss=loss
    )
    trainer.train()
    callback = callback_of(trainer)
    state = callback.state

    # the loss got (anchor, positive, negative_1, negative_2), exactly the rows the transform built, in order
    assert len(loss.calls) == 12 and all(len(call) == 4 for call in loss.calls)
    for call, fetch in zip(loss.calls, fetches, strict=False):
        assert [list(row) for row in zip(*call, strict=True)] == fetch["rows"]
    for fetch in fetches:
        for _, positive, *negatives in fetch["rows"]:
            assert positive not in negatives and len(set(negatives)) == 2
    # they came from refreshed tables: the newest one when the batch was fetched, or the one before it for a batch
    # fetched ahead of a refresh (however many batches the DataLoader fetches ahead), and every row served was
    # mined at most one refresh (refresh_steps) before the newest
    served = {f["refresh"] for f in fetches}
    assert served >= {0, 1, 2, 3, 4}
    for fetch in fetches:
        assert fetch["refresh"] >= fetch["latest"] - 1, fetch
        assert min(fetch["mined_step"]) >= fetch["latest_step"] - 2, fetch
    # re-mining changed the negatives (the model moved); the loss saw changed ones
    assert len(mining_logs(trainer)) == 6  # initial + steps 2, 4, 6, 8, 10
    assert all(
        log["hard_negatives/changed"] > 0.2 for log in mining_logs(trainer)[1:] if "hard_negatives/changed" in log
    )
    assert callback.history[0]["anchors_mined"] < state.num_anchors  # lookahead: only the rows of the first steps
    # the negatives the model had before training (same miner, same settings): the initial table serves exactly
    # those, and the refreshed tables serve different ones
    before = {a: [state.pool[j] for j in row] for a, row in zip(state.anchor_texts, initial_negatives, strict=True)}
    served_initial = [row for f in fetches if f["refresh"] == 0 for row in f["rows"]]
    assert served_initial and all(row[2:] == before[row[0]] for row in served_initial)
    refreshed = [row for f in fetches if f["refresh"] >= 2 for row in f["rows"]]
    assert np.mean([set(row[2:]) != set(before[row[0]]) for row in refreshed]) > 0.3
    # logged per refresh: time, mean negative score, filtered count
    for log in mining_logs(trainer):
        assert log["hard_negatives/mining_seconds"] > 0
        assert -1 <= log["hard_negatives/negative_score"] <= 1 and log["hard_negatives/filtered"] >= 0
    # training leaves the user's dataset as it was
    assert dataset.format["type"] is None and "negative_1" not in dataset[0]


@pytest.mark.slow  # a full training run
def test_group_by_length_batches_similar_rows_and_still_mines_ahead(tiny_dirs, tmp_path, fetches):
    model = tiny_sentence_transformer(tiny_dirs["student"])
    dataset = pairs(96)
    sampler = DynamicHardNegativeSampler.configure(num_negatives=2, refresh_steps=2, group_by_length=True)
    trainer = make_trainer(
        model=model,
        args=make_args(tmp_path, batch_sampler=sampler, num_train_epochs=2),
        train_dataset=dataset,
        loss=RecordingMNRL(model),
    )
    trainer.train()
    assert len(fetches) == 24
    words = {a: len(a.split()) + len(p.split()) for a, p in zip(dataset["lrl"], dataset["english"], strict=True)}
    # every row once per epoch
    for epoch in (0, 1):
        served = sorted(row[0] for f in fetches[epoch * 12 : (epoch + 1) * 12] for row in f["rows"])
        assert served == sorted(dataset["lrl"])
    # the padding the collator adds (longest row of each batch x rows): well below the plain shuffle's
    grouped = sum(max(words[r[0]] for r in f["rows"]) * len(f["rows"]) for f in fetches)
    plain_sampler = DynamicHardNegativeSampler(
        dataset, batch_size=8, drop_last=False, seed=42, config=sampler.config, trainer=trainer
    )
    plain_sampler.lengths = None  # the same sampler without grouping: shuffled batches
    anchors = dataset["lrl"]
    plain = sum(
        max(words[anchors[i]] for i in batch) * len(batch)
        for epoch in (0, 1)
        for batch in plain_sampler.batches_for_epoch(epoch)
    )
    assert grouped < 0.9 * plain
    # the batches of LengthGroupedBatchSampler with the same seed: a mined arm and an unmined one see the same batches
    seed = trainer.args.data_seed if trainer.args.data_seed is not None else trainer.args.seed
    reference = LengthGroupedBatchSampler(dataset, batch_size=8, drop_last=False, seed=seed)
    for epoch in (0, 1):
        reference.set_epoch(epoch)
        expected = [[anchors[i] for i in batch] for batch in reference]
        assert [[row[0] for row in f["rows"]] for f in fetches[epoch * 12 : (epoch + 1) * 12]] == expected
    # the lookahead mined exactly the rows of the grouped batches: every row served was mined for its step
    for fetch in fetches:
        assert fetch["refresh"] >= fetch["latest"] - 1, fetch
        assert min(fetch["mined_step"]) >= fetch["latest_step"] - 2, fetch
    assert callback_of(trainer).history[-1]["random_filled"] == 0


@pytest.mark.slow  # a full training run
def test_static_mode_mines_every_anchor_once_with_the_initial_model(tiny_dirs, tmp_path, fetches):
    model = tiny_sentence_transformer(tiny_dirs["student"])
    dataset = pairs(48)
    kwargs = {"range_min": 1, "range_max": 10, "relative_margin": 0.0}
    # the oracle: the same miner on embeddings of the model before any training
    anchors = list(dict.fromkeys(dataset["lrl"]))
    pool = list(dict.fromkeys(dataset["english"]))
    q = model.encode_query(anchors, convert_to_tensor=True, normalize_embeddings=True)
    c = model.encode_document(pool, convert_to_tensor=True, normalize_embeddings=True)
    positives = [sorted({pool.index(e) for a2, e in zip(dataset["lrl"], dataset["english"], strict=True) if a2 == a})
                 for a in anchors]  # fmt: skip
    expected = mine_negatives(q, c, positives, HardNegativeConfig(num_negatives=2, **kwargs))

    sampler = DynamicHardNegativeSampler.configure(num_negatives=2, refresh_steps=None, hard_batches=True, **kwargs)
    trainer = make_trainer(
        model=model,
        args=make_args(tmp_path, batch_sampler=sampler, num_train_epochs=2),
        train_dataset=dataset,
        loss=RecordingMNRL(model),
    )
    trainer.train()
    state = callback_of(trainer).state
    assert len(mining_logs(trainer)) == 1 and state.refresh_count == 0 and len(state.tables) == 1
    table = state.tables[0]
    found = expected.indices >= 0
    assert state.anchor_texts == anchors and state.pool == pool
    assert np.array_equal(table.negatives[found.numpy()], expected.indices[found].numpy())
    assert {f["refresh"] for f in fetches} == {0}
    # hard_batches: the batches differ between epochs (seed + epoch) but use every row once per epoch
    rows_by_epoch = [sorted(r[0] for f in fetches[i * 6 : (i + 1) * 6] for r in f["rows"]) for i in (0, 1)]
    assert rows_by_epoch[0] == rows_by_epoch[1] == sorted(dataset["lrl"])


@pytest.mark.slow  # a full training run
def test_random_strategy_never_encodes(tiny_dirs, tmp_path, fetches):
    model = tiny_sentence_transformer(tiny_dirs["student"])

    def forbidden(*args, **kwargs):
        raise AssertionError("random negatives must not encode anything")

    model.encode_query = model.encode_document = forbidden
    sampler = DynamicHardNegativeSampler.configure(num_negatives=3, refresh_steps=2, strategy="random")
    trainer = make_trainer(
        model=model, args=make_args(tmp_path, batch_sampler=sampler), train_dataset=pairs(48), loss=RecordingMNRL(model)
    )
    trainer.train()
    state = callback_of(trainer).state
    assert state.refresh_count == 2  # steps 2 and 4 of 6
    assert not np.array_equal(state.tables[0].negatives, state.tables[1].negatives)
    for fetch in fetches:
        for _, positive, *negatives in fetch["rows"]:
            assert positive not in negatives and len(set(negatives)) == 3
    # a second train() call on the same trainer re-indexes cleanly: one callback, negatives again
    first_run = len(fetches)
    trainer.train()
    assert sum(isinstance(cb, HardNegativeMiningCallback) for cb in trainer.callback_handler.callbacks) == 1
    assert len(fetches) > first_run and all(len(f["rows"][0]) == 5 for f in fetches[first_run:])
    assert trainer.train_dataset.format["type"] is None


@pytest.mark.slow  # a full training run
def test_optical_router_model_with_ot_loss_and_eval(teacher, wide_student, tmp_path, fetches):
    model = build_optical_model(teacher, wide_student)
    dataset = toy_bitext(48)
    calls = {"document": 0}
    encode_document = model.encode_document

    def counting(*args, **kwargs):
        calls["document"] += 1
        return encode_document(*args, **kwargs)

    model.encode_document = counting
    loss = OTDistillationLoss(model, contrastive_weight=0.5)
    args = make_args(
        tmp_path,
        router_mapping=router_mapping(dataset),
        batch_sampler=DynamicHardNegativeSampler.configure(num_negatives=2, refresh_steps=2),
        eval_strategy="steps",
        eval_steps=3,
        per_device_eval_batch_size=8,
    )
    trainer = make_trainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=toy_bitext(16, seed=7), loss=loss
    )
    trainer.train()
    state = callback_of(trainer).state
    assert (state.anchor_column, state.positive_column) == ("lrl", "english")  # from router_mapping
    assert trainer.data_collator.router_mapping["negative_2"] == "document"
    assert calls["document"] == 1  # the frozen teacher's pool embeddings are cached across refreshes
    assert state.refresh_count == 2
    logs = trainer.state.log_history
    assert any("contrastive" in e for e in logs) and any("eval_loss" in e for e in logs)  # eval: no negatives
    assert all(np.isfinite(e["loss"]) for e in logs if "loss" in e)
    assert fetches and all(len(f["rows"][0]) == 4 for f in fetches)


class MinedNegativesSampler(DynamicHardNegativeSampler):
    """A user's subclass: nothing in its name says how it mines."""


@pytest.mark.parametrize(
    ("refresh_steps", "strategy", "mode"), [(1, "hard", "dynamic"), (None, "hard", "static"), (1, "random", "random")]
)
def test_card_reports_the_samplers_configured_mode(teacher, wide_student, tmp_path, refresh_steps, strategy, mode):
    """The card reads the mode from the sampler's HardNegativeConfig (its callback reports it), not from a name."""
    model = build_optical_model(teacher, wide_student)
    dataset = toy_bitext(16)
    sampler = MinedNegativesSampler.configure(
        num_negatives=1, refresh_steps=refresh_steps, strategy=strategy, show_progress_bar=False
    )
    trainer = make_trainer(
        model=model,
        args=make_args(tmp_path, router_mapping=router_mapping(dataset), batch_sampler=sampler, max_steps=1),
        train_dataset=dataset,
        loss=OTDistillationLoss(model, contrastive_weight=0.5),
    )
    trainer.train()
    assert sampler.config.mode == mode
    assert model.model_card_data.to_dict()["negatives"] == mode
    model.save(str(tmp_path / "saved"))
    readme = (tmp_path / "saved" / "README.md").read_text(encoding="utf8")
    assert f"- **Hard negatives:** {mode}: " in readme


@pytest.mark.parametrize("loss_cls", [OTDistillationLoss, ContrastiveDistillationLoss])
def test_separate_teacher_mode_mines_english_negatives_for_the_lrl_side(teacher, tmp_path, fetches, loss_cls):
    """Without a Router there is no router_mapping to tell the sides apart: both distillation losses declare them
    (``retrieval_columns``), so the LRL column is the anchor and the negatives are English texts."""
    student = tiny_sentence_transformer(write_tiny_bert(tmp_path / "student", seed=3))  # the teacher's vocabulary
    dataset = toy_bitext(32)
    sampler = DynamicHardNegativeSampler.configure(num_negatives=2, refresh_steps=None)
    kwargs = {"contrastive_weight": 0.5} if loss_cls is OTDistillationLoss else {}
    trainer = make_trainer(
        model=student,
        args=make_args(tmp_path, batch_sampler=sampler, max_steps=1),
        train_dataset=dataset,
        loss=loss_cls(student, teacher=teacher, **kwargs),
    )
    trainer.train()
    state = callback_of(trainer).state
    assert (state.anchor_column, state.positive_column) == ("lrl", "english")
    assert set(state.pool) == set(dataset["english"])
    english = set(dataset["english"])
    served = [row for fetch in fetches for row in fetch["rows"]]
    assert served and all(set(row[2:]) <= english for row in served)


@pytest.mark.slow  # a full training run
def test_trainable_document_encoder_is_re_encoded(tiny_dirs, tmp_path):
    model = tiny_sentence_transformer(tiny_dirs["student"])
    calls = {"document": 0}
    encode_document = model.encode_document

    def counting(*args, **kwargs):
        calls["document"] += 1
        return encode_document(*args, **kwargs)

    model.encode_document = counting
    sampler = DynamicHardNegativeSampler.configure(refresh_steps=2)
    trainer = make_trainer(
        model=model, args=make_args(tmp_path, batch_sampler=sampler), train_dataset=pairs(48), loss=RecordingMNRL(model)
    )
    trainer.train()
    assert calls["document"] == 3  # initial + steps 2 and 4: the pool moves with the model


@pytest.mark.slow  # a full training run
def test_class_as_batch_sampler_and_train_dataset_reused_for_eval(tiny_dirs, tmp_path):
    """The class itself works as `batch_sampler` (defaults), and evaluating on the training dataset object mid-run
    neither re-indexes it nor restarts the mining."""
    model = tiny_sentence_transformer(tiny_dirs["student"])
    dataset = pairs(48)
    args = make_args(tmp_path, batch_sampler=DynamicHardNegativeSampler, eval_strategy="steps", eval_steps=2)
    trainer = make_trainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=dataset, loss=RecordingMNRL(model)
    )
    trainer.train()
    callbacks = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, HardNegativeMiningCallback)]
    assert len(callbacks) == 1
    assert len(mining_logs(trainer)) == 1  # refresh_steps=200 by default: only the initial mining in 6 steps
    assert sum("eval_loss" in e for e in trainer.state.log_history) == 3
    assert all(len(call) == 3 for call in trainer.loss.calls)  # train and eval batches: (anchor, positive, negative_1)


# ------------------------------------------------------------------------------------------------
# resume
# ------------------------------------------------------------------------------------------------
def run(tiny_dirs, output_dir, resume=None, record=None):
    torch.manual_seed(0)
    model = tiny_sentence_transformer(tiny_dirs["student"])
    loss = RecordingMNRL(model)
    args = make_args(
        output_dir,
        output_dir=str(output_dir),  # checkpoints where the resume test looks for them
        max_steps=10,
        save_strategy="steps",
        save_steps=3,
        batch_sampler=DynamicHardNegativeSampler.configure(num_negatives=2, refresh_steps=3),
        resume_from_checkpoint=resume,  # where the callback finds the checkpoint's negatives (as scripts pass it)
    )
    trainer = make_trainer(model=model, args=args, train_dataset=pairs(48), loss=loss)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    return trainer, loss


@pytest.mark.slow  # a full training run
def test_resume_continues_with_the_same_negatives(tiny_dirs, tmp_path, fetches, caplog):
    full, full_loss = run(tiny_dirs, tmp_path / "a")  # 6 steps an epoch, refreshes at steps 3, 6, 9
    uninterrupted = list(fetches)
    checkpoint = tmp_path / "a" / "checkpoint-3"
    assert (checkpoint / CHECKPOINT_FILE).is_file()

    fetches.clear()
    resumed, resumed_loss = run(tiny_dirs, tmp_path / "b", resume=str(checkpoint))
    assert len(resumed_loss.calls) == 7
    assert resumed_loss.calls == full_loss.calls[3:]  # steps 4..10, across an epoch boundary and two refreshes
    # every position is served from the same table as in the uninterrupted run, including batches fetched ahead of
    # the refresh at step 3 (which needs the older table saved alongside the new one)
    by_position = {f["position"]: f["refresh"] for f in uninterrupted if f["position"] >= 3}
    assert {f["position"]: f["refresh"] for f in fetches} == by_position
    assert callback_of(resumed).state.refresh_count == callback_of(full).state.refresh_count == 3
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, atol=0, rtol=0)

    # a checkpoint without the table: warn, re-mine every anchor, keep training
    bare = tmp_path / "bare" / "checkpoint-6"
    shutil.copytree(tmp_path / "a" / "checkpoint-6", bare)
    (bare / CHECKPOINT_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="optical_st"):
        fallback, _ = run(tiny_dirs, tmp_path / "c", resume=str(bare))
    assert "re-mining every anchor" in caplog.text
    assert callback_of(fallback).history[0]["anchors_mined"] == callback_of(fallback).state.num_anchors
    assert fallback.state.global_step == 10


# ------------------------------------------------------------------------------------------------
# misuse
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_negatives": 0}, "num_negatives"),
        ({"refresh_steps": 0}, "refresh_steps"),
        ({"strategy": "semi-hard"}, "strategy"),
        ({"sampling_strategy": "best"}, "sampling_strategy"),
        ({"range_min": 3, "range_max": 4, "num_negatives": 2}, "rank window"),
        ({"relative_margin": float("nan")}, "relative_margin"),
        ({"hard_batches": True, "strategy": "random"}, "hard_batches"),
        ({"hard_batches": True, "group_by_length": True}, "choose one"),
        ({"nonsense": 1}, "nonsense"),
    ],
)
def test_bad_settings_raise_at_configure(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        DynamicHardNegativeSampler.configure(**kwargs)


def test_configure_is_picklable_and_readable(tmp_path):
    factory = DynamicHardNegativeSampler.configure(num_negatives=4, refresh_steps=100, corpus=["a", "b"])
    assert (
        repr(factory) == "DynamicHardNegativeSampler.configure(num_negatives=4, refresh_steps=100, corpus='<2 texts>')"
    )
    args = make_args(tmp_path, batch_sampler=factory)
    restored = pickle.loads(pickle.dumps(args))  # the trainer torch.saves its args into every checkpoint
    assert restored.batch_sampler.config == factory.config


def test_misuse_raises_clear_errors(tiny_dirs, teacher, tmp_path):
    with pytest.raises(ValueError, match="needs the trainer it samples for"):
        DynamicHardNegativeSampler(pairs(8), batch_size=2, drop_last=False)

    model = tiny_sentence_transformer(tiny_dirs["student"])
    # configured but never attached: a clear error instead of silently training without negatives
    args = make_args(tmp_path, batch_sampler=DynamicHardNegativeSampler.configure())
    unattached = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs(16), loss=RecordingMNRL(model))
    with pytest.raises(ValueError, match=r"not attached to the trainer.*attach\(trainer\)"):
        unattached.train()
    plain = SentenceTransformerTrainer(model=model, args=make_args(tmp_path), train_dataset=pairs(16),
                                       loss=RecordingMNRL(model))  # fmt: skip
    with pytest.raises(ValueError, match="not a DynamicHardNegativeSampler"):
        DynamicHardNegativeSampler.attach(plain)

    def train(dataset, loss=None, **kwargs):
        args = make_args(tmp_path, batch_sampler=DynamicHardNegativeSampler.configure(**kwargs.pop("sampler", {})),
                         **kwargs)  # fmt: skip
        make_trainer(
            model=model, args=args, train_dataset=dataset, loss=loss or MultipleNegativesRankingLoss(model)
        ).train()

    with pytest.raises(ValueError, match="dataloader_num_workers=0"):
        train(pairs(16), dataloader_num_workers=1)
    with pytest.raises(ValueError, match="already has column"):
        train(pairs(16).add_column("negative_1", ["x"] * 16))
    with pytest.raises(ValueError, match="not a column"):
        train(pairs(16), sampler={"anchor_column": "query"})
    with pytest.raises(ValueError, match="too few"):
        train(pairs(4), sampler={"num_negatives": 4})
    optical = build_optical_model(teacher)
    with pytest.raises(ValueError, match="exactly 2 text columns"):  # the paper loss takes no negatives
        args = make_args(tmp_path, router_mapping=router_mapping(toy_bitext(16)),
                         batch_sampler=DynamicHardNegativeSampler.configure())  # fmt: skip
        make_trainer(model=optical, args=args, train_dataset=toy_bitext(16), loss=OTDistillationLoss(optical)).train()
