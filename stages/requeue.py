"""``python -m stages.requeue [--slurm] [--run-dir DIR] -- COMMAND ...``: a training job that outlives its interruptions.

The workflow's train rule runs its trainer through this (``exec``-ed by the rule's shell, so this
process *is* the job's shell). It starts COMMAND, passes on the stop signals it receives, and
reads COMMAND's exit status:

- 0 or an error status: returned as it is (errors are snakemake's ``retries``' business);
- 75 (`EXIT_INTERRUPTED`: the trainer finished its step, wrote its resumable checkpoint and
  stopped after SIGTERM/SIGUSR1/SIGINT): with ``--slurm`` inside a SLURM batch job, the job requeues
  itself (``scontrol requeue $SLURM_JOB_ID``): it keeps its id, so snakemake's SLURM executor keeps
  tracking it (PENDING again, then RUNNING, then COMPLETED), no ``retries`` are spent, and SLURM
  never runs the old and the new instance of one job at once. Otherwise (local executor, or a
  requeue SLURM refused) it exits 75 with one line saying to rerun the same command to resume.

Stop signals: SLURM signals every process of a job step (``--signal=TERM@lead`` before the time
limit, SIGTERM on preemption and at the limit), so the trainer receives them itself; SIGTERM and
SIGUSR1 sent to this process alone are passed on (the trainer treats a repeat as one request).
SIGINT is not: Ctrl-C reaches the whole foreground process group already, and the trainer reads a
second SIGINT as "stop at once".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from stages.training.interrupt import EXIT_INTERRUPTED

FORWARDED = (signal.SIGTERM, signal.SIGUSR1)
REQUEUE_GRACE_S = 600.0
"""How long this process waits, after a successful ``scontrol requeue``, for SLURM to end the job
instance (it sends SIGTERM then SIGKILL at once); past that the requeue did not take and the job fails as interrupted."""


def resumable_message(reason: str) -> str:
    """The one line a user reads when an interrupted run is not continued for them."""
    return (f"interrupted, resumable: rerun the same command to resume ({reason}; the run's checkpoint "
            "is at the interrupted step and the run record lists the interruption)")


def _log(message: str) -> None:
    print(f"[stages.requeue] {message}", file=sys.stderr, flush=True)


def _last_interruption(run_dir: Path | None) -> str:
    """'SIGTERM at step 12' from the run record's last interruption (what the trainer wrote), or ''."""
    entries = _interruptions(run_dir)
    try:
        return f"{entries[-1]['reason']} at step {entries[-1]['step']}"
    except (KeyError, IndexError, TypeError):
        return ""


def _interruptions(run_dir: Path | None) -> list[dict]:
    """The run record's interruption entries ([] without a run dir or a readable record)."""
    if run_dir is None:
        return []
    from stages.rundir import RunDir  # only when the trainer has ended: the supervisor starts it without delay

    try:
        entries = json.loads(RunDir(run_dir).record_path.read_text(encoding="utf-8")).get("interruptions", [])
    except (OSError, ValueError, AttributeError):
        return []
    return entries if isinstance(entries, list) else []


def _stopped_at_a_checkpoint(run_dir: Path | None, before: int) -> bool:
    """Whether the trainer recorded a new interruption, not yet resumed, during this attempt.

    torchrun does not pass its workers' exit 75 on (SIGTERM makes it kill them and exit 1), so a
    single-node multi-GPU job is recognised as interrupted by the record its rank 0 wrote."""
    entries = _interruptions(run_dir)
    return len(entries) > before and isinstance(entries[-1], dict) and entries[-1].get("resumed_from") is None


def requeue(job_id: str) -> str | None:
    """Ask SLURM to requeue batch job `job_id`; None on success, else why not (scontrol's own words)."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return "scontrol is not on PATH"
    try:
        done = subprocess.run([scontrol, "requeue", job_id], text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"scontrol requeue {job_id}: {error}"
    if done.returncode != 0:
        return f"scontrol requeue {job_id}: rc {done.returncode}: {done.stdout.strip()}"
    return None


def supervise(command: list[str], slurm: bool, run_dir: Path | None) -> int:
    """Run `command`; on exit 75 requeue the SLURM job (``slurm``) or say how to resume; return the job's status."""
    before = len(_interruptions(run_dir))
    child = subprocess.Popen(command)
    received: list[str] = []

    def forward(number: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(number).name)
        if child.poll() is None:
            child.send_signal(number)

    def note(number: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(number).name)

    for number in FORWARDED:
        signal.signal(number, forward)
    signal.signal(signal.SIGINT, note)
    status = child.wait()  # PEP 475: wait() resumes by itself after each handled signal
    if status not in (0, EXIT_INTERRUPTED) and _stopped_at_a_checkpoint(run_dir, before):
        _log(f"the trainer's launcher exited {status} after the run stopped at a checkpoint: interrupted")
        status = EXIT_INTERRUPTED
    if status != EXIT_INTERRUPTED:
        return status if status >= 0 else 128 - status  # killed by a signal: the shell's convention
    what = _last_interruption(run_dir) or f"exit {EXIT_INTERRUPTED}"
    job_id = os.environ.get("SLURM_JOB_ID")
    if not slurm or not job_id:
        _log(resumable_message(what))
        return EXIT_INTERRUPTED
    # From here on a SIGTERM is SLURM ending this instance of the job (the requeue itself): leave quietly.
    ending: list[int] = []
    for number in FORWARDED:
        signal.signal(number, lambda number, frame: ending.append(number))
    problem = requeue(job_id)
    if problem is not None:
        _log(f"could not requeue SLURM job {job_id} ({problem}); {resumable_message(what)}")
        return EXIT_INTERRUPTED
    _log(f"{what}: requeued SLURM job {job_id} (same id, snakemake keeps tracking it); "
         "it resumes from its checkpoint when SLURM starts it again")
    deadline = time.monotonic() + REQUEUE_GRACE_S
    while not ending and time.monotonic() < deadline:
        time.sleep(0.2)
    if not ending:
        _log(f"SLURM did not end job {job_id} within {REQUEUE_GRACE_S:.0f} s of its requeue; "
             f"{resumable_message(what)}")
    # Ended by the requeue: this instance's status is not recorded against the job (it is PENDING again).
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.requeue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slurm", action="store_true",
                        help="requeue the SLURM batch job ($SLURM_JOB_ID) when COMMAND exits 75 (the workflow "
                        "passes it to jobs of its SLURM executor only)")
    parser.add_argument("--run-dir", type=Path, help="the run directory (its run.json names the interruption)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the trainer's command line")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command: put the trainer's command line after --")
    try:
        return supervise(command, args.slurm, args.run_dir)
    except FileNotFoundError as error:
        _log(f"cannot start {command[0]!r}: {error}")
        return 127


if __name__ == "__main__":
    sys.exit(main())
