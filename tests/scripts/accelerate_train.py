"""Train the OPTICAL Router model with OTDistillationLoss in every process of an `accelerate launch` (or torchrun) run,
then save and push it the way a user would, calling both on every rank.

The Hub is faked (sentence-transformers' ``HfApi`` replaced) and card writes are recorded, so the test can check that only
rank 0 writes model cards and pushes. Each rank writes ``rank{R}.json`` with a digest of its final weights.

Usage:
    accelerate launch --config_file examples/accelerate/cpu_2proc.yaml tests/scripts/accelerate_train.py OUT MODELS
    torchrun --nproc_per_node 2 tests/scripts/accelerate_train.py OUT MODELS

``--dynamic-negatives`` trains with ``DynamicHardNegativeSampler`` (one negative column, re-mined every step) and
the loss's InfoNCE term; each rank then also records a digest of every negatives table it installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for conftest helpers

import sentence_transformers.base.model as st_base_model
import torch
from conftest import PAIRS, leave_process_group, state_digest, tiny_sentence_transformer
from datasets import Dataset
from huggingface_hub import CommitInfo, RepoUrl
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

import optical_st.hub
from optical_st import (
    DynamicHardNegativeSampler,
    OpticalModelCardData,
    OTConfig,
    OTDistillationLoss,
    build_optical_model,
    router_mapping,
)
from optical_st.evaluation import FlopsCallback
from optical_st.sampling import HardNegativeState

RANK = int(os.environ.get("RANK", 0))
# model cards written by this rank, per phase: "train" (checkpoints), "save" (final save), "push"
EVENTS: dict[str, list] = {"card_writes": [], "hub_calls": []}
PHASE = ["setup"]


def record_card_writes() -> None:
    generate = st_base_model.generate_model_card

    def recording(model):
        EVENTS["card_writes"].append(PHASE[0])
        return generate(model)

    st_base_model.generate_model_card = recording


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records the calls, checks the folder it is asked to upload."""

    def __init__(self, token=None) -> None:
        EVENTS["hub_calls"].append("HfApi")

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        EVENTS["hub_calls"].append("create_repo")
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, **kwargs):
        EVENTS["hub_calls"].append("upload_folder")
        EVENTS["uploaded_files"] = sorted(p.name for p in Path(folder_path).iterdir())
        oid = "b" * 40
        return CommitInfo(f"https://huggingface.co/{repo_id}/commit/{oid}", "msg", "", oid)


def record_negative_tables() -> None:
    add_table = HardNegativeState.add_table

    def recording(self, table, *args, **kwargs):
        EVENTS.setdefault("negative_tables", []).append(hashlib.sha256(table.negatives.tobytes()).hexdigest())
        return add_table(self, table, *args, **kwargs)

    HardNegativeState.add_table = recording


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("models", type=Path, help="folder with the tiny 'teacher' and 'wide_student' models")
    parser.add_argument("--dynamic-negatives", action="store_true", help="DynamicHardNegativeSampler + InfoNCE term")
    parser.add_argument("--epochs", type=int, default=1)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    record_card_writes()
    st_base_model.HfApi = FakeHfApi  # optical_st.hub uploads through sentence-transformers' push_to_hub

    teacher = tiny_sentence_transformer(args.models / "teacher")
    student = tiny_sentence_transformer(args.models / "wide_student", hidden=48)
    card = OpticalModelCardData(target_language="ny", target_language_name="Chichewa", local_files_only=True)
    model = build_optical_model(teacher, student, model_card_data=card)

    english, lrl = zip(*PAIRS, strict=True)
    dataset = Dataset.from_dict({"english": list(english) * 2, "lrl": list(lrl) * 2})
    extra = {}
    if args.dynamic_negatives:
        record_negative_tables()
        extra["batch_sampler"] = DynamicHardNegativeSampler.configure(num_negatives=1, refresh_steps=1)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(args.out / "trainer"),
        per_device_train_batch_size=4,
        num_train_epochs=args.epochs,
        learning_rate=5e-3,
        report_to=[],
        save_strategy="steps",  # one checkpoint, at the last step
        save_steps=2,
        logging_steps=1,
        seed=0,
        use_cpu=True,  # without it, processes on a GPU-less machine would each train alone
        router_mapping=router_mapping(dataset),
        **extra,
    )
    loss = OTDistillationLoss(
        model, ot_config=OTConfig(reg=0.05), contrastive_weight=0.1 if args.dynamic_negatives else 0.0
    )
    flops = FlopsCallback(model, loss, every_n_steps=1)  # the card's training FLOPs
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=dataset, loss=loss, callbacks=[flops]
    )
    PHASE[0] = "train"
    if args.dynamic_negatives:
        DynamicHardNegativeSampler.attach(trainer)
    trainer.train()

    # what a user script does at the end. The final save is guarded: with sentence-transformers 6.2 and
    # transformers 5, trainer.save_model() writes on every rank (see docs/multi_gpu.md); push_to_hub needs no guard.
    PHASE[0] = "save"
    if trainer.is_world_process_zero():
        trainer.save_model(str(args.out / "model"))
    PHASE[0] = "push"
    url = optical_st.hub.push_to_hub(model, "me/ddp-optical", local_dir=args.out / "push")
    (args.out / f"rank{RANK}.json").write_text(json.dumps(rank_result(trainer, model, flops, url)))


def rank_result(
    trainer: SentenceTransformerTrainer, model: torch.nn.Module, flops: FlopsCallback, url: str | None
) -> dict:
    """What this rank reports: its final weights' digest, steps, losses, the push's return and the FLOPs counted."""
    return {
        "rank": RANK,
        "world_size": trainer.args.world_size,
        "digest": state_digest(model),
        "steps": trainer.state.global_step,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "finite": all(torch.isfinite(p).all().item() for p in model.parameters()),
        "push_return": url,
        "local_flops": sum(flops.report.phase_totals().values()),
        "card_flops": sum(model.model_card_data.measured_flops.values()),
        **EVENTS,
    }


if __name__ == "__main__":
    main()
    leave_process_group()
