"""Stage 3b: metrics JSON -> ``results/tableN.{md,csv}`` (the paper's numbers beside ours) and ``figure_<name>.png``."""
