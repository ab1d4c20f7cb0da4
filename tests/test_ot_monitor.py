"""The OT loss's monitor: a rate-limited warning when Sinkhorn stops early, and plan diagnostics in the trainer logs."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import make_training_args
from sentence_transformers import SentenceTransformerTrainer

from optical_st import OTConfig, OTDistillationLoss, build_optical_model
from optical_st.losses import OTDiagnosticsCallback, SinkhornConvergenceWarning, TokenEmbeddings
from optical_st.losses.ot_monitor import OTMonitor


def test_warning_is_rate_limited_to_powers_of_ten():
    monitor = OTMonitor()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(150):
            monitor.observe(0)
            monitor.check_convergence(converged=False, n_iter=100, error=0.2, reg=1e-3, max_iter=100, tol=1e-4)
    messages = [str(w.message) for w in caught if issubclass(w.category, SinkhornConvergenceWarning)]
    assert len(messages) == 3  # the 1st, 10th and 100th non-converged batch
    assert "in 1 of 1 batches" in messages[0] and "in 100 of 100 batches" in messages[2]
    assert "marginal error 0.2 > tol=0.0001 after 100 iterations, reg=0.001" in messages[0]
    assert "max_iter (e.g. to 200)" in messages[0]  # the fix


def test_converged_batches_never_warn(teacher):
    loss = OTDistillationLoss(teacher, teacher=teacher)  # the defaults converge
    s, t = (
        TokenEmbeddings(torch.randn(2, 5, 32), torch.ones(2, 5)),
        TokenEmbeddings(torch.randn(2, 6, 32), torch.ones(2, 6)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", SinkhornConvergenceWarning)
        loss.compute_loss_from_embeddings(s, t)
    assert loss.last_solver_log.converged and loss.monitor.not_converged == 0


def test_non_converged_plans_warn_once_with_the_error(teacher):
    loss = OTDistillationLoss(teacher, teacher=teacher, ot_config=OTConfig(reg=1e-3, max_iter=5, cost_scale=None))
    s, t = (
        TokenEmbeddings(torch.randn(2, 5, 32), torch.ones(2, 5)),
        TokenEmbeddings(torch.randn(2, 6, 32), torch.ones(2, 6)),
    )
    with pytest.warns(SinkhornConvergenceWarning, match=r"did not converge in 1 of 1 batches.*after 5 iterations"):
        loss.compute_loss_from_embeddings(s, t)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SinkhornConvergenceWarning)
        loss.compute_loss_from_embeddings(s, t)  # the 2nd: silent
    assert loss.monitor.not_converged == 2


@pytest.mark.slow
def test_diagnostics_reach_the_training_logs(teacher, student, bitext, tmp_path):
    model = build_optical_model(teacher, student)
    loss = OTDistillationLoss(model)
    args = make_training_args(tmp_path, bitext, max_steps=4, logging_steps=2)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=bitext, loss=loss, callbacks=[OTDiagnosticsCallback(loss)]
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2
    for line in logged:
        for key in ("ot_sinkhorn_iters", "ot_entropy_ratio", "ot_argmax_mass", "ot_marginal_error", "ot_cost_std"):
            assert key in line, key
        assert 0 < line["ot_entropy_ratio"] <= 1 and 0 < line["ot_argmax_mass"] <= 1
        assert 1 <= line["ot_sinkhorn_iters"] <= loss.ot_config.max_iter
