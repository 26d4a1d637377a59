"""The pipeline's one error hierarchy: every problem a user can fix is a `PipelineError`.

A `PipelineError`'s message is the whole report: it names the file or the setting and says the fix.
Every command's ``main`` is wrapped by `stages.cli.command`, which prints it as one ``error: ...``
line on stderr and exits 2 (docs/extending.md, "Errors"). Errors of user files (YAML syntax, JSON
syntax, a schema) are turned into `PipelineError`\\ s where the file is read, naming it:
`read_yaml`, `read_json` and `validation_summary` do that. This module imports nothing heavy: every
module may import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXIT_ERROR = 2
"""Exit status of a command that stopped on a `PipelineError`."""


class PipelineError(Exception):
    """A problem the user can fix (a bad file, setting, dataset, environment); the message says which and how."""


class ConfigError(PipelineError, ValueError):
    """A configuration file or value that cannot be used; the message names the field."""


class UserFileError(ConfigError):
    """A file given to a command that cannot be parsed (YAML or JSON syntax) or is not what was asked for."""


def validation_summary(error: Any) -> str:
    """A pydantic ``ValidationError`` on one line: ``dotted.key: reason`` per problem, ``; ``-separated."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in error.errors())


def _where(error: Any) -> str:
    mark = getattr(error, "problem_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def _read_text(path: Path, what: str, fix: str = "") -> str:
    """The text of a user's file; a missing or unreadable one is a `UserFileError` naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserFileError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserFileError(f"{what} {path} cannot be read ({error}){fix}") from None


def read_yaml(path: Path, what: str = "file") -> Any:
    """The parsed YAML of `path`; a missing file or a syntax error is a `UserFileError` naming the file."""
    import yaml

    path = Path(path)
    text = _read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or type(error).__name__
        raise UserFileError(f"{what} {path} is not valid YAML: {problem}{_where(error)}; fix the syntax "
                            "(indentation, a missing ':' or an unclosed quote or bracket)") from None


def read_json(path: Path, what: str = "file", fix: str = "") -> Any:
    """The parsed JSON of `path`; a missing file or a syntax error is a `UserFileError` naming the file."""
    path = Path(path)
    text = _read_text(path, what, fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserFileError(f"{what} {path} is not valid JSON ({error.msg} at line {error.lineno}, column "
                            f"{error.colno}){fix}") from None


__all__ = ["EXIT_ERROR", "ConfigError", "PipelineError", "UserFileError", "read_json", "read_yaml",
           "validation_summary"]
