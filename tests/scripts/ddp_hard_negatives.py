"""Train an OPTICAL Router model with OTDistillationLoss (+ InfoNCE over 2 mined negative columns) and the
DynamicHardNegativeSampler in every process of a torchrun launch. Each rank writes what it saw: the negatives tables
(digests), whether the loss received exactly the rows the dataset transform built, the rows of each batch, and a
digest of its final weights.

Usage: torchrun --nproc_per_node 2 tests/scripts/ddp_hard_negatives.py OUT_DIR MODEL_DIR
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for conftest helpers

import torch
from conftest import leave_process_group, make_training_args, state_digest, tiny_sentence_transformer, toy_bitext
from sentence_transformers import SentenceTransformerTrainer

from optical_st import DynamicHardNegativeSampler, OTConfig, OTDistillationLoss, build_optical_model
from optical_st.routes import find_router
from optical_st.sampling import HardNegativeState, NegativesTransform

fetched: list[dict] = []
tables: list[dict] = []

_transform = NegativesTransform.__call__


def recording_transform(self, batch):
    out = _transform(self, batch)
    table = self.state.table_at(self.state.cursor)
    if table is not None and self.state.negative_columns[0] in out:
        rows = [list(r) for r in zip(*(out[c] for c in out), strict=True)]
        fetched.append({"position": self.state.cursor, "refresh": table.refresh, "rows": rows})
    return out


_add_table = HardNegativeState.add_table


def recording_add_table(self, table, keep=2):
    tables.append(
        {
            "refresh": table.refresh,
            "activate_at": table.activate_at,
            "digest": hashlib.sha256(table.negatives.tobytes()).hexdigest(),
            "mined": int((table.mined_step >= 0).sum()),
        }
    )
    return _add_table(self, table, keep)


NegativesTransform.__call__ = recording_transform
HardNegativeState.add_table = recording_add_table


class RecordingOTLoss(OTDistillationLoss):
    def __init__(self, model, **kwargs) -> None:
        super().__init__(model, **kwargs)
        router = find_router(model)  # captured here, before DDP wraps the model
        self.tokenizers = {
            "document": router.sub_modules["document"][0].tokenizer,
            "query": router.sub_modules["query"][0].tokenizer,
        }
        self.calls: list[list[list[str]]] = []

    def forward(self, sentence_features, labels=None):
        features = list(sentence_features)
        columns = [self.tokenizers[f["task"]].batch_decode(f["input_ids"], skip_special_tokens=True) for f in features]
        self.calls.append([list(r) for r in zip(*columns, strict=True)])
        return super().forward(features, labels)


def main() -> None:
    out, model_dir = Path(sys.argv[1]), Path(sys.argv[2])
    teacher = tiny_sentence_transformer(model_dir / "teacher")
    student = tiny_sentence_transformer(model_dir / "wide_student", hidden=48)
    model = build_optical_model(teacher, student)
    dataset = toy_bitext(48)
    args = make_training_args(
        out,
        dataset,
        output_dir=str(out / "trainer"),
        num_train_epochs=2,
        batch_sampler=DynamicHardNegativeSampler.configure(num_negatives=2, refresh_steps=2),
    )
    loss = RecordingOTLoss(model, ot_config=OTConfig(reg=0.05), contrastive_weight=0.5)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    DynamicHardNegativeSampler.attach(trainer)
    trainer.train()

    rank = int(os.environ.get("RANK", 0))
    result = {
        "rank": rank,
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),
        "digest": state_digest(model),
        "steps": trainer.state.global_step,
        "finite": all(torch.isfinite(p).all().item() for p in model.parameters()),
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "tables": tables,
        "aligned": len(loss.calls) == trainer.state.global_step
        and all(call == fetch["rows"] for call, fetch in zip(loss.calls, fetched, strict=False)),
        "fetched": fetched,
        "mining": [e for e in trainer.state.log_history if "hard_negatives/refresh" in e],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
    leave_process_group()
