"""Encoding texts through one route of a model, at the compute precision that is fast on this machine.

The evaluation of a test collection and the search index read a model through :func:`encode_route`: queries through
``encode_query`` (an OPTICAL model's student), documents through ``encode_document`` (its frozen teacher); plain
``model.encode`` would run the teacher for both. ``compute_dtype`` says how the encoder computes:

* ``"float32"``: the model as it is;
* ``"bfloat16"``: bf16 autocast (``torch.autocast``): matrix products in bf16, norms and softmax in float32; fast on
  CPUs with AMX or AVX512-BF16 (:func:`optical_st.utils.fast_bf16_available`), emulated and slower elsewhere;
* ``"auto"``: bfloat16 for the corpus on such a CPU, float32 for the queries and everywhere else (GPUs included).

Why only the corpus: it is what costs (every document, against a handful of queries), and the benchmark that chose
these settings found bf16 on the corpus within the quality the project allows, on the queries as well not
(``benchmarks/cpu_backends.py``, which also measures ONNX Runtime and OpenVINO; docs/benchmarks.md). Embeddings
always come back as float32 tensors on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from optical_st.routes import STUDENT_ROUTE, TEACHER_ROUTE
from optical_st.utils import fast_bf16_available

__all__ = ["COMPUTE_DTYPES", "compute_autocast", "encode_route", "resolve_compute_dtype"]

logger = logging.getLogger(__name__)

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


def resolve_compute_dtype(
    compute_dtype: str = "auto", device: str | torch.device = "cpu", side: Literal["corpus", "queries"] = "corpus"
) -> str:
    """``"float32"`` or ``"bfloat16"``: what ``compute_dtype`` means for one ``side`` of a search on ``device`` (see the
    module docstring: ``"auto"`` is bfloat16 for a corpus on a CPU with fast bf16, float32 otherwise)."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}.")
    if side not in ("corpus", "queries"):
        raise ValueError(f"side must be 'corpus' or 'queries', got {side!r}.")
    cpu = torch.device(device).type == "cpu"
    if compute_dtype == "auto":
        return "bfloat16" if side == "corpus" and cpu and fast_bf16_available("cpu") else "float32"
    if compute_dtype == "bfloat16" and not fast_bf16_available(device):
        logger.warning(
            "This %s has no fast bf16: bfloat16 is emulated and slower than float32.", "CPU" if cpu else "GPU"
        )
    return compute_dtype


@contextlib.contextmanager
def compute_autocast(compute_dtype: str, device: str | torch.device = "cpu") -> Iterator[None]:
    """bf16 autocast on ``device`` for ``"bfloat16"``, nothing for ``"float32"`` (resolve ``"auto"`` first)."""
    if compute_dtype == "bfloat16":
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            yield
    elif compute_dtype == "float32":
        yield
    else:
        raise ValueError(f"Resolve {compute_dtype!r} with resolve_compute_dtype() first.")


def encode_route(
    model: Any,
    texts: Sequence[str],
    *,
    route: Literal["query", "document"],
    compute_dtype: str = "float32",
    prompt: str | None = None,
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> Tensor:
    """Embeddings ``(len(texts), dim)`` of ``texts`` through ``model.encode_query`` (``route="query"``) or
    ``model.encode_document`` (``"document"``), as float32 on the CPU.

    ``prompt``: ``None`` for the route's own prompt (the model's ``query`` / ``document`` prompt), or the text to put
    in front instead (``""`` for none): the zero-shot teacher reads queries through the document route with the query
    prompt. ``compute_dtype``: ``"float32"`` or ``"bfloat16"`` (:func:`resolve_compute_dtype` turns ``"auto"`` into
    one of them for a corpus or for queries).
    """
    if route not in (STUDENT_ROUTE, TEACHER_ROUTE):
        raise ValueError(f"route must be {STUDENT_ROUTE!r} or {TEACHER_ROUTE!r}, got {route!r}.")
    texts = list(texts)
    if not texts:
        raise ValueError("No texts to encode.")
    encode = model.encode_query if route == STUDENT_ROUTE else model.encode_document
    with compute_autocast(compute_dtype, model.device):
        embeddings = encode(
            texts, prompt=prompt, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar
        )
    return embeddings.float().cpu()
