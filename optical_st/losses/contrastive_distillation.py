"""The contrastive knowledge-distillation baseline: InfoNCE of the student against the frozen teacher."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.util import cos_sim, similarity_fct_name
from torch import Tensor, nn

from optical_st.losses._teacher import TeacherStudentMixin
from optical_st.losses.info_nce import check_temperature, info_nce
from optical_st.losses.teacher_cache import TeacherCache

CONTRASTIVE_KD_CITATION = """
@article{oord2018representation,
    title={Representation Learning with Contrastive Predictive Coding},
    author={van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol},
    journal={arXiv preprint arXiv:1807.03748},
    year={2018}
}
@inproceedings{tian2020contrastive,
    title={Contrastive Representation Distillation},
    author={Tian, Yonglong and Krishnan, Dilip and Isola, Phillip},
    booktitle={International Conference on Learning Representations},
    year={2020},
    eprint={1910.10699},
    archivePrefix={arXiv}
}
"""


class ContrastiveDistillationLoss(TeacherStudentMixin, nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        teacher: SentenceTransformer | None = None,
        temperature: float = 0.05,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
        symmetric: bool = False,
        mask_duplicates: bool = True,
        teacher_cache: TeacherCache | None = None,
    ) -> None:
        """
        Contrastive knowledge distillation (InfoNCE) from a frozen English teacher into a low-resource-language
        student: the baseline that OPTICAL's optimal-transport distillation is compared against.

        For a batch of ``B`` bitext pairs, the student embeds the LRL side (``s_i``) and the frozen teacher embeds the
        English side (``t_i``) plus any extra English columns (mined hard negatives ``n_ik``). Each student embedding
        must pick its own teacher embedding out of all ``B * (1 + K)`` teacher candidates::

            loss = mean_i  -log( exp(sim(s_i, t_i) / T) / sum_c exp(sim(s_i, c) / T) ),
                   c in {t_1..t_B} ∪ {n_jk}

        Unlike :class:`~sentence_transformers.sentence_transformer.losses.MSELoss`, which only pulls ``s_i`` onto
        ``t_i``, the contrastive term also pushes ``s_i`` away from the other teacher embeddings: what retrieval needs.
        Unlike :class:`~optical_st.OTDistillationLoss`, it distils pooled sentence embeddings, not the token space.

        The teacher runs in eval mode without a graph, whichever of the two teacher modes is used (a Router model from
        :func:`optical_st.build_optical_model`, or ``teacher=`` a separate model with the student's tokenizer; see
        :class:`~optical_st.OTDistillationLoss`).

        Args:
            model: the student, or an OPTICAL Router model (``query`` route = student, ``document`` route = teacher).
            teacher: the frozen English teacher when ``model`` is a plain student; ``None`` for a Router model.
            temperature: softmax temperature ``T`` (> 0); ``0.05`` equals ST's ``MultipleNegativesRankingLoss``
                default ``scale=20``. Match the teacher's training temperature (multilingual-e5: ``0.01``): a softer
                one pulls the student's similarities apart, out of the teacher's space (docs/demo_tuning.md).
            similarity_fct: similarity between student and teacher embeddings, ``(B, d), (N, d) -> (B, N)``;
                cosine by default.
            symmetric: also add the reverse direction (each teacher embedding must pick its own student embedding
                among the ``B`` student embeddings) and average the two, as in bidirectional translation ranking
                (Yang et al., 2019).
            mask_duplicates: treat candidates whose teacher embedding equals the positive's (the same English text
                twice in a batch, e.g. repeated Bible verses, or a mined negative identical to the positive) as
                neither positive nor negative. Without it, such a row asks the impossible and adds noise.
            teacher_cache: a :class:`optical_st.TeacherCache` to read the frozen teacher's outputs from instead of
                running it again for texts it has already encoded (later epochs, or other losses with the same
                teacher given the same cache). Changes no result beyond float rounding; ``None``: no cache.

        References:
            - van den Oord, Li, Vinyals. Representation Learning with Contrastive Predictive Coding. 2018.
              https://arxiv.org/abs/1807.03748
            - Tian, Krishnan, Isola. Contrastive Representation Distillation. ICLR 2020.
              https://arxiv.org/abs/1910.10699
            - Huang, Yu, Allan. Improving Cross-lingual Information Retrieval on Low-Resource Languages via Optimal
              Transport Distillation. WSDM 2023 (the method this baseline is compared with).

        Requirements:
            1. Parallel data: an English text and its LRL translation per row; optional extra English columns are
               hard negatives.
            2. Student sentence embeddings of the teacher's width (``build_optical_model`` adds a projection when the
               widths differ).

        Inputs:
            +------------------------------------------------------------+--------+
            | Texts                                                      | Labels |
            +============================================================+========+
            | (english, lrl) pairs                                       | none   |
            +------------------------------------------------------------+--------+
            | (english, lrl, english_negative_1, ..., english_negative_K) | none   |
            +------------------------------------------------------------+--------+

        Relations:
            - Equals :class:`~sentence_transformers.sentence_transformer.losses.MultipleNegativesRankingLoss` with
              ``scale = 1 / temperature`` on ``(lrl, english, negatives...)`` when the teacher is frozen, except that
              the teacher here always runs in eval mode (no dropout), may be a separate model, and duplicates are
              masked.
            - :class:`optical_st.OTDistillationLoss` distils token embeddings through optimal transport;
              :class:`~sentence_transformers.sentence_transformer.losses.MSELoss` regresses the pooled teacher
              embedding (Reimers & Gurevych, 2020).

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
                from optical_st import ContrastiveDistillationLoss, build_optical_model, router_mapping

                model = build_optical_model("sentence-transformers/all-MiniLM-L6-v2")
                train_dataset = Dataset.from_dict({
                    "english": ["In the beginning God created the heavens and the earth.", "God is love."],
                    "chichewa": ["Pachiyambi Mulungu adalenga kumwamba ndi dziko lapansi.", "Mulungu ndi chikondi."],
                })
                loss = ContrastiveDistillationLoss(model, temperature=0.05)
                args = SentenceTransformerTrainingArguments(
                    output_dir="out", router_mapping=router_mapping(train_dataset)
                )
                trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        super().__init__()
        self.model = model
        self.temperature = check_temperature(temperature)
        self.similarity_fct = similarity_fct
        self.symmetric = symmetric
        self.mask_duplicates = mask_duplicates
        # optical_st/losses/_teacher.py, shared with OTDistillationLoss
        self._init_teacher(model, teacher, teacher_cache)

    # ----------------------------------------------------------------------------------------------
    def _check_inputs(self, features: list[dict[str, Any]], labels: Tensor | None) -> None:
        if len(features) < 2:
            raise ValueError(
                "ContrastiveDistillationLoss expects (english, lrl, *english_negatives) text columns, got "
                f"{len(features)}. Select them with `dataset.select_columns(['english', 'lrl', ...])`."
            )
        self.input_checks.check_labels_and_routes(features, labels)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        features = list(sentence_features)
        self._check_inputs(features, labels)
        # once: prompts, rows without content, swapped columns; then the loss's value too (_input_checks.py)
        checking = self.input_checks.check_first_batch(features)
        english, lrl, *negatives = features
        student = self._student.run(lrl)["sentence_embedding"]
        teacher = self._teacher.frozen(english)["sentence_embedding"]
        negative_embeddings = [self._teacher.frozen(column)["sentence_embedding"] for column in negatives]
        loss = self.compute_loss_from_embeddings(student, teacher, negative_embeddings or None)
        return self.input_checks.check_finite(loss) if checking else loss

    def compute_loss_from_embeddings(
        self,
        student_embeddings: Tensor,
        teacher_embeddings: Tensor,
        negative_embeddings: Tensor | Sequence[Tensor] | None = None,
    ) -> Tensor:
        """InfoNCE from pooled embeddings, kept apart from ``forward`` so the maths can be tested on hand-made tensors.

        Args:
            student_embeddings: ``(B, d)`` student embeddings of the LRL texts, with grad.
            teacher_embeddings: ``(B, d)`` teacher embeddings of their English translations (detached here).
            negative_embeddings: optional teacher embeddings of hard negatives: ``(B, K, d)`` or a list of ``K``
                tensors ``(B, d)`` (one per negative column).

        Returns:
            The scalar loss (mean over the batch; mean of both directions when ``symmetric``).
        """
        if negative_embeddings is None:
            negatives: list[Tensor] = []
        elif isinstance(negative_embeddings, Tensor):
            if negative_embeddings.dim() != 3 or negative_embeddings.shape[::2] != teacher_embeddings.shape:
                raise ValueError(f"negative_embeddings must be (B, K, d); got {tuple(negative_embeddings.shape)}.")
            negatives = list(negative_embeddings.unbind(1))
        else:
            negatives = list(negative_embeddings)
        return info_nce(
            student_embeddings,
            teacher_embeddings,
            negatives,
            self.temperature,
            similarity_fct=self.similarity_fct,
            symmetric=self.symmetric,
            mask_duplicates=self.mask_duplicates,
        )

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "teacher": self._teacher_config(),
            "temperature": self.temperature,
            "similarity_fct": similarity_fct_name(self.similarity_fct),
            "symmetric": self.symmetric,
            "mask_duplicates": self.mask_duplicates,
        }

    @property
    def citation(self) -> str:
        return CONTRASTIVE_KD_CITATION
