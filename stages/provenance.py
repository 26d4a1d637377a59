"""Where and with what a run was made: recorded in ``run.json`` (never in the config snakemake hashes).

``provenance()`` returns package, library and device versions, the git commit of the code and
whether its work tree had uncommitted changes, the host, the command line and the start time.
Nothing here fails outside a git checkout or without a GPU: unknown values are ``None``.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGE_DIR = Path(__file__).resolve().parent


def now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    """Output of ``git <args>`` in the package's folder, or None (no git, not a checkout)."""
    try:
        return subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def git_state() -> dict[str, Any]:
    """``{"sha": full commit or None, "dirty": uncommitted changes under the repo (None if unknown)}``."""
    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"sha": sha, "dirty": None if status is None else bool(status)}


def code_version(state: dict[str, Any]) -> str:
    """``stages@<short sha>`` (``+dirty`` with uncommitted changes) of a :func:`git_state`, or ``stages@unknown``."""
    if state["sha"] is None:
        return "stages@unknown"
    return f"stages@{state['sha'][:7]}{'+dirty' if state['dirty'] else ''}"


def provenance() -> dict[str, Any]:
    """Package, git, library, device, host and command-line facts of this process, with the start time."""
    cuda = torch.cuda.is_available()
    return {
        "package": {"name": "stages", "version": _version("stages")},
        "git": git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": _version("open_clip_torch"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": {"count": torch.cuda.device_count() if cuda else 0,
                "names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []},
        "host": socket.gethostname(),
        "command": [sys.executable, *sys.argv],
        "started": now(),
    }
