"""The PostgreSQL store's claim that also begins the jobs a worker starts at once.

An idle worker used to start a job in two round trips after the notification: the claim
(``_pg_batch.claim_sql``, committed asynchronously), then the begin (durable, in the next
group commit). When the worker says how many of the claimed jobs it will start at once
(``claim(begin=n)``: its free slots), this statement claims as ``claim_sql`` does and
begins the first ``n`` in ready order in the same statement: their attempt counted, their
start stamped, their ``started`` events appended under the events lock, one ``NOTIFY`` of
the newest event id, and a durable commit when any began (asynchronous otherwise, as a
claim). A job that recovered from a dead worker runs alone (the worker's admission), so
when one is among the first ``n`` none is begun here.

What the worker sees does not change: the claims come back as claims (not started), its
``begin`` returns the begun jobs without a round trip, and a claim released or cancelled
before that ``begin`` (a worker stopping while the claim was in flight, a prefetched job
cancelled) is taken back to the job as it was claimed: no attempt, no timeline entry
(``WorkerPathMixin._unbegin``).
"""

from __future__ import annotations

from ._pg_batch import J_COLS

__all__ = ("claim_begin_sql",)


def claim_begin_sql(jobs: str, schema: str, where: str) -> str:
    """``$1`` worker, ``$2`` now, ``$3`` lease ttl, ``$4`` limit, ``$5`` jobs to begin,
    ``$6`` the events lock's name, ``$7`` the events channel; ``where``'s own parameters
    from ``$8`` on. Rows: the job columns, ``token``, ``began``, ``rn``, ``newest`` (event
    id) and ``next_due`` (the earliest future ``run_at``); one row of nulls but for the
    last two when nothing was claimed."""
    order = "ORDER BY priority DESC, due_ms, id"
    unpaused = f"queue <> ALL(ARRAY(SELECT queue FROM {schema}.paused))"
    pick = f"SELECT id, priority, due_ms, recoveries FROM {jobs} WHERE {where} AND {unpaused}"
    return (
        "WITH picked AS MATERIALIZED (SELECT id, recoveries,"
        f" row_number() OVER ({order}) AS rn FROM ("
        f"SELECT * FROM ({pick} AND status = 'queued' {order} LIMIT $4 FOR UPDATE SKIP LOCKED) q"
        f" UNION ALL SELECT * FROM ({pick} AND status = 'scheduled' AND run_at <= $2"
        f" {order} LIMIT $4 FOR UPDATE SKIP LOCKED) d {order} LIMIT $4) c),"
        # The first $5 begin, unless one of them must run alone.
        " go AS MATERIALIZED (SELECT id FROM picked WHERE rn <= $5 AND NOT EXISTS"
        " (SELECT 1 FROM picked p WHERE p.rn <= $5 AND p.recoveries > 0)),"
        # The due delayed jobs this claim leaves become queued (``life.promote``).
        f" promoted AS (UPDATE {jobs} SET status = 'queued' WHERE id IN (SELECT id FROM {jobs}"
        " WHERE status = 'scheduled' AND run_at <= $2 AND id NOT IN (SELECT id FROM picked)"
        " FOR UPDATE SKIP LOCKED)),"
        f" up AS (UPDATE {jobs} j SET status = 'running', worker = $1,"
        " lease_expires_at = $2 + $3, cancel_requested = false, lease_ttl = $3,"
        " started_at = CASE WHEN go.id IS NULL THEN NULL ELSE $2 END,"
        " attempts = j.attempts + CASE WHEN go.id IS NULL THEN 0 ELSE 1 END,"
        " token = md5(random()::text || clock_timestamp()::text || j.id)"
        " FROM picked LEFT JOIN go ON go.id = picked.id WHERE j.id = picked.id"
        f" RETURNING {J_COLS}, j.token, go.id IS NOT NULL AS began, picked.rn),"
        # A pending start of a rate group (a claim with limits, released) is stamped.
        f" st AS (UPDATE {schema}.starts SET at = $2, pending = false"
        " WHERE pending AND job_id IN (SELECT id FROM up WHERE began)),"
        " lk AS MATERIALIZED (SELECT pg_advisory_xact_lock(hashtext($6)) FROM"
        " (SELECT count(*) AS n FROM up WHERE began) c WHERE c.n > 0),"
        f" ev AS (INSERT INTO {schema}.events (kind, job_id, task, queue, status, attempts,"
        " at, progress, message)"
        " SELECT 'started', u.id, u.task, u.queue, 'running', u.attempts, $2, u.progress, NULL"
        " FROM up u CROSS JOIN lk WHERE u.began ORDER BY u.rn RETURNING id),"
        " top AS MATERIALIZED (SELECT max(id) AS id FROM ev),"
        " told AS MATERIALIZED (SELECT count(pg_notify($7, id::text)) AS n FROM top"
        " WHERE id IS NOT NULL),"
        # Durable when a job began (as a begin's commit), asynchronous otherwise (a claim).
        " quick AS MATERIALIZED (SELECT set_config('synchronous_commit',"
        " CASE WHEN EXISTS (SELECT 1 FROM up WHERE began)"
        " THEN current_setting('synchronous_commit') ELSE 'off' END, true) AS s)"
        # One row even when nothing was claimed: the newest event id, and when the next
        # delayed job falls due (an idle worker waits for that, or a notification).
        " SELECT u.*, top.id AS newest,"
        f" (SELECT min(run_at) FROM {jobs} WHERE status = 'scheduled' AND run_at > $2)"
        " AS next_due FROM top CROSS JOIN told CROSS JOIN quick LEFT JOIN up u ON true"
        " ORDER BY u.rn"
    )
