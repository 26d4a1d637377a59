"""Section 4: exact contrastive accumulation (issue 25 part 1, another branch), timed when this checkout has it.

The benchmark of gradient caching is ``python -m stages.training.bench --accum-compare --arch A
--batch-size B --micro-batch b``: step time and peak memory of 1 x B vs (B / b) x b. Until it is
merged, `exact_accumulation_compare` finds no ``--accum-compare`` in the bench's ``--help`` and
returns a ``skipped`` entry saying so; afterwards it runs it and keeps the JSON it writes. This
module is the one place that knows that command line.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

from stages.training.gpucheck.end_to_end import run_command, subprocess_env
from stages.training.gpucheck.settings import AccumSettings

ACCUM_FLAG = "--accum-compare"
BENCH_COMMAND = [sys.executable, "-m", "stages.training.bench"]


def bench_help() -> str:
    """The ``--help`` text of this checkout's ``python -m stages.training.bench`` (read in-process)."""
    from stages.training.bench.cli import parse_args

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parse_args(["--help"])
    return out.getvalue()


def exact_accumulation_compare(settings: AccumSettings, device: str, precision: str, work: Path,
                               timeout_s: float = 180.0) -> dict[str, Any]:
    """1 x batch vs k x micro-batch with exact accumulation, through the bench's ``--accum-compare``;
    ``status: skipped`` (with the reason) when this checkout's bench has no such flag."""
    if ACCUM_FLAG not in bench_help():
        return {"status": "skipped",
                "reason": f"not available in this checkout: python -m stages.training.bench has no {ACCUM_FLAG} "
                          "(exact contrastive accumulation, issue 25 part 1, is not merged here)"}
    work.mkdir(parents=True, exist_ok=True)
    out = work / "accum_compare.json"
    command = [*BENCH_COMMAND, ACCUM_FLAG, "--arch", settings.arch, "--batch-size", str(settings.batch_size),
               "--micro-batch", str(settings.micro_batch), "--device", device, "--precision", precision,
               "--classes", str(settings.classes), "--steps", str(settings.steps), "--warmup", str(settings.warmup),
               "--out", str(out)]
    outcome = run_command(command, work / "accum_compare.log", timeout_s, subprocess_env())
    result = json.loads(out.read_text()) if out.is_file() else None
    ok = outcome["returncode"] == 0
    return {"status": "ok" if ok else "failed", "command": outcome, "result": result,
            **({} if result is not None or not ok else {"note": f"the bench wrote no {out.name}; see log_tail"})}
