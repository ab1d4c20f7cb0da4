"""Weight averaging at the end of training: :class:`WeightAveragingCallback`, a transformers ``TrainerCallback`` that
keeps the running mean (SWA) or the exponential moving average of the trained weights over the last part of a run and
puts it in the model when training ends."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn, get_swa_multi_avg_fn
from transformers import TrainerCallback

from optical_st.utils import atomic_write_json, checkpoint_folder

__all__ = ["WeightAveragingCallback"]

logger = logging.getLogger(__name__)


class WeightAveragingCallback(TrainerCallback):
    """Average the trainable weights over the last part of training and load the average into the model at the end
    (stochastic weight averaging, Izmailov et al. 2018; or an exponential moving average with ``ema_decay``).

    A distilled student's relevance moves from one checkpoint to the next while the learning rate is high; an average
    of the late weights is one model between them. Only parameters with
    ``requires_grad`` are averaged (an OPTICAL model's frozen teacher route is not copied), with torch's own update
    rules (``torch.optim.swa_utils``), on the parameters' device, after each optimizer step from the start step on:
    no device-to-host transfer in the step.

    Checkpoints keep the average (``weight_average.safetensors`` beside the trainer's files), and a run resumed from
    a checkpoint continues it, so a resumed run ends with the uninterrupted run's weights.

    Args:
        model: the model the trainer trains (a ``SentenceTransformer``; any ``nn.Module``).
        start: where averaging begins, as a fraction of the run's steps (0.5: the last half) in [0, 1).
        ema_decay: ``None`` for the equal-weight running mean; a decay in (0, 1) for an exponential moving average.

    Example::

        from optical_st import OpticalTrainer, WeightAveragingCallback

        trainer = OpticalTrainer(model=model, args=args, train_dataset=train, loss=loss,
                                 callbacks=[WeightAveragingCallback(model, start=0.5)])
        trainer.train()  # the model now holds the average of the last half's weights
    """

    FILE = "weight_average.safetensors"
    STATE = "weight_average.json"

    def __init__(self, model: nn.Module, start: float = 0.5, ema_decay: float | None = None) -> None:
        if not 0.0 <= start < 1.0:
            raise ValueError(f"start must be a fraction of the steps in [0, 1), got {start}.")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None (an equal-weight mean), got {ema_decay}.")
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("The model has no trainable parameters to average.")
        self.start, self.ema_decay = start, ema_decay
        self.update = get_swa_multi_avg_fn() if ema_decay is None else get_ema_multi_avg_fn(ema_decay)
        self.average: dict[str, torch.Tensor] | None = None
        self.count = 0

    def start_step(self, max_steps: int) -> int:
        """The first optimizer step whose weights enter the average (1-based)."""
        return int(self.start * max_steps) + 1

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.average, self.count = None, 0
        folder = checkpoint_folder(args.output_dir, state.global_step)
        if state.global_step and (folder / self.STATE).is_file():  # a resumed run: continue its average
            saved = json.loads((folder / self.STATE).read_text(encoding="utf-8"))
            self.count = int(saved["count"])
            if self.count:
                tensors = load_file(str(folder / self.FILE))
                self.average = {name: tensors[name].to(p.device, p.dtype) for name, p in self.params.items()}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step < self.start_step(state.max_steps):
            return
        if self.average is None:
            self.average = {name: p.detach().clone() for name, p in self.params.items()}
        else:
            self.update(list(self.average.values()), [p.detach() for p in self.params.values()], self.count)
        self.count += 1

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = checkpoint_folder(args.output_dir, state.global_step)
        if not args.should_save or not folder.is_dir():  # one writer per checkpoint, as the trainer's own files
            return
        if self.average is not None:
            tmp = folder / f".{self.FILE}.tmp"  # a crash mid-write leaves no half file to resume from
            save_file({name: t.detach().contiguous().cpu() for name, t in self.average.items()}, str(tmp))
            os.replace(tmp, folder / self.FILE)
        atomic_write_json(folder / self.STATE, {"count": self.count, "start": self.start, "ema_decay": self.ema_decay})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.average is None:
            logger.warning(
                "No step reached the averaging start (%s of the steps): the model keeps its weights.", self.start
            )
            return
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.average[name])
        logger.info("Loaded the average of the weights of %d steps into the model.", self.count)
