"""``python -m stages.training.bench``: see ``stages.training.bench.cli``."""

import sys

from stages.training.bench.cli import main

sys.exit(main())
