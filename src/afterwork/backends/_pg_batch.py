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
* the **begins and finishes** gathered in one turn (group commit) are one statement:
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

from dataclasses import dataclass, field
from typing import Any

from .._lifecycle import Change
from ..job import WAITING_STATUSES, Job
from ._pg_rows import COLS
from ._sqlite_rows import _column

__all__ = ("Batch", "claim_sql", "flush_sql", "heartbeat_sql")

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


def flush_sql(schema: str) -> str:
    """Begins, finishes and their events in one statement (parameters: ``Batch.args``).

    Its numbers travel as ``text[]``, cast in the statement: asyncpg knows ``text[]`` (and
    ``text``) without asking, but looks up ``int[]`` and ``float8[]`` with a catalog query
    (and turns JIT off and on around it) the first time each connection prepares a
    statement that has them, about 10 ms before a worker's first job could start.
    """
    jobs = f"{schema}.jobs"
    return (
        f"WITH f AS (UPDATE {jobs} j SET status = v.status, attempts = v.attempts,"
        " run_at = v.run_at, finished_at = v.finished_at, result = v.result, error = v.error,"
        " timeline = v.timeline, expires_at = v.expires_at, worker = NULL,"
        " lease_expires_at = NULL, token = NULL, cancel_requested = false"
        " FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]::int[],"
        " $6::text[]::float8[], $7::text[]::float8[], $8::text[], $9::text[], $10::text[],"
        " $11::text[]::float8[])"
        " AS v(id, token, status, attempts, run_at, finished_at, result, error, timeline,"
        " expires_at)"
        " WHERE j.id = v.id AND j.token = v.token RETURNING j.id),"
        f" b AS (UPDATE {jobs} j SET attempts = j.attempts + 1, started_at = $1"
        " FROM unnest($12::text[], $13::text[]) AS v(id, token)"
        " WHERE j.id = v.id AND j.token = v.token"
        " AND j.started_at IS NULL RETURNING j.id, j.cancel_requested),"
        f" st AS (UPDATE {schema}.starts SET at = $1, pending = false"
        " WHERE pending AND job_id IN (SELECT id FROM b)),"
        " ok AS (SELECT id, 'f' AS op FROM f UNION ALL SELECT id, 'b' FROM b),"
        " lk AS (SELECT pg_advisory_xact_lock(hashtext($14)) FROM"
        " (SELECT count(*) AS n FROM ok) c WHERE c.n > 0),"
        f" ev AS (INSERT INTO {schema}.events (kind, job_id, task, queue, status, attempts,"
        " at, progress, message)"
        " SELECT e.kind, e.job_id, e.task, e.queue, e.status, e.attempts, $1, e.progress,"
        " e.message FROM unnest($15::text[], $16::text[], $17::text[], $18::text[],"
        " $19::text[], $20::text[]::int[], $21::text[]::float8[], $22::text[], $23::text[])"
        " WITH ORDINALITY AS e(kind, job_id, task, queue, status, attempts, progress,"
        " message, op, n)"
        " JOIN ok ON ok.id = e.job_id AND ok.op = e.op CROSS JOIN lk ORDER BY e.n"
        " RETURNING id),"
        " top AS (SELECT max(id) AS id FROM ev)"
        " SELECT (SELECT array_agg(id) FROM f) AS finished,"
        " (SELECT array_agg(id) FROM b) AS begun,"
        " (SELECT array_agg(id) FROM b WHERE cancel_requested) AS asked, top.id AS newest,"
        " CASE WHEN top.id IS NOT NULL THEN pg_notify($24, top.id::text) END AS told,"
        " CASE WHEN $25 AND EXISTS (SELECT 1 FROM f) THEN pg_notify($26, '') END AS woke"
        " FROM top"
    )


@dataclass
class Batch:
    """The begins and finishes of one flush, as the arrays of :func:`flush_sql`."""

    now: float
    finished: list[tuple[str, str, Change]] = field(default_factory=list)
    """``(job id, token, change)`` per finish."""
    begun: list[tuple[str, str, Change]] = field(default_factory=list)
    wake: bool = False

    def finish(self, token: str, change: Change) -> None:
        self.finished.append((change.job.id, token, change))
        if change.job.status in WAITING_STATUSES:
            self.wake = True

    def begin(self, token: str, change: Change) -> None:
        self.begun.append((change.job.id, token, change))

    def args(self, lock: str, events: str, work: str) -> list[Any]:
        f = self.finished
        done = [c.job for _, _, c in f]
        kinds: list[list[Any]] = [[] for _ in range(9)]
        for op, rows in (("f", f), ("b", self.begun)):
            for _, _, change in rows:
                job: Job = change.job
                for column, value in zip(
                    kinds,
                    (
                        change.event,
                        job.id,
                        job.task,
                        job.queue,
                        job.status.value,
                        job.attempts,
                        job.progress,
                        change.message,
                        op,
                    ),
                    strict=True,
                ):
                    column.append(value)
        kinds[5] = [_text(n) for n in kinds[5]]  # attempts
        kinds[6] = [_text(n) for n in kinds[6]]  # progress
        return [
            self.now,
            [i for i, _, _ in f],
            [t for _, t, _ in f],
            [j.status.value for j in done],
            [str(j.attempts) for j in done],
            [repr(j.run_at) for j in done],
            [_text(j.finished_at) for j in done],
            [_column("result", j.result) for j in done],
            [_column("error", j.error) for j in done],
            [_column("timeline", j.timeline) for j in done],
            [_text(_expires(j)) for j in done],
            [i for i, _, _ in self.begun],
            [t for _, t, _ in self.begun],
            lock,
            *kinds,
            events,
            self.wake,
            work,
        ]


def _text(number: float | None) -> str | None:
    """A number as ``float8in`` / ``int4in`` read it back exactly (``repr``: the shortest
    text that round-trips)."""
    return None if number is None else repr(number)


def _expires(job: Job) -> float | None:
    if job.finished_at is None or job.result_ttl is None:
        return None
    return job.finished_at + job.result_ttl
