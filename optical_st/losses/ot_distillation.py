"""OPTICAL's loss: optimal-transport distillation of the teacher's token space into the student."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from optical_st import transport
from optical_st.losses._sides import Encoder
from optical_st.losses._teacher import TeacherStudentMixin
from optical_st.losses.info_nce import check_temperature, info_nce
from optical_st.losses.ot_monitor import OTMonitor
from optical_st.losses.score_kl import CandidateTable, check_score_labels, score_kl, score_targets
from optical_st.losses.teacher_cache import TeacherCache
from optical_st.losses.token_embeddings import TokenEmbeddings
from optical_st.transport import OTConfig
from optical_st.utils import as_float

__all__ = ["OPTICAL_CITATION", "OTDistillationLoss", "TokenEmbeddings"]

OPTICAL_CITATION = """
@inproceedings{huang2023optical,
    title={Improving Cross-lingual Information Retrieval on Low-Resource Languages via Optimal Transport Distillation},
    author={Huang, Zhiqi and Yu, Puxuan and Allan, James},
    booktitle={Proceedings of the Sixteenth ACM International Conference on Web Search and Data Mining},
    series={WSDM '23},
    pages={1048--1056},
    year={2023},
    doi={10.1145/3539597.3570468},
    eprint={2301.12566},
    archivePrefix={arXiv}
}
"""


class OTDistillationLoss(TeacherStudentMixin, nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        teacher: SentenceTransformer | None = None,
        ot_config: OTConfig | None = None,
        sentence_weight: float = 0.0,
        contrastive_weight: float = 0.0,
        temperature: float = 0.05,
        symmetric: bool = False,
        teacher_cache: TeacherCache | None = None,
        score_weight: float = 0.0,
        candidates: CandidateTable | None = None,
        **ot_settings: Any,
    ) -> None:
        """
        OPTICAL's optimal-transport knowledge distillation (Huang, Yu & Allan, WSDM 2023).

        The student encoder reads the low-resource-language (LRL) side of a bitext pair, the frozen English teacher
        reads the English side. For every pair the loss builds the cost matrix ``C`` between the student's and the
        teacher's token embeddings, solves the entropic OT problem for a plan ``P`` (batched log-domain Sinkhorn,
        :func:`optical_st.transport.sinkhorn_log`) and returns the batch mean of ``<P, C>_F``. The plan is held fixed
        (envelope theorem: ``dL/dC = P``), so no graph is kept through the Sinkhorn iterations. The student thus
        learns to place its LRL tokens where the teacher puts their English counterparts, without word alignments.

        Names used across the project: **the paper's loss** is this OT term alone with the paper's raw cosine cost
        (``OTDistillationLoss(model, ot_config=OTConfig(center=False, cost_scale=None))``); **OT alone** is the
        defaults (centred, rescaled costs); **the recommended recipe** adds the InfoNCE term at the teacher's
        temperature and a mined hard negative: ``optical_st.recipe.RECOMMENDED.loss(model)``, with its data preparation
        and training arguments (:mod:`optical_st.recipe`).

        Two ways to supply the teacher:

        1. **Recommended:** ``model`` built with :func:`optical_st.build_optical_model` (a Router with a ``query`` route =
           student and a frozen ``document`` route = teacher), trained with
           ``router_mapping=optical_st.router_mapping(train_dataset)``. The English column is then tokenized by the
           teacher's own tokenizer, so student and teacher may use different vocabularies, and the saved model
           answers ``encode_query`` (LRL, student) and ``encode_document`` (English, teacher).
        2. ``model`` = the student alone and ``teacher`` = a separate ``SentenceTransformer`` held (frozen) by the
           loss and never saved with the student. The English column is tokenized by the student's tokenizer, so this
           path requires both tokenizers to be identical (e.g. a student initialised from the teacher); otherwise a
           ``ValueError`` points to option 1.

        Args:
            model: the student, or an OPTICAL Router model (see above).
            teacher: the frozen English teacher for option 2; ``None`` for option 1.
            ot_config: the transport problem's settings, an :class:`~optical_st.OTConfig`: Sinkhorn's ``reg``,
                ``max_iter`` and ``tol``, the ``cost``, ``center``, ``cost_scale``, ``exclude_special_tokens`` and the
                ``solver``. ``None``: its defaults (centred cosine costs scaled by their largest entry, ``reg=0.05``).
            sentence_weight: weight of an extra sentence-level term, ``1 - cos(student, teacher)`` of the pooled
                embeddings. ``0`` (default): none, as in the paper.
            contrastive_weight: weight of an extra InfoNCE term on pooled embeddings: the student's LRL embedding
                must pick the teacher's embedding of its English translation among the teacher embeddings of the
                batch's other English texts and of the hard-negative columns (``english, lrl, negative_1, ...``,
                e.g. from :class:`optical_st.DynamicHardNegativeSampler`). Candidates identical to the positive
                (repeated texts) are masked. ``0`` (default): OT alone, which then accepts no extra columns; the
                recommended recipe uses ``1.0``.
            temperature: softmax temperature of the InfoNCE term and of the score term (``0.05`` = ST's MultipleNegativesRankingLoss
                ``scale=20``). Match the teacher's training temperature: its similarities live in that range, and a
                softer one pushes the student out of the teacher's space, which shows in the English -> LRL
                direction (multilingual-e5 was trained with ``0.01``; the demo's runs at both temperatures are in
                docs/demo_tuning.md).
            symmetric: also the reverse InfoNCE direction (each teacher embedding must pick its own student embedding
                among the batch's). The forward term alone ranks English documents for a Chichewa query but leaves
                free how student embeddings rank for an English query; it helps that direction at a too soft
                ``temperature``, but the teacher's temperature is the real fix (docs/demo_tuning.md).
            teacher_cache: a :class:`optical_st.TeacherCache` to read the frozen teacher's outputs from instead of
                running it again for texts it has already encoded (later epochs, or other losses with the same
                teacher given the same cache). Changes no result beyond float rounding; ``None``: no cache.
            score_weight: weight of an extra score-distillation term (:func:`optical_st.losses.score_kl.score_kl`):
                the student's LRL embedding must rank the batch's candidate English documents (the English column,
                the extra columns and the ``candidates`` whose ids the label holds) as the teacher ranks them for the
                English text read as a query, whose embedding the ``label`` column holds
                (:class:`optical_st.sampling.TeacherCandidates` builds such data). ``0`` (default): none.
                :class:`~optical_st.ScoreDistillationLoss` is this term alone; score distillation distils well near
                ``temperature=0.03`` for multilingual-e5.
            candidates: the :class:`~optical_st.sampling.TeacherCandidates` of the score term's label ids.
            **ot_settings: deprecated: ``OTConfig``'s fields as keywords (``reg=0.02``), the form before
                ``OTConfig``; still accepted, with a ``FutureWarning``. Not together with ``ot_config``.

        Attributes:
            ot_config: the :class:`~optical_st.OTConfig` in use.
            last_solver_log: the :class:`optical_st.transport.SinkhornLog` of the latest batch (iterations, convergence,
                marginal errors; ``None`` before the first batch or with ``solver="emd"``), read by the FLOPs counter's
                analytic Sinkhorn estimate.
            monitor: the :class:`~optical_st.losses.OTMonitor` collecting the plans' diagnostics for the trainer's
                logs (:class:`~optical_st.losses.OTDiagnosticsCallback`) and counting the rows without content (all
                special, prompt or padding tokens on a side), which get no transport weight.
            input_checks: what the loss checks of its inputs: the routes of every batch, the prompts, the
                direction, the rows without content and a finite loss on the first batch (``every_batch = True``: on
                every batch, one host read each).

        References:
            - Huang, Yu, Allan. Improving Cross-lingual Information Retrieval on Low-Resource Languages via Optimal
              Transport Distillation. WSDM 2023. https://arxiv.org/abs/2301.12566
            - Cuturi. Sinkhorn Distances: Lightspeed Computation of Optimal Transport. NeurIPS 2013.

        Requirements:
            1. Parallel data: an English text and its LRL translation per row.
            2. A teacher whose token embeddings have the student's width, or a student with a projection
               (``build_optical_model`` adds one; or :func:`optical_st.add_projection`).

        Inputs:
            +-------------------------------------------------------------+--------+
            | Texts                                                       | Labels |
            +=============================================================+========+
            | (english source, lrl target) pairs                          | none   |
            +-------------------------------------------------------------+--------+
            | (english, lrl, negative_1, ..., negative_k), with           | none   |
            | ``contrastive_weight > 0`` (negatives are English texts)    |        |
            +-------------------------------------------------------------+--------+
            | (english, lrl, candidate_1, ..., candidate_k), with         | teacher|
            | ``score_weight > 0``                                        | query  |
            |                                                             | embed. |
            +-------------------------------------------------------------+--------+

        Relations:
            - :class:`sentence_transformers.sentence_transformer.losses.MSELoss` distils pooled sentence embeddings
              (Reimers & Gurevych 2020); this loss distils the token space.
            - :class:`optical_st.ContrastiveDistillationLoss` is the contrastive-KD baseline.
            - :class:`optical_st.DynamicHardNegativeSampler` supplies hard-negative columns, re-mined with the
              student during training, for the ``contrastive_weight`` term.

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
                from optical_st import OTConfig, OTDistillationLoss, build_optical_model, router_mapping

                model = build_optical_model("sentence-transformers/all-MiniLM-L6-v2")  # student = copy of teacher
                train_dataset = Dataset.from_dict({
                    "english": ["In the beginning God created the heavens and the earth."],
                    "chichewa": ["Pachiyambi Mulungu adalenga kumwamba ndi dziko lapansi."],
                })
                loss = OTDistillationLoss(model)  # or e.g. ot_config=OTConfig(reg=0.02, max_iter=500)
                args = SentenceTransformerTrainingArguments(
                    output_dir="out", router_mapping=router_mapping(train_dataset)
                )
                trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss)
                trainer.train()
                model.encode_query(["Mulungu ndi chikondi"])        # Chichewa -> student
                model.encode_document(["God is love"])              # English -> teacher
        """
        super().__init__()
        if ot_config is not None and not isinstance(ot_config, OTConfig):
            raise TypeError(
                f"ot_config must be an optical_st.OTConfig or None, got {type(ot_config).__name__}; e.g. "
                "ot_config=OTConfig(reg=0.02)."
            )
        self.model = model
        self.ot_config = _ot_config(ot_config, ot_settings)
        # every number checked (finite, in range) and stored as a plain float now, not at the first step: an inf or
        # NaN weight would otherwise wipe the student in one optimizer step (numpy / 0-d tensors accepted)
        self.sentence_weight = as_float("sentence_weight", sentence_weight, minimum=0.0)
        self.contrastive_weight = as_float("contrastive_weight", contrastive_weight, minimum=0.0)
        self.temperature = check_temperature(temperature)
        self.symmetric = bool(symmetric)
        self.score_weight = as_float("score_weight", score_weight, minimum=0.0)
        self.candidates = candidates  # a frozen table, not a submodule: not saved with the model
        if self.symmetric and self.contrastive_weight == 0:  # the reverse direction belongs to the InfoNCE term
            raise ValueError(
                "symmetric=True adds the reverse direction to the InfoNCE term, which contrastive_weight=0 switches "
                "off; set contrastive_weight > 0 (e.g. 1.0) or drop symmetric=True."
            )
        self.last_solver_log: transport.SinkhornLog | None = None
        self.monitor = OTMonitor()

        # optical_st/losses/_teacher.py, shared with ContrastiveDistillationLoss
        self._init_teacher(model, teacher, teacher_cache)

    # ----------------------------------------------------------------------------------------------
    def _check_inputs(self, features: list[dict[str, Any]], labels: Tensor | None) -> None:
        n_expected = 2
        if self.score_weight > 0 and labels is None:
            raise ValueError(
                "score_weight > 0 needs the teacher's query embeddings of the English side in a `label` column. Build "
                "the dataset with optical_st.sampling.TeacherCandidates.build(model, english).attach(dataset, model)."
            )
        if self.contrastive_weight > 0 or self.score_weight > 0:
            if len(features) < n_expected:
                raise ValueError(
                    f"OTDistillationLoss expects (english, lrl, *english_negatives) text columns, got {len(features)}."
                )
        elif len(features) != n_expected:
            raise ValueError(
                f"OTDistillationLoss expects exactly {n_expected} text columns (english, lrl), got {len(features)}. "
                "Select them with `dataset.select_columns(['english', 'lrl'])`, or set contrastive_weight > 0 to "
                "use extra columns as hard negatives."
            )
        self.input_checks.check_labels_and_routes(features, labels, takes_labels=self.score_weight > 0)

    def _exclude_mask(self, features: dict[str, Any], side: Encoder) -> Tensor | None:
        if not self.ot_config.exclude_special_tokens:
            return None
        ids = features["input_ids"]
        return transport.special_tokens_mask(ids, side.special_ids_on(ids.device), features.get("prompt_length"))

    # ----------------------------------------------------------------------------------------------
    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> Tensor | dict[str, Tensor]:
        features = list(sentence_features)
        self._check_inputs(features, labels)
        # once: prompts, rows without content, swapped columns; then the loss's value too (_input_checks.py)
        checking = self.input_checks.check_first_batch(features)
        source, target, *negatives = features
        student = TokenEmbeddings.from_output(self._student.run(target), self._exclude_mask(target, self._student))
        teacher_out = self._teacher.frozen(source)
        teacher = TokenEmbeddings.from_output(teacher_out, self._exclude_mask(source, self._teacher))
        if checking and self.score_weight > 0:  # the labels with the first batch's checks: reading them syncs
            check_score_labels(labels, teacher_out["sentence_embedding"].shape[-1], self.candidates)
        # only the pooled embedding of a negative is used; no graph, like the positive's
        negative_sentences = [self._teacher.frozen(negative)["sentence_embedding"] for negative in negatives]
        loss = self.compute_loss_from_embeddings(
            student=student,
            teacher=teacher,
            negative_sentences=negative_sentences or None,
            teacher_queries=labels if self.score_weight > 0 else None,
        )
        return self.input_checks.check_finite(loss) if checking else loss

    def compute_loss_from_embeddings(
        self,
        student: TokenEmbeddings,
        teacher: TokenEmbeddings,
        negative_sentences: Sequence[Tensor] | None = None,
        teacher_queries: Tensor | None = None,
    ) -> Tensor | dict[str, Tensor]:
        """The loss from embeddings, kept apart from ``forward`` so the maths can be tested on hand-made tensors.

        Args:
            student: the student's side (LRL texts), tokens with grad; ``student.sentence`` is used when
                ``sentence_weight > 0`` or ``contrastive_weight > 0``.
            teacher: the teacher's side (English texts), likewise.
            negative_sentences: teacher embeddings of the hard negatives, one ``(B, d)`` tensor per negative column
                (used by the contrastive term), or of the candidates (the score term).
            teacher_queries: the label column: the teacher's query embeddings of the English texts (``(B, d)``), and
                the candidates' ids with ``candidates`` (the score term).

        Returns:
            The scalar loss, or a dict of weighted components (``"ot"``, ``"sentence"``, ``"contrastive"``) when an
            extra term is on (the trainer sums and logs them).
        """
        ot_loss = self._ot_term(student, teacher)
        if self.sentence_weight == 0 and self.contrastive_weight == 0 and self.score_weight == 0:
            if negative_sentences:
                raise ValueError("Hard-negative embeddings were given but contrastive_weight is 0.")
            return ot_loss
        if student.sentence is None or teacher.sentence is None:
            raise ValueError(
                "sentence_weight, contrastive_weight or score_weight > 0 needs pooled 'sentence_embedding' outputs from both "
                "encoders."
            )
        losses = {"ot": ot_loss}
        if self.sentence_weight > 0:
            sentence_loss = (
                1 - F.cosine_similarity(student.sentence.float(), teacher.sentence.detach().float(), dim=-1)
            ).mean()
            losses["sentence"] = self.sentence_weight * sentence_loss
        if self.contrastive_weight > 0:
            contrastive = info_nce(
                student.sentence, teacher.sentence, negative_sentences, self.temperature, symmetric=self.symmetric
            )
            losses["contrastive"] = self.contrastive_weight * contrastive
        if self.score_weight > 0:
            if teacher_queries is None:
                raise ValueError("score_weight > 0 needs teacher_queries (the label column).")
            labels = teacher_queries.to(teacher.sentence.device)
            queries, documents = score_targets(labels, teacher.sentence, negative_sentences or [], self.candidates)
            losses["score"] = self.score_weight * score_kl(student.sentence, queries, documents, self.temperature)
        return losses

    def _ot_term(self, student: TokenEmbeddings, teacher: TokenEmbeddings) -> Tensor:
        """The mean of ``<P, C>_F`` over the rows with content on both sides: the cost between the two sides' tokens,
        then the plan held fixed. A row without content (its tokens all special, prompt or padding: an empty text, or
        one its prompt swallows) gets no weight, found with masks, so the step reads nothing back from the device."""
        student.check_padded("student")
        teacher.check_padded("teacher")
        config = self.ot_config
        a = transport.token_marginals(student.mask, student.exclude, name="lrl column (student)")
        b = transport.token_marginals(teacher.mask, teacher.exclude, name="english column (teacher)")
        rows = (a.sum(-1) > 0) & (b.sum(-1) > 0)  # (B,): both sides have a token to transport
        student_tokens, teacher_tokens = student.tokens, teacher.tokens.detach()
        if config.center and student_tokens.shape[-1] == teacher_tokens.shape[-1]:  # else the cost names the fix
            # the mass-weighted mean teacher token of the rows with content: a constant shift for both sides (fp32,
            # no gradient)
            mass = b * rows.unsqueeze(-1)
            mean = (teacher_tokens.float() * mass.unsqueeze(-1)).sum((0, 1)) / mass.sum().clamp_min(_TINY)
            student_tokens, teacher_tokens = student_tokens.float() - mean, teacher_tokens.float() - mean
        cost = transport.pairwise_cost(student_tokens, teacher_tokens, config.cost)
        if config.cost_scale == "max":
            valid = (a.unsqueeze(2) > 0) & (b.unsqueeze(1) > 0)  # padding and excluded tokens do not set the scale
            largest = cost.detach().masked_fill(~valid, 0).amax(dim=(1, 2), keepdim=True)
            cost = cost / largest.clamp_min(1e-12)
        # a row without content: zero cost and all its mass on its first token on each side, a problem solved at once
        # whose value (0) the mean leaves out; the rows with content are solved as they would be alone
        cost = torch.where(rows.view(-1, 1, 1), cost, 0.0)
        distances, plan, self.last_solver_log = transport.ot_distance(
            cost,
            _on_first_token(a, rows),
            _on_first_token(b, rows),
            reg=config.reg,
            solver=config.solver,
            max_iter=config.max_iter,
            tol=config.tol,
            return_log=True,
        )
        self._watch(plan, cost, a, b, rows)
        # every row with content: the plain mean, as without the mask; else the mean over the rows with content
        return torch.where(rows.all(), distances.mean(), distances.sum() / rows.sum().clamp_min(1))

    def _watch(self, plan: Tensor, cost: Tensor, a: Tensor, b: Tensor, rows: Tensor) -> None:
        """Count the batch and its rows without content, record the plan's diagnostics while a callback reads them
        (:class:`~optical_st.losses.OTDiagnosticsCallback`), and warn when Sinkhorn stopped before converging."""
        log = self.last_solver_log
        self.monitor.observe((~rows).sum())
        if self.monitor.enabled:
            stats = {**transport.plan_stats(plan, a, b, rows), "cost_std": transport.cost_std(cost, a, b)}
            if log is not None:
                stats["sinkhorn_iters"] = log.n_iter
            self.monitor.record(stats)
        if log is not None and not log.converged:  # the error is read back only for a batch that did not converge
            self.monitor.check_convergence(
                converged=False,
                n_iter=log.n_iter,
                error=float(log.err.max()),
                reg=self.ot_config.reg,
                max_iter=self.ot_config.max_iter,
                tol=self.ot_config.tol,
            )

    def get_config_dict(self) -> dict[str, Any]:
        # the OT settings flat, as before OTConfig: model cards and saved configs read the same keys
        return {
            "teacher": self._teacher_config(),
            **self.ot_config.to_dict(),
            "sentence_weight": self.sentence_weight,
            "contrastive_weight": self.contrastive_weight,
            "temperature": self.temperature,
            "symmetric": self.symmetric,
            **({"score_weight": self.score_weight} if self.score_weight else {}),
        }

    @property
    def citation(self) -> str:
        return OPTICAL_CITATION


_TINY = torch.finfo(torch.float32).tiny


def _on_first_token(marginals: Tensor, rows: Tensor) -> Tensor:
    """``marginals`` with every row not in ``rows`` replaced by all its mass on its first token."""
    if marginals.shape[-1] == 0:  # no tokens at all: the solvers return an empty plan
        return marginals
    first = torch.zeros_like(marginals[:1])
    first[:, 0] = 1.0
    return torch.where(rows.unsqueeze(-1), marginals, first)


def _ot_config(ot_config: OTConfig | None, ot_settings: dict[str, Any]) -> OTConfig:
    """The loss's OTConfig; the transport settings passed one by one (``reg=0.02``), as before OTConfig grouped them,
    still work with a FutureWarning so existing scripts and published recipes keep running."""
    if not ot_settings:
        return ot_config if ot_config is not None else OTConfig()
    fields = {f.name for f in dataclasses.fields(OTConfig)}
    unknown = sorted(set(ot_settings) - fields)
    if unknown:
        raise TypeError(
            f"OTDistillationLoss got unexpected keyword argument(s) {unknown}; the transport settings are "
            f"OTConfig's fields: {sorted(fields)}."
        )
    if ot_config is not None:
        raise ValueError(
            f"Pass the transport settings once: either ot_config=OTConfig(...) or {sorted(ot_settings)} as keywords, "
            f"not both; e.g. ot_config=dataclasses.replace(ot_config, {', '.join(f'{k}=...' for k in ot_settings)})."
        )
    settings = ", ".join(f"{k}={v!r}" for k, v in ot_settings.items())
    warnings.warn(
        f"OTDistillationLoss({settings}) is deprecated: pass ot_config=OTConfig({settings}).",
        FutureWarning,
        stacklevel=3,
    )
    return OTConfig(**ot_settings)
