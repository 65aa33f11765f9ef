from __future__ import annotations

import inspect
from typing import Any

import pytest

from afterwork._signature import ArgumentCodec
from afterwork.exceptions import EnqueueError


def slow(codec: ArgumentCodec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What ``encode`` returns through ``Signature.bind`` (its general path)."""
    bound = codec.signature.bind(*args, **kwargs)
    converted = {name: codec._convert(name, v, encode=True) for name, v in bound.arguments.items()}
    result = inspect.BoundArguments(codec.signature, converted)
    return list(result.args), dict(result.kwargs)


def plain(a: Any, b: Any = 2, /, c: Any = 3, *rest: Any, k: Any = 4, **more: Any) -> None:
    pass


def typed(a: int, b: str = "x", *, k: float = 1.0) -> None:
    pass


def required_keyword(a: int, *, k: int) -> None:
    pass


@pytest.mark.parametrize(
    ("func", "args", "kwargs"),
    [
        (plain, (1,), {}),
        (plain, (1, 2, 3), {}),
        (plain, (1, 2, 3, 4, 5), {}),  # *rest: the general path
        (plain, (1,), {"k": 5, "z": 6}),
        (typed, (1,), {}),
        (typed, (1, "y"), {}),
        (typed, (1,), {"k": 2.5}),
        (typed, (), {"a": 1}),
    ],
)
def test_encode_is_what_binding_gives(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    codec = ArgumentCodec(func, "t")
    assert codec.encode(args, kwargs) == slow(codec, args, kwargs)


@pytest.mark.parametrize(
    ("func", "args"),
    [(typed, ()), (typed, (1, "y", 3)), (typed, ("nope",)), (required_keyword, (1,))],
)
def test_bad_positional_calls_are_refused_as_before(func: Any, args: tuple[Any, ...]) -> None:
    with pytest.raises(EnqueueError):
        ArgumentCodec(func, "t").encode(args, {})
