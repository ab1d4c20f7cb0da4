"""examples/train_chichewa.py end to end, in seconds: tiny teacher, a handful of Bible verses, two steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sentence_transformers import SentenceTransformer

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_chichewa.py"


@pytest.mark.slow
def test_demo_runs_end_to_end(tiny_dirs, tmp_path):
    out = tmp_path / "demo"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--output-dir", str(out),
        "--teacher", str(tiny_dirs["teacher"]),
        "--train-pairs", "16",
        "--dev-pairs", "8",
        "--test-pairs", "12",
        "--max-steps", "2",
        "--batch-size", "4",
        "--max-seq-length", "48",  # the tiny BERT has 128 positions; Chichewa verses run longer in its char vocab
        "--push-to-hub", "my-org/optical-test",  # HF_HUB_OFFLINE: the push fails, the local model must stay
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    for name in ("results.md", "results.json", "results.png", "model/modules.json", "model/README.md"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    zero_shot, trained = results["results"]
    assert zero_shot["method"] == "zero-shot teacher" and trained["method"] == "OPTICAL student"
    for row in (zero_shot, trained):
        for metric in ("accuracy@1", "mrr@10", "ndcg@10", "map@100"):
            assert 0.0 <= row[metric] <= 1.0, (row["method"], metric)
    assert trained["train_pairs"] == 16 and zero_shot["train_pairs"] == 0
    assert results["data"] == {"train": 16, "dev": 8, "test": 12, "test_corpus": 12}
    assert set(results["dev_metrics_after_training"]) == {"accuracy@1", "mrr@10", "ndcg@10", "map@100"}
    assert results["ratio_trained_over_zero_shot"]["mrr@10"] == pytest.approx(trained["mrr@10"] / zero_shot["mrr@10"])
    table = (out / "results.md").read_text()
    assert "| OPTICAL student |" in table and "| zero-shot teacher |" in table
    assert "| OPTICAL student |" in proc.stdout  # the table is printed too
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"

    # the saved model reloads as an OPTICAL model with ST's model card naming the loss
    model = SentenceTransformer(str(out / "model"), device="cpu")
    assert model.encode_query(["Mulungu ndi chikondi"]).shape == model.encode_document(["God is love"]).shape
    card = (out / "model" / "README.md").read_text()
    assert "OTDistillationLoss" in card
    # the card carries the test scores as model-index metadata and the measured training FLOPs
    assert "model-index" in card and f"value: {trained['mrr@10']}" in card
    assert "FlopCounterMode" in card and results["training_flops"] > 0
    entry = json.loads((out / "eval_results.json").read_text())
    assert entry["metrics"]["mrr@10"] == trained["mrr@10"] and entry["dataset_split"] == "test"
    # offline push: a clear error, nothing lost
    assert "push_error" in results and "Push failed" in proc.stdout
    assert (out / "hub" / "modules.json").is_file()
