"""TeacherCache: the frozen teacher's outputs reused across steps, epochs and losses, checked against uncached runs."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer

from optical_st import (
    ContrastiveDistillationLoss,
    OTDistillationLoss,
    TeacherCache,
    build_optical_model,
    router_mapping,
)
from optical_st.evaluation.flops import FlopsCallback
from optical_st.routes import TEACHER_ROUTE, find_router
from tests.conftest import features_for, make_training_args, tiny_sentence_transformer, toy_bitext


def _with_negatives(data: Dataset) -> Dataset:
    # each row's negative: the next row's English text (a text the cache also sees as a positive)
    english = list(data["english"])
    return data.add_column("negative_1", english[1:] + english[:1])


class TeacherRows:
    """Counts the rows the teacher route actually encodes (a forward hook on it)."""

    def __init__(self, model) -> None:
        self.rows = 0
        find_router(model).sub_modules[TEACHER_ROUTE][0].register_forward_hook(self._count)

    def _count(self, module, args, output) -> None:
        self.rows += output["input_ids"].shape[0]


def _total(loss, features) -> torch.Tensor:
    out = loss(features)  # a dict of terms when the loss has several
    return sum(out.values()) if isinstance(out, dict) else out


def test_cached_loss_and_gradients_equal_uncached(teacher, wide_student):
    data = _with_negatives(toy_bitext(12))
    model = build_optical_model(teacher, wide_student)
    mapping = router_mapping(data)
    uncached = OTDistillationLoss(model, contrastive_weight=1.0, temperature=0.05)
    cache = TeacherCache()
    cached = OTDistillationLoss(model, contrastive_weight=1.0, temperature=0.05, teacher_cache=cache)
    rows = TeacherRows(model)
    # first batch fills the cache; the second overlaps it in other padding and order
    first, second = data.select(range(6)), data.select([9, 2, 11, 4, 0, 7])
    for batch in (first, second):
        features = features_for(model, batch, mapping)
        model.zero_grad()
        expected = _total(uncached, features)
        expected.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        before = rows.rows
        model.zero_grad()
        got = _total(cached, features)
        got.backward()
        encoded = rows.rows - before
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        got_grads = [p.grad for p in model.parameters() if p.grad is not None]
        for a, b in zip(got_grads, grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        texts = set(batch["english"]) | set(batch["negative_1"])
        seen = set(first["english"]) | set(first["negative_1"]) if batch is second else set()
        assert encoded == len(texts - seen)  # only texts the cache had not seen, each once per batch column
    assert cache.hits > 0 and len(cache) == len(
        set(first["english"]) | set(first["negative_1"]) | set(second["english"]) | set(second["negative_1"])
    )


def test_two_losses_share_one_cache_and_a_different_teacher_is_refused(teacher, student, wide_student, tiny_dirs):
    data = toy_bitext(8)
    cache = TeacherCache()
    first = build_optical_model(teacher, wide_student)
    second = build_optical_model(teacher, wide_student)  # same teacher weights, another object (a new run)
    mapping = router_mapping(data)
    OTDistillationLoss(first, teacher_cache=cache)(features_for(first, data, mapping))
    rows = TeacherRows(second)
    features = features_for(second, data, mapping)
    uncached = ContrastiveDistillationLoss(second)(features)
    cached = ContrastiveDistillationLoss(second, teacher_cache=cache)(features)
    assert rows.rows == len(data)  # the uncached loss ran the teacher, the cached one read the first run's outputs
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)
    other = build_optical_model(student, wide_student)  # another teacher
    with pytest.raises(ValueError, match="another teacher"):
        OTDistillationLoss(other, teacher_cache=cache)(features_for(other, data, mapping))
    with pytest.raises(ValueError, match="TeacherCache"):
        OTDistillationLoss(first, teacher_cache={})


def test_max_entries_bounds_the_cache_and_results_stay_exact(teacher, wide_student):
    data = toy_bitext(8)
    model = build_optical_model(teacher, wide_student)
    features = features_for(model, data, router_mapping(data))
    cache = TeacherCache(max_entries=3)
    expected = OTDistillationLoss(model)(features)
    loss = OTDistillationLoss(model, teacher_cache=cache)
    for _ in range(2):
        torch.testing.assert_close(loss(features), expected, atol=1e-5, rtol=1e-5)
    assert len(cache) == 3 and cache.hits == 3 and cache.misses == 8 + 5
    assert cache.nbytes > 0
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_separate_teacher_mode_uses_the_cache(teacher, student):
    data = toy_bitext(8)
    features = features_for(student, data)
    cache = TeacherCache()
    expected = ContrastiveDistillationLoss(student, teacher=teacher)(features)
    loss = ContrastiveDistillationLoss(student, teacher=teacher, teacher_cache=cache)
    torch.testing.assert_close(loss(features), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss(features), expected, atol=1e-5, rtol=1e-5)
    assert cache.hits == len(data) and cache.misses == len(data)


def _train(tiny_dirs, data, tmp_path, cache, epochs=2):
    torch.manual_seed(0)  # the projection between the widths: same initial weights in every run
    teacher = tiny_sentence_transformer(tiny_dirs["teacher"])
    model = build_optical_model(teacher, tiny_sentence_transformer(tiny_dirs["wide_student"], hidden=48))
    loss = OTDistillationLoss(model, contrastive_weight=1.0, temperature=0.05, teacher_cache=cache)
    flops = FlopsCallback(model, loss, every_n_steps=2)
    rows = TeacherRows(model)
    args = make_training_args(tmp_path, data, num_train_epochs=epochs, per_device_train_batch_size=4)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[flops]).train()
    return model, rows.rows, flops.report


def test_training_with_a_cache_matches_training_without(tiny_dirs, tmp_path):
    data = _with_negatives(toy_bitext(16))
    plain, plain_rows, plain_flops = _train(tiny_dirs, data, tmp_path / "a", None)
    cache = TeacherCache()
    cached, cached_rows, cached_flops = _train(tiny_dirs, data, tmp_path / "b", cache)
    for (name, a), (_, b) in zip(plain.state_dict().items(), cached.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=name)
    # 8 steps of 4 rows x 2 teacher columns: uncached every step; cached only the first epoch's new texts and
    # the FLOPs-measured steps (bypassed: the teacher's forward stays part of the method's measured cost)
    assert plain_rows == 8 * 4 * 2
    assert cached_rows < plain_rows
    assert cache.misses == cached_rows and cache.hits + cache.misses == plain_rows
    assert cached_flops.per_step["teacher_forward"] == pytest.approx(plain_flops.per_step["teacher_forward"])
    assert cached_flops.per_step["teacher_forward"] > 0
    # a second run on the same cache: the teacher runs only on measured steps
    _, again_rows, _ = _train(tiny_dirs, data, tmp_path / "c", cache)
    assert again_rows == 4 * 4 * 2  # steps 0, 2, 4, 6 are measured (every_n_steps=2)
