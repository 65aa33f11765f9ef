"""Flow control at declaration and enqueue: the key argument of a fleet-wide limit.

A task with ``concurrency_key`` stores the key argument among the job's keyword
arguments, always (its default filled in), so that a store finds a job's group without
knowing the task's signature (:func:`afterwork._lifecycle.flow_group`).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from ._lifecycle import FlowLimit, RateLimit
from .exceptions import EnqueueError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .task import Task

__all__ = ("check_flow_key", "flow_keys", "flow_limits", "keyed", "rate_limits")

_BY_NAME = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def flow_keys(task: Task[Any, Any]) -> list[tuple[str, str]]:
    """The key arguments of the task's fleet-wide limits: ``(option name, argument)``."""
    keys: list[tuple[str, str]] = []
    if task.opts.concurrency_key is not None:
        keys.append(("concurrency_key", task.opts.concurrency_key))
    rate = task.opts.rate_limit
    if rate is not None and rate.key is not None:
        keys.append(("rate_limit key", rate.key))
    return keys


def check_flow_key(task: Task[Any, Any]) -> None:
    """Refuse a limit's key that does not name an argument passable by name."""
    for option, key in flow_keys(task):
        params = task.codec.parameters
        param = params.get(key)
        if param is None:
            names = ", ".join(params) or "none"
            raise ValueError(
                f"{task.name}: {option} {key!r} is not an argument of the task"
                f" (its arguments: {names})"
            )
        if param.kind not in _BY_NAME or any(p.kind is p.VAR_POSITIONAL for p in params.values()):
            raise ValueError(
                f"{task.name}: {option} {key!r} must name an ordinary or keyword-only"
                " argument of a task without *args"
            )


def keyed(
    task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """The encoded arguments with each limit's key argument (and those after it) passed
    by name.

    Raises :class:`EnqueueError` when a key's value is not a JSON scalar.
    """
    for option, key in flow_keys(task):
        args, kwargs = _keyed(task, args, kwargs, option, key)
    return args, kwargs


def _keyed(
    task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any], option: str, key: str
) -> tuple[list[Any], dict[str, Any]]:
    params = list(task.codec.parameters.values())
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    if key in positional and len(args) > (at := positional.index(key)):
        kwargs = {**dict(zip(positional[at:], args[at:], strict=False)), **kwargs}
        args = args[:at]
    if key not in kwargs:
        default = task.codec.parameters[key].default
        kwargs = {**kwargs, key: None if default is inspect.Parameter.empty else default}
    value = kwargs[key]
    if value is not None and not isinstance(value, str | int | float | bool):
        raise EnqueueError(
            f"{task.name}: the {option} argument {key!r} must be a JSON scalar"
            f" (str, int, float, bool or None), not {type(value).__name__}",
            task=task.name,
        )
    return args, kwargs


def flow_limits(tasks: Mapping[str, Task[Any, Any]]) -> dict[str, FlowLimit]:
    """The fleet-wide limits of ``tasks``, as a claim takes them."""
    return {
        name: FlowLimit(cap, task.opts.concurrency_key)
        for name, task in tasks.items()
        if (cap := task.opts.concurrency) is not None
    }


def rate_limits(tasks: Mapping[str, Task[Any, Any]]) -> dict[str, RateLimit]:
    """The rate limits of ``tasks``, as a claim takes them."""
    return {
        name: rate for name, task in tasks.items() if (rate := task.opts.rate_limit) is not None
    }
