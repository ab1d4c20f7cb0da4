"""Every private part of sentence-transformers, transformers and datasets that optical_st relies on, in one place.

Each has no public equivalent (the docstrings say what the public route lacks); ``tests/test_compat.py`` tests each
symbol on its own, so a release that renames or drops one fails there, by name, instead of somewhere inside training.
Tested with sentence-transformers 6.3.0, transformers 5.25.0 and datasets 5.2.0 (``setup.cfg`` allows
sentence-transformers 6.x). No other module of optical_st reads a private attribute of these libraries
(``tests/test_code_hygiene.py`` checks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

__all__ = [
    "CARD_RENDERING_FIELDS",
    "dataset_fingerprint",
    "load_with_module_classes",
    "loaded_card_text",
    "parse_as_dict",
]

T = TypeVar("T")

# sentence-transformers' card data keeps its latest to_dict() for the to_yaml() that follows (SentenceTransformer
# ModelCardData._cached_dict): a rendering of one model's card, which a copy of the card data for another model must
# not inherit
CARD_RENDERING_FIELDS = frozenset({"_cached_dict"})


def load_with_module_classes(
    model_class: type[T], model_name_or_path: str, module_classes: Mapping[str, type[nn.Module]], **kwargs: Any
) -> T:
    """``model_class(model_name_or_path, **kwargs)``, resolving the ``modules.json`` types in ``module_classes`` to
    those (already imported) classes: what sentence-transformers' trainer does to reload its own checkpoints
    (``SentenceTransformer._load_with_module_classes``).

    sentence-transformers 6 imports a module class outside its own namespace (optical_st's adapter modules) only with
    ``trust_remote_code=True``, which would also run any modeling code the repository ships. This resolves exactly the
    classes given, from the installed package; every other type, the ``trust_remote_code`` gate included, resolves as
    usual. Without the private loader (another sentence-transformers), the plain constructor runs, which asks for
    ``trust_remote_code=True``.
    """
    load: Callable[..., T] | None = getattr(model_class, "_load_with_module_classes", None)
    if load is None or kwargs.get("trust_remote_code"):
        return model_class(model_name_or_path, **kwargs)
    return load(model_name_or_path, module_classes, **kwargs)


def loaded_card_text(model: Any) -> str | None:
    """The ``README.md`` a sentence-transformers model was loaded with (``model._model_card_text``), or ``None``.

    sentence-transformers writes this text back unchanged when the model is saved without having been trained since
    (no ``generated_from_trainer`` tag); :mod:`optical_st.hub` needs to know whether that will happen, and
    :func:`optical_st.load_optical_model` restores the card data from it without reading the file a second time."""
    return getattr(model, "_model_card_text", None)


def parse_as_dict(*names: str) -> Callable[[type[T]], type[T]]:
    """A class decorator for ``TrainingArguments`` subclasses: the fields ``names`` may be given as JSON strings on the
    command line and are parsed into dicts, as transformers does for its own dict fields (``_VALID_DICT_FIELDS``,
    which sentence-transformers' ``MultiVectorEncoderTrainingArguments`` extends the same way for ``max_length``)."""

    def decorate(cls: type[T]) -> type[T]:
        cls._VALID_DICT_FIELDS = [*cls._VALID_DICT_FIELDS, *(n for n in names if n not in cls._VALID_DICT_FIELDS)]
        return cls

    return decorate


def dataset_fingerprint(dataset: Any) -> str | None:
    """A ``datasets.Dataset``'s fingerprint (``dataset._fingerprint``): a digest of its content and of the transforms
    that made it, new for every ``.map``, ``.filter``, ``.select``; ``None`` for objects without one. datasets
    computes it for its cache but exposes no public accessor."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    return fingerprint if isinstance(fingerprint, str) else None
