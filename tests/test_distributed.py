"""Multi-process training on CPU with the gloo backend (what multi-GPU DDP does, minus the GPUs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "scripts"


def launch(cmd: list[str], tmp_path: Path, timeout: int = 240) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]


@pytest.mark.slow
def test_torchrun_two_processes_router_model(tmp_path, tiny_dirs):
    results = launch(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(SCRIPTS / "ddp_train.py"),
            str(tmp_path),
            str(tiny_dirs["teacher"].parent),
        ],
        tmp_path,
    )
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world_size"] == 2 and r["finite"] for r in results)
    assert results[0]["digest"] == results[1]["digest"], "replicas diverged"
    # 32 rows, 4 per device, 2 devices -> 4 steps an epoch, 2 epochs
    assert results[0]["steps"] == 8
    assert results[0]["losses"][-1] < results[0]["losses"][0]


@pytest.mark.slow
def test_weight_averaging_under_ddp_keeps_the_replicas_identical(tmp_path, tiny_dirs):
    """Each rank averages its own replica (identical after every step), so the averages are identical too; rank 0
    alone writes the average into each checkpoint."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(SCRIPTS / "ddp_train.py"), str(tmp_path), str(tiny_dirs["teacher"].parent), "--average"]  # fmt: skip
    results = launch(run, tmp_path)
    assert results[0]["digest"] == results[1]["digest"], "the averaged replicas differ"
    checkpoints = sorted((tmp_path / "trainer").glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]
    # steps 5..8 are averaged: the first two checkpoints hold only the count (0), the later ones the mean too
    assert [(c / "weight_average.safetensors").is_file() for c in checkpoints] == [False, False, True, True]
    assert not list((tmp_path / "trainer").glob("checkpoint-*/.*.tmp"))
