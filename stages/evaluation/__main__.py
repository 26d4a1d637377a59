"""``python -m stages.evaluation``: see ``stages.evaluation.run``."""

from stages.evaluation.run import main

raise SystemExit(main())
