"""Runs examples/rq2_ot_vs_contrastive.py's main with the given argv, and, when OPTICAL_TEST_KILL is
``<run name>:<step>:<TERM|KILL>``, sends itself that signal at the end of that optimizer step of that run: a machine
stopped (SIGKILL) or a job cancelled (SIGTERM) in the middle of training, at a known point."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
from pathlib import Path

from transformers import TrainerCallback

import optical_st.research.training as training

ROOT = Path(__file__).resolve().parents[2]


class _KillAt(TrainerCallback):
    def __init__(self, run: str, step: int, sig: signal.Signals) -> None:
        self.run, self.step, self.sig = run, step, sig

    def on_step_end(self, args, state, control, **kwargs):
        if Path(args.output_dir).name == self.run and state.global_step == self.step:
            os.kill(os.getpid(), self.sig)


def main() -> None:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    kill = os.environ.get("OPTICAL_TEST_KILL")
    if kill:
        run, step, sig = kill.rsplit(":", 2)
        callback = _KillAt(run, int(step), getattr(signal, f"SIG{sig}"))

        class Trainer(training.OpticalTrainer):
            def __init__(self, *args, callbacks=None, **kwargs):
                super().__init__(*args, callbacks=[*(callbacks or []), callback], **kwargs)

        training.OpticalTrainer = Trainer
    spec = importlib.util.spec_from_file_location("rq2", ROOT / "examples" / "rq2_ot_vs_contrastive.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.argv = ["rq2", *sys.argv[1:]]
    module.main()


if __name__ == "__main__":
    main()
