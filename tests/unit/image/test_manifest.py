"""manifest: each file's digest names its algorithm; older manifests upgrade, unknown digests are refused."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from mom_checkpoint.image.hashing import ImageFile
from mom_checkpoint.image.manifest import SCHEMA, parse
from mom_checkpoint.platform import cpu
from mom_checkpoint.platform.errors import VerificationFailed
from tests.torque import manifest


def current() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(manifest("42.head", 1, "000001-20261130T000000Z", 4711, 1.0).to_json())
    data["files"] = [{"path": "image/pages-1.img", "size": 4096, "digest": "blake3:" + "0" * 64}]
    return data


def test_schema_4_records_each_digest_with_its_algorithm() -> None:
    written = msgspec.structs.replace(
        manifest("42.head", 1, "000001-20261130T000000Z", 4711, 1.0),
        files=[ImageFile("image/pages-1.img", 4096, "blake3:" + "0" * 64)],
    )
    data = json.loads(written.to_json())
    assert data["schema"] == SCHEMA == 5
    assert data["files"] == [{"path": "image/pages-1.img", "size": 4096, "digest": "blake3:" + "0" * 64}]
    assert parse(data, "m") == written


def test_a_schema_3_manifest_reads_its_sha256_as_a_named_digest() -> None:
    data = current()
    old = {
        **data,
        "schema": 3,
        "files": [{"path": f["path"], "size": f["size"], "sha256": "ab" * 32} for f in data["files"]],
        "kept": [
            {"path": "/x", "copy": "kept/held-0", "role": "held", "pos": 0, "size": 1, "sha256": "cd" * 32}
        ],
    }
    read = parse(old, "m")
    assert [f.digest for f in read.files] == ["sha256:" + "ab" * 32] * len(data["files"])
    assert [k.digest for k in read.kept] == ["sha256:" + "cd" * 32]


@pytest.mark.parametrize(
    "digest",
    [
        "md5:" + "0" * 32,  # an algorithm this version does not check
        "blake3:" + "0" * 63,  # too short
        "blake3:" + "0" * 64 + "\n",
        "BLAKE3:" + "0" * 64,
        "0" * 64,  # no algorithm
        "sha256:" + "G" * 64,
    ],
)
def test_a_digest_that_cannot_be_checked_is_refused(digest: str) -> None:
    data = current()
    data["files"][0]["digest"] = digest
    with pytest.raises(VerificationFailed, match="digest this mom-checkpoint cannot check"):
        parse(data, "m")
    kept = {"path": "/x", "copy": "kept/held-0", "role": "held", "pos": 0, "size": 1, "digest": digest}
    with pytest.raises(VerificationFailed, match="digest this mom-checkpoint cannot check"):
        parse({**current(), "kept": [kept]}, "m")


def test_a_schema_3_file_without_its_sha256_is_refused_with_the_field_named() -> None:
    data = current()
    old = {**data, "schema": 3, "files": [{"path": "image/pages-1.img", "size": 1}]}
    with pytest.raises(VerificationFailed, match="digest"):
        parse(old, "m")


def test_a_schema_4_manifest_reads_with_its_cpu_unknown() -> None:
    data = current()
    old = {**data, "schema": 4, "host": {"name": "node01", "kernel": "6.1.0"}}
    assert parse(old, "m").host.cpu is None
    recorded = {"machine": "x86_64", "model": "Xeon", "flags": ["avx2", "sse2"]}
    assert parse({**data, "host": {**data["host"], "cpu": recorded}}, "m").host.cpu == cpu.CpuInfo(
        "x86_64", "Xeon", ["avx2", "sse2"]
    )
