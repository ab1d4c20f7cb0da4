"""A research study survives interruption: finished runs are records on disk, never redone; an interrupted run
resumes from its last checkpoint and ends where an uninterrupted run ends. And ``--train-pairs`` takes several sizes
(a learning curve)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from optical_st.research import ExperimentConfig, ot_distillation, run_experiment

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "interruptible_study.py"


def study_args(tiny_dirs, out: Path, *extra: str) -> list[str]:
    return [
        "--output-dir", str(out), "--teacher", str(tiny_dirs["teacher"]), "--student", str(tiny_dirs["wide_student"]),
        "--methods", "ot", "contrastive+ot", "--train-pairs", "24", "--seeds", "0", "--batch-size", "4",
        "--max-seq-length", "16", "--eval-max-seq-length", "16", "--eval-pairs", "12", "--eval-batch-size", "8",
        "--benchmarks", "bible.{lang}", "--no-english-ceiling", "--flops-every", "2", "--device", "cpu", "--no-bf16",
        "--save-steps", "2", "--logging-steps", "1", "--cache-dir", str(out.parent / "cache"), *extra,
    ]  # fmt: skip


def run_study(args: list[str], kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("OPTICAL_TEST_KILL", None)
    if kill:
        env["OPTICAL_TEST_KILL"] = kill
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)


def comparable(record: dict) -> dict:
    """What a run produced (scores, training logs, FLOPs), without what depends on the process (times, cache hits)."""
    keep = ("method", "seed", "steps", "metrics", "raw_metrics", "train_loss", "flops", "train_pairs", "settings")
    logs = [{k: v for k, v in log.items() if k not in ("grad_norm",)} for log in record["train_logs"]]
    return {**{k: record[k] for k in keep}, "train_logs": logs}


@pytest.mark.slow
def test_killed_study_resumes_and_matches_an_uninterrupted_one(tiny_dirs, tmp_path):
    reference = tmp_path / "reference"
    done = run_study(study_args(tiny_dirs, reference))
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "study"
    first, second = "nya-24-OT-KD-seed0", "nya-24-Contrastive-KD_+_OT-seed0"
    # a cancelled job (SIGTERM) in the middle of the first run: nothing finished, its step-2 checkpoint on disk
    killed = run_study(study_args(tiny_dirs, out), kill=f"{first}:3:TERM")
    assert killed.returncode == -signal.SIGTERM, killed.stderr[-3000:]
    assert not (out / "records").exists() and (out / "runs" / first / "checkpoint-2").is_dir()
    # a stopped machine (SIGKILL) in the middle of the second run: the first run's record is final
    killed = run_study(study_args(tiny_dirs, out), kill=f"{second}:5:KILL")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "Resuming OT-KD seed 0 from" in killed.stderr
    finished = (out / "records" / f"{first}.json").read_bytes()
    assert not (out / "runs" / first).exists()  # a finished run's checkpoints are removed, its record stays
    assert (out / "runs" / second / "checkpoint-4").is_dir()

    resumed = run_study(study_args(tiny_dirs, out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming Contrastive-KD + OT seed 0 from" in resumed.stderr and "done before" in resumed.stderr
    assert (out / "records" / f"{first}.json").read_bytes() == finished  # untouched
    runs = {r["run_id"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    expected = {r["run_id"]: r for r in json.loads((reference / "results.json").read_text())["runs"]}
    assert runs.keys() == expected.keys() == {first, second}
    assert runs[first]["resumed_from_step"] == 2 and runs[second]["resumed_from_step"] == 4
    for name in runs:  # on CPU the resumed runs end exactly where uninterrupted runs end
        assert comparable(runs[name]) == comparable(expected[name]), name
    assert runs[second]["steps"] == 6 and runs[second]["flops"]["measured_steps"] == 3


@pytest.mark.slow
def test_learning_curve_trains_every_size_and_plots_quality_against_pairs(tiny_dirs, tmp_path):
    out = tmp_path / "curve"
    args = study_args(tiny_dirs, out, "--train-pairs", "8", "16", "--methods", "zero-shot", "ot", "--threads", "1")
    done = run_study(args)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    rows = {(r["method"], r["train_pairs"]): r for r in results["aggregate"]}
    assert set(rows) == {("zero-shot", 0), ("OT-KD", 8), ("OT-KD", 16)}
    assert rows[("OT-KD", 8)]["steps"] == 2 and rows[("OT-KD", 16)]["steps"] == 4  # one epoch of batch 4 each
    assert rows[("OT-KD", 16)]["train FLOPs"][0] > rows[("OT-KD", 8)]["train FLOPs"][0] > 0
    assert results["config"]["train_pairs"] == [8, 16] and results["config"]["precision"] == "fp32"
    table = (out / "results.md").read_text()
    assert "| method | pairs | n |" in table and "| OT-KD | 16 | 1 |" in table and "Precision: **fp32**" in table
    assert ", 1 torch threads;" in table  # from the records: each states the threads it ran with
    assert {json.loads(p.read_text())["torch_threads"] for p in (out / "records").iterdir()} == {1}
    for plot in ("quality_vs_pairs.png", "quality_vs_flops.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (out / "records").iterdir()) == [
        "nya-16-OT-KD-seed0.json", "nya-8-OT-KD-seed0.json", "nya-zero-shot.json",
    ]  # fmt: skip


def test_records_of_other_settings_are_refused_not_mixed(tmp_path):
    config = ExperimentConfig(
        output_dir=str(tmp_path),
        teacher="intfloat/multilingual-e5-small",
        learning_rate=1e-4,
        train_pairs=(8,),
        seeds=(0,),
    )
    method = ot_distillation()
    record = {"method": method.name, "description": method.description, "settings": config.run_settings()}
    record["language"] = "nya"
    record["settings"]["learning_rate"] = 5e-5
    path = tmp_path / "records" / "nya-8-OT-KD-seed0.json"
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"other settings \(learning_rate\).*another --output-dir"):
        run_experiment([method], config)
