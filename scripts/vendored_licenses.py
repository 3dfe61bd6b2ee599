"""The licences of the libraries a package vendors, read from their installed metadata.

    python scripts/vendored_licenses.py LIB_DIR INSTALLED_DIR   DEP-5 stanzas for the Debian copyright
    python scripts/vendored_licenses.py --spdx LIB_DIR          every licence term, one a line

LIB_DIR is where ``pip install --target`` put the project and its dependencies; INSTALLED_DIR is that
folder on the installed system, where the stanzas point for the full licence texts.
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path

# For distributions that declare no SPDX expression, only a licence classifier.
CLASSIFIERS = {
    "License :: OSI Approved :: MIT License": "MIT",
    "License :: OSI Approved :: Apache Software License": "Apache-2.0",
    "License :: OSI Approved :: BSD License": "BSD-3-Clause",
}
SPDX_WORD = re.compile(r"^[A-Za-z0-9.+-]+$")
LICENCE_FILE = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE|AUTHORS)", re.IGNORECASE)


@dataclass(frozen=True)
class Distribution:
    name: str
    version: str
    licence: str
    tops: list[str]  # its top-level files and folders in LIB_DIR
    texts: list[Path]  # its licence files, relative to LIB_DIR


def distributions(lib: Path) -> list[Distribution]:
    found = []
    for info in sorted(lib.glob("*.dist-info")):
        meta = HeaderParser().parsestr((info / "METADATA").read_text(encoding="utf-8"))
        with open(info / "RECORD", newline="", encoding="utf-8") as fh:
            paths = [row[0] for row in csv.reader(fh) if row]
        tops = sorted({p.split("/")[0] for p in paths if not p.startswith("..") and (lib / p).exists()})
        texts = [
            p.relative_to(lib) for p in sorted(info.rglob("*")) if p.is_file() and LICENCE_FILE.match(p.name)
        ]
        found.append(Distribution(meta["Name"], meta["Version"], licence(meta), tops, texts))
    return found


def licence(meta: Message) -> str:
    if expression := meta.get("License-Expression"):
        return str(expression)
    declared = str(meta.get("License") or "").strip()
    words = declared.replace("(", " ").replace(")", " ").split()
    if words and all(SPDX_WORD.match(w) for w in words):
        return declared
    classified = sorted({CLASSIFIERS[c] for c in meta.get_all("Classifier") or [] if c in CLASSIFIERS})
    return " AND ".join(classified) if classified else "unknown"


def terms(expression: str) -> set[str]:
    return {w for w in re.split(r"[\s()]+", expression) if w and w not in ("AND", "OR", "WITH")}


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--spdx":
        found: set[str] = set()
        for dist in distributions(Path(argv[1])):
            found |= terms(dist.licence)
        print("\n".join(sorted(found)))
        return 0
    if len(argv) != 2 or argv[0].startswith("-"):
        sys.stderr.write(__doc__ or "")
        return 64
    lib, installed = Path(argv[0]), argv[1].strip("/")
    for dist in distributions(lib):
        if dist.name == "mom-checkpoint":
            continue
        paths = " ".join(f"{installed}/{top}" + ("/*" if (lib / top).is_dir() else "") for top in dist.tops)
        texts = ", ".join(f"/{installed}/{text}" for text in dist.texts) or "none shipped"
        print(f"Files: {paths}")
        print(f"License: {dist.licence}")
        print(f"Comment: {dist.name} {dist.version}, vendored from PyPI. Licence texts: {texts}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
