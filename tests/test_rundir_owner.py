"""One owner of a run directory's layout: only stages/rundir.py and its request type name a run's files.

Every other module and rule reaches a run's files through ``RunDir`` (``.best``, ``.last``,
``.record_path``, ``.eval_index``, ``.metrics(request)``, ...) and ``EvalRequest`` (``B@alphaA``).
This test reads the code (string literals; comments and docstrings aside) of stages/, workflow/
and the Snakefile, and names each file and line that spells a run's file or folder itself.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

from stages.rundir import EvalRequest, RunDir

REPO = Path(__file__).resolve().parents[1]
OWNERS = {"stages/rundir.py", "stages/evalrequest.py"}
LITERALS = re.compile(r"\bbest\.pt\b|\blast\.pt\b|\bprev\.pt\b|best_val\.pt|\bckpt\b|(^|[/\"'])eval/|\bindex\.json\b"
                      r"|@alpha|\brun\.json\b|train_log\.jsonl|\btrain\.yaml\b|wandb_id\.txt|\.items\.npz")
FOLDERS = {"eval", "ckpt", "heads", "tb", "runs"}
"""Folder names of a run that are flagged as a whole literal beside a ``/`` (``run_dir / "eval"``)."""


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal of `path` that is not a docstring."""
    tokens = [token for token in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
              if token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING)]
    found, line_start, previous_line_head = [], True, None
    for index, token in enumerate(tokens):
        if token.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            line_start = True
            continue
        if line_start:
            head, line_start = token, False
            statement_head, previous_line_head = previous_line_head, head
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            docstring = (token.type == tokenize.STRING and following is not None and following.type == tokenize.NEWLINE
                         and (statement_head is None or statement_head.string in ("def", "class", "async")))
            if docstring:
                continue
        if token.type != tokenize.STRING or _documents_a_setting(tokens, index):
            continue
        body = re.sub(r"^[a-zA-Z]*('''|\"\"\"|'|\")|('''|\"\"\"|'|\")$", "", token.string)
        beside_slash = any(0 <= i < len(tokens) and tokens[i].string == "/" for i in (index - 1, index + 1))
        if LITERALS.search(token.string) or (body in FOLDERS and beside_slash):
            found.append((token.start[0], token.string))
    return found


DOC_KEYWORDS = {"description", "help"}
"""Keyword arguments whose strings document a setting to its user (pydantic fields, argparse options), as docstrings do."""


def _documents_a_setting(tokens: list[tokenize.TokenInfo], index: int) -> bool:
    """Whether the string at `index` (or the implicit concatenation it belongs to) is a ``description=``/``help=``."""
    while index > 0 and tokens[index - 1].type == tokenize.STRING:
        index -= 1
    return index >= 2 and tokens[index - 1].string == "=" and tokens[index - 2].string in DOC_KEYWORDS


def _sources() -> list[Path]:
    paths = [*sorted((REPO / "stages").rglob("*.py")), *sorted((REPO / "workflow").rglob("*.smk")), REPO / "Snakefile"]
    return [path for path in paths if path.relative_to(REPO).as_posix() not in OWNERS]


def test_only_rundir_names_a_runs_files() -> None:
    offenders = [f"{path.relative_to(REPO)}:{line}: {text}" for path in _sources() for line, text in _code_strings(path)]
    assert not offenders, ("a run's file or folder spelled outside stages/rundir.py and stages/evalrequest.py; use "
                           "RunDir's paths and EvalRequest instead:\n" + "\n".join(offenders))


def test_the_check_sees_code_not_docstrings(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""Reads best.pt."""\n\n\ndef f(run):\n    """The run\'s eval/index.json."""\n'
                      '    # ckpt/last.pt\n    return run / "eval" / f"{run}@alpha0.5.json", "best.pt"\n')
    assert [line for line, _ in _code_strings(sample)] == [7, 7, 7]


@pytest.mark.parametrize(("text", "benchmark", "alpha"), [("imagenet", "imagenet", None),
                                                           ("imagenet@alpha0.5", "imagenet", 0.5),
                                                           ("waterbirds@alpha1", "waterbirds", 1.0)])
def test_eval_request_round_trips_and_knows_its_file(tmp_path: Path, text: str, benchmark: str,
                                                     alpha: float | None) -> None:
    request = EvalRequest.parse(text)
    assert (request.benchmark, request.alpha) == (benchmark, alpha) and str(request) == text
    run = RunDir(tmp_path)
    assert run.metrics(request) == run.metrics(text) == tmp_path / "eval" / f"{text}.json"
    assert EvalRequest.of_file(run.metrics(request)) == request and EvalRequest.of_file(run.eval_index) is None
    assert run.items(request) == run.items(text) == tmp_path / "eval" / f"{text}.items.npz"
    assert EvalRequest.of_file(run.items(request)) is None  # not a metrics file: the plan and reports skip it


@pytest.mark.parametrize("text", ["imagenet@alpha", "imagenet@beta0.5", "imagenet@alphax", "@alpha0.5"])
def test_a_bad_request_is_one_config_error(text: str) -> None:
    from stages.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(repr(text))):
        EvalRequest.parse(text, known={"imagenet"})
