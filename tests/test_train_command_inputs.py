"""``optical-st train`` with the files and runs users have: it never inflates a score, loses a run or overwrites one.

One test per case of the issue, through the command itself, with a tiny teacher whose SentencePiece-like tokenizer
reads ``"query: "`` + ``"-"`` as multilingual-e5's does (the prompt's last piece takes the text's only one).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import toy_bitext
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from optical_st.cli import build_parser, main
from optical_st.transport import special_tokens_mask

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "killable_train.py"


def _pairs(n: int = 40) -> list[tuple[str, str]]:
    data = toy_bitext(n)
    return list(zip(data["lrl"], data["english"], strict=True))


def _tsv(path: Path, rows: list[tuple[str, str]], encoding: str = "utf-8") -> Path:
    text = "\n".join("\t".join(row) for row in [("swahili", "english"), *rows]) + "\n"
    path.write_text(text, encoding=encoding)
    return path


def _train(teacher: Path, out: Path, data: Path, *extra: str) -> list[str]:
    return ["train", "--teacher", str(teacher), "--output-dir", str(out), "--train-file", str(data),
            "--english-column", "english", "--lrl-column", "swahili", "--max-steps", "1", "--batch-size", "8",
            "--max-seq-length", "32", *extra]  # fmt: skip


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


# ------------------------------------------------------------------------------------------------------------------
# 0. a text that is only the prompt once tokenized
# ------------------------------------------------------------------------------------------------------------------
def test_a_text_that_is_only_the_prompt_once_tokenized_is_named_before_training(spm_teacher, tmp_path, capsys):
    rows = _pairs(16)
    rows[3] = ("-", rows[3][1])  # file line 5: a lone "-" verse; "query: -" is <s> ▁query : ▁- </s>
    rows[9] = ("-", rows[9][1])
    data = _tsv(tmp_path / "pairs.tsv", rows)
    argv = _train(spm_teacher, tmp_path / "run", data, "--eval-fraction", "0", "--max-steps", "2")
    assert main(argv) == 2  # was: sinkhorn's "a row of the batch is empty" in the middle of training
    error = capsys.readouterr().err
    assert "line 5, column 'swahili': only the prompt 'query: ' once tokenized" in error and "line 11" in error
    assert not (tmp_path / "run").exists()
    assert main([*argv, "--skip-bad-rows"]) == 0
    data = _results(tmp_path / "run")["data"]
    assert (data["train_pairs"], data["bad_pairs_skipped"]) == (14, 2)  # results.json says what was left out


def test_the_row_check_reads_texts_as_the_models_own_preprocessing_does(spm_teacher):
    """Oracle: the model's own preprocessing with the prompt (what the collator runs) and the special-token mask
    the OT loss applies."""
    from optical_st.data.rows import TextColumn, find_bad_rows

    model = SentenceTransformer(str(spm_teacher), device="cpu")
    texts = ["-", "mulungu", "mulungu ndi", "- -", "god.", "<s>", "madzi</s>", ":", "x"]
    for prompt, max_length in (("query: ", 32), ("", 32), ("query: ", 6)):
        features = model.preprocess(texts, prompt=prompt or None, max_length=max_length)
        tokenizer = model.tokenizer
        special = sorted(set(tokenizer.all_special_ids) - {tokenizer.unk_token_id})
        mask = features["attention_mask"].bool() & ~special_tokens_mask(
            features["input_ids"], special, features.get("prompt_length")
        )
        expected = [i for i, row in enumerate(mask) if not row.any()]
        column = TextColumn("lrl", tokenizer, prompt=prompt, max_length=max_length)
        found = [row for row, _, _ in find_bad_rows({"lrl": texts}, [column])]
        assert found == expected, (prompt, max_length, found, expected)
        assert (prompt == "") == (0 not in expected)  # the lone "-" is empty only after the prompt


# ------------------------------------------------------------------------------------------------------------------
# 1, 2. held-out hygiene
# ------------------------------------------------------------------------------------------------------------------
def test_repeated_pairs_never_straddle_the_held_out_split(spm_teacher, tmp_path):
    rows = _pairs(40) * 3  # each pair three times
    out = tmp_path / "run"
    assert main(_train(spm_teacher, out, _tsv(tmp_path / "pairs.tsv", rows), "--eval-fraction", "0.25")) == 0
    data = _results(out)["data"]
    # was: 120 pairs, 90 trained and 30 held out, 27 of them also trained on
    assert (data["train_pairs"], data["eval_pairs"], data["duplicate_pairs_dropped"]) == (30, 10, 80)
    assert data["held_out_overlap"] == {"pairs": 0, "english_texts": 0, "lrl_texts": 0, "dropped": False}
    assert "25% held out (seed 0), 10 pairs" in (out / "README.md").read_text()  # the card's held-out size


def test_a_held_out_file_that_overlaps_the_training_file_is_refused_or_dropped(spm_teacher, tmp_path, capsys):
    rows = _pairs(40)
    train = _tsv(tmp_path / "train.tsv", rows[:30])
    same = _tsv(tmp_path / "same.tsv", rows[:30])
    assert main(_train(spm_teacher, tmp_path / "a", train, "--eval-file", str(same))) == 2
    error = capsys.readouterr().err
    assert "30 of its 30 held-out pairs are also training pairs (e.g. line 2)" in error
    assert "--drop-eval-overlap" in error and not (tmp_path / "a").exists()
    overlapping = _tsv(tmp_path / "held.tsv", rows[25:40])  # 5 training pairs, 10 new ones
    argv = _train(spm_teacher, tmp_path / "b", train, "--eval-file", str(overlapping), "--drop-eval-overlap")
    assert main(argv) == 0
    data = _results(tmp_path / "b")["data"]
    assert data["eval_pairs"] == 10 and data["held_out_overlap"]["pairs"] == 5 and data["held_out_overlap"]["dropped"]
    assert "train.tsv, held-out file held.tsv, 10 pairs" in (tmp_path / "b" / "README.md").read_text()
    # every held-out pair is a training pair: nothing left to evaluate on
    assert main(_train(spm_teacher, tmp_path / "c", train, "--eval-file", str(same), "--drop-eval-overlap")) == 2
    assert "nothing is left to evaluate on" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------------
# 3, 4, 8, 9. files as users have them
# ------------------------------------------------------------------------------------------------------------------
def test_a_file_that_is_not_utf8_is_named_with_the_fix_or_read_with_encoding(spm_teacher, tmp_path, capsys):
    rows = _pairs(12)
    rows[4] = ("mulungu ndi chikondi café", rows[4][1])  # é in latin-1: byte 0xe9, line 6
    data = _tsv(tmp_path / "latin1.tsv", rows, encoding="latin-1")
    assert main(_train(spm_teacher, tmp_path / "a", data)) == 2  # was: a UnicodeDecodeError traceback
    error = capsys.readouterr().err
    assert "latin1.tsv, line 6: byte 0xe9 is not utf-8 text" in error and "--encoding" in error
    assert main(_train(spm_teacher, tmp_path / "b", data, "--encoding", "latin-1", "--eval-fraction", "0")) == 0


def test_a_utf8_file_with_a_byte_order_mark_is_read(spm_teacher, tmp_path):
    data = _tsv(tmp_path / "excel.tsv", _pairs(12), encoding="utf-8-sig")  # Excel's "CSV UTF-8" starts with a BOM
    assert data.read_bytes().startswith(b"\xef\xbb\xbfswahili")
    out = tmp_path / "run"
    assert (
        main(_train(spm_teacher, out, data, "--eval-fraction", "0")) == 0
    )  # was: no column 'swahili' ('\ufeffswahili')
    assert _results(out)["data"]["train_columns"][:2] == ["english", "swahili"]


def test_the_same_text_in_both_columns_is_an_error_past_a_share_and_a_warning_below(
    spm_teacher, tmp_path, capsys, caplog
):
    rows = _pairs(20)
    slipped = [(english, english) if i % 2 else (lrl, english) for i, (lrl, english) in enumerate(rows)]
    data = _tsv(tmp_path / "slip.tsv", slipped)
    assert main(_train(spm_teacher, tmp_path / "a", data)) == 2  # half the rows: a column pasted twice
    error = capsys.readouterr().err
    assert "10 row(s) that cannot be trained on (line 3, column 'swahili': the same text as column 'english'" in error
    assert main(_train(spm_teacher, tmp_path / "b", data, "--skip-bad-rows", "--eval-fraction", "0")) == 0
    assert _results(tmp_path / "b")["data"]["train_pairs"] == 10
    rows[7] = (rows[7][1], rows[7][1])  # one in 20: a name, a number... kept, with a warning naming it
    assert main(_train(spm_teacher, tmp_path / "c", _tsv(tmp_path / "one.tsv", rows), "--eval-fraction", "0")) == 0
    assert "1 pair(s) have the same text in both columns (line 9)" in caplog.text


def test_a_very_long_line_is_read(spm_teacher, tmp_path):
    rows = _pairs(12)
    # a 300 kB field (the was 2 MB; each tokenization of it costs time): the csv module's limit is 128 KiB
    rows[5] = (rows[5][0], "god is love " * 25_000)
    data = _tsv(tmp_path / "long.tsv", rows)
    assert data.stat().st_size > 300_000
    out = tmp_path / "run"
    assert main(_train(spm_teacher, out, data, "--eval-fraction", "0")) == 0  # was: "field larger than field limit"
    assert _results(out)["data"]["train_pairs"] == 12


# ------------------------------------------------------------------------------------------------------------------
# 5, 6. the output folder and the arguments
# ------------------------------------------------------------------------------------------------------------------
def test_a_second_run_never_overwrites_the_first_unless_asked(spm_teacher, tmp_path, capsys):
    data = _tsv(tmp_path / "pairs.tsv", _pairs(16))
    out = tmp_path / "run"
    assert main(_train(spm_teacher, out, data, "--eval-fraction", "0")) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    missing = tmp_path / "no-such-teacher"  # refused before any model loads
    assert main(_train(missing, out, data, "--eval-fraction", "0", "--seed", "1")) == 2
    error = capsys.readouterr().err
    assert "is not empty" in error and "--overwrite-output-dir" in error
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main(_train(spm_teacher, out, data, "--eval-fraction", "0", "--seed", "1", "--overwrite-output-dir")) == 0
    assert _results(out)["data"]["train_pairs"] == 16


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--batch-size", "0", "--batch-size: must be an integer >= 1, got '0'"),
        ("--eval-fraction", "1", "--eval-fraction: must be a finite number >= 0 and < 1, got '1'"),
        ("--eval-fraction", "-0.1", "--eval-fraction: must be a finite number >= 0 and < 1"),
        ("--learning-rate", "-1e-5", "--learning-rate: must be a finite number > 0"),
        ("--learning-rate", "nan", "--learning-rate: must be a finite number > 0"),
        ("--max-seq-length", "0", "--max-seq-length: must be an integer >= 3"),
        ("--num-train-epochs", "0", "--num-train-epochs: must be a finite number > 0"),
        ("--max-steps", "0", "--max-steps: must be an integer >= 1 (or -1: the epochs decide)"),
        ("--max-train-samples", "0", "--max-train-samples: must be an integer >= 1"),
        ("--save-steps", "-5", "--save-steps: must be an integer >= 0"),
        ("--seed", "-1", "--seed: must be an integer >= 0"),
        ("--encoding", "utf-9", "unknown encoding 'utf-9'"),
        ("--hub-model-id", "optical-swahili", "must be 'namespace/name'"),
    ],
)
def test_impossible_settings_stop_the_parser_with_the_fix(tmp_path, capsys, flag, value, message):
    argv = _train(tmp_path / "no-such-teacher", tmp_path / "run", tmp_path / "no-such.tsv", f"{flag}={value}")
    with pytest.raises(SystemExit) as stopped:  # was, for --batch-size 0: a ValueError after the models loaded
        main(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_settings_that_need_others_stop_before_anything_is_read(tmp_path, capsys):
    argv = _train(tmp_path / "no-such-teacher", tmp_path / "run", tmp_path / "no-such.tsv", "--push-to-hub")
    assert main(argv) == 2
    assert "--push-to-hub needs --hub-model-id" in capsys.readouterr().err


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    shown = capsys.readouterr().out
    assert "optical_st.recipe.RECOMMENDED" in shown and "--resume-from-checkpoint" in shown
    assert ":data:" not in shown and "``" not in shown and ":class:" not in shown


# ------------------------------------------------------------------------------------------------------------------
# 7. checkpoints and resume: a run killed with SIGKILL and resumed ends where an uninterrupted one ends
# ------------------------------------------------------------------------------------------------------------------
def _weights(out: Path) -> dict[str, torch.Tensor]:
    return {f"{p.relative_to(out)}:{k}": v for p in sorted(out.rglob("*.safetensors")) for k, v in load_file(p).items()}


def test_a_killed_run_resumes_and_ends_with_the_uninterrupted_model(spm_teacher, tmp_path):
    data = _tsv(tmp_path / "pairs.tsv", _pairs(32))
    common = ("--max-steps", "4", "--batch-size", "4", "--save-steps", "2", "--eval-fraction", "0.25")
    reference = tmp_path / "reference"
    assert main(_train(spm_teacher, reference, data, *common)) == 0

    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPTICAL_TEST_KILL_AT": "3", "PYTHONPATH": str(ROOT)}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the same arithmetic as this process's
    killed = subprocess.run([sys.executable, str(SCRIPT), *_train(spm_teacher, out, data, *common)], env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "results.json").exists()
    # a new run there is refused (it would overwrite the interrupted one), naming the way to resume
    assert main(_train(spm_teacher, out, data, *common)) == 2
    # other settings are refused too: the checkpoint belongs to the run that wrote it
    assert main(_train(spm_teacher, out, data, *common, "--learning-rate", "1e-3", "--resume-from-checkpoint")) == 2

    assert main(_train(spm_teacher, out, data, *common, "--resume-from-checkpoint")) == 0
    resumed, expected = _results(out), _results(reference)
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == expected["steps"] == 4
    assert resumed["results"] == expected["results"]  # the zero-shot and trained rows, exactly
    got, want = _weights(out), _weights(reference)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)  # exactly, on CPU
    assert not (out / "checkpoints").exists() and not (reference / "checkpoints").exists()  # superseded, not pushed
