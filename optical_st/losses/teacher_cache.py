"""The frozen teacher's outputs, computed once per distinct input and reused: :class:`TeacherCache`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from optical_st.fingerprints import DigestMemo, tensors_digest
from optical_st.routes import module_state

__all__ = ["TeacherCache"]


class TeacherCache:
    """The frozen teacher's outputs (token embeddings and pooled embedding) for every distinct token sequence it has
    encoded, so that later steps, epochs and losses read them instead of running the teacher again.

    The teacher of OPTICAL never trains, so its output for a given English text never changes; only the student has
    to run every step. Give one cache to every loss that shares a teacher (several methods, seeds or epochs over the
    same English texts): the first pass fills it, later passes skip the teacher's forward, a sizeable share of a
    training step, more so with hard-negative columns (the teacher reads the English side *and* the negatives; the
    demo's measurement is in docs/demo_tuning.md). Hard negatives mined from the training pairs' own English side are cache hits too.

    Entries are keyed by the token ids inside the attention mask, so a text is found whatever it is padded to in a
    batch; outputs agree with an uncached run up to float rounding (the teacher then sees other padding). The cache
    records the teacher's weights (a digest of every byte) at first use and raises a ``ValueError`` if a loss with a
    different teacher uses it, or if the teacher of a loss that used it changed since. The contract, exactly: at its
    first batch with the cache, and before every later batch whose teacher's version counters moved since its last
    check (``load_state_dict``, optimizer steps and other in-place changes PyTorch tracks), each loss compares the
    teacher's weights with the recorded ones, through the same change detection as the embedding cache
    (:func:`optical_st.fingerprints.weights_signature`, which also sees writes through ``.data``). A ``.data`` write
    moves no version counter, so one made while a loss is training is seen by the next loss to use the cache, not by
    that loss: call ``cache.clear()`` after changing a teacher that way. Memory: ``tokens x hidden`` values per text
    (4 bytes each in fp32); ``max_entries`` caps it (texts beyond it are encoded every time).

    Training FLOPs measured by :class:`optical_st.evaluation.FlopsCallback` stay the method's own: its measured
    steps bypass the cache (the teacher runs), so a method does not look cheaper for having run after another.

    Args:
        max_entries: most texts kept (``None``: no limit).

    Example::

        >>> from optical_st import ContrastiveDistillationLoss, OTDistillationLoss, TeacherCache
        >>> cache = TeacherCache()
        >>> ot_loss = OTDistillationLoss(model, teacher_cache=cache)  # doctest: +SKIP
        >>> nce_loss = ContrastiveDistillationLoss(other_model, teacher_cache=cache)  # doctest: +SKIP
    """

    def __init__(self, max_entries: int | None = None) -> None:
        if max_entries is not None and max_entries < 0:
            raise ValueError(f"max_entries must be >= 0 or None, got {max_entries}.")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self.bypass = False  # True: run the teacher (and refresh the entries), e.g. while FLOPs are being counted
        self._entries: dict[bytes, tuple[Tensor, Tensor | None]] = {}
        self._fingerprint: str | None = None
        self._digests = DigestMemo()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached tensors."""
        return sum(t.numel() * t.element_size() for entry in self._entries.values() for t in entry if t is not None)

    def clear(self) -> None:
        """Drop every entry and the recorded teacher."""
        self._entries.clear()
        self._fingerprint = None
        self.hits = self.misses = 0

    @contextlib.contextmanager
    def bypassed(self) -> Iterator[None]:
        """Run the teacher for every input inside the block (the entries are refreshed, not read)."""
        previous, self.bypass = self.bypass, True
        try:
            yield
        finally:
            self.bypass = previous

    def bind(self, modules: Iterable[nn.Module]) -> None:
        """Record the teacher (first call) or check that ``modules`` have the recorded teacher's weights."""
        states = [(module, module_state(module)[2]) for module in modules]  # an adapter model's teacher: its base
        fingerprint = "|".join(
            self._digests.get(m, state, lambda state=state: tensors_digest(state)) for m, state in states
        )
        if self._fingerprint is None:
            self._fingerprint = fingerprint
        elif fingerprint != self._fingerprint:
            raise ValueError(
                "This TeacherCache holds the outputs of another teacher (its weights differ: another teacher model, "
                "or this teacher's weights changed since, e.g. by load_state_dict). Give each teacher its own "
                "TeacherCache, or call cache.clear() before reusing it."
            )

    def run(self, features: dict[str, Any], encode: Any) -> dict[str, Tensor]:
        """The teacher's output for a tokenized batch: cached rows read, the others encoded by ``encode`` (a callable
        ``features -> outputs`` run in eval mode without a graph) and stored. Returns ``token_embeddings``,
        ``attention_mask``, ``input_ids`` and, when the teacher pools, ``sentence_embedding``."""
        ids, mask = features["input_ids"], features["attention_mask"]
        keep = mask.bool()
        ids_host, keep_host = ids.cpu(), keep.cpu()  # one device-to-host copy, not one per row
        keys = [ids_host[i][keep_host[i]].numpy().tobytes() for i in range(ids.shape[0])]
        missing = list(range(len(keys))) if self.bypass else [i for i, k in enumerate(keys) if k not in self._entries]
        fresh: dict[bytes, tuple[Tensor, Tensor | None]] = {}
        if missing:
            rows = torch.tensor(missing, device=ids.device)
            # the rows to encode, cut to their own longest sequence (right padding; left padding is left as is)
            width = int(keep[rows].any(0).nonzero().max()) + 1
            sub = {
                k: (v.index_select(0, rows)[:, :width] if v.dim() == 2 else v.index_select(0, rows))
                if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == ids.shape[0]
                else v
                for k, v in features.items()
            }
            out = encode(sub)
            sentences = out.get("sentence_embedding")
            for j, i in enumerate(missing):
                tokens = out["token_embeddings"][j][sub["attention_mask"][j].bool()]
                fresh[keys[i]] = (tokens, None if sentences is None else sentences[j])
            self._store(fresh)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        entries = [fresh.get(k) or self._entries[k] for k in keys]
        first_tokens, first_sentence = entries[0]
        tokens = first_tokens.new_zeros((*ids.shape, first_tokens.shape[-1]))
        for i, (row_tokens, _) in enumerate(entries):
            tokens[i][keep[i]] = row_tokens.to(tokens.dtype)
        result = {"token_embeddings": tokens, "attention_mask": mask, "input_ids": ids}
        if first_sentence is not None:
            result["sentence_embedding"] = torch.stack([s.to(first_sentence.dtype) for _, s in entries])
        return result

    def _store(self, fresh: dict[bytes, tuple[Tensor, Tensor | None]]) -> None:
        for key, (tokens, sentence) in fresh.items():
            if key not in self._entries and self.max_entries is not None and len(self._entries) >= self.max_entries:
                continue
            # clones: a view would keep the whole batch's output alive
            self._entries[key] = (tokens.detach().clone(), None if sentence is None else sentence.detach().clone())

    def __repr__(self) -> str:
        return (
            f"TeacherCache(entries={len(self)}, hits={self.hits}, misses={self.misses}, max_entries={self.max_entries})"
        )
