"""Smoke tests of the research-question scripts (tiny models, tiny data, seconds) and of optical_st.research's
bookkeeping and reports."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from optical_st.research import (
    aggregate,
    format_table,
    method_row,
    plot_quality_vs_flops,
    ratios,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_args(tiny_dirs, out: Path, *extra: str) -> list[str]:
    return [
        "--output-dir",
        str(out),
        "--teacher",
        str(tiny_dirs["teacher"]),
        "--train-pairs",
        "24",
        "--eval-pairs",
        "12",
        "--seeds",
        "0",
        "1",
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--max-seq-length",
        "16",
        "--eval-max-seq-length",
        "16",
        "--eval-batch-size",
        "8",
        "--flops-every",
        "2",
        "--device",
        "cpu",
        # the relevance task on the small corpus (the query books plus every cross-referenced verse), to keep it fast
        "--benchmarks",
        "bible.{lang}",
        "bible-xref.{lang}",
        "--xref-corpus",
        "split",
        "--cache-dir",
        str(out / "cache"),
        *extra,
    ]


def check_outputs(out: Path, expected_methods: dict[str, int]) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert {row["method"]: row["n"] for row in results["aggregate"]} == expected_methods
    for run in results["runs"]:
        assert run["metrics"], run["method"]
        for name, value in run["metrics"].items():
            assert math.isfinite(value) and 0 <= value <= 1, (run["method"], name, value)
        assert math.isfinite(run["flops"]["total"])
        if run["method"] not in ("zero-shot", "English queries (ceiling)"):
            assert run["flops"]["total"] > 0 and run["steps"] == 3 and run["train_seconds"] > 0
            assert {"student_forward", "backward"} <= set(run["flops"]["per_step"])
    table = (out / "results.md").read_text()
    for method in expected_methods:
        assert f"| {method} |" in table
    assert "## Conditions" in table
    png = (out / "quality_vs_flops.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert not (out / "runs.partial.json").exists()
    return results


@pytest.mark.slow
def test_rq2_script_end_to_end(tiny_dirs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "rq2"
    argv = tiny_args(tiny_dirs, out, "--student", str(tiny_dirs["wide_student"]))
    monkeypatch.setattr(sys, "argv", ["rq2", *argv])
    load_script("rq2_ot_vs_contrastive").main()
    results = check_outputs(
        out,
        {
            "zero-shot": 1,
            "OT-KD": 2,
            "Contrastive-KD": 2,
            "Contrastive-KD + OT": 2,
            "MSE-KD": 2,
            "English queries (ceiling)": 1,
        },
    )
    runs = {(r["method"], r["seed"]): r for r in results["runs"]}
    # OT and contrastive run the teacher in every step; MSE-KD precomputes it once, as a one-off cost
    assert runs[("OT-KD", 0)]["flops"]["per_step"]["teacher_forward"] > 0
    assert "teacher_forward" not in runs[("MSE-KD", 0)]["flops"]["per_step"]
    assert runs[("MSE-KD", 0)]["flops"]["one_off"]["teacher_precompute"] > 0
    assert runs[("OT-KD", 0)]["flops"]["analytic_per_step"]["ot_elementwise_analytic"] > 0
    assert "| OT-KD | 2 |" in capsys.readouterr().out
    # one TeacherCache for the command: the first trained run fills it, later runs read it, and their FLOPs still
    # count the teacher's forward (measured steps bypass the cache); MSE-KD's loss takes no cache
    cached = [r for r in results["runs"] if "teacher_cache" in r]
    assert cached[0]["teacher_cache"] == {"hits": 0, "misses": cached[0]["teacher_cache"]["misses"]}
    assert sum(r["teacher_cache"]["hits"] for r in cached[1:]) > 0
    assert all(r["flops"]["per_step"]["teacher_forward"] > 0 for r in cached)
    assert "teacher_cache" not in runs[("MSE-KD", 0)]
    # every trained or zero-shot run has both tasks; the ceiling only the relevance task, on English queries
    for run in results["runs"]:
        keys = set(run["metrics"])
        assert {"xref MAP@100", "xref nDCG@10"} <= keys, run["method"]
        assert ("acc@1 LRL→En" in keys) == (run["method"] != "English queries (ceiling)")
    ceiling = next(r for r in results["runs"] if r["method"] == "English queries (ceiling)")
    zero = next(r for r in results["runs"] if r["method"] == "zero-shot")
    assert ceiling["metrics"]["xref MAP@100"] != zero["metrics"]["xref MAP@100"]  # other queries, other scores
    # the frozen teacher's corpus was encoded once and then read from the cache
    assert any((out / "cache").glob("*.pt"))


@pytest.mark.slow
def test_rq1_script_without_negatives(tiny_dirs, tmp_path, monkeypatch):
    out = tmp_path / "rq1"
    argv = tiny_args(tiny_dirs, out, "--methods", "none", "--average-weights-from", "0.5")
    monkeypatch.setattr(sys, "argv", ["rq1", *argv])
    load_script("rq1_dynamic_vs_static").main()
    results = check_outputs(out, {"OT (no negatives)": 2, "English queries (ceiling)": 1})
    # the evaluated students are the mean of steps 2 and 3 (int(0.5 * 3) + 1 = 2)
    trained = [r for r in results["runs"] if r["steps"]]
    assert [r["weight_average"] for r in trained] == [{"start": 0.5, "steps": 2}] * 2


@pytest.mark.slow
def test_rq1_script_with_mined_negatives(tiny_dirs, tmp_path, monkeypatch):
    out = tmp_path / "rq1"
    methods = ("in-batch", "static", "dynamic")
    argv = tiny_args(tiny_dirs, out, "--methods", *methods, "--refresh-steps", "1", "--seeds", "0")
    monkeypatch.setattr(sys, "argv", ["rq1", *argv])
    load_script("rq1_dynamic_vs_static").main()
    names = ("OT + in-batch InfoNCE", "OT + static hard negatives", "OT + dynamic hard negatives")
    results = check_outputs(out, {**dict.fromkeys(names, 1), "English queries (ceiling)": 1})
    mining = {r["method"]: r["flops"]["one_off"].get("mining", 0) for r in results["runs"] if r["steps"]}
    assert mining["OT + in-batch InfoNCE"] == 0
    assert mining["OT + static hard negatives"] > 0 and mining["OT + dynamic hard negatives"] > 0


def test_aggregate_and_table_hand_computed():
    records = [
        {"method": "A", "metrics": {"MAP@100": 0.2}, "flops": {"total": 10.0}, "train_seconds": 4.0},
        {"method": "A", "metrics": {"MAP@100": 0.4}, "flops": {"total": 30.0}, "train_seconds": 6.0},
        {"method": "B", "metrics": {"MAP@100": 0.1}, "flops": {"total": 0.0}, "train_seconds": 0.0},
    ]
    rows = aggregate(records)
    assert [r["method"] for r in rows] == ["A", "B"]
    mean, std = rows[0]["MAP@100"]
    assert mean == pytest.approx(0.3) and std == pytest.approx(math.sqrt(0.02))  # sample std of (0.2, 0.4)
    assert rows[0]["train FLOPs"] == (20.0, pytest.approx(math.sqrt(200)))
    table = format_table(rows)
    assert "| A | 2 | 0.3000 ± 0.1414 |" in table and "| B | 1 | 0.1000 ± 0.0000 |" in table


@pytest.mark.parametrize(
    ("flops", "xscale", "label"),
    [
        ((3.5e13, 5.8e13), "linear", "training FLOPs (x1e13, measured, whole run)"),
        ((2e11, 5e13), "log", "training FLOPs (measured, whole run)"),  # costs span decades
    ],
)
def test_plot_axes(tmp_path, monkeypatch, flops, xscale, label):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to inspect it
    rows = [
        {"method": "zero-shot", "MAP@100": (0.02, 0.0), "train FLOPs": (0.0, 0.0)},
        {"method": "A", "MAP@100": (0.1, 0.01), "train FLOPs": (flops[0], 0.0)},
        {"method": "B", "MAP@100": (0.2, 0.02), "train FLOPs": (flops[1], 0.0)},
        {"method": "ceiling", "MAP@100": (0.5, 0.0), "train FLOPs": (0.0, 0.0)},
    ]
    plot_quality_vs_flops(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")
    (ax,) = figures[0].axes  # one panel: acc@1 is in no row
    assert ax.get_xscale() == xscale and ax.get_xlabel() == label
    figures[0].canvas.draw()
    assert ax.xaxis.get_offset_text().get_text() == ""  # no "1e13" printed over the label
    if xscale == "linear":
        assert "5" in [t.get_text() for t in ax.get_xticklabels()]  # 5e13 shown as 5
    # the zero-shot teacher is a dashed line at its score, not a point at 0 FLOPs
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [0.02]
    # a second reference (the English-query ceiling) is told apart by its own dash style
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"] == [0.5]


@pytest.mark.parametrize(("loads", "wording"), [([0.6, 2.2], "(the runs alone)"), ([1.9, 3.4], "(other processes")])
def test_conditions_say_whether_the_cores_were_shared(loads, wording):
    import torch

    from optical_st.research import ExperimentConfig
    from optical_st.research.report import _conditions

    torch_threads = torch.get_num_threads()
    config = ExperimentConfig(device="cpu")
    # loads are relative to the run's own threads: 2 threads give a load of ~2 on an otherwise idle machine
    records = [{"load_average": [x * torch_threads / 2 for x in loads], "train_seconds": 90.0, "eval_seconds": 30.0}]
    text = _conditions(config, records, wall=60.0)
    assert wording in text and "2.0 min of training and evaluation" in text and "this command: 1.0 min" in text
    # a --report-only rewrite (nothing run) still states the runs' time, and no zero for the command
    assert "this command" not in _conditions(config, records, wall=0.01)


def test_conditions_state_the_threads_each_run_recorded():
    """A study resumed with another --threads states both counts from the records, not this process's."""
    from optical_st.research import ExperimentConfig
    from optical_st.research.report import _conditions

    config = ExperimentConfig(device="cpu")
    run = {"load_average": [3.0, 3.1], "train_seconds": 60.0, "eval_seconds": 0.0}  # above 2 threads + 0.5
    mixed = _conditions(config, [{**run, "torch_threads": 2}, {**run, "torch_threads": 1}], wall=0.0)
    assert "1 or 2 torch threads by run" in mixed and "(other processes shared the cores)" in mixed
    assert "3 torch threads;" in _conditions(config, [{**run, "torch_threads": 3}], wall=0.0)


def test_report_states_the_command_that_reproduces_the_study(tmp_path, monkeypatch):
    from optical_st.research.report import command_line

    monkeypatch.chdir(tmp_path)
    script = str(tmp_path / "examples" / "rq2.py")
    argv = [script, "--train-pairs", "800", "0", "--report-only", "--output-dir", "a dir"]
    assert command_line(argv) == "python examples/rq2.py --train-pairs 800 0 --output-dir 'a dir'"
    assert command_line(["rq2.py", "--seeds", "0"]) == "python rq2.py --seeds 0"


def test_cli_round_trips_the_config():
    import argparse

    from optical_st.research import ExperimentConfig, add_cli_arguments, config_from_args

    defaults = ExperimentConfig(output_dir="out", train_pairs=6400, seeds=(4, 5), bf16=False, threads=2)
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser, defaults)
    parser.add_argument("--reg", type=float, default=0.05)  # a script's own flag is not a config field
    assert config_from_args(parser.parse_args([])) == defaults
    assert defaults.train_pairs == (6400,)  # one size is a curve of one
    config = config_from_args(parser.parse_args(["--train-pairs", "0", "--eval-pairs", "0", "--seeds", "1", "--bf16"]))
    assert (config.train_pairs, config.eval_pairs, config.seeds, config.bf16) == ((None,), None, (1,), True)
    curve = config_from_args(parser.parse_args(["--train-pairs", "800", "3200", "0", "--save-steps", "20"]))
    assert (curve.train_pairs, curve.save_steps) == ((800, 3200, None), 20)
    with pytest.raises(ValueError, match="multiple of logging_steps"):
        config_from_args(parser.parse_args(["--save-steps", "15"]))


def test_single_run_report_has_a_row_per_method(tmp_path):
    """The demo's report takes any number of methods: one table line and one bar group each."""
    metrics = {"acc@1 LRL→En": 0.1, "MRR@10": 0.2, "nDCG@10": 0.3, "acc@1 En→LRL": 0.25}
    rows = [
        method_row("zero-shot teacher", {k: v / 10 for k, v in metrics.items()}, wall_time_s=30.0),
        method_row("OT", metrics, train_pairs=20000, epochs=1.0, wall_time_s=600.0),
        method_row("OT + InfoNCE", {k: 2 * v for k, v in metrics.items()}, train_pairs=20000, epochs=1.0),
    ]
    table = write_results(
        tmp_path, rows, summary="three methods", details={"note": 1}, log_history=[{"step": 1, "loss": 2.0}]
    )
    assert table.splitlines()[2:] == [
        "| zero-shot teacher | 0.0100 | 0.0200 | 0.0300 | 0.0250 | 0 | 0 | 0.5 min |",
        "| OT | 0.1000 | 0.2000 | 0.3000 | 0.2500 | 20,000 | 1 | 10.0 min |",
        "| OT + InfoNCE | 0.2000 | 0.4000 | 0.6000 | 0.5000 | 20,000 | 1 | 0.0 min |",
    ]
    assert (tmp_path / "results.md").read_text() == f"{table}\n\nthree methods\n"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in saved["results"]] == ["zero-shot teacher", "OT", "OT + InfoNCE"] and saved["note"] == 1
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")
    assert ratios(rows[2], rows[0], ["acc@1 LRL→En"]) == {"acc@1 LRL→En": pytest.approx(20.0)}


def test_static_negatives_match_brute_force(tiny_dirs):
    """Static negatives through sentence-transformers' miner: each row's negative is the English text the model ranks
    highest for its LRL text (student route) among the other rows' English texts (teacher route), brute force."""
    import torch
    from sentence_transformers.util import cos_sim

    from optical_st import build_optical_model
    from optical_st.recipe import mine_static_negatives
    from optical_st.research import ExperimentConfig, contrastive_distillation, ot_distillation
    from tests.conftest import toy_bitext

    model = build_optical_model(str(tiny_dirs["teacher"]), str(tiny_dirs["student"]), device="cpu")
    train = toy_bitext(24)
    mined = mine_static_negatives(train, model, num_negatives=1, batch_size=8, verbose=False)
    assert mined.column_names == ["english", "lrl", "negative_1"] and len(mined) == len(train)

    english = list(train["english"])
    scores = cos_sim(model.encode_query(list(train["lrl"]), convert_to_tensor=True),
                     model.encode_document(english, convert_to_tensor=True))  # fmt: skip
    expected = {}
    for i, (lrl, positive) in enumerate(zip(train["lrl"], english, strict=True)):
        ranked = [english[j] for j in torch.argsort(scores[i], descending=True).tolist() if english[j] != positive]
        expected[(lrl, positive)] = ranked[0]
    for row in mined:
        assert row["negative_1"] == expected[(row["lrl"], row["english"])]

    # a loss with an InfoNCE term trains on the negatives; the OT-only loss gets (english, lrl)
    config = ExperimentConfig()
    with_term = ot_distillation("x", contrastive_weight=1.0).setup(model, mined, config)
    assert with_term.train_dataset.column_names == ["english", "lrl", "negative_1"]
    assert with_term.router_mapping["negative_1"] == "document"
    assert ot_distillation("y").setup(model, mined, config).train_dataset.column_names == ["english", "lrl"]
    assert contrastive_distillation().setup(model, mined, config).train_dataset.column_names[-1] == "negative_1"


@pytest.mark.parametrize(("batch_sampler", "grouped"), [("length-grouped", True), ("random", False)])
def test_mined_arms_batch_like_the_rest_of_the_command(tiny_dirs, bitext, batch_sampler, grouped):
    import argparse

    from optical_st import build_optical_model
    from optical_st.research.cli import add_cli_arguments, config_from_args
    from optical_st.research.config import ExperimentConfig
    from optical_st.research.methods import ot_distillation

    model = build_optical_model(str(tiny_dirs["teacher"]))
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser, ExperimentConfig())
    config = config_from_args(parser.parse_args(["--batch-sampler", batch_sampler]))
    method = ot_distillation(sampler={"num_negatives": 1, "refresh_steps": None}, contrastive_weight=1.0)
    plan = method.setup(model, bitext, config)
    assert plan.batch_sampler.config.group_by_length is grouped


@pytest.mark.slow
def test_rq1_script_with_soft_labels(tiny_dirs, tmp_path, monkeypatch):
    """Score distillation over candidates mined by the teacher, or by the student once / every step."""
    out = tmp_path / "rq1"
    methods = ("score-teacher", "score-static", "score-dynamic")
    argv = tiny_args(tiny_dirs, out, "--methods", *methods, "--refresh-steps", "1", "--seeds", "0")
    monkeypatch.setattr(sys, "argv", ["rq1", *argv, "--num-candidates", "2", "--train-pairs", "16"])
    # the pairs' own English as the pool (the training books' pool is tested in test_score_distillation.py): seconds
    monkeypatch.setattr("optical_st.research.methods.english_pool", lambda config, train, pool: list(train["english"]))
    load_script("rq1_dynamic_vs_static").main()
    names = [f"Score-KD + OT, {kind} candidates" for kind in ("teacher", "static student", "dynamic student")]
    results = check_outputs(out, {**dict.fromkeys(names, 1), "English queries (ceiling)": 1})
    runs = {r["method"]: r for r in results["runs"] if r["steps"]}
    assert runs[names[0]]["flops"]["one_off"].get("mining", 0) == 0  # the teacher's candidates: no re-mining
    assert 0 < runs[names[1]]["flops"]["one_off"]["mining"] < runs[names[2]]["flops"]["one_off"]["mining"]
    assert all(r["flops"]["one_off"]["teacher_precompute"] > 0 for r in runs.values())
