"""Save at the requeue signal. SLURM signals a job `cluster.signal_lead_s` before its time limit
(and submitit passes a preemption on the same way): `--signal=USR2@<lead>`. While a stage trains,
that signal only takes a note; the step in progress ends, every rank agrees that one was signalled,
the trainer saves a resumable checkpoint of that step and stops, and the signal is then handed to
the handler installed before (submitit's: re-pickle the call, requeue, exit; outside submitit the
default, which ends the process). A requeued stage so loses at most one optimizer step, not up to
`save_steps`; the lead `empo plan` derives covers the write of that checkpoint.

The pattern of Lightning's SLURM auto-requeue and NeMo's PreemptionCallback: a flag from the
handler, the save at a step boundary, never inside the handler (a step half-done, a collective
call from one rank)."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import torch
from transformers import TrainerCallback

from empo.distributed import requeue_signal
from empo.errors import TrainError

log = logging.getLogger(__name__)

REQUEUE_WAIT_S = 120              # a rank other than 0: rank 0's requeue ends it well before this


class SaveAtSignal(TrainerCallback):
    """Notes the requeue signal; at the end of the step in progress makes the trainer save a
    checkpoint and stop (`stopped_at`: that step, else None)."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.signalled = False
        self.stopped_at: int | None = None
        self.signal = requeue_signal()
        self.previous: Any = signal.SIG_DFL
        self.installed = False

    def install(self) -> None:
        """Take the signal over (only the main thread may: elsewhere the signal keeps its
        handler)."""
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(self.signal)
            signal.signal(self.signal, self._note)
            self.installed = True

    def uninstall(self) -> None:
        if self.installed:
            signal.signal(self.signal, self.previous)
            self.installed = False

    def _note(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - a signal handler's signature
        self.signalled = True
        log.warning("%s received: saving a checkpoint at the end of the step in progress, then "
                    "handing the job back for requeue", signal.Signals(signum).name)

    def _any_rank_signalled(self) -> bool:
        if self.accelerator.num_processes == 1:
            return self.signalled
        flag = torch.tensor([1 if self.signalled else 0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.stopped_at is None and self._any_rank_signalled():
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
            log.warning("requeue signal: stopping at step %d of %d with a checkpoint",
                        state.global_step, state.max_steps)
        return control

    def hand_on(self) -> None:
        """After the checkpoint of `stopped_at` is saved on every rank: the earlier handler's turn
        (rank 0 under submitit requeues and exits). Never returns."""
        self.accelerator.wait_for_everyone()
        self.uninstall()
        previous = self.previous
        if callable(previous):
            previous(self.signal, None)  # submitit: rank 0 requeues and exits; others return
            if self.accelerator.process_index != 0:
                time.sleep(REQUEUE_WAIT_S)  # the requeue ends this task
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), self.signal)
            time.sleep(REQUEUE_WAIT_S)
        raise TrainError(f"stopped at the requeue signal with a checkpoint of step "
                         f"{self.stopped_at}, and nothing requeued the job; run the stage again "
                         "to resume from it")
