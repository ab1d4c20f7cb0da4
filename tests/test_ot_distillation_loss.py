"""OTDistillationLoss: maths on hand-made tensors, training with the real trainer, and bad inputs."""

from __future__ import annotations

import json
import logging
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch
from conftest import features_for, make_training_args
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer

from optical_st import OTConfig, OTDistillationLoss, build_optical_model, export_student, router_mapping
from optical_st.losses import TokenEmbeddings
from optical_st.transport import cosine_cost, sinkhorn_log, token_marginals

# the maths tests solve to tolerances fp32 cannot reach (exactness against oracles); the warning has its own tests
pytestmark = pytest.mark.filterwarnings("ignore::optical_st.losses.SinkhornConvergenceWarning")


def batch_loss(loss: OTDistillationLoss, model: SentenceTransformer, dataset: Dataset, mapping: dict | None) -> float:
    """The loss on the whole dataset as one batch, tokenized the way the trainer's collator does it."""
    with torch.no_grad():
        return float(loss(features_for(model, dataset, mapping), None))


def sides(s, s_mask, t, t_mask) -> tuple[TokenEmbeddings, TokenEmbeddings]:
    """Hand-made student and teacher sides for ``compute_loss_from_embeddings``."""
    return TokenEmbeddings(s, s_mask), TokenEmbeddings(t, t_mask)


def ot_loss(model: SentenceTransformer, teacher: SentenceTransformer | None = None, **settings) -> OTDistillationLoss:
    """The loss with ``settings`` as its OTConfig."""
    return OTDistillationLoss(model, teacher=teacher, ot_config=OTConfig(**settings))


# ------------------------------------------------------------------------------------------------
# maths
# ------------------------------------------------------------------------------------------------
def test_gradient_wrt_cost_is_the_plan(teacher):
    captured = {}

    def cost_fn(x, y):
        c = cosine_cost(x, y)
        c.retain_grad()
        captured["cost"] = c
        return c

    loss = ot_loss(teacher, teacher, reg=0.05, max_iter=500, tol=1e-9, cost_scale=None, cost=cost_fn)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    t = torch.randn(3, 6, 8, generator=g)
    s_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    t_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    value = loss.compute_loss_from_embeddings(*sides(s, s_mask, t, t_mask))
    value.backward()
    plan = sinkhorn_log(
        captured["cost"].detach(), token_marginals(s_mask), token_marginals(t_mask), reg=0.05, max_iter=500, tol=1e-9
    )
    torch.testing.assert_close(captured["cost"].grad, plan / 3, atol=1e-7, rtol=0)  # mean over the batch of 3
    torch.testing.assert_close(value, (plan * captured["cost"].detach()).sum((1, 2)).mean(), atol=1e-7, rtol=0)
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_centering_shifts_both_sides_by_the_mean_teacher_token(teacher):
    import ot as pot

    g = torch.Generator().manual_seed(3)
    # a large shared direction on both sides, as in contextual embeddings
    shared = 5 * torch.randn(8, generator=g)
    s = (torch.randn(2, 4, 8, generator=g) + shared).requires_grad_()
    t = torch.randn(2, 5, 8, generator=g) + shared
    s_mask, t_mask = torch.ones(2, 4), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    kwargs = dict(reg=0.05, max_iter=2000, tol=1e-9, cost_scale=None)
    centered = ot_loss(teacher, teacher, center=True, **kwargs)
    plain = ot_loss(teacher, teacher, center=False, **kwargs)
    centered.monitor.enabled = plain.monitor.enabled = True  # the plan statistics, read below
    # oracle: the mean of each sentence's mean teacher token (uniform mass over its real tokens), by hand
    mu = torch.stack([t[0, :5].mean(0), t[1, :3].mean(0)]).mean(0)
    value = centered.compute_loss_from_embeddings(*sides(s, s_mask, t, t_mask))
    expected = plain.compute_loss_from_embeddings(*sides(s - mu, s_mask, t - mu, t_mask))
    torch.testing.assert_close(value, expected, atol=1e-6, rtol=0)
    # and against POT on the centred cosine cost, problem by problem
    for i, n_t in enumerate((5, 3)):
        cost = cosine_cost((s[i] - mu).detach()[None], (t[i, :n_t] - mu)[None])[0].double().numpy()
        ref = pot.sinkhorn2(
            torch.full((4,), 0.25).double().numpy(),
            torch.full((n_t,), 1 / n_t).double().numpy(),
            cost,
            0.05,
            method="sinkhorn_log",
            numItermax=5000,
            stopThr=1e-10,
        )
        single = plain.compute_loss_from_embeddings(
            *sides((s[i : i + 1] - mu).detach(), s_mask[:1], (t[i : i + 1, :n_t] - mu), torch.ones(1, n_t))
        )
        assert float(single) == pytest.approx(float(ref), abs=1e-5)
    # the shared direction squeezes the uncentred costs: the centred plan is sharper
    assert centered.monitor.pop_means()["entropy_ratio"] < plain.monitor.pop_means()["entropy_ratio"]
    value.backward()
    assert torch.isfinite(s.grad).all()
    # squared Euclidean costs do not change under a common shift
    sq = dict(kwargs, cost="sqeuclidean")
    a = ot_loss(teacher, teacher, center=True, **sq).compute_loss_from_embeddings(*sides(s, s_mask, t, t_mask))
    b = ot_loss(teacher, teacher, center=False, **sq).compute_loss_from_embeddings(*sides(s, s_mask, t, t_mask))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-6)


def test_cost_scale_max_makes_reg_relative_to_the_largest_cost(teacher):
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 4, 8, generator=g)
    t = torch.randn(2, 6, 8, generator=g)
    s_mask, t_mask = torch.ones(2, 4), torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    t_junk = t.clone()
    t_junk[1, 4:] = 100.0  # padding: must not set the scale
    kwargs = dict(reg=0.05, max_iter=5000, tol=1e-9, center=False)
    for cost in ("cosine", "sqeuclidean"):
        scaled = ot_loss(teacher, teacher, cost=cost, cost_scale="max", **kwargs)
        value = scaled.compute_loss_from_embeddings(*sides(s, s_mask, t_junk, t_mask))
        # oracle: each problem's cost over its real tokens divided by its own largest entry, solved unscaled
        expected = []
        for i, m in enumerate((6, 4)):
            raw = pairwise(cost, s[i : i + 1], t[i : i + 1, :m])
            plan = sinkhorn_log(raw / raw.max(), reg=0.05, max_iter=5000, tol=1e-9)
            expected.append(float((plan * raw / raw.max()).sum()))
        assert float(value) == pytest.approx(sum(expected) / 2, abs=1e-5), cost
    # one reg, one sharpness: squared-Euclidean costs of norm-5 embeddings converge in the default iterations
    big_s, big_t = 5 * s, 5 * t
    default = ot_loss(teacher, teacher, cost="sqeuclidean")
    default.compute_loss_from_embeddings(*sides(big_s, s_mask, big_t, t_mask))
    assert default.last_solver_log.converged
    raw = ot_loss(teacher, teacher, cost="sqeuclidean", cost_scale=None)
    with pytest.warns(UserWarning, match="did not converge"):
        raw.compute_loss_from_embeddings(*sides(big_s, s_mask, big_t, t_mask))


def test_rows_without_content_get_no_weight_against_pot(teacher):
    """A row whose tokens on one side are all excluded (special or prompt tokens only: an empty text, or one its prompt
    swallowed) gets no OT weight, found with masks: the loss is the mean of <P, C> over the other rows, P from POT on
    their centred (mean teacher token of the rows with content), max-scaled cosine costs; no gradient reaches the
    rows without content, and nothing raises."""
    import ot as pot

    g = torch.Generator().manual_seed(7)
    s = torch.randn(4, 5, 8, generator=g).requires_grad_()
    t = torch.randn(4, 6, 8, generator=g) + 2.0
    s_mask, t_mask = torch.ones(4, 5), torch.ones(4, 6)
    t_mask[2, 4:] = 0  # padding
    s_exclude, t_exclude = torch.zeros(4, 5, dtype=torch.bool), torch.zeros(4, 6, dtype=torch.bool)
    s_exclude[:, 0] = t_exclude[:, 0] = True  # [CLS]
    s_exclude[1] = True  # row 1: nothing on the student side
    t_exclude[3] = True  # row 3: nothing on the teacher side
    loss = ot_loss(teacher, teacher, reg=0.05, max_iter=5000, tol=1e-10)  # centred, max-scaled cosine costs
    value = loss.compute_loss_from_embeddings(
        TokenEmbeddings(s, s_mask, s_exclude), TokenEmbeddings(t, t_mask, t_exclude)
    )
    s_keep, t_keep = s_mask.bool() & ~s_exclude, t_mask.bool() & ~t_exclude
    mean = torch.stack([t[i][t_keep[i]].mean(0) for i in (0, 2)]).mean(0)  # each row's tokens weigh 1 in all
    expected = []
    for i in (0, 2):
        cost = cosine_cost((s[i][s_keep[i]] - mean).detach()[None], (t[i][t_keep[i]] - mean)[None])[0].double()
        cost = (cost / cost.max()).numpy()
        n, m = cost.shape
        plan = pot.sinkhorn(np.full(n, 1 / n), np.full(m, 1 / m), cost, 0.05, method="sinkhorn_log", numItermax=5000)
        expected.append(float((plan * cost).sum()))
    assert float(value.detach()) == pytest.approx(sum(expected) / 2, abs=1e-5)
    value.backward()
    assert torch.isfinite(s.grad).all() and s.grad[[1, 3]].abs().max() == 0 and s.grad[[0, 2]].abs().max() > 0
    assert loss.monitor.rows_without_content == 2
    # every row without content: a zero loss, not an error or NaN
    t_exclude[:] = True
    nothing = loss.compute_loss_from_embeddings(TokenEmbeddings(s, s_mask), TokenEmbeddings(t, t_mask, t_exclude))
    assert float(nothing.detach()) == 0.0


def pairwise(cost: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from optical_st.transport import pairwise_cost

    return pairwise_cost(x, y, cost)[0]


def test_padding_changes_nothing(teacher):
    loss = ot_loss(teacher, teacher, reg=0.05, max_iter=200, tol=0)
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 4, 8, generator=g)
    t = torch.randn(2, 5, 8, generator=g)
    ones_s, ones_t = torch.ones(2, 4), torch.ones(2, 5)
    base = loss.compute_loss_from_embeddings(*sides(s.clone().requires_grad_(), ones_s, t, ones_t))
    # three extra padded student tokens and two teacher ones, filled with junk that must be ignored
    s_pad = torch.cat([s, 100 * torch.randn(2, 3, 8, generator=g)], 1).requires_grad_()
    t_pad = torch.cat([t, -50 * torch.randn(2, 2, 8, generator=g)], 1)
    padded = loss.compute_loss_from_embeddings(
        *sides(s_pad, torch.cat([ones_s, torch.zeros(2, 3)], 1), t_pad, torch.cat([ones_t, torch.zeros(2, 2)], 1))
    )
    torch.testing.assert_close(padded, base, atol=1e-6, rtol=0)
    padded.backward()
    assert s_pad.grad[:, 4:].abs().max() == 0  # padding receives no gradient


def test_special_tokens_can_be_excluded(teacher):
    loss = OTDistillationLoss(teacher, teacher=teacher)
    feats = teacher.preprocess(["god is love"])
    assert loss._exclude_mask(feats, loss._student).tolist() == [[True, False, False, False, True]]
    loss = ot_loss(teacher, teacher, exclude_special_tokens=False)
    assert loss._exclude_mask(feats, loss._student) is None


def test_sentence_term_and_emd_solver(teacher, student, bitext):
    both = OTDistillationLoss(student, teacher=teacher, sentence_weight=0.5)
    feats = [student.preprocess(bitext["english"]), student.preprocess(bitext["lrl"])]
    out = both(feats)
    assert set(out) == {"ot", "sentence"} and all(torch.isfinite(v) for v in out.values())
    exact = ot_loss(student, teacher, solver="emd")
    entropic = ot_loss(student, teacher, reg=0.01, max_iter=2000, tol=1e-7)
    with torch.no_grad():
        e, s = float(exact(feats)), float(entropic(feats))
    assert 0 < e <= s + 1e-4  # the exact plan is the cheapest; entropic plans cost a little more
    assert s - e < 0.05


# ------------------------------------------------------------------------------------------------
# training with SentenceTransformerTrainer
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a full training run
def test_router_model_trains_with_different_tokenizer_and_width(teacher, wide_student, bitext, tmp_path):
    """Student with its own vocabulary and hidden 48, teacher hidden 32: the projection lives in the student route,
    the teacher reads its own tokens and never changes."""
    model = build_optical_model(teacher, wide_student)
    teacher_before = {k: v.clone() for k, v in model[0].sub_modules["document"].state_dict().items()}
    loss = ot_loss(model, reg=0.05)
    dataset = Dataset.from_dict({c: list(bitext[c]) * 4 for c in bitext.column_names})
    mapping = router_mapping(dataset)
    before = batch_loss(loss, model, bitext, mapping)
    trainer = SentenceTransformerTrainer(
        model=model, args=make_training_args(tmp_path, dataset, num_train_epochs=3), train_dataset=dataset, loss=loss
    )
    trainer.train()
    after = batch_loss(loss, model, bitext, mapping)
    assert after < 0.8 * before, (before, after)
    for key, value in model[0].sub_modules["document"].state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert all(not p.requires_grad for p in model[0].sub_modules["document"].parameters())
    # the teacher's own tokenizer handled the English column: ids differ from the student's
    eng = bitext["english"][:1]
    assert (
        model.preprocess(eng, task="document")["input_ids"].tolist()
        != model.preprocess(eng, task="query")["input_ids"].tolist()
    )
    assert model.encode_query(bitext["lrl"][:2]).shape == (2, 32)
    assert model.encode_document(bitext["english"][:2]).shape == (2, 32)


@pytest.mark.slow  # a full training run
def test_plain_student_with_separate_teacher(teacher, student, bitext, tmp_path):
    loss = ot_loss(student, teacher, reg=0.05)
    dataset = Dataset.from_dict({c: list(bitext[c]) * 4 for c in bitext.column_names})
    before = batch_loss(loss, student, bitext, None)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = SentenceTransformerTrainer(
        model=student, args=make_training_args(tmp_path, num_train_epochs=3), train_dataset=dataset, loss=loss
    )
    # the optimizer never sees the teacher
    trainer.create_optimizer()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    trainer.train()
    assert batch_loss(loss, student, bitext, None) < 0.8 * before
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    # the saved student holds the student only, and its card names the loss and cites OPTICAL
    out = tmp_path / "saved"
    student.save_pretrained(str(out))
    n_student = sum(p.numel() for p in student.parameters())
    assert sum(p.numel() for p in SentenceTransformer(str(out)).parameters()) == n_student
    card = (out / "README.md").read_text()
    assert "OTDistillationLoss" in card and "huang2023optical" in card and '"reg": 0.05' in card


def test_teacher_runs_in_eval_mode(teacher, bitext):
    """The trainer calls model.train() every step, which switches dropout on in both routes; the loss must still run
    the teacher deterministically (eval mode), while the student trains with dropout."""
    model = build_optical_model(teacher)
    loss = OTDistillationLoss(model)
    transformer = model[0].sub_modules["document"][0]
    seen = []
    transformer.register_forward_hook(lambda module, args, out: seen.append((module.training, out["token_embeddings"])))
    feats = features_for(model, bitext, router_mapping(bitext))
    # sanity: in train mode the teacher's outputs do change from call to call (dropout), so the check below can fail
    model.train()
    with torch.no_grad():
        drops = [model[0](dict(feats[0]))["token_embeddings"] for _ in range(2)]
    assert not torch.equal(*drops)
    seen.clear()
    for _ in range(2):
        model.train()  # as the trainer does before every step
        value = loss([dict(f) for f in feats])
        assert torch.isfinite(value)
    (train_mode_1, out_1), (train_mode_2, out_2) = seen
    assert not train_mode_1 and not train_mode_2
    assert torch.equal(out_1, out_2)
    assert model[0].sub_modules["query"].training  # the student is left in train mode


def test_export_student_matches_query_route(teacher, wide_student, bitext):
    model = build_optical_model(teacher, wide_student)
    plain = export_student(model)
    torch.testing.assert_close(
        torch.as_tensor(plain.encode(bitext["lrl"])),
        torch.as_tensor(model.encode_query(bitext["lrl"])),
        atol=1e-6,
        rtol=0,
    )


# ------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------
def features(model, *columns, task=None):
    out = []
    for col in columns:
        f = model.preprocess(col, task=task) if task else model.preprocess(col)
        out.append(f)
    return out


def test_bad_columns_raise(teacher, student):
    loss = OTDistillationLoss(student, teacher=teacher)
    with pytest.raises(ValueError, match="exactly 2 text columns"):
        loss(features(student, ["god is love"]))
    with pytest.raises(ValueError, match="exactly 2 text columns"):
        loss(features(student, ["god"], ["mulungu"], ["light"]))
    with pytest.raises(ValueError, match="takes no labels"):
        loss(features(student, ["god"], ["mulungu"]), torch.tensor([1.0]))


@pytest.mark.parametrize("bad", ["", "   ", "[CLS] [SEP]"])
def test_empty_or_special_only_rows_get_no_weight_and_are_named_on_the_first_batch(teacher, student, bad, caplog):
    """A row with nothing to transport does not stop training (issue 31, case 0): the loss is that of the other rows,
    and the first batch names it in a warning."""
    loss = OTDistillationLoss(student, teacher=teacher)
    with caplog.at_level(logging.WARNING, logger="optical_st"):
        value = loss(features(student, ["god", "light"], ["mulungu", bad]))
    assert "lrl column (student): row(s) [1]" in caplog.text
    alone = OTDistillationLoss(student, teacher=teacher)(features(student, ["god"], ["mulungu"]))
    assert float(value.detach()) == pytest.approx(float(alone.detach()), abs=1e-6) and float(alone.detach()) > 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="optical_st"):
        value = loss(features(student, [bad, "light"], ["mulungu", "madzi"]))
    assert "row(s)" not in caplog.text  # the first batch only: later batches read nothing back
    alone = OTDistillationLoss(student, teacher=teacher)(features(student, ["light"], ["madzi"]))
    assert float(value.detach()) == pytest.approx(float(alone.detach()), abs=1e-6)
    assert loss.monitor.rows_without_content == 2
    nothing = OTDistillationLoss(student, teacher=teacher)(features(student, [bad], ["mulungu"]))
    assert float(nothing.detach()) == 0.0  # no row with content: a zero loss, not NaN


def test_dims_mismatch_without_projection_raises(teacher, tiny_dirs, tmp_path):
    from conftest import tiny_sentence_transformer, write_tiny_bert

    same_vocab_wider = tiny_sentence_transformer(write_tiny_bert(tmp_path / "w", hidden=48), hidden=48)
    loss = OTDistillationLoss(same_vocab_wider, teacher=teacher)
    with pytest.raises(ValueError, match="add_projection"):
        loss(features(same_vocab_wider, ["god"], ["mulungu"]))


def test_tokenizer_mismatch_points_to_router_model(teacher, wide_student):
    with pytest.raises(ValueError, match="build_optical_model"):
        OTDistillationLoss(wide_student, teacher=teacher)


def test_router_model_misuse_raises(teacher, bitext):
    model = build_optical_model(teacher)
    with pytest.raises(ValueError, match="do not pass `teacher`"):
        OTDistillationLoss(model, teacher=teacher)
    with pytest.raises(ValueError, match="needs a teacher"):
        OTDistillationLoss(teacher)
    loss = OTDistillationLoss(model)
    # columns tokenized without router_mapping: no task stamped
    with pytest.raises(ValueError, match="router_mapping"):
        loss(features(model, ["god"], ["mulungu"], task="document"))


def test_nan_embeddings_raise_instead_of_nan_loss(teacher):
    loss = OTDistillationLoss(teacher, teacher=teacher)
    s = torch.randn(1, 3, 8)
    s[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        loss.compute_loss_from_embeddings(*sides(s, torch.ones(1, 3), torch.randn(1, 4, 8), torch.ones(1, 4)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reg": 0}, "reg must be"),
        ({"reg": float("nan")}, "reg must be"),
        ({"reg": "0.05"}, "reg must be"),
        ({"cost": "l1"}, "Unknown cost"),
        ({"solver": "greenkhorn"}, "Unknown solver"),
        ({"cost_scale": "mean"}, "cost_scale must be 'max' or None"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": -1e-4}, "tol"),
    ],
)
def test_bad_ot_settings_raise_when_the_config_is_made(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OTConfig(**kwargs)


def test_ot_config_defaults_checked_numbers_and_frozen(teacher):
    assert OTConfig() == OTConfig(
        reg=0.05, max_iter=200, tol=1e-4, cost="cosine", center=True, cost_scale="max", exclude_special_tokens=True
    )
    config = OTConfig(reg=np.float32(0.25), max_iter=np.int64(20), tol=torch.tensor(1e-3))
    assert (type(config.reg), type(config.max_iter), type(config.tol)) == (float, int, float)
    with pytest.raises(FrozenInstanceError):
        config.reg = 0.1
    assert OTDistillationLoss(teacher, teacher=teacher).ot_config == OTConfig()  # None: the defaults
    with pytest.raises(TypeError, match=r"ot_config=OTConfig\("):
        OTDistillationLoss(teacher, teacher=teacher, ot_config={"reg": 0.1})


def test_config_dict_lists_the_ot_settings_flat_in_their_order(teacher):
    config = ot_loss(teacher, teacher, reg=0.1, cost=cosine_cost, cost_scale=None).get_config_dict()
    assert list(config)[1:9] == [
        "reg",
        "max_iter",
        "tol",
        "cost",
        "exclude_special_tokens",
        "center",
        "cost_scale",
        "solver",
    ]
    assert (config["reg"], config["cost"], config["cost_scale"]) == (0.1, "cosine_cost", None)


def test_config_dict_is_json_serialisable(teacher):
    model = build_optical_model(teacher)
    config = ot_loss(model, reg=0.1).get_config_dict()
    assert json.loads(json.dumps(config))["reg"] == 0.1


def test_unpadded_token_embeddings_raise(teacher, student):
    # FlashAttention-2 "unpadded" outputs are packed (total_tokens, d): the loss needs (B, n, d) and says how to get it
    loss = OTDistillationLoss(student, teacher=teacher)
    mask = torch.ones(2, 3, dtype=torch.long)
    packed, padded = torch.randn(6, 32), torch.randn(2, 3, 32)
    with pytest.raises(ValueError, match="attn_implementation"):
        loss.compute_loss_from_embeddings(*sides(packed, mask, padded, mask))
    with pytest.raises(ValueError, match="teacher's token embeddings have shape"):
        loss.compute_loss_from_embeddings(*sides(padded, mask, padded[:, :2], mask))
