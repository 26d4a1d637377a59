"""``python -m stages.training.gpucheck``: see ``stages.training.gpucheck``."""

from stages.training.gpucheck.cli import main

raise SystemExit(main())
