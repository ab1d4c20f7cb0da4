"""No host sync in a training step after the first batch (issue 33).

Every read of a tensor's value back to the host that optical_st's code makes during a step is counted through a
patched tensor class: ``.item()``, ``.tolist()``, ``bool()`` / ``float()`` / ``int()`` of a tensor, ``.cpu()``,
``.numpy()``, ``.nonzero()`` and boolean-mask indexing. On a GPU each such read waits for every kernel queued before it.
The first batch's checks read the batch (prompts, direction, rows without content, a finite loss); later batches read
nothing, except for the Sinkhorn solver's stopping rule, which is the algorithm: one read per block of ``check_every``
iterations, its input checks riding on the first one. (The exact solver, ``OTConfig(solver="emd")``, is POT's network
simplex on the host, problem by problem: no GPU solver to keep waiting.)
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import features_for, toy_bitext
from datasets import Dataset

from optical_st import ContrastiveDistillationLoss, OTDistillationLoss, build_optical_model, router_mapping
from optical_st.losses import OTDiagnosticsCallback

ROOT = Path(__file__).resolve().parents[1]
SOLVER = "transport/sinkhorn.py:_sinkhorn_stabilized"  # the stopping rule's reads
CHECK_EVERY = 10  # sinkhorn_log's default, which the loss uses


def _counter():
    """benchmarks/step_host_reads.py's counter (one home for it): its folder goes on sys.path, as when it runs."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("step_host_reads", ROOT / "benchmarks" / "step_host_reads.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.count_reads


@pytest.fixture
def host_reads(monkeypatch) -> Counter:
    """``"<file in optical_st>:<function>" -> reads`` made by optical_st code while the test runs."""
    return _counter()(monkeypatch.setattr)


def _batches(model, negatives: bool) -> list[list[dict]]:
    data = toy_bitext(32)
    if negatives:
        english = list(data["english"])
        data = Dataset.from_dict({**data.to_dict(), "negative_1": english[1:] + english[:1]})
    mapping = router_mapping(data)
    return [features_for(model, data.select(range(i, i + 8)), mapping) for i in range(0, 32, 8)]


def _step(loss, features: list[dict]) -> None:
    value = loss([dict(f) for f in features])
    total = sum(value.values()) if isinstance(value, dict) else value
    total.backward()


def _solver_reads(n_iter: int) -> int:
    """Reads of one solve that converged without a log-domain fallback: the first check, then one per block."""
    return 1 + math.ceil((n_iter - 1) / CHECK_EVERY)


SETUPS = {
    "OT": lambda model: OTDistillationLoss(model),
    "OT + InfoNCE + a negative column": lambda model: OTDistillationLoss(model, contrastive_weight=1.0),
    "OT with the diagnostics callback": lambda model: OTDistillationLoss(model, sentence_weight=0.5),
    "contrastive KD + a negative column": lambda model: ContrastiveDistillationLoss(model),
}


@pytest.mark.parametrize("setup", list(SETUPS))
def test_no_host_read_in_a_step_after_the_first_batch(teacher, student, host_reads, setup):
    model = build_optical_model(teacher, student)
    loss = SETUPS[setup](model)
    if "callback" in setup:
        OTDiagnosticsCallback(loss)  # the plan statistics are computed: as tensors, read at log lines only
    first, *later = _batches(model, negatives="negative" in setup)
    _step(loss, first)
    assert host_reads["losses/_input_checks.py:check_finite"] == 1  # the first batch is checked
    host_reads.clear()
    solver = 0
    for features in later:
        _step(loss, features)
        log = getattr(loss, "last_solver_log", None)
        if log is not None:
            assert log.converged and log.log_domain_blocks == 0
            solver += _solver_reads(log.n_iter)
    assert {key: n for key, n in host_reads.items() if key != SOLVER} == {}
    assert host_reads[SOLVER] == solver
    if "callback" in setup:
        means = loss.monitor.pop_means()  # read back here, once per log line
        assert set(means) == {"entropy_ratio", "argmax_mass", "marginal_error", "cost_std", "sinkhorn_iters"}


def test_every_batch_switch_checks_every_batch(teacher, student, host_reads):
    model = build_optical_model(teacher, student)
    loss = OTDistillationLoss(model)
    loss.input_checks.every_batch = True  # the debug switch
    for features in _batches(model, negatives=False):
        _step(loss, features)
    assert host_reads["losses/_input_checks.py:check_finite"] == 4
    # .nonzero() and .tolist() of both columns, every batch
    assert host_reads["losses/_input_checks.py:warn_rows_without_content"] == 4 * 2 * 2


@pytest.mark.parametrize("with_ot", [False, True])
def test_no_host_read_in_a_score_distillation_step_after_the_first_batch(teacher, student, host_reads, with_ot):
    """Score distillation: the candidates are looked up in the precomputed table, the labels checked once."""
    import torch

    from optical_st import ScoreDistillationLoss
    from optical_st.sampling import TeacherCandidates

    model = build_optical_model(teacher, student)
    data = toy_bitext(32)
    candidates = TeacherCandidates.build(model, list(data["english"]), show_progress_bar=False)
    data = candidates.attach(data, model, num_candidates=3)
    if with_ot:
        loss = OTDistillationLoss(model, score_weight=1.0, temperature=0.03, candidates=candidates)
    else:
        loss = ScoreDistillationLoss(model, candidates=candidates)
    mapping = router_mapping(data.remove_columns("label"))
    batches = [data.select(range(i, i + 8)) for i in range(0, 32, 8)]

    def step(batch: Dataset) -> None:
        value = loss(features_for(model, batch.remove_columns("label"), mapping), torch.tensor(batch["label"]))
        (sum(value.values()) if isinstance(value, dict) else value).backward()

    step(batches[0])
    assert (
        host_reads["losses/_input_checks.py:check_finite"] == 1
        and host_reads["losses/score_kl.py:check_score_labels"] > 0
    )
    host_reads.clear()
    for batch in batches[1:]:
        step(batch)
    assert {key: n for key, n in host_reads.items() if key != SOLVER} == {}
