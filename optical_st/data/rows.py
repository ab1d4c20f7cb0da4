"""Row checks of text pairs, the one home of their wording: texts that cannot be trained on
(:func:`find_bad_rows`), pairs with the same text in both columns (:func:`identical_rows`), repeated pairs
(:func:`duplicate_rows`) and held-out pairs that the training pairs already hold (:func:`find_overlap`).

The losses' dataset check and the ``optical-st train`` command both run them. Pure Python and tokenizers: no model
is run, and only the few texts that could hold no token of their own are tokenized.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "MAX_ROWS_SHOWN",
    "Overlap",
    "TextColumn",
    "bad_rows_message",
    "content_special_ids",
    "duplicate_rows",
    "find_bad_rows",
    "find_overlap",
    "identical_rows",
    "prompt_length",
]

# rows named in a message; the count says how many more
MAX_ROWS_SHOWN = 10
_WORD = re.compile(r"\w")

# (row, column, problem)
BadRow = tuple[int, str, str]


def content_special_ids(tokenizer: Any) -> frozenset[int]:
    """The token ids that carry no text: the tokenizer's special ids, ``[UNK]`` left out (in a low-resource
    language it stands for real, unknown words, which must be aligned too)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return frozenset(special - {getattr(tokenizer, "unk_token_id", None)})


def prompt_length(tokenizer: Any, prompt: str) -> int:
    """The leading tokens of ``prompt + text`` that belong to the prompt, as sentence-transformers counts them
    (``features["prompt_length"]``, which the OT loss gives no mass): the prompt's tokens, its opening special token
    included and a closing one left out. 0 without a prompt."""
    if not prompt:
        return 0
    ids = tokenizer([prompt])["input_ids"][0]
    return len(ids) - (1 if ids and ids[-1] in set(tokenizer.all_special_ids) else 0)


@dataclass
class TextColumn:
    """One text column as training reads it: the column, the tokenizer that reads it and the ids that carry no
    text (default: :func:`content_special_ids`), and, to check texts as the trainer feeds them, the prompt put
    before each text and the training length in tokens."""

    column: str
    tokenizer: Any = None
    special_ids: frozenset[int] | None = None
    prompt: str = ""
    max_length: int | None = None
    _special: re.Pattern[str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.special_ids is None and self.tokenizer is not None:
            self.special_ids = content_special_ids(self.tokenizer)
        tokens = [t for t in getattr(self.tokenizer, "all_special_tokens", []) or [] if t]
        if tokens:
            self._special = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))

    def may_be_empty(self, text: str) -> bool:
        """Whether ``text`` could tokenize to no token of its own (cheap): it has no letter or digit outside
        special-token strings, or, after a prompt, it is one word, which the prompt's last token can absorb
        (``"query: "`` + ``"-"`` is ``▁que ry : ▁-`` for a SentencePiece tokenizer, where ``"query: "`` alone ends
        in ``▁``)."""
        plain = text if self._special is None else self._special.sub(" ", text)
        return not _WORD.search(plain) or (bool(self.prompt) and len(plain.split()) <= 1)

    def without_content(self, texts: list[str]) -> list[bool]:
        """For each text, whether it holds no token of its own once tokenized as in training: after the prompt,
        within ``max_length``, special tokens left out."""
        if self.tokenizer is None or not texts:
            return [False] * len(texts)
        truncate = {"truncation": True, "max_length": self.max_length} if self.max_length else {}
        ids = self.tokenizer([self.prompt + text for text in texts], **truncate)["input_ids"]
        skip = prompt_length(self.tokenizer, self.prompt)
        special = self.special_ids or frozenset()
        return [all(i in special for i in row[skip:]) for row in ids]


def _problem(text: Any) -> str | None:
    if text is None or (isinstance(text, float) and text != text):  # None, or pandas' NaN
        return "missing"
    if not isinstance(text, str):
        return f"not text ({type(text).__name__} {text!r})"
    if not text.strip():
        return "empty" if not text else "whitespace only"
    return None


def find_bad_rows(dataset: Any, columns: Sequence[TextColumn]) -> list[BadRow]:
    """``(row, column, problem)`` for every row that training could not read, sorted.

    One pass over the text columns: missing texts (``None``, NaN), non-strings, empty or whitespace-only strings;
    then, for columns with a tokenizer, the few texts that could hold no token of their own
    (:meth:`TextColumn.may_be_empty`) are tokenized as training tokenizes them, and those left with special tokens
    only (or, after a prompt, with nothing beyond the prompt) are reported too.

    Args:
        dataset: a ``datasets.Dataset`` or a mapping of column names to lists of texts.
        columns: the columns to check.
    """
    plain = dataset.with_format(None) if hasattr(dataset, "with_format") else dataset  # raw rows, no transform
    bad: list[BadRow] = []
    for side in columns:
        texts = list(plain[side.column])
        suspicious: list[int] = []
        for row, text in enumerate(texts):
            problem = _problem(text)
            if problem is not None:
                bad.append((row, side.column, problem))
            elif side.tokenizer is not None and side.may_be_empty(text):
                suspicious.append(row)
        no_text = side.without_content([texts[i] for i in suspicious])
        empty = [row for row, none in zip(suspicious, no_text, strict=True) if none]
        reasons = _why_empty(side, [texts[i] for i in empty])
        bad.extend((row, side.column, why) for row, why in zip(empty, reasons, strict=True))
    return sorted(bad)


def _why_empty(side: TextColumn, texts: list[str]) -> list[str]:
    """Why texts hold no token of their own: special tokens only, or, tokenized after the prompt, only the prompt
    (its last token took the text's one token)."""
    if not side.prompt:
        return ["special tokens only"] * len(texts)
    alone = replace(side, prompt="").without_content(texts)
    return ["special tokens only" if empty else f"only the prompt {side.prompt!r} once tokenized" for empty in alone]


def bad_rows_message(bad: Sequence[BadRow], source: str, where: Callable[[int], str] | None = None) -> str:
    """The wording of :func:`find_bad_rows`' findings: ``"{source} has N row(s) that cannot be trained on
    (where, column 'c': problem; ...)."``, the first :data:`MAX_ROWS_SHOWN` named; ``where`` names a row (a file's
    line, by default ``row i``). The caller adds the fix."""
    where = where or (lambda row: f"row {row}")
    rows = {row for row, _, _ in bad}
    shown = "; ".join(f"{where(row)}, column {column!r}: {problem}" for row, column, problem in bad[:MAX_ROWS_SHOWN])
    more = f"; and {len(bad) - MAX_ROWS_SHOWN} more" if len(bad) > MAX_ROWS_SHOWN else ""
    return f"{source} has {len(rows)} row(s) that cannot be trained on ({shown}{more})."


def _key(text: Any) -> Any:
    """A text as repeats are compared: whitespace runs as one space, ends stripped."""
    return " ".join(text.split()) if isinstance(text, str) else text


def identical_rows(first: Sequence[Any], second: Sequence[Any]) -> list[int]:
    """The rows whose two texts are the same (whitespace aside): a column pasted twice, or untranslated text."""
    return [
        row for row, (a, b) in enumerate(zip(first, second, strict=True)) if isinstance(a, str) and _key(a) == _key(b)
    ]


def duplicate_rows(first: Sequence[Any], second: Sequence[Any]) -> list[int]:
    """The rows repeating an earlier row's pair (whitespace aside); the first of each pair is not listed."""
    seen: set[tuple[Any, Any]] = set()
    repeats = []
    for row, pair in enumerate(zip(map(_key, first), map(_key, second), strict=True)):
        if pair in seen:
            repeats.append(row)
        seen.add(pair)
    return repeats


@dataclass
class Overlap:
    """Held-out rows that the training pairs already hold: the whole pair (``pairs``), else the English text or
    the low-resource-language text alone."""

    pairs: list[int]
    english: list[int]
    lrl: list[int]

    @property
    def rows(self) -> list[int]:
        return sorted({*self.pairs, *self.english, *self.lrl})

    def counts(self) -> dict[str, int]:
        return {"pairs": len(self.pairs), "english_texts": len(self.english), "lrl_texts": len(self.lrl)}


def find_overlap(
    train: Mapping[str, Sequence[Any]], held: Mapping[str, Sequence[Any]], english: str, lrl: str
) -> Overlap:
    """Which rows of the held-out pairs ``held`` share their pair, or else a text, with the training pairs
    ``train`` (columns ``english`` and ``lrl``; whitespace aside)."""
    pairs = set(zip(map(_key, train[english]), map(_key, train[lrl]), strict=True))
    english_texts, lrl_texts = set(map(_key, train[english])), set(map(_key, train[lrl]))
    found = Overlap([], [], [])
    for row, (en, lr) in enumerate(zip(map(_key, held[english]), map(_key, held[lrl]), strict=True)):
        if (en, lr) in pairs:
            found.pairs.append(row)
        elif en in english_texts:
            found.english.append(row)
        elif lr in lrl_texts:
            found.lrl.append(row)
    return found
