"""``python -m stages.training.bench``: see ``stages.training.bench.cli``."""

from stages.training.bench.cli import main

main()
