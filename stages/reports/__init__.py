"""Stage 3b: metrics JSON -> ``results/tableN.{md,csv}`` in the paper's layout, the paper's numbers beside ours."""
