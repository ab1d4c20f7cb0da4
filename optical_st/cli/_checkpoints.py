"""The output folder of ``optical-st train`` and what a run keeps in it to be resumed.

transformers' conventions: a folder that is not empty is refused unless ``--overwrite-output-dir``; ``--save-steps``
writes ``checkpoint-N`` folders (under ``checkpoints/``) and ``--resume-from-checkpoint [PATH]`` continues from one
(the latest complete one by default). Beside the checkpoints a run keeps what the trainer's checkpoint lacks: its
settings, digests of its training and held-out pairs (a resumed run must read the same data the same way) and the
training pairs with their mined hard negatives, which a resumed run reads instead of mining again. A finished run
removes the folder: the saved model supersedes it, and a push would upload it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from optical_st.cli._options import UsageError
from optical_st.sampling import TeacherCandidates

__all__ = [
    "CHECKPOINTS", "finish", "load_candidates", "load_pairs", "prepare_output_dir", "run_record", "save_run",
    "verify_resume",
]  # fmt: skip

logger = logging.getLogger("optical_st.train")

CHECKPOINTS = "checkpoints"  # under --output-dir
RUN_FILE = "run.json"
PAIRS_FILE = "train_pairs.jsonl"
POOL_DIR = "english_pool"  # score distillation's encoded pool: the pairs' candidate ids point into it
# written by the trainer after the model, optimizer and RNG states: a checkpoint without it was cut short
TRAINER_STATE = "trainer_state.json"
# arguments that change nothing of what is trained: free to differ when a run is resumed
FREE_ARGS = frozenset(
    {"run", "command", "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "push_to_hub",
     "hub_model_id", "hub_private_repo", "save_steps", "save_total_limit"}
)  # fmt: skip


def latest_checkpoint(folder: Path) -> str | None:
    """The complete ``checkpoint-N`` folder of ``folder`` with the largest N (``None``: none)."""
    if not folder.is_dir():
        return None
    steps = {
        int(path.name.rsplit("-", 1)[1]): path
        for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.name.rsplit("-", 1)[1].isdigit() and (path / TRAINER_STATE).is_file()
    }
    return str(steps[max(steps)]) if steps else None


def prepare_output_dir(args: argparse.Namespace) -> str | None:
    """Check ``--output-dir`` before anything is read or loaded; returns the checkpoint to resume from (``None``: a
    new run). A folder that is not empty is refused unless ``--overwrite-output-dir`` (whose new run then starts
    without the old run's checkpoints) or ``--resume-from-checkpoint``."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out} is a file; name a folder.")
    folder = out / CHECKPOINTS
    if args.resume_from_checkpoint:
        given = args.resume_from_checkpoint is True
        checkpoint = latest_checkpoint(folder) if given else args.resume_from_checkpoint
        if checkpoint is None:
            raise UsageError(
                f"--resume-from-checkpoint: {folder} holds no complete checkpoint to resume from (a run saves one "
                "every --save-steps steps, and a finished run removes them). Train from the start without it."
            )
        if not (Path(checkpoint) / TRAINER_STATE).is_file() or not (Path(checkpoint).parent / RUN_FILE).is_file():
            raise UsageError(
                f"--resume-from-checkpoint {checkpoint}: not a complete checkpoint of an optical-st train run (it "
                f"needs {TRAINER_STATE}, and {RUN_FILE} beside it). Name another, or drop the PATH for the latest."
            )
        return checkpoint
    if out.is_dir() and any(out.iterdir()):
        if not args.overwrite_output_dir:
            names = sorted(p.name for p in out.iterdir())
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            resume = " or --resume-from-checkpoint to continue its interrupted run" if latest_checkpoint(folder) else ""
            raise UsageError(
                f"--output-dir {out} is not empty ({shown}): a run would overwrite what is there. Name another "
                f"folder, or pass --overwrite-output-dir to write over it{resume}."
            )
        if folder.is_dir():
            logger.info("--overwrite-output-dir: removing the checkpoints of the earlier run in %s", folder)
            shutil.rmtree(folder)
    return None


def _digest(dataset: Dataset | None) -> str | None:
    if dataset is None:
        return None
    data = json.dumps(dataset.to_dict(), ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def run_record(args: argparse.Namespace, train: Dataset, held: Dataset | None) -> dict[str, Any]:
    """What must be the same when a run is resumed: its settings and its training and held-out pairs."""
    settings = {key: value for key, value in sorted(vars(args).items()) if key not in FREE_ARGS}
    return {"settings": settings, "train_pairs": _digest(train), "held_out_pairs": _digest(held)}


def verify_resume(checkpoint: str, record: dict[str, Any]) -> None:
    """Refuse to resume ``checkpoint`` with other settings or data than the run that wrote it."""
    path = Path(checkpoint).parent / RUN_FILE
    saved = json.loads(path.read_text(encoding="utf-8"))
    changed = sorted(
        key
        for key in {*saved["settings"], *record["settings"]}
        if saved["settings"].get(key) != record["settings"].get(key)
    )
    changed = [
        f"--{key.replace('_', '-')} {saved['settings'].get(key)!r} -> {record['settings'].get(key)!r}"
        for key in changed
    ]
    changed += [
        f"the {name.replace('_', ' ')}" for name in ("train_pairs", "held_out_pairs") if saved[name] != record[name]
    ]
    if changed:
        raise UsageError(
            f"Cannot resume {checkpoint}: this run differs from the one that wrote it ({'; '.join(changed)}). Resume "
            "with its settings and data, or start a new run (another --output-dir, or --overwrite-output-dir)."
        )


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a run killed while writing leaves the old file or none, never half of one


def save_run(
    out: Path, record: dict[str, Any], train_data: Dataset, candidates: TeacherCandidates | None = None
) -> None:
    """Keep the run's record and its training pairs (hard negatives or score labels included) beside its
    checkpoints, and score distillation's encoded English pool."""
    folder = out / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    if candidates is not None:
        candidates.save(folder / POOL_DIR)
    rows = train_data.with_format(None).to_list()
    _write(folder / PAIRS_FILE, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    _write(folder / RUN_FILE, json.dumps(record, indent=2, ensure_ascii=False))  # last: the run's state is whole


def load_pairs(checkpoint: str) -> Dataset:
    """The training pairs, with their mined hard negatives, of the run that wrote ``checkpoint``."""
    text = (Path(checkpoint).parent / PAIRS_FILE).read_text(encoding="utf-8")
    return Dataset.from_list([json.loads(line) for line in text.split("\n") if line])  # not splitlines: U+2028


def load_candidates(checkpoint: str) -> TeacherCandidates:
    """The encoded English pool of the run that wrote ``checkpoint`` (score distillation)."""
    return TeacherCandidates.load(Path(checkpoint).parent / POOL_DIR)


def finish(out: Path) -> None:
    """Remove a finished run's checkpoints: the saved model supersedes them (and a push would upload them)."""
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
