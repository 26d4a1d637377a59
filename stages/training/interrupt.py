"""Stopping a run cleanly: SIGTERM, SIGUSR1 and SIGINT, a parent that died, and the clock.

SLURM sends SIGTERM on preemption and at the time limit (or the signal chosen with ``--signal``,
e.g. USR1 a few minutes before it); Ctrl-C sends SIGINT. None of them stops the process at once:
the handler only records the request, the loop finishes the optimiser step in flight, writes the
resumable checkpoint and exits with `EXIT_INTERRUPTED`, so at most that step's work is redone.
A second SIGINT (a user who really wants out) raises KeyboardInterrupt as usual.

A trainer started by a workflow job also watches its parent (``--exit-with-parent``): when the
job that started it is killed outright, the trainer is re-parented, and it stops the same way
instead of training on as an orphan beside the retry.
"""

from __future__ import annotations

import os
import signal
import time
from types import FrameType

EXIT_INTERRUPTED = 75
"""Exit status of an interrupted run that will resume from its checkpoint (BSD's EX_TEMPFAIL): not a failure."""

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class RunInterrupted(Exception):
    """The run stopped at a step boundary after a signal and wrote its resumable checkpoint."""

    def __init__(self, reason: str, step: int, checkpoint: str) -> None:
        super().__init__(f"interrupted by {reason} at step {step}: resumable checkpoint {checkpoint}; "
                         "run the same command again to resume")
        self.reason, self.step = reason, step


class StopRequests:
    """Records stop requests (signals, parent death) for the loop to act on at the next step boundary.

    Installed for the duration of a ``with`` block; the previous handlers come back afterwards.
    """

    def __init__(self, watch_parent: bool = False) -> None:
        self.reason: str | None = None
        self._parent = os.getppid() if watch_parent else None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        for number in SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if number == signal.SIGINT and self.reason == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, the last checkpoint stays as it is
        # Only the first request is kept: it is the one the run record reports.
        self.reason = self.reason or signal.Signals(number).name
        if number == signal.SIGINT:
            print("\nSIGINT: finishing this step and writing a checkpoint (press Ctrl-C again to stop at once)",
                  flush=True)

    def requested(self) -> str | None:
        """Why the run should stop now (a signal's name, ``parent exited``), or None."""
        if self.reason is None and self._parent is not None and os.getppid() != self._parent:
            self.reason = "parent exited"
        return self.reason


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers leave the stop signals to the main process.

    SLURM signals every process of a job; a worker that died of SIGTERM would take the step in
    flight (and the clean checkpoint) with it.
    """
    for number in SIGNALS:
        signal.signal(number, signal.SIG_IGN)


class CheckpointClock:
    """Whether a time-based checkpoint is due: every `minutes` of training (None: never)."""

    def __init__(self, minutes: float | None) -> None:
        self.seconds = None if minutes is None else minutes * 60.0
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.last >= self.seconds

    def reset(self) -> None:
        self.last = time.monotonic()
