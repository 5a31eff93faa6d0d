"""A node directory's configuration: ``node.toml``.

::

    name = "Alice"
    p2p_address = "127.0.0.1:10000"     # where peers reach this node (TCP)
    rpc_address = "127.0.0.1:10001"     # JSON-over-HTTP RPC (docs/rpc.md)
    apps = ["samples.ping"]             # modules whose flows this node runs and answers with
    notary = false
    validating_notary = false           # a notary that verifies transactions and their history
    network_map = "network-map.json"    # relative to the node directory
    store = "lmdb"                      # optional: or "postgresql://..." (docs/storage.md)

    sensitive_names = ["iban"]          # more names to redact in checkpoint dumps

    [limits]                            # what one peer may make this node hold
    max_inbound_sessions = 10000        # open sessions per peer (false: no cap)
    responder_idle_timeout = 3600       # seconds; off when absent

    [[rpc_users]]
    username = "admin"
    password_hash = "$argon2id$v=19$..."   # nacl.pwhash.str(); never the password itself
    permissions = ["ALL"]

    [rpc]                               # optional: the RPC's limits (docs/rpc.md, "Limits")
    max_connections = 128
    max_connections_per_address = 32    # one client address may not hold them all
    header_timeout = 10.0               # seconds to send a request's headers

    [p2p]                               # optional: the P2P port's limits (docs/nodes.md)
    max_unauthenticated_per_address = 16   # connections not through the handshake yet
    max_connections_per_peer = 8        # authenticated ones of one peer (a cluster's workers)

    [logging]                           # optional: node.log rotation (docs/rpc.md, "Logs")
    max_bytes = 10485760
    backup_count = 5

Permissions: ``ALL``; ``read`` (list flows, results, progress, checkpoint dumps);
``start`` (any startable flow) or ``start:<module.Class>``; ``kill``; ``admin``
(draining, shutdown).

The directory also holds ``identity.key`` (the node's Ed25519 seed, mode 0600), the store,
``node.log`` and, when bootstrapped, ``rpc-credentials``: the generated admin password in
plain text, mode 0600, read by the operator CLI on the same machine (like a cookie file).
"""
from __future__ import annotations

import json
import math
import os
import secrets
import tomllib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import nacl.exceptions
import nacl.pwhash

from greenflow.flows.registry import app_module_name
from greenflow.runtime.flow_types import MAX_DURATION
from greenflow.storage import is_postgres
from greenflow.storage.plain_files import open_plain_file
from greenflow.statemachine.limits import DEFAULT_MAX_INBOUND_SESSIONS
from greenflow.network.network_map import MAP_FILE, NetworkMapError, format_address, parse_address

CONFIG_FILE = "node.toml"
CREDENTIALS_FILE = "rpc-credentials"
#: The most node.toml or rpc-credentials may hold: a file past it (a link to /dev/zero, a
#: runaway write) is refused naming it, not read into memory.
MAX_FILE_BYTES = 1 << 20
PERMISSIONS = ("ALL", "read", "start", "kill", "retry", "admin")
#: The settings node.toml may hold (`NodeConfig.from_dict` refuses any other).
KNOWN_SETTINGS = frozenset({"name", "p2p_address", "rpc_address", "apps", "notary",
                            "validating_notary", "network_map", "store", "sensitive_names",
                            "limits", "rpc_users", "rpc", "logging", "p2p", "flows"})
#: The settings of the [flows] table (how the node keeps flows), with their type and
#: their least value; the node's own defaults apply to what the table leaves out.
FLOW_SETTINGS = {"max_resident": (int, 1), "max_retries": (int, 0),
                 "retention": (float, 0.001), "retry_backoff": (float, 0.001)}
#: The keys of one [[rpc_users]] entry; `permissions` defaults to every permission.
USER_KEYS = frozenset({"username", "password_hash", "permissions"})


class ConfigError(NetworkMapError):
    """``node.toml`` is missing or malformed; the message names the file and the field."""


#: How the hashes PyNaCl's ``pwhash`` makes and verifies begin (Argon2id, Argon2i, scrypt).
HASH_PREFIXES = ("$argon2id$", "$argon2i$", "$7$")


def positive_settings(cls: Any, doc: Optional[dict], where: str) -> Any:
    """An instance of the dataclass ``cls`` (its defaults) with the settings of a
    ``node.toml`` table: each a known field, a positive int or number as the field is.
    The one reader of the tables of limits ([rpc], [p2p]), so they refuse alike."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    out = cls()
    for key, value in dict(doc or {}).items():
        f = known.get(key)
        if f is None:
            raise ConfigError(f"{where}: unknown option {key!r} (known: {', '.join(known)})")
        want = int if f.type in ("int", int) else float
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or (want is int and not isinstance(value, int)) or not 0 < value < math.inf:
            raise ConfigError(f"{where}: `{key}` must be a positive "
                              f"{'integer' if want is int else 'finite number'}, found {value!r}")
        setattr(out, key, want(value))
    return out


def _flow_settings(table: Any, where: str) -> dict:
    """The [flows] table: each setting of `FLOW_SETTINGS`, of its type, at least its least
    value (durations at most a century)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [flows] must be a table, found {table!r}")
    out: dict = {}
    for key, value in table.items():
        if key not in FLOW_SETTINGS:
            raise ConfigError(f"{where}: unknown setting {key!r} in [flows] (known: "
                              f"{', '.join(FLOW_SETTINGS)})")
        want, least = FLOW_SETTINGS[key]
        top = math.inf if want is int else MAX_DURATION
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or (want is int and not isinstance(value, int)) or not least <= value <= top:
            kind = "a whole number" if want is int else "a number of seconds"
            raise ConfigError(f"{where}: flows.{key} must be {kind} of at least {least:g}"
                              + ("" if want is int else ", at most a century")
                              + f", found {value!r}")
        out[key] = want(value)
    return out


def hash_password(password: str) -> str:
    """An Argon2id hash (PyNaCl ``pwhash.str``) to store in ``node.toml``."""
    return nacl.pwhash.str(password.encode("utf-8")).decode("ascii")


def check_password(password_hash: str, password: str) -> bool:
    try:
        return nacl.pwhash.verify(password_hash.encode("ascii"), password.encode("utf-8"))
    except (nacl.exceptions.InvalidkeyError, ValueError, UnicodeError):
        return False


_ANY_HOST = frozenset({"0.0.0.0", "::", ""})   # listening on every address


def check_ports(p2p: tuple[str, int], rpc: tuple[str, int], where: str) -> None:
    """Refuse one port for both listeners (the second bind failed with "Address already in
    use", which reads like another process's fault)."""
    if p2p[1] and p2p[1] == rpc[1] and (p2p[0] == rpc[0] or {p2p[0], rpc[0]} & _ANY_HOST):
        raise ConfigError(f"{where}: p2p_address and rpc_address are the same port "
                          f"({format_address(p2p)}, {format_address(rpc)}): each needs a "
                          "port of its own")


@dataclass
class RpcUser:
    username: str
    password_hash: str
    permissions: list[str] = field(default_factory=lambda: ["ALL"])

    def allows(self, permission: str) -> bool:
        """``permission`` is ``read``, ``kill``, ``retry``, ``admin`` or ``start:<class>``
        (``admin`` covers ``retry``)."""
        perms = self.permissions
        if "ALL" in perms or permission in perms:
            return True
        if permission == "retry" and "admin" in perms:
            return True
        return permission.startswith("start:") and "start" in perms


@dataclass
class NodeConfig:
    name: str
    p2p_address: tuple[str, int]
    rpc_address: tuple[str, int]
    apps: list[str] = field(default_factory=list)
    notary: bool = False
    network_map: str = MAP_FILE
    rpc_users: list[RpcUser] = field(default_factory=list)
    base_dir: str = ""
    #: With ``notary``: resolve and verify every transaction's history before signing.
    validating_notary: bool = False
    max_inbound_sessions: Optional[int] = DEFAULT_MAX_INBOUND_SESSIONS
    responder_idle_timeout: Optional[float] = None
    sensitive_names: list[str] = field(default_factory=list)
    rpc: dict = field(default_factory=dict)       # [rpc]: greenflow.rpc.limits.RpcLimits
    logging: dict = field(default_factory=dict)   # [logging]: node_process.setup_logging
    p2p: dict = field(default_factory=dict)       # [p2p]: greenflow.network.tcp_guard.P2pLimits
    flows: dict = field(default_factory=dict)     # [flows]: FLOW_SETTINGS, passed to the Node
    #: The node's store: None or "lmdb" (node_dir/store), or a "postgresql://..." URL.
    store: Optional[str] = None

    def node_options(self) -> dict[str, Any]:
        """The `Node` options this file sets (limits, redaction, [flows])."""
        return {"max_inbound_sessions": self.max_inbound_sessions,
                "responder_idle_timeout": self.responder_idle_timeout,
                "sensitive_names": list(self.sensitive_names), **self.flows}

    @property
    def network_map_path(self) -> str:
        return os.path.join(self.base_dir, self.network_map)

    def user(self, username: str) -> Optional[RpcUser]:
        for u in self.rpc_users:
            if u.username == username:
                return u
        return None

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, base_dir: str) -> "NodeConfig":
        path = os.path.join(base_dir, CONFIG_FILE)
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_FILE_BYTES + 1)
            if len(raw) > MAX_FILE_BYTES:
                raise ConfigError(f"{path} is larger than a node's configuration may be "
                                  f"({MAX_FILE_BYTES:,} bytes)")
            doc = tomllib.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{base_dir} is not a node directory: no {CONFIG_FILE} "
                              "(create one with `greenflow node init` or `greenflow network "
                              "bootstrap`)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the node's configuration: {exc.strerror}") from None
        return cls.from_dict(doc, path, os.path.abspath(base_dir))

    @classmethod
    def from_dict(cls, doc: dict, where: str, base_dir: str) -> "NodeConfig":
        def need(key: str, typ: type) -> Any:
            v = doc.get(key)
            if not isinstance(v, typ):
                raise ConfigError(f"{where}: `{key}` must be a {typ.__name__}, found {v!r}")
            return v

        try:
            unknown = set(doc) - KNOWN_SETTINGS
            if unknown:   # a misspelt setting would otherwise be lost without a word
                raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(map(repr, unknown)))} "
                                  f"(known: {', '.join(sorted(KNOWN_SETTINGS))})")
            users = []
            listed = doc.get("rpc_users", [])
            if not isinstance(listed, list):
                raise ConfigError(f"{where}: `rpc_users` is a list of [[rpc_users]] tables, "
                                  f"found {listed!r:.100}")
            for i, u in enumerate(listed):
                if not isinstance(u, dict) or not isinstance(u.get("username"), str) \
                        or not isinstance(u.get("password_hash"), str):
                    raise ConfigError(f"{where}: rpc_users[{i}] needs username and password_hash")
                if not u["username"]:
                    raise ConfigError(f"{where}: rpc_users[{i}] has an empty username")
                odd = set(u) - USER_KEYS
                if odd:   # a misspelt `permissions` left the default: every permission
                    raise ConfigError(f"{where}: rpc_users[{i}] ({u['username']}): unknown "
                                      f"key(s) {', '.join(sorted(map(repr, odd)))} (known: "
                                      f"{', '.join(sorted(USER_KEYS))})")
                if not u["password_hash"].startswith(HASH_PREFIXES):
                    # Else the node would start and refuse every password of that user.
                    raise ConfigError(
                        f"{where}: rpc_users[{i}] ({u['username']}): password_hash is not a "
                        "password hash (one starts with $argon2id$; make one with python -c "
                        "\"from greenflow.network.node_config import hash_password; "
                        "print(hash_password('...'))\")")
                perms = u.get("permissions", ["ALL"])
                if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
                    raise ConfigError(f"{where}: rpc_users[{i}] ({u['username']}): permissions "
                                      f"is a list of names, found {perms!r:.100}")
                for p in perms:
                    if p not in PERMISSIONS and not str(p).startswith("start:"):
                        raise ConfigError(f"{where}: rpc_users[{i}]: unknown permission {p!r} "
                                          f"(known: {', '.join(PERMISSIONS)}, start:<class>)")
                # "start:samples.ping.Ping" means the class a request for "samples.ping.Ping"
                # starts (the bundled greenflow.samples): it matched nothing before.
                perms = [f"start:{app_module_name(p[6:])}" if p.startswith("start:") else p
                         for p in perms]
                users.append(RpcUser(u["username"], u["password_hash"], perms))
            tables = {}
            for key in ("rpc", "logging", "p2p"):
                table = doc.get(key, {})
                if not isinstance(table, dict) or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in table.values()):
                    raise ConfigError(f"{where}: [{key}] must be a table of numbers, found {table!r}")
                tables[key] = dict(table)
            tables["flows"] = _flow_settings(doc.get("flows", {}), where)
            apps = doc.get("apps", [])
            if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
                raise ConfigError(f"{where}: `apps` must be a list of module names")
            notary = doc.get("notary", False)
            if not isinstance(notary, bool):   # "false" is a string, and truthy
                raise ConfigError(f"{where}: `notary` must be a bool (true or false), "
                                  f"found {notary!r}")
            validating = doc.get("validating_notary", False)
            if not isinstance(validating, bool):
                raise ConfigError(f"{where}: `validating_notary` must be true or false, "
                                  f"found {validating!r}")
            if validating and not doc.get("notary", False):
                raise ConfigError(f"{where}: `validating_notary = true` needs `notary = true`")
            limits = doc.get("limits", {})
            if not isinstance(limits, dict):
                raise ConfigError(f"{where}: `[limits]` must be a table")
            unknown = set(limits) - {"max_inbound_sessions", "responder_idle_timeout"}
            if unknown:
                raise ConfigError(f"{where}: unknown setting(s) in [limits]: {', '.join(sorted(unknown))}")
            cap = limits.get("max_inbound_sessions", DEFAULT_MAX_INBOUND_SESSIONS)
            if cap is False:
                cap = None
            elif type(cap) is not int or cap < 0:
                raise ConfigError(f"{where}: limits.max_inbound_sessions must be a whole number "
                                  f">= 0 or false (no cap), found {cap!r}")
            idle = limits.get("responder_idle_timeout")
            if idle is False:
                idle = None
            elif idle is not None and (type(idle) not in (int, float)
                                       or not 0 < idle <= MAX_DURATION):
                raise ConfigError(f"{where}: limits.responder_idle_timeout must be a number of "
                                  f"seconds > 0, at most a century (absent or false: off), "
                                  f"found {idle!r}")
            store = doc.get("store")
            if store is not None and (not isinstance(store, str) or not (
                    store == "lmdb" or is_postgres(store))):
                raise ConfigError(f"{where}: `store` must be \"lmdb\" or a \"postgresql://...\" "
                                  f"URL, found {store!r}" if not isinstance(store, str) else
                                  f"{where}: `store` must be \"lmdb\" or a \"postgresql://...\" URL")
            sensitive = doc.get("sensitive_names", [])
            if not isinstance(sensitive, list) or not all(isinstance(n, str) for n in sensitive):
                raise ConfigError(f"{where}: `sensitive_names` must be a list of strings")
            p2p, rpc = parse_address(need("p2p_address", str)), parse_address(need("rpc_address", str))
            check_ports(p2p, rpc, where)
            return cls(name=need("name", str),
                       p2p_address=p2p,
                       rpc_address=rpc,
                       apps=list(apps), notary=notary,
                       network_map=_network_map_path(doc.get("network_map", MAP_FILE), where),
                       rpc_users=users, base_dir=base_dir, validating_notary=validating,
                       max_inbound_sessions=cap,
                       responder_idle_timeout=None if idle is None else float(idle),
                       sensitive_names=list(sensitive), store=store,
                       **tables)
        except NetworkMapError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{where}: {exc}") from None

    def to_toml(self) -> str:
        lines = [
            f"name = {_s(self.name)}",
            f"p2p_address = {_s(format_address(self.p2p_address))}",
            f"rpc_address = {_s(format_address(self.rpc_address))}",
            f"apps = [{', '.join(_s(a) for a in self.apps)}]",
            f"notary = {'true' if self.notary else 'false'}",
            *(["validating_notary = true"] if self.validating_notary else []),
            f"network_map = {_s(self.network_map)}",
            *([f"store = {_s(self.store)}"] if self.store else []),
        ]
        if self.sensitive_names:
            lines.append(f"sensitive_names = [{', '.join(_s(n) for n in self.sensitive_names)}]")
        if self.max_inbound_sessions != DEFAULT_MAX_INBOUND_SESSIONS or self.responder_idle_timeout:
            cap = self.max_inbound_sessions
            lines += ["", "[limits]",
                      f"max_inbound_sessions = {'false' if cap is None else cap}"]
            if self.responder_idle_timeout:
                lines.append(f"responder_idle_timeout = {self.responder_idle_timeout!r}")
        for u in self.rpc_users:
            lines += ["", "[[rpc_users]]", f"username = {_s(u.username)}",
                      f"password_hash = {_s(u.password_hash)}",
                      f"permissions = [{', '.join(_s(p) for p in u.permissions)}]"]
        for key in ("rpc", "p2p", "logging", "flows"):
            table = getattr(self, key)
            if table:
                lines += ["", f"[{key}]"] + [f"{_s(k)} = {v!r}" for k, v in table.items()]
        return "\n".join(lines) + "\n"

    def save(self) -> None:
        path = os.path.join(self.base_dir, CONFIG_FILE)
        tmp = path + ".tmp"
        with open_plain_file(tmp, "w", encoding="utf-8") as fh:
            fh.write(self.to_toml())
        os.replace(tmp, path)


def _s(text: str) -> str:
    # A JSON string is a valid TOML basic string for everything json.dumps emits.
    return json.dumps(text, ensure_ascii=False)


# ---------------------------------------------------------------------- local credentials
def new_password() -> str:
    return secrets.token_urlsafe(18)


def write_credentials(base_dir: str, username: str, password: str) -> str:
    path = os.path.join(base_dir, CREDENTIALS_FILE)
    with open_plain_file(path, "w", 0o600, encoding="utf-8") as fh:
        json.dump({"username": username, "password": password}, fh)
        fh.write("\n")
    return path


def _network_map_path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: `network_map` is the path of the network map file, "
                          f"found {value!r:.100}")
    return value


def read_credentials(base_dir: str) -> Optional[tuple[str, str]]:
    """The (username, password) left by bootstrap/init for the local operator; None when
    there is no such file. A file that is there but unreadable is a `ConfigError` naming
    it: the operator must learn that file is the problem, not guess at the node."""
    path = os.path.join(base_dir, CREDENTIALS_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(MAX_FILE_BYTES + 1)
        doc = json.loads(text) if len(text) <= MAX_FILE_BYTES else None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:   # not JSON, or not UTF-8
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("username"), str) \
            or not isinstance(doc.get("password"), str):
        raise ConfigError(f"{path} is not an RPC credentials file ({{\"username\": ..., "
                          "\"password\": ...}, as `greenflow node init` writes it): fix it, "
                          "or pass --user/--password")
    return doc["username"], doc["password"]
