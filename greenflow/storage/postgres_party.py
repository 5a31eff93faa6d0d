"""Which party a PostgreSQL store belongs to, and one store per party in a database.

A store records its party (name and public key) in its ``meta`` table when it is made,
and refuses a node or worker of another party (`claim_party`). A schema of a store is
also marked with its party's key (a comment on the schema, `mark_party`), so that a
new store is not made for a party that has one in the same database already
(`refuse_second_store`): a worker started by hand with a ``?schema=`` naming another
schema made an empty store there, took every partition of it and served as a second
copy of the party beside its real workers, on the same P2P address.
"""
from __future__ import annotations

from typing import Any

from psycopg import sql

from greenflow.errors import StoreError

PARTY_NAME_KEY, PARTY_KEY_KEY = "greenflow.party-name", "greenflow.party-key"


def _mark(key: bytes) -> str:
    return "greenflow store of the party with key " + key.hex()


def claim_party(conn: Any, where: str, party: tuple[str, bytes], readonly: bool = False) -> None:
    """Refuse a store (``conn``'s search path) that records another party than
    ``party``; record ``party`` in one that records none."""
    rows = dict(conn.execute("SELECT name, value FROM meta WHERE name IN (%s, %s)",
                             (PARTY_NAME_KEY, PARTY_KEY_KEY)).fetchall())
    key = rows.get(PARTY_KEY_KEY)
    if key is not None and bytes(key) != party[1]:
        theirs = bytes(rows.get(PARTY_NAME_KEY) or b"?").decode(errors="replace")
        raise StoreError(
            f"the PostgreSQL store {where} belongs to the party {theirs} (key "
            f"{bytes(key).hex()[:16]}...), not to {party[0]} (key {party[1].hex()[:16]}...) "
            "whose node directory opens it: a ?schema= that names another party's store, "
            "or a directory copied from another party's; nothing was read or written")
    if key is None and not readonly:
        conn.execute("INSERT INTO meta (name, value) VALUES (%s, %s), (%s, %s) "
                     "ON CONFLICT (name) DO NOTHING",
                     (PARTY_NAME_KEY, party[0].encode(), PARTY_KEY_KEY, party[1]))


def refuse_second_store(conn: Any, schema: str, where: str, party: tuple[str, bytes]) -> None:
    """Before a store is made in ``schema``: refuse it when another schema of the
    database holds a store of ``party`` (one catalog query, whatever the number of
    schemas)."""
    others = [r[0] for r in conn.execute(
        "SELECT n.nspname FROM pg_namespace n JOIN pg_description d ON d.objoid = n.oid "
        "AND d.classoid = 'pg_namespace'::regclass AND d.objsubid = 0 "
        "WHERE d.description = %s AND n.nspname <> %s ORDER BY 1",
        (_mark(party[1]), schema)).fetchall()]
    if others:
        raise StoreError(
            f"the party {party[0]} has its store in the schema {others[0]} of this "
            f"database already; a new store at {where} would run a second copy of the "
            "party beside it (a ?schema= naming another schema than its store's?): use "
            "that schema, or drop it first if it is no longer wanted; nothing was written")


def mark_party(conn: Any, schema: str, party: tuple[str, bytes]) -> None:
    """Mark the store just made in ``schema`` as ``party``'s (`refuse_second_store`)."""
    conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
        sql.Identifier(schema), sql.Literal(_mark(party[1]))))
