"""Keeping the store's memory map out of the node's resident set.

LMDB reads through a shared, read-only memory map of ``data.mdb``. Every page a node
touches (B-tree branches on each lookup, leaves copied before each write) stays mapped
into the process, so a node that has written ten million hibernated flows shows gigabytes
of RSS that are nothing but clean page-cache pages of its own file: measured, 2.1 GiB of
RSS of which 31 MB was the process's own (anonymous) memory.

Those pages are the file's contents, so dropping them from the process's page tables
(``madvise(MADV_DONTNEED)`` on a shared file mapping) loses nothing: the kernel keeps
them in its page cache as long as it has room, and the next read maps them back with a
minor fault. `MapTrimmer` does that when the file-backed part of RSS passes a budget.
Linux only; elsewhere it does nothing.
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Optional

log = logging.getLogger("greenflow.store")

MADV_DONTNEED = 4
DEFAULT_BUDGET = 256 * 1024 * 1024   # file-backed RSS allowed before the map is trimmed
CHECK_EVERY = 256                    # commits between two looks at /proc/self/statm

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_libc: Optional[ctypes.CDLL] = None


def _madvise():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _libc.madvise.restype = ctypes.c_int
    return _libc.madvise


def supported() -> bool:
    return sys.platform.startswith("linux") and os.path.exists("/proc/self/statm")


def file_backed_rss() -> int:
    """Bytes of this process's RSS that are file-backed or shared (statm's third field)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[2]) * _PAGE


def mappings_of(path: str) -> list[tuple[int, int]]:
    """(start, end) of every mapping of ``path`` in this process."""
    real = os.path.realpath(path)
    out = []
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            if not line.rstrip().endswith(b"data.mdb"):
                continue
            parts = line.split(None, 5)
            if len(parts) == 6 and os.fsdecode(parts[5].strip()) == real:
                lo, hi = parts[0].split(b"-")
                out.append((int(lo, 16), int(hi, 16)))
    return out


def drop_mapped_pages(path: str) -> int:
    """Unmap the resident pages of every mapping of ``path`` (they stay in the page
    cache); returns the bytes of address space advised."""
    madvise = _madvise()
    total = 0
    for lo, hi in mappings_of(path):
        if madvise(lo, hi - lo, MADV_DONTNEED) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"madvise(MADV_DONTNEED) on the map of {path}: {os.strerror(err)}")
        total += hi - lo
    return total


class MapTrimmer:
    """Called after each commit; every `CHECK_EVERY` commits, trims the map of ``path``
    if the file-backed RSS is above ``budget`` bytes (None: never)."""

    __slots__ = ("path", "budget", "countdown", "trims", "enabled")

    def __init__(self, path: str, budget: Optional[int] = DEFAULT_BUDGET) -> None:
        self.path = path
        self.budget = budget
        self.countdown = CHECK_EVERY
        self.trims = 0
        self.enabled = budget is not None and supported()

    def after_commit(self) -> bool:
        if not self.enabled:
            return False
        self.countdown -= 1
        if self.countdown > 0:
            return False
        self.countdown = CHECK_EVERY
        return self.trim_if_over()

    def trim_if_over(self) -> bool:
        try:
            before = file_backed_rss()
            if before <= self.budget:  # type: ignore[operator]
                return False
            drop_mapped_pages(self.path)
            self.trims += 1
            log.debug("trimmed the store map of %s: file-backed RSS %d MiB -> %d MiB",
                      self.path, before >> 20, file_backed_rss() >> 20)
            return True
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("cannot trim the store map of %s (%s); not trying again", self.path, exc)
            self.enabled = False
            return False
