"""The PostgreSQL store's begins and finishes of one group commit, in one statement.

As ``_pg_batch.flush_sql`` (fenced set-based updates, the rate groups' start stamps, the
events of the rows that applied under the events lock, one ``NOTIFY`` of the newest id),
with less for the worker to encode per job: the job ids travel as ``text[]`` (they drive
the join to ``jobs``, by its primary key: an array parameter gives the planner a row
estimate it plans an index join for), every other column of the finishes as one JSON text
(an array of arrays, matched to its id by position), and the events are built from the
updated rows instead of being sent. asyncpg encodes an array element by element (an
``isinstance`` test against an abstract class each); one JSON text is one C encoder call.
The rows are read as ``jsonb`` (parsed once, each field then found directly). A stored
JSON column (result, error, timeline) travels as a string holding its JSON text, so it
is stored exactly as the store's encoder made it (``jsonb`` would reorder and respace a
nested object, and PostgreSQL refuses a nested ``\\u0000`` escape).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from .._lifecycle import Change
from ..job import WAITING_STATUSES, timeline_to_json
from ._sqlite_rows import dumps

__all__ = ("Flush", "flush_sql")


@lru_cache(maxsize=16)
def flush_sql(schema: str) -> str:
    """Begins, finishes and their events in one statement (parameters: ``Flush.args``)."""
    jobs = f"{schema}.jobs"
    return (
        "WITH fr AS MATERIALIZED (SELECT e->>0 AS t, e->>1 AS s, (e->>2)::int AS a,"
        " (e->>3)::float8 AS ra, (e->>4)::float8 AS fa, e->>5 AS re, e->>6 AS er, e->>7 AS tl,"
        " (e->>8)::float8 AS ex, e->>9 AS k, n"
        " FROM jsonb_array_elements($3::jsonb) WITH ORDINALITY AS x(e, n)),"
        f" f AS (UPDATE {jobs} j SET status = r.s, attempts = r.a, run_at = r.ra,"
        " finished_at = r.fa, result = r.re, error = r.er, timeline = r.tl, expires_at = r.ex,"
        " worker = NULL, lease_expires_at = NULL,"
        " token = NULL, cancel_requested = false"
        " FROM unnest($2::text[]) WITH ORDINALITY AS v(id, n) JOIN fr r ON r.n = v.n"
        " WHERE j.id = v.id AND j.token = r.t"
        " RETURNING j.id, v.n, r.k, j.task, j.queue, j.status, j.attempts, j.progress),"
        f" b AS (UPDATE {jobs} j SET attempts = j.attempts + 1, started_at = $1"
        " FROM unnest($4::text[], $5::text[]) WITH ORDINALITY AS v(id, token, n)"
        " WHERE j.id = v.id AND j.token = v.token AND j.started_at IS NULL"
        " RETURNING j.id, v.n, j.cancel_requested, j.task, j.queue, j.attempts, j.progress),"
        f" st AS (UPDATE {schema}.starts SET at = $1, pending = false"
        " WHERE pending AND job_id IN (SELECT id FROM b)),"
        " lk AS MATERIALIZED (SELECT pg_advisory_xact_lock(hashtext($6)) FROM"
        " (SELECT (SELECT count(*) FROM f) + (SELECT count(*) FROM b) AS n) c WHERE c.n > 0),"
        f" ev AS (INSERT INTO {schema}.events (kind, job_id, task, queue, status, attempts,"
        " at, progress, message)"
        " SELECT e.kind, e.id, e.task, e.queue, e.status, e.attempts, $1, e.progress, NULL"
        " FROM (SELECT 0 AS op, n, k AS kind, id, task, queue, status, attempts, progress"
        " FROM f UNION ALL SELECT 1, n, 'started', id, task, queue, 'running', attempts,"
        " progress FROM b) e CROSS JOIN lk ORDER BY e.op, e.n RETURNING id),"
        " top AS (SELECT max(id) AS id FROM ev)"
        " SELECT (SELECT array_agg(id) FROM f) AS finished,"
        " (SELECT array_agg(id) FROM b) AS begun,"
        " (SELECT array_agg(id) FROM b WHERE cancel_requested) AS asked, top.id AS newest,"
        " CASE WHEN top.id IS NOT NULL THEN pg_notify($7, top.id::text) END AS told,"
        " CASE WHEN $8 AND EXISTS (SELECT 1 FROM f) THEN pg_notify($9, '') END AS woke"
        " FROM top"
    )


class Flush:
    """The begins and finishes of one flush, as the parameters of :func:`flush_sql`.

    Only changes without an event message (every begin and finish of ``_lifecycle``):
    the events are built from the rows, and carry none.
    """

    __slots__ = ("begun", "finished", "rows", "tokens", "wake")

    def __init__(self) -> None:
        self.finished: list[str] = []
        self.rows: list[tuple[Any, ...]] = []
        self.begun: list[str] = []
        self.tokens: list[str] = []
        self.wake = False

    def finish(self, token: str, change: Change) -> None:
        job = change.job
        result, error = job.result, job.error
        timeline = job.timeline
        finished_at = job.finished_at
        ttl = job.result_ttl
        self.finished.append(job.id)
        self.rows.append(
            (
                token,
                job.status.value,
                job.attempts,
                job.run_at,
                finished_at,
                None if result is None else dumps(result),
                None if error is None else dumps(error.to_dict()),
                dumps(timeline_to_json(timeline)) if timeline else None,
                None if finished_at is None or ttl is None else finished_at + ttl,
                change.event,
            )
        )
        if job.status in WAITING_STATUSES:
            self.wake = True

    def begin(self, token: str, change: Change) -> None:
        self.begun.append(change.job.id)
        self.tokens.append(token)

    def args(self, now: float, lock: str, events: str, work: str) -> list[Any]:
        return [
            now,
            self.finished,
            dumps(self.rows),
            self.begun,
            self.tokens,
            lock,
            events,
            self.wake,
            work,
        ]
