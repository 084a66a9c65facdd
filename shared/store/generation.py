"""A cross-process change counter in an 8-byte file, read through mmap.

Writers bump it after each commit; readers (the gateway's in-memory key cache) compare it on
every request, which costs a memory read instead of a SQLite query.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

_FORMAT = "<Q"
_SIZE = struct.calcsize(_FORMAT)


class GenerationFile:
    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < _SIZE:
            os.pwrite(self._fd, struct.pack(_FORMAT, 0), 0)
        self._map = mmap.mmap(self._fd, _SIZE)

    def read(self) -> int:
        return struct.unpack_from(_FORMAT, self._map, 0)[0]

    def publish(self, value: int) -> None:
        """Record the generation of a commit that has just happened."""
        struct.pack_into(_FORMAT, self._map, 0, value)

    def close(self) -> None:
        try:
            self._map.close()
        finally:
            os.close(self._fd)
