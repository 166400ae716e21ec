"""Attacker input: snapshot archives reaching a container (a store the attacker can write
to, or a link swapped in transit with a matching sha256).

Each hostile zip is refused with the entry and the reason, the project directory keeps
its previous tree byte for byte, and nothing is written beside it. Covered in
tests/test_archive.py already: zip slip (shallow and deep), absolute paths, backslashes,
drive letters, symlinks, character devices, FIFOs, file/directory contradictions, a file
under a file, duplicates, too many files, too many bytes, a zip bomb by ratio, a sha256
mismatch, corrupt data; in tests/test_agent_hydrate.py: the download size bound and a
sha256 mismatch over HTTP.
"""

from __future__ import annotations

import hashlib
import io
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import httpx
import pytest

from agent.archive import ArchiveRejected, extract_snapshot
from agent.backoff import BackoffPolicy
from agent.hydrate import hydrate_project
from agent.snapshot import parse_snapshot_url

from ..test_agent_support import fragment, send_bytes, serving
from .state import tree_fingerprint

MiB = 1024 * 1024


def typed(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


def build(*members: tuple[zipfile.ZipInfo | str, bytes], compression=zipfile.ZIP_DEFLATED
          ) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
            for name, data in members:
                archive.writestr(name, data)
    return buffer.getvalue()


def lying_about_its_size(real: int, claimed: int) -> bytes:
    """One deflated entry of `real` zero bytes whose headers claim `claimed` bytes."""
    data = bytearray(build(("innocent.txt", bytes(real))))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        struct.pack_into("<I", data, at + offset, claimed)
    return bytes(data)


def with_nul_in_its_name() -> bytes:
    data = bytearray(build(("aXb.txt", b"x")))
    return bytes(data.replace(b"aXb.txt", b"a\x00b.txt"))


def encrypted() -> bytes:
    data = bytearray(build(("secret.txt", b"x")))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        flags = struct.unpack_from("<H", data, at + offset)[0]
        struct.pack_into("<H", data, at + offset, flags | 0x1)
    return bytes(data)


HOSTILE = {
    # case: (zip bytes, limits, reasons accepted)
    "block device": (build((typed("sda", stat.S_IFBLK | 0o600), b""),), {}, {"special_file"}),
    "socket": (build((typed("sock", stat.S_IFSOCK | 0o600), b""),), {}, {"special_file"}),
    "dot entry": (build(("./x", b"x"),), {}, {"invalid_path"}),
    "dot segment": (build(("a/./b", b"x"),), {}, {"invalid_path"}),
    "empty segment": (build(("a//b", b"x"),), {}, {"invalid_path"}),
    "control character": (build(("a\x1bb", b"x"),), {}, {"invalid_path"}),
    "NUL in the name": (with_nul_in_its_name(), {}, {"invalid_path"}),
    "name over 255 bytes": (build(("d/" + "n" * 256, b"x"),), {}, {"invalid_path"}),
    "a directory and a file of one name": (build(("a/", b""), ("a", b"x")), {},
                                           {"duplicate_entry", "path_conflict"}),
    "encrypted": (encrypted(), {}, {"encrypted"}),
    "bzip2": (build(("b.txt", b"x" * 100), compression=zipfile.ZIP_BZIP2), {},
              {"unsupported_compression"}),
    "sizes that lie low": (lying_about_its_size(8 * MiB, 1000), {"max_bytes": 4 * MiB},
                           {"corrupt", "too_many_bytes", "ratio_exceeded"}),
    "declared sizes over the bound": (lying_about_its_size(1000, 3 * MiB),
                                      {"max_bytes": 2 * MiB}, {"too_many_bytes"}),
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory with a previous tree that must survive every refusal."""
    target = tmp_path / "project"
    (target / "src").mkdir(parents=True)
    (target / "src" / "app.js").write_text("previous")
    (target / "index.html").write_text("<p>previous</p>")
    return target


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_archive_is_refused_and_the_tree_kept(tmp_path, project, case):
    data, limits, reasons = HOSTILE[case]
    zip_path = tmp_path / "hostile.zip"
    zip_path.write_bytes(data)
    before = tree_fingerprint(project)
    with pytest.raises(ArchiveRejected) as refused:
        extract_snapshot(zip_path, project, hashlib.sha256(data).hexdigest(), **limits)
    assert refused.value.reason in reasons, refused.value
    assert refused.value.entry and refused.value.reason in str(refused.value)
    assert tree_fingerprint(project) == before
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["hostile.zip", "project"]


def test_permission_bits_in_an_archive_are_never_applied(tmp_path, project):
    data = build((typed("setuid", stat.S_IFREG | 0o4777), b"#!/bin/sh\n"),
                 (typed("world", stat.S_IFREG | 0o666), b"w"))
    zip_path = tmp_path / "modes.zip"
    zip_path.write_bytes(data)
    extract_snapshot(zip_path, project, hashlib.sha256(data).hexdigest())
    for name in ("setuid", "world"):
        assert stat.S_IMODE((project / name).stat().st_mode) == 0o644


async def test_a_hostile_archive_served_with_its_own_sha256_is_refused_by_hydration(
        tmp_path, project):
    data = build(("ok.txt", b"fine"), ("../../escaped.txt", b"evil"))
    digest = hashlib.sha256(data).hexdigest()
    before = tree_fingerprint(project)
    with serving(lambda handler, count: send_bytes(handler, data)) as server:
        reference = parse_snapshot_url(f"{server.base}/snap.zip?expires=1&signature=s"
                                       + fragment(digest, 3))
        async with httpx.AsyncClient() as client:
            with pytest.raises(ArchiveRejected) as refused:
                await hydrate_project(client, reference, project,
                                      backoff=BackoffPolicy(initial=0.01, maximum=0.05))
    assert refused.value.reason == "parent_segment"
    assert tree_fingerprint(project) == before
    assert not list(tmp_path.rglob("escaped.txt"))
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["project"]
