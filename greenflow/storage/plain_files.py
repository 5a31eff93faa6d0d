"""The files a node writes in its directory, never through a symbolic link.

A node (often run as root) writes its store, its log, its lock and state files where
its directory says. A symbolic link planted there in place of one of them (by anyone
who can write in the directory) would make the node write wherever the link points:
LMDB would turn ``/etc/passwd`` into its lock table. So every such file is opened with
``O_NOFOLLOW`` and must be a plain file; the files LMDB opens itself are checked first
(`check_plain`). Reading follows links as usual (a ``node.toml`` kept elsewhere is fine),
and so may the directories: only the files themselves are refused.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from typing import IO, Any

__all__ = ["PlainFileHandler", "PlainOpen", "check_plain", "open_plain", "open_plain_file"]

APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT
REPLACE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def open_plain(path: str, flags: int, mode: int = 0o644) -> int:
    """``os.open(path, flags | O_NOFOLLOW, mode)``, refusing a link or anything but a
    plain file with an `OSError` that names the path and says why."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refused(path, "a symbolic link") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _refused(path, "not a plain file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_plain_file(path: str, mode: str, perms: int = 0o644, **kw: Any) -> IO[Any]:
    """`open_plain` as a file object: ``mode`` is "w", "a", "x" (each with "b" or not)."""
    flags = {"w": REPLACE, "a": APPEND, "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL}[mode[0]]
    return os.fdopen(open_plain(path, flags, perms), mode.replace("x", "w"), **kw)


def check_plain(path: str) -> None:
    """Refuse ``path`` if it is a symbolic link or anything but a plain file (when it
    exists): for files another library opens (LMDB's data and lock files)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise _refused(path, "a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise _refused(path, "not a plain file")


def _refused(path: str, what: str) -> OSError:
    """``str()`` says it all; ``strerror`` and ``filename`` say it to callers that
    name the file themselves."""
    return _Refused(errno.ELOOP if "link" in what else errno.EINVAL,
                    f"it is {what} (a node writes its files only as plain files in its "
                    "directory: through a link it would write wherever the link points); "
                    "remove it (to keep a node's files on another disk, link or mount the "
                    "directory instead)", path)


class _Refused(OSError):
    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class PlainOpen:
    """For a `logging.FileHandler` subclass: its file opened by `open_plain` (also each
    file a rotating handler opens anew)."""

    baseFilename: str
    mode: str
    encoding: Any
    errors: Any

    def _open(self) -> IO[Any]:
        return open_plain_file(self.baseFilename, self.mode, encoding=self.encoding,
                               errors=self.errors)


class PlainFileHandler(PlainOpen, logging.FileHandler):
    """A `logging.FileHandler` that never writes through a symbolic link."""
