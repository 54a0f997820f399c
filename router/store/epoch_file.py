"""The embedded store's auth epoch: eight bytes in a file beside the database, mapped into memory.

The gateway reads the epoch on every request (the auth cache is dropped when it moves), so the read must
cost nothing: a slice of a shared memory map is ~0.1 µs, where SQLite's ``PRAGMA data_version`` cost
5–25 µs on the loop (more while the usage writer thread holds the GIL) and also moved on every usage
batch, dropping the key cache for no reason. Every process that changes tenants or keys through the
store (the gateway's admin API, the ``noor`` CLI) writes fresh random bytes after its commit; the page is
shared, so every other process sees the new value on its next read.

Random bytes rather than a counter: two processes bumping at once cannot write the same value back, so
no change is ever missed (a repeat is a 2⁻⁶⁴ chance).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

_SIZE = 8


class EpochFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _SIZE:
                os.ftruncate(fd, _SIZE)  # two processes racing here both extend it to the same size
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)  # the map keeps its own reference

    def read(self) -> bytes:
        return self._map[:_SIZE]

    def bump(self) -> None:
        """Call after committing a change to tenants or keys."""
        self._map[:_SIZE] = os.urandom(_SIZE)

    def close(self) -> None:
        self._map.close()
