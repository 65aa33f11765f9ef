"""A task function's signature, turned into validators built once per task.

Arguments are validated with pydantic when a job is enqueued and dumped to JSON; when the
job runs they are validated again from that JSON, so pydantic models, dataclasses,
datetimes, UUIDs and enums arrive as the types the function declares.
"""

from __future__ import annotations

import inspect
import json
import math
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .context import JobContext
from .exceptions import DependencyError, EnqueueError, PayloadTooLarge

if TYPE_CHECKING:
    # pydantic is imported when the first annotated task is declared, not with afterwork:
    # the CLI and web-only processes start faster for it.
    from pydantic import TypeAdapter

__all__ = ("ArgumentCodec", "Injected", "encode_payload", "ensure_json")

MAX_DEPTH = 100


class Injected:
    """Marks a parameter afterwork fills in itself (the context, later dependencies)."""

    __slots__ = ("kind", "name", "spec")

    def __init__(self, name: str, kind: str, spec: Any = None) -> None:
        self.name = name
        self.kind = kind
        self.spec = spec


#: Hooks that recognise injected parameters: (parameter, resolved annotation) → Injected.
#: The dependency support registers one for FastAPI's ``Depends``.
INJECTORS: list[Callable[[inspect.Parameter, Any], Injected | None]] = []


def _context_injector(param: inspect.Parameter, annotation: Any) -> Injected | None:
    if annotation is JobContext:
        return Injected(param.name, "context")
    return None


INJECTORS.append(_context_injector)


def ensure_json(value: Any, path: str, depth: int = 0) -> None:
    """Reject anything that would not survive ``loads(dumps(value)) == value``."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: {value!r} is not valid JSON")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            ensure_json(item, f"{path}[{index}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: dict key {key!r} is not a string")
            ensure_json(item, f"{path}[{key!r}]", depth + 1)
        return
    raise ValueError(
        f"{path}: a {type(value).__name__} is not JSON; annotate the parameter with its type "
        "so afterwork can convert it, or pass plain JSON values"
    )


# ``json.dumps`` with options builds an encoder per call; one made once does the same.
_encode = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode


def encode_payload(payload: Any, limit: int, *, task: str) -> bytes:
    """The payload as UTF-8 JSON, or :class:`EnqueueError` if it cannot be stored."""
    try:
        text = _encode(payload)
        data = text.encode("utf-8")
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError) as exc:
        raise EnqueueError(
            f"arguments of {task} cannot be stored as JSON: {exc}", task=task
        ) from exc
    if len(data) > limit:
        raise PayloadTooLarge(
            f"arguments of {task} take {len(data)} bytes as JSON, over the {limit}-byte limit",
            task=task,
        )
    return data


#: Annotations whose values of exactly that type pydantic returns unchanged, both validated
#: and dumped to JSON: such a value skips pydantic (a float only if finite, as pydantic
#: dumps NaN and infinities as null).
_EXACT: frozenset[Any] = frozenset((int, str, bool, float))


class _Param:
    """One parameter; its pydantic adapter is built when a value first needs it.

    pydantic is imported when the first value needs it, not when the task is declared: a
    worker whose jobs take plain values starts (and runs them) without loading pydantic.
    """

    __slots__ = ("_adapter", "annotation", "exact", "kind", "name")

    def __init__(self, name: str, kind: inspect._ParameterKind, annotation: Any) -> None:
        self.name = name
        self.kind = kind
        self.annotation = annotation  # None: unannotated or Any, plain JSON required
        self.exact: type | None = annotation if annotation in _EXACT else None
        self._adapter: TypeAdapter[Any] | None = None

    @property
    def adapter(self) -> TypeAdapter[Any] | None:
        if self.annotation is None:
            return None
        if self._adapter is None:
            from pydantic import TypeAdapter

            self._adapter = TypeAdapter(self.annotation)
        return self._adapter

    def passes(self, value: Any) -> bool:
        """Whether ``value`` is what pydantic would return for it, validated and dumped."""
        kind = type(value)
        return kind is self.exact and (kind is not float or math.isfinite(value))


class ArgumentCodec:
    """Validates and encodes a task's arguments; decodes them when the job runs."""

    def __init__(self, func: Callable[..., Any], task_name: str) -> None:
        self.task_name = task_name
        signature = inspect.signature(func)
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception as exc:  # a NameError from a forward reference, most often
            raise TypeError(
                f"cannot resolve the annotations of {task_name}: {exc}. Task functions must be "
                "defined where their annotations can be resolved (module level)."
            ) from exc
        self.injected: list[Injected] = []
        params: list[_Param] = []
        kept: list[inspect.Parameter] = []
        for param in signature.parameters.values():
            annotation = hints.get(param.name, Any)
            injected = None
            for injector in INJECTORS:
                try:
                    injected = injector(param, annotation)
                except DependencyError as exc:
                    raise exc.for_owner(task_name) from None
                if injected is not None:
                    break
            if injected is not None:
                if param.kind in (param.POSITIONAL_ONLY, param.VAR_POSITIONAL, param.VAR_KEYWORD):
                    raise TypeError(
                        f"{task_name}: the injected parameter {param.name!r} must be an "
                        "ordinary or keyword-only parameter"
                    )
                self.injected.append(injected)
                continue
            plain = annotation is Any or annotation is inspect.Parameter.empty
            params.append(_Param(param.name, param.kind, None if plain else annotation))
            kept.append(param)
        if self.injected and any(p.kind is p.VAR_POSITIONAL for p in kept):
            raise TypeError(
                f"{task_name}: a task with *args cannot also take injected parameters "
                f"({', '.join(i.name for i in self.injected)}); make them keyword-only"
            )
        self.signature: inspect.Signature = signature.replace(parameters=kept)
        self._required = any(
            p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            for p in kept
        )
        self._params = {p.name: p for p in params}
        # The fast path of ``encode``: a call passing only positional arguments, to the
        # leading positional parameters, binds them in order (what ``Signature.bind`` does).
        leading = 0
        for p in kept:
            if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                break
            leading += 1
        self._positional = [self._params[p.name] for p in kept[:leading]]
        self._fewest = sum(1 for p in kept[:leading] if p.default is inspect.Parameter.empty)
        self._by_position = not any(
            p.kind is p.KEYWORD_ONLY and p.default is inspect.Parameter.empty for p in kept
        )

    @property
    def parameters(self) -> Mapping[str, inspect.Parameter]:
        return self.signature.parameters

    def json_schema(self) -> dict[str, Any]:
        """A JSON schema of the arguments (for the API's task listing)."""
        properties: dict[str, Any] = {}
        required: list[str] = []
        for name, param in self.signature.parameters.items():
            spec = self._params[name]
            try:
                schema = spec.adapter.json_schema() if spec.adapter is not None else {}
            except Exception:  # a type pydantic can validate but not describe
                schema = {}
            properties[name] = schema
            if param.default is inspect.Parameter.empty and param.kind not in (
                param.VAR_POSITIONAL,
                param.VAR_KEYWORD,
            ):
                required.append(name)
        return {"type": "object", "properties": properties, "required": required}

    def _bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> inspect.BoundArguments:
        try:
            return self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise EnqueueError(f"{self.task_name}: {exc}", task=self.task_name) from exc

    def _convert(self, name: str, value: Any, *, encode: bool) -> Any:
        spec = self._params[name]
        if spec.kind is inspect.Parameter.VAR_POSITIONAL:
            return tuple(self._one(spec, f"{name}[{i}]", v, encode) for i, v in enumerate(value))
        if spec.kind is inspect.Parameter.VAR_KEYWORD:
            return {k: self._one(spec, k, v, encode) for k, v in value.items()}
        return self._one(spec, name, value, encode)

    def _one(self, spec: _Param, path: str, value: Any, encode: bool) -> Any:
        if spec.exact is not None and spec.passes(value):
            return value
        if spec.annotation is None:
            if encode:
                try:
                    ensure_json(value, path)
                except ValueError as exc:
                    raise EnqueueError(
                        f"{self.task_name}: argument {exc}", param=spec.name, task=self.task_name
                    ) from None
            return value
        adapter = spec.adapter
        assert adapter is not None
        try:
            validated = adapter.validate_python(value)
            if encode:
                return adapter.dump_python(validated, mode="json")
            return validated
        except Exception as exc:
            rejected = self._rejected(spec, path, exc)
            if rejected is None:
                raise
            raise rejected from None

    def _rejected(self, spec: _Param, path: str, exc: Exception) -> EnqueueError | None:
        """The EnqueueError for a value pydantic refused (pydantic is loaded by then)."""
        from pydantic import ValidationError
        from pydantic_core import PydanticSerializationError

        if isinstance(exc, ValidationError):
            errors = "; ".join(
                f"{'.'.join(str(p) for p in (path, *e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            return EnqueueError(
                f"{self.task_name}: invalid argument {path!r}: {errors}",
                param=spec.name,
                task=self.task_name,
            )
        if isinstance(exc, PydanticSerializationError | ValueError | TypeError):
            return EnqueueError(
                f"{self.task_name}: argument {path!r} cannot be stored as JSON: {exc}",
                param=spec.name,
                task=self.task_name,
            )
        return None

    def encode(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """Validate the arguments and return them JSON-ready, as positional and keyword."""
        if not kwargs and self._by_position and self._fewest <= len(args) <= len(self._positional):
            if not args:
                return [], {}
            # Each argument to its parameter in order: no binding to do (a batch's
            # enqueue calls this once per job).
            one = self._one
            return [
                one(spec, spec.name, v, True)
                for spec, v in zip(self._positional, args, strict=False)
            ], {}
        bound = self._bind(args, kwargs)
        converted = {
            name: self._convert(name, v, encode=True) for name, v in bound.arguments.items()
        }
        result = inspect.BoundArguments(self.signature, converted)
        return list(result.args), dict(result.kwargs)

    def decode(
        self, args: list[Any], kwargs: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The stored JSON arguments as the Python values the function declares."""
        if not args and not kwargs and not self._required:
            return (), {}  # nothing to bind or convert: the common no-argument job
        bound = self._bind(tuple(args), kwargs)
        converted = {
            name: self._convert(name, v, encode=False) for name, v in bound.arguments.items()
        }
        if not self.injected:
            result = inspect.BoundArguments(self.signature, converted)
            return result.args, dict(result.kwargs)
        # Injected parameters may sit between ordinary ones: pass everything by name.
        positional: list[Any] = []
        named: dict[str, Any] = {}
        for name, value in converted.items():
            kind = self._params[name].kind
            if kind is inspect.Parameter.POSITIONAL_ONLY:
                positional.append(value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                named.update(value)
            else:
                named[name] = value
        return tuple(positional), named
