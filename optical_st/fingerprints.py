"""Digests of what decides an output: a module's tensors, a tokenizer's rules, a list of texts. The teacher cache
(:class:`~optical_st.TeacherCache`), the embedding cache (:class:`~optical_st.evaluation.EmbeddingCache`), the
hard-negative checkpoints and :func:`~optical_st.same_tokenizer` all hash through these, so each is defined once."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["hash_tensors", "hash_texts", "tokenizer_spec"]


def hash_tensors(digest: Any, tensors: Mapping[str, Any], sample: int | None = None) -> None:
    """Feed ``tensors`` (by name, sorted) into the ``hashlib`` object ``digest``: each tensor's name, dtype and shape,
    then every byte of its values, or with ``sample`` that many evenly strided values as float32 (cheap: no copy of a
    large embedding matrix, and still different for other or fine-tuned weights). Non-tensors are skipped."""
    with torch.no_grad():
        for name, tensor in sorted(tensors.items()):
            if not torch.is_tensor(tensor):
                continue
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            flat = tensor.detach().reshape(-1)
            if sample is None:
                digest.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
            elif flat.numel():
                digest.update(flat[:: max(1, flat.numel() // sample)].float().cpu().numpy().tobytes())


def hash_texts(digest: Any, *groups: Iterable[str]) -> None:
    """Feed groups of texts into ``digest``: each group's size, then its texts, each ended by ``\\x1f``, so no two
    different lists (or splits into groups) feed the same bytes."""
    for group in groups:
        group = list(group)
        digest.update(str(len(group)).encode())
        for text in group:
            digest.update(text.encode("utf-8", "surrogatepass"))
            digest.update(b"\x1f")


def tokenizer_spec(tokenizer: Any) -> dict[str, Any] | None:
    """A fast tokenizer's rules as a dict (normalizer, pre-tokenizer, model, added tokens, post-processor, ...),
    without the truncation and padding state that every tokenizer call rewrites; ``None`` for a slow tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    return {k: v for k, v in spec.items() if k not in ("truncation", "padding")}
