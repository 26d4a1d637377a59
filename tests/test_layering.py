"""No arrow points up: the methods, their losses and the collectives they use never import the training stage."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BELOW_TRAINING = [*sorted((REPO / "stages" / "methods").glob("*.py")), REPO / "stages" / "losses.py",
                  REPO / "stages" / "collectives.py"]


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            modules += [(node.lineno, alias.name) for alias in node.names]
    return modules


def test_methods_losses_and_collectives_do_not_import_training() -> None:
    upward = [f"{path.relative_to(REPO)}:{line}: imports {module}" for path in BELOW_TRAINING
              for line, module in _imported_modules(path) if module.startswith("stages.training")]
    assert len(BELOW_TRAINING) > 3 and not upward, "\n".join(upward)


def test_the_stable_loss_entry_point_still_imports() -> None:
    from stages.losses import star_loss
    from stages.training.losses import star_loss as stable

    assert stable is star_loss
