"""The pure miner against a brute-force oracle, against sentence-transformers' mine_hard_negatives, faiss against
torch, random negatives and hard-batch composition."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from optical_st.sampling import (
    HardNegativeConfig,
    compose_hard_batches,
    default_range_max,
    mine_negatives,
    random_negatives,
)

HAS_FAISS = importlib.util.find_spec("faiss") is not None


def embeddings(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def oracle(
    queries,
    corpus,
    positives,
    num_negatives,
    range_min=0,
    range_max=None,
    absolute_margin=None,
    relative_margin=None,
    max_score=None,
    min_score=None,
    max_positive_similarity=None,
):
    """Brute force in float64 and plain Python, straight from the definition of ST's mine_hard_negatives:
    retrieve range_max + max_positives, drop positives and filtered candidates, window [range_min, range_max) of
    the survivors by score, take the first num_negatives."""
    q64, c64 = queries.double(), corpus.double()
    max_pos = max(len(p) for p in positives)
    if range_max is None:
        filtering = any(v is not None for v in (absolute_margin, relative_margin, max_score, max_positive_similarity))
        range_max = range_min + num_negatives * (10 if filtering else 1) + max_pos
    out = []
    for i, pos in enumerate(positives):
        scores = (c64 @ q64[i]).tolist()
        ranked = sorted(range(len(corpus)), key=lambda j: (-scores[j], j))[: range_max + max_pos]
        pos_score = min(scores[p] for p in pos)
        keep = []
        for j in ranked:
            s = scores[j]
            if j in pos:
                continue
            if absolute_margin is not None and s + absolute_margin > pos_score:
                continue
            if relative_margin is not None and s > pos_score - abs(pos_score) * relative_margin:
                continue
            if max_score is not None and s > max_score:
                continue
            if min_score is not None and s < min_score:
                continue
            # a near-duplicate of one of the positives, judged in corpus space
            if (
                max_positive_similarity is not None
                and max(float(c64[j] @ c64[p]) for p in pos) > max_positive_similarity
            ):
                continue
            keep.append(j)
        window = keep[:range_max][range_min:]
        row = window[:num_negatives]
        out.append(row + [-1] * (num_negatives - len(row)))
    return out


SETTINGS = [
    {},
    {"range_min": 3, "range_max": 12},
    {"absolute_margin": 0.05},
    {"relative_margin": 0.1},
    {"max_score": 0.3, "min_score": -0.2},
    {"range_min": 2, "relative_margin": 0.0, "max_score": 0.5},
    {"absolute_margin": -0.5, "range_max": 8},  # strong filter: some queries run short -> -1
    {"max_positive_similarity": 0.3},
    {"max_positive_similarity": 0.5, "relative_margin": 0.1, "range_min": 1},
]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize(
    "use_faiss", [False, pytest.param(True, marks=pytest.mark.skipif(not HAS_FAISS, reason="faiss"))]
)
def test_matches_brute_force_oracle(settings, use_faiss):
    queries, corpus = embeddings(40, seed=1), embeddings(90, seed=2)
    gen = np.random.default_rng(0)
    # one to three positives per query, and queries whose positive is genuinely close
    positives = [sorted(gen.choice(90, size=gen.integers(1, 4), replace=False).tolist()) for _ in range(40)]
    queries = F.normalize(queries + 0.8 * corpus[[p[0] for p in positives]], dim=-1)
    mined = mine_negatives(
        queries, corpus, positives, HardNegativeConfig(num_negatives=4, use_faiss=use_faiss, **settings)
    )
    expected = oracle(queries, corpus, positives, 4, **settings)
    assert mined.indices.tolist() == expected
    for i, pos in enumerate(positives):
        assert not set(mined.indices[i].tolist()) & set(pos)  # never a positive
        found = mined.indices[i] >= 0
        ref = (corpus[mined.indices[i][found]] @ queries[i]).double()
        torch.testing.assert_close(mined.scores[i][found].double(), ref, atol=1e-5, rtol=0)
        assert torch.isinf(mined.scores[i][~found]).all()
    if settings.get("absolute_margin") == -0.5:
        assert mined.num_missing > 0  # the case of too few survivors is really exercised


@pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")
def test_faiss_and_torch_backends_agree():
    queries, corpus = embeddings(200, d=32, seed=3), embeddings(1000, d=32, seed=4)
    positives = [[i] for i in range(200)]
    for kwargs in ({}, {"range_min": 5, "range_max": 40, "relative_margin": 0.05}):
        a = mine_negatives(queries, corpus, positives, HardNegativeConfig(num_negatives=5, use_faiss=True, **kwargs))
        config = HardNegativeConfig(num_negatives=5, use_faiss=False, **kwargs)
        b = mine_negatives(queries, corpus, positives, config, chunk_size=37)
        assert torch.equal(a.indices, b.indices)
        torch.testing.assert_close(a.scores, b.scores, atol=0, rtol=0)
        assert a.num_filtered == b.num_filtered


def test_same_negatives_as_sentence_transformers_mine_hard_negatives(teacher):
    """ST's own function, given the same model, is an independent oracle for the whole pipeline."""
    from conftest import toy_bitext
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    data = toy_bitext(60, seed=3)
    # ST mines per unique anchor; keep unique anchors so its n-tuple rows line up one-to-one with ours
    seen, rows = set(), []
    for eng, lrl in zip(data["english"], data["lrl"], strict=True):
        if lrl not in seen:
            seen.add(lrl)
            rows.append((lrl, eng))
    data = Dataset.from_dict({"anchor": [a for a, _ in rows], "positive": [p for _, p in rows]})
    kwargs = {"range_min": 1, "range_max": 15, "max_score": 0.98, "num_negatives": 3}
    st = mine_hard_negatives(data, teacher, output_format="n-tuple", verbose=False, batch_size=16, **kwargs)

    corpus = list(dict.fromkeys(data["positive"]))
    q = teacher.encode_query(data["anchor"], convert_to_tensor=True, normalize_embeddings=True)
    c = teacher.encode_document(corpus, convert_to_tensor=True, normalize_embeddings=True)
    positives = [[corpus.index(p)] for p in data["positive"]]
    mined = mine_negatives(q, c, positives, HardNegativeConfig(use_faiss=False, **kwargs))
    ours = {
        (a, p): [corpus[j] for j in row]
        for a, p, row in zip(data["anchor"], data["positive"], mined.indices.tolist(), strict=True)
        if min(row) >= 0
    }
    theirs = {(r["anchor"], r["positive"]): [r[f"negative_{i}"] for i in (1, 2, 3)] for r in st}
    assert len(theirs) > 20
    assert theirs == ours


def test_random_sampling_stays_in_the_window_and_is_reproducible():
    queries, corpus = embeddings(30, seed=5), embeddings(80, seed=6)
    positives = [[i] for i in range(30)]
    kwargs = {"range_min": 2, "range_max": 20}
    full = oracle(queries, corpus, positives, 18, **kwargs)  # the whole window, in score order
    draw = lambda seed: mine_negatives(  # noqa: E731
        queries,
        corpus,
        positives,
        HardNegativeConfig(num_negatives=4, sampling_strategy="random", **kwargs),
        generator=torch.Generator().manual_seed(seed),
    )
    a, b, c = draw(0), draw(0), draw(1)
    assert torch.equal(a.indices, b.indices)
    assert not torch.equal(a.indices, c.indices)
    for i in range(30):
        row = a.indices[i].tolist()
        assert set(row) <= set(full[i]) and len(set(row)) == 4
        assert row == sorted(row, key=full[i].index)  # re-sorted by score, as ST does
        assert a.scores[i].tolist() == sorted(a.scores[i].tolist(), reverse=True)


def test_default_range_max_follows_sentence_transformers():
    assert default_range_max(3) == 0 + 3 + 1
    assert default_range_max(3, range_min=10, max_positives=2, filtering=True) == 10 + 30 + 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_negatives": 0}, "num_negatives"),
        ({"range_min": 5, "range_max": 6, "num_negatives": 2}, "raise range_max"),
        ({"sampling_strategy": "best"}, "sampling_strategy"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"num_negatives": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        mine_negatives(embeddings(4), embeddings(10), [[0]] * 4, HardNegativeConfig(**args))


def test_bad_inputs_raise():
    q, c, two = embeddings(4), embeddings(10), HardNegativeConfig(num_negatives=2)
    with pytest.raises(ValueError, match="NaN or inf"):
        mine_negatives(q.clone().fill_(math.nan), c, [[0]] * 4, two)
    with pytest.raises(ValueError, match="widths differ"):
        mine_negatives(q, embeddings(10, d=8), [[0]] * 4, two)
    with pytest.raises(ValueError, match="at least one positive"):
        mine_negatives(q, c, [[0], [1], [], [2]], two)
    with pytest.raises(ValueError, match="outside the corpus"):
        mine_negatives(q, c, [[0], [1], [2], [10]], two)


def test_random_negatives_never_positive_no_repeats_reproducible():
    positives = [[i, (i + 1) % 12] for i in range(40)]
    a = random_negatives(positives, 12, 5, torch.Generator().manual_seed(0))
    b = random_negatives(positives, 12, 5, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    for i, row in enumerate(a.tolist()):
        assert len(set(row)) == 5 and not set(row) & set(positives[i]) and min(row) >= 0
    # a corpus with exactly enough non-positives is used up completely
    tight = random_negatives([[0, 1]], 4, 2, torch.Generator().manual_seed(1))
    assert sorted(tight[0].tolist()) == [2, 3]


def test_hard_batches_group_mutually_hard_anchors():
    n, k, batch = 96, 3, 8
    gen = torch.Generator().manual_seed(0)
    row_anchor = np.arange(n)
    row_positive = np.arange(n) % 90  # a few rows share a positive
    negatives = torch.randint(0, 90, (n, k), generator=gen).numpy()
    batches = compose_hard_batches(row_anchor, row_positive, negatives, batch, torch.Generator().manual_seed(5))
    again = compose_hard_batches(row_anchor, row_positive, negatives, batch, torch.Generator().manual_seed(5))
    assert all(np.array_equal(x, y) for x, y in zip(batches, again, strict=True))
    assert sorted(np.concatenate(batches).tolist()) == list(range(n))  # every row once
    assert [len(b) for b in batches] == [batch] * (n // batch)
    assert all(len(set(row_positive[b].tolist())) == len(b) for b in batches)  # no repeated positive

    def hard_pairs(groups):
        """(x, y) in one batch with y's positive among x's negatives: the in-batch negatives that are hard."""
        return sum(
            int(row_positive[y] in negatives[row_anchor[x]])
            for b in groups
            for x in b.tolist()
            for y in b.tolist()
            if x != y
        )

    # every row but a batch's seed joins through such a pair; random batches hold about n * k * 7/95 of them
    assert hard_pairs(batches) >= n - 2 * len(batches)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5)).numpy()
    shuffled = [perm[i : i + batch] for i in range(0, n, batch)]
    assert hard_pairs(batches) > 3 * hard_pairs(shuffled)


def test_max_positive_similarity_drops_near_duplicates_of_the_positive():
    # corpus: 0 = the positive, 1 = a near-copy of it (cos 0.99 with it), 2.. = others; the query sits near both
    corpus = embeddings(30, seed=5)
    corpus[1] = F.normalize(corpus[0] + 0.1 * corpus[7], dim=-1)
    query = F.normalize(corpus[0] + 0.05 * corpus[3], dim=-1)[None]
    plain = mine_negatives(query, corpus, [[0]])
    assert plain.indices.tolist() == [[1]]  # the near-copy is the hardest "negative"
    filtered = mine_negatives(query, corpus, [[0]], HardNegativeConfig(max_positive_similarity=0.9))
    assert filtered.indices[0, 0] not in (0, 1) and filtered.num_filtered == {"max_positive_similarity": 1}
