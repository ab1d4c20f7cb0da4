"""Runs ``optical-st train`` with the given arguments and, when OPTICAL_TEST_KILL_AT is a step number, sends itself
SIGKILL at the end of that optimizer step: a machine stopped in the middle of training, at a known point."""

from __future__ import annotations

import os
import signal
import sys

import sentence_transformers
from transformers import TrainerCallback

from optical_st.cli import main


class _KillAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    step = os.environ.get("OPTICAL_TEST_KILL_AT")
    if step:
        callback = _KillAt(int(step))

        class Trainer(sentence_transformers.SentenceTransformerTrainer):
            def __init__(self, *args, callbacks=None, **kwargs):
                super().__init__(*args, callbacks=[*(callbacks or []), callback], **kwargs)

        sentence_transformers.SentenceTransformerTrainer = Trainer  # the command imports it when it trains
    sys.exit(main(sys.argv[1:]))
