"""Snapshot zips are deterministic, and the agent refuses every hostile archive unharmed."""

from __future__ import annotations

import hashlib
import io
import random
import stat
import tracemalloc
import uuid
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.archive import (
    ArchiveRejected,
    _swap_by_two_renames,
    extract_snapshot,
    swap_into_place,
    verify_sha256,
)
from velocity import archive
from velocity.archive import (
    ArchiveEntry,
    Manifest,
    ManifestFile,
    base_records,
    write_snapshot_zip,
)

MiB = 1024 * 1024
FILES = {
    "package.json": b'{"name": "demo"}\n',
    "src/main.ts": b"console.log('hi')\n" * 200,
    "src/components/App.vue": b"<template><div/></template>\n",
    "src/empty.txt": b"",
    "public/\u00e9t\u00e9.txt": "\u00e9t\u00e9".encode(),
    "assets/blob.bin": random.Random(3).randbytes(MiB + 11),
    "Z-upper.txt": b"sorted before lower case",
}


def entries(order: list[str]) -> list[ArchiveEntry]:
    return [ArchiveEntry.from_bytes(path, FILES[path]) for path in order]


def zip_bytes(order: list[str]) -> tuple[bytes, str, int]:
    out = io.BytesIO()
    digest = write_snapshot_zip(entries(order), out)
    return out.getvalue(), digest.sha256, digest.size


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- writing -------------------------------------------------------------------------------


def test_equal_content_gives_identical_bytes_whatever_the_order() -> None:
    forward = sorted(FILES)
    shuffled = forward[:]
    random.Random(11).shuffle(shuffled)
    results = [zip_bytes(forward), zip_bytes(list(reversed(forward))), zip_bytes(shuffled)]
    results.append(zip_bytes(forward))  # a second run
    data, digest, size = results[0]
    assert all(result == (data, digest, size) for result in results)
    assert sha256(data) == digest and len(data) == size


def test_bytes_do_not_depend_on_the_output(tmp_path: Path) -> None:
    data, digest, _ = zip_bytes(sorted(FILES))
    with open(tmp_path / "snapshot.zip", "w+b") as seekable_file:
        assert write_snapshot_zip(entries(sorted(FILES)), seekable_file).sha256 == digest
    assert (tmp_path / "snapshot.zip").read_bytes() == data


WORDS = ("const let function return import export from if else for await async class new"
         " this props state user items index value render count").split()


def source_text(seed: int, lines: int = 150) -> bytes:
    """Source-like text, the same on every machine and Python version."""
    stream = hashlib.shake_256(f"source-{seed}".encode()).digest(lines * 8)
    rows = []
    for start in range(0, len(stream), 8):
        picks = stream[start:start + 8]
        words = (WORDS[pick % len(WORDS)] for pick in picks[1:2 + picks[0] % 7])
        rows.append("  " * (picks[0] % 4) + " ".join(words) + ";")
    return "\n".join(rows).encode()


SOURCE_TREE = {f"src/module{index}.ts": source_text(index) for index in range(600)}
# The zip of SOURCE_TREE as the pinned libdeflate writes it. Another value means every
# snapshot of an unchanged project changes bytes: fine on purpose, with a new deflate version
# chosen in pyproject.toml, never by chance.
SOURCE_TREE_ZIP_SHA256 = "cddce10926841313d9c213d6a51d8b8c9bddad369901e71225e154e633b95ec2"


def source_tree_zip(threads: int, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(archive, "COMPRESS_THREADS", threads)
    listing = [ArchiveEntry.from_bytes(path, data) for path, data in SOURCE_TREE.items()]
    return write_snapshot_zip(listing, io.BytesIO()).sha256


def test_equal_content_gives_the_same_bytes_on_every_machine(monkeypatch) -> None:
    assert source_tree_zip(1, monkeypatch) == SOURCE_TREE_ZIP_SHA256


def test_compression_threads_change_no_byte(monkeypatch) -> None:
    """Compressed on four threads, three times over: a compressor that read memory or state
    it did not own would give other matches, hence other bytes, now and then."""
    assert sum(len(data) for data in SOURCE_TREE.values()) > 4 * archive.COMPRESS_BATCH_BYTES
    digests = {source_tree_zip(threads, monkeypatch) for threads in (1, 4, 4, 4)}
    assert digests == {SOURCE_TREE_ZIP_SHA256}


def test_entries_are_sorted_with_fixed_metadata() -> None:
    data, _, _ = zip_bytes(list(FILES))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert [info.filename for info in infos] == sorted(FILES)
        for info in infos:
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.external_attr >> 16 == 0o100644
            assert info.compress_type == zipfile.ZIP_DEFLATED
            assert info.extra == b""
            assert archive.read(info) == FILES[info.filename]


def test_streamed_entries_read_back(monkeypatch) -> None:
    monkeypatch.setattr(archive, "WHOLE_ENTRY_LIMIT", -1)
    data, _, _ = zip_bytes(list(FILES))
    with zipfile.ZipFile(io.BytesIO(data)) as written:
        assert written.testzip() is None
        assert {info.filename: written.read(info) for info in written.infolist()} == FILES


def test_content_is_read_lazily_and_streamed() -> None:
    opened: list[str] = []

    def chunks(path: str, size: int) -> Callable[[], Any]:
        def produce() -> Any:
            opened.append(path)
            for _ in range(size // MiB):
                yield b"\x01" * MiB

        return produce

    class Discard:
        def write(self, data: bytes) -> int:
            return len(data)

    listing = [
        ArchiveEntry(f"f{index}", 16 * MiB, chunks(f"f{index}", 16 * MiB)) for index in range(3)
    ]
    assert opened == []
    tracemalloc.start()
    try:
        digest = write_snapshot_zip(reversed(listing), Discard())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(opened) == ["f0", "f1", "f2"]  # each read once, as it was written
    assert digest.size > 0
    assert peak < 8 * MiB, f"48 MiB written with a peak of {peak} bytes"


def _zipfile_info(path: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3
    info.external_attr = 0o100644 << 16
    info.file_size = size
    return info


def _zlib_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def test_records_are_the_ones_zipfile_writes(monkeypatch) -> None:
    """Whole entries: zipfile on a seekable file rewrites each header with CRC and sizes.
    zipfile deflates with zlib; so does the writer here, to compare every byte."""
    monkeypatch.setattr(archive, "deflate_whole", _zlib_deflate)
    expected = io.BytesIO()
    with zipfile.ZipFile(expected, "w") as reference:
        for path in sorted(FILES):
            reference.writestr(_zipfile_info(path, len(FILES[path])), FILES[path],
                               compresslevel=1)
    assert zip_bytes(list(FILES))[0] == expected.getvalue()


def test_streamed_records_are_the_ones_zipfile_writes(monkeypatch) -> None:
    """Large entries stream with a data descriptor, as zipfile writes to a pipe."""
    monkeypatch.setattr(archive, "WHOLE_ENTRY_LIMIT", -1)

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:  # type: ignore[override]
            self.data += data
            return len(data)

    pipe = Pipe()
    with zipfile.ZipFile(pipe, "w", compresslevel=1) as reference:
        for path in sorted(FILES):
            info = _zipfile_info(path, len(FILES[path]))
            info._compresslevel = 1  # type: ignore[attr-defined]
            with reference.open(info, "w") as target:
                target.write(FILES[path])
    assert zip_bytes(list(FILES))[0] == bytes(pipe.data)


def test_a_zip_built_on_a_base_equals_one_built_from_scratch(tmp_path: Path) -> None:
    base_path = tmp_path / "base.zip"
    with open(base_path, "wb") as out:
        write_snapshot_zip(entries(list(FILES)), out)
    changed = {**FILES, "src/main.ts": b"edited\n", "src/new.ts": b"new\n"}
    del changed["package.json"]
    with open(base_path, "rb") as base:
        records = base_records(base)
        listing = [ArchiveEntry(path, len(data), lambda: pytest.fail("content was read"),
                                base=records[path])
                   if FILES.get(path) == data else ArchiveEntry.from_bytes(path, data)
                   for path, data in changed.items()]
        on_base = io.BytesIO()
        write_snapshot_zip(listing, on_base, base=base)
    scratch = io.BytesIO()
    write_snapshot_zip([ArchiveEntry.from_bytes(p, d) for p, d in changed.items()], scratch)
    assert on_base.getvalue() == scratch.getvalue()
    with zipfile.ZipFile(on_base) as rebuilt:
        assert {info.filename: rebuilt.read(info) for info in rebuilt.infolist()} == changed


def test_more_entries_than_a_plain_zip_holds_use_zip64_end_records(tmp_path: Path) -> None:
    listing = [ArchiveEntry.from_bytes(f"f{index:05d}", b"") for index in range(70_000)]
    out = io.BytesIO()
    write_snapshot_zip(listing, out, presorted=True)
    with zipfile.ZipFile(out) as written:
        assert len(written.infolist()) == 70_000
    out.seek(0)
    assert len(base_records(out)) == 70_000


@pytest.mark.parametrize(
    ("listing", "message"),
    [
        ([ArchiveEntry.from_bytes("a", b"1"), ArchiveEntry.from_bytes("a", b"2")], "duplicate"),
        ([ArchiveEntry("a", 5, lambda: (b"1234",))], "declared 5 bytes"),
        ([ArchiveEntry.from_bytes("../a", b"1")], "segment"),
        ([ArchiveEntry.from_bytes("/a", b"1")], "relative"),
        ([ArchiveEntry.from_bytes("a\\b", b"1")], "forward slashes"),
    ],
)
def test_writer_refuses_bad_entries(listing: list[ArchiveEntry], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_snapshot_zip(listing, io.BytesIO())


def test_manifest_round_trip() -> None:
    project, snapshot = uuid.uuid4(), uuid.uuid4()
    files = [
        ManifestFile(path=path, sha256=sha256(FILES[path]), size=len(FILES[path]), version=1)
        for path in sorted(FILES)
    ]
    _, digest, size = zip_bytes(sorted(FILES))
    manifest = Manifest(
        project_id=project,
        snapshot_id=snapshot,
        watermark=42,
        sha256=digest,
        size=size,
        files=files,
    )
    assert Manifest.load_json(manifest.dump_json()) == manifest
    assert manifest.zip_key == f"project-snapshots/{project}/{snapshot}.zip"
    assert manifest.manifest_key == f"project-snapshots/{project}/{snapshot}.json"
    with pytest.raises(ValidationError, match="sorted"):
        Manifest(**{**manifest.model_dump(), "files": list(reversed(files))})
    with pytest.raises(ValidationError):
        Manifest(**{**manifest.model_dump(), "sha256": "not-a-digest"})


# --- extracting ----------------------------------------------------------------------------


@pytest.fixture()
def target(tmp_path: Path) -> Path:
    """An existing project directory with a sentinel that a refused archive must not touch."""
    project = tmp_path / "work" / "project"
    project.mkdir(parents=True)
    (project / "SENTINEL").write_text("before")
    return project


def write_zip(path: Path, *members: tuple[zipfile.ZipInfo | str, bytes]) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names we make
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in members:
                archive.writestr(name, data)
    return sha256(path.read_bytes())


def tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def assert_untouched(target: Path) -> None:
    assert tree(target) == {"SENTINEL": b"before"}
    assert [path.name for path in target.parent.iterdir()] == ["project"], "staging left behind"


def test_round_trip_gives_an_identical_tree(tmp_path: Path, target: Path) -> None:
    (target.parent / ".project.staging-killed").mkdir()  # from a run that was killed
    (target.parent / ".project.old-killed").mkdir()
    zip_path = tmp_path / "snapshot.zip"
    with open(zip_path, "wb") as out:
        digest = write_snapshot_zip(entries(list(FILES)), out)
    result = extract_snapshot(zip_path, target, digest.sha256)
    assert tree(target) == FILES
    assert (result.files, result.bytes) == (len(FILES), sum(map(len, FILES.values())))
    assert stat.S_IMODE((target / "src" / "main.ts").stat().st_mode) & 0o777 == 0o644
    assert sorted(path.name for path in tmp_path.iterdir()) == ["snapshot.zip", "work"]
    assert [path.name for path in target.parent.iterdir()] == ["project"]


def test_extracts_into_a_missing_target_with_directory_entries(tmp_path: Path) -> None:
    zip_path = tmp_path / "tool-made.zip"
    digest = write_zip(zip_path, ("src/", b""), ("src/a.txt", b"a"), ("empty/", b""))
    target = tmp_path / "fresh" / "project"
    extract_snapshot(zip_path, target, digest)
    assert tree(target) == {"src/a.txt": b"a"}
    assert (target / "empty").is_dir()


def typed(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


def zeros(name: str, size: int) -> Callable[[zipfile.ZipFile], None]:
    def write(archive: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size = size
        with archive.open(info, "w") as out:
            for _ in range(size // MiB):
                out.write(bytes(MiB))

    return write


HOSTILE: dict[str, tuple[list[Any], dict[str, Any], str, str]] = {
    # id: (members, limits, entry named, reason)
    "zip slip": ([("ok.txt", b"1"), ("../x", b"evil")], {}, "../x", "parent_segment"),
    "deep zip slip": ([("a/b/../../../x", b"evil")], {}, "a/b/../../../x", "parent_segment"),
    "absolute path": ([("/etc/x", b"evil")], {}, "/etc/x", "absolute_path"),
    "backslash": ([("a\\..\\x", b"evil")], {}, "a\\..\\x", "backslash"),
    "drive letter": ([("C:/x", b"evil")], {}, "C:/x", "drive_letter"),
    "symlink": ([(typed("link", stat.S_IFLNK | 0o777), b"/etc/passwd")], {}, "link", "symlink"),
    "char device": ([(typed("tty", stat.S_IFCHR | 0o644), b"")], {}, "tty", "special_file"),
    "fifo": ([(typed("pipe", stat.S_IFIFO | 0o644), b"")], {}, "pipe", "special_file"),
    "file named as dir": ([(typed("d/", stat.S_IFREG | 0o644), b"")], {}, "d/", "type_mismatch"),
    "file under file": ([("a", b"1"), ("a/b", b"2")], {}, "a/b", "path_conflict"),
    "duplicate": ([("a", b"1"), ("a", b"2")], {}, "a", "duplicate_entry"),
    "too many files": (
        [(f"f{index:02}", b"x") for index in range(11)],
        {"max_files": 10},
        "f10",
        "too_many_files",
    ),
    "too many bytes": (
        [(f"f{index}", bytes(1000)) for index in range(3)],
        {"max_bytes": 2500},
        "f2",
        "too_many_bytes",
    ),
    "zip bomb": ([zeros("bomb.bin", 50 * MiB)], {"max_ratio": 100}, "bomb.bin", "ratio_exceeded"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_archives_are_refused_and_change_nothing(
    case: str, tmp_path: Path, target: Path
) -> None:
    members, limits, entry, reason = HOSTILE[case]
    zip_path = tmp_path / "hostile.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for member in members:
                if callable(member):
                    member(archive)
                else:
                    archive.writestr(*member)
    with pytest.raises(ArchiveRejected) as caught:
        extract_snapshot(zip_path, target, sha256(zip_path.read_bytes()), **limits)
    assert (caught.value.entry, caught.value.reason) == (entry, reason)
    assert repr(entry) in str(caught.value) and reason in str(caught.value)
    assert_untouched(target)


def test_sha256_mismatch_is_refused_before_reading(tmp_path: Path, target: Path) -> None:
    zip_path = tmp_path / "snapshot.zip"
    digest = write_zip(zip_path, ("a.txt", b"a"))
    with pytest.raises(ArchiveRejected) as caught:
        extract_snapshot(zip_path, target, "0" * 64)
    assert (caught.value.entry, caught.value.reason) == ("snapshot.zip", "sha256_mismatch")
    assert digest in str(caught.value)
    assert_untouched(target)
    verify_sha256(zip_path, digest.upper())


def test_corrupt_archive_is_refused(tmp_path: Path, target: Path) -> None:
    zip_path = tmp_path / "snapshot.zip"
    write_zip(zip_path, ("a.txt", random.Random(5).randbytes(4096)))
    data = bytearray(zip_path.read_bytes())
    data[100] ^= 0xFF  # inside the compressed data: the CRC no longer matches
    zip_path.write_bytes(bytes(data))
    with pytest.raises(ArchiveRejected) as caught:
        extract_snapshot(zip_path, target, sha256(bytes(data)))
    assert (caught.value.entry, caught.value.reason) == ("a.txt", "corrupt")
    assert_untouched(target)
    zip_path.write_bytes(b"not a zip at all")
    with pytest.raises(ArchiveRejected) as caught:
        extract_snapshot(zip_path, target, sha256(b"not a zip at all"))
    assert caught.value.reason == "corrupt"
    assert_untouched(target)


@pytest.mark.parametrize("swap", [swap_into_place, _swap_by_two_renames])
def test_swap_replaces_the_whole_tree(swap: Callable[[Path, Path], None], target: Path) -> None:
    """Both ways of swapping (one exchange, or the two-rename fallback) leave only the new tree."""
    staging = target.parent / ".project.staging-test"
    (staging / "src").mkdir(parents=True)
    (staging / "src" / "new.txt").write_text("after")
    swap(staging, target)
    assert tree(target) == {"src/new.txt": b"after"}
    assert [path.name for path in target.parent.iterdir()] == ["project"]
