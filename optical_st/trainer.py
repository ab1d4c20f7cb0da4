"""The trainer that checks its datasets against the loss when it is built: :class:`OpticalTrainer`."""

from __future__ import annotations

from typing import Any

from sentence_transformers import SentenceTransformerTrainer

from optical_st.losses.checks import run_dataset_checks

__all__ = ["OpticalTrainer"]


class OpticalTrainer(SentenceTransformerTrainer):
    """``SentenceTransformerTrainer`` that checks the training and evaluation datasets against the loss when it is
    built, before any step and before the model card reads them.

    Each dataset goes through its loss's ``check_dataset`` (:func:`optical_st.check_bitext`): bad rows named by dataset
    row and column, label or non-text columns, the column count, routes against the column order, an empty dataset, a
    transform that changes the columns; swapped-looking columns log one warning. A loss without ``check_dataset`` (a
    stock sentence-transformers loss) is not checked. Otherwise it is ``SentenceTransformerTrainer``, argument for
    argument.

    A plain ``SentenceTransformerTrainer`` trains the OPTICAL losses too; it checks nothing when it is built (call
    :func:`optical_st.check_bitext` yourself), and the losses check the routes of every batch and the prompts, the
    direction, the rows without content and a finite loss on the first batch.

    Example::

        from optical_st import OpticalTrainer
        from optical_st.recipe import RECOMMENDED

        trainer = OpticalTrainer(model=model, args=args, train_dataset=train, loss=RECOMMENDED.loss(model))
        trainer.train()
    """

    def add_model_card_callback(self, default_args_dict: dict[str, Any]) -> None:
        # sentence-transformers' documented override point at the end of the trainer's construction, where the
        # datasets, the loss and the routes are all set: check them, then let the card read them
        router_mapping = self.args.router_mapping
        for dataset_type, dataset in (("train", self.train_dataset), ("eval", self.eval_dataset)):
            if dataset is not None:
                run_dataset_checks(dataset, self.loss, dataset_type, router_mapping)
        super().add_model_card_callback(default_args_dict)
