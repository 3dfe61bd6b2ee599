"""Where the hook's imports spend their time (row 1): whole interpreters that only import, and
`-X importtime` of a real call, attributed to the library that asked."""

from __future__ import annotations

import importlib.util
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from tests.helpers import MOM_ENV, Job, Site

from .core import HOOK_IMPORTS, MAKE_LOGGER, PACKAGED_PREFIX, Series, alternate, packaged

IMPORT_CASES = {
    "pass": "pass",
    "hook": HOOK_IMPORTS + MAKE_LOGGER,
    "no structlog": HOOK_IMPORTS,
    "no structlog, no filelock": "import sys, types; sys.modules['filelock'] = types.ModuleType('filelock'); "
    + HOOK_IMPORTS,
    # only the three libraries of the design card (issue 16), structlog imported as the hook imports it
    "libraries": "import psutil, filelock, mom_checkpoint.platform.log" + MAKE_LOGGER,
}


RECORD_COSTS = """
import dataclasses, importlib, sys, time
import msgspec
from mom_checkpoint.commands.checkpoint.meanwhile import AFTER_THE_DUMP
for name in AFTER_THE_DUMP:
    importlib.import_module(name)
records = [
    value
    for module in list(sys.modules.values())
    if module is not None and module.__name__.startswith("mom_checkpoint")
    for value in vars(module).values()
    if isinstance(value, type) and issubclass(value, msgspec.Struct) and value.__module__ == module.__name__
]
def made(make):
    started = time.perf_counter()
    for i, cls in enumerate(records):
        make(f"R{i}", cls.__struct_fields__, cls.__struct_config__.frozen)
    return time.perf_counter() - started
as_structs = made(lambda name, fields, frozen: msgspec.defstruct(name, fields, frozen=frozen))
as_dataclasses = made(lambda name, fields, frozen: dataclasses.make_dataclass(name, fields, frozen=frozen))
print(len(records), as_structs, as_dataclasses)
"""


def hook_records(python: str) -> tuple[int, float, float]:
    """How many record classes (msgspec Structs) a hook call makes (its imports, the post-dump ones too),
    and the seconds the same classes take to make as Structs and as dataclasses, side by side."""
    proc = subprocess.run(
        [python, "-I", "-S", "-c", PACKAGED_PREFIX + HOOK_IMPORTS + "\n" + RECORD_COSTS],
        env=MOM_ENV,
        cwd="/",
        check=True,
        capture_output=True,
        text=True,
    )
    count, structs, dataclasses = proc.stdout.split()
    return int(count), float(structs), float(dataclasses)


def import_costs(python: str, n: int) -> dict[str, Series]:
    """Wall time of interpreters that only import what the hook imports, with and without its libraries."""
    result = {key: Series() for key in IMPORT_CASES}

    def case(key: str) -> Callable[[], None]:
        def run() -> None:
            started = time.perf_counter()
            subprocess.run(
                [python, "-I", "-S", "-c", PACKAGED_PREFIX + IMPORT_CASES[key]],
                env=MOM_ENV,
                cwd="/",
                check=True,
            )
            result[key].add(time.perf_counter() - started)

        return run

    for _ in alternate(n, *[case(key) for key in IMPORT_CASES]):
        pass
    return result


def import_groups(site: Site, job: Job, python: str, n: int) -> list[tuple[str, float]]:
    """-X importtime of the real call: microseconds of import work by the library that caused it."""
    totals: dict[str, list[float]] = {}
    for _ in range(n):
        env = {**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(site.config)}
        argv = [python, "-I", "-S", "-X", "importtime", str(packaged("mom-checkpoint"))]
        argv += [str(a) for a in site.torque_args(job)]
        proc = subprocess.run(
            argv, check=False, env=env, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"mom-checkpoint under -X importtime failed: {proc.stderr[-300:]}")
        run: dict[str, float] = {}
        for name, micros in attribute_imports(proc.stderr):
            run[name] = run.get(name, 0.0) + micros
        for name, micros in run.items():
            totals.setdefault(name, []).append(micros)
    result = [
        (name, statistics.median(values + [0.0] * (n - len(values)))) for name, values in totals.items()
    ]
    return sorted(result, key=lambda kv: -kv[1])


def attribute_imports(stderr: str) -> Iterator[tuple[str, float]]:
    """(group, self microseconds) for each import line of -X importtime output.

    A module is printed after the modules it imported, one indentation level deeper than them. The group
    is the outermost third-party library on its import chain (structlog for rich, filelock for asyncio if
    filelock came first), else mom_checkpoint's own modules or the standard library; everything imported
    before `site` finished is interpreter start-up (the editable install's finder apart).
    """
    entries: list[tuple[int, str, float]] = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|( *)(\S+)", line)
        if match:
            entries.append((len(match.group(2)) // 2, match.group(3), float(match.group(1))))
    # parents: walk backwards; a line's children are the lines before it one level deeper, until a line at
    # its own level or shallower
    parent: list[int | None] = [None] * len(entries)
    stack: list[int] = []  # indexes of lines whose children are still being collected, deepest last
    for i in range(len(entries) - 1, -1, -1):
        depth = entries[i][0]
        while stack and entries[stack[-1]][0] >= depth:
            stack.pop()
        parent[i] = stack[-1] if stack else None
        stack.append(i)
    site_done = next((i for i, e in enumerate(entries) if e[0] == 0 and e[1] == "site"), -1)
    stdlib = sys.stdlib_module_names
    for i, (_depth, name, micros) in enumerate(entries):
        chain = []
        j: int | None = i
        while j is not None:
            chain.append(entries[j][1])
            j = parent[j]
        top = chain[-1]
        if any(n.startswith("__editable__") for n in chain):
            yield "the editable install's finder (.pth; dev checkouts only)", micros
        elif i <= site_done or top in {"encodings", "site", "codecs", "io", "abc"}:
            yield "interpreter start-up (encodings, site)", micros
        else:
            third = [n.split(".")[0] for n in chain if third_party(n.split(".")[0], stdlib)]
            if third:
                yield third[-1], micros
            elif name.startswith("mom_checkpoint"):
                yield "mom_checkpoint's own modules", micros
            else:
                yield "standard library (for mom_checkpoint)", micros


def third_party(top: str, stdlib: frozenset[str]) -> bool:
    """A library installed beside mom_checkpoint (not the standard library, not a failed probe like
    platform's `import org`)."""
    if top in stdlib or top == "mom_checkpoint":
        return False
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    return spec is not None and "-packages" in str(spec.origin or spec.submodule_search_locations or "")
