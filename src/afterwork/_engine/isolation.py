"""Process isolation: a reused pool of child processes that run one attempt at a time.

A task declared ``@aw.task(isolation="process")`` (or every task of a worker started with
``--isolation process``) runs in a child process instead of the worker's own. What the
child does cannot hurt the worker: a segfault, ``os.abort()``, ``os._exit()`` or an OOM
kill ends that child only, and the attempt fails with an error naming the signal or exit
code. The timeout is hard (SIGTERM, then SIGKILL after a grace), memory is capped per
child, and a cancel kills the child.

Children are fresh interpreters (as multiprocessing's ``spawn`` starts them, without its
pickling: the worker and its children speak JSON over a socket pair) and are reused: the
cost of a process start is paid once per child, not per job. Arguments and results cross
as JSON; the child imports the task's module, finds the task by name, decodes the
arguments and resolves its dependencies itself, exactly as the worker would.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..job import Job, JobError, JobStatus

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from ..task import Task

__all__ = ("ChildDied", "ChildResult", "ProcessPool", "memory_limit_error", "task_location")

logger: logging.Logger = logging.getLogger("afterwork.isolation")

#: Seconds between two looks at a busy child's memory.
MEMORY_POLL = 0.02
#: Seconds a child may take to start an attempt (import the task's module) before it is
#: killed and the attempt failed.
STARTUP_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class ChildResult:
    """What a child sent back for one attempt."""

    value: Any = None
    error: JobError | None = None
    retry: bool = False
    """The job raised ``Retry``."""
    retry_delay: float | None = None
    dont_retry: bool = False
    """The exception is one of the task's ``dont_retry`` types."""


class ChildDied(Exception):
    """The child running the attempt ended without answering (a signal, an exit)."""

    def __init__(self, error: JobError) -> None:
        super().__init__(error.message)
        self.error = error


def task_location(task: Task[Any, Any]) -> tuple[str, str]:
    """Where a child finds ``task``: its function's module and qualified name."""
    func = task.func
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<locals>" in qualname:
        raise TypeError(
            f"task {task.name!r} runs in a child process, which must import it: define it at "
            "module level in an importable module (not __main__, not inside a function)"
        )
    return module, qualname


def memory_limit_error(limit_mb: int, used_mb: float) -> JobError:
    return JobError.from_message(
        "afterwork.MemoryLimitExceeded",
        f"the job's process used {used_mb:.0f} MB, over its max_memory_mb={limit_mb} limit; "
        "it was killed",
    )


def _exit_error(exitcode: int | None) -> JobError:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return JobError.from_message(
            "afterwork.ProcessDied",
            f"the job's process was killed by {name} (signal {-exitcode})",
        )
    if exitcode is None:
        message = "the job's process closed its connection to the worker"
    else:
        message = f"the job's process exited with code {exitcode}"
    return JobError.from_message("afterwork.ProcessDied", message)


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _readable(fd: int, wait: float | None) -> bool:
    """Wait until ``fd`` can be read, at most ``wait`` seconds; whether it can."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    loop.add_reader(fd, _set_once, readable)
    try:
        if wait is None:
            await readable
        else:
            await asyncio.wait({readable}, timeout=wait)
    finally:
        loop.remove_reader(fd)
    return readable.done()


def _rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (Linux ``/proc``; ``None`` where unreadable)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


# -- the child ---------------------------------------------------------------------------


def _find_task(module: str, qualname: str, name: str) -> Task[Any, Any]:
    from ..task import Task

    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if isinstance(found, Task) and found.name == name:
        return found
    # Registered with aw.register(func): the module attribute is the plain function; the
    # task is in the registry of an instance the module defines.
    for value in vars(importlib.import_module(module)).values():
        tasks = getattr(value, "tasks", None)
        if isinstance(tasks, dict) and isinstance(tasks.get(name), Task):
            task: Task[Any, Any] = tasks[name]
            return task
    raise LookupError(f"task {name!r} was not found in module {module!r}")


async def _run_in_child(
    task: Task[Any, Any], job: Job, send: Callable[[dict[str, Any]], None]
) -> Any:
    from ..context import JobContext
    from .dependencies import inject_job

    args, kwargs = task.codec.decode(job.args, job.kwargs)
    async with contextlib.AsyncExitStack() as stack:
        if task.codec.injected:
            context = JobContext(job=job, _report=lambda f, m: send({"progress": [f, m]}))
            overrides_of = getattr(task.owner, "dependency_overrides", None)
            overrides = overrides_of() if callable(overrides_of) else {}
            kwargs = {**kwargs, **await inject_job(task, context, stack, overrides)}
        if task.is_async:
            return await task.func(*args, **kwargs)
        return task.func(*args, **kwargs)


def child_main(fd: int, parent: int) -> None:  # pragma: no cover - runs in the child
    """Run attempts sent over the socket ``fd`` until it closes (the child's entry point)."""
    from multiprocessing.connection import Connection

    from pydantic_core import to_jsonable_python

    from ..retry import Retry

    conn = Connection(fd)
    # The terminal's Ctrl-C reaches the whole process group: the worker decides when its
    # children stop. SIGTERM keeps its default action (the hard timeout relies on it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def send(message: dict[str, Any]) -> None:
        conn.send_bytes(json.dumps(message, allow_nan=False).encode())

    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        send(_attempt(request, loop, send, to_jsonable_python, Retry))
        del request


def _attempt(
    request: dict[str, Any],
    loop: asyncio.AbstractEventLoop,
    send: Callable[[dict[str, Any]], None],
    jsonable: Callable[[Any], Any],
    retry_type: type[BaseException],
) -> dict[str, Any]:  # pragma: no cover - runs in the child
    """Run one attempt in the child; the reply to send (always JSON-serializable)."""
    task: Task[Any, Any] | None = None
    try:
        task = _find_task(request["module"], request["qualname"], request["task"])
        if request.get("timed"):  # the worker starts the job's clock on this message
            send({"started": True})
        fields = request["job"]
        job = Job(**{**fields, "status": JobStatus(fields["status"])})
        value = loop.run_until_complete(_run_in_child(task, job, send))
    except Exception as exc:
        error = JobError.from_exception(exc)
        if isinstance(exc, retry_type):
            return {"error": error.to_dict(), "retry": getattr(exc, "delay", None)}
        if isinstance(exc, MemoryError):
            message = f"the job ran out of memory in its process: {error.message}"
            error = JobError(type=error.type, message=message, traceback=error.traceback)
        dont = task is not None and isinstance(exc, task.opts.dont_retry)
        return {"error": error.to_dict(), "dont_retry": dont}
    try:
        reply = {"ok": jsonable(value)}
        json.dumps(reply, allow_nan=False)
    except Exception as exc:
        error = JobError.from_message(
            "afterwork.ResultNotSerializable", f"the job's result cannot be stored as JSON: {exc}"
        )
        return {"error": error.to_dict()}
    return reply


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child
    """Linux: the kernel kills this child if the worker dies (SIGKILL included)."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    # The worker may have died before the line above ran (then we were re-parented).
    if os.getppid() != parent:
        os._exit(1)


def _job_fields(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "task": job.task,
        "queue": job.queue,
        "status": JobStatus.RUNNING,
        "args": job.args,
        "kwargs": job.kwargs,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "recoveries": job.recoveries,
        "key": job.key,
        "created_at": job.created_at,
        "run_at": job.run_at,
        "started_at": job.started_at,
        "timeout": job.timeout,
    }


# -- the pool ----------------------------------------------------------------------------


class _Child:
    """One child process and the worker's end of its socket."""

    def __init__(self, process: subprocess.Popen[bytes], conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.jobs = 0

    @property
    def pid(self) -> int:
        return self.process.pid


_CHILD_CODE = (
    "import sys; from afterwork._engine.isolation import child_main; "
    "child_main(int(sys.argv[1]), int(sys.argv[2]))"
)


class ProcessPool:
    """Reused child processes for isolated attempts (one attempt per child at a time).

    Contract: whatever happens in a child, :meth:`run` returns a :class:`ChildResult` or
    raises :class:`ChildDied`; the pool then replaces the child. A cancelled :meth:`run`
    (a timeout, a cancel, a stop) frees its caller at once and kills the child in the
    background: SIGTERM, then SIGKILL after ``kill_grace`` seconds.
    :meth:`aclose` stops every child, killing those that do not stop within ``grace``.
    """

    def __init__(self, *, max_jobs_per_child: int | None, kill_grace: float) -> None:
        self.max_jobs_per_child = max_jobs_per_child
        self.kill_grace = kill_grace
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._reaping: set[asyncio.Task[None]] = set()
        self.started = 0
        """Children started so far (a reused pool starts few)."""

    def statistics(self) -> dict[str, int]:
        return {"idle": len(self._idle), "busy": len(self._busy), "started": self.started}

    def _spawn(self) -> _Child:
        # A fresh interpreter (like multiprocessing's spawn, without its pickling): nothing
        # of the worker (threads, connections, locks) is copied into the child. It finds
        # modules where the worker does.
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE, str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        from multiprocessing.connection import Connection  # lazily: most workers never fork

        self.started += 1
        return _Child(process, Connection(ours.detach()))

    def _acquire(self) -> _Child:
        while self._idle:
            child = self._idle.pop()
            if child.process.poll() is None:
                return child
            child.conn.close()
        # On the loop's thread: the child dies with the thread that started it (Linux
        # PDEATHSIG), so it must not be a short-lived pool thread.
        return self._spawn()

    def _release(self, child: _Child) -> None:
        self._busy.discard(child)
        child.jobs += 1
        if self.max_jobs_per_child is not None and child.jobs >= self.max_jobs_per_child:
            self._retire(child, kill=False)
        else:
            self._idle.append(child)

    def _retire(self, child: _Child, *, kill: bool) -> None:
        """Stop ``child`` in the background: the caller's slot is free at once."""
        self._busy.discard(child)
        task = asyncio.get_running_loop().create_task(self._stop(child, kill=kill))
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def _stop(self, child: _Child, *, kill: bool) -> None:
        """SIGTERM (or close the pipe), then SIGKILL after the grace; reap it."""
        process = child.process
        with contextlib.suppress(OSError):
            child.conn.close()
        if kill and process.poll() is None:
            process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(process.wait, self.kill_grace)
        if process.poll() is None:
            process.kill()
            await asyncio.to_thread(process.wait)

    async def run(
        self,
        task: Task[Any, Any],
        job: Job,
        *,
        timeout: float | None,
        max_memory_mb: int | None,
        on_progress: Callable[[float, str | None], None],
    ) -> ChildResult:
        """Run one attempt of ``job`` in a child; see the class docstring for the contract."""
        module, qualname = task_location(task)
        request = {
            "task": task.name,
            "module": module,
            "qualname": qualname,
            "timed": timeout is not None,  # then the child says when it started
        }
        payload = json.dumps({**request, "job": _job_fields(job)}).encode()
        child = self._acquire()
        self._busy.add(child)
        done = False
        try:
            child.conn.send_bytes(payload)
            result = await self._wait(child, timeout, max_memory_mb, on_progress)
            done = True
            return result
        finally:
            if done:
                self._release(child)
            else:  # timed out, died, over its memory, or the attempt was cancelled
                self._retire(child, kill=True)

    async def _wait(
        self,
        child: _Child,
        timeout: float | None,
        max_memory_mb: int | None,
        on_progress: Callable[[float, str | None], None],
    ) -> ChildResult:
        loop = asyncio.get_running_loop()
        fd = child.conn.fileno()
        # Until the child says it started the attempt (a new child imports the task's
        # module first), the start-up bound applies; then the job's own timeout. A job
        # without a timeout has neither (nor does its child send "started").
        deadline = None if timeout is None else loop.time() + STARTUP_TIMEOUT
        started = False
        while True:
            left = None if deadline is None else max(deadline - loop.time(), 0)
            wait = MEMORY_POLL if max_memory_mb is not None else None
            wait = left if wait is None else wait if left is None else min(wait, left)
            if not await _readable(fd, wait):
                if deadline is not None and loop.time() >= deadline:
                    if started:
                        raise TimeoutError
                    raise ChildDied(
                        JobError.from_message(
                            "afterwork.ProcessDied",
                            f"the job's process did not start within {STARTUP_TIMEOUT:g}s",
                        )
                    )
                if max_memory_mb is not None:
                    used = _rss_mb(child.pid)
                    if used is not None and used > max_memory_mb:
                        raise ChildDied(memory_limit_error(max_memory_mb, used))
                continue
            try:
                message = json.loads(child.conn.recv_bytes())
            except (EOFError, OSError):
                try:
                    code: int | None = await asyncio.to_thread(child.process.wait, 5)
                except subprocess.TimeoutExpired:  # it closed its socket but lives on
                    code = None
                raise ChildDied(_exit_error(code)) from None
            if "started" in message:
                started = True
                deadline = None if timeout is None else loop.time() + timeout
                continue
            if "progress" in message:
                fraction, text = message["progress"]
                on_progress(fraction, text)
                continue
            if "ok" in message:
                return ChildResult(value=message["ok"])
            error = JobError.from_dict(message["error"])
            if "retry" in message:
                return ChildResult(error=error, retry=True, retry_delay=message["retry"])
            return ChildResult(error=error, dont_retry=bool(message.get("dont_retry")))

    async def aclose(self) -> None:
        """Stop every child (idle ones politely, busy ones with SIGTERM), then reap them."""
        children, self._idle = self._idle, []
        for child in children:
            self._retire(child, kill=False)
        for child in list(self._busy):
            self._retire(child, kill=True)
        while self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)
