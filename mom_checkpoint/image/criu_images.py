"""What a CRIU image says about the identity of the tasks it restores, read before CRIU reads it.

CRIU gives each restored thread the credentials recorded in its ``core-<tid>.img``: uids, gids,
groups and capability sets (images/creds.proto, within ``thread_core``). In job-user mode the job's
user wrote the image (their CRIU did) and could have written anything there. CRIU running as that
user cannot take a uid, gid or group the user does not have, but it keeps capabilities it holds
itself if the image asks for them. So root reads every core file that the restorer will read (from
copies root made and only root can change, see ``CriuBackend.stage_image``) and refuses an image
whose credentials are not exactly the owner's with no capability; the check of the restored tree
under /proc then only confirms it.

The format: a 32-bit magic or two (``IMG_COMMON_MAGIC`` then ``CORE_MAGIC``, little-endian), then
entries of a 32-bit length and a protobuf message (criu/image.c, images/core.proto,
images/creds.proto). Only the fields read here are decoded; field numbers are protobuf's stable ones.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

import msgspec

from mom_checkpoint.processes.identity import Credentials

IMG_COMMON_MAGIC = 0x54564319
CORE_MAGIC = 0x55053847
CORE_FILE = re.compile(r"core-(\d+)\.img")
OLD_CREDS_FILE = re.compile(r"creds-\d+\.img")  # CRIU's old per-task creds image: refused
TASK_STOPPED = 3  # compel's COMPEL_TASK_STOPPED, core_entry.tc.task_state

# core_entry: tc = 3, thread_core = 5; task_core_entry: task_state = 1
# thread_core_entry: creds = 10
# creds_entry: uid 1, gid 2, euid 3, egid 4, suid 5, sgid 6, fsuid 7, fsgid 8, cap_inh 9, cap_prm 10,
#              cap_eff 11, cap_bnd 12, secbits 13, groups 14, cap_amb 19
_UIDS = (1, 3, 5, 7)
_GIDS = (2, 4, 6, 8)
_CAPS = {"CapInh": 9, "CapPrm": 10, "CapEff": 11, "CapAmb": 19}
_CAP_BND = 12
_GROUPS = 14


class ImageError(ValueError):
    """A core image that cannot be read as CRIU writes them."""


class CoreCredentials(msgspec.Struct, frozen=True):
    """One thread's identity as its core image records it."""

    tid: int
    credentials: Credentials
    bounding: int  # cap_bnd
    stopped: bool  # the task was stopped when it was checkpointed


def read_core(tid: int, data: bytes) -> CoreCredentials:
    """The credentials in one ``core-<tid>.img``; ImageError when they cannot be found."""
    body = _skip_magic(data)
    entries = list(_entries(body))
    if len(entries) != 1:
        raise ImageError(f"core-{tid}.img holds {len(entries)} entries, not one")
    core = _fields(entries[0])
    thread_core = _fields(_one_message(core, 5, f"core-{tid}.img: no thread_core"))
    creds = _fields(_one_message(thread_core, 10, f"core-{tid}.img: no credentials"))
    task_state = 0
    if 3 in core:
        task = _fields(_one_message(core, 3, ""))
        task_state = _one_int(task, 1, 0)
    for number in (*_UIDS, *_GIDS):
        if number not in creds:
            raise ImageError(f"core-{tid}.img: credentials without field {number}")
    return CoreCredentials(
        tid=tid,
        credentials=Credentials(
            uids=tuple(_one_int(creds, n, 0) for n in _UIDS),
            gids=tuple(_one_int(creds, n, 0) for n in _GIDS),
            groups=frozenset(_ints(creds.get(_GROUPS, []))),
            capabilities={name: _bits(_ints(creds.get(number, []))) for name, number in _CAPS.items()},
        ),
        bounding=_bits(_ints(creds.get(_CAP_BND, []))),
        stopped=task_state == TASK_STOPPED,
    )


PAGEMAP_MAGIC = 0x56084025
PAGEMAP_FILE = re.compile(r"pagemap-[\w.-]+\.img")
PAGE = 4096
PE_PARENT, PE_PRESENT = 1 << 0, 1 << 2  # criu/include/pagemap.h


class Pagemap(msgspec.Struct, frozen=True):
    """Where a pages image's pages belong: ``pages-<pages_id>.img`` holds, in this order, the pages of
    each run of virtual addresses (start, number of pages) that is present in it."""

    pages_id: int
    runs: list[tuple[int, int]]

    @property
    def pages_file(self) -> str:
        return f"pages-{self.pages_id}.img"

    @property
    def size(self) -> int:
        """The bytes the pages file must have."""
        return sum(n for _, n in self.runs) * PAGE


def pagemap_pages_id(data: bytes) -> int:
    """Which ``pages-<id>.img`` a ``pagemap-*.img`` describes (its head, read alone)."""
    if len(data) < 8 or struct.unpack_from("<II", data) != (IMG_COMMON_MAGIC, PAGEMAP_MAGIC):
        raise ImageError("not a CRIU pagemap image")
    pages_id = _one_int(_fields(next(iter(_entries(data[8:])), b"")), 1, -1)
    if pages_id < 0:
        raise ImageError("pagemap without its head")
    return pages_id


def read_pagemap(data: bytes, pages: int) -> Pagemap:
    """A ``pagemap-*.img`` (images/pagemap.proto: a pagemap_head, then pagemap_entry each with vaddr 1,
    compat_nr_pages 2, in_parent 3, flags 4, nr_pages 5) whose pages file holds ``pages`` pages;
    ImageError when it is not one, or names more present pages, or more entries than one a page
    (the reading stops there: a pagemap costs at most the work its pages file is worth). An entry
    without flags is present, or in the parent image when in_parent says so (criu/pagemap.c)."""
    pages_id = pagemap_pages_id(data)
    entries = iter(_entries(data[8:]))
    next(entries)
    runs = []
    counted = 0
    for number, entry in enumerate(entries):
        if number > pages:
            raise ImageError("pagemap with more entries than its pages file has pages")
        fields = _fields(entry)
        flags = _one_int(fields, 4, PE_PARENT if _one_int(fields, 3, 0) else PE_PRESENT)
        if flags & PE_PRESENT:
            count = _one_int(fields, 5, _one_int(fields, 2, 0))
            counted += count
            if counted > pages:
                raise ImageError("pagemap naming more pages than its pages file holds")
            runs.append((_one_int(fields, 1, 0), count))
    if counted != pages:
        raise ImageError("pagemap naming fewer pages than its pages file holds")
    return Pagemap(pages_id, runs)


def _skip_magic(data: bytes) -> bytes:
    if len(data) < 8:
        raise ImageError("too short for a CRIU image")
    first, second = struct.unpack_from("<II", data)
    if first == IMG_COMMON_MAGIC and second == CORE_MAGIC:
        return data[8:]
    if first == CORE_MAGIC:
        return data[4:]
    raise ImageError(f"not a CRIU core image (magic {first:#x})")


def _entries(body: bytes) -> Iterator[bytes]:
    offset = 0
    while offset < len(body):
        if offset + 4 > len(body):
            raise ImageError("truncated entry size")
        (size,) = struct.unpack_from("<I", body, offset)
        offset += 4
        if offset + size > len(body):
            raise ImageError("truncated entry")
        yield body[offset : offset + size]
        offset += size


Value = int | bytes


def _fields(message: bytes) -> dict[int, list[Value]]:
    """A protobuf message as {field number: [values]}: varints as int, length-delimited as bytes."""
    fields: dict[int, list[Value]] = {}
    offset = 0
    while offset < len(message):
        key, offset = _varint(message, offset)
        number, wire = key >> 3, key & 7
        value: Value
        if wire == 0:
            value, offset = _varint(message, offset)
        elif wire == 2:
            size, offset = _varint(message, offset)
            if offset + size > len(message):
                raise ImageError("truncated field")
            value, offset = message[offset : offset + size], offset + size
        elif wire == 1:
            value, offset = int.from_bytes(message[offset : offset + 8], "little"), offset + 8
        elif wire == 5:
            value, offset = int.from_bytes(message[offset : offset + 4], "little"), offset + 4
        else:
            raise ImageError(f"unsupported protobuf wire type {wire}")
        if number == 0:
            raise ImageError("protobuf field number 0")
        fields.setdefault(number, []).append(value)
    if offset != len(message):
        raise ImageError("truncated message")
    return fields


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if offset >= len(data) or shift > 63:
            raise ImageError("bad varint")
        byte = data[offset]
        offset += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, offset
        shift += 7


def _one_message(fields: dict[int, list[Value]], number: int, missing: str) -> bytes:
    values = fields.get(number, [])
    if len(values) != 1 or not isinstance(values[0], bytes):
        raise ImageError(missing or f"field {number} is not one message")
    return values[0]


def _one_int(fields: dict[int, list[Value]], number: int, default: int) -> int:
    values = fields.get(number, [])
    if not values:
        return default
    if len(values) != 1 or not isinstance(values[0], int):
        raise ImageError(f"field {number} is not one number")
    return values[0]


def _ints(values: list[Value]) -> list[int]:
    """A repeated uint32: unpacked (one varint per value) or packed (one length-delimited run)."""
    found: list[int] = []
    for value in values:
        if isinstance(value, int):
            found.append(value)
            continue
        offset = 0
        while offset < len(value):
            number, offset = _varint(value, offset)
            found.append(number)
    return found


def _bits(words: list[int]) -> int:
    """Capability words (32 bits each, the lowest first) as one bit set."""
    return sum((word & 0xFFFFFFFF) << (32 * i) for i, word in enumerate(words))


# -- one change root makes to its own staged copy ----------------------------------------------------

PDEATH_SIG = 8  # thread_core_entry.pdeath_sig


def with_pdeath_signal(data: bytes, signo: int) -> bytes:
    """A core image whose thread gets ``signo`` when its parent ends (prctl PR_SET_PDEATHSIG, which
    CRIU restores from the image): for a restored session leader that its restart process's session
    would not take along. Every other byte of the image is kept as it was."""
    header = data[:8] if struct.unpack_from("<I", data)[0] == IMG_COMMON_MAGIC else data[:4]
    [entry] = list(_entries(data[len(header) :]))
    core = _raw_fields(entry)
    thread_core = [f for f in core if f[0] == 5]
    if len(thread_core) != 1:
        raise ImageError("no thread_core to set the parent-death signal in")
    inner = [f for f in _raw_fields(_value_bytes(thread_core[0])) if f[0] != PDEATH_SIG]
    inner.append((PDEATH_SIG, 0, _varint_bytes(signo)))
    patched = [(5, 2, _length_delimited(_encode(inner))) if f[0] == 5 else f for f in core]
    message = _encode(patched)
    return header + struct.pack("<I", len(message)) + message


RawField = tuple[int, int, bytes]  # number, wire type, the encoded value as it was


def _raw_fields(message: bytes) -> list[RawField]:
    fields: list[RawField] = []
    offset = 0
    while offset < len(message):
        key, start = _varint(message, offset)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, end = _varint(message, start)
        elif wire == 2:
            size, after = _varint(message, start)
            end = after + size
        elif wire == 1:
            end = start + 8
        elif wire == 5:
            end = start + 4
        else:
            raise ImageError(f"unsupported protobuf wire type {wire}")
        if end > len(message):
            raise ImageError("truncated field")
        fields.append((number, wire, message[start:end]))
        offset = end
    return fields


def _value_bytes(field: RawField) -> bytes:
    """The payload of a length-delimited field."""
    size, start = _varint(field[2], 0)
    return field[2][start : start + size]


def _length_delimited(payload: bytes) -> bytes:
    return _varint_bytes(len(payload)) + payload


def _encode(fields: list[RawField]) -> bytes:
    return b"".join(_varint_bytes(number << 3 | wire) + raw for number, wire, raw in fields)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
