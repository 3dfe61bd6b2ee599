"""The folders of one generation: its name (number and UTC time), and what is inside it.

<number>-<UTC time>/        complete once it has this name (given by a rename)
    image/                  the checkpointer's output
    manifest.json           root's record of the generation
    kept/                   copies of files the job held (root's)
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import msgspec

MANIFEST = "manifest.json"
IMAGE = "image"
KEPT = "kept"  # in a generation: copies of files the job held (root's)
GENERATION_NAME = re.compile(r"(\d{6,})-(\d{8}T\d{6}Z)")


class Generation(msgspec.Struct, frozen=True):
    path: Path
    number: int
    created: str  # UTC, e.g. 20261124T193000Z

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def image_dir(self) -> Path:
        return self.path / IMAGE


def created_epoch(created: str) -> float:
    """A generation name's UTC time (e.g. 20261124T193000Z) in seconds since the epoch; ValueError
    for a time no calendar has."""
    import calendar

    return float(calendar.timegm(time.strptime(created, "%Y%m%dT%H%M%SZ")))


def generation_name(number: int, when: float) -> str:
    return f"{number:06d}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(when))}"
