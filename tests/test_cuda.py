"""GPU checks: skipped cleanly where CUDA is absent (CI has none)."""

from __future__ import annotations

import pytest
import torch

from optical_st import OTDistillationLoss, TeacherCache
from optical_st.transport import cosine_cost, sinkhorn_log, token_marginals

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_sinkhorn_cuda_matches_cpu_and_stays_on_device():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 20, 32, generator=g), torch.randn(16, 24, 32, generator=g)
    mask_a = (torch.arange(20) < torch.randint(1, 21, (16, 1), generator=g)).long()
    mask_b = (torch.arange(24) < torch.randint(1, 25, (16, 1), generator=g)).long()
    C, a, b = cosine_cost(x, y), token_marginals(mask_a), token_marginals(mask_b)
    cpu = sinkhorn_log(C, a, b, reg=0.05, max_iter=300, tol=0)
    gpu = sinkhorn_log(C.cuda(), a.cuda(), b.cuda(), reg=0.05, max_iter=300, tol=0)
    assert gpu.is_cuda and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = sinkhorn_log(C.cuda().bfloat16(), a.cuda(), b.cuda(), reg=0.05, max_iter=300, tol=0)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()


def test_loss_backward_on_cuda(teacher, student, bitext):
    teacher, student = teacher.to("cuda"), student.to("cuda")
    loss = OTDistillationLoss(student, teacher=teacher).to("cuda")
    feats = [student.preprocess(bitext["english"]), student.preprocess(bitext["lrl"])]
    feats = [{k: v.to("cuda") if torch.is_tensor(v) else v for k, v in f.items()} for f in feats]
    value = loss(feats)
    value.backward()
    assert value.is_cuda and torch.isfinite(value)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in student.parameters())


def test_teacher_cache_on_cuda_matches_uncached(teacher, student, bitext):
    teacher, student = teacher.to("cuda"), student.to("cuda")
    feats = [student.preprocess(bitext["english"]), student.preprocess(bitext["lrl"])]
    feats = [{k: v.to("cuda") if torch.is_tensor(v) else v for k, v in f.items()} for f in feats]
    expected = OTDistillationLoss(student, teacher=teacher)(feats)
    cache = TeacherCache()
    loss = OTDistillationLoss(student, teacher=teacher, teacher_cache=cache)
    first, second = loss(feats), loss(feats)  # fills the cache, then reads it
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, expected, atol=1e-5, rtol=1e-5)
    assert cache.hits == len(bitext) and second.is_cuda
