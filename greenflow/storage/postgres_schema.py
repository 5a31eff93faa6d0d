"""The PostgreSQL store's server side: the schema's tables, ``gf_fence``, and the
``gf_commit`` function built from one statement per kind of write (see
`greenflow.storage.postgres_store`). Kept apart from the store so the DDL and the
statements' argument layout, which the batch encoder (`postgres_batch`) fills, read as one
piece."""
from __future__ import annotations

import hashlib
import re

_FENCE_STATE = "GF409"

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (name text COLLATE "C" PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE IF NOT EXISTS flows (fid text COLLATE "C" PRIMARY KEY, part smallint NOT NULL,
    header bytea NOT NULL);
CREATE INDEX IF NOT EXISTS flows_part ON flows (part, fid);
CREATE TABLE IF NOT EXISTS logic (fid text COLLATE "C" PRIMARY KEY, part smallint NOT NULL,
    blob bytea NOT NULL);
CREATE TABLE IF NOT EXISTS journal (fid text COLLATE "C", start integer, part smallint NOT NULL,
    chunk bytea NOT NULL, PRIMARY KEY (fid, start));
CREATE TABLE IF NOT EXISTS frames (fid text COLLATE "C" PRIMARY KEY, part smallint NOT NULL,
    blob bytea NOT NULL);
CREATE TABLE IF NOT EXISTS wake (fid text COLLATE "C" PRIMARY KEY, part smallint NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (fid text COLLATE "C", sid text COLLATE "C", seq bigint,
    part smallint NOT NULL, data bytea NOT NULL, PRIMARY KEY (fid, sid, seq));
CREATE INDEX IF NOT EXISTS inbox_part ON inbox (part);
CREATE TABLE IF NOT EXISTS payloads (fid text COLLATE "C", sid text COLLATE "C", seq bigint,
    part smallint NOT NULL, data bytea NOT NULL, PRIMARY KEY (fid, sid, seq));
CREATE TABLE IF NOT EXISTS outbox (peer text COLLATE "C", sid text COLLATE "C",
    to_responder boolean, seq bigint, part smallint NOT NULL, data bytea NOT NULL,
    PRIMARY KEY (peer, sid, to_responder, seq));
CREATE TABLE IF NOT EXISTS routes (peer text COLLATE "C", sid text COLLATE "C",
    peer_role smallint, value bytea NOT NULL, expires double precision,
    PRIMARY KEY (peer, sid, peer_role));
CREATE INDEX IF NOT EXISTS routes_expires ON routes (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS timers (deadline_us bigint, fid text COLLATE "C",
    part smallint NOT NULL, PRIMARY KEY (deadline_us, fid));
CREATE TABLE IF NOT EXISTS results (fid text COLLATE "C" PRIMARY KEY, part smallint NOT NULL,
    record bytea NOT NULL, expires double precision);
CREATE INDEX IF NOT EXISTS results_expires ON results (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS clients (client_id text COLLATE "C" PRIMARY KEY,
    fid text NOT NULL, expires double precision);
CREATE INDEX IF NOT EXISTS clients_expires ON clients (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS app_rows (tbl text COLLATE "C", key bytea, value bytea NOT NULL,
    PRIMARY KEY (tbl, key));
CREATE TABLE IF NOT EXISTS leases (part integer PRIMARY KEY, owner text,
    epoch bigint NOT NULL DEFAULT 0, expires_at timestamptz);
CREATE OR REPLACE FUNCTION gf_fence(parts integer[], epochs bigint[], who text)
RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fence$
DECLARE bad integer[];
BEGIN
    -- Shared, per partition, in order: a takeover takes the same locks exclusively
    -- (greenflow.cluster.leases), so it never overlaps this commit (a partition whose
    -- lock is busy waits for its next round), and a commit that starts after it reads
    -- the new epoch below. Advisory locks live in memory: unlike row locks on the lease
    -- rows they write nothing.
    PERFORM pg_advisory_xact_lock_shared(hashtext('greenflow-fence:' || current_schema()), s.p)
       FROM (SELECT u.p FROM unnest(parts) AS u(p) ORDER BY u.p) AS s;
    SELECT array_agg(w.p ORDER BY w.p) INTO bad
      FROM unnest(parts, epochs) AS w(p, e) LEFT JOIN leases l ON l.part = w.p
     WHERE l.part IS NULL OR l.owner IS DISTINCT FROM who OR l.epoch <> w.e;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'partitions % are not owned by % at the epochs it holds', bad, who
              USING ERRCODE = 'GF409';
    END IF;
END
$fence$;
"""

# ---------------------------------------------------------------------------- statements
# A dropped flow's rows, and the soft locks tagged with its id (``vault_locks`` rows whose
# value is the flow id, a NUL, then when it was taken): a run of the flow that never
# committed (its worker killed, or fenced off its partition) may have taken locks that the
# worker ending the flow never read, and they would hold their states until the stale-lock
# sweep.
_DROP = """WITH d AS (SELECT unnest(%b::text[]) AS f),
 a AS (DELETE FROM flows USING d WHERE fid = d.f), b AS (DELETE FROM logic USING d WHERE fid = d.f),
 c AS (DELETE FROM journal USING d WHERE fid = d.f), e AS (DELETE FROM frames USING d WHERE fid = d.f),
 g AS (DELETE FROM wake USING d WHERE fid = d.f), h AS (DELETE FROM inbox USING d WHERE fid = d.f),
 i AS (DELETE FROM app_rows r USING d WHERE r.tbl = 'vault_locks'
       AND position(convert_to(d.f, 'UTF8') || '\\x00'::bytea IN r.value) = 1)
 DELETE FROM payloads USING d WHERE fid = d.f"""
_DEL_INBOX = ("DELETE FROM inbox WHERE (fid, sid, seq) IN "
              "(SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[]))")
_DEL_OUTBOX = ("DELETE FROM outbox WHERE (peer, sid, to_responder, seq) IN "
               "(SELECT * FROM unnest(%b::text[], %b::text[], %b::boolean[], %b::bigint[]))")
_DEL_TIMER = ("DELETE FROM timers WHERE (deadline_us, fid) IN "
              "(SELECT * FROM unnest(%b::bigint[], %b::text[]))")
_DEL_WAKE = "DELETE FROM wake WHERE fid = ANY(%b::text[])"
_DEL_APP = ("DELETE FROM app_rows WHERE (tbl, key) IN "
            "(SELECT * FROM unnest(%b::text[], %b::bytea[]))")
_PUT_LOGIC = ("INSERT INTO logic (fid, part, blob) SELECT * FROM unnest(%b::text[], "
              "%b::smallint[], %b::bytea[]) ON CONFLICT (fid) DO UPDATE SET blob = EXCLUDED.blob")
_PUT_HEADER_CHECKED = (
    "INSERT INTO flows (fid, part, header) SELECT t.f, t.p, t.h FROM unnest(%b::text[], "
    "%b::smallint[], %b::bytea[]) AS t(f, p, h) WHERE EXISTS (SELECT 1 FROM logic l WHERE "
    "l.fid = t.f) ON CONFLICT (fid) DO UPDATE SET header = EXCLUDED.header")
_PUT_HEADER = ("INSERT INTO flows (fid, part, header) SELECT * FROM unnest(%b::text[], "
               "%b::smallint[], %b::bytea[]) ON CONFLICT (fid) DO UPDATE SET header = EXCLUDED.header")
_PUT_JOURNAL = ("INSERT INTO journal (fid, start, part, chunk) SELECT * FROM unnest(%b::text[], "
                "%b::integer[], %b::smallint[], %b::bytea[]) "
                "ON CONFLICT (fid, start) DO UPDATE SET chunk = EXCLUDED.chunk")
_PUT_FRAMES = ("INSERT INTO frames (fid, part, blob) SELECT * FROM unnest(%b::text[], "
               "%b::smallint[], %b::bytea[]) ON CONFLICT (fid) DO UPDATE SET blob = EXCLUDED.blob")
_PUT_WAKE = ("INSERT INTO wake (fid, part) SELECT * FROM unnest(%b::text[], %b::smallint[]) "
             "ON CONFLICT (fid) DO NOTHING")
_PUT_INBOX = ("INSERT INTO inbox (fid, sid, seq, part, data) SELECT * FROM unnest(%b::text[], "
              "%b::text[], %b::bigint[], %b::smallint[], %b::bytea[]) "
              "ON CONFLICT (fid, sid, seq) DO UPDATE SET data = EXCLUDED.data")
_PUT_PAYLOAD = _PUT_INBOX.replace("inbox", "payloads")
_PUT_OUTBOX = ("INSERT INTO outbox (peer, sid, to_responder, seq, part, data) SELECT * FROM "
               "unnest(%b::text[], %b::text[], %b::boolean[], %b::bigint[], %b::smallint[], "
               "%b::bytea[]) ON CONFLICT (peer, sid, to_responder, seq) "
               "DO UPDATE SET data = EXCLUDED.data")
_PUT_ROUTE = ("INSERT INTO routes (peer, sid, peer_role, value, expires) SELECT * FROM "
              "unnest(%b::text[], %b::text[], %b::smallint[], %b::bytea[], %b::float8[]) "
              "ON CONFLICT (peer, sid, peer_role) DO UPDATE SET value = EXCLUDED.value, "
              "expires = EXCLUDED.expires")
_PUT_TIMER = ("INSERT INTO timers (deadline_us, fid, part) SELECT * FROM unnest(%b::bigint[], "
              "%b::text[], %b::smallint[]) ON CONFLICT DO NOTHING")
_PUT_RESULT = ("INSERT INTO results (fid, part, record, expires) SELECT * FROM "
               "unnest(%b::text[], %b::smallint[], %b::bytea[], %b::float8[]) ON CONFLICT (fid) "
               "DO UPDATE SET record = EXCLUDED.record, expires = EXCLUDED.expires")
_PUT_CLIENT = ("INSERT INTO clients (client_id, fid, expires) SELECT t.c, t.f, NULL FROM "
               "unnest(%b::text[], %b::text[]) AS t(c, f) ON CONFLICT (client_id) "
               "DO UPDATE SET fid = EXCLUDED.fid, expires = NULL")
_EXPIRE_CLIENT = ("UPDATE clients SET expires = t.e FROM unnest(%b::text[], %b::float8[]) "
                  "AS t(c, e) WHERE client_id = t.c")
_PUT_APP = ("INSERT INTO app_rows (tbl, key, value) SELECT * FROM unnest(%b::text[], "
            "%b::bytea[], %b::bytea[]) ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value")


# The commit's steps, in the order that keeps a batch's semantics: drops, deletes, checked
# headers (against what was stored before this batch's start records), start records,
# everything else. Each runs only when the batch has rows for it.
_STEPS: list[tuple[str, str]] = [
    ("drop", _DROP), ("del_inbox", _DEL_INBOX), ("del_outbox", _DEL_OUTBOX),
    ("del_timer", _DEL_TIMER), ("del_wake", _DEL_WAKE), ("del_app", _DEL_APP),
    ("header_checked", _PUT_HEADER_CHECKED), ("logic", _PUT_LOGIC), ("header", _PUT_HEADER),
    ("journal", _PUT_JOURNAL), ("frames", _PUT_FRAMES), ("wake", _PUT_WAKE),
    ("inbox", _PUT_INBOX), ("payload", _PUT_PAYLOAD), ("outbox", _PUT_OUTBOX),
    ("route", _PUT_ROUTE), ("timer", _PUT_TIMER), ("result", _PUT_RESULT),
    ("client", _PUT_CLIENT), ("expire_client", _EXPIRE_CLIENT), ("app", _PUT_APP),
]
_PLACEHOLDER = re.compile(r"%b::([a-z0-9]+)\[\]")
#: step -> (index of its first argument in gf_commit's array arguments, their SQL types)
_ARGS: dict[str, tuple[int, list[str]]] = {}
_n = 0
for _name, _sql in _STEPS:
    _types = _PLACEHOLDER.findall(_sql)
    _ARGS[_name] = (_n, _types)
    _n += len(_types)
_NARGS = _n


# With a channel (clustered workers): one NOTIFY per commit that delivered into an inbox,
# started a flow or set a wake flag, naming those rows' partitions ("3,17"), delivered to
# listeners when the transaction commits.
_NOTIFY = (
    "IF notify_channel IS NOT NULL THEN\n"
    "    PERFORM pg_notify(notify_channel, string_agg(DISTINCT p::text, ',')) FROM (\n"
    f"        SELECT unnest(a{_ARGS['inbox'][0] + 3}) AS p UNION ALL\n"
    f"        SELECT unnest(a{_ARGS['logic'][0] + 1}) UNION ALL\n"
    f"        SELECT unnest(a{_ARGS['wake'][0] + 1})) AS w HAVING count(*) > 0;\n"
    "END IF;\n")


def _commit_function() -> str:
    """``gf_commit``: a whole batch in one statement (one round trip, one implicit
    transaction), its arrays NULL for steps the batch has no rows for. Returns the flow
    ids whose checked header was refused (no start record)."""
    params = ["fence_parts integer[]", "fence_epochs bigint[]", "fence_owner text",
              "notify_channel text"]
    body = ["IF fence_parts IS NOT NULL THEN",
            "    PERFORM gf_fence(fence_parts, fence_epochs, fence_owner);", "END IF;"]
    for name, stmt in _STEPS:
        first, types = _ARGS[name]
        names = [f"a{first + i}" for i in range(len(types))]
        params += [f"{n} {t}[]" for n, t in zip(names, types)]
        it = iter(names)
        sql_ = _PLACEHOLDER.sub(lambda m: next(it), stmt)
        body.append(f"IF {names[0]} IS NOT NULL THEN")
        if name == "header_checked":
            body.append(f"    SELECT array_agg(t.f) INTO refused FROM unnest({names[0]}) AS t(f) "
                        "WHERE NOT EXISTS (SELECT 1 FROM logic l WHERE l.fid = t.f);")
        body += [f"    {sql_};", "END IF;"]
    return ("CREATE OR REPLACE FUNCTION gf_commit(" + ", ".join(params) + ")\n"
            # Generic plans: a statement over unnest(array arguments) never gets a better
            # plan from the arrays' values, and PL/pgSQL would otherwise plan each
            # statement again at every call (about 50 us of server CPU each). No
            # sequential scans: every statement here finds its rows by primary key, but
            # tables that churn (a row per flow in flight, deleted when it ends) often
            # have statistics saying they are nearly empty, and a scan of one full of
            # dead rows at every commit cost more than the rest of the commit.
            "RETURNS text[] LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan "
            "SET enable_seqscan = off "
            "AS $commit$\nDECLARE refused text[];\nBEGIN\n"
            + "\n".join(body) + "\n" + _NOTIFY + "RETURN refused;\nEND\n$commit$;\n")


_COMMIT_FUNCTION = _commit_function()
_FUNCTION_KEY = "greenflow.commit-function"
# Over the schema's DDL too: a store made by a version with other functions (gf_fence)
# has them replaced when it is opened.
_FUNCTION_HASH = hashlib.sha256((_SCHEMA_SQL + _COMMIT_FUNCTION).encode()).hexdigest().encode()

# Sent by a RawCursor ($n placeholders): psycopg does not parse a query this long each time.
_COMMIT_CALL = ("SELECT gf_commit($1::integer[], $2::bigint[], $3::text, $4::text, " + ", ".join(
    f"${5 + i}::{t}[]" for i, t in enumerate(
        t for _, (_, ts) in sorted(_ARGS.items(), key=lambda kv: kv[1][0]) for t in ts)) + ")")


def _msg(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return primary or str(exc).strip() or type(exc).__name__
