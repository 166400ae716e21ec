"""The byte layout of zip records, exactly as Python's zipfile writes them for our entries.

Snapshot zips are written record by record here rather than through zipfile, so that an
unchanged entry's local record can be copied verbatim from the previous snapshot: a local
record (header, name, data, descriptor) never contains its own offset, so it is the same
bytes wherever it sits. tests/test_archive.py checks these records against zipfile's own.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, NamedTuple

ZIP64_LIMIT = (1 << 31) - 1  # zipfile's threshold, not the format's: the same bytes as zipfile
FILE_COUNT_LIMIT = 0xFFFF
DEFLATED = 8
VERSION = 20
ZIP64_VERSION = 45
UTF8_NAME = 0x800
DATA_DESCRIPTOR = 0x08

_LOCAL = struct.Struct("<4s2B4HL2L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_END64 = struct.Struct("<4sQ2H2L4Q")
_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_SIZES = struct.Struct("<HHQQ")
_DESCRIPTOR = struct.Struct("<4sLLL")
_DESCRIPTOR64 = struct.Struct("<4sLQQ")


class CorruptZip(ValueError):
    """A zip this module cannot read back as one of ours; the message says where."""


class ZipRecord(NamedTuple):
    """One entry's facts, enough to write its central directory entry anywhere; `offset`
    is where it lies in the zip it was read from."""

    name: bytes
    flags: int
    crc: int
    compressed_size: int
    size: int
    offset: int = 0


def encode_name(path: str) -> tuple[bytes, int]:
    """The name's bytes and the flag bits zipfile gives it (ASCII, else UTF-8 flagged)."""
    try:
        return path.encode("ascii"), 0
    except UnicodeEncodeError:
        return path.encode("utf-8"), UTF8_NAME


def dos_date_time(date_time: tuple[int, int, int, int, int, int]) -> tuple[int, int]:
    year, month, day, hour, minute, second = date_time
    return (year - 1980) << 9 | month << 5 | day, hour << 11 | minute << 5 | second // 2


def local_header(record: ZipRecord, date: int, time: int, *, zip64: bool = False) -> bytes:
    """The local file header. With the data-descriptor flag, CRC and sizes are written as
    zero and follow the data; `zip64` adds the sizes extra field (zipfile's rule)."""
    crc, compressed, size = record.crc, record.compressed_size, record.size
    if record.flags & DATA_DESCRIPTOR:
        crc = compressed = size = 0
    extra = _ZIP64_SIZES.pack(1, 16, size, compressed) if zip64 else b""
    version = VERSION
    if size > ZIP64_LIMIT or compressed > ZIP64_LIMIT:
        size = compressed = 0xFFFFFFFF
        version = ZIP64_VERSION
    return _LOCAL.pack(b"PK\x03\x04", version, 0, record.flags, DEFLATED, time, date, crc,
                       compressed, size, len(record.name), len(extra)) + record.name + extra


def data_descriptor(record: ZipRecord, *, zip64: bool) -> bytes:
    if zip64:
        return _DESCRIPTOR64.pack(b"PK\x07\x08", record.crc, record.compressed_size,
                                  record.size)
    return _DESCRIPTOR.pack(b"PK\x07\x08", record.crc, record.compressed_size, record.size)


def central_entry(record: ZipRecord, offset: int, date: int, time: int, system: int,
                  external_attr: int) -> bytes:
    """The central directory entry of `record` written at `offset`, with the zip64 extra
    field where a value overflows."""
    extra_values: list[int] = []
    size, compressed = record.size, record.compressed_size
    if size > ZIP64_LIMIT or compressed > ZIP64_LIMIT:
        extra_values += [size, compressed]
        size = compressed = 0xFFFFFFFF
    if offset > ZIP64_LIMIT:
        extra_values.append(offset)
        offset = 0xFFFFFFFF
    extra = b""
    version = VERSION
    if extra_values:
        extra = struct.pack(f"<HH{len(extra_values)}Q", 1, 8 * len(extra_values), *extra_values)
        version = ZIP64_VERSION
    return _CENTRAL.pack(b"PK\x01\x02", version, system, version, 0, record.flags, DEFLATED,
                         time, date, record.crc, compressed, size, len(record.name), len(extra),
                         0, 0, 0, external_attr, offset) + record.name + extra


def end_records(count: int, directory_offset: int, directory_size: int) -> bytes:
    """The end of central directory record, preceded by the zip64 ones when needed."""
    records = b""
    if (count > FILE_COUNT_LIMIT or directory_offset > ZIP64_LIMIT
            or directory_size > ZIP64_LIMIT):
        end64_offset = directory_offset + directory_size
        records = _END64.pack(b"PK\x06\x06", 44, ZIP64_VERSION, ZIP64_VERSION, 0, 0, count,
                              count, directory_size, directory_offset)
        records += _LOCATOR.pack(b"PK\x06\x07", 0, end64_offset, 1)
        count = min(count, FILE_COUNT_LIMIT)
        directory_size = min(directory_size, 0xFFFFFFFF)
        directory_offset = min(directory_offset, 0xFFFFFFFF)
    return records + _END.pack(b"PK\x05\x06", 0, 0, count, count, directory_size,
                               directory_offset, 0)


def read_records(zip_file: BinaryIO) -> tuple[list[ZipRecord], int]:
    """Every entry of a zip written by this module, in order, and where its central
    directory starts (the end of the last local record)."""
    zip_file.seek(0, 2)
    length = zip_file.tell()
    if length < _END.size:
        raise CorruptZip("shorter than an end-of-directory record")
    zip_file.seek(length - _END.size)
    end = _END.unpack(zip_file.read(_END.size))
    if end[0] != b"PK\x05\x06":
        raise CorruptZip("no end-of-directory record at the end (a comment is not ours)")
    count, directory_size, directory_offset = end[4], end[5], end[6]
    if length >= _END.size + _LOCATOR.size + _END64.size:
        zip_file.seek(length - _END.size - _LOCATOR.size)
        locator = _LOCATOR.unpack(zip_file.read(_LOCATOR.size))
        if locator[0] == b"PK\x06\x07":
            zip_file.seek(locator[2])
            end64 = _END64.unpack(zip_file.read(_END64.size))
            if end64[0] != b"PK\x06\x06":
                raise CorruptZip("a zip64 locator without a zip64 end record")
            count, directory_size, directory_offset = end64[7], end64[8], end64[9]
    zip_file.seek(directory_offset)
    directory = zip_file.read(directory_size)
    if len(directory) != directory_size:
        raise CorruptZip("the central directory runs past the end")
    return _parse_directory(directory, count), directory_offset


# A central directory entry's fields that reading one back needs, the rest skipped: signature,
# flags, crc, compressed size, size, name/extra/comment lengths, offset (same 46 bytes).
_CENTRAL_READ = struct.Struct("<4s4xH6xLLLHHH8xL")


def _parse_directory(directory: bytes, count: int) -> list[ZipRecord]:
    records = []
    position = 0
    unpack = _CENTRAL_READ.unpack_from
    fixed = _CENTRAL_READ.size
    for _ in range(count):
        (signature, flags, crc, compressed, size, name_length, extra_length, comment_length,
         offset) = unpack(directory, position)
        if signature != b"PK\x01\x02":
            raise CorruptZip(f"bad central directory entry at {position}")
        start = position + fixed
        name_end = start + name_length
        if extra_length:
            size, compressed, offset = _zip64_values(
                directory[name_end:name_end + extra_length], size, compressed, offset)
        records.append(ZipRecord(directory[start:name_end], flags, crc, compressed, size,
                                 offset))
        position = name_end + extra_length + comment_length
    return records


def _zip64_values(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    tag, length = struct.unpack_from("<HH", extra)
    if tag != 1:
        raise CorruptZip(f"unexpected extra field {tag}")
    values = list(struct.unpack_from(f"<{length // 8}Q", extra, 4))
    if size == 0xFFFFFFFF:
        size = values.pop(0)
    if compressed == 0xFFFFFFFF:
        compressed = values.pop(0)
    if offset == 0xFFFFFFFF:
        offset = values.pop(0)
    return size, compressed, offset
