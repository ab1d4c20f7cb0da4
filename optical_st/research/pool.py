"""The English pool of score distillation in a study (:func:`english_pool`) and the frozen teacher's embeddings of it,
cached on disk, with their one-off FLOPs (:func:`teacher_encoder`)."""

from __future__ import annotations

from collections.abc import Callable

from datasets import Dataset
from sentence_transformers import SentenceTransformer
from torch import Tensor

from optical_st.evaluation.cache import EmbeddingCache
from optical_st.evaluation.flops import PhaseFlopCounter
from optical_st.research.config import ExperimentConfig
from optical_st.routes import TEACHER_ROUTE
from optical_st.sampling import frozen_teacher_encoder
from optical_st.sampling.score_targets import teacher_prompt

__all__ = ["POOLS", "english_pool", "teacher_encoder"]

POOLS = ("train-books", "pairs")
_FLOPS_SAMPLE = 32


def english_pool(config: ExperimentConfig, train: Dataset, pool: str) -> list[str]:
    """``"train-books"``: the English side of every training book (Bible data; books of the train split only, so no
    test or validation verse, in any role), else the training data's English side; ``"pairs"``: the sampled pairs'
    own English. English needs no translation, so a study may use all of it whatever its pair budget."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}.")
    if pool == "train-books" and config.train_data == "bible":
        from optical_st.data.bible import DEFAULT_SPLITS, english_verses

        books = set(DEFAULT_SPLITS["train"])
        return [text for (book, _, _), text in sorted(english_verses().items()) if book in books and text.strip()]
    return [text for text in train["english"] if text.strip()]


def teacher_encoder(
    model: SentenceTransformer, config: ExperimentConfig
) -> tuple[Callable[[list[str], str], Tensor], Callable[[], int]]:
    """``(encode, flops)``: ``encode(texts, kind)`` as :func:`optical_st.sampling.frozen_teacher_encoder`, through the
    study's embedding cache (the pool is the same for every method, seed and size); ``flops()`` what encoding all
    texts asked so far costs, whether or not the cache had them: measured on a sample of each call and scaled by
    its token count (an estimate: attention grows faster than the tokens)."""
    cache = EmbeddingCache(config.cache_dir)
    plain = frozen_teacher_encoder(model, config.eval_batch_size, progress=True)
    spent: list[int] = []

    def encode(texts: list[str], kind: str) -> Tensor:
        sample = texts[:: max(1, len(texts) // _FLOPS_SAMPLE)][:_FLOPS_SAMPLE]
        with PhaseFlopCounter() as counter:
            plain(sample, kind)
        spent.append(round(counter.get_total_flops() * _tokens(model, texts) / max(_tokens(model, sample), 1)))
        compute = lambda batch: plain(batch, kind)  # noqa: E731
        prompt = teacher_prompt(model, kind)
        return cache.encode(
            model, texts, route=TEACHER_ROUTE, compute=compute, kind=kind, prompt=prompt, normalize=True
        )

    return encode, lambda: sum(spent)


def _tokens(model: SentenceTransformer, texts: list[str], chunk: int = 1024) -> int:
    """Tokens the teacher route reads for ``texts`` (truncated as in encoding)."""
    total = 0
    for i in range(0, len(texts), chunk):
        total += int(model.preprocess(texts[i : i + chunk], task=TEACHER_ROUTE)["attention_mask"].sum())
    return total
