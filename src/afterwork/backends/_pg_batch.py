"""The PostgreSQL store's worker path in few statements: claim, begin and finish in batches.

A drain is bound by round trips and commits (each durable commit waits for a WAL flush),
not by the work a row needs. So, for claims without flow limits or rates:

* a **claim** is one statement: it picks due rows (``queued``, and ``scheduled`` rows whose
  time has come) in ready order with ``FOR UPDATE SKIP LOCKED``, sets them running with a
  new lease and fencing token, returns them, and promotes the due delayed rows it left to
  ``queued`` (the set-based ``life.promote``; one statement cannot update a row twice, so
  the rows it claims are taken from ``scheduled`` directly). Its commit is asynchronous
  (``synchronous_commit`` off for that one transaction): a claim lost in a server crash is
  harmless, because nothing runs before the attempt's begin, whose durable commit flushes
  the WAL, claim included, or finds the lease gone (fencing) and runs nothing;
* the **begins and finishes** gathered in one turn (group commit) are one statement
  (``_pg_flush``, which also holds the details):
  fenced set-based updates from arrays (``unnest``), the rate groups' start stamps, the
  events of the rows that applied, appended under the events lock (see ``_pg_events``),
  and one ``NOTIFY`` whose payload is the newest event id (so an idle event pump needs
  not read it back). The fence is ``token = <the lease's>``: a row has a token exactly
  while it is running (a CHECK of the table). The outcome of each finish is computed by
  ``_lifecycle.finish`` from the job as this process last wrote it (its claim, begin,
  heartbeats and progress); the fence proves nobody else changed it but for
  ``cancel_requested``, which a finish clears anyway.
"""

from __future__ import annotations

from ._pg_rows import COLS

__all__ = ("J_COLS", "claim_sql", "heartbeat_sql")

#: The job columns, qualified by the alias ``j`` (for ``RETURNING`` after a join).
J_COLS = ", ".join(f"j.{name.strip()}" for name in COLS.split(","))


def claim_sql(jobs: str, schema: str, where: str) -> str:
    """One claim: ``$1`` worker, ``$2`` now, ``$3`` lease ttl, ``$4`` limit; ``where``'s
    own parameters from ``$5`` on."""
    order = "ORDER BY priority DESC, due_ms, id LIMIT $4"
    unpaused = f"queue <> ALL(ARRAY(SELECT queue FROM {schema}.paused))"
    pick = f"SELECT id, priority, due_ms FROM {jobs} WHERE {where} AND {unpaused}"
    return (
        f"WITH picked AS MATERIALIZED (SELECT id FROM ("
        f"SELECT * FROM ({pick} AND status = 'queued' {order} FOR UPDATE SKIP LOCKED) q"
        f" UNION ALL SELECT * FROM ({pick} AND status = 'scheduled' AND run_at <= $2"
        f" {order} FOR UPDATE SKIP LOCKED) d {order}) c),"
        # The due delayed jobs this claim leaves become queued (``life.promote``).
        f" promoted AS (UPDATE {jobs} SET status = 'queued' WHERE id IN (SELECT id FROM {jobs}"
        " WHERE status = 'scheduled' AND run_at <= $2 AND id NOT IN (SELECT id FROM picked)"
        " FOR UPDATE SKIP LOCKED)),"
        " quick AS (SELECT set_config('synchronous_commit', 'off', true))"
        f" UPDATE {jobs} j SET status = 'running', worker = $1, lease_expires_at = $2 + $3,"
        " started_at = NULL, cancel_requested = false, lease_ttl = $3,"
        " token = md5(random()::text || clock_timestamp()::text || j.id)"
        f" FROM picked, quick WHERE j.id = picked.id RETURNING {J_COLS}, j.token"
    )


def heartbeat_sql(jobs: str) -> str:
    """Renew the leases ``($3 ids, $4 tokens)`` still held: until ``$1``, ttl ``$2``."""
    return (
        f"UPDATE {jobs} j SET lease_expires_at = $1, lease_ttl = $2"
        " FROM unnest($3::text[], $4::text[]) AS v(id, token)"
        " WHERE j.id = v.id AND j.token = v.token"
        " RETURNING j.id, j.cancel_requested"
    )
