"""Rows of the SQLite backend: decoding them into jobs, and writing jobs back in a transaction."""

from __future__ import annotations

import json
import logging
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import _lifecycle as life
from .._lifecycle import MALFORMED, Change, job_from_values
from ..job import (
    WAITING_STATUSES,
    Job,
    JobError,
    JobStatus,
    timeline_from_json,
    timeline_to_json,
)
from ._sqlite_schema import COLUMNS
from .base import NewJob

__all__ = (
    "ACTIVE_SQL",
    "MALFORMED",
    "SELECT",
    "TERMINAL_SQL",
    "Connection",
    "Cursor",
    "Tx",
    "changed",
    "dump_headers",
    "dumps",
    "load",
    "load_one",
)

logger: logging.Logger = logging.getLogger(__name__)

COLS = ", ".join(COLUMNS)
SELECT = f"SELECT {COLS} FROM afterwork_jobs"
SELECT_HELD = f"SELECT {COLS}, token FROM afterwork_jobs"
ACTIVE_SQL = "('scheduled', 'queued', 'running')"
TERMINAL_SQL = "('succeeded', 'failed', 'cancelled')"

_INSERT = (
    "INSERT INTO afterwork_jobs (id, task, queue, status, args, kwargs, priority, attempts,"
    " max_attempts, key, created_at, run_at, started_at, timeout, result_ttl, worker, token,"
    " lease_expires_at, lease_ttl, headers)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
INSERT_EVENT = (
    "INSERT INTO afterwork_events (kind, job_id, task, queue, status, attempts, at, progress,"
    " message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: The fields of a job that change after it is created, written back by :meth:`Tx.save`.
_MUTABLE = (
    "status",
    "attempts",
    "recoveries",
    "key",
    "run_at",
    "started_at",
    "finished_at",
    "result",
    "error",
    "progress",
    "progress_message",
    "worker",
    "lease_expires_at",
    "cancel_requested",
    "timeline",
    "args",  # a debounced enqueue replaces a waiting job's arguments
    "kwargs",
)

_mutable_values = operator.attrgetter(*_MUTABLE)


def changed(old: Job, new: Job, force: Sequence[str] = ()) -> list[tuple[str, Any]]:
    """The mutable fields in which ``new`` differs from ``old`` (and the ``force``d ones),
    with ``new``'s values: what a write of ``new`` over ``old`` stores."""
    return [
        (name, value)
        for name, value, before in zip(
            _MUTABLE, _mutable_values(new), _mutable_values(old), strict=True
        )
        if value != before or name in force
    ]


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """JSON as stored: compact, UTF-8, and never NaN or Infinity."""
    # One encoder for every call: ``json.dumps`` with options builds a new one each time.
    return _ENCODER.encode(value)


def dump_headers(headers: dict[str, str]) -> str | None:
    """A job's headers as stored: a JSON object, or NULL when there are none."""
    return dumps(headers) if headers else None


def _column(name: str, value: Any) -> Any:
    if name == "status":
        return value.value
    if name == "result":
        return None if value is None else dumps(value)
    if name == "error":
        return None if value is None else dumps(value.to_dict())
    if name == "cancel_requested":
        return int(value)
    if name == "timeline":
        return dumps(timeline_to_json(value)) if value else None
    if name in ("args", "kwargs"):
        return dumps(value)
    return value


#: Stored JSON texts so common that decoding them is skipped (each read makes a fresh
#: value: a job's ``args`` list is its own).
_EMPTY: dict[str, Callable[[], Any]] = {"[]": list, "{}": dict, "null": lambda: None}


def _decode(text: Any, name: str, default: Any, kind: type | None, problems: list[str]) -> Any:
    if text is None:
        return default
    empty = _EMPTY.get(text) if type(text) is str else None
    if empty is not None:
        value = empty()
    else:
        try:
            value = json.loads(text)
        except (TypeError, ValueError) as exc:
            problems.append(f"{name} is not valid JSON ({exc})")
            return default
    if kind is not None and not isinstance(value, kind):
        problems.append(f"{name} is a JSON {type(value).__name__}, not a {kind.__name__}")
        return default
    return value


def load(row: Sequence[Any]) -> tuple[Job, list[str]]:
    """A row as a :class:`Job`, and what was wrong with it (empty when it is sound).

    Never raises on bad data: undecodable fields are replaced by defaults and reported in
    the job's ``error``, so listing and showing a corrupt job works, while a worker that
    claims it quarantines it instead of running it.
    """
    problems: list[str] = []
    args = _decode(row[4], "args", [], list, problems)
    kwargs = _decode(row[5], "kwargs", {}, dict, problems)
    result = _decode(row[15], "result", None, None, problems)
    error_data = _decode(row[16], "error", None, dict, problems)
    try:
        status = JobStatus(row[3])
    except ValueError:
        problems.append(f"status {row[3]!r} is unknown")
        status = JobStatus.FAILED
    timeline_data = _decode(row[25], "timeline", [], list, problems)
    try:
        timeline = timeline_from_json(timeline_data) if timeline_data else ()
    except (TypeError, ValueError) as exc:
        problems.append(f"timeline cannot be read ({exc})")
        timeline = ()
    headers = _decode(row[26], "headers", {}, dict, problems)
    if headers and not all(isinstance(value, str) for value in headers.values()):
        problems.append("headers are not all strings")
        headers = {}
    error = None if error_data is None else JobError.from_dict(error_data)
    if problems:
        error = JobError.from_message(
            MALFORMED, "the stored job record is malformed: " + "; ".join(problems)
        )
    # In Job's field order: a third of the keyword constructor's cost, paid for each
    # claimed, started and finished job (the store reads the row it fences on).
    job = job_from_values(
        (
            row[0],  # id
            row[1],  # task
            row[2],  # queue
            status,
            args,
            kwargs,
            row[6],  # priority
            row[7],  # attempts
            row[8],  # max_attempts
            row[9],  # recoveries
            row[10],  # key
            row[11],  # created_at
            row[12],  # run_at
            row[13],  # started_at
            row[14],  # finished_at
            result,
            error,
            row[17],  # progress
            row[18],  # progress_message
            row[19],  # timeout
            row[20],  # result_ttl
            row[21],  # worker
            row[22],  # lease_expires_at
            bool(row[23]),  # cancel_requested
            None,  # created_now
            None,  # waiting_reason
            timeline,
            headers,
            None,  # _owner
        )
    )
    return job, problems


def load_one(row: Sequence[Any] | None) -> Job | None:
    """The job in ``row`` (leniently decoded), or ``None``."""
    return None if row is None else load(row)[0]


class Cursor(Protocol):
    """What :class:`Tx` reads back from a statement (a ``sqlite3.Cursor`` is one)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...


class Connection(Protocol):
    """What a transaction writes through: a ``sqlite3.Connection`` in the store's own
    transactions, or an adapter of the application's connection for a transactional
    enqueue (``_sqlite_tx``). Both run the same statements, built here."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


@dataclass
class Tx:
    """One write transaction: its connection, its time, and the events it produces."""

    conn: Connection
    now: float
    events: list[tuple[Any, ...]] = field(default_factory=list)
    wake: bool = False
    """Whether a job became due for a worker (local workers are woken after commit)."""

    def emit(self, kind: str, job: Job, message: str | None = None) -> None:
        self.events.append(
            (
                kind,
                job.id,
                job.task,
                job.queue,
                job.status.value,
                job.attempts,
                self.now,
                job.progress,
                message,
            )
        )
        if job.status in WAITING_STATUSES:
            self.wake = True

    def select(self, where: str, params: Sequence[Any] = (), *, index: str = "") -> list[Job]:
        indexed = f" INDEXED BY {index}" if index else ""
        rows = self.conn.execute(f"{SELECT}{indexed} WHERE {where}", params).fetchall()
        return [load(row)[0] for row in rows]

    def get(self, job_id: str) -> Job | None:
        jobs = self.select("id = ?", (job_id,))
        return jobs[0] if jobs else None

    def held(self, job_id: str) -> tuple[Job | None, str | None]:
        """The job and the lease token the store holds for it."""
        row = self.conn.execute(f"{SELECT_HELD} WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None, None
        return load(row)[0], row[len(COLUMNS)]

    def apply(
        self,
        old: Job,
        change: Change | None,
        *,
        token: str | None = None,
        lease_ttl: float | None = None,
        force: Sequence[str] = (),
    ) -> Job | None:
        """Persist a transition decided by :mod:`afterwork._lifecycle` (``None``: no change)."""
        if change is None:
            return None
        return self.save(
            old,
            change.job,
            kind=change.event,
            message=change.message,
            token=token,
            lease_ttl=lease_ttl,
            force=force,
        )

    def save(
        self,
        old: Job,
        new: Job,
        *,
        kind: str | None = None,
        message: str | None = None,
        token: str | None = None,
        lease_ttl: float | None = None,
        force: Sequence[str] = (),
    ) -> Job:
        """Write the fields in which ``new`` differs from ``old`` (plus ``force``d ones).

        A job that stops running loses its lease token; a finished job gets the time
        after which :meth:`purge` deletes it.
        """
        columns = {name: _column(name, value) for name, value in changed(old, new, force)}
        if old.status is JobStatus.RUNNING and new.status is not JobStatus.RUNNING:
            columns["token"] = None
        if token is not None:
            columns["token"] = token
        if lease_ttl is not None:
            columns["lease_ttl"] = lease_ttl
        if new.finished_at != old.finished_at or "finished_at" in columns:
            columns["expires_at"] = (
                None
                if new.finished_at is None or new.result_ttl is None
                else new.finished_at + new.result_ttl
            )
        if columns:
            assignments = ", ".join(f"{name} = ?" for name in columns)
            self.conn.execute(
                f"UPDATE afterwork_jobs SET {assignments} WHERE id = ?",
                (*columns.values(), new.id),
            )
        if kind is not None:
            self.emit(kind, new, message)
        return new

    def insert(
        self,
        new: NewJob,
        *,
        worker: str | None = None,
        token: str | None = None,
        lease_ttl: float = 0.0,
    ) -> Job:
        """Create the job ``new`` describes (already claimed when ``worker`` is given).

        If its key is held by an unfinished job, or its id exists, nothing is written and
        that existing job is returned.
        """
        if worker is None and new.debounce and new.key is not None:
            holders = self.select(f"key = ? AND status IN {ACTIVE_SQL}", (new.key,))
            if holders:
                moved = life.debounce(holders[0], new, self.now)
                self.apply(holders[0], moved)
                if moved.job.status is not JobStatus.RUNNING:
                    return moved.job  # pushed back with the new arguments
                # The running holder gave up its key: the new job below takes it.
        if worker is None:
            change = life.create(new, self.now)
        else:
            change = life.start_now(new, worker=worker, now=self.now, lease_ttl=lease_ttl)
        job = change.job
        now = job.created_at
        cursor = self.conn.execute(
            _INSERT,
            (
                job.id,
                job.task,
                job.queue,
                job.status.value,
                dumps(job.args),
                dumps(job.kwargs),
                job.priority,
                job.attempts,
                job.max_attempts,
                job.key,
                now,
                job.run_at,
                job.started_at,
                job.timeout,
                job.result_ttl,
                job.worker,
                token,
                job.lease_expires_at,
                lease_ttl if worker is not None else None,
                dump_headers(job.headers),
            ),
        )
        if cursor.rowcount == 1:
            assert change.event is not None
            self.emit(change.event, job)
            return job
        # A conflict: the key is held by an unfinished job, or the id exists.
        if job.key is not None:
            holders = self.select(f"key = ? AND status IN {ACTIVE_SQL}", (job.key,))
            if holders:
                return holders[0]
        existing = self.get(job.id)
        if existing is None:  # pragma: no cover - ON CONFLICT only skips on those two
            import sqlite3  # here only: PostgreSQL's rows share this module's codec

            raise sqlite3.IntegrityError(f"job {job.id} could not be inserted")
        return existing

    def quarantine(self, job: Job) -> Job:
        """Fail a claimed job whose record cannot be decoded, instead of running it."""
        change = life.quarantine(job, now=self.now, reason="the stored job record is malformed")
        failed = change.job
        error = failed.error
        assert error is not None
        self.save(job, failed, kind=change.event, message=change.message, force=("error",))
        logger.error(
            "job %s (%s) quarantined as failed: %s",
            job.id,
            job.task[:200],
            error.message,
            extra={"action": "job_quarantined", "job": {"id": job.id, "task": job.task[:200]}},
        )
        return failed
