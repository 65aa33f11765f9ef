"""Fast constructors for the frozen, slotted records a batch enqueue makes thousands of.

A frozen dataclass's ``__init__`` takes keywords and sets each field through
``object.__setattr__``; ``dataclasses.replace`` adds a loop over the fields. For a record
of 14 or 29 fields made once per job of a 1,000-job batch, that is most of the client's
time. :func:`maker` writes, once per record type, a function that takes the chosen fields
by position and sets every slot unrolled (as ``dataclasses`` itself writes ``__init__``);
the fields not taken get their defaults. The records stay ordinary dataclasses: equal,
printable and frozen as before.

A slotted record's fields are set through their slots' own setters (``member_descriptor
.__set__``, bound once), as ``object.__setattr__`` would after looking each name up on the
class: about 60 % of its cost per field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from types import MemberDescriptorType
from typing import Any

__all__ = ("evolver", "filler", "lister", "maker")


def maker(cls: type, names: Sequence[str]) -> Callable[..., Any]:
    """A function ``make(*values)`` that builds ``cls`` from ``names``' values in order.

    Every other field gets its default (a ``default_factory`` is called per record).
    ``cls`` must be a dataclass whose ``__init__`` does nothing else (no
    ``__post_init__``, no ``InitVar``), as it is bypassed.
    """
    scope, lines = _start(cls, names, "make", names)
    for item in dataclasses.fields(cls):
        if item.name in names:
            value = item.name
        elif item.default is not dataclasses.MISSING:
            scope[f"default_{item.name}"] = item.default
            value = f"default_{item.name}"
        elif item.default_factory is not dataclasses.MISSING:
            scope[f"factory_{item.name}"] = item.default_factory
            value = f"factory_{item.name}()"
        else:
            raise TypeError(f"{cls.__name__}.{item.name} has no default: pass it")
        lines.append(_put(scope, cls, item.name, value))
    return _finish(scope, lines, "make")


def lister(
    cls: type, values: Mapping[str, str], arguments: Sequence[str], scope: Mapping[str, Any]
) -> Callable[..., list[Any]]:
    """A function ``make_all(items, *arguments)``: one ``cls`` per item of ``items``, each
    field in ``values`` set to its expression (over ``item``, ``arguments`` and the names
    of ``scope``), every other field to its default.

    One loop in one function, each slot set unrolled: about half of a :func:`maker` call
    per record, whose call and keywords cost as much as the record (a batch enqueue makes
    one record per job). ``cls`` must be a dataclass as :func:`maker` requires, whose
    fields are all slots of its own.
    """
    made, _ = _start(cls, list(values), "make", ())
    made.update(scope)
    lines = [
        f"def make_all(items, {', '.join(arguments)}):",
        "    out = []",
        "    append = out.append",
        "    for item in items:",
        "        record = new(cls)",
    ]
    for field in dataclasses.fields(cls):
        if field.name in values:
            value = values[field.name]
        elif field.default is not dataclasses.MISSING:
            made[f"default_{field.name}"] = field.default
            value = f"default_{field.name}"
        elif field.default_factory is not dataclasses.MISSING:
            made[f"factory_{field.name}"] = field.default_factory
            value = f"factory_{field.name}()"
        else:
            raise TypeError(f"{cls.__name__}.{field.name} has no default: give its value")
        slot = cls.__dict__.get(field.name)
        if not isinstance(slot, MemberDescriptorType):
            raise TypeError(f"{cls.__name__}.{field.name} is not a slot of its own")
        made[f"set_{field.name}"] = slot.__set__
        lines.append(f"        set_{field.name}(record, {value})")
    lines += ["        append(record)", "    return out"]
    exec("\n".join(lines), made)  # the source is built from the class's own fields
    make_all: Callable[..., list[Any]] = made["make_all"]
    return make_all


def copier(cls: type, names: Sequence[str]) -> Callable[..., Any]:
    """A function ``copy(record, *values)``: ``replace(record, **dict(zip(names, values)))``
    for records of exactly ``cls``, at a third of ``replace``'s cost."""
    scope, lines = _start(cls, names, "copy", ["source", *names])
    for item in dataclasses.fields(cls):
        value = item.name if item.name in names else f"source.{item.name}"
        lines.append(_put(scope, cls, item.name, value))
    return _finish(scope, lines, "copy")


def evolver(cls: type) -> Callable[..., Any]:
    """A function ``evolve(record, **changes)``: ``replace(record, **changes)`` for records
    of exactly ``cls`` (a subclass, with slots of its own, goes through ``replace``).

    Each field is a keyword-only parameter defaulting to a marker, so a call matches its
    keywords in C and copies every slot unrolled: about 60 % of a loop over the slots, and
    a third of ``replace``, for a 29-field record copied several times per job.
    """
    names = [item.name for item in dataclasses.fields(cls)]
    signature = ", ".join(f"{name}=_unset" for name in names)
    scope, lines = _start(cls, (), "evolve", ["source", "/", "*", signature])
    lines.insert(1, "    if type(source) is not cls: return replace(source, **_given(locals()))")
    scope.update(_unset=_UNSET, replace=dataclasses.replace, _given=_given)
    for name in names:
        lines.append(_put(scope, cls, name, f"source.{name} if {name} is _unset else {name}"))
    return _finish(scope, lines, "evolve")


def filler(cls: type) -> Callable[[Sequence[Any]], Any]:
    """A function ``fill(values)`` that builds ``cls`` from all its fields' values, in
    field order (``dataclasses.fields``), without the keyword ``__init__``."""
    names = [item.name for item in dataclasses.fields(cls)]
    scope, lines = _start(cls, (), "fill", ["values"])
    lines.insert(1, f"    ({', '.join(names)},) = values")
    for name in names:
        lines.append(_put(scope, cls, name, name))
    return _finish(scope, lines, "fill")


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def _given(arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        name: value
        for name, value in arguments.items()
        if name not in ("source", "cls") and value is not _UNSET
    }


def _start(
    cls: type, names: Sequence[str], function: str, arguments: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    known = {item.name for item in dataclasses.fields(cls)}
    if any(name not in known for name in names) or hasattr(cls, "__post_init__"):
        raise TypeError(f"no fast constructor of {cls.__name__} from {list(names)}")
    scope: dict[str, Any] = {"cls": cls, "new": object.__new__, "put": object.__setattr__}
    return scope, [f"def {function}({', '.join(arguments)}):", "    record = new(cls)"]


def _put(scope: dict[str, Any], cls: type, name: str, value: str) -> str:
    """The line that sets field ``name`` of ``record`` to the expression ``value``."""
    slot = cls.__dict__.get(name)
    if isinstance(slot, MemberDescriptorType):  # a slot of ``cls`` itself: its setter, bound once
        scope[f"set_{name}"] = slot.__set__
        return f"    set_{name}(record, {value})"
    return f"    put(record, {name!r}, {value})"


def _finish(scope: dict[str, Any], lines: list[str], function: str) -> Callable[..., Any]:
    lines.append("    return record")
    exec("\n".join(lines), scope)  # the source is built from the class's own fields
    made: Callable[..., Any] = scope[function]
    return made
