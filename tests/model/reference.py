"""A reference for the path rules, written from docs/database.md alone: the model the
database's `internal.path_problem` is checked against."""

from __future__ import annotations

import re

MAX_PATH_BYTES = 1024
MAX_SEGMENT_BYTES = 255
MAX_DEPTH = 32
_CONTROL = re.compile("[\x01-\x1f\x7f\x80-\x9f]")
_DRIVE = re.compile("[A-Za-z]:")


def reference_problem(path: str) -> str | None:
    """The first rule a path breaks, in the documented order (docs/database.md, Path rules),
    written from the documentation alone; None for a path the database must accept."""
    if path == "":
        return "empty"
    if len(path.encode()) > MAX_PATH_BYTES:
        return "too_long"
    if path.startswith("/"):
        return "absolute"
    if _DRIVE.match(path):
        return "drive_letter"
    if "\\" in path:
        return "backslash"
    if _CONTROL.search(path):
        return "control_character"
    if path.endswith("/"):
        return "trailing_slash"
    segments = path.split("/")
    if "" in segments:
        return "empty_segment"
    if "." in segments or ".." in segments:
        return "dot_segment"
    if len(segments) > MAX_DEPTH:
        return "too_deep"
    if any(len(segment.encode()) > MAX_SEGMENT_BYTES for segment in segments):
        return "segment_too_long"
    return None
