"""Shared fixtures: tiny randomly initialised BERT encoders built on disk, never downloaded."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import string
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from transformers import BertConfig, BertModel, BertTokenizerFast

from optical_st import router_mapping

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ENGLISH_WORDS = [
    "the",
    "god",
    "and",
    "earth",
    "light",
    "water",
    "is",
    "love",
    "created",
    "heavens",
    "in",
    "beginning",
    "was",
    "good",
    "day",
    "night",
]
LRL_WORDS = [
    "mulungu",
    "ndi",
    "dziko",
    "kuyera",
    "madzi",
    "chikondi",
    "adalenga",
    "kumwamba",
    "pachiyambi",
    "kunali",
    "kwabwino",
    "tsiku",
    "usiku",
]

# (english, lrl) pairs: small but with repeated words so a few steps of training can move the loss
PAIRS = [
    ("in the beginning god created the heavens and the earth", "pachiyambi mulungu adalenga kumwamba ndi dziko"),
    ("god is love", "mulungu ndi chikondi"),
    ("the light was good", "kuyera kunali kwabwino"),
    ("the water and the earth", "madzi ndi dziko"),
    ("day and night", "tsiku ndi usiku"),
    ("god created the light", "mulungu adalenga kuyera"),
    ("the heavens and the water", "kumwamba ndi madzi"),
    ("the day was good", "tsiku kunali kwabwino"),
]


def toy_bitext(n: int = 48, seed: int = 0) -> Dataset:
    """``n`` distinct (english, lrl) pairs: random word sequences and their word-by-word "translation" (a few
    English words share an LRL word, so some LRL anchors repeat with different English positives)."""
    rng = random.Random(seed)
    lexicon = dict(zip(ENGLISH_WORDS, itertools.cycle(LRL_WORDS)))
    pairs: dict[str, str] = {}
    while len(pairs) < n:
        words = rng.sample(ENGLISH_WORDS, rng.randint(3, 6))
        pairs.setdefault(" ".join(words), " ".join(lexicon[w] for w in words))
    return Dataset.from_dict({"english": list(pairs), "lrl": list(pairs.values())})


def write_tiny_bert(
    path: Path, hidden: int = 32, words: list[str] | None = None, seed: int = 0, lowercase: bool = True
) -> Path:
    """A 2-layer BERT with a word + character vocabulary (no [UNK] for lowercase ascii text)."""
    words = words if words is not None else ENGLISH_WORDS + LRL_WORDS
    letters = list(string.ascii_lowercase)
    vocab = SPECIALS + letters + [f"##{c}" for c in letters] + list(dict.fromkeys(words))
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab))
    BertTokenizerFast(str(path / "vocab.txt"), do_lower_case=lowercase).save_pretrained(str(path))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(str(path))
    return path


def tiny_sentence_transformer(path: Path, hidden: int = 32, **kwargs) -> SentenceTransformer:
    if not (path / "config.json").exists():
        write_tiny_bert(path, hidden=hidden, **kwargs)
    return SentenceTransformer(modules=[Transformer(str(path)), Pooling(hidden)], device="cpu")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "teacher": write_tiny_bert(root / "teacher", hidden=32, seed=0),
        "student": write_tiny_bert(root / "student", hidden=32, seed=1),
        # different vocabulary and width: a "multilingual" student for the teacher
        "wide_student": write_tiny_bert(root / "wide_student", hidden=48, words=[*LRL_WORDS, "xyz"], seed=2),
    }


@pytest.fixture
def teacher(tiny_dirs) -> SentenceTransformer:
    return tiny_sentence_transformer(tiny_dirs["teacher"])


@pytest.fixture
def student(tiny_dirs) -> SentenceTransformer:
    return tiny_sentence_transformer(tiny_dirs["student"])


@pytest.fixture
def wide_student(tiny_dirs) -> SentenceTransformer:
    return tiny_sentence_transformer(tiny_dirs["wide_student"], hidden=48)


@pytest.fixture
def bitext() -> Dataset:
    english, lrl = zip(*PAIRS, strict=True)
    return Dataset.from_dict({"english": list(english), "lrl": list(lrl)})


def features_for(model: SentenceTransformer, dataset: Dataset, mapping: dict | None = None) -> list[dict]:
    """Every column of ``dataset`` as one batch, tokenized the way the trainer's collator does it (routed columns
    carry their ``task``)."""
    feats = []
    for column in dataset.column_names:
        task = (mapping or {}).get(column)
        f = model.preprocess(dataset[column], task=task) if task else model.preprocess(dataset[column])
        if task:
            f["task"] = task
        feats.append(f)
    return feats


def make_training_args(
    tmp_path: Path, dataset: Dataset | None = None, **kwargs
) -> SentenceTransformerTrainingArguments:
    """Short CPU training runs for tests: no saving, no reporting, a log line per step; routes from ``dataset``."""
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_train_epochs=1,
        learning_rate=5e-3,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        use_cpu=True,
    )
    if dataset is not None:
        defaults["router_mapping"] = router_mapping(dataset)
    return SentenceTransformerTrainingArguments(**{**defaults, **kwargs})


def state_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, by name: equal digests across ranks mean identical replicas."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def leave_process_group() -> None:
    """End of a multi-process test script: leave together. A rank that exits while another still talks gloo can
    abort at shutdown (SIGABRT), failing the launch after the work is done."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="session")
def spm_teacher(tmp_path_factory) -> Path:
    """A tiny BERT with a SentencePiece-like tokenizer (Metaspace pieces, ``<s> ... </s>``) and e5's prompts: it reads
    ``"query: "`` + ``"-"`` as multilingual-e5's does (the prompt's last piece takes the text's only one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("spm_teacher")
    pieces = [(t, 0.0) for t in ("<s>", "<pad>", "</s>", "<unk>")]
    pieces += [("▁", -3.0), (":", -3.0), ("-", -4.0), ("▁-", -3.0), (".", -3.0)]
    pieces += [(c, -6.0) for c in string.ascii_lowercase] + [("▁" + c, -6.0) for c in string.ascii_lowercase]
    pieces += [("▁" + w, -2.0) for w in dict.fromkeys([*ENGLISH_WORDS, *LRL_WORDS, "query", "passage"])]
    spm = Tokenizer(models.Unigram(pieces, unk_id=3))
    spm.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    spm.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    names = {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>"}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=spm, unk_token="<unk>", pad_token="<pad>", **names)
    tokenizer.save_pretrained(str(root / "hf"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(pieces), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=1)  # fmt: skip
    BertModel(config).save_pretrained(str(root / "hf"))
    model = SentenceTransformer(modules=[Transformer(str(root / "hf")), Pooling(32)], device="cpu")
    model.prompts = {"query": "query: ", "document": "passage: "}
    model.save_pretrained(str(root / "st"))
    return root / "st"
