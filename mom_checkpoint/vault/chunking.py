"""Where each file of a generation is cut into the chunks the vault stores (vault/chunks.py).

A CRIU pages image (``pages-N.img``) holds the job's memory pages in the order of its pagemap
(``pagemap-*.img``: runs of virtual addresses). It is cut by those addresses: a chunk holds the pages
of one WINDOW-aligned window of the job's address space that lie together in the file. A page the
job wrote between two checkpoints changes the chunk of its window alone, and a new mapping in the
middle of the address space adds chunks of its own without moving any other chunk's boundaries (cut
at fixed offsets of the file, every chunk after it would change). Measured on the images of a C job
and a numpy job of 512 MiB here (docs/VAULT.md): a second checkpoint after 5 % of the memory was
written in eight runs stored 8.8 % of the image anew with 1 MiB windows (14 % with 4 MiB), and after
a new 16 MiB mapping in the middle, 5.1 %; fixed 1 MiB pieces stored 99.6 % after the new mapping;
content-defined chunking (FastCDC, 1 MiB) stored 9.9 % and 5.4 % and has to read every byte to find
its boundaries (1.5 GB/s), where the pagemap costs nothing. Pages written one by one at random
across the whole memory defeat every chunking alike (one changed page per chunk).

Every other file (CRIU's small files, PSNC's and BLCR's images, the kept files) is cut into FIXED
pieces; so is a pages image whose pagemap cannot be read or does not account for every byte of it.
The pagemap is the job user's file in job-user mode: it decides only where chunks are cut (each
chunk is checked against its digest, and each file against the manifest); it is read only as far as
its pages file is worth (no more entries than pages, no more pages than the file holds, a few dozen
bytes an entry), and MIN_CHUNK and MAX_CHUNK bound what any pagemap can make of a file.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence

from mom_checkpoint.image.criu_images import (
    PAGE,
    PAGEMAP_FILE,
    ImageError,
    Pagemap,
    pagemap_pages_id,
    read_pagemap,
)
from mom_checkpoint.image.hashing import ImageFile

WINDOW = 1 << 20  # the address window of one chunk of a pages image
MIN_CHUNK = 256 << 10  # a smaller piece is joined to the next (a pagemap cannot make a chunk a page)
MAX_CHUNK = 2 * WINDOW  # a larger piece is cut (a pagemap cannot make one chunk of a whole file)
FIXED = 1 << 20  # the pieces of every other file
PAGEMAP_LIMIT = 64 << 20  # a larger pagemap is not read: its pages file is cut in FIXED pieces


def plan(files: Sequence[ImageFile], read: Callable[[str], bytes]) -> dict[str, list[int]]:
    """The size of each chunk of each file, in file order, by the file's path. ``read(path)`` gives
    the content of a (small) file of the same generation: its pagemaps."""
    sizes = {f.path: f.size for f in files}
    windows: dict[str, list[int]] = {}
    for pagemap_file in files:
        name = posixpath.basename(pagemap_file.path)
        if not PAGEMAP_FILE.fullmatch(name) or pagemap_file.size > PAGEMAP_LIMIT:
            continue
        try:
            data = read(pagemap_file.path)
            pages_file = posixpath.join(
                posixpath.dirname(pagemap_file.path), f"pages-{pagemap_pages_id(data)}.img"
            )
            size = sizes.get(pages_file, -1)
            # bounded by the pages file it describes: at most one entry a page (a few dozen bytes
            # each), and exactly the pages the file holds
            if size < 0 or size % PAGE or pages_file in windows or len(data) > 64 * (size // PAGE) + 4096:
                continue
            windows[pages_file] = by_window(read_pagemap(data, size // PAGE))
        except (ImageError, OSError):
            continue
    return {f.path: _checked(windows.get(f.path), f.size) for f in files}


def by_window(pagemap: Pagemap) -> list[int]:
    """A pages image's chunk sizes: the pages of one WINDOW of addresses that follow each other in
    the file, a piece under MIN_CHUNK joined to the next, none over MAX_CHUNK."""
    sizes: list[int] = []
    current = 0
    window = -1
    for start, count in pagemap.runs:
        address, end = start, start + count * PAGE
        while address < end:
            here = address // WINDOW
            length = min(end, (here + 1) * WINDOW) - address
            if current and ((here != window and current >= MIN_CHUNK) or current + length > MAX_CHUNK):
                sizes.append(current)
                current = 0
            window = here
            current += length
            address += length
    if current:
        sizes.append(current)
    return sizes


def fixed(size: int, piece: int = FIXED) -> list[int]:
    """``size`` bytes in pieces of ``piece`` (the last one shorter); none for an empty file."""
    return [min(piece, size - offset) for offset in range(0, size, piece)]


def _checked(sizes: list[int] | None, size: int) -> list[int]:
    """The pagemap's cut when it accounts for exactly the file's bytes, else FIXED pieces."""
    if sizes is not None and sum(sizes) == size and all(0 < s <= MAX_CHUNK for s in sizes):
        return sizes
    return fixed(size)
