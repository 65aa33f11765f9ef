"""The PostgreSQL store's schema, its versions and the forward migrations between them.

Every table lives in one schema of its own (``afterwork`` unless the URL says
``?schema=``). ``MIGRATIONS[n]`` takes a store from version ``n`` to ``n + 1``; the whole
migration runs in one transaction under an advisory lock, so processes opening the same
store at once agree, and a crash mid-migration leaves the old version intact (PostgreSQL's
DDL is transactional). A store stamped with a version above :data:`SCHEMA_VERSION` was
written by a newer afterwork and is refused.

A store already at :data:`SCHEMA_VERSION` is opened without any DDL, so a role that may
only read and write the tables (see ``docs/postgres.md``, "Roles") can open it.
"""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING

from ..exceptions import BackendError, ConfigurationError, SchemaVersionError

if TYPE_CHECKING:
    import asyncpg

__all__ = ("COLUMNS", "MIGRATIONS", "SCHEMA_VERSION", "check", "migrate", "quote_schema")

logger: logging.Logger = logging.getLogger(__name__)

_STATUSES = "'scheduled', 'queued', 'running', 'succeeded', 'failed', 'cancelled'"
_TERMINAL = "'succeeded', 'failed', 'cancelled'"
_ACTIVE = "'scheduled', 'queued', 'running'"

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def quote_schema(schema: str) -> str:
    """The schema name as an identifier; only plain lower-case names are accepted."""
    if not _NAME.match(schema):
        raise ConfigurationError(
            f"invalid PostgreSQL schema name {schema!r}: use lower-case letters, digits and _"
        )
    return f'"{schema}"'


# ``{s}`` is the quoted schema name.
_V1 = (
    """
    CREATE TABLE {s}.jobs (
        seq bigint GENERATED ALWAYS AS IDENTITY,
        id text PRIMARY KEY CHECK (length(id) > 0),
        task text NOT NULL CHECK (length(task) > 0),
        queue text NOT NULL CHECK (length(queue) > 0),
        status text NOT NULL CHECK (status IN ("""
    + _STATUSES
    + """)),
        args text NOT NULL,
        kwargs text NOT NULL,
        priority bigint NOT NULL DEFAULT 0,
        attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        max_attempts integer NOT NULL DEFAULT 1 CHECK (max_attempts >= 0),
        recoveries integer NOT NULL DEFAULT 0 CHECK (recoveries >= 0),
        key text,
        created_at double precision NOT NULL,
        run_at double precision NOT NULL,
        -- ``_lifecycle.ready_order`` compares due times at millisecond resolution.
        due_ms bigint GENERATED ALWAYS AS (floor(run_at * 1000)::bigint) STORED,
        started_at double precision,
        finished_at double precision,
        result text,
        error text,
        progress double precision
            CHECK (progress IS NULL OR (progress >= 0.0 AND progress <= 1.0)),
        progress_message text,
        timeout double precision CHECK (timeout IS NULL OR timeout > 0),
        result_ttl double precision CHECK (result_ttl IS NULL OR result_ttl >= 0),
        expires_at double precision,
        worker text,
        token text,
        lease_expires_at double precision,
        lease_ttl double precision CHECK (lease_ttl IS NULL OR lease_ttl > 0),
        cancel_requested boolean NOT NULL DEFAULT false,
        timeline text,
        CHECK ((status = 'running') = (
            token IS NOT NULL AND worker IS NOT NULL AND lease_expires_at IS NOT NULL)),
        CHECK ((status IN ("""
    + _TERMINAL
    + """)) = (finished_at IS NOT NULL)),
        CHECK (expires_at IS NULL OR finished_at IS NOT NULL)
    )
    """,
    # Claims: the queued jobs of one queue in ready order (partial: queued rows only).
    "CREATE INDEX jobs_ready ON {s}.jobs (queue, priority DESC, due_ms, id)"
    " WHERE status = 'queued'",
    "CREATE INDEX jobs_ready_all ON {s}.jobs (priority DESC, due_ms, id) WHERE status = 'queued'",
    # Promotion of delayed jobs and retries that fell due.
    "CREATE INDEX jobs_due ON {s}.jobs (run_at) WHERE status = 'scheduled'",
    # The reaper (expired leases) and the running jobs a flow limit counts.
    "CREATE INDEX jobs_leases ON {s}.jobs (lease_expires_at, id) WHERE status = 'running'",
    # Retention: result TTLs, and ``purge(older_than=)``.
    "CREATE INDEX jobs_expiry ON {s}.jobs (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX jobs_finished ON {s}.jobs (finished_at) WHERE finished_at IS NOT NULL",
    # ``key=`` dedupes among unfinished jobs only: a finished job frees its key.
    "CREATE UNIQUE INDEX jobs_key ON {s}.jobs (key)"
    " WHERE key IS NOT NULL AND status IN (" + _ACTIVE + ")",
    # Listing newest first by status, queue or task.
    "CREATE INDEX jobs_status ON {s}.jobs (status, id)",
    "CREATE INDEX jobs_queue ON {s}.jobs (queue, id)",
    "CREATE INDEX jobs_task ON {s}.jobs (task, id)",
    """
    CREATE TABLE {s}.events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind text NOT NULL,
        job_id text NOT NULL,
        task text NOT NULL,
        queue text NOT NULL,
        status text NOT NULL,
        attempts integer NOT NULL,
        at double precision NOT NULL,
        progress double precision,
        message text
    )
    """,
    """
    CREATE TABLE {s}.ticks (
        schedule text NOT NULL,
        tick double precision NOT NULL,
        job_id text,
        PRIMARY KEY (schedule, tick)
    )
    """,
    """
    CREATE TABLE {s}.workers (
        id text PRIMARY KEY,
        info text NOT NULL,
        started_at double precision NOT NULL,
        expires_at double precision NOT NULL
    )
    """,
    "CREATE TABLE {s}.paused (queue text PRIMARY KEY)",
)

# Version 2: named leases (``afterwork.backends.base.Leases``), per-minute history
# (``afterwork.history``; buckets are sparse JSON objects, see ``base.HistoryRow``) and the
# starts of rate-limited groups within their window (a sliding log per group: a claim adds
# a pending row, the attempt's begin stamps its start time; old rows are pruned).
_V2 = (
    """
    CREATE TABLE {s}.leases (
        name text PRIMARY KEY CHECK (length(name) > 0),
        token text NOT NULL,
        holder text NOT NULL,
        acquired_at double precision NOT NULL,
        expires_at double precision NOT NULL
    )
    """,
    """
    CREATE TABLE {s}.history (
        minute double precision NOT NULL,
        task text NOT NULL,
        queue text NOT NULL,
        succeeded integer NOT NULL DEFAULT 0,
        failed integer NOT NULL DEFAULT 0,
        retried integer NOT NULL DEFAULT 0,
        run_sum double precision NOT NULL DEFAULT 0,
        run_buckets text NOT NULL DEFAULT '{}',
        wait_sum double precision NOT NULL DEFAULT 0,
        wait_buckets text NOT NULL DEFAULT '{}',
        PRIMARY KEY (minute, task, queue)
    )
    """,
    """
    CREATE TABLE {s}.starts (
        grp text NOT NULL,
        at double precision NOT NULL,
        job_id text NOT NULL,
        pending boolean NOT NULL
    )
    """,
    "CREATE INDEX starts_grp ON {s}.starts (grp, pending, at)",
    "CREATE INDEX starts_pending ON {s}.starts (job_id) WHERE pending",
)

# Version 3: each job's headers (``afterwork.job.Job.headers``: a JSON object of strings,
# NULL when empty), the trace context an enqueue carries to the job's attempts.
_V3 = ("ALTER TABLE {s}.jobs ADD COLUMN headers text",)

# Version 4: no index of its own for listing by queue or by task alone. Each cost every
# job two index entries at its enqueue and at every change of status (about a fifth of a
# batch enqueue's server time); no claim, finish or flow query reads them. Listing by
# queue or task walks the jobs newest first (``jobs_pkey``), or the jobs of the statuses
# asked for (``jobs_status``).
_V4 = ("DROP INDEX IF EXISTS {s}.jobs_queue", "DROP INDEX IF EXISTS {s}.jobs_task")

#: Forward migrations: ``MIGRATIONS[n]`` takes a store from version ``n`` to ``n + 1``.
MIGRATIONS: list[tuple[str, ...]] = [_V1, _V2, _V3, _V4]

#: The version this afterwork writes.
SCHEMA_VERSION = len(MIGRATIONS)

#: The job columns every query selects, in the order the SQLite store's ``load`` reads
#: them (the PostgreSQL store decodes rows with the same function).
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


async def stored_version(conn: asyncpg.Connection, schema: str) -> int | None:
    """The schema version stamped in ``schema``, or ``None`` if it has no store."""
    table = await conn.fetchval("SELECT to_regclass($1)", f"{quote_schema(schema)}.meta")
    if table is None:
        return None
    value = await conn.fetchval(
        f"SELECT value FROM {quote_schema(schema)}.meta WHERE name = 'schema_version'"
    )
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        raise SchemaVersionError(
            f"the PostgreSQL store in schema {schema!r} has an unreadable schema version {value!r}"
        ) from None


def _newer(schema: str, version: int) -> SchemaVersionError:
    return SchemaVersionError(
        f"the PostgreSQL store in schema {schema!r} has schema version {version}, written by a "
        f"newer afterwork; this one knows versions up to {SCHEMA_VERSION}. Upgrade afterwork "
        "(stores are never migrated backwards).",
        version=version,
        supported=SCHEMA_VERSION,
    )


async def check(conn: asyncpg.Connection, schema: str) -> int | None:
    """The stored version, after refusing one newer than this afterwork knows."""
    version = await stored_version(conn, schema)
    if version is not None and version > SCHEMA_VERSION:
        raise _newer(schema, version)
    return version


async def migrate(conn: asyncpg.Connection, schema: str) -> tuple[int, int]:
    """Create or migrate the store in ``schema``; return (version before, version after).

    A store already at this version is left alone without any DDL (a least-privilege role
    may open it). Otherwise one transaction, serialized by an advisory lock, runs the
    missing steps and stamps the new version.
    """
    before = await check(conn, schema)
    if before == SCHEMA_VERSION:
        return before, before
    s = quote_schema(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"afterwork:{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.meta (name text PRIMARY KEY, value text NOT NULL)"
        )
        version = await check(conn, schema) or 0  # another process may have migrated it
        for step in range(version, SCHEMA_VERSION):
            # One round trip per step (the simple query protocol runs a script).
            await conn.execute(";\n".join(st.replace("{s}", s) for st in MIGRATIONS[step]))
            logger.info("PostgreSQL store %r migrated to schema version %d", schema, step + 1)
        if version != SCHEMA_VERSION:
            await conn.execute(
                f"INSERT INTO {s}.meta (name, value) VALUES ('schema_version', $1)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                str(SCHEMA_VERSION),
            )
        # Which store this is: a connection handed to ``enqueue_in`` must reach this one.
        await conn.execute(
            f"INSERT INTO {s}.meta (name, value) VALUES ('store_id', $1)"
            " ON CONFLICT (name) DO NOTHING",
            os.urandom(16).hex(),
        )
    return before or 0, SCHEMA_VERSION


def not_migrated(schema: str, version: int | None) -> BackendError:
    """The error for a store that needs migrating while migrations on open are off."""
    have = "no afterwork tables" if version is None else f"schema version {version}"
    return BackendError(
        f"the PostgreSQL store in schema {schema!r} has {have}; this afterwork needs version "
        f"{SCHEMA_VERSION}. Run `afterwork db migrate` (or open it with migrate=True)."
    )
