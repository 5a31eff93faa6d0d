"""What the store checks before a node may use it, and how it names a failed commit.

A node that opens a damaged store must not start: LMDB maps ``data.mdb`` into memory,
so a truncated file raises SIGBUS (no message, no exit code) at the first read of a page
past its end, and pages overwritten with garbage answer ``MDB_CORRUPTED`` or decode into
nonsense long after the node said it was up. And a node whose store vanished must not
start afresh on its own: it would accept work having forgotten everything it committed.
So, before use:

- the file's two LMDB meta pages are read with plain ``read()`` (never through the map):
  one must carry LMDB's magic and data version;
- a node process then walks the B-trees in a child process (every key of every
  database, up to `FULL_CHECK_BYTES` of used pages; beyond, the first and last key of
  each): a page past the end of a truncated file kills that child with SIGBUS, not the
  node, and LMDB's own page checks catch pages overwritten with garbage. (The file
  itself may legitimately end before the last page the meta names: pages allocated and
  freed within one transaction are never written.);
- LMDB opens it (its own checks: magic, version, lock file);
- greenflow's own format record (``meta`` database, `FORMAT_KEY`) must name this
  format and a version this code reads; a store made before the record existed gets it.

A lock (``flock`` on ``store/greenflow.lock``) is held while the store is open: a second
process, through another node directory whose ``store/`` is a link to this one or after
``node.pid`` was deleted, is refused.
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import Any, Optional

import lmdb

from greenflow.errors import StoreCorrupt, StoreError, StoreLocked, StoreMissing
from greenflow.storage.plain_files import check_plain, open_plain

DATA_FILE = "data.mdb"
LOCK_FILE = "greenflow.lock"
LMDB_LOCK_FILE = "lock.mdb"   # LMDB's reader table: no data, made again at each open
FORMAT_KEY = b"greenflow.store-format"
FORMAT_NAME = "greenflow-store"
FORMAT_VERSION = 1
FULL_CHECK_BYTES = 256 * 1024 * 1024

_MAGIC = 0xBEEFC0DE
_DATA_VERSION = 1
# MDB_meta after the 16-byte page header: magic u32 @16, version u32 @20, the free
# DB's md_pad (the page size) u32 @40, last page number u64 @136, txn id u64 @144.
_META = struct.Struct("<I I 16x I 92x Q Q")
_META_AT = 16

RESTORE_HINT = ("restore the store directory from a backup of this node (with the node "
                "stopped), or, to start this node with an empty store and forget every flow "
                "it had, move the damaged directory aside and start with --new-store")


def data_path(store_dir: str) -> str:
    return os.path.join(store_dir, DATA_FILE)


def present(store_dir: str) -> bool:
    """Whether the store holds a data file with anything in it."""
    try:
        return os.path.getsize(data_path(store_dir)) > 0
    except OSError:
        return False


MISSING_HINT = ("restore the store directory from a backup, or, to start with an empty store "
                "and forget everything this node committed, start with --new-store")


def missing(store_dir: str) -> "StoreMissing":
    if os.path.lexists(store_dir) and not os.path.isdir(store_dir):
        return StoreMissing(
            f"the node store {store_dir} is not a directory (a file, or a link to one): the "
            f"store is a directory holding {DATA_FILE}. Restore the directory from a backup "
            "of this node, or move the file aside and start with --new-store to start empty")
    return StoreMissing(
        f"the node store {data_path(store_dir)} is missing or empty. This node directory "
        f"was initialised, so its flows, results and outbox were in it: {MISSING_HINT}")


def _read_meta(raw: bytes, offset: int) -> Optional[tuple[int, int, int]]:
    """(page size, last page, txn id) of the meta page at ``offset``, or None if it is
    not one."""
    if len(raw) < offset + _META_AT + _META.size:
        return None
    magic, version, psize, last_pg, txnid = _META.unpack_from(raw, offset + _META_AT)
    if magic != _MAGIC or version != _DATA_VERSION or psize < 512 or psize & (psize - 1):
        return None
    return psize, last_pg, txnid


def check_file(store_dir: str) -> None:
    """Refuse a data file that is not LMDB or is shorter than its own meta says."""
    path = data_path(store_dir)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
            first = _read_meta(head, 0)
            psize = first[0] if first else 4096
            fh.seek(psize)
            second = _read_meta(fh.read(_META_AT + _META.size), 0)
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise StoreCorrupt(f"cannot read the node store file {path}: {exc}; {RESTORE_HINT}") from exc
    metas = [m for m in (first, second) if m is not None]
    if not metas:
        raise StoreCorrupt(f"{path} is not an LMDB store file (no valid meta page: "
                           f"overwritten or not a greenflow store); {RESTORE_HINT}")
    psize = max(metas, key=lambda m: m[2])[0]
    if size < 2 * psize:
        raise StoreCorrupt(f"{path} is truncated: {size} bytes, less than its two meta "
                           f"pages; {RESTORE_HINT}")
    # LMDB writes whole pages. A file cut within a page would read zeros for the rest of
    # that page (no SIGBUS), and the walk below would call the store merely damaged.
    if size % psize:
        raise StoreCorrupt(f"{path} is truncated: {size} bytes, not a whole number of its "
                           f"{psize}-byte pages; {RESTORE_HINT}")


def corrupt(path: str, exc: BaseException) -> StoreError:
    what = f"{type(exc).__name__}: {exc}" if not isinstance(exc, lmdb.Error) else str(exc)
    lock = os.path.join(path, LMDB_LOCK_FILE)
    if os.path.lexists(lock) and not os.path.isfile(lock):
        # Not the data: LMDB's lock file holds only who reads now, and is made again.
        return StoreError(f"{lock} is not a file ({what}): it holds no data (LMDB makes it "
                          "again when the node opens its store); remove it, with the node "
                          "stopped")
    return StoreCorrupt(f"the node store {data_path(path)} is damaged ({what}); {RESTORE_HINT}")


def check_format(env: Any, meta_db: Any, path: str, *, readonly: bool) -> None:
    """Check greenflow's own format record; write it into a store that has none (a new
    store, or one made before the record existed)."""
    with env.begin(db=meta_db) as txn:
        raw = txn.get(FORMAT_KEY)
    if raw is None:
        if not readonly:
            with env.begin(write=True, db=meta_db) as txn:
                txn.put(FORMAT_KEY, f"{FORMAT_NAME} {FORMAT_VERSION}".encode())
        return
    name, _, version = bytes(raw).decode("ascii", errors="replace").partition(" ")
    if name != FORMAT_NAME or not version.isdigit():
        raise StoreCorrupt(f"{data_path(path)} does not hold a greenflow store (its format "
                           f"record reads {bytes(raw)[:60]!r}); {RESTORE_HINT}")
    if int(version) > FORMAT_VERSION:
        raise StoreCorrupt(f"{data_path(path)} was written by a newer greenflow (store "
                           f"format {version}; this version reads up to {FORMAT_VERSION}): "
                           "start the node with the greenflow version that wrote it")


_WALK = r"""
import sys, lmdb
path, limit = sys.argv[1], int(sys.argv[2])
try:
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=256, readahead=False, subdir=True)
    info, stat = env.info(), env.stat()
    full = (info["last_pgno"] + 1) * stat["psize"] <= limit
    with env.begin() as txn:
        names = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
    for name in names:
        try:
            db = env.open_db(name, create=False)
        except lmdb.IncompatibleError:
            continue
        with env.begin(db=db) as txn:
            cur = txn.cursor()
            if full:
                for _ in cur.iternext(keys=True, values=False):
                    pass
            else:
                cur.first()
                cur.last()
except lmdb.Error as exc:
    sys.stdout.write(str(exc))
    sys.exit(3)
"""


def check_in_child(store_dir: str, timeout: float = 600.0) -> None:
    """Walk the store's B-trees in a child process, before this one maps the file: a
    truncated file makes whoever reads a missing page die of SIGBUS, and that must be
    the check, not the node. Every key is read when the used part of the store is at
    most `FULL_CHECK_BYTES`, else the first and last key of each database."""
    import signal
    import subprocess
    import sys

    path = data_path(store_dir)
    try:
        out = subprocess.run([sys.executable, "-c", _WALK, store_dir, str(FULL_CHECK_BYTES)],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StoreCorrupt(f"checking the node store {path} took over {timeout:g}s; "
                           f"{RESTORE_HINT}") from None
    if out.returncode == 0:
        return
    if out.returncode == -signal.SIGBUS:
        raise StoreCorrupt(f"{path} is truncated: reading its committed pages runs past the "
                           f"end of the file; {RESTORE_HINT}")
    if out.returncode < 0:
        raise StoreCorrupt(f"the node store {path} is damaged: reading it killed the check "
                           f"with signal {-out.returncode}; {RESTORE_HINT}")
    why = (out.stdout or out.stderr).strip().splitlines()
    raise StoreCorrupt(f"the node store {path} is damaged ({why[-1] if why else out.returncode}); "
                       f"{RESTORE_HINT}")


def open_lock_file(path: str) -> int:
    """A lock file's descriptor, opened for writing its holder's pid. Never through a
    symbolic link (`plain_files`): the holder truncates the file, which would empty
    whatever the link points at."""
    return open_plain(path, os.O_RDWR | os.O_CREAT)


def check_lmdb_files(store_dir: str) -> None:
    """Refuse a store whose data or lock file is a symbolic link or not a plain file,
    before LMDB opens them: it would follow a link and write its pages or its reader
    table wherever it points (as root, any file of the system)."""
    for name in (DATA_FILE, LMDB_LOCK_FILE):
        try:
            check_plain(os.path.join(store_dir, name))
        except OSError as exc:
            raise StoreError(f"cannot open the node store: {exc}") from None


def take_lock(path: str) -> tuple[Optional[int], str]:
    """``flock`` ``path`` for this process and write its pid there: ``(fd, "")``, or
    ``(None, holder)`` with the pid another process wrote when that one holds it. The
    lock lasts until the descriptor is closed (`release_lock`), or the process ends."""
    fd = open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip()
        os.close(fd)
        return None, holder or "?"
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    except OSError as exc:   # a full disk: name the file, which os.write does not
        os.close(fd)
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
    return fd, ""


def release_lock(fd: int) -> None:
    """Give up a lock `take_lock` took (its pid is cleared from the file first)."""
    try:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class StoreLock:
    """``flock`` on ``store/greenflow.lock`` and on the data file itself for the life of
    the open store. flock follows the file, not the path, so links to the same directory
    share it; and a lock file deleted as if it were stale does not let a second process
    in, since the data file stays locked."""

    def __init__(self, store_dir: str) -> None:
        self.store_dir = store_dir
        self.path = os.path.join(store_dir, LOCK_FILE)
        self.data_fd: Optional[int] = None
        self.fd, holder = take_lock(self.path)
        if self.fd is None:
            raise self._in_use(f"process {holder} (its lock {self.path} is held)")
        try:
            self.hold_data()
        except BaseException:
            self.release()
            raise

    def _in_use(self, by: str) -> StoreLocked:
        return StoreLocked(f"the node store {os.path.realpath(self.store_dir)} is in use by "
                           f"{by}: one store serves one node process; stop that process first")

    def hold_data(self) -> None:
        """Lock the data file too, once it exists (a new store's is made by its open)."""
        if self.data_fd is not None:
            return
        check_lmdb_files(self.store_dir)
        try:
            fd = os.open(data_path(self.store_dir), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._in_use(f"another process (its data file {data_path(self.store_dir)} is "
                               "locked; its lock file was removed)") from None
        self.data_fd = fd

    def check_data_file(self) -> None:
        """Refuse to commit into a data file that was deleted (or replaced) under the
        running node: LMDB would go on writing into the unlinked file, every commit since
        lost at the next start, though peers and clients were told of them."""
        fd = self.data_fd
        if fd is None:
            return
        path = data_path(self.store_dir)
        try:
            here = os.stat(path)
        except FileNotFoundError:
            here = None
        held = os.fstat(fd)
        if here is None or held.st_nlink == 0 or (here.st_dev, here.st_ino) != (held.st_dev, held.st_ino):
            raise StoreError(f"the node store file {path} was {'deleted' if here is None else 'replaced'} "
                             "while the node ran: nothing more is committed (it would be lost "
                             "with the unlinked file); restore the store from a backup, or "
                             "start again with --new-store to start empty")

    def release(self) -> None:
        if self.data_fd is not None:
            fd, self.data_fd = self.data_fd, None
            os.close(fd)   # (closing drops the flock)
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        release_lock(fd)


_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _at_file_size_limit(path: str) -> bool:
    """LMDB reports a short write as EIO, whatever stopped it: a process file size
    limit (``ulimit -f``) that the data file has reached is one such cause."""
    import resource
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if soft == resource.RLIM_INFINITY:
        return False
    try:
        return os.path.getsize(data_path(path)) + 4 * 1024 * 1024 >= soft
    except OSError:
        return False


def commit_failure(path: str, exc: BaseException) -> str:
    """What a failed commit means, for the operator: LMDB reports a full disk as whatever
    the failing write or fsync returned (often EIO), so look at the filesystem too."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    try:
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    if code in _DISK_FULL_ERRNOS or "No space left" in text or "quota" in text.lower() \
            or (free is not None and free < 1024 * 1024):
        where = f" ({free} bytes free)" if free is not None else ""
        return (f"disk full: the filesystem of the node store {path} has no room left{where} "
                f"[{text}]; free space (or move the store to a larger disk) and restart the node")
    if code == errno.EFBIG or "File too large" in text or _at_file_size_limit(path):
        return (f"file size limit: {data_path(path)} cannot grow (ulimit -f or the "
                f"filesystem's largest file) [{text}]; raise the limit and restart the node")
    if code == errno.EIO or "Input/output error" in text:
        return (f"I/O error writing the node store {path} [{text}]: the disk or filesystem "
                "failed; check the kernel log (dmesg) before restarting the node")
    return f"commit to the node store at {path} failed: {text}"
