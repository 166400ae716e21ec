"""Linux inotify through ctypes: when a file lands in a directory, to the microsecond.

Used by the latency benchmarks to see an agent's atomic rename the moment it happens, with
no polling and no debounce.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import time
from collections.abc import Callable
from pathlib import Path

IN_MOVED_TO = 0x00000080
IN_CLOSE_WRITE = 0x00000008
IN_NONBLOCK = 0o4000
_EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


class Watcher:
    """Calls `on_landed(directory, name, monotonic_time)` for files renamed into or written in
    watched directories."""

    def __init__(self, on_landed: Callable[[Path, str, float], None]) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.on_landed = on_landed
        self.directories: dict[int, Path] = {}

    def watch(self, directory: Path) -> None:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(directory), IN_MOVED_TO | IN_CLOSE_WRITE)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch failed for {directory}")
        self.directories[wd] = directory

    def run_until(self, stop: Callable[[], bool]) -> None:
        while not stop():
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            now = time.monotonic()
            data = os.read(self.fd, 65536)
            offset = 0
            while offset < len(data):
                wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                directory = self.directories.get(wd)
                if directory is not None:
                    self.on_landed(directory, name.decode(), now)

    def close(self) -> None:
        os.close(self.fd)
