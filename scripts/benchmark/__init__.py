"""Benchmarks: the hook against the seed's script and raw CRIU, side by side; writes docs/PERFORMANCE.md.

    .venv/bin/python scripts/benchmark                 the full run: prints the table, writes the document
    .venv/bin/python scripts/benchmark --quick         fewer repetitions and smaller jobs (development)
    .venv/bin/python scripts/benchmark --only freeze --reps 3 --output /tmp/perf.md
    .venv/bin/python -m scripts.benchmark ...          the same, from the project's folder

Rows (--only takes these names, comma-separated): overhead (1: the hook against the seed's shell script on a
stand-in chkpnt, and where its time goes), discovery (2: finding the exec PID among 200, 2,000 and 10,000
processes), freeze (3 and 4: freeze seen by the application and CRIU's "Frozen time", wall time, throughput,
post-dump work, and the hook's own peak RSS, from the same runs), hashing (4: the hook's hashing against plain
hashlib.sha256, and whether it uses every core), restore (5: mom-restart against raw criu restore), spool (6:
bytes on disk over 20 periodic checkpoints with keep=2), vault (9: the copy to the vault, a first copy),
incremental (10: the vault's chunks: the second copy of a job that rewrote 5 % of its memory against a
first copy, a restore from chunks against one from a full copy, zstd on floating-point images; set
MOM_BENCH_NUMPY_PATH to a folder holding numpy, e.g. a throwaway venv's site-packages, for its Python
job's arrays to be numpy's; needs a C compiler for its C job).

Every row runs its two contenders alternately (A B, B A, A B, ...) on the same job in one run, reports both
medians, their range (min-max) and the ratio mom-checkpoint / alternative. Needs root, CRIU >= 4 and momtest,
like `make test`. Jobs run as momtest with run_as = "job-user" (root here lacks CAP_SYS_RESOURCE); raw criu
gets exactly the hook's command line with the same setpriv prefix. Without --output, a run with --quick or
--only prints the table and leaves docs/PERFORMANCE.md alone. No assertion here is about time: a contender
that fails (wrong exit status, nothing found) stops its row with the reason. Before each dump it drops the
page cache (/proc/sys/vm/drop_caches; see Bench.fresh_page_cache): run it on a quiet machine.

The package: core.py (running things side by side and the way pbs_mom runs them, series and statistics,
rows, the bench), document.py (the machine's facts and the document), cli.py (options, the run), and a
module per family of rows: overhead.py (1, with phases.py: a hook call timed from the hook's own record of
its steps, and imports.py: where its imports' time goes), discovery.py (2), freeze.py (3, 4 and 7),
hashing.py (4), restore.py (5), spool.py (6), vault.py (9), incremental.py (10).
"""

from __future__ import annotations

import sys
from pathlib import Path

# the project's folder: mom_checkpoint and the test suite's helpers (tests.helpers), however this is run
ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
