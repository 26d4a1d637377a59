"""The one error path of every command: `command` wraps a ``main(argv) -> int``.

A `PipelineError` (stages/errors.py) is printed as one ``error: <message>`` line on stderr and the
command exits 2; so is an ``OSError`` that names a file (permission denied, a missing folder).
Anything else is a bug and keeps its traceback. Special statuses stay with the command (training
returns 75 for an interrupted, resumable run: not an error). Library code logs (``logging``, loggers
under ``stages``) instead of printing: while a command runs, those records are its console output
(INFO and up, on stdout, as the message alone), and other libraries' warnings go to stderr, unless
logging was configured already (by the command itself, or pytest). Each ``python -m stages.<stage>`` is::

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


class _Console(logging.Handler):
    """The pipeline's log records (``stages.*``) as plain lines on `messages_on`; other libraries' warnings on stderr."""

    def __init__(self, messages_on: str) -> None:
        super().__init__()
        self.messages_on = messages_on

    def emit(self, record: logging.LogRecord) -> None:
        ours = record.name == "stages" or record.name.startswith("stages.")
        if not ours and record.levelno < logging.WARNING:
            return
        # looked up at each record, never bound: a test may have replaced (and since closed) the stream
        stream = getattr(sys, self.messages_on) if ours else sys.stderr
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001  logging must never end the command
            self.handleError(record)


def command(main: Main | None = None, *, messages_on: str = "stdout") -> Any:
    """Wrap a command's ``main(argv)``: user errors become one stderr line and exit status 2.

    ``@command(messages_on="stderr")`` is for a command whose log lines are progress beside its
    output (descriptor generation): they go to stderr, and are shown even where logging was
    configured already, as its callers (and tests) read them there.
    """
    if main is None:
        return functools.partial(command, messages_on=messages_on)

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None, *args: Any, **kwargs: Any) -> Any:
        root, ours = logging.getLogger(), logging.getLogger("stages")
        show = messages_on == "stderr" or not root.handlers
        console = _Console(messages_on) if show else None
        level = ours.level
        if console is not None:
            root.addHandler(console)
            if level == logging.NOTSET:
                ours.setLevel(logging.INFO)
        try:
            return main(argv, *args, **kwargs)
        except PipelineError as error:
            return report(error)
        except OSError as error:
            if error.filename is None:  # not about a file the user named: a bug, with its traceback
                raise
            return report(error)
        finally:
            if console is not None:
                root.removeHandler(console)
                ours.setLevel(level)

    return wrapper


__all__ = ["command", "one_line", "report"]
