"""Training FLOPs: FlopCounterMode phases against analytic matmul counts, CPU attention, the trainer callback."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertModel, TrainerCallback

from optical_st import OTConfig, OTDistillationLoss, build_optical_model, router_mapping
from optical_st.evaluation.flops import (
    FlopsCallback,
    PhaseFlopCounter,
    count_flops,
    encoder_phases,
)
from optical_st.phases import MINING, work_phase


def test_linear_forward_and_backward_match_the_matmul_formula():
    torch.manual_seed(0)
    student, teacher = nn.Linear(8, 4), nn.Linear(8, 4).requires_grad_(False)
    x = torch.randn(3, 8)

    def step():
        with torch.no_grad():
            t = teacher(x)
        s = student(x)
        ((s - t) ** 2).sum().backward()

    _, phases = count_flops(step, phases={"student_forward": [student], "teacher_forward": [teacher]})
    matmul = 2 * 3 * 8 * 4
    # backward: grad of the weight only (x needs no grad) -> one matmul of the same size
    assert phases == {"teacher_forward": matmul, "student_forward": matmul, "backward": matmul}


def test_forced_phase_wins_over_module_phases():
    layer = nn.Linear(4, 4)
    with PhaseFlopCounter({"student_forward": [layer]}) as counter:
        layer(torch.randn(2, 4))
        with counter.force_phase("mining"), torch.no_grad():
            layer(torch.randn(5, 4))
    assert dict(counter.phase_flops) == {"student_forward": 2 * 2 * 4 * 4, "mining": 2 * 5 * 4 * 4}
    assert counter.get_total_flops() == 2 * 7 * 4 * 4


def test_cpu_attention_is_counted_like_the_eager_path(tiny_dirs):
    """torch's registry misses the CPU SDPA kernel; ours counts it, and the forward equals the eager matmuls."""
    ids = torch.randint(5, 40, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    forward = {}
    for impl in ("eager", "sdpa"):
        model = BertModel.from_pretrained(str(tiny_dirs["teacher"]), attn_implementation=impl)
        with torch.no_grad():
            _, phases = count_flops(model, input_ids=ids, attention_mask=mask)
        forward[impl] = phases["loss"]
        if impl == "sdpa":
            with FlopCounterMode(display=False) as plain, torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
            attention = 2 * (2 * 3 * 2 * 7 * 7 * 16) * 2  # QK^T and PV: 2 layers x batch 3 x 2 heads x 7 x 7 x d 16
            assert forward["sdpa"] - plain.get_total_flops() == attention
    assert forward["sdpa"] == forward["eager"]


def ot_setup(teacher, wide_student, bitext):
    model = build_optical_model(teacher, wide_student)
    loss = OTDistillationLoss(model, ot_config=OTConfig(reg=0.05))
    mapping = router_mapping(bitext)
    feats = []
    for column in bitext.column_names:
        f = model.preprocess(bitext[column], task=mapping[column])
        f["task"] = mapping[column]
        feats.append(f)
    return model, loss, feats


def test_ot_step_phases_match_separate_counts(teacher, wide_student, bitext):
    model, loss, feats = ot_setup(teacher, wide_student, bitext)
    phases = encoder_phases(model, loss)
    router = model[0]
    _, step = count_flops(lambda: loss([dict(f) for f in feats]).backward(), phases=phases)
    with torch.no_grad():
        _, teacher_only = count_flops(router, dict(feats[0]))
        _, student_only = count_flops(router, dict(feats[1]))
    assert step["teacher_forward"] == teacher_only["loss"] > 0
    assert step["student_forward"] == student_only["loss"] > 0
    # the loss phase is the cosine cost bmm + Sinkhorn's matrix-vector products: at least the cost matrix
    n, m = feats[1]["input_ids"].shape[1], feats[0]["input_ids"].shape[1]
    assert step["loss"] >= 2 * len(bitext) * n * m * 32
    assert step["backward"] > step["student_forward"]  # backward of the student ~2x its forward


class Miner:
    """Stands in for a hard-negative sampler's re-mining: encodes texts with the current student, marked as the
    mining work phase (as HardNegativeMiningCallback.refresh marks it)."""

    def __init__(self, model):
        self.model = model

    def mine(self, texts):
        with work_phase(MINING), torch.no_grad():
            return self.model.encode_query(texts, convert_to_tensor=True)


STEP_TEXTS = ["mulungu ndi"] * 2


class MineEveryStep(TrainerCallback):
    """Re-mines at the start of every step, i.e. inside the steps FlopsCallback measures (registered after it)."""

    def __init__(self, miner):
        self.miner = miner

    def on_step_begin(self, args, state, control, **kwargs):
        self.miner.mine(STEP_TEXTS)


def test_callback_extrapolates_and_counts_mining(teacher, wide_student, tmp_path):
    model = build_optical_model(teacher, wide_student)
    # fixed iterations: identical steps
    loss = OTDistillationLoss(model, ot_config=OTConfig(reg=0.05, max_iter=20, tol=0))
    # identical rows: every step has the same shapes, so sampled and exhaustive measurement must agree
    dataset = Dataset.from_dict({"english": ["god is love"] * 12, "lrl": ["mulungu ndi chikondi"] * 12})
    reports = {}
    for every in (1, 2):
        callback = FlopsCallback(model, loss, every_n_steps=every)
        miner = Miner(model)
        args = SentenceTransformerTrainingArguments(
            output_dir=str(tmp_path / f"out{every}"),
            per_device_train_batch_size=4,
            num_train_epochs=1,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            router_mapping=router_mapping(dataset),
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[callback, MineEveryStep(miner)]
        )
        miner.mine(["mulungu"] * 7)  # before counting: not counted
        with callback.counting(MINING):
            miner.mine(["mulungu"] * 3)  # outside any step: runs under its own counter
            trainer.train()
        miner.mine(["mulungu"] * 5)  # after counting: not counted
        reports[every] = callback.report
    exact, sampled = reports[1], reports[2]
    assert (exact.total_steps, exact.measured_steps, sampled.measured_steps) == (3, 3, 2)
    assert set(exact.per_step) == {"student_forward", "teacher_forward", "loss", "backward"}
    for phase, value in exact.per_step.items():
        assert sampled.per_step[phase] == pytest.approx(value), phase
    assert sampled.total == pytest.approx(exact.total)
    # mining is summed exactly, inside measured steps (forced phase) or not (own counter): the same in both runs
    mining = exact.one_off["mining"]
    assert mining > 0 and sampled.one_off["mining"] == mining
    # exactly the marked calls inside `counting`: one before training and one per step
    before, each_step = (count_flops(miner.mine, texts)[1]["loss"] for texts in (["mulungu"] * 3, STEP_TEXTS))
    assert mining == before + 3 * each_step
    assert exact.total == pytest.approx(exact.step_flops * 3 + mining)
    assert exact.analytic_per_step["ot_elementwise_analytic"] > 0
    assert exact.total_with_analytic > exact.total
    # the model card reports the last run's measurement
    card = model.model_card_data.to_dict()
    assert card["training_flops"] == pytest.approx(sampled.total)
    assert "mining" in card["training_compute_table"]
    model.save(str(tmp_path / "saved"))
    readme = (tmp_path / "saved" / "README.md").read_text(encoding="utf8")
    assert f"{sampled.total:.3g} FLOPs (measured with `torch.utils.flop_counter.FlopCounterMode`" in readme


def test_every_n_steps_must_be_positive():
    with pytest.raises(ValueError, match="every_n_steps"):
        FlopsCallback(nn.Linear(1, 1), every_n_steps=0)
