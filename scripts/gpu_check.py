#!/usr/bin/env python3
"""The GPU readiness check (docs/bench.md): ``scripts/gpu_check.py [--smoke] [options]``, from any directory.

A thin entry to ``python -m stages.training.gpucheck`` that puts this checkout first on the path and
works offline; run it with the project's Python (``.venv/bin/python scripts/gpu_check.py``) or any
python3 that has torch, open_clip, pydantic and yaml.
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
sys.path.insert(0, str(REPO))
os.chdir(REPO)  # results/bench/ and the relative bank paths are the checkout's

try:
    from stages.training.gpucheck import main
except ImportError as error:
    sys.exit(f"gpu_check: cannot import the package ({error}); run 'make venv' and use .venv/bin/python")

sys.exit(main())
