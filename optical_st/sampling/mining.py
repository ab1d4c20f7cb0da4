"""Hard-negative mining on embeddings: nearest neighbours + false-negative filtering, with no model in sight.

The semantics are those of sentence-transformers' :func:`~sentence_transformers.util.mine_hard_negatives`, so a
static table mined here equals the one ST would build from the same embeddings:

1. retrieve each query's ``range_max + max_positives`` nearest corpus entries (inner product; pass normalised
   embeddings for cosine), with faiss (``IndexFlatIP``, exact) when installed or a chunked torch matmul otherwise;
2. drop the query's own positive(s);
3. drop likely false negatives: ``absolute_margin`` removes a candidate when ``neg + margin > pos``,
   ``relative_margin`` when ``neg > pos - |pos| * margin`` (``pos`` is the lowest positive score of the query),
   ``max_score`` when ``neg > max_score`` and ``min_score`` when ``neg < min_score``; and, beyond
   sentence-transformers, ``max_positive_similarity`` removes a candidate whose own embedding is that similar to a
   positive's (a near-duplicate of the positive: the Bible repeats verses nearly word for word). On an OPTICAL model
   the candidates are encoded by the frozen teacher, so this is a teacher-judged filter, as GISTEmbed's guide model;
4. rank the survivors by score and keep the window ``[range_min, range_max)``;
5. take the first ``num_negatives`` of the window (``"top"``) or a random subset of it (``"random"``, re-sorted
   by score).

Both search backends feed the same exact re-scoring and the same ``(score desc, corpus id asc)`` order, so they
return identical results (up to exact score ties at the retrieval boundary).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from optical_st.sampling.config import HardNegativeConfig

__all__ = [
    "MinedNegatives",
    "default_range_max",
    "fill_missing",
    "mine_negatives",
    "random_negatives",
    "search_topk",
]

# queries per chunk are chosen so one chunk's (queries x corpus) score matrix stays below this many floats
_MAX_CHUNK_ELEMENTS = 1 << 24


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


@dataclass
class MinedNegatives:
    """Result of :func:`mine_negatives`, one row per query.

    Attributes:
        indices: ``(Q, num_negatives)`` corpus ids, ordered by decreasing score; ``-1`` where fewer than
            ``num_negatives`` candidates survived the filters.
        scores: ``(Q, num_negatives)`` scores of those negatives (``-inf`` where missing).
        positive_scores: ``(Q,)`` the lowest positive score of each query (the one the margins compare against).
        num_filtered: candidates removed as likely false negatives, per filter (``absolute_margin``,
            ``relative_margin``, ``max_score``, ``min_score``); the positives themselves are not counted.
    """

    indices: Tensor
    scores: Tensor
    positive_scores: Tensor
    num_filtered: dict[str, int] = field(default_factory=dict)

    @property
    def num_missing(self) -> int:
        """Negative slots left empty (``-1``) because too few candidates survived."""
        return int((self.indices < 0).sum())


def default_range_max(
    num_negatives: int,
    range_min: int = 0,
    max_positives: int = 1,
    filtering: bool = False,
) -> int:
    """ST's default window end: ``range_min + num_negatives * (10 if any score filter else 1) + max_positives``."""
    return range_min + num_negatives * (10 if filtering else 1) + max_positives


def _positive_matrix(positive_ids: Sequence[Sequence[int]] | Tensor, num_queries: int) -> Tensor:
    """``(Q, P)`` long tensor of positive corpus ids padded with ``-1``."""
    if isinstance(positive_ids, Tensor):
        pos = positive_ids.long()
        if pos.dim() == 1:
            pos = pos[:, None]
    else:
        width = max((len(p) for p in positive_ids), default=0)
        pos = torch.full((len(positive_ids), max(width, 1)), -1, dtype=torch.long)
        for i, ids in enumerate(positive_ids):
            if len(ids):
                pos[i, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
    if pos.shape[0] != num_queries:
        raise ValueError(f"positive_ids has {pos.shape[0]} rows but there are {num_queries} queries.")
    if (pos < 0).all(dim=1).any():
        raise ValueError("Every query needs at least one positive id (the margins are defined against it).")
    return pos


def search_topk(
    queries: Tensor,
    corpus: Tensor,
    k: int,
    use_faiss: bool | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Ids ``(Q, k)`` of the ``k`` corpus rows with the highest inner product with each query (exact search).

    ``use_faiss=None`` uses faiss when it is installed. The order inside the returned rows is not meaningful; callers
    re-score and sort (see :func:`mine_negatives`).
    """
    k = min(k, corpus.shape[0])
    if use_faiss is None:
        use_faiss = faiss_available()
    if use_faiss:
        import faiss
        import numpy as np

        index = faiss.IndexFlatIP(corpus.shape[1])
        index.add(np.ascontiguousarray(corpus.detach().float().cpu().numpy()))
        _, ids = index.search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), k)
        return torch.from_numpy(ids).long().to(queries.device)
    if chunk_size is None:
        chunk_size = max(1, _MAX_CHUNK_ELEMENTS // max(corpus.shape[0], 1))
    corpus = corpus.to(queries.device, torch.float32)
    out = [
        torch.topk(queries[i : i + chunk_size].float() @ corpus.T, k=k, dim=1).indices
        for i in range(0, queries.shape[0], chunk_size)
    ]
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.long, device=queries.device)


def _gathered_scores(queries: Tensor, corpus: Tensor, ids: Tensor) -> Tensor:
    """``(Q, K)`` inner products of each query with its own ``K`` corpus rows (``-1`` ids score row 0), computed in
    query chunks so the gathered ``(chunk, K, d)`` block stays small."""
    step = max(1, _MAX_CHUNK_ELEMENTS // max(ids.shape[1] * corpus.shape[1], 1))
    ids = ids.clamp(min=0)
    parts = [
        torch.einsum("qd,qkd->qk", queries[i : i + step], corpus[ids[i : i + step]])
        for i in range(0, queries.shape[0], step)
    ]
    return torch.cat(parts) if parts else queries.new_zeros(0, ids.shape[1])


def _similarity_to_positives(corpus: Tensor, cand: Tensor, pos: Tensor) -> Tensor:
    """``(Q, K)``: each candidate's largest inner product with one of its query's positives, in corpus space."""
    out = []
    step = max(1, _MAX_CHUNK_ELEMENTS // max((cand.shape[1] + pos.shape[1]) * corpus.shape[1], 1))
    for i in range(0, cand.shape[0], step):
        c, p = cand[i : i + step], pos[i : i + step]
        sims = torch.einsum("qkd,qpd->qkp", corpus[c.clamp(min=0)], corpus[p.clamp(min=0)])
        out.append(sims.masked_fill((p < 0)[:, None, :], float("-inf")).amax(-1))
    return torch.cat(out) if out else corpus.new_zeros(0, cand.shape[1])


def _sort_by_score(ids: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by score (desc), ties by id (asc): a total order, so both backends agree."""
    by_id = torch.argsort(ids, dim=1, stable=True)
    ids, scores = ids.gather(1, by_id), scores.gather(1, by_id)
    by_score = torch.argsort(scores, dim=1, descending=True, stable=True)
    return ids.gather(1, by_score), scores.gather(1, by_score)


def mine_negatives(
    query_embeddings: Tensor,
    corpus_embeddings: Tensor,
    positive_ids: Sequence[Sequence[int]] | Tensor,
    config: HardNegativeConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> MinedNegatives:
    """Mine ``config.num_negatives`` hard negatives per query from precomputed embeddings.

    Args:
        query_embeddings: ``(Q, d)`` query (anchor) embeddings; normalise them for cosine similarity.
        corpus_embeddings: ``(C, d)`` candidate embeddings, same space.
        positive_ids: per query, the corpus ids of its positive(s): a list of lists or a ``(Q, P)`` tensor padded
            with ``-1``. They are never returned as negatives.
        config: the settings (:class:`~optical_st.sampling.HardNegativeConfig`, validated when it was built); this
            function reads ``num_negatives``, the rank window ``range_min`` / ``range_max`` (default ``range_max``:
            :func:`default_range_max`, as in sentence-transformers), the false-negative filters (see the module
            docstring), ``sampling_strategy`` and ``use_faiss``. ``None``: the defaults.
        generator: RNG for ``sampling_strategy="random"`` (CPU generator), for reproducible draws.
        chunk_size: queries per matmul chunk of the torch backend (default: keeps chunks around 64 MB).

    Returns:
        :class:`MinedNegatives`.

    Example::

        >>> from optical_st.sampling import HardNegativeConfig, mine_negatives
        >>> mined = mine_negatives(queries, corpus, [[0], [3]], HardNegativeConfig(num_negatives=2))  # doctest: +SKIP
        >>> mined.indices.shape  # doctest: +SKIP
        torch.Size([2, 2])
    """
    config = config if config is not None else HardNegativeConfig()
    _check_embeddings(query_embeddings, corpus_embeddings)
    num_negatives, range_min = config.num_negatives, config.range_min
    n_queries, n_corpus = query_embeddings.shape[0], corpus_embeddings.shape[0]
    device = query_embeddings.device
    queries = query_embeddings.float()
    corpus = corpus_embeddings.to(device, torch.float32)
    pos = _positive_matrix(positive_ids, n_queries).to(device)
    if (pos >= n_corpus).any():
        raise ValueError("positive_ids contains ids outside the corpus.")
    max_positives = int((pos >= 0).sum(1).max()) if n_queries else 1
    range_max = config.range_max
    if range_max is None:
        range_max = default_range_max(num_negatives, range_min, max_positives, config.filters_scores)
    if n_queries == 0:
        empty = torch.empty(0, num_negatives)
        return MinedNegatives(empty.long(), empty, torch.empty(0))

    # 1. retrieve, then re-score exactly and order (score desc, id asc) so faiss and torch agree
    cand = search_topk(queries, corpus, range_max + max_positives, use_faiss=config.use_faiss, chunk_size=chunk_size)
    cand = cand.to(device)
    scores = _gathered_scores(queries, corpus, cand)
    scores = scores.masked_fill(cand < 0, float("-inf"))  # faiss pads with -1 when k > corpus
    cand, scores = _sort_by_score(cand, scores)

    pos_valid = pos >= 0
    pos_scores = _gathered_scores(queries, corpus, pos)
    positive_scores = pos_scores.masked_fill(~pos_valid, float("inf")).min(dim=1).values

    # 2. the positives are not negatives
    is_positive = ((cand[:, :, None] == pos[:, None, :]) & pos_valid[:, None, :]).any(-1)
    scores = scores.masked_fill(is_positive | (cand < 0), float("-inf"))

    # 3. likely false negatives
    scores, num_filtered = _drop_false_negatives(scores, positive_scores, config, corpus, cand, pos)

    # 4. rank window over the survivors (a stable sort keeps the (score, id) order and sends -inf last)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :range_max]
    window_ids, window_scores = cand.gather(1, order)[:, range_min:], scores.gather(1, order)[:, range_min:]
    if window_ids.shape[1] < num_negatives:  # corpus smaller than the window
        pad = num_negatives - window_ids.shape[1]
        window_ids = torch.cat([window_ids, window_ids.new_full((n_queries, pad), -1)], 1)
        window_scores = torch.cat([window_scores, window_scores.new_full((n_queries, pad), float("-inf"))], 1)

    # 5. sample
    picked = _pick(torch.isfinite(window_scores), num_negatives, config.sampling_strategy, generator)
    indices, neg_scores = window_ids.gather(1, picked), window_scores.gather(1, picked)
    indices = indices.masked_fill(~torch.isfinite(neg_scores), -1)
    return MinedNegatives(indices.cpu(), neg_scores.cpu(), positive_scores.cpu(), num_filtered)


def _check_embeddings(query_embeddings: Tensor, corpus_embeddings: Tensor) -> None:
    if query_embeddings.dim() != 2 or corpus_embeddings.dim() != 2:
        raise ValueError("query_embeddings and corpus_embeddings must be 2D (n, d).")
    if query_embeddings.shape[1] != corpus_embeddings.shape[1]:
        raise ValueError(
            f"Embedding widths differ: queries {query_embeddings.shape[1]}, corpus {corpus_embeddings.shape[1]}."
        )
    if not (torch.isfinite(query_embeddings).all() and torch.isfinite(corpus_embeddings).all()):
        raise ValueError("The embeddings contain NaN or inf; mining on them would be meaningless.")


def _drop_false_negatives(
    scores: Tensor,
    positive_scores: Tensor,
    config: HardNegativeConfig,
    corpus: Tensor,
    cand: Tensor,
    pos: Tensor,
) -> tuple[Tensor, dict[str, int]]:
    """``scores`` (of the candidates ``cand``) with the likely false negatives set to ``-inf``, and how many each
    filter removed; ``corpus`` and the positives ``pos`` are read by ``max_positive_similarity`` only."""
    num_filtered: dict[str, int] = {}

    def drop(name: str, removed: Tensor) -> None:
        nonlocal scores
        removed = removed & torch.isfinite(scores)
        if removed.any():
            num_filtered[name] = int(removed.sum())
            scores = scores.masked_fill(removed, float("-inf"))

    if config.absolute_margin is not None:
        drop("absolute_margin", scores + config.absolute_margin > positive_scores[:, None])
    if config.relative_margin is not None:
        threshold = positive_scores - positive_scores.abs() * config.relative_margin
        drop("relative_margin", scores > threshold[:, None])
    if config.max_score is not None:
        drop("max_score", scores > config.max_score)
    if config.min_score is not None:
        drop("min_score", scores < config.min_score)
    if config.max_positive_similarity is not None:
        drop("max_positive_similarity", _similarity_to_positives(corpus, cand, pos) > config.max_positive_similarity)
    return scores, num_filtered


def _pick(valid: Tensor, num_negatives: int, strategy: str, generator: torch.Generator | None) -> Tensor:
    """``(Q, num_negatives)`` positions in the window: its first ones (``"top"``) or a random subset of the valid
    ones, in window (= score) order (``"random"``)."""
    if strategy == "top":
        return torch.arange(num_negatives, device=valid.device).expand(valid.shape[0], -1)
    keys = torch.rand(valid.shape, generator=generator).to(valid.device)
    keys = keys.masked_fill(~valid, -1.0)  # valid candidates first; invalid only fill missing slots
    return torch.topk(keys, k=num_negatives, dim=1).indices.sort(dim=1).values


def random_negatives(
    positive_ids: Sequence[Sequence[int]] | Tensor,
    corpus_size: int,
    num_negatives: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``(Q, num_negatives)`` corpus ids drawn uniformly without replacement, never a positive of the query.

    Rows get ``-1`` only when the corpus has too few non-positive entries.
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}.")
    pos = _positive_matrix(positive_ids, len(positive_ids))
    n_queries = pos.shape[0]
    out = torch.full((n_queries, num_negatives), -1, dtype=torch.long)
    if n_queries == 0 or corpus_size == 0:
        return out
    # oversample, reject positives and repeats; the rare rows still short fall back to an exact draw
    draws = torch.randint(0, corpus_size, (n_queries, num_negatives + pos.shape[1] + 4), generator=generator)
    for q in range(n_queries):
        banned = set(pos[q][pos[q] >= 0].tolist())
        chosen: list[int] = []
        for c in draws[q].tolist():
            if c not in banned:
                chosen.append(c)
                banned.add(c)
                if len(chosen) == num_negatives:
                    break
        if len(chosen) < num_negatives:
            rest = [c for c in range(corpus_size) if c not in banned]
            perm = torch.randperm(len(rest), generator=generator)[: num_negatives - len(chosen)].tolist()
            chosen += [rest[i] for i in perm]
        out[q, : len(chosen)] = torch.tensor(chosen, dtype=torch.long)
    return out


def fill_missing(
    mined: MinedNegatives,
    positive_ids: Sequence[Sequence[int]],
    corpus_size: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``(indices, scores)`` of ``mined`` with every empty (``-1``) slot filled by a random corpus id, never a
    positive of that query nor one of its mined negatives; filled slots score NaN.

    Slots are empty when too few candidates survive the filters (a small pool, strict margins): a row must still
    have ``num_negatives`` columns, so it gets random ones.
    """
    negatives = mined.indices.clone()
    scores = mined.scores.float().clone()
    missing = negatives < 0
    rows = missing.any(1).nonzero().flatten().tolist()
    if rows:
        found = ~missing
        banned = [[*positive_ids[r], *negatives[r][found[r]].tolist()] for r in rows]
        fill = random_negatives(banned, corpus_size, negatives.shape[1], generator)
        for j, r in enumerate(rows):
            negatives[r, missing[r]] = fill[j, : int(missing[r].sum())]
        scores[missing] = float("nan")
    return negatives, scores
