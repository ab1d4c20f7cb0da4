"""Score-distillation data: an English pool encoded once by the frozen teacher (:class:`TeacherCandidates`), each
bitext pair's nearest pool texts as its candidates, and the teacher's query embedding of the English side, for
:class:`~optical_st.ScoreDistillationLoss` and ``OTDistillationLoss(score_weight=...)``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from torch import Tensor

from optical_st.inference import compute_autocast, resolve_compute_dtype
from optical_st.modeling import column_prompts
from optical_st.routes import TEACHER_ROUTE, find_router
from optical_st.sampling.mining import search_topk

__all__ = ["TeacherCandidates", "distinct_texts", "frozen_teacher_encoder", "teacher_candidates", "teacher_prompt"]

logger = logging.getLogger(__name__)

Encode = Callable[[list[str], str], Tensor]


def teacher_candidates(queries: Tensor, pool: Tensor, positives: Sequence[int], k: int) -> Tensor:
    """Ids ``(Q, k)`` of the ``k`` pool rows nearest to each query (inner product, best first), leaving out the
    query's own positive (``positives[i]``, its index in the pool, or -1). Exact search (faiss when installed)."""
    if k >= pool.shape[0]:
        raise ValueError(f"num_candidates ({k}) must be below the pool's size ({pool.shape[0]} distinct texts).")
    found = search_topk(queries, pool, k + 1)
    scores = torch.gather(queries.float() @ pool.float().T, 1, found)
    found = torch.gather(found, 1, scores.argsort(dim=1, descending=True))  # search_topk's order is arbitrary
    keep = found != torch.as_tensor(list(positives), device=found.device).unsqueeze(1)
    keep[keep.all(1), -1] = False  # the positive was not found: drop the (k+1)-th instead, k ids per row either way
    return found[keep].view(queries.shape[0], k)


@dataclass(frozen=True)
class TeacherCandidates:
    """English texts and their frozen-teacher document embeddings (L2-normalised, ``(N, d)``), encoded once: the pool
    score distillation draws each pair's candidates from. Give it to the loss (``candidates=``) and to
    :meth:`attach`, which writes each pair's candidate ids and the teacher's query embedding into the ``label``
    column, so only the student (and the teacher on the English column) runs in a training step.

    Example::

        candidates = TeacherCandidates.build(model, list(bitext["english"]) + more_english)
        train_dataset = candidates.attach(bitext, model, num_candidates=15)
        loss = ScoreDistillationLoss(model, candidates=candidates)
    """

    texts: tuple[str, ...]
    embeddings: Tensor

    @classmethod
    def build(
        cls,
        model: SentenceTransformer,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        show_progress_bar: bool = True,
        encode: Encode | None = None,
        compute_dtype: str = "float32",
    ) -> TeacherCandidates:
        """Encode the distinct non-empty ``texts`` with the frozen teacher as documents (the model's document route
        and prompt). Never put evaluation texts here. ``encode(texts, kind)``: another encoder returning normalised
        embeddings (e.g. read from a cache); default :func:`frozen_teacher_encoder`. ``compute_dtype``: as
        :func:`optical_st.inference.resolve_compute_dtype` for a corpus (``"auto"``: bf16 autocast on a CPU with
        fast bf16, several times faster for a large pool; the queries' embeddings, the targets, stay float32)."""
        distinct = distinct_texts(texts)
        if len(distinct) < 2:
            raise ValueError(f"The pool needs at least 2 distinct non-empty English texts, got {len(distinct)}.")
        encode = encode or frozen_teacher_encoder(model, batch_size, show_progress_bar)
        dtype = resolve_compute_dtype(compute_dtype, model.device, side="corpus")
        with compute_autocast(dtype, model.device):
            embeddings = encode(list(distinct), "document")
        return cls(distinct, embeddings.float().cpu())

    def save(self, folder: str | Path) -> None:
        """Write the pool (``texts.json``, ``embeddings.safetensors``) to ``folder``, to reuse it or resume a run."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self.embeddings.contiguous()}, str(folder / "embeddings.safetensors"))
        (folder / "texts.json").write_text(json.dumps(list(self.texts), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> TeacherCandidates:
        """The pool :meth:`save` wrote to ``folder``."""
        folder = Path(folder)
        texts = tuple(json.loads((folder / "texts.json").read_text(encoding="utf-8")))
        embeddings = load_file(str(folder / "embeddings.safetensors"))["embeddings"]
        if embeddings.shape[0] != len(texts):
            raise ValueError(f"{folder}: {len(texts)} texts but {embeddings.shape[0]} embeddings; save the pool again.")
        return cls(texts, embeddings)

    def attach(
        self,
        dataset: Dataset,
        model: SentenceTransformer,
        *,
        num_candidates: int = 15,
        english_column: str = "english",
        lrl_column: str = "lrl",
        batch_size: int = 64,
        encode: Encode | None = None,
    ) -> Dataset:
        """``(english, lrl, label)``: the bitext with, in ``label``, the teacher's query embedding of the English side
        (``d`` values) followed by the pool ids of its ``num_candidates`` nearest pool texts (the pair's own English
        text left out). ``encode``: as in :meth:`build`."""
        english, lrl = _columns(dataset, english_column, lrl_column)
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be at least 1, got {num_candidates}.")
        queries = self.query_embeddings(english, model, batch_size=batch_size, encode=encode)
        index = {text: i for i, text in enumerate(self.texts)}
        ids = teacher_candidates(queries, self.embeddings, [index.get(t, -1) for t in english], num_candidates)
        logger.info(
            "Score distillation: %d pairs, %d candidates each from a pool of %d English texts",
            len(english), num_candidates, len(self.texts),
        )  # fmt: skip
        labels = torch.cat([queries.float(), ids.float()], dim=1)  # ids < 2**24 are exact in float32
        return Dataset.from_dict({"english": english, "lrl": lrl, "label": labels.tolist()})

    def query_embeddings(
        self, english: list[str], model: SentenceTransformer, *, batch_size: int = 64, encode: Encode | None = None
    ) -> Tensor:
        """The frozen teacher's query embeddings of ``english`` (with the model's query prompt), normalised."""
        if len(self.texts) >= 2**24:
            raise ValueError("A pool of 2**24 texts or more cannot be indexed through a float32 label.")
        encode = encode or frozen_teacher_encoder(model, batch_size, progress=False)
        return encode(english, "query").float().cpu()

    def lookup(self, ids: Tensor) -> Tensor:
        """``(B, k, d)`` embeddings of pool ids ``(B, k)`` (from the label column), on the ids' device."""
        if self.embeddings.device != ids.device:
            object.__setattr__(self, "embeddings", self.embeddings.to(ids.device))  # once: a frozen table
        return self.embeddings[ids.long()]


def _columns(dataset: Dataset, english_column: str, lrl_column: str) -> tuple[list[str], list[Any]]:
    missing = {english_column, lrl_column} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"The dataset has no column(s) {sorted(missing)}; its columns are {dataset.column_names}. "
            "Pass english_column= / lrl_column=."
        )
    return [str(text) for text in dataset[english_column]], list(dataset[lrl_column])


def teacher_prompt(model: SentenceTransformer, kind: str) -> str | None:
    """The prompt ``encode_query`` (``kind="query"``) or ``encode_document`` (``"document"``) prepends, or ``None``."""
    route = "query" if kind == "query" else TEACHER_ROUTE
    return column_prompts(model, {"column": route}).get("column") or None


def distinct_texts(texts: Iterable[Any]) -> tuple[str, ...]:
    """The texts a pool holds: each non-blank text once, in first-seen order."""
    return tuple(dict.fromkeys(str(t) for t in texts if str(t).strip()))


def frozen_teacher_encoder(model: SentenceTransformer, batch_size: int = 64, progress: bool = True) -> Encode:
    """``encode(texts, kind)``: the frozen teacher (an OPTICAL model's document route) reading ``texts`` as documents
    (``kind="document"``, with the document prompt, as ``encode_document`` and training read them) or as queries
    (``"query"``, with the query prompt); L2-normalised, on the CPU."""
    routed = find_router(model) is not None

    def encode(texts: list[str], kind: str) -> Tensor:
        kwargs: dict[str, Any] = {
            "batch_size": batch_size,
            "convert_to_tensor": True,
            "normalize_embeddings": True,
            "show_progress_bar": progress,
        }
        if routed:  # the document route read with the prompt of the kind: encode(task=...) adds none by itself
            return model.encode(texts, task=TEACHER_ROUTE, prompt=teacher_prompt(model, kind), **kwargs).cpu()
        return (model.encode_query if kind == "query" else model.encode_document)(texts, **kwargs).cpu()

    return encode
