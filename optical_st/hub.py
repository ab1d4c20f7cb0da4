"""Ship OPTICAL models to the Hugging Face Hub: pushes that save locally first, and evaluation results in the Hub's
``model-index`` format.

* :func:`push_to_hub` saves the model to a local folder first and then uploads that folder with
  sentence-transformers' own ``push_to_hub(..., local_model_path=...)``, so a failed upload (offline, network,
  authentication) never loses the trained model; :func:`push_folder_to_hub` pushes a folder that is already saved.
  Both only act on the main process of a distributed run.
* :func:`eval_results_from_metrics` turns a metrics dict into ``huggingface_hub.EvalResult`` objects (task ids checked
  against the ``evaluate`` library's list of Hub tasks), and :func:`add_eval_results_to_card` writes them into a saved
  ``README.md`` as ``model-index`` metadata, which the Hub shows as an evaluation widget.

The card itself (what it says, and the data it is rendered from) is :mod:`optical_st.model_card`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard
from huggingface_hub.utils import HFValidationError, validate_repo_id
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import get_rank

from optical_st import compat
from optical_st.model_card import MODEL_ID_PLACEHOLDER
from optical_st.model_index import merge_eval_results
from optical_st.modeling import load_optical_model
from optical_st.origins import HUB_ID

logger = logging.getLogger(__name__)

__all__ = [
    "HubPushError",
    "add_eval_results_to_card",
    "eval_results_from_metrics",
    "push_folder_to_hub",
    "push_to_hub",
]


# ----------------------------------------------------------------------------------------------------------------
# evaluation results
# ----------------------------------------------------------------------------------------------------------------
def eval_results_from_metrics(
    metrics: Mapping[str, Any],
    *,
    dataset_name: str,
    dataset_type: str,
    dataset_split: str | None = None,
    dataset_config: str | None = None,
    dataset_revision: str | None = None,
    task_type: str = "text-retrieval",
    task_name: str | None = "Cross-Lingual Information Retrieval",
    strip_prefix: str | None = None,
    source_name: str | None = None,
    source_url: str | None = None,
) -> list[EvalResult]:
    """``huggingface_hub.EvalResult`` objects, one a metric, for a card's ``model-index`` metadata.

    ``task_type`` is checked against the Hub's task ids as listed by the ``evaluate`` library
    (``evaluate.config.HF_HUB_ALLOWED_TASKS``); ``evaluate``'s own metrics are Hub-hosted scripts that cannot load
    offline, so the values themselves come from your evaluator (sentence-transformers' ``InformationRetrievalEvaluator``,
    ``ir-measures``, ...). Non-numeric values are skipped, and NaN or infinite ones with a warning.

    Args:
        metrics: metric name -> value (``{"ndcg@10": value, "mrr@10": value, ...}``), e.g. an evaluator's output.
        dataset_name: readable dataset name, e.g. ``"CLIRMatrix en-ny"``.
        dataset_type: dataset id (a Hub dataset id when there is one), e.g. ``"ntu-spml/clirmatrix"``.
        dataset_split: split used, e.g. ``"test"``.
        dataset_config: dataset configuration, e.g. ``"en-ny"``.
        dataset_revision: dataset revision (commit hash).
        task_type: Hub task id.
        task_name: readable task name.
        strip_prefix: removed from the front of metric names, e.g. an evaluator's ``"clir_cosine_"``.
        source_name / source_url: where the numbers come from (paper, leaderboard), shown by the Hub.

    Returns:
        One ``EvalResult`` per numeric metric.

    Example::

        >>> from optical_st.hub import eval_results_from_metrics
        >>> results = eval_results_from_metrics(
        ...     {"ndcg@10": 0.41}, dataset_name="CLIR en-ny", dataset_type="my-org/clir-en-ny", dataset_split="test"
        ... )
        >>> results[0].metric_type, results[0].metric_value
        ('ndcg@10', 0.41)
    """
    from evaluate.config import HF_HUB_ALLOWED_TASKS  # lazy: importing evaluate takes a while

    if task_type not in HF_HUB_ALLOWED_TASKS:
        logger.warning(f"task_type {task_type!r} is not a Hub task id; the Hub will not list the result on a task.")
    results = []
    for name, value in metrics.items():
        if strip_prefix and name.startswith(strip_prefix):
            name = name[len(strip_prefix) :]
        try:
            value = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(value):  # would be written as `.nan` into the card's model-index
            logger.warning(f"Skipping metric {name!r} = {value}: not a finite number.")
            continue
        results.append(
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=dataset_split,
                dataset_config=dataset_config,
                dataset_revision=dataset_revision,
                metric_type=name,
                metric_name=name,
                metric_value=value,
                source_name=source_name,
                source_url=source_url,
            )
        )
    return results


def add_eval_results_to_card(path: str | os.PathLike, eval_results: Sequence[EvalResult]) -> ModelCard:
    """Write evaluation results into a saved model card's ``model-index`` metadata (merged with what is there).

    Works on any sentence-transformers ``README.md``, including a card reused from a model loaded from the Hub.

    Args:
        path: the model folder or its ``README.md``.
        eval_results: results to add; one for the same task, dataset, split and metric replaces the old value.

    Returns:
        The updated ``huggingface_hub.ModelCard`` (already saved).
    """
    readme = Path(path) / "README.md" if Path(path).is_dir() else Path(path)
    card = ModelCard.load(readme)
    card.data.eval_results = merge_eval_results(card.data.eval_results or [], eval_results)
    if not card.data.model_name:  # model-index needs a name: the card's title, as sentence-transformers uses
        title = next((line[2:].strip() for line in card.text.splitlines() if line.startswith("# ")), None)
        card.data.model_name = title or readme.parent.name
    card.save(readme)
    return card


# ----------------------------------------------------------------------------------------------------------------
# pushing
# ----------------------------------------------------------------------------------------------------------------
class HubPushError(RuntimeError):
    """An upload to the Hub failed; the model is safe in ``local_dir``."""

    def __init__(self, message: str, local_dir: Path) -> None:
        super().__init__(message)
        self.local_dir = local_dir


def _check_repo_id(repo_id: str) -> None:
    """The Hub's own rules (huggingface_hub's validator), checked before anything is saved or uploaded."""
    if not isinstance(repo_id, str) or not HUB_ID.match(repo_id):
        raise ValueError(
            f"repo_id must be 'namespace/name' (your user or organization, then the model name), got {repo_id!r}; "
            "the model card's usage snippet loads the model by this id."
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        namespace, name = repo_id.split("/")
        suggestion = "/".join(re.sub(r"([-.])[-.]+", r"\1", part).strip("-.") for part in (namespace, name))
        raise ValueError(
            f"The Hub does not accept the repo_id {repo_id!r}: {err} Choose another one (e.g. {suggestion!r}); "
            "nothing was saved or uploaded."
        ) from None


def _set_card_repo_id(folder: Path, old: str, new: str) -> None:
    """Replace the model id the saved card's usage snippets load (``...("old")``) by ``new``: the id goes into the
    card when the upload starts, and back to the placeholder when it fails, so a retry to another repo id publishes
    a card that names that repo."""
    readme = folder / "README.md"
    if old == new or not readme.is_file():
        return
    text = readme.read_text(encoding="utf8")
    if f'("{old}")' in text:
        readme.write_text(text.replace(f'("{old}")', f'("{new}")'), encoding="utf8")


def push_to_hub(
    model: SentenceTransformer,
    repo_id: str,
    *,
    local_dir: str | os.PathLike,
    private: bool = False,
    create_pr: bool = False,
    token: str | bool | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
    safe_serialization: bool = True,
) -> str | None:
    """Save ``model`` (weights and a freshly generated card) to ``local_dir``, then upload that folder to the Hub.

    The local save comes first, so a failed upload (no network, offline mode, bad token, no permission) leaves a
    complete model folder behind and raises :class:`HubPushError` saying where it is; push it later with
    :func:`push_folder_to_hub`. In a distributed run only the main process saves and pushes; the others return
    ``None`` at once (call it on every rank, as with ``trainer.push_to_hub``).

    Args:
        model: the model to ship: the OPTICAL Router model (``encode_query`` = student, ``encode_document`` =
            teacher) or a student-only model from :func:`optical_st.export_student`.
        repo_id: ``"namespace/name"`` on the Hub; created if needed.
        local_dir: folder for the local copy; must be empty or missing unless ``overwrite=True``.
        private: create the repository as private (an existing repository keeps its visibility).
        create_pr: open a pull request instead of committing to the branch.
        token: Hub token; ``None`` uses ``HF_TOKEN`` or the token saved by ``hf auth login``.
        eval_results: evaluation results for the card and its ``model-index`` metadata
            (see :func:`eval_results_from_metrics`).
        commit_message: commit title; a default names the model.
        revision: branch to push to (created if missing).
        overwrite: allow saving into a non-empty ``local_dir`` (files with the same names are replaced).
        safe_serialization: save weights as safetensors.

    Returns:
        The commit URL, or the pull request URL with ``create_pr=True``; ``None`` on non-main processes.

    Example::

        >>> from optical_st.hub import eval_results_from_metrics, push_to_hub
        >>> results = eval_results_from_metrics(
        ...     {"ndcg@10": 0.41}, dataset_name="CLIR en-ny", dataset_type="my-org/clir-en-ny", dataset_split="test"
        ... )
        >>> push_to_hub(model, "my-org/optical-chichewa", local_dir="runs/optical-chichewa", eval_results=results)  # doctest: +SKIP
        'https://huggingface.co/my-org/optical-chichewa/commit/...'
    """
    _check_repo_id(repo_id)
    if get_rank() != 0:
        return None
    local_dir = Path(local_dir)
    if local_dir.exists() and any(local_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{local_dir} is not empty; everything in it would be uploaded. Choose an empty folder, pass "
            "overwrite=True, or push an already saved model folder with push_folder_to_hub()."
        )
    card = model.model_card_data
    card.set_model_id(repo_id)
    if eval_results and hasattr(card, "add_eval_results"):  # OpticalModelCardData
        card.add_eval_results(eval_results)
    model.save_pretrained(str(local_dir), safe_serialization=safe_serialization)
    # sentence-transformers writes the card the model was loaded with again when no trainer has touched it (a
    # reloaded model), and stock card data keeps no results: then the results go into the saved README here
    reused = bool(compat.loaded_card_text(model)) and "generated_from_trainer" not in (card.tags or [])
    if eval_results and (reused or not hasattr(card, "add_eval_results")) and (local_dir / "README.md").is_file():
        add_eval_results_to_card(local_dir, eval_results)
    logger.info(f"Saved {repo_id} to {local_dir}; uploading.")
    return _upload(
        model,
        local_dir,
        repo_id,
        private=private,
        create_pr=create_pr,
        token=token,
        commit_message=commit_message or f"Add OPTICAL {type(model).__name__} model",
        revision=revision,
    )


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    create_pr: bool = False,
    token: str | bool | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
) -> str | None:
    """Upload a saved sentence-transformers model folder, with its card, to the Hub.

    ``eval_results`` are merged into the card's ``model-index`` metadata, and its usage snippet names the repository
    id while the upload runs. On failure raises :class:`HubPushError`; the folder is left as it was (apart from the
    merged results: the snippet names no repository again, so a retry to another id publishes that id). Only the
    main process of a distributed run pushes; the others return ``None``.

    Args:
        folder: a folder written by ``model.save_pretrained`` (it has ``modules.json``).
        repo_id: ``"namespace/name"`` on the Hub; created if needed.
        private, create_pr, token, eval_results, commit_message, revision: as in :func:`push_to_hub`.

    Returns:
        The commit URL, or the pull request URL with ``create_pr=True``; ``None`` on non-main processes.

    Example::

        >>> from optical_st.hub import push_folder_to_hub
        >>> push_folder_to_hub("runs/optical-chichewa", "my-org/optical-chichewa", create_pr=True)  # doctest: +SKIP
        'https://huggingface.co/my-org/optical-chichewa/discussions/1'
    """
    _check_repo_id(repo_id)
    if get_rank() != 0:
        return None
    folder = Path(folder)
    if not (folder / "modules.json").is_file():
        raise FileNotFoundError(f"{folder} is not a saved sentence-transformers model (no modules.json).")
    readme = folder / "README.md"
    if readme.is_file():
        if eval_results:
            add_eval_results_to_card(readme, eval_results)
    elif eval_results:
        raise FileNotFoundError(f"{folder} has no README.md to write the evaluation results into.")
    # sentence-transformers' push_to_hub is a model method: load the folder (on CPU) to call it on the same files;
    # through load_optical_model, which also loads adapter models (their modules are optical_st's)
    model = load_optical_model(str(folder), device="cpu")
    return _upload(
        model,
        folder,
        repo_id,
        private=private,
        create_pr=create_pr,
        token=token,
        commit_message=commit_message or "Add OPTICAL sentence-transformers model",
        revision=revision,
    )


def _upload(
    model: SentenceTransformer,
    folder: Path,
    repo_id: str,
    *,
    private: bool,
    create_pr: bool,
    token: str | bool | None,
    commit_message: str,
    revision: str | None,
) -> str:
    """Upload ``folder`` as it is on disk, through sentence-transformers; any failure becomes :class:`HubPushError`.
    The card names ``repo_id`` during the upload; after a failure it names no repository again."""
    _set_card_repo_id(folder, MODEL_ID_PLACEHOLDER, repo_id)
    try:
        url = model.push_to_hub(
            repo_id,
            token=token,
            private=private,
            commit_message=commit_message,
            local_model_path=str(folder),
            exist_ok=True,
            revision=revision,
            create_pr=create_pr,
        )
    except Exception as exc:
        _set_card_repo_id(folder, repo_id, MODEL_ID_PLACEHOLDER)
        raise HubPushError(
            f"Pushing to https://huggingface.co/{repo_id} failed ({type(exc).__name__}: {exc}). The model is saved "
            f"locally in {folder.resolve()}; fix the cause (network, HF_HUB_OFFLINE, token: `hf auth login` or "
            f"HF_TOKEN, write access to the namespace) and retry with "
            f"optical_st.hub.push_folder_to_hub({str(folder)!r}, {repo_id!r}).",
            local_dir=folder,
        ) from exc
    logger.info(f"Pushed {folder} to {url}")
    return url
