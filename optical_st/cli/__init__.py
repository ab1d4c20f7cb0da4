"""The ``optical-st`` command (also ``python -m optical_st``): one module per sub-command, each registering its own
parser (``add_parser``) and the function that runs it (``run``, returning the exit status)."""

from __future__ import annotations

import argparse
import logging

from optical_st.cli import evaluate as _evaluate
from optical_st.cli import index as _index
from optical_st.cli import search as _search
from optical_st.cli import train as _train
from optical_st.cli.train import Bitext, BitextError, load_bitext

__all__ = ["Bitext", "BitextError", "build_parser", "load_bitext", "main"]

# each sub-command module: add_parser(subparsers) -> its parser, with set_defaults(run=...)
COMMANDS = (_train, _evaluate, _index, _search)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optical-st",
        description="OPTICAL cross-lingual retrieval students for low-resource languages.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``optical-st`` console script; returns the exit status (0 done, 1 the push failed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    return args.run(args)
