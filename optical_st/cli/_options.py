"""Argument types of the ``optical-st`` commands: every number, encoding and Hub id is checked by the parser, so a
wrong value stops the command with its fix before anything is read or loaded."""

from __future__ import annotations

import argparse
import codecs
from collections.abc import Callable

from optical_st.inference import COMPUTE_DTYPES
from optical_st.model_card import HUB_ID
from optical_st.utils import as_float, as_int

__all__ = ["UsageError", "add_encoding_options", "add_model_option", "encoding", "hub_model_id", "integer", "number"]

MODEL_HELP = "an OPTICAL model folder or Hub id (or any sentence-transformers model)"


class UsageError(ValueError):
    """Arguments that cannot go together, or an output folder that cannot be used as asked."""


def integer(
    minimum: int, *, maximum: int | None = None, unset: int | None = None, hint: str = ""
) -> Callable[[str], int]:
    """An ``int`` type for argparse: ``>= minimum`` (and ``<= maximum``), or exactly ``unset`` (e.g. ``-1``: no
    limit); ``hint`` says what the value means."""

    def parse(text: str) -> int:
        try:
            value = int(text)
            if value != unset:
                as_int("value", value, minimum=minimum)
                if maximum is not None and value > maximum:
                    raise ValueError
        except ValueError:
            bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            either = f" (or {unset}{hint})" if unset is not None else hint
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}{either}, got {text!r}") from None
        return value

    return parse


def number(
    minimum: float, *, exclusive: bool = False, below: float | None = None, hint: str = ""
) -> Callable[[str], float]:
    """A finite ``float`` type for argparse, ``>= minimum`` (``> minimum`` when ``exclusive``) and ``< below``."""

    def parse(text: str) -> float:
        try:
            value = as_float("value", float(text), minimum=minimum, exclusive_minimum=exclusive)
            if below is not None and value >= below:
                raise ValueError
        except ValueError:
            bounds = f"{'>' if exclusive else '>='} {minimum:g}" + (f" and < {below:g}" if below is not None else "")
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}{hint}, got {text!r}") from None
        return value

    return parse


def encoding(text: str) -> str:
    """A text encoding Python knows (``utf-8``, ``cp1252``, ``latin-1``, ``utf-16``, ...)."""
    try:
        codecs.lookup(text)
    except LookupError:
        raise argparse.ArgumentTypeError(
            f"unknown encoding {text!r}; e.g. utf-8, cp1252 (Windows, Western European), latin-1, utf-16"
        ) from None
    return text


def hub_model_id(text: str) -> str:
    """A Hub repository id, ``namespace/name``."""
    if not HUB_ID.match(text):
        raise argparse.ArgumentTypeError(f"must be 'namespace/name' (e.g. my-org/optical-swahili), got {text!r}")
    return text


def add_model_option(parser: argparse.ArgumentParser, *, required: bool = True, help: str = MODEL_HELP) -> None:
    """``--model``: the model a command loads."""
    parser.add_argument("--model", required=required, default=None, help=help)


def add_encoding_options(parser: argparse.ArgumentParser, *, dtype_help: str, cache_help: str | None = None) -> None:
    """How a command encodes texts: ``--compute-dtype`` (``dtype_help`` says what ``auto`` means there),
    ``--batch-size`` and, with ``cache_help`` (what ``--no-cache`` skips), ``--cache-dir`` / ``--no-cache``."""
    parser.add_argument("--compute-dtype", default="auto", choices=COMPUTE_DTYPES, help=dtype_help)
    parser.add_argument("--batch-size", type=integer(1), default=64, help="texts encoded at a time (default: 64)")
    if cache_help is not None:
        parser.add_argument(
            "--cache-dir", default=None, help="the embedding cache (default: ~/.cache/optical_st/embeddings)"
        )
        parser.add_argument("--no-cache", action="store_true", help=cache_help)
