"""The pairs ``optical-st train`` trains and evaluates on: read and checked row by row (:func:`read_pairs`, before any
model loads), held out without inflating the scores (identical pairs never on both sides, held-out pairs the training
pairs already hold named or dropped), then checked once more as training tokenizes them, prompts included
(:func:`check_tokenized`, once the model's tokenizers are at hand)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from optical_st.data.bitext import Bitext, BitextError, load_bitext, load_texts
from optical_st.data.rows import TextColumn, bad_rows_message, find_bad_rows, find_overlap
from optical_st.modeling import column_prompts, router_mapping
from optical_st.routes import route_modules, route_tokenizer
from optical_st.sampling.score_targets import distinct_texts

__all__ = ["TrainingPairs", "check_tokenized", "english_pool", "read_pairs"]

logger = logging.getLogger("optical_st.train")


@dataclass
class TrainingPairs:
    """The training pairs, the held-out pairs (``None``: no evaluation), how they were held out (for the card and
    the report) and what the checks found (counts, for ``results.json``)."""

    train: Bitext
    held: Bitext | None
    held_out: str
    findings: dict[str, Any] = field(default_factory=dict)


def _columns(args: argparse.Namespace) -> dict[str, str]:
    return {"english_column": args.english_column, "lrl_column": args.lrl_column}


def read_pairs(args: argparse.Namespace) -> TrainingPairs:
    """Training and held-out pairs: a separate file or split, else a seeded fraction of the training pairs; cut to
    ``--max-train-samples`` / ``--max-eval-samples``; held-out pairs that the training pairs hold refused (or dropped
    with ``--drop-eval-overlap``)."""
    read = {"skip_bad_rows": args.skip_bad_rows, "encoding": args.encoding, **_columns(args)}
    bitext = load_bitext(
        train_file=args.train_file, dataset_name=args.dataset_name, dataset_config=args.dataset_config,
        split=args.split, **read,
    )  # fmt: skip
    train, held, duplicates, skipped = bitext, None, bitext.duplicates, bitext.skipped
    if args.eval_file or args.eval_split:
        held = load_bitext(
            train_file=args.eval_file, dataset_name=args.dataset_name if args.eval_split else None,
            dataset_config=args.dataset_config, split=args.eval_split or "train", **read,
        )  # fmt: skip
        held_out = f"held-out split {args.eval_split}" if args.eval_split else f"held-out file {held.name}"
        duplicates += held.duplicates
        skipped += held.skipped
    elif args.eval_fraction > 0:
        train, held = _split(bitext, args.eval_fraction, args.seed)
        held_out = f"{args.eval_fraction:.0%} held out (seed {args.seed})"
    else:
        held_out = "none"
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if held is not None and args.max_eval_samples:
        held = held.select(range(min(args.max_eval_samples, len(held))))
    findings: dict[str, Any] = {"duplicate_pairs_dropped": duplicates, "bad_pairs_skipped": skipped}
    if held is not None:
        held, findings["held_out_overlap"] = _without_overlap(train, held, args)
    return TrainingPairs(train, held, held_out, findings)


def english_pool(args: argparse.Namespace, pairs: TrainingPairs) -> list[str]:
    """Score distillation's English pool: the distinct texts of the training pairs' English and every
    ``--english-pool`` file's lines, without the held-out pairs' English texts (a held-out text scored in training
    would inflate its evaluation)."""
    texts = [str(text) for text in pairs.train.dataset[args.english_column]]
    extra = [text for path in args.english_pool or () for text in load_texts(path, args.encoding)]
    held = set(map(str, pairs.held.dataset[args.english_column])) if pairs.held is not None else set()
    kept = [text for text in extra if text not in held]
    if len(kept) < len(extra):
        logger.warning(
            "--english-pool: left out %d line(s) that are held-out pairs' English texts (the evaluation would be "
            "inflated); %d extra English texts kept.", len(extra) - len(kept), len(kept),
        )  # fmt: skip
    pool = list(distinct_texts(texts + kept))  # what TeacherCandidates.build encodes
    pairs.findings["english_pool"] = {"files": list(args.english_pool or ()), "extra_texts": len(kept),
                                      "held_out_texts_left_out": len(extra) - len(kept), "distinct_texts": len(pool)}  # fmt: skip
    return pool


def _split(bitext: Bitext, fraction: float, seed: int) -> tuple[Bitext, Bitext]:
    """A seeded share of the pairs held out (each pair is in the bitext once, so none is on both sides)."""
    n_eval = max(1, round(fraction * len(bitext)))
    if n_eval >= len(bitext):
        raise BitextError(f"{len(bitext)} pair(s) are too few to hold {fraction:.0%} out.")
    order = np.random.default_rng(seed).permutation(len(bitext)).tolist()  # as datasets' train_test_split
    held = bitext.select(order[:n_eval])
    return bitext.select(order[n_eval:]), replace(held, source=f"{bitext.source} (held out)")


def _without_overlap(train: Bitext, held: Bitext, args: argparse.Namespace) -> tuple[Bitext, dict[str, Any]]:
    """The held-out pairs, checked against the training pairs: a shared pair is an error (its score would be
    inflated), a shared text a warning; ``--drop-eval-overlap`` drops both."""
    english, lrl = args.english_column, args.lrl_column
    found = find_overlap(train.dataset.to_dict(), held.dataset.to_dict(), english, lrl)
    counts: dict[str, Any] = {**found.counts(), "dropped": False}
    if found.pairs and not args.drop_eval_overlap:
        raise BitextError(
            f"{held.source}: {len(found.pairs)} of its {len(held)} held-out pairs are also training pairs (e.g. "
            f"{held.where(found.pairs[0])}), so the trained model's scores on them would be inflated. Hold out other "
            f"pairs, or pass --drop-eval-overlap to evaluate on the {len(held) - len(found.rows)} that share "
            "nothing with the training pairs."
        )
    if found.rows and args.drop_eval_overlap:
        shared = set(found.rows)
        keep = [row for row in range(len(held)) if row not in shared]
        if not keep:
            raise BitextError(
                f"{held.source}: every held-out pair shares its pair or a text with the training pairs; nothing is "
                "left to evaluate on (--drop-eval-overlap). Hold out other pairs."
            )
        logger.warning(
            "%s: dropped %d held-out pair(s) that share their pair (%d), English text (%d) or %s text (%d) with the "
            "training pairs (--drop-eval-overlap); %d left.", held.source, len(shared), len(found.pairs),
            len(found.english), lrl, len(found.lrl), len(keep),
        )  # fmt: skip
        return held.select(keep), {**counts, "dropped": True}
    if found.rows:
        logger.warning(
            "%s: %d held-out pair(s) share their English text and %d their %s text with a training pair (the pairs "
            "differ); --drop-eval-overlap evaluates without them.", held.source, len(found.english), len(found.lrl),
            lrl,
        )  # fmt: skip
    return held, counts


def _readers(model: Any, columns: list[str], max_length: int) -> list[TextColumn]:
    """Each column as training reads it: its route's tokenizer and prompt, cut to ``max_length`` tokens; an error
    when the prompt leaves no room for text."""
    mapping = router_mapping(columns)
    prompts = column_prompts(model, mapping)
    readers = []
    for column, route in mapping.items():
        tokenizer = route_tokenizer(route_modules(model, route))
        prompt = prompts.get(column, "")
        template = len(tokenizer([prompt])["input_ids"][0])  # the prompt and the special tokens around a text
        if max_length <= template:
            raise BitextError(
                f"--max-seq-length {max_length} leaves no token for the text after the {route} prompt {prompt!r} "
                f"({template} tokens with the special ones): use at least {template + 1}; texts of a sentence or a "
                "verse need about 64 or more."
            )
        readers.append(TextColumn(column, tokenizer, prompt=prompt, max_length=max_length))
    return readers


def check_tokenized(pairs: TrainingPairs, model: Any, max_length: int, skip: bool) -> TrainingPairs:
    """Every training and held-out text tokenized as training reads it (prompt first, at most ``max_length``
    tokens): texts with no token of their own (special tokens only, or nothing beyond the prompt) are named by their
    lines, training and held-out ones in one error, or with ``skip`` left out with a warning."""
    readers = _readers(model, pairs.train.dataset.column_names, max_length)
    parts = [part for part in (pairs.train, pairs.held) if part is not None]
    found = [_in_file_order(find_bad_rows(part.dataset, readers), part) for part in parts]
    if any(found) and not skip:
        named = [bad_rows_message(bad, part.source, part.where) for part, bad in zip(parts, found, strict=True) if bad]
        raise BitextError(
            f"{' '.join(named)} Training reads each text after its prompt, so these hold nothing to align. Fix or delete them, "
            "or pass --skip-bad-rows to leave them out."
        )
    kept = [_without(part, bad) for part, bad in zip(parts, found, strict=True)]
    findings = dict(pairs.findings)
    findings["bad_pairs_skipped"] = findings.get("bad_pairs_skipped", 0) + sum(map(len, parts)) - sum(map(len, kept))
    return replace(pairs, train=kept[0], held=kept[1] if pairs.held is not None else None, findings=findings)


def _in_file_order(bad: list[tuple[int, str, str]], bitext: Bitext) -> list[tuple[int, str, str]]:
    """Findings by file line (a held-out split lists its rows in random order)."""
    return sorted(bad, key=lambda found: (bitext.lines[found[0]] if bitext.lines else found[0], found[1]))


def _without(bitext: Bitext, bad: list[tuple[int, str, str]]) -> Bitext:
    if not bad:
        return bitext
    rows = {row for row, _, _ in bad}
    keep = [row for row in range(len(bitext)) if row not in rows]
    if not keep:
        raise BitextError(f"{bitext.source}: no pairs left once the texts without a token of their own are left out.")
    logger.warning("Leaving out %d pair(s) of %s (--skip-bad-rows), e.g. %s.", len(rows), bitext.source,
                   bitext.where(bad[0][0]))  # fmt: skip
    return bitext.select(keep)
