"""Bitext as users have it: English–LRL pairs from a .tsv/.csv/.jsonl/.parquet file (UTF-8 with or without a
byte-order mark, or another encoding named; fields of any length), a Hub dataset or a local ``datasets`` folder,
read and checked row by row before anything slow (:func:`load_bitext`). Rows are named to the user by file line.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from optical_st.data.rows import (
    MAX_ROWS_SHOWN,
    TextColumn,
    bad_rows_message,
    duplicate_rows,
    find_bad_rows,
    identical_rows,
)

__all__ = ["FILE_FORMATS", "IDENTICAL_ERROR_SHARE", "Bitext", "BitextError", "load_bitext", "load_texts"]

logger = logging.getLogger(__name__)

FILE_FORMATS = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
# more pairs than this share with the same text in both columns: a column pasted twice, an error (fewer: a warning;
# names and numbers are the same in both languages)
IDENTICAL_ERROR_SHARE = 0.1


class BitextError(ValueError):
    """The data cannot be trained on as given; the message says where and how to fix it."""


@dataclass
class Bitext:
    """Pairs read from a file or a dataset: a ``Dataset`` with the English column first, then the LRL column, and how
    to name a row to the user (a file's line numbers, else the dataset row)."""

    dataset: Dataset
    name: str  # for the model card: the file name or the dataset id
    hub_id: str | None = None
    lines: list[int] | None = None  # the file line of each row
    source: str = ""  # for messages: the file's path, or the dataset and split
    duplicates: int = 0  # repeated pairs left out when read
    skipped: int = 0  # bad pairs left out when read (skip_bad_rows)

    def __len__(self) -> int:
        return len(self.dataset)

    def where(self, row: int) -> str:
        return _namer(self.lines)(row)

    def select(self, rows: Sequence[int]) -> Bitext:
        """These rows, still named by their lines."""
        lines = [self.lines[i] for i in rows] if self.lines is not None else None
        return replace(self, dataset=self.dataset.select(rows), lines=lines)


# ------------------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------------------
def _decode(path: Path, encoding: str) -> str:
    """The file's text; a byte-order mark is dropped (Excel's "CSV UTF-8"), and bytes that are not ``encoding``
    stop with the line and the fix."""
    data = path.read_bytes()
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        return data.decode(codec)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        utf16 = data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
        hint = (
            "--encoding utf-16 (the file is UTF-16, e.g. Excel's 'Unicode Text')"
            if utf16
            else ("--encoding with its encoding (e.g. --encoding cp1252 or latin-1 for Western European Windows files)")
        )
        raise BitextError(
            f"{path}, line {line}: byte {data[error.start]:#04x} is not {encoding} text. Save the file as UTF-8 "
            f"(e.g. Excel: 'CSV UTF-8'), or pass {hint}."
        ) from None


def load_texts(path: str | Path, encoding: str = "utf-8") -> list[str]:
    """The non-empty lines of a plain text file (one text per line, e.g. monolingual English for a candidate pool),
    stripped; decoded as :func:`load_bitext` decodes files (a byte-order mark dropped, other bytes named by line)."""
    path = Path(path)
    if not path.is_file():
        raise BitextError(f"{path}: no such file (a text file, one text per line).")
    texts = [line.strip() for line in _decode(path, encoding).split("\n")]  # not splitlines: U+2028 is text
    texts = [text for text in texts if text]
    if not texts:
        raise BitextError(f"{path}: the file holds no text (one text per line).")
    return texts


@contextlib.contextmanager
def _no_field_limit() -> Iterator[None]:
    """The csv module refuses fields over 128 KiB; a long text is the tokenizer's to cut, so lift the limit while
    reading (the largest value a C long holds everywhere)."""
    old = csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _read_jsonl(path: Path, text: str) -> tuple[dict[str, list[Any]], list[int]]:
    rows, lines = [], []
    for number, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise BitextError(f"{path}, line {number}: not a JSON object ({error}).") from None
        if not isinstance(row, dict):
            raise BitextError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}.")
        rows.append(row)
        lines.append(number)
    names = list(dict.fromkeys(key for row in rows for key in row))
    return {name: [row.get(name) for row in rows] for name in names}, lines


def _read_table(path: Path, text: str, tsv: bool) -> tuple[dict[str, list[Any]], list[int]]:
    """csv/tsv: every field a string, "NA"/"null" kept as text, no quoting in TSV (verses hold quotation marks)."""
    with _no_field_limit():
        quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tsv else ",", quoting=quoting)
        header = next(reader, None)
        if not header:
            raise BitextError(f"{path} is empty; the first line must name the columns.")
        header = [name.strip() for name in header]
        columns: dict[str, list[Any]] = {name: [] for name in header}
        lines = []
        for row in reader:
            if len(row) != len(header):
                if any(field.strip() for field in row):
                    raise BitextError(
                        f"{path}, line {reader.line_num}: {len(row)} field(s), the header has {len(header)} "
                        f"({header}). {'A tab inside a text splits it: replace it with a space.' if tsv else ''}"
                    )
                row = [""] * len(header)  # a blank line: reported as an empty pair
            for name, value in zip(header, row, strict=True):
                columns[name].append(value)
            lines.append(reader.line_num)
    return columns, lines


def _read_file(path: Path, encoding: str) -> tuple[dict[str, list[Any]], list[int] | None]:
    """Every column of a bitext file as lists of raw values, and each row's line number (text formats)."""
    kind = FILE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BitextError(f"{path}: unknown file type {path.suffix!r}; use one of {sorted(FILE_FORMATS)}.")
    if not path.is_file():
        raise BitextError(f"{path}: no such file.")
    if kind == "parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        return {str(c): frame[c].tolist() for c in frame.columns}, None
    text = _decode(path, encoding)
    return _read_jsonl(path, text) if kind == "jsonl" else _read_table(path, text, tsv=kind == "tsv")


def _read_dataset(name: str, config: str | None, split: str) -> tuple[dict[str, list[Any]], str | None]:
    """A split of a Hub dataset, of a folder written by ``save_to_disk`` or of a data folder; and its Hub id."""
    from datasets import load_dataset, load_from_disk

    local = Path(name)
    if local.is_dir() and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file()):
        data = load_from_disk(str(local))
        hub_id = None
    else:
        data = load_dataset(name, config, split=split)
        hub_id = None if local.exists() else name
    if isinstance(data, DatasetDict):
        if split not in data:
            raise BitextError(f"{name} has no split {split!r}; its splits are {list(data)} (--split / --eval-split).")
        data = data[split]
    return {column: list(data[column]) for column in data.column_names}, hub_id


def _pick_columns(
    columns: dict[str, list[Any]], english_column: str, lrl_column: str, source: str
) -> dict[str, list[Any]]:
    """The two named columns, English first: routed by name, whatever their order in the source."""
    missing = [c for c in (english_column, lrl_column) if c not in columns]
    if missing:
        close = {c: [n for n in columns if n.lower() == c.lower()] for c in missing}
        hint = "; ".join(f"did you mean {close[c][0]!r} for {c!r}?" for c in missing if close[c])
        raise BitextError(
            f"{source} has no column(s) {missing}; its columns are {list(columns)}. Name them with --english-column "
            f"and --lrl-column{' (' + hint + ')' if hint else ''}."
        )
    if english_column == lrl_column:
        raise BitextError(f"--english-column and --lrl-column are both {english_column!r}; name two columns.")
    return {english_column: columns[english_column], lrl_column: columns[lrl_column]}


# ------------------------------------------------------------------------------------------------------------------
# checking
# ------------------------------------------------------------------------------------------------------------------
def _namer(lines: list[int] | None) -> Callable[[int], str]:
    """How a row is named to the user: its file line, else its row."""
    return (lambda row: f"line {lines[row]}") if lines is not None else (lambda row: f"row {row}")


def _checked_rows(pairs: dict[str, list[Any]], lines: list[int] | None, source: str, skip: bool) -> list[int]:
    """The rows to keep: every text present and not blank, and not the same text in both columns in more than
    :data:`IDENTICAL_ERROR_SHARE` of the pairs; the others raise a :class:`BitextError` naming them, or with
    ``skip`` are left out with a warning."""
    english, lrl = pairs
    where = _namer(lines)
    bad = find_bad_rows(pairs, [TextColumn(english), TextColumn(lrl)])
    same = identical_rows(pairs[english], pairs[lrl])
    if len(same) > IDENTICAL_ERROR_SHARE * len(pairs[english]):
        bad = sorted([*bad, *((row, lrl, f"the same text as column {english!r}") for row in same)])
    elif same:
        shown = ", ".join(where(row) for row in same[:MAX_ROWS_SHOWN])
        logger.warning(
            "%s: %d pair(s) have the same text in both columns (%s); kept, as names and numbers can be. Check them "
            "if column %r should hold your language's text.", source, len(same), shown, lrl,
        )  # fmt: skip
    if bad and not skip:
        raise BitextError(
            f"{bad_rows_message(bad, source, where)} Fix or delete them, or pass --skip-bad-rows to leave them out."
        )
    dropped = {row for row, _, _ in bad}
    if bad:
        logger.warning(
            "Leaving out %d bad pair(s) of %s (--skip-bad-rows), e.g. %s.", len(dropped), source, where(bad[0][0])
        )
    return [row for row in range(len(pairs[english])) if row not in dropped]


def load_bitext(
    *,
    train_file: str | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    english_column: str = "english",
    lrl_column: str = "lrl",
    skip_bad_rows: bool = False,
    encoding: str = "utf-8",
) -> Bitext:
    """Read the pairs, check every row, and return them with English first, each pair once.

    A row is bad when a text is missing, not a string, empty or whitespace only, or when more than
    :data:`IDENTICAL_ERROR_SHARE` of the pairs hold the same text in both columns (a column pasted twice; fewer
    are a warning). Bad rows raise a :class:`BitextError` naming each one (file line or dataset row) unless
    ``skip_bad_rows`` (then they are left out with a warning that says how many). A pair read again later in the
    file is left out (and counted in :attr:`Bitext.duplicates`): repeated pairs would otherwise land on both sides
    of a held-out split. ``encoding``: the text file's (UTF-8, with or without a byte-order mark, by default).
    """
    if (train_file is None) == (dataset_name is None):
        raise BitextError("Give either a file (--train-file) or a dataset (--dataset-name).")
    if train_file is not None:
        path = Path(train_file)
        columns, lines = _read_file(path, encoding)
        name, hub_id, source = path.name, None, str(path)
    else:
        columns, hub_id = _read_dataset(dataset_name, dataset_config, split)
        lines = None
        name = dataset_name if hub_id else Path(dataset_name).name
        if dataset_config:
            name = f"{name} ({dataset_config})"
        source = f"{dataset_name} [{split}]"
    pairs = _pick_columns(columns, english_column, lrl_column, source)
    keep = _checked_rows(pairs, lines, source, skip_bad_rows)
    skipped = len(pairs[english_column]) - len(keep)
    repeats = set(duplicate_rows([pairs[english_column][i] for i in keep], [pairs[lrl_column][i] for i in keep]))
    if repeats:
        logger.warning(
            "%s: %d pair(s) repeat an earlier pair; each pair is kept once, so none is both trained on and held out.",
            source, len(repeats),
        )  # fmt: skip
        keep = [row for i, row in enumerate(keep) if i not in repeats]
    dataset = Dataset.from_dict({c: [values[i] for i in keep] for c, values in pairs.items()})
    if len(dataset) == 0:
        raise BitextError(f"{source}: no pairs to train on.")
    kept_lines = [lines[i] for i in keep] if lines is not None else None
    return Bitext(dataset, name, hub_id, kept_lines, source, duplicates=len(repeats), skipped=skipped)
