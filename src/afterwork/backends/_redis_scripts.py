"""The Redis backend's Lua scripts and the codec between job records and :class:`Job`.

Every state change is one script (``lua/*.lua``), run atomically by Redis. A script starts
with ``lua/common.lua``: the key layout, the store clock and the helpers the scripts share.
The scripts decide nothing that :mod:`afterwork._lifecycle` decides: ``apply.lua`` writes
the changes it computed (compare-and-set), and ``claim``/``heartbeat``/``progress`` write
changes that do not depend on the record.

Every script is called with one key, ``KEYS[1]`` = ``P:events``: it only routes the call
(on a Redis Cluster, to the node of the store's slot). The scripts build their keys from
``ARGV[1]`` = ``P``, which on a cluster is the hash tag ``{prefix}``, so every key below is
in ``KEYS[1]``'s slot.

Key layout under the prefix ``P`` (default ``afterwork``; ``{afterwork}`` on a cluster)::

    P:job:<id>        hash     one job (fields: FIELDS below, plus done_token)
    P:q:<queue>       zset     ready jobs; score orders by priority, then due time (ms), then id
    P:delayed         zset     scheduled jobs and retries, by run_at
    P:leases          zset     running jobs, by lease expiry (what recovery scans)
    P:all             zset     every job id (lexical order = creation order), for listing
    P:done / P:expires zset    finished jobs by finish time / by result expiry (purge)
    P:key:<key>       string   the unfinished job holding a dedupe key
    P:stats:<queue>   hash     job counts per status
    P:queues          set      queue names
    P:paused          set      paused queues (claims and peeks pass them over)
    P:tick:<s>:<t>    string   a taken tick;  P:ticks  hash  last tick per schedule
    P:nlease:<name>   hash     a named lease (token, holder, acquired, expires); P:nleases set
    P:events          stream   JobEvents (capped);  P:bad:<id>  a quarantined raw record
    channels P:wake (a job became due) and P:cancel (a running job should stop)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pydantic_core import from_json, to_json

from .._lifecycle import job_from_values
from ..job import Job, JobAttempt, JobError, JobStatus, timeline_from_json, timeline_to_json
from .base import NewJob

__all__ = (
    "FIELDS",
    "OWNED",
    "SCRIPTS",
    "MalformedRecord",
    "Script",
    "Timelines",
    "change_item",
    "fmt",
    "hash_fields",
    "job_args",
    "new_job",
    "parse_job",
    "record_fields",
    "remember_timeline",
    "stored_as",
)

#: The job hash fields every script returns, in this order (``record()`` in common.lua).
FIELDS = (
    "id task queue status args kwargs prio attempts max recov key created run_at started "
    "finished result error progress pmsg timeout ttl worker lease cancel token tl hdr"
).split()
TOKEN = FIELDS.index("token")

MALFORMED = "afterwork.MalformedRecord"


class MalformedRecord(Exception):
    """A stored record that cannot be read as a job."""


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script with the shared prelude, and its SHA1 for ``EVALSHA``."""

    name: str
    source: str
    sha: str


class _Scripts:
    """The scripts in ``lua/`` by name (``SCRIPTS["claim"]``), each read and hashed on
    first use.

    Nothing is read at import: a worker loads the few scripts it runs when it first runs
    them (Redis learns each one then too: ``EVALSHA``, then ``EVAL`` after ``NOSCRIPT``).
    """

    def __init__(self) -> None:
        self._folder = resources.files(__package__).joinpath("lua")
        self._common: str | None = None
        self._loaded: dict[str, Script] = {}

    def __getitem__(self, name: str) -> Script:
        script = self._loaded.get(name)
        if script is None:
            entry = self._folder.joinpath(f"{name}.lua")
            if name == "common" or not entry.is_file():
                raise KeyError(name)
            if self._common is None:
                self._common = self._folder.joinpath("common.lua").read_text(encoding="utf-8")
            source = f"{self._common}\n{entry.read_text(encoding='utf-8')}"
            sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()
            script = self._loaded[name] = Script(name, source, sha)
        return script


SCRIPTS = _Scripts()


def fmt(value: float) -> float:
    """Round like the scripts do (``%.6f``), so local and stored timestamps compare equal."""
    return float(f"{value:.6f}")


def _opt(value: float | None) -> str:
    return "" if value is None else repr(value)


def job_args(new: NewJob) -> list[str]:
    """The 12 script arguments that describe a new job (``create()`` in common.lua)."""
    return [
        new.id,
        new.task,
        new.queue,
        to_json(new.args).decode(),
        to_json(new.kwargs).decode(),
        str(int(new.priority)),
        str(int(new.max_attempts)),
        new.key or "",
        repr(float(max(new.delay, 0.0))),
        _opt(new.timeout),
        _opt(new.result_ttl),
        to_json(new.headers).decode() if new.headers else "",
    ]


def new_job(new: NewJob, now: float) -> Job:
    """The job the enqueue script just created, built locally instead of read back."""
    delay = max(new.delay, 0.0)
    return Job(
        id=new.id,
        task=new.task,
        queue=new.queue,
        status=JobStatus.SCHEDULED if delay > 0 else JobStatus.QUEUED,
        args=list(new.args),
        kwargs=dict(new.kwargs),
        priority=int(new.priority),
        max_attempts=int(new.max_attempts),
        key=new.key,
        created_at=now,
        run_at=fmt(now + delay) if delay > 0 else now,
        timeout=new.timeout,
        result_ttl=new.result_ttl,
        headers=dict(new.headers),
    )


def _headers(text: str | None) -> dict[str, str]:
    """A job's stored headers (a JSON object of strings, or absent)."""
    if not text:
        return {}
    headers = from_json(text)
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ValueError("headers must be a JSON object of strings")
    return headers


def _float(value: str | None) -> float | None:
    return None if value is None or value == "" else float(value)


#: Decoded timelines by their stored text (``Timelines``): the hot path reads each one
#: back right after writing it, and a timeline is an immutable tuple of frozen attempts.
Timelines = dict[str, tuple[JobAttempt, ...]]
_TIMELINES_KEPT = 2048


def remember_timeline(cache: Timelines, text: str | None, timeline: tuple[JobAttempt, ...]) -> None:
    """Note that ``text`` decodes to ``timeline`` (what a write just stored)."""
    if text:
        if len(cache) >= _TIMELINES_KEPT:
            cache.clear()
        cache[text] = timeline


def _timeline(text: str, cache: Timelines | None) -> tuple[JobAttempt, ...]:
    if cache is not None and (known := cache.get(text)) is not None:
        return known
    timeline = timeline_from_json(from_json(text))
    if cache is not None:
        remember_timeline(cache, text, timeline)
    return timeline


def parse_job(record: list[Any], timelines: Timelines | None = None) -> Job:
    """A :class:`Job` from a record (``FIELDS`` order). Raises :class:`MalformedRecord`.

    ``timelines`` caches decoded timelines (see :data:`Timelines`).
    """
    try:
        (
            id_,
            task,
            queue,
            status,
            args,
            kwargs,
            prio,
            attempts,
            max_attempts,
            recov,
            key,
            created,
            run_at,
            started,
            finished,
            result,
            error,
            progress,
            pmsg,
            timeout,
            ttl,
            worker,
            lease,
            cancel,
            _token,
            timeline,
            headers,
        ) = record
        decoded_args = from_json(args) if args else []
        decoded_kwargs = from_json(kwargs) if kwargs else {}
        if not isinstance(decoded_args, list) or not isinstance(decoded_kwargs, dict):
            raise ValueError("args must be a JSON array and kwargs a JSON object")
        # In Job's field order (job_from_values: a third of the keyword constructor's cost,
        # paid up to three times per job: claim, start, finish).
        return job_from_values(
            (
                id_,
                task,
                queue,
                JobStatus(status),
                decoded_args,
                decoded_kwargs,
                int(prio or 0),
                int(attempts or 0),
                int(max_attempts or 0),
                int(recov or 0),
                key,
                float(created),
                float(run_at),
                _float(started),
                _float(finished),
                None if result is None else from_json(result),
                None if not error else JobError.from_dict(from_json(error)),
                _float(progress),
                pmsg,
                _float(timeout),
                _float(ttl),
                worker,
                _float(lease),
                cancel == "1",
                None,  # created_now
                None,  # waiting_reason
                _timeline(timeline, timelines) if timeline else (),
                _headers(headers),
                None,  # _owner
            )
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise MalformedRecord(f"{type(exc).__name__}: {exc}") from exc


_STATUS, _ATTEMPTS, _RUN_AT, _STARTED, _FINISHED, _PROGRESS, _PMSG, _LEASE, _CANCEL = (
    FIELDS.index(name)
    for name in (
        "status", "attempts", "run_at", "started", "finished", "progress", "pmsg", "lease",
        "cancel",
    )
)  # fmt: skip


def stored_as(record: list[Any], job: Job) -> bool:
    """Whether ``record`` (``FIELDS`` order), the reply to a start or a finish that this
    process computed as ``job`` and wrote under its lease, reads back as ``job``.

    The write sets the fields its transition owns, from ``job``; the others were read
    under the lease, and nothing changes them but the lease holder and these: a progress
    report, a cancel request, a renewed lease. A repeated finish (its first reply lost)
    returns the first one's record, whose finish time differs. So these are compared as
    :func:`parse_job` would read them, and a reply that differs in any is decoded instead.
    """
    try:
        return bool(
            record[_STATUS] == job.status.value
            and record[_ATTEMPTS] == str(job.attempts)
            and _float(record[_RUN_AT]) == job.run_at
            and _float(record[_STARTED]) == job.started_at
            and _float(record[_FINISHED]) == job.finished_at
            and _float(record[_PROGRESS]) == job.progress
            and record[_PMSG] == job.progress_message
            and _float(record[_LEASE]) == job.lease_expires_at
            and (record[_CANCEL] == "1") == job.cancel_requested
        )
    except (TypeError, ValueError):
        return False  # not even readable: parse_job says why


def unreadable_job(job_id: str, record: list[Any] | None, reason: str) -> Job:
    """What ``get()`` shows for a record it cannot read: a failed job that says why."""
    task = record[1] if record and isinstance(record[1], str) else "?"
    return Job(
        id=job_id,
        task=task,
        queue=record[2] if record and isinstance(record[2], str) else "?",
        status=JobStatus.FAILED,
        error=JobError.from_message(MALFORMED, f"the stored record cannot be read: {reason}"),
    )


def _time(value: float | None) -> str | None:
    return None if value is None else f"{value:.6f}"


#: How each mutable field of a job is stored in its hash (``None``: absent).
_ENCODERS: dict[str, Callable[[Job], str | None]] = {
    "status": lambda job: job.status.value,
    "prio": lambda job: str(int(job.priority)),
    "attempts": lambda job: str(job.attempts),
    "recov": lambda job: str(job.recoveries),
    "key": lambda job: job.key,
    "run_at": lambda job: _time(job.run_at),
    "started": lambda job: _time(job.started_at),
    "finished": lambda job: _time(job.finished_at),
    "result": lambda job: None if job.result is None else to_json(job.result).decode(),
    "error": lambda job: None if job.error is None else to_json(job.error.to_dict()).decode(),
    "progress": lambda job: None if job.progress is None else repr(float(job.progress)),
    "pmsg": lambda job: job.progress_message,
    "worker": lambda job: job.worker,
    "lease": lambda job: _time(job.lease_expires_at),
    "cancel": lambda job: "1" if job.cancel_requested else "0",
    "tl": lambda job: to_json(timeline_to_json(job.timeline)).decode() if job.timeline else None,
}


def hash_fields(job: Job, names: Iterable[str] = _ENCODERS) -> dict[str, str | None]:
    """The mutable fields of ``job`` (or only ``names``) as the job hash stores them."""
    return {name: _ENCODERS[name](job) for name in names}


#: The fields each transition writes: the rest of the record is left as the store has it
#: (a progress report or a cancel request made meanwhile is not overwritten).
OWNED: dict[str, tuple[str, ...]] = {
    "begin": ("attempts", "started"),
    "finish": (
        "status", "result", "error", "finished", "run_at", "attempts", "worker", "lease", "cancel",
        "tl",
    ),
    "recover": (
        "status", "recov", "error", "finished", "run_at", "worker", "lease", "cancel", "tl",
    ),
    "cancel": ("status", "finished", "cancel"),
    "quarantine": ("status", "error", "finished", "worker", "lease", "cancel"),
    "retry": (
        "status", "attempts", "recov", "key", "run_at", "started", "finished", "result",
        "progress", "pmsg", "worker", "lease", "cancel",
    ),
}  # fmt: skip


def change_item(
    transition: str,
    change: Any,
    *,
    expect: Mapping[str, str | None],
    **extra: Any,
) -> dict[str, Any]:
    """One entry for ``apply.lua``: what ``change`` (an ``afterwork._lifecycle.Change``)
    writes, guarded by ``expect`` (the fields its decision read, as they were read)."""
    owned = OWNED[transition]
    fields = hash_fields(change.job, owned)  # only what it writes (a start: two fields)
    item: dict[str, Any] = {
        "id": change.job.id,
        "expect": {name: value or "" for name, value in expect.items()},
        "set": {name: fields[name] for name in owned if fields[name] is not None},
        "del": [name for name in owned if fields[name] is None],
    }
    if change.event is not None:
        item["event"] = change.event
    if change.message is not None:
        item["message"] = change.message
    item.update({name: value for name, value in extra.items() if value is not None})
    return item


def record_fields(record: list[Any]) -> dict[str, Any]:
    """A record (``FIELDS`` order) as a field → value dict."""
    return dict(zip(FIELDS, record, strict=True))
