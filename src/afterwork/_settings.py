"""``Settings``: how an :class:`~afterwork.Afterwork` instance behaves."""

from __future__ import annotations

from dataclasses import dataclass

from .exceptions import ConfigurationError

__all__ = ("Settings",)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """How an :class:`Afterwork` instance behaves. Pass any of these to the constructor."""

    lease_ttl: float = 30.0
    """Seconds a claimed job stays leased without a heartbeat before it is recovered."""
    heartbeat_interval: float | None = None
    """Seconds between lease renewals; ``None``: a third of ``lease_ttl``."""
    reaper_interval: float = 5.0
    """Seconds between passes that recover expired leases and purge old results."""
    poll_interval: float = 1.0
    """Longest an idle worker waits before asking the store again."""
    grace: float = 30.0
    """Seconds running jobs get to finish on a graceful stop before they are released."""
    concurrency: int = 10
    """Jobs one worker runs at once, unless the worker says otherwise."""
    prefetch: int | None = None
    """Jobs a worker claims ahead of its free slots, so the next one starts without a round
    trip to the store (``None``: as many as its concurrency; ``0``: none). Prefetched jobs
    hold leases; on a graceful stop they go back to the queue untouched."""
    max_recoveries: int = 3
    """How many times a job may be recovered from a dead worker before it is failed."""
    max_payload: int = 1024 * 1024
    """Largest encoded arguments, in bytes."""
    max_result: int = 1024 * 1024
    """Largest encoded result, in bytes."""
    sync_timeout: float = 30.0
    """How long ``enqueue_sync`` and the other sync calls wait for the store."""
    block_threshold: float | None = 0.1
    """Warn when a job blocks the worker's event loop longer than this, in seconds;
    ``None`` turns the check off."""

    isolation: str = "none"
    """``"process"``: every task's attempts run in child processes, not only those declared
    ``@aw.task(isolation="process")`` (see docs/isolation.md)."""
    max_jobs_per_child: int | None = 500
    """An isolation child is replaced after this many attempts (``None``: never)."""
    max_memory_mb: int | None = None
    """Default memory cap of an isolated attempt's child, in MB (``None``: none)."""
    kill_grace: float = 2.0
    """Seconds an isolation child gets between SIGTERM and SIGKILL."""

    def __post_init__(self) -> None:
        positive = ("lease_ttl", "reaper_interval", "poll_interval", "sync_timeout")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be positive")
        if self.block_threshold is not None and self.block_threshold <= 0:
            raise ConfigurationError("block_threshold must be positive (or None to turn it off)")
        if self.heartbeat_interval is not None and not 0 < self.heartbeat_interval < self.lease_ttl:
            raise ConfigurationError("heartbeat_interval must be positive and below lease_ttl")
        if self.grace < 0:
            raise ConfigurationError("grace must not be negative")
        if self.prefetch is not None and self.prefetch < 0:
            raise ConfigurationError("prefetch must not be negative")
        if self.concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if self.isolation not in ("none", "process"):
            raise ConfigurationError(
                f"isolation must be 'none' or 'process', not {self.isolation!r}"
            )
        if self.max_jobs_per_child is not None and self.max_jobs_per_child < 1:
            raise ConfigurationError("max_jobs_per_child must be at least 1")
        if self.max_memory_mb is not None and self.max_memory_mb < 1:
            raise ConfigurationError("max_memory_mb must be at least 1")
        if self.kill_grace < 0:
            raise ConfigurationError("kill_grace must not be negative")
        if self.max_recoveries < 0:
            raise ConfigurationError("max_recoveries must not be negative")
