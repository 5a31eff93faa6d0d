"""The SQL of the clustered vault (`greenflow.ledger.vault_backend_pg`): its snapshot and
change-log reads, the change log's triggers, lock and stale-lock statements."""

# One statement, one snapshot: every unconsumed state's key (36 bytes each, in one value:
# no row per state to build), every lock, and the snapshot itself (what the next,
# incremental, read starts from).
SNAPSHOT = ("SELECT 's', string_agg(key, ''::bytea), NULL FROM app_rows "
             "WHERE tbl = 'vault_states' "
             "UNION ALL SELECT 'l', key, value FROM app_rows WHERE tbl = 'vault_locks' "
             "UNION ALL SELECT 'x', convert_to(pg_current_snapshot()::text, 'UTF8'), NULL")
# What changed since snapshot %(s)s: the keys of ``vault_states`` and ``vault_locks``
# rows written by transactions that had not committed when it was taken and have now,
# each with its value now (NULL: deleted), and the new snapshot.
CHANGES = """WITH c AS (SELECT DISTINCT tbl, key FROM vault_changes
   WHERE xid >= pg_snapshot_xmin(%(s)s::pg_snapshot)
     AND NOT pg_visible_in_snapshot(xid, %(s)s::pg_snapshot))
SELECT CASE c.tbl WHEN 'vault_states' THEN 's' ELSE 'l' END, c.key, a.value
  FROM c LEFT JOIN LATERAL (SELECT value FROM app_rows WHERE tbl = c.tbl AND key = c.key LIMIT 1) a
    ON true
UNION ALL SELECT 'x', convert_to(pg_current_snapshot()::text, 'UTF8'), NULL"""
# Every lookup of ``app_rows`` by key here is a LATERAL subquery with LIMIT 1 (so it is
# not flattened into a join): one primary-key lookup per row whatever the planner's
# statistics say. As joins, the cached generic plans scanned the whole of ``app_rows``
# each time (estimated when it was small): ~0.6 ms a statement at a few thousand rows,
# growing with the vault.
# The change log: one row per write of a vault state or lock row, by triggers, so that
# whatever writes them (a group commit, a lock's own transaction, the stale-lock sweep)
# is seen (the function names its schema: a writer's search path may not), with what the
# write was (``op``: I inserted, U rewritten, D deleted; the feeds read it). Rows older than `_CHANGES_KEPT_S` are deleted; a worker that has not read the
# log for `_FULL_AFTER_S` reads everything again.
CHANGE_LOG = """CREATE TABLE IF NOT EXISTS vault_changes (
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(), tbl text COLLATE "C" NOT NULL,
    key bytea NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp(), op "char");
DO $op$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{schema}.vault_changes'::regclass
                   AND attname = 'op' AND NOT attisdropped) THEN
        ALTER TABLE {schema}.vault_changes ADD COLUMN op "char";
    END IF;
END $op$;
CREATE INDEX IF NOT EXISTS vault_changes_xid ON vault_changes (xid);
CREATE OR REPLACE FUNCTION gf_vault_change() RETURNS trigger LANGUAGE plpgsql AS $change$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO {schema}.vault_changes (tbl, key, op) VALUES (OLD.tbl, OLD.key, 'D');
    ELSE
        INSERT INTO {schema}.vault_changes (tbl, key, op) VALUES (NEW.tbl, NEW.key, left(TG_OP, 1));
    END IF;
    RETURN NULL;
END
$change$;
CREATE OR REPLACE TRIGGER gf_vault_written AFTER INSERT OR UPDATE ON app_rows FOR EACH ROW
    WHEN (NEW.tbl IN ('vault_states', 'vault_locks')) EXECUTE FUNCTION gf_vault_change();
CREATE OR REPLACE TRIGGER gf_vault_deleted AFTER DELETE ON app_rows FOR EACH ROW
    WHEN (OLD.tbl IN ('vault_states', 'vault_locks')) EXECUTE FUNCTION gf_vault_change();
"""
FETCH = "SELECT key, value FROM app_rows WHERE tbl = 'vault_states' AND key = ANY(%s)"
# The lock rows a select inserts (in key order, so concurrent selects never deadlock):
# only for states still stored, or recorded by the flow's own pending commit.
_TAKE_LOCKS = """WITH want AS (SELECT k FROM unnest(%(keys)s::bytea[]) AS k ORDER BY k),
ins AS (INSERT INTO app_rows (tbl, key, value)
        SELECT 'vault_locks', w.k, %(tag)s::bytea
               || int8send((extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
          FROM want w
         WHERE w.k = ANY(%(pending)s::bytea[])
            OR EXISTS (SELECT 1 FROM app_rows s WHERE s.tbl = 'vault_states' AND s.key = w.k)
        ON CONFLICT (tbl, key) DO NOTHING RETURNING key)"""
LOCK = _TAKE_LOCKS + """
SELECT key FROM ins
UNION ALL
SELECT key FROM app_rows WHERE tbl = 'vault_locks' AND key = ANY(%(keys)s::bytea[])
   AND substring(value FROM 1 FOR %(n)s) = %(tag)s::bytea"""
# Locks of flows that never committed a checkpoint, taken more than %s seconds ago.
STALE = """DELETE FROM app_rows a WHERE a.tbl = 'vault_locks' AND length(a.value) > 9
   AND ('x' || encode(substring(a.value FROM length(a.value) - 7), 'hex'))::bit(64)::bigint
       < (extract(epoch FROM clock_timestamp()) - %s) * 1000000
   AND NOT EXISTS (SELECT 1 FROM flows f WHERE f.fid = convert_from(
       substring(a.value FROM 1 FOR length(a.value) - 9), 'UTF8'))
RETURNING key"""
PREFETCH = ("SELECT u.t, u.k, a.value FROM unnest(%s::text[], %s::bytea[]) AS u(t, k) "
            "CROSS JOIN LATERAL (SELECT value FROM app_rows WHERE tbl = u.t AND key = u.k LIMIT 1) a")
# `LOCK` and `CHANGES` in one statement (one round trip on the flow's thread): the lock
# rows a select inserts, and what changed since snapshot %(s)s, with the new snapshot.
# 'k' rows are the keys now locked by the tag; the rest as in `CHANGES`. The change rows
# are read in the statement's snapshot, which does not see its own inserts: they come
# with the next read (and are this worker's locks already).
LOCK_AND_CHANGES = _TAKE_LOCKS + """,
c AS (SELECT DISTINCT tbl, key FROM vault_changes
   WHERE xid >= pg_snapshot_xmin(%(s)s::pg_snapshot)
     AND NOT pg_visible_in_snapshot(xid, %(s)s::pg_snapshot))
SELECT 'k', key, NULL::bytea FROM ins
UNION ALL
SELECT 'k', key, NULL FROM app_rows WHERE tbl = 'vault_locks' AND key = ANY(%(keys)s::bytea[])
   AND substring(value FROM 1 FOR %(n)s) = %(tag)s::bytea
UNION ALL
SELECT CASE c.tbl WHEN 'vault_states' THEN 's' ELSE 'l' END, c.key, a.value
  FROM c LEFT JOIN LATERAL (SELECT value FROM app_rows WHERE tbl = c.tbl AND key = c.key LIMIT 1) a
    ON true
UNION ALL SELECT 'x', convert_to(pg_current_snapshot()::text, 'UTF8'), NULL"""

# The feeds' read (`greenflow.ledger.vault_feed_pg`): the states inserted ('I') and deleted
# ('D') by transactions that committed since snapshot %(s)s, in the order they were
# written, each with its value now (an insert: the state, NULL once consumed since; a
# delete: the consumed marker, whose first 32 bytes name the consuming transaction),
# and the new snapshot. A row rewritten ('U': the same transaction recorded again, by
# another worker) changes nothing a feed reports.
FEED_CHANGES = """SELECT c.xid::text, c.op::text, c.key, s.value, d.value, c.at FROM (
    SELECT xid, op, key, at FROM vault_changes
     WHERE tbl = 'vault_states' AND op IN ('I', 'D') AND xid >= pg_snapshot_xmin(%(s)s::pg_snapshot)
       AND NOT pg_visible_in_snapshot(xid, %(s)s::pg_snapshot)) c
  LEFT JOIN LATERAL (SELECT value FROM app_rows WHERE tbl = 'vault_states' AND key = c.key
                     LIMIT 1) s ON c.op = 'I'
  LEFT JOIN LATERAL (SELECT value FROM app_rows WHERE tbl = 'vault_consumed' AND key = c.key
                     LIMIT 1) d ON c.op = 'D'
UNION ALL SELECT 'x', NULL, convert_to(pg_current_snapshot()::text, 'UTF8'), NULL, NULL, NULL"""
# Recorded transactions by id (a consumed state's content, a transaction's notary).
FEED_TXS = ("SELECT u.k, a.value FROM unnest(%s::bytea[]) AS u(k) CROSS JOIN LATERAL "
            "(SELECT value FROM app_rows WHERE tbl = 'vault_txs' AND key = u.k LIMIT 1) a")
