"""Digests of what decides an output: a module's tensors, a tokenizer's rules, a list of texts, and whether weights
changed since they were hashed. The teacher cache (:class:`~optical_st.TeacherCache`), the embedding cache
(:class:`~optical_st.evaluation.EmbeddingCache`), the hard-negative checkpoints and :func:`~optical_st.same_tokenizer`
all hash through these, so each is defined once."""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DigestMemo",
    "hash_tensors",
    "hash_texts",
    "tensors_digest",
    "tokenizer_spec",
    "weights_signature",
    "weights_versions",
]


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


def tensors_digest(tensors: Mapping[str, Any]) -> str:
    """A hex digest of every byte of ``tensors`` (:func:`hash_tensors`, names, dtypes and shapes included)."""
    digest = hashlib.blake2b(digest_size=16)
    hash_tensors(digest, tensors)
    return digest.hexdigest()


def weights_versions(tensors: Iterable[Any]) -> tuple[tuple[int, int], ...]:
    """``(storage address, version counter)`` of every tensor. PyTorch bumps a tensor's version on every in-place
    change it tracks (``load_state_dict``, optimizer steps, ``p.mul_(...)``), so an equal tuple means unchanged
    weights, except for writes through ``.data`` or to the raw storage, which no version counter sees. Reads no tensor:
    cheap enough for every batch, and no wait for the device."""
    return tuple((t.data_ptr(), t._version) for t in tensors if torch.is_tensor(t))


def _weighted_sums(tensors: Iterable[Tensor]) -> bytes:
    """Each tensor's values summed with weights that grow along its rows and along its columns, in float32, as
    bytes: scaling, shifting, overwriting or permuting rows or columns moves it. One pass over the weights, a host
    copy of one number per tensor."""
    sums = []
    with torch.no_grad():
        for tensor in tensors:
            if tensor.numel() == 0:
                continue
            x = tensor.detach()
            x = (x.reshape(-1, x.shape[-1]) if x.dim() >= 2 else x.reshape(-1, 1)).float()
            rows = torch.linspace(1.0, 2.0, x.shape[0], device=x.device)
            cols = torch.linspace(1.0, 2.0, x.shape[1], device=x.device)
            sums.append(rows @ (x @ cols))
    return torch.stack(sums).cpu().numpy().tobytes() if sums else b""


def weights_signature(tensors: Iterable[Any]) -> tuple[tuple[tuple[int, int], ...], bytes]:
    """What tells changed weights from unchanged ones: :func:`weights_versions` (optimizer steps, ``load_state_dict``
    and the other in-place changes PyTorch tracks) and a position-weighted float32 sum of each tensor's values, which
    sees writes through ``.data`` too (scaling, an EMA step, overwriting or swapping rows). The one change it can miss
    is a ``.data`` write too small to move that sum in float32. One pass over the weights."""
    tensors = [t for t in tensors if torch.is_tensor(t)]
    return weights_versions(tensors), _weighted_sums(tensors)


class DigestMemo:
    """A digest per module, kept while the module's weights keep their :func:`weights_signature`: hashing every byte
    of ~100M weights is slow, checking the signature is one pass. Both caches keyed by weights use it, each with its
    own notion of what else the digest covers (``compute``)."""

    def __init__(self) -> None:
        # id(module) -> (weak reference, signature, digest): the weak reference tells a live module from a new one
        # that reuses a freed module's id (and memory)
        self._memo: dict[int, tuple[weakref.ref, tuple, str]] = {}

    def get(self, module: Any, tensors: Mapping[str, Any], compute: Callable[[], str]) -> str:
        """``module``'s digest: the one computed before while ``tensors`` (what it runs) look unchanged, else
        ``compute()``, remembered."""
        signature = weights_signature(tensors.values())
        memo = self._memo.get(id(module))
        if memo is not None and memo[0]() is module and memo[1] == signature:
            return memo[2]
        digest = compute()
        self._memo[id(module)] = (weakref.ref(module), signature, digest)
        return digest

    def clear(self) -> None:
        """Compute every digest anew at the next call."""
        self._memo.clear()
