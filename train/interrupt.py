"""Ctrl-C for training: the first press ends the run after the current optimizer step with a checkpoint in
output_dir (the full trainer state: weights, optimizer, scheduler, RNG), says how to resume, and exits with status 130;
a second press quits at once. Rerunning the same train/sft.py or train/grpo.py command resumes from that checkpoint
(train/common.py: train_resumably).

    trainer, callback = stop_on_ctrl_c(build_trainer(...))   # what train/sft.py and train/grpo.py do
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from transformers import TrainerCallback

EXIT_CODE = 130  # 128 + SIGINT
# How to resume, said after the checkpoint is written; a driver that reruns training differently sets its own.
RESUME_HINT = "rerun the same command to resume from it"


class TrainingInterrupted(SystemExit):
    """Raised once the interrupt checkpoint is written; exits with 130 unless a caller (the toy recipe) catches it."""

    def __init__(self, checkpoint: str, step: int) -> None:
        super().__init__(EXIT_CODE)
        self.checkpoint, self.step = checkpoint, step


class StopOnCtrlC(TrainerCallback):
    def __init__(self) -> None:
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            os.write(2, b"\ninterrupted again: quitting now (the last checkpoint in output_dir is kept)\n")
            os._exit(EXIT_CODE)
        self.requested = True
        os.write(2, b"\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again quits at once)\n")

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:  # after the held-out evaluation callback: the interrupt checkpoint is not evaluated
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.requested:
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            print(f"interrupted at step {state.global_step} of {state.max_steps}: checkpoint {checkpoint} kept; "
                  "rerun the same command to resume from it", file=sys.stderr, flush=True)
            raise TrainingInterrupted(checkpoint, state.global_step)


def stop_on_ctrl_c(built: tuple):
    """(trainer, callback) of a build_trainer with the Ctrl-C callback added last (after the evaluation callback)."""
    trainer = built[0]
    trainer.add_callback(StopOnCtrlC())
    return built
