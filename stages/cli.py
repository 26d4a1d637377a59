"""The one error path of every command: `command` wraps a ``main(argv) -> int``.

A `PipelineError` (stages/errors.py) is printed as one ``error: <message>`` line on stderr and the
command exits 2; so is an ``OSError`` that names a file (permission denied, a missing folder).
Anything else is a bug and keeps its traceback. Special statuses stay with the command (training
returns 75 for an interrupted, resumable run: not an error). Each ``python -m stages.<stage>`` is::

    @command
    def main(argv: list[str] | None = None) -> int: ...

    if __name__ == "__main__":
        sys.exit(main())

and tests call ``main([...])`` in-process: it returns the exit status rather than raising.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from stages.errors import EXIT_ERROR, PipelineError

Main = TypeVar("Main", bound=Callable[..., Any])


def one_line(message: str) -> str:
    """`message` on one line: its lines joined by spaces (a report is a single line on stderr)."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def report(error: BaseException) -> int:
    """Print `error` as the command's one ``error: ...`` line; the exit status."""
    if isinstance(error, OSError) and not isinstance(error, PipelineError):
        message = f"{error.filename}: {error.strerror or error}"
    else:
        message = str(error) or type(error).__name__
    print(f"error: {one_line(message)}", file=sys.stderr)
    return EXIT_ERROR


def command(main: Main) -> Main:
    """Wrap a command's ``main(argv)``: user errors become one stderr line and exit status 2."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None, *args: Any, **kwargs: Any) -> Any:
        try:
            return main(argv, *args, **kwargs)
        except PipelineError as error:
            logging.getLogger("stages").debug("command failed", exc_info=True)
            return report(error)
        except OSError as error:
            if error.filename is None:  # not about a file the user named: a bug, with its traceback
                raise
            return report(error)

    return wrapper  # type: ignore[return-value]


__all__ = ["command", "one_line", "report"]
