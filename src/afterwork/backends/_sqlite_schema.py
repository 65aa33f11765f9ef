"""The SQLite backend's schema, its versions and the forward migrations between them.

``MIGRATIONS[n]`` takes a store from version ``n`` to ``n + 1``; a store is migrated on
open, in one ``BEGIN IMMEDIATE`` transaction, so concurrent processes opening the same
file agree and a crash mid-migration leaves the old version intact. A store stamped with
a version above :data:`SCHEMA_VERSION` was written by a newer afterwork and is refused.

Tables are ``STRICT`` (SQLite ≥ 3.37): a column holds its declared type or the write
fails. CHECK constraints reject impossible states, such as a running job without a lease
or a finished job without ``finished_at``.
"""

from __future__ import annotations

__all__ = ("COLUMNS", "MIGRATIONS", "SCHEMA_VERSION")

_STATUSES = "'scheduled', 'queued', 'running', 'succeeded', 'failed', 'cancelled'"
_TERMINAL = "'succeeded', 'failed', 'cancelled'"
_ACTIVE = "'scheduled', 'queued', 'running'"

_V1 = (
    """
    CREATE TABLE afterwork_jobs (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE CHECK (length(id) > 0),
        task TEXT NOT NULL CHECK (length(task) > 0),
        queue TEXT NOT NULL CHECK (length(queue) > 0),
        status TEXT NOT NULL CHECK (status IN ("""
    + _STATUSES
    + """)),
        args TEXT NOT NULL,
        kwargs TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        max_attempts INTEGER NOT NULL DEFAULT 1 CHECK (max_attempts >= 0),
        recoveries INTEGER NOT NULL DEFAULT 0 CHECK (recoveries >= 0),
        key TEXT,
        created_at REAL NOT NULL,
        run_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        result TEXT,
        error TEXT,
        progress REAL CHECK (progress IS NULL OR (progress >= 0.0 AND progress <= 1.0)),
        progress_message TEXT,
        timeout REAL CHECK (timeout IS NULL OR timeout > 0),
        result_ttl REAL CHECK (result_ttl IS NULL OR result_ttl >= 0),
        expires_at REAL,
        worker TEXT,
        token TEXT,
        lease_expires_at REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
        CHECK ((status = 'running') = (
            token IS NOT NULL AND worker IS NOT NULL AND lease_expires_at IS NOT NULL)),
        CHECK ((status IN ("""
    + _TERMINAL
    + """)) = (finished_at IS NOT NULL)),
        CHECK (expires_at IS NULL OR finished_at IS NOT NULL)
    ) STRICT
    """,
    # Claims: the queued jobs of one queue, best first (partial: only queued rows).
    "CREATE INDEX afterwork_jobs_ready ON afterwork_jobs (queue, priority DESC, run_at)"
    " WHERE status = 'queued'",
    # Claims across every queue.
    "CREATE INDEX afterwork_jobs_ready_all ON afterwork_jobs (priority DESC, run_at)"
    " WHERE status = 'queued'",
    # Promotion of delayed jobs and retries that fell due.
    "CREATE INDEX afterwork_jobs_due ON afterwork_jobs (run_at) WHERE status = 'scheduled'",
    # The reaper: leases that expired.
    "CREATE INDEX afterwork_jobs_leases ON afterwork_jobs (lease_expires_at)"
    " WHERE status = 'running'",
    # Result TTL purge.
    "CREATE INDEX afterwork_jobs_expiry ON afterwork_jobs (expires_at)"
    " WHERE expires_at IS NOT NULL",
    # ``key=`` dedupes among unfinished jobs only: a finished job frees its key.
    "CREATE UNIQUE INDEX afterwork_jobs_key ON afterwork_jobs (key)"
    " WHERE key IS NOT NULL AND status IN (" + _ACTIVE + ")",
    # Listing newest first by status, queue or task, and the per-queue counts. Queue and
    # task never change, so those indexes cost nothing when jobs move between states.
    "CREATE INDEX afterwork_jobs_status ON afterwork_jobs (status, id)",
    "CREATE INDEX afterwork_jobs_queue ON afterwork_jobs (queue, id)",
    "CREATE INDEX afterwork_jobs_task ON afterwork_jobs (task, id)",
    "CREATE INDEX afterwork_jobs_queue_status ON afterwork_jobs (queue, status)",
    """
    CREATE TABLE afterwork_events (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        job_id TEXT NOT NULL,
        task TEXT NOT NULL,
        queue TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        at REAL NOT NULL,
        progress REAL,
        message TEXT
    ) STRICT
    """,
    """
    CREATE TABLE afterwork_ticks (
        schedule TEXT NOT NULL,
        tick REAL NOT NULL,
        job_id TEXT,
        PRIMARY KEY (schedule, tick)
    ) STRICT, WITHOUT ROWID
    """,
)

# Version 2: how long each lease was taken for, so that a reaper judges expiry by its own
# clock's passing time (a lease seen unchanged for that long), not by comparing the wall
# clocks of two processes.
_V2 = (
    "ALTER TABLE afterwork_jobs ADD COLUMN lease_ttl REAL"
    " CHECK (lease_ttl IS NULL OR lease_ttl > 0)",
)

# Version 3: each job's last attempts (a JSON array, see ``afterwork.job.JobAttempt``), and
# the workers' presence records (``afterwork.backends.base.WorkerInfo`` as JSON).
_V3 = (
    "ALTER TABLE afterwork_jobs ADD COLUMN timeline TEXT",
    """
    CREATE TABLE afterwork_workers (
        id TEXT PRIMARY KEY,
        info TEXT NOT NULL,
        started_at REAL NOT NULL,
        expires_at REAL NOT NULL
    ) STRICT
    """,
)

# Version 4: named leases (``afterwork.backends.base.Leases``: singleton services).
_V4 = (
    """
    CREATE TABLE afterwork_leases (
        name TEXT PRIMARY KEY CHECK (length(name) > 0),
        token TEXT NOT NULL,
        holder TEXT NOT NULL,
        acquired_at REAL NOT NULL,
        expires_at REAL NOT NULL
    ) STRICT, WITHOUT ROWID
    """,
)

# Version 5: the starts of rate-limited groups within their window (a sliding log per group,
# see ``afterwork._lifecycle.RateLimit``): a claim adds a pending row (the job's start is to
# come, it counts as now), the attempt's begin stamps its start time; old rows are pruned.
_V5 = (
    """
    CREATE TABLE afterwork_starts (
        grp TEXT NOT NULL,
        at REAL NOT NULL,
        job_id TEXT NOT NULL,
        pending INTEGER NOT NULL
    ) STRICT
    """,
    "CREATE INDEX afterwork_starts_grp ON afterwork_starts (grp, pending, at)",
    "CREATE INDEX afterwork_starts_pending ON afterwork_starts (job_id) WHERE pending = 1",
)

# Version 6: per-minute history of attempts per task and queue (``afterwork.history``;
# buckets are sparse JSON objects, see ``afterwork.backends.base.HistoryRow``).
_V6 = (
    """
    CREATE TABLE afterwork_history (
        minute REAL NOT NULL,
        task TEXT NOT NULL,
        queue TEXT NOT NULL,
        succeeded INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        retried INTEGER NOT NULL DEFAULT 0,
        run_sum REAL NOT NULL DEFAULT 0,
        run_buckets TEXT NOT NULL DEFAULT '{}',
        wait_sum REAL NOT NULL DEFAULT 0,
        wait_buckets TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (minute, task, queue)
    ) STRICT, WITHOUT ROWID
    """,
)

# Version 7: each job's headers (``afterwork.job.Job.headers``: a JSON object of strings,
# NULL when empty), the trace context an enqueue carries to the job's attempts.
_V7 = ("ALTER TABLE afterwork_jobs ADD COLUMN headers TEXT",)

#: Forward migrations: ``MIGRATIONS[n]`` takes a store from version ``n`` to ``n + 1``.
MIGRATIONS: list[tuple[str, ...]] = [_V1, _V2, _V3, _V4, _V5, _V6, _V7]

#: The version this afterwork writes.
SCHEMA_VERSION = len(MIGRATIONS)

META_DDL = (
    "CREATE TABLE IF NOT EXISTS afterwork_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT"
)

#: The job columns every query selects, in the order ``_row_to_job`` reads them.
COLUMNS = (
    "id",
    "task",
    "queue",
    "status",
    "args",
    "kwargs",
    "priority",
    "attempts",
    "max_attempts",
    "recoveries",
    "key",
    "created_at",
    "run_at",
    "started_at",
    "finished_at",
    "result",
    "error",
    "progress",
    "progress_message",
    "timeout",
    "result_ttl",
    "worker",
    "lease_expires_at",
    "cancel_requested",
    "seq",
    "timeline",
    "headers",
)
