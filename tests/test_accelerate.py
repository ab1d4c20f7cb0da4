"""`accelerate launch` with the example CPU config: 2 gloo processes train the Router model with OTDistillationLoss,
replicas end identical, and only rank 0 writes model cards and pushes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "accelerate_train.py"
CONFIGS = ROOT / "examples" / "accelerate"


def test_accelerate_configs_are_valid_yaml():
    multi_gpu = yaml.safe_load((CONFIGS / "multi_gpu.yaml").read_text())
    cpu = yaml.safe_load((CONFIGS / "cpu_2proc.yaml").read_text())
    assert multi_gpu["distributed_type"] == "MULTI_GPU" and multi_gpu["use_cpu"] is False
    assert multi_gpu["num_processes"] >= 2 and multi_gpu["gpu_ids"] == "all"
    # `use_cpu: true` would make accelerate launch start a single process (see the comment in the file)
    assert cpu["distributed_type"] == "MULTI_GPU" and cpu["use_cpu"] is False and cpu["num_processes"] == 2


def launch(out: Path, models: Path, dynamic_negatives: bool = False) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / "cpu_2proc.yaml"),
        str(SCRIPT),
        str(out),
        str(models),
    ]
    if dynamic_negatives:
        cmd.append("--dynamic-negatives")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


@pytest.fixture(scope="module", params=[False, True], ids=["default-sampler", "dynamic-negatives"])
def run(request, tmp_path_factory, tiny_dirs) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("accelerate-dynamic-negatives" if request.param else "accelerate")
    return out, launch(out, tiny_dirs["teacher"].parent, request.param)


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(run):
    out, ranks = run
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["finite"] for r in ranks)
    assert ranks[0]["digest"] == ranks[1]["digest"], "replicas diverged"
    assert ranks[0]["steps"] == 2  # 16 rows, 4 per device, 2 devices, 1 epoch
    assert ranks[0]["losses"] and all(loss > 0 for loss in ranks[0]["losses"])
    tables = [r.get("negative_tables", []) for r in ranks]
    if "dynamic-negatives" in out.name:
        # mined before training and re-mined after each of the 2 steps: the same tables on both ranks
        assert len(tables[0]) >= 2 and tables[0] == tables[1]
    else:
        assert tables == [[], []]


@pytest.mark.slow
def test_only_rank_zero_pushes_and_writes_its_card(run):
    out, ranks = run
    # push_to_hub is called on every rank; only rank 0 saves (one card) and talks to the Hub
    assert ranks[0]["card_writes"].count("push") == 1 and "push" not in ranks[1]["card_writes"]
    assert ranks[0]["hub_calls"] == ["HfApi", "create_repo", "upload_folder"] and ranks[1]["hub_calls"] == []
    assert ranks[0]["push_return"].startswith("https://huggingface.co/me/ddp-optical/commit/")
    assert ranks[1]["push_return"] is None
    assert {"README.md", "modules.json", "router_config.json"} <= set(ranks[0]["uploaded_files"])
    for folder in ("model", "push"):
        readme = (out / folder / "README.md").read_text(encoding="utf8")
        assert "OPTICAL Chichewa-English retrieval model" in readme and "FLOPs" in readme
    # training FLOPs on the card cover both ranks: rank 0's own measurement times the world size
    assert ranks[0]["card_flops"] == 2 * ranks[0]["local_flops"] > 0


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="sentence-transformers 6.2 BaseTrainer._save assumes it runs on rank 0 only, but transformers 5 calls "
    "_save on every rank (the should_save check moved into Trainer._save): checkpoints and their cards are written "
    "by all ranks. Remove this xfail once sentence-transformers restores the check.",
)
def test_trainer_checkpoints_are_written_by_rank_zero_only(run):
    _, ranks = run
    assert ranks[0]["card_writes"].count("train") == 1
    assert "train" not in ranks[1]["card_writes"]
