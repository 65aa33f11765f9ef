"""The public surface is pinned, and the import graph keeps its layers.

Public: ``afterwork.__all__``, ``afterwork.fastapi``, ``afterwork.testing``, the store
protocols (``afterwork.backends``), and the other modules without a ``_`` listed below.
Everything else is private; a new public name or module must be added here on purpose.

The import rules (see ``docs/design.md``), checked on the source with ``ast`` so that
imports under ``if TYPE_CHECKING:`` count as much as runtime ones:

* the model (``job.py``) and the store protocols (``backends/base.py``) import nothing
  above the model;
* no engine module (``afterwork/_engine/``) imports the facade (``app.py``), the sync
  bridge, the web layer or the CLI, even lazily;
* no import cycle goes through the facade.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import afterwork

SRC = Path(afterwork.__file__).parent

EXPECTED_ALL = (
    "Afterwork",
    "AfterworkError",
    "BackendError",
    "BackendUnavailable",
    "ConfigurationError",
    "EnqueueError",
    "Job",
    "JobCall",
    "JobContext",
    "JobError",
    "JobEvent",
    "JobNotFound",
    "JobStatus",
    "PayloadTooLarge",
    "RateLimit",
    "Retry",
    "ScheduleInfo",
    "ServiceContext",
    "ServiceState",
    "ServiceStatus",
    "Settings",
    "Task",
    "TaskNotFound",
    "Worker",
    "WorkerStatistics",
    "__version__",
)

EXPECTED_MODULES: dict[str, tuple[str, ...]] = {
    "afterwork.app": ("Afterwork", "ServiceContext", "ServiceInstance", "Settings"),
    "afterwork.backends": ("Backend", "Inspector", "Store", "from_url"),
    "afterwork.backends.base": (
        "TRUNCATED",
        "Backend",
        "BeginsTogether",
        "CancelWatch",
        "ChannelMessage",
        "Channels",
        "Claim",
        "Clock",
        "DueCount",
        "EventHistory",
        "EventStream",
        "FlowLimit",
        "HeartbeatReply",
        "HistoryRow",
        "HistoryStore",
        "Inspector",
        "JobFilter",
        "Lease",
        "LeaseInfo",
        "Leases",
        "MessageStream",
        "NewJob",
        "Outcome",
        "QueuePause",
        "QueueStats",
        "RateLimit",
        "RateLimits",
        "Store",
        "Ticks",
        "TransactionalEnqueue",
        "WorkerInfo",
        "WorkerPresence",
        "truncated_event",
    ),
    "afterwork.backends.memory": ("MemoryBackend",),
    "afterwork.backends.postgres": ("PostgresBackend",),
    "afterwork.backends.redis": ("RedisBackend",),
    "afterwork.backends.sqlite": ("SQLiteBackend", "path_from_url"),
    "afterwork.cli": ("app", "load_afterwork", "main"),
    "afterwork.context": ("JobContext",),
    "afterwork.exceptions": (
        "AfterworkError",
        "BackendError",
        "BackendUnavailable",
        "ConfigurationError",
        "DependencyError",
        "EnqueueError",
        "EnqueueUnconfirmed",
        "InvalidTransition",
        "JobFailed",
        "JobNotFound",
        "MissingDependencyError",
        "PayloadTooLarge",
        "ScheduleNotFound",
        "SchemaVersionError",
        "ServiceStartError",
        "TaskNotFound",
    ),
    "afterwork.fastapi": (
        "Dependency",
        "Jobs",
        "JobsManager",
        "PendingJob",
        "dependencies_of",
        "get_afterwork",
        "job_event_stream",
        "resolve",
        "send_job_events",
    ),
    "afterwork.fastapi.router": ("CSRF_HEADER", "RouterOptions", "create_router"),
    "afterwork.job": (
        "ACTIVE_STATUSES",
        "MAX_HEADERS",
        "MAX_HEADERS_BYTES",
        "MAX_TIMELINE",
        "SCHEDULE_HEADER",
        "TERMINAL_STATUSES",
        "TRANSITIONS",
        "WAITING_STATUSES",
        "Job",
        "JobAttempt",
        "JobError",
        "JobEvent",
        "JobOwner",
        "JobStatus",
        "check_headers",
        "check_transition",
        "new_job_id",
    ),
    "afterwork.history": (
        "BUCKETS",
        "DEFAULT_RETENTION",
        "History",
        "HistoryPoint",
        "read_history",
    ),
    "afterwork.metrics": ("CONTENT_TYPE", "DURATION_BUCKETS", "Metrics"),
    "afterwork.tracing": ("Tracing",),
    "afterwork.retry": ("Backoff", "ExponentialBackoff", "FixedBackoff", "Retry"),
    "afterwork.task": (
        # The documented limits of enqueue's options (issue 17: bad input never gets in).
        "MAX_DELAY",
        "MAX_KEY",
        "MAX_QUEUE",
        "MAX_TASK_NAME",
        "PRIORITY_MAX",
        "PRIORITY_MIN",
        "EnqueueOptions",
        "Task",
        "TaskCall",
        "TaskOptions",
        "TaskOwner",
    ),
    "afterwork.testing": ("FakeClock", "eager"),
}

#: Modules that moved into the engine: importable from the old path, with a warning.
DEPRECATED_PATHS = (
    "afterwork.worker",
    "afterwork.runner",
    "afterwork.scheduler",
    "afterwork.services",
    "afterwork.dependencies",
    "afterwork._watchdog",
)

#: The model: what every layer may import. ``_lifecycle`` is the model's transitions.
MODEL = frozenset(
    {"afterwork.exceptions", "afterwork.job", "afterwork._lifecycle", "afterwork._records"}
)
FACADE = "afterwork.app"
#: What the engine must never import: the facade and everything above it.
ABOVE_ENGINE = (
    "afterwork.app",
    "afterwork._app",  # its mixins (_app_jobs.py, ...)
    "afterwork._bridge",
    "afterwork.fastapi",
    "afterwork.cli",
)


# -- the public surface -------------------------------------------------------------------


def test_top_level_all_is_pinned() -> None:
    assert afterwork.__all__ == EXPECTED_ALL
    for name in EXPECTED_ALL:
        assert hasattr(afterwork, name), name


def test_public_modules_are_pinned() -> None:
    found = {
        info.name
        for info in pkgutil.walk_packages(afterwork.__path__, "afterwork.")
        if not any(part.startswith("_") for part in info.name.split(".")[1:])
    }
    assert found == set(EXPECTED_MODULES)


@pytest.mark.parametrize("module_name", sorted(EXPECTED_MODULES))
def test_public_module_all_is_pinned(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__all__ == EXPECTED_MODULES[module_name]
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.{name}"


@pytest.fixture(autouse=True)
def _forget_moved_modules() -> Iterator[None]:
    """Each test imports the old paths afresh, and leaves no trace of them on the package."""

    def forget() -> None:
        for old in DEPRECATED_PATHS:
            sys.modules.pop(old, None)
            afterwork.__dict__.pop(old.rpartition(".")[2], None)

    forget()
    yield
    forget()


@pytest.mark.parametrize("old", DEPRECATED_PATHS)
def test_moved_modules_import_with_a_deprecation_warning(old: str) -> None:
    with pytest.warns(DeprecationWarning, match=old.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module.__all__
    for name in module.__all__:
        assert hasattr(module, name), f"{old}.{name}"


def test_moved_modules_keep_their_public_names() -> None:
    import afterwork.fastapi

    # By name: a type checker must not resolve the old paths (they have no file).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        services = importlib.import_module("afterwork.services")
        worker = importlib.import_module("afterwork.worker")
        dependencies = importlib.import_module("afterwork.dependencies")
    assert services.ServiceContext is afterwork.ServiceContext
    assert services.ServiceState is afterwork.ServiceState
    assert worker.WorkerStatistics is afterwork.WorkerStatistics
    assert dependencies.resolve is afterwork.fastapi.resolve


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.strip()


@pytest.mark.parametrize(
    "statement",
    [
        "import afterwork",
        "from afterwork import *",  # every public name, so the facade and the engine
        "from afterwork import Afterwork; Afterwork('memory://')",
    ],
)
def test_afterwork_does_not_import_fastapi_or_the_cli(statement: str) -> None:
    loaded = run_python(
        f"import sys; {statement}; "
        "print(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'fastapi', 'starlette', 'typer', 'rich', 'click'}))"
    )
    assert loaded == "[]"


def test_afterwork_cli_help_does_not_load_the_engine() -> None:
    loaded = run_python(
        "import sys\n"
        "from afterwork import cli\n"
        "print(sorted(m for m in sys.modules if m.startswith(('afterwork.app', "
        "'afterwork._engine', 'pydantic', 'asyncio'))))"
    )
    assert loaded == "[]"


def test_a_task_with_depends_still_imports_fastapi_itself() -> None:
    # The resolver never imports FastAPI: the task's own module does, by using Depends.
    loaded = run_python(
        "import sys\n"
        "from typing import Annotated\n"
        "from fastapi import Depends\n"
        "from afterwork import Afterwork\n"
        "aw = Afterwork('memory://')\n"
        "def db() -> int: return 1\n"
        "@aw.task\n"
        "async def audit(db: Annotated[int, Depends(db)]) -> None: ...\n"
        "print([i.kind for i in audit.codec.injected])\n"
    )
    assert loaded == "['dependency']"


# -- the import graph ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Import:
    source: str
    target: str
    lazy: bool  # inside a function: deferred until called
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _walk(node: ast.AST, lazy: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield child, inner
        yield from _walk(child, inner)


def imports_of(name: str) -> list[Import]:
    """Every import of an afterwork module by ``name`` (type-only ones included).

    The parent packages a submodule import runs are not counted: they are implied by the
    layout, not chosen by the importer.
    """
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[Import] = []
    for node, lazy in _walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = [f"{module}.{alias.name}" for alias in node.names]
            targets = [m for m in submodules if m in MODULES]
            if len(targets) < len(submodules):
                targets.append(module)  # names defined in ``module`` itself
        line: int = getattr(node, "lineno", 0)
        found.extend(Import(name, t, lazy, line) for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


#: The one sanctioned upward import: ``aw.router()`` reaches the web layer lazily, which
#: is what keeps FastAPI out of ``import afterwork``.
SANCTIONED = {(FACADE, "afterwork.fastapi.router")}


def cycle_through(start: str) -> list[str] | None:
    """The shortest import path from ``start`` back to itself, if there is one."""
    edges = {
        name: sorted(
            {i.target for i in imports if not (i.lazy and (i.source, i.target) in SANCTIONED)}
        )
        for name, imports in GRAPH.items()
    }
    came_from: dict[str, str | None] = {start: None}
    frontier = deque([start])
    while frontier:
        node = frontier.popleft()
        for target in edges[node]:
            if target == start:
                path = [node]
                while (before := came_from[path[-1]]) is not None:
                    path.append(before)
                return [*reversed(path), start]
            if target not in came_from:
                came_from[target] = node
                frontier.append(target)
    return None


def test_the_graph_sees_the_modules() -> None:
    # A sanity check of the parser itself: known edges are found, type-only ones included.
    engine_worker = {i.target for i in GRAPH["afterwork._engine.worker"]}
    assert {"afterwork._engine.runner", "afterwork.backends.base"} <= engine_worker
    assert "afterwork._engine.host" in engine_worker  # imported under TYPE_CHECKING
    assert any(i.lazy and i.target.startswith("afterwork.fastapi") for i in GRAPH[FACADE])


def test_the_model_imports_nothing_above_it() -> None:
    for name in sorted(MODEL):
        above = {i.target for i in GRAPH[name]} - MODEL
        assert above == set(), f"{name} imports {sorted(above)}"


def test_the_store_protocols_import_only_the_model() -> None:
    above = {i.target for i in GRAPH["afterwork.backends.base"]} - MODEL
    assert above == set(), f"backends/base.py imports {sorted(above)}"


def test_the_engine_never_imports_the_facade() -> None:
    engine = [name for name in GRAPH if name.startswith("afterwork._engine")]
    assert len(engine) >= 6
    offending = [
        f"{i.source}:{i.line} imports {i.target}"
        for name in engine
        for i in GRAPH[name]
        if i.target.startswith(ABOVE_ENGINE)
    ]
    assert offending == []


def test_no_import_cycle_goes_through_the_facade() -> None:
    # Type-only and function-level imports count, except the one sanctioned lazy import.
    assert cycle_through(FACADE) is None
    sanctioned = [i for i in GRAPH[FACADE] if (i.source, i.target) in SANCTIONED]
    assert sanctioned, "aw.router() no longer imports the router: update SANCTIONED"
    assert all(i.lazy for i in sanctioned), "the web layer must be imported lazily"


@pytest.mark.parametrize("name", ["afterwork._engine.worker", "afterwork.job", "afterwork.task"])
def test_no_import_cycle_goes_through_the_engine_or_the_model(name: str) -> None:
    cycle = cycle_through(name)
    # Inside the model a type-only cycle is fine (``JobFailed.job`` names ``Job``).
    assert cycle is None or set(cycle) <= MODEL, cycle
