"""Run every fault and abuse scenario many times, fuzz the input readers, write docs/RELIABILITY.md.

    make reliability                       (needs root and CRIU >= 4, like make test)
    python scripts/reliability.py [--only SUBSTRING] [--scale F] [--seed N] [--output PATH]

The scenarios are the test suite's own (tests/reliability/faults.py and abuse.py): each run gets a
fresh node set-up and its own seed, so a failure can be replayed with ``--only NAME --seed N``. The
fuzzing is tests/unit/test_fuzz.py under the ``reliability`` hypothesis profile. Exit status 1 when
anything failed; the report says what.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import random
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import (  # noqa: E402
    TEST_USER,
    Site,
    User,
    criu_problem,
    make_base,
    remove_base,
)
from tests.reliability.abuse import ABUSE  # noqa: E402
from tests.reliability.faults import FAULTS, Scenario  # noqa: E402
from tests.reliability.security import SECURITY  # noqa: E402

FUZZ_PROFILE = "reliability"


@dataclass
class Tally:
    name: str
    runs: int = 0
    passed: int = 0
    seconds: float = 0.0
    checks: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)


def run_scenario(name: str, scenario: Scenario, runs: int, seed: int, user: User) -> Tally:
    tally = Tally(name)
    for i in range(runs):
        run_seed = seed + i
        base = make_base()
        site = Site(base, user)
        started = time.monotonic()
        outcome = "ok"
        try:
            checks = scenario(site, random.Random(run_seed))
        except Exception as exc:
            outcome = "FAILED"
            where = traceback.extract_tb(exc.__traceback__)[-1]
            tally.failures.append(
                f"seed {run_seed}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                f"({Path(where.filename).name}:{where.lineno})"
            )
        else:
            tally.passed += 1
            tally.checks.update(list(dict.fromkeys(checks)))  # a check repeated in one run counts once
        finally:
            tally.runs += 1
            tally.seconds += time.monotonic() - started
            site.stop_jobs()
            remove_base(base)
        print(f"  run {i + 1}/{runs} (seed {run_seed}): {outcome}", flush=True)
    return tally


def run_fuzz() -> tuple[bool, list[tuple[str, str]], str]:
    """tests/unit/test_fuzz.py with many examples: (all passed, [(test, outcome)], summary line)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "tests/unit/test_fuzz.py"],
        cwd=ROOT,
        env={**os.environ, "HYPOTHESIS_PROFILE": FUZZ_PROFILE},
        capture_output=True,
        text=True,
    )
    outcomes = re.findall(r"^(PASSED|FAILED|ERROR) tests/unit/test_fuzz\.py::(\S+)", proc.stdout, re.M)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-200:]
    return proc.returncode == 0, [(test, outcome) for outcome, test in outcomes], summary


def fuzz_examples() -> int:
    from hypothesis import settings

    import tests.conftest  # noqa: F401  (registers the profiles)

    return int(settings.get_profile(FUZZ_PROFILE).max_examples)


def describe(tally: Tally) -> str:
    """The checks that every passing run made, then those only some runs made (random branches)."""
    always = [c for c, n in tally.checks.items() if n == tally.passed]
    sometimes = [f"{c} ({n} of {tally.passed} runs)" for c, n in tally.checks.items() if n != tally.passed]
    return "; ".join(always + sometimes).replace("|", "\\|") or "-"


def table(tallies: list[Tally]) -> list[str]:
    lines = [
        "| scenario | runs | passed | seconds per run | what each run checked |",
        "|---|---|---|---|---|",
    ]
    for t in tallies:
        per_run = t.seconds / t.runs if t.runs else 0.0
        lines.append(f"| {t.name} | {t.runs} | {t.passed} | {per_run:.1f} | {describe(t)} |")
    return lines


def criu_version() -> str:
    for binary in ("/usr/local/sbin/criu", "/usr/sbin/criu"):
        if os.access(binary, os.X_OK):
            out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
            match = re.search(r"Version:\s*(\S+)", out)
            return match.group(1) if match else "unknown"
    return "none"


def commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True
    )
    return (proc.stdout.strip() or "unknown") + (" with uncommitted changes" if dirty.stdout.strip() else "")


def report(
    faults: list[Tally],
    abuse: list[Tally],
    security: list[Tally],
    fuzz: tuple[bool, list[tuple[str, str]], str],
    seed: int,
) -> str:
    ok, outcomes, summary = fuzz
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Reliability and security: the figures",
        "",
        f"Generated by `make reliability` (scripts/reliability.py) on {now}: commit {commit()}, kernel "
        f"{platform.release()}, CRIU {criu_version()}, Python {platform.python_version()}, base seed {seed}. "
        "Not edited by hand: run the command again to refresh it.",
        "",
        "Every scenario runs on a fresh node set-up (spool, TORQUE checkpoint root, config, log) with jobs "
        f"started the way pbs_mom starts them, as the user `{TEST_USER}`, and the programs called the way "
        "pbs_mom calls them. A run passes when every check listed for it held; after each fault the "
        "newest complete generation verifies against its manifest and no incoming folder is taken for a "
        "complete one. The same scenarios run once each in `make test` (tests/reliability/).",
        "",
        "## Faults",
        "",
        *table(faults),
        "",
        "## Abuse: each refused with one clear stderr line, nothing on disk changed",
        "",
        *table(abuse),
        "",
        "## Security: attacks by an ordinary user of the node (docs/SECURITY.md)",
        "",
        *table(security),
        "",
        "## Fuzzing (hypothesis, tests/unit/test_fuzz.py)",
        "",
        f"Up to {fuzz_examples()} generated examples per property: no input crashes a reader (every "
        "failure is the program's own error, one line and an exit code) or leads outside the spool.",
        "",
        "| property | result |",
        "|---|---|",
        *[f"| {test} | {outcome.lower()} |" for test, outcome in outcomes],
        "",
        f"pytest: {summary}{'' if ok else ' (FAILED)'}",
        "",
    ]
    failed = [(t.name, f) for t in (*faults, *abuse, *security) for f in t.failures]
    lines += ["## Failures", ""]
    if failed:
        lines += [f"- {name}: {failure}" for name, failure in failed]
        lines += ["", "Replay one with `python scripts/reliability.py --only 'NAME' --seed N --scale 0`."]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help="run only the scenarios whose name contains this")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every run count (0: once each)")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000, help="base seed")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "RELIABILITY.md")
    parser.add_argument("--no-fuzz", action="store_true", help="skip the fuzzing")
    options = parser.parse_args()
    problem = criu_problem()
    if problem is not None:
        print(f"reliability: cannot run: {problem}", file=sys.stderr)
        return 69
    user = User.named(TEST_USER)

    def runs_of(table_: dict[str, tuple[Scenario, int]]) -> list[Tally]:
        tallies = []
        for name, (scenario, runs) in table_.items():
            if options.only and options.only not in name:
                continue
            count = max(1, round(runs * options.scale))
            print(f"{name}: {count} runs", flush=True)
            tallies.append(run_scenario(name, scenario, count, options.seed, user))
        return tallies

    faults, abuse, security = runs_of(FAULTS), runs_of(ABUSE), runs_of(SECURITY)
    fuzz = (True, [], "skipped (--no-fuzz)") if options.no_fuzz else run_fuzz()
    options.output.write_text(report(faults, abuse, security, fuzz, options.seed))
    failed = sum(len(t.failures) for t in (*faults, *abuse, *security))
    fuzzing = "passed" if fuzz[0] else "FAILED"
    print(f"reliability: {failed} failed runs; fuzzing {fuzzing}; wrote {options.output}")
    return 0 if failed == 0 and fuzz[0] else 1


if __name__ == "__main__":
    sys.exit(main())
