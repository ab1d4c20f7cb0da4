"""The score-distillation recipe (``OT_SCORE``, ``optical-st train --recipe ot-score``): the pool a user gives, the
data and loss the recipe builds, and a run of the command that is killed, resumed and ends where an uninterrupted
one ends."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import toy_bitext
from sentence_transformers import SentenceTransformer
from test_train_command_inputs import SCRIPT, _pairs, _results, _train, _tsv, _weights

from optical_st import build_optical_model
from optical_st.cli import main
from optical_st.data.bitext import BitextError, load_texts
from optical_st.recipe import OT_SCORE, Recipe
from optical_st.sampling import TeacherCandidates
from optical_st.sampling.score_targets import frozen_teacher_encoder

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------------------
# the pool: a user's English text file, saved and loaded
# ------------------------------------------------------------------------------------------------------------------
def test_a_text_file_is_read_one_text_per_line(tmp_path):
    path = tmp_path / "english.txt"
    path.write_bytes("\ufeffIn the beginning\r\n\n  the word \u2028 was  \nlast".encode())
    assert load_texts(path) == ["In the beginning", "the word \u2028 was", "last"]  # BOM, CRLF, blanks; U+2028 text
    path.write_bytes("caf\xe9\n".encode("cp1252"))
    with pytest.raises(BitextError, match=r"line 1: byte 0xe9 is not utf-8 text.*--encoding"):
        load_texts(path)
    assert load_texts(path, "cp1252") == ["café"]
    with pytest.raises(BitextError, match="no such file"):
        load_texts(tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(BitextError, match="holds no text"):
        load_texts(tmp_path / "blank.txt")


def test_the_pool_is_saved_and_loaded_exactly(teacher, tmp_path):
    model = build_optical_model(teacher, train_word_embeddings=True)
    pool = TeacherCandidates.build(model, toy_bitext(20)["english"], show_progress_bar=False)
    pool.save(tmp_path / "pool")
    loaded = TeacherCandidates.load(tmp_path / "pool")
    assert loaded.texts == pool.texts and torch.equal(loaded.embeddings, pool.embeddings)


def test_a_bf16_pool_ranks_as_the_float32_pool(teacher):
    """bf16 autocast on the pool's encoding (the fast path on CPUs with AMX): the same texts, embeddings close to
    float32's. Oracle: the float32 encoding."""
    model = build_optical_model(teacher, train_word_embeddings=True)
    texts = toy_bitext(40)["english"]
    exact = TeacherCandidates.build(model, texts, show_progress_bar=False, compute_dtype="float32")
    fast = TeacherCandidates.build(model, texts, show_progress_bar=False, compute_dtype="bfloat16")
    assert fast.texts == exact.texts and fast.embeddings.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(fast.embeddings, exact.embeddings)
    assert cosine.min() > 0.99


# ------------------------------------------------------------------------------------------------------------------
# the recipe
# ------------------------------------------------------------------------------------------------------------------
def test_the_score_recipe_refuses_what_it_cannot_do(teacher):
    with pytest.raises(ValueError, match="num_negatives=0"):
        Recipe(score_weight=1.0, num_negatives=1)
    with pytest.raises(ValueError, match="cannot be negative"):
        Recipe(score_weight=-1.0, num_negatives=0)
    model = build_optical_model(teacher, train_word_embeddings=True)
    with pytest.raises(ValueError, match=r"candidates=recipe\.teacher_candidates"):
        OT_SCORE.loss(model)
    with pytest.raises(ValueError, match=r"candidates=recipe\.teacher_candidates"):
        OT_SCORE.prepare_dataset(toy_bitext(8), model, english_column="english", lrl_column="lrl")


def test_the_score_recipe_builds_its_data_and_loss(teacher):
    """The recipe's label: the teacher's query embedding of the English side, then the ids of its nearest pool
    texts other than its own (oracle: brute force over the pool); its loss is OT plus the score term."""
    model = build_optical_model(teacher, train_word_embeddings=True)
    bitext = toy_bitext(24)
    extra = ["a psalm of praise", "a song of ascents"]
    recipe = dataclasses.replace(OT_SCORE, num_candidates=4)
    pool = recipe.teacher_candidates(model, [*bitext["english"], *extra], compute_dtype="float32", verbose=False)
    assert pool.texts[-2:] == tuple(extra)
    data = recipe.prepare_dataset(bitext, model, candidates=pool)
    assert data.column_names == ["english", "lrl", "label"] and data["lrl"] == bitext["lrl"]
    labels = torch.tensor(data["label"])
    queries = frozen_teacher_encoder(model, progress=False)(list(bitext["english"]), "query")
    d = queries.shape[1]
    torch.testing.assert_close(labels[:, :d], queries)
    scores = queries @ pool.embeddings.T
    for row, english in enumerate(bitext["english"]):
        scores[row, pool.texts.index(english)] = -torch.inf  # its own English is the positive, not a candidate
    assert torch.equal(labels[:, d:].long(), scores.topk(4, dim=1).indices)
    loss = recipe.loss(model, candidates=pool)
    config = loss.get_config_dict()
    assert (config["score_weight"], config["contrastive_weight"], config["temperature"]) == (1.0, 0.0, 0.03)


def test_a_pool_smaller_than_the_candidates_gives_each_pair_the_rest_of_it(teacher, caplog):
    """Two pairs and no other English (the README's quickstart): each pair gets the one other text, with a warning,
    instead of an error about 15 candidates."""
    model = build_optical_model(teacher, train_word_embeddings=True)
    bitext = toy_bitext(2)
    pool = OT_SCORE.teacher_candidates(model, list(bitext["english"]), compute_dtype="float32", verbose=False)
    with caplog.at_level("WARNING", logger="optical_st.recipe"):
        data = OT_SCORE.prepare_dataset(bitext, model, candidates=pool)
    d = model.get_embedding_dimension()
    assert [row[d:] for row in data["label"]] == [[1.0], [0.0]]  # each pair's candidate: the other English text
    assert "1 candidates per pair instead of 15" in caplog.text


# ------------------------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------------------------
def test_the_pool_never_holds_a_held_out_text(spm_teacher, tmp_path):
    rows = _pairs(40)
    data = _tsv(tmp_path / "pairs.tsv", rows[:30])
    held = _tsv(tmp_path / "held.tsv", rows[30:])
    extra = tmp_path / "more_english.txt"
    # two new texts, two held-out pairs' English, one training pair's English (encoded once)
    lines = ["a psalm of praise", rows[31][1], "a song of ascents", rows[35][1], rows[0][1]]
    extra.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    argv = _train(spm_teacher, out, data, "--recipe", "ot-score", "--eval-file", str(held), "--english-pool",
                  str(extra), "--num-candidates", "3", "--max-steps", "2")  # fmt: skip
    assert main(argv) == 0
    result = _results(out)
    pool = result["data"]["english_pool"]
    assert (pool["extra_texts"], pool["held_out_texts_left_out"], pool["distinct_texts"]) == (3, 2, 32)
    assert result["recipe"]["score_weight"] == 1.0 and result["recipe"]["num_candidates"] == 3
    assert result["data"]["train_columns"] == ["english", "lrl", "label"]
    assert "score_weight" in (out / "README.md").read_text()  # the card shows the loss's settings


def test_pool_options_need_the_score_recipe(tmp_path, capsys):
    argv = ["train", "--train-file", "x.tsv", "--english-column", "e", "--lrl-column", "l", "--output-dir",
            str(tmp_path / "o"), "--recipe", "ot-infonce", "--english-pool", "more.txt"]  # fmt: skip
    assert main(argv) == 2
    assert "--recipe ot-score" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_killed_score_run_resumes_with_its_pool_and_ends_with_the_uninterrupted_model(spm_teacher, tmp_path):
    data = _tsv(tmp_path / "pairs.tsv", _pairs(32))
    extra = tmp_path / "more_english.txt"
    extra.write_text("a psalm of praise\na song of ascents\nthe law of the lord\n")
    common = ("--max-steps", "4", "--batch-size", "4", "--save-steps", "2", "--eval-fraction", "0.25",
              "--recipe", "ot-score", "--english-pool", str(extra), "--num-candidates", "3")  # fmt: skip
    reference = tmp_path / "reference"
    assert main(_train(spm_teacher, reference, data, *common)) == 0

    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPTICAL_TEST_KILL_AT": "3", "PYTHONPATH": str(ROOT)}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    killed = subprocess.run([sys.executable, str(SCRIPT), *_train(spm_teacher, out, data, *common)], env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    pool = out / "checkpoints" / "english_pool"
    assert json.loads((pool / "texts.json").read_text())[-3:] == ["a psalm of praise", "a song of ascents",
                                                                  "the law of the lord"]  # fmt: skip
    # a changed pool file does not change the resumed run: it reads the pool it encoded
    extra.write_text("something else entirely\n")
    assert main(_train(spm_teacher, out, data, *common, "--resume-from-checkpoint")) == 0
    resumed, expected = _results(out), _results(reference)
    assert resumed["steps"] == expected["steps"] == 4 and resumed["results"] == expected["results"]
    got, want = _weights(out), _weights(reference)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_the_loaded_student_reads_queries_as_trained(spm_teacher, tmp_path):
    """A saved score-recipe model loads as a plain SentenceTransformer: queries through the student."""
    out = tmp_path / "run"
    assert main(_train(spm_teacher, out, _tsv(tmp_path / "p.tsv", _pairs(24)), "--recipe", "ot-score",
                       "--num-candidates", "2", "--eval-fraction", "0")) == 0  # fmt: skip
    model = SentenceTransformer(str(out), device="cpu")
    assert model.encode_query(["mulungu"]).shape == model.encode_document(["god"]).shape
