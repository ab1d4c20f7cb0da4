"""An on-disk cache for embeddings of frozen encoders.

OPTICAL never changes its teacher, so the teacher's embeddings of an English corpus are the same for every method,
seed and run that uses that teacher and that corpus. :class:`EmbeddingCache` stores them once per (encoder weights,
route, prompts, texts) and hands them back afterwards, so evaluating a trained student costs only its queries.

The key is a digest of everything that decides the embeddings: the modules the route runs (their types, configs and
every byte of every tensor of their state), the model's prompts and the texts, and two models with the same weights
(the zero-shot model and the teacher route built from it) share entries. Hashing every byte of a model is slow, so
a module's digest is kept while its tensors look unchanged (:func:`optical_st.fingerprints.weights_signature`: same
storage, same version counters, which see optimizer steps, ``load_state_dict`` and the other in-place changes PyTorch
tracks, and same position-weighted float32 sum of each tensor's values, which sees writes through ``.data``: scaling,
an EMA step, overwriting or swapping rows). The one change that could go unseen is a ``.data`` write too small to move
that sum in float32; call :meth:`EmbeddingCache.forget_weights` after such surgery. Entries are
written to a temporary file and renamed into place, so concurrent runs never read a half-written file (two writers of
one entry write the same bytes; the last rename wins).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from optical_st.fingerprints import DigestMemo, hash_tensors, hash_texts, tokenizer_spec
from optical_st.routes import encoding_modules, module_state
from optical_st.utils import default_cache_dir

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingCache", "document_key"]


class EmbeddingCache:
    """Embeddings of (model route, prompts, texts) on disk, keyed by content. Changed weights give a new key (see the
    module docstring for the one ``.data`` write that needs :meth:`forget_weights`).

    Args:
        folder: where entries live; default ``<optical_st cache>/embeddings`` (``$OPTICAL_ST_CACHE``, else
            ``~/.cache/optical_st``).

    Example::

        >>> from optical_st.evaluation import EmbeddingCache
        >>> cache = EmbeddingCache("runs/cache")  # doctest: +SKIP
        >>> docs = cache.encode(model, corpus, route="document",  # doctest: +SKIP
        ...                     compute=lambda texts: model.encode_document(texts, convert_to_tensor=True))
    """

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir() / "embeddings"
        self.hits = 0
        self.misses = 0
        self._digests = DigestMemo()  # hashing every byte of ~100M weights is slow: kept while they look unchanged

    def forget_weights(self) -> None:
        """Hash every module's weights anew at the next call (see the module docstring for when that is needed)."""
        self._digests.clear()

    def _module_digest(self, module: nn.Module) -> str:
        # an adapter model's document route reports its base: it shares the base model's entries
        name, config, state = module_state(module)

        def compute() -> str:
            h = hashlib.blake2b(digest_size=16)
            h.update(name.encode())
            h.update(json.dumps(config, sort_keys=True, default=str).encode())
            hash_tensors(h, state)
            spec = tokenizer_spec(getattr(module, "tokenizer", None))  # what splits texts into ids
            if spec is not None:
                h.update(json.dumps(spec).encode())
            return h.hexdigest()

        return self._digests.get(module, state, compute)

    def route_digest(self, model: nn.Module, route: str | None) -> str:
        """A digest of what ``route`` of ``model`` computes: the types, configs, weights and tokenizers of the modules
        ``encode_query`` / ``encode_document`` run (prompts aside). Equal for the same encoder in another model: an
        OPTICAL model's document route and the plain teacher it was built from, or two students of one teacher."""
        h = hashlib.blake2b(digest_size=16)
        for module in encoding_modules(model, route):
            h.update(self._module_digest(module).encode())
        return h.hexdigest()

    def key(self, model: nn.Module, route: str | None, texts: Sequence[str], **encode_kwargs: Any) -> str:
        """The entry's name: a digest of the route's modules, the model's prompts, the encode arguments and texts."""
        h = hashlib.blake2b(digest_size=20)
        for module in encoding_modules(model, route):
            h.update(self._module_digest(module).encode())
        prompts = {"prompts": getattr(model, "prompts", None), "default": getattr(model, "default_prompt_name", None)}
        h.update(json.dumps({"route": route, **prompts, **encode_kwargs}, sort_keys=True, default=str).encode())
        hash_texts(h, texts)
        return h.hexdigest()

    def encode(
        self,
        model: nn.Module,
        texts: Sequence[str],
        *,
        route: str | None,
        compute: Callable[[list[str]], Tensor],
        **encode_kwargs: Any,
    ) -> Tensor:
        """The cached embeddings of ``texts``, or ``compute(texts)`` stored for next time.

        ``encode_kwargs`` (prompt, normalisation, ...) are part of the key; they are not passed to ``compute``.
        """
        texts = list(texts)
        path = self.folder / f"{self.key(model, route, texts, **encode_kwargs)}.pt"
        if path.exists():
            try:
                embeddings = torch.load(path, map_location="cpu", weights_only=True)
                if embeddings.shape[0] == len(texts):
                    self.hits += 1
                    return embeddings
            except Exception as err:  # a truncated or foreign file: recompute and overwrite it
                logger.warning("Ignoring unreadable embedding cache entry %s (%s)", path, err)
        self.misses += 1
        embeddings = compute(texts)
        self._store(path, embeddings)
        return embeddings

    def _store(self, path: Path, embeddings: Tensor) -> None:
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", dir=path.parent)
            with os.fdopen(fd, "wb") as handle:
                torch.save(embeddings.detach().cpu(), handle)
            os.replace(tmp, path)
            tmp = None
        except OSError as err:  # a read-only or full disk costs speed, never the evaluation
            logger.warning("Could not write embedding cache entry %s: %s", path, err)
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def document_key(
    model: Any, *, truncate_dim: int | None = None, prompt: str | None = None, prompt_name: str | None = None
) -> dict[str, Any]:
    """The cache key arguments of ``model.encode_document`` embeddings (with route ``"document"``): one for every
    evaluator that reads a corpus, so one encoding of it serves the retrieval metrics and the ranking agreement."""
    length = getattr(model, "max_seq_length", None)  # texts are truncated to it
    return {"prompt": prompt, "prompt_name": prompt_name, "truncate_dim": truncate_dim, "max_seq_length": length}
