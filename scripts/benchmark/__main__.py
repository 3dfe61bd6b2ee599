"""`python scripts/benchmark` or `python -m scripts.benchmark`: the benchmark (the package's docstring)."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__:  # python -m scripts.benchmark
    from .cli import main
else:  # python scripts/benchmark: this folder is run; from its parent it is the package `benchmark`
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from benchmark.cli import main

sys.exit(main())
