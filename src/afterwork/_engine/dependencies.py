"""FastAPI dependencies (``Depends``) resolved for each job run, and for services.

A task parameter declared with FastAPI's own ``Depends`` is not a job argument: the worker
calls the dependency when the job runs, passes its value, and cleans it up after the job
(generator dependencies), whatever the job's outcome.

This is a small resolver of its own over FastAPI's public ``Depends`` objects (their
``dependency`` and ``use_cache``); FastAPI's solver is bound to a request. The rules follow
FastAPI's, minus the request:

* plain and ``async`` functions, classes and callable objects are called; sync ones in a
  worker thread, off the event loop;
* sync and async generators are entered before the job and closed after it, in reverse
  order. The job's exception (or ``TimeoutError``, or cancellation) is thrown into them at
  their ``yield``, as FastAPI does with a route's exception, so
  ``try: yield db; db.commit() except: db.rollback()`` does the right thing;
* sub-dependencies are resolved first; with ``use_cache=True`` (the default) one
  dependency is called once per job run, whoever asks for it, and never shared between
  runs;
* ``app.dependency_overrides`` apply when the ``Afterwork`` instance serves the app through
  ``aw.lifespan``;
* a parameter annotated with :class:`~afterwork.JobContext` receives the running job's
  context, at any depth;
* anything that needs a request (``Request``, ``WebSocket``, ``Response``,
  ``BackgroundTasks``, ``SecurityScopes``, ``Security``, header/query/path/cookie/body
  parameters) is rejected with :class:`~afterwork.exceptions.DependencyError` when the task
  is declared.

Example:
    ```python
    async def get_db() -> AsyncIterator[Session]:
        async with Session() as session:
            yield session

    @aw.task
    async def audit(action: str, db: Annotated[Session, Depends(get_db)]) -> None:
        ...
    ```

Services and other callers resolve the dependencies of any callable with :func:`resolve`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import sys
import typing
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import anyio.to_thread

from .._signature import INJECTORS, Injected
from ..context import JobContext
from ..exceptions import DependencyError

if TYPE_CHECKING:
    from ..task import Task

__all__ = (
    "PROVIDED_TYPES",
    "Dependency",
    "dependencies_of",
    "inject_job",
    "overrides_of",
    "resolve",
)

#: Types whose parameters receive a value the caller provides at each run instead of a
#: dependency (``provide=`` of :func:`resolve`). Jobs provide :class:`JobContext`;
#: services may add their own context type.
PROVIDED_TYPES: set[type] = {JobContext}

# FastAPI is never imported here: a signature can only hold a ``Depends`` (or ask for a
# ``Request``) if its module imported FastAPI or Starlette already, so ``sys.modules`` tells
# whether to look at all. ``import afterwork`` stays free of FastAPI that way.
_REQUEST_TYPES: tuple[tuple[str, str, str], ...] = (
    ("starlette.requests", "HTTPConnection", "the request or websocket connection"),
    ("starlette.responses", "Response", "the response"),
    ("starlette.background", "BackgroundTasks", "the response's background tasks"),
    ("fastapi.security", "SecurityScopes", "the security scopes of the route"),
)


def _params() -> ModuleType | None:
    """``fastapi.params`` if FastAPI is loaded (else no parameter can use it)."""
    return sys.modules.get("fastapi.params")


def _request_types() -> list[tuple[type, str]]:
    """The request-bound classes among those already loaded."""
    found = []
    for module_name, name, what in _REQUEST_TYPES:
        module = sys.modules.get(module_name)
        cls = getattr(module, name, None) if module is not None else None
        if isinstance(cls, type):
            found.append((cls, what))
    return found


Kind = Literal["function", "coroutine", "generator", "async_generator"]


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Dependency:
    """One node of a dependency tree, checked when the task (or service) is declared.

    Attributes:
        call: the dependency as declared (the key of ``dependency_overrides`` and of the
            per-run cache).
        use_cache: reuse the value within one run (``Depends(..., use_cache=...)``).
        kind: how ``call`` is invoked: ``function``, ``coroutine``, ``generator`` or
            ``async_generator``.
        params: ``call``'s parameters: a sub-:class:`Dependency`, or a provided type.
    """

    call: Callable[..., Any]
    use_cache: bool
    kind: Kind
    params: tuple[tuple[str, Dependency | type], ...]


# -- analysis (at declaration time) -------------------------------------------------------


def _describe(call: Any) -> str:
    name = getattr(call, "__qualname__", None) or getattr(call, "__name__", None)
    if name is None:
        inner = getattr(call, "func", None)  # functools.partial
        return f"partial({_describe(inner)})" if inner is not None else repr(call)
    return f"{getattr(call, '__module__', '?')}.{name}"


def _hints_target(call: Any) -> Any:
    while isinstance(call, functools.partial):
        call = call.func
    if inspect.isclass(call):
        return call.__init__
    if inspect.isroutine(call):
        return call
    return type(call).__call__  # a callable object


def _kind(call: Any) -> Kind:
    target = _hints_target(call)  # a class's __init__ is neither: "function", as it should
    if inspect.isasyncgenfunction(target):
        return "async_generator"
    if inspect.isgeneratorfunction(target):
        return "generator"
    if inspect.iscoroutinefunction(target):
        return "coroutine"
    return "function"


def _split(annotation: Any, default: Any) -> tuple[Any, list[Any]]:
    """The bare type and the FastAPI markers of a parameter (``Annotated`` and default)."""
    markers: list[Any] = []
    params = _params()
    if typing.get_origin(annotation) is Annotated:
        args = typing.get_args(annotation)
        annotation = args[0]
        if params is not None:
            kinds = (params.Depends, params.Param, params.Body)
            markers.extend(a for a in args[1:] if isinstance(a, kinds))
    if params is not None and isinstance(default, params.Depends | params.Param | params.Body):
        markers.append(default)
    return annotation, markers


def _request_reason(annotation: Any, markers: list[Any]) -> str | None:
    """Why a parameter needs a request, or ``None`` if it does not."""
    params = _params()
    for marker in markers:  # markers are only found when FastAPI is loaded
        assert params is not None
        if isinstance(marker, params.Security):
            return (
                "it is a Security dependency, which checks the credentials and scopes of a request"
            )
        if isinstance(marker, params.Param):
            where = getattr(getattr(marker, "in_", None), "value", "request")
            return f"it is a {where} parameter, read from the request"
        if isinstance(marker, params.Body):
            return "it is read from the request body"
    if inspect.isclass(annotation):
        for cls, what in _request_types():
            if issubclass(annotation, cls):
                return f"it asks for {what} ({annotation.__name__})"
    return None


def _dependency_param(
    name: str, annotation: Any, default: Any, *, path: str, _seen: frozenset[int] = frozenset()
) -> Dependency | None:
    """The :class:`Dependency` a parameter declares, or ``None`` if it declares none.

    Raises:
        DependencyError: the parameter, or a dependency it declares, needs a request.
    """
    bare, markers = _split(annotation, default)
    reason = _request_reason(bare, markers)
    if reason is not None:
        raise DependencyError(
            f"parameter {path!r} cannot be resolved in background work: {reason}, and there "
            "is no request in a job. Pass the value as a job argument instead.",
            param=path,
        )
    params = _params()
    if params is None:
        return None
    depends = next((m for m in reversed(markers) if isinstance(m, params.Depends)), None)
    if depends is None:
        return None
    call = depends.dependency if depends.dependency is not None else bare
    if not callable(call):
        raise DependencyError(
            f"parameter {path!r}: Depends() needs a callable or a class annotation", param=path
        )
    return _plan(call, use_cache=depends.use_cache, path=path, _seen=_seen)


def _plan(
    call: Callable[..., Any],
    *,
    use_cache: bool = True,
    path: str | None = None,
    _seen: frozenset[int] = frozenset(),
) -> Dependency:
    """Check ``call`` and its sub-dependencies and return its :class:`Dependency`.

    Args:
        call: a dependency callable, as given to ``Depends``.
        use_cache: as ``Depends(use_cache=...)``.
        path: where it was declared, for error messages.

    Raises:
        DependencyError: ``call`` (or a dependency of it) needs a request, depends on
            itself, or its annotations cannot be resolved.
    """
    path = path or _describe(call)
    if id(call) in _seen:
        raise DependencyError(f"{path}: {_describe(call)} depends on itself", param=path)
    seen = _seen | {id(call)}
    try:
        signature = inspect.signature(call)
        hints = typing.get_type_hints(_hints_target(call), include_extras=True)
    except Exception as exc:  # NameError of a forward reference, a builtin, ...
        raise DependencyError(
            f"{path}: cannot read the signature of the dependency {_describe(call)}: {exc}",
            param=path,
        ) from exc
    nodes: list[tuple[str, Dependency | type]] = []
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        sub_path = f"{path} → {_describe(call)}({param.name})"
        annotation = hints.get(param.name, param.annotation)
        bare, _ = _split(annotation, param.default)
        if inspect.isclass(bare) and bare in PROVIDED_TYPES:
            nodes.append((param.name, bare))
            continue
        sub = _dependency_param(param.name, annotation, param.default, path=sub_path, _seen=seen)
        if sub is None:
            raise DependencyError(
                f"parameter {sub_path!r} cannot be resolved in background work: FastAPI reads "
                "a parameter without Depends from the request's query string or body, and "
                "there is no request in a job. Declare it with Depends(...), or give the "
                "dependency no such parameter.",
                param=sub_path,
            )
        nodes.append((param.name, sub))
    return Dependency(call=call, use_cache=use_cache, kind=_kind(call), params=tuple(nodes))


def dependencies_of(func: Callable[..., Any], *, owner: str | None = None) -> dict[str, Dependency]:
    """The parameters of ``func`` declared with ``Depends``, checked.

    Other parameters are ignored (they are the job's arguments), except those that need a
    request, which are rejected too.

    Args:
        func: a task or service function.
        owner: its name, for error messages.

    Raises:
        DependencyError: a dependency needs a request; the message names the parameter.
    """
    owner = owner or _describe(func)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:
        raise DependencyError(f"cannot resolve the annotations of {owner}: {exc}") from exc
    found: dict[str, Dependency] = {}
    for param in inspect.signature(func).parameters.values():
        try:
            dependency = _declared(param, hints.get(param.name, param.annotation))
        except DependencyError as exc:
            raise exc.for_owner(owner) from None
        if dependency is not None:
            found[param.name] = dependency
    return found


def _declared(param: inspect.Parameter, annotation: Any) -> Dependency | None:
    try:
        return _dependency_param(param.name, annotation, param.default, path=param.name)
    except DependencyError as exc:
        # The message holds the path to the culprit; ``param`` names the top parameter.
        raise DependencyError(exc.message, param=param.name) from None


def _injector(param: inspect.Parameter, annotation: Any) -> Injected | None:
    # The codec adds the task's name to errors.
    dependency = _declared(param, annotation)
    return None if dependency is None else Injected(param.name, "dependency", dependency)


INJECTORS.append(_injector)


# -- resolution (at each run) --------------------------------------------------------------


class _ServesApp(Protocol):
    def dependency_overrides(self) -> Mapping[Callable[..., Any], Callable[..., Any]]: ...


def overrides_of(aw: _ServesApp) -> Mapping[Callable[..., Any], Callable[..., Any]]:
    """The ``dependency_overrides`` of the FastAPI app ``aw`` serves (empty if none)."""
    return aw.dependency_overrides()


_override_plans: dict[Callable[..., Any], Dependency] = {}


def _plan_override(original: Dependency, call: Callable[..., Any]) -> Dependency:
    try:
        cached = _override_plans.get(call)
    except TypeError:  # an unhashable callable object
        cached = None
    if cached is not None:
        return dataclasses.replace(cached, use_cache=original.use_cache)
    planned = _plan(
        call, use_cache=original.use_cache, path=f"override of {_describe(original.call)}"
    )
    with contextlib.suppress(TypeError):
        if len(_override_plans) < 1024:
            _override_plans[call] = planned
    return planned


class _Run:
    """The state of one resolution: the cache, the overrides, the provided values."""

    __slots__ = ("cache", "overrides", "provide", "stack")

    def __init__(
        self,
        stack: AsyncExitStack,
        overrides: Mapping[Callable[..., Any], Callable[..., Any]],
        provide: Mapping[type, Any],
    ) -> None:
        self.stack = stack
        self.overrides = overrides
        self.provide = provide
        self.cache: dict[Callable[..., Any], Any] = {}

    async def solve(self, node: Dependency) -> Any:
        key = node.call
        if node.use_cache and key in self.cache:
            return self.cache[key]
        override = self.overrides.get(key)
        actual = node if override is None else _plan_override(node, override)
        kwargs: dict[str, Any] = {}
        for name, sub in actual.params:
            if isinstance(sub, Dependency):
                kwargs[name] = await self.solve(sub)
            elif sub in self.provide:
                kwargs[name] = self.provide[sub]
            else:
                raise DependencyError(
                    f"{_describe(actual.call)}({name}) asks for a {sub.__name__}, which is "
                    "not available here",
                    param=name,
                )
        value = await self._call(actual, kwargs)
        # As in FastAPI: always remember the value; use_cache decides whether to reuse it.
        self.cache.setdefault(key, value)
        return value

    async def _call(self, node: Dependency, kwargs: dict[str, Any]) -> Any:
        call = node.call
        if node.kind == "coroutine":
            return await call(**kwargs)
        if node.kind == "async_generator":
            return await self.stack.enter_async_context(
                contextlib.asynccontextmanager(call)(**kwargs)
            )
        if node.kind == "generator":
            manager = contextlib.contextmanager(call)(**kwargs)
            value = await anyio.to_thread.run_sync(manager.__enter__)

            async def close(*exc_info: Any) -> bool | None:
                return await anyio.to_thread.run_sync(manager.__exit__, *exc_info)

            self.stack.push_async_exit(close)
            return value
        return await anyio.to_thread.run_sync(functools.partial(call, **kwargs))


async def resolve(
    target: Callable[..., Any] | Mapping[str, Dependency],
    stack: AsyncExitStack,
    *,
    overrides: Mapping[Callable[..., Any], Callable[..., Any]] | None = None,
    provide: Mapping[type, Any] | None = None,
) -> dict[str, Any]:
    """Call the dependencies of ``target`` for one run; return their values by parameter.

    Generator dependencies are entered now and their cleanup is pushed on ``stack``:
    closing the stack (with the run's exception, if any) tears them down in reverse order.
    Values are cached for this call only (``use_cache``).

    Args:
        target: a function whose ``Depends`` parameters to resolve, or what
            :func:`dependencies_of` returned for it (checked once, reused per run).
        stack: receives the cleanup of generator dependencies.
        overrides: replacement callables by original (``app.dependency_overrides``; see
            :func:`overrides_of`).
        provide: values for parameters annotated with one of :data:`PROVIDED_TYPES`
            (``{JobContext: ctx}``).

    Raises:
        DependencyError: the dependencies cannot be used without a request.

    Example:
        ```python
        async with contextlib.AsyncExitStack() as stack:
            values = await resolve(service_func, stack, overrides=aw.dependency_overrides())
            await service_func(**values)
        ```
    """
    plans = target if isinstance(target, Mapping) else dependencies_of(target)
    run = _Run(stack, overrides or {}, provide or {})
    return {name: await run.solve(node) for name, node in plans.items()}


async def inject_job(
    task: Task[Any, Any],
    context: JobContext,
    stack: AsyncExitStack,
    overrides: Mapping[Callable[..., Any], Callable[..., Any]],
) -> dict[str, Any]:
    """The values afterwork injects into one run of ``task``: its context, its dependencies."""
    values: dict[str, Any] = {i.name: context for i in task.codec.injected if i.kind == "context"}
    plans = {i.name: i.spec for i in task.codec.injected if i.kind == "dependency"}
    if plans:
        values.update(
            await resolve(plans, stack, overrides=overrides, provide={JobContext: context})
        )
    return values
