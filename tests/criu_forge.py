"""Forge CRIU images, as a job's user could in their own image (job-user mode): the credentials of a
core image, the CPU of cpuinfo.img, a pagemap.

Test code only, independent of the product's reader: a minimal protobuf decoder and re-encoder
(images/core.proto, images/creds.proto, images/cpuinfo.proto, images/pagemap.proto of CRIU).
"""

from __future__ import annotations

import struct
from pathlib import Path

Field = tuple[int, int, int | bytes]  # (number, wire type, value)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, offset
        shift += 7


def decode(message: bytes) -> list[Field]:
    fields: list[Field] = []
    offset = 0
    while offset < len(message):
        key, offset = _read_varint(message, offset)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, offset = _read_varint(message, offset)
            fields.append((number, wire, value))
        elif wire == 2:
            size, offset = _read_varint(message, offset)
            fields.append((number, wire, message[offset : offset + size]))
            offset += size
        elif wire == 1:
            fields.append((number, wire, message[offset : offset + 8]))
            offset += 8
        elif wire == 5:
            fields.append((number, wire, message[offset : offset + 4]))
            offset += 4
        else:
            raise ValueError(f"wire type {wire}")
    return fields


def encode(fields: list[Field]) -> bytes:
    out = bytearray()
    for number, wire, value in fields:
        out += _varint(number << 3 | wire)
        if wire == 0:
            assert isinstance(value, int)
            out += _varint(value)
        elif wire == 2:
            assert isinstance(value, bytes)
            out += _varint(len(value)) + value
        else:
            assert isinstance(value, bytes)
            out += value
    return bytes(out)


def _replace(fields: list[Field], number: int, values: list[int]) -> list[Field]:
    """Every occurrence of a uint32 field (repeated or not) replaced by ``values``, unpacked."""
    kept = [f for f in fields if f[0] != number]
    return kept + [(number, 0, v) for v in values]


def forge(core_path: Path, **changes: list[int]) -> None:
    """Rewrite creds fields by name (uid, gid, euid, egid, suid, sgid, fsuid, fsgid, cap_inh, cap_prm,
    cap_eff, cap_bnd, groups, cap_amb) in a core-<tid>.img file, in place."""
    numbers = {
        "uid": 1, "gid": 2, "euid": 3, "egid": 4, "suid": 5, "sgid": 6, "fsuid": 7, "fsgid": 8,
        "cap_inh": 9, "cap_prm": 10, "cap_eff": 11, "cap_bnd": 12, "groups": 14, "cap_amb": 19,
    }  # fmt: skip
    data = core_path.read_bytes()
    header, body = data[:8], data[8:]
    (size,) = struct.unpack_from("<I", body)
    core = decode(body[4 : 4 + size])
    [thread_core] = [f for f in core if f[0] == 5]
    thread_fields = decode(thread_core[2])  # type: ignore[arg-type]
    [creds] = [f for f in thread_fields if f[0] == 10]
    creds_fields = decode(creds[2])  # type: ignore[arg-type]
    for name, values in changes.items():
        creds_fields = _replace(creds_fields, numbers[name], values)
    thread_fields = [f if f[0] != 10 else (10, 2, encode(creds_fields)) for f in thread_fields]
    core = [f if f[0] != 5 else (5, 2, encode(thread_fields)) for f in core]
    message = encode(core)
    core_path.write_bytes(header + struct.pack("<I", len(message)) + message)


IMG_COMMON_MAGIC = 0x54564319  # criu/include/magic.h
PAGEMAP_MAGIC = 0x56084025
PE_PRESENT = 1 << 2  # criu/include/pagemap.h


def pagemap_image(pages_id: int, entries: list[list[tuple[int, int]]]) -> bytes:
    """A pagemap-N.img as CRIU writes it: two magics, then each entry's size and protobuf (its head
    naming pages-<pages_id>.img, then each entry's fields as (number, varint value))."""
    records = [encode([(1, 0, pages_id)]), *(encode([(n, 0, v) for n, v in e]) for e in entries)]
    body = b"".join(struct.pack("<I", len(r)) + r for r in records)
    return struct.pack("<II", IMG_COMMON_MAGIC, PAGEMAP_MAGIC) + body
