"""Train OTDistillationLoss on tiny models in every process of a torchrun/accelerate launch; each rank writes a
digest of its final weights so the test can check that the replicas ended identical.

Usage: torchrun --nproc_per_node 2 tests/scripts/ddp_train.py OUT_DIR MODEL_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for conftest helpers

import torch
from conftest import PAIRS, leave_process_group, make_training_args, state_digest, tiny_sentence_transformer
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer

from optical_st import OTConfig, OTDistillationLoss, WeightAveragingCallback, build_optical_model


def main() -> None:
    out, model_dir = Path(sys.argv[1]), Path(sys.argv[2])
    teacher = tiny_sentence_transformer(model_dir / "teacher")
    student = tiny_sentence_transformer(model_dir / "wide_student", hidden=48)
    model = build_optical_model(teacher, student)
    english, lrl = zip(*PAIRS, strict=True)
    dataset = Dataset.from_dict({"english": list(english) * 4, "lrl": list(lrl) * 4})
    average = "--average" in sys.argv  # the mean of the last half's weights, checkpointed every 2 steps
    saving = {"save_strategy": "steps", "save_steps": 2} if average else {}
    args = make_training_args(out, dataset, output_dir=str(out / "trainer"), num_train_epochs=2, **saving)
    callbacks = [WeightAveragingCallback(model, start=0.5)] if average else []
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=OTDistillationLoss(model, ot_config=OTConfig(reg=0.05)),
        callbacks=callbacks,
    )
    trainer.train()
    rank = int(os.environ.get("RANK", 0))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result = {
        "rank": rank,
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),
        "digest": state_digest(model),
        "losses": losses,
        "steps": trainer.state.global_step,
        "finite": all(torch.isfinite(p).all().item() for p in model.parameters()),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
    leave_process_group()
