"""What a relative project path may look like, checked before any file is touched."""

from __future__ import annotations

import re

MAX_PATH_CHARS = 4096
MAX_NAME_BYTES = 255
_DRIVE = re.compile(r"[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafePath(ValueError):
    """A path that names no plain location inside the project; `reason` is a stable code."""

    def __init__(self, path: object, reason: str, detail: str = "") -> None:
        super().__init__(f"{path!r} refused: {reason}" + (f" ({detail})" if detail else ""))
        self.path = path
        self.reason = reason
        self.detail = detail


def split_relative_path(path: object) -> tuple[str, ...]:
    """The segments of a normalized relative path (`a/b.txt`), or UnsafePath.

    Refused: non-strings, empty, NUL or control characters, backslashes, absolute paths,
    drive letters, `..`, `.` and empty segments, over-long names. The archive extractor
    uses the same rules for zip entries, so a snapshot and an event agree on what is valid.
    """
    if not isinstance(path, str) or not path:
        raise UnsafePath(path, "invalid_path", "empty or not a string")
    if "\x00" in path:
        raise UnsafePath(path, "invalid_path", "contains NUL")
    if "\\" in path:
        raise UnsafePath(path, "backslash")
    if path.startswith("/"):
        raise UnsafePath(path, "absolute_path")
    if _DRIVE.match(path):
        raise UnsafePath(path, "drive_letter")
    if _CONTROL.search(path):
        raise UnsafePath(path, "invalid_path", "contains a control character")
    if len(path) > MAX_PATH_CHARS:
        raise UnsafePath(path, "invalid_path", f"longer than {MAX_PATH_CHARS} characters")
    parts = tuple(path.split("/"))
    if ".." in parts:
        raise UnsafePath(path, "parent_segment")
    if any(part in ("", ".") for part in parts):
        raise UnsafePath(path, "invalid_path", "empty or '.' segment")
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in parts):
        raise UnsafePath(path, "invalid_path", f"a segment exceeds {MAX_NAME_BYTES} bytes")
    return parts
