"""WeightAveragingCallback: the model ends with the mean (or EMA) of the weights it had after each averaged step,
recomputed here from a record of every step's weights; frozen weights untouched; a resumed run ends as the
uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from conftest import make_training_args, tiny_sentence_transformer, toy_bitext
from sentence_transformers import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from transformers import TrainerCallback

from optical_st import WeightAveragingCallback


class RecordWeights(TrainerCallback):
    """Each step's trainable weights, copied after the optimizer step."""

    def __init__(self, model):
        self.model, self.steps = model, []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append({n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad})


def train(tiny_dirs, tmp_path, averaging_kwargs=None, *, max_steps=8, resume=None, freeze_embeddings=False, **args):
    torch.manual_seed(0)
    model = tiny_sentence_transformer(tiny_dirs["student"])
    if freeze_embeddings:
        model[0].auto_model.embeddings.word_embeddings.weight.requires_grad_(False)
    recorder = RecordWeights(model)
    callbacks = [recorder]
    if averaging_kwargs is not None:
        callbacks.append(WeightAveragingCallback(model, **averaging_kwargs))
    training_args = make_training_args(tmp_path, output_dir=str(tmp_path), max_steps=max_steps, **args)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=toy_bitext(48),
        loss=MultipleNegativesRankingLoss(model),
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, recorder.steps


def trainable(model):
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def test_swa_is_the_mean_of_the_late_steps(tiny_dirs, tmp_path):
    model, steps = train(tiny_dirs, tmp_path, {"start": 0.5})
    assert len(steps) == 8
    late = steps[4:]  # start 0.5 of 8 steps: steps 5..8 enter the mean
    for name, value in trainable(model).items():
        expected = torch.stack([s[name] for s in late]).mean(0)
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-5)
    # the average is not the last weights: it moved the model
    assert any(not torch.equal(v, steps[-1][n]) for n, v in trainable(model).items())


def test_ema_follows_the_hand_computed_recurrence(tiny_dirs, tmp_path):
    model, steps = train(tiny_dirs, tmp_path, {"start": 0.25, "ema_decay": 0.8})
    for name, value in trainable(model).items():
        ema = steps[2][name].clone()  # steps 3..8 enter; the first one starts the average
        for s in steps[3:]:
            ema = 0.8 * ema + 0.2 * s[name]
        torch.testing.assert_close(value, ema, atol=1e-6, rtol=1e-5)


def test_frozen_weights_are_neither_averaged_nor_copied(tiny_dirs, tmp_path):
    model, _ = train(tiny_dirs, tmp_path / "a", {"start": 0.5}, freeze_embeddings=True)
    frozen = model[0].auto_model.embeddings.word_embeddings.weight
    initial = tiny_sentence_transformer(tiny_dirs["student"])[0].auto_model.embeddings.word_embeddings.weight
    torch.testing.assert_close(frozen, initial, atol=0, rtol=0)
    callback = WeightAveragingCallback(model)
    assert "0.auto_model.embeddings.word_embeddings.weight" not in callback.params


@pytest.mark.slow  # three short training runs
def test_a_resumed_run_ends_with_the_uninterrupted_average(tiny_dirs, tmp_path):
    saving = {"save_strategy": "steps", "save_steps": 3}
    full, _ = train(tiny_dirs, tmp_path / "a", {"start": 0.25}, max_steps=9, **saving)
    # checkpoint-3 holds the weights of step 3 (the first averaged one) and the average so far
    assert (tmp_path / "a" / "checkpoint-3" / WeightAveragingCallback.FILE).is_file()
    resumed, _ = train(
        tiny_dirs, tmp_path / "a", {"start": 0.25}, max_steps=9, resume=str(tmp_path / "a" / "checkpoint-6"), **saving
    )
    for name, value in trainable(full).items():
        torch.testing.assert_close(trainable(resumed)[name], value, atol=1e-6, rtol=1e-5)
    # resuming without the callback's files would restart the mean at step 7: a different model
    plain, _ = train(tiny_dirs, tmp_path / "b", {"start": 0.25}, max_steps=9, **saving)
    for folder in (tmp_path / "b").glob("checkpoint-*"):
        (folder / WeightAveragingCallback.FILE).unlink(missing_ok=True)
        (folder / WeightAveragingCallback.STATE).unlink()
    restarted, _ = train(
        tiny_dirs, tmp_path / "b", {"start": 0.25}, max_steps=9, resume=str(tmp_path / "b" / "checkpoint-6"), **saving
    )
    assert any(not torch.allclose(trainable(restarted)[n], v) for n, v in trainable(plain).items())


def test_a_start_near_the_end_averages_the_last_step_alone(tiny_dirs, tmp_path):
    model, steps = train(tiny_dirs, tmp_path, {"start": 0.999}, max_steps=2)
    # int(0.999 * 2) + 1 = 2: the last step is the mean of one
    for name, value in trainable(model).items():
        torch.testing.assert_close(value, steps[-1][name], atol=0, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"start": 1.0}, "start"), ({"start": -0.1}, "start"), ({"ema_decay": 1.0}, "ema_decay")],
)
def test_bad_settings_name_the_argument(tiny_dirs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        WeightAveragingCallback(tiny_sentence_transformer(tiny_dirs["student"]), **kwargs)


def test_a_model_without_trainable_weights_is_refused(tiny_dirs):
    model = tiny_sentence_transformer(tiny_dirs["student"])
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        WeightAveragingCallback(model)
