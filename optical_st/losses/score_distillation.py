"""Score distillation: the student learns how the frozen teacher *ranks* English documents for the English side of
each pair, not only which document is the translation."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.util import cos_sim, similarity_fct_name
from torch import Tensor, nn

from optical_st.losses._teacher import TeacherStudentMixin
from optical_st.losses.info_nce import check_temperature
from optical_st.losses.score_kl import CandidateTable, check_objective, check_score_labels, score_kl, score_targets
from optical_st.losses.teacher_cache import TeacherCache

SCORE_KD_CITATION = """
@misc{lin2020distillingdenserepresentationsranking,
    title={Distilling Dense Representations for Ranking using Tightly-Coupled Teachers},
    author={Sheng-Chieh Lin and Jheng-Hong Yang and Jimmy Lin},
    year={2020},
    eprint={2010.11386},
    archivePrefix={arXiv},
    primaryClass={cs.IR}
}
@inproceedings{yang2024translatedistill,
    title={Translate-Distill: Learning Cross-Language Dense Retrieval by Translation and Distillation},
    author={Yang, Eugene and Lawrie, Dawn and Mayfield, James and Oard, Douglas W. and Miller, Scott},
    booktitle={Advances in Information Retrieval (ECIR)},
    year={2024},
    eprint={2401.04810},
    archivePrefix={arXiv}
}
"""


class ScoreDistillationLoss(TeacherStudentMixin, nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        teacher: SentenceTransformer | None = None,
        temperature: float = 0.03,
        candidates: CandidateTable | None = None,
        in_batch: bool = True,
        objective: str = "kl",
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
        teacher_cache: TeacherCache | None = None,
    ) -> None:
        """
        Score distillation from a frozen English teacher into a low-resource-language student: for each bitext pair,
        the teacher reads the English side *as a query* and scores candidate English documents (the translation and
        its nearest neighbours in an English pool); the student reads the LRL side and must give the same softmax over
        the candidates (KL divergence). Unlike contrastive KD, the other relevant documents near the translation (what
        cross-references and relevance judgements point to) are not pushed away but ranked as the teacher ranks them.

        The teacher's side is precomputed once: :class:`optical_st.sampling.TeacherCandidates` encodes an English pool
        and writes each pair's candidate ids and the teacher's query embedding into the ``label`` column, so a step
        runs the student on the LRL column and the teacher on the English column only (the positive; a
        ``teacher_cache`` serves it after the first epoch), and looks the candidates up.

        The label holds the teacher's query *embedding* (as in ``MSELoss``), not per-candidate scores (as in
        sentence-transformers' ``DistillKLDivLoss``): with it the loss scores every candidate of the batch (in-batch,
        ``B * K`` per row), and extra candidate columns (``DynamicHardNegativeSampler`` re-mining with the student,
        run through the frozen teacher) get the teacher's scores too. For OPTICAL's token-level OT term on top, use
        :class:`~optical_st.OTDistillationLoss` with ``score_weight`` on the same dataset.

        Args:
            model: an OPTICAL Router model (``query`` route = student, ``document`` route = frozen teacher), or the
                student when ``teacher`` is given.
            teacher: the frozen teacher when ``model`` is a plain student; ``None`` for a Router model.
            temperature: softmax temperature of both sides (> 0). Around the spread of the teacher's scores over the
                candidates; multilingual-e5 (trained at 0.01) distils best near 0.03 (docs/research_results.md).
            candidates: the :class:`~optical_st.sampling.TeacherCandidates` whose ids the label column holds; ``None``
                when the candidates are text columns (the label is then the query embedding alone).
            in_batch: every row scores the candidates of the whole batch; else only its own.
            objective: ``"kl"`` (default) or ``"margin-mse"`` (MarginMSE on each row's own candidates).
            similarity_fct: ``(B, d), (N, d) -> (B, N)`` similarity for both sides; cosine by default.
            teacher_cache: a :class:`optical_st.TeacherCache` for the teacher's document embeddings (recommended: the
                candidate columns repeat texts across rows and epochs).

        References:
            - Lin, Yang, Lin. Distilling Dense Representations for Ranking using Tightly-Coupled Teachers. 2020.
              https://arxiv.org/abs/2010.11386
            - Yang et al. Translate-Distill: Learning Cross-Language Dense Retrieval by Translation and Distillation.
              ECIR 2024. https://arxiv.org/abs/2401.04810
            - Huang, Yu, Allan. Improving Cross-lingual Information Retrieval on Low-Resource Languages via Optimal
              Transport Distillation. WSDM 2023 (the teacher-student setting).

        Requirements:
            1. Parallel data: an English text and its LRL translation per row.
            2. Candidate English documents per row and the teacher's query embedding of the English side
               (:class:`optical_st.sampling.TeacherCandidates` builds both from an English pool).

        Inputs:
            +--------------------------------------------------+---------------------------------------------+
            | Texts                                            | Labels                                      |
            +==================================================+=============================================+
            | (english, lrl), with ``candidates``              | teacher query embedding of english and the  |
            |                                                  | candidates' pool ids, (d + K,)              |
            +--------------------------------------------------+---------------------------------------------+
            | (english, lrl, candidate_1, ..., candidate_K)    | teacher query embedding of english, (d,)    |
            +--------------------------------------------------+---------------------------------------------+

        Relations:
            - :class:`~sentence_transformers.sentence_transformer.losses.DistillKLDivLoss` is this loss with
              precomputed per-candidate scores, one model for queries and documents, and no in-batch candidates.
            - :class:`optical_st.ContrastiveDistillationLoss` is the hard-label limit (``T -> 0`` on a teacher that
              puts all its mass on the translation).

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
                from optical_st import ScoreDistillationLoss, TeacherCache, build_optical_model, router_mapping
                from optical_st.sampling import TeacherCandidates

                model = build_optical_model("sentence-transformers/all-MiniLM-L6-v2")
                bitext = Dataset.from_dict({
                    "english": ["God is love.", "Jesus wept.", "The Lord is my shepherd."],
                    "lrl": ["Mulungu ndi chikondi.", "Yesu analira.", "Yehova ndiye mbusa wanga."],
                })
                more_english = ["Love is patient.", "He wept bitterly.", "I shall not want."]  # any English text
                candidates = TeacherCandidates.build(model, list(bitext["english"]) + more_english)
                train_dataset = candidates.attach(bitext, model, num_candidates=2)
                loss = ScoreDistillationLoss(model, candidates=candidates, teacher_cache=TeacherCache())
                args = SentenceTransformerTrainingArguments(
                    output_dir="out", router_mapping=router_mapping(train_dataset)
                )
                trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        super().__init__()
        self.model = model
        self.temperature = check_temperature(temperature)
        self.in_batch = bool(in_batch)
        self.objective = check_objective(objective)
        self.similarity_fct = similarity_fct
        self.candidates = candidates  # a frozen table, not a submodule: not saved with the model
        self._init_teacher(model, teacher, teacher_cache)  # optical_st/losses/_teacher.py

    def _check_inputs(self, features: list[dict[str, Any]], labels: Tensor | None) -> None:
        if len(features) < 2:
            raise ValueError(
                f"ScoreDistillationLoss expects (english, lrl, *candidates) text columns, got {len(features)}. "
                "Build the dataset with optical_st.sampling.TeacherCandidates."
            )
        if labels is None:
            raise ValueError(
                "ScoreDistillationLoss needs the teacher's query embeddings of the English side in a `label` column. "
                "Build the dataset with optical_st.sampling.TeacherCandidates.build(model, english).attach(dataset, "
                "model)."
            )
        self.input_checks.check_labels_and_routes(features, labels, takes_labels=True)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        features = list(sentence_features)
        self._check_inputs(features, labels)
        # once: prompts, rows without content, swapped columns, the labels; then the loss's value too
        checking = self.input_checks.check_first_batch(features)
        english, lrl, *candidates = features
        student = self._student.run(lrl)["sentence_embedding"]
        positive, *extra = (self._teacher.frozen(column)["sentence_embedding"] for column in (english, *candidates))
        if checking:  # reads the device: the first batch only, like sentence-transformers' check_teacher_targets
            check_score_labels(labels, positive.shape[-1], self.candidates)
        queries, documents = score_targets(labels.to(student.device), positive, extra, self.candidates)
        loss = self.compute_loss_from_embeddings(student, queries, documents)
        return self.input_checks.check_finite(loss) if checking else loss

    def compute_loss_from_embeddings(self, student: Tensor, teacher_queries: Tensor, candidates: Tensor) -> Tensor:
        """The loss from embeddings (testable on hand-made tensors): see :func:`optical_st.losses.score_kl.score_kl`.

        Args:
            student: ``(B, d)`` student embeddings of the LRL texts, with grad.
            teacher_queries: ``(B, d)`` the teacher's query embeddings of the English texts (the label column).
            candidates: ``(B, K, d)`` teacher document embeddings; ``candidates[:, 0]`` is the translation.
        """
        return score_kl(
            student,
            teacher_queries.to(student.device),
            candidates,
            self.temperature,
            in_batch=self.in_batch,
            similarity_fct=self.similarity_fct,
            objective=self.objective,
        )

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "teacher": self._teacher_config(),
            "temperature": self.temperature,
            "in_batch": self.in_batch,
            "objective": self.objective,
            "similarity_fct": similarity_fct_name(self.similarity_fct),
            "candidate_pool": len(self.candidates.texts) if self.candidates is not None else None,
        }

    @property
    def citation(self) -> str:
        return SCORE_KD_CITATION
