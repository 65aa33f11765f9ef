"""The public namespace is small, sorted and complete (as httpx and anyio check theirs)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import afterwork

PUBLIC_MODULES = [
    info.name
    for info in pkgutil.walk_packages(afterwork.__path__, "afterwork.")
    if not any(part.startswith("_") for part in info.name.split(".")[1:])
]


def isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then everything else."""
    if name.isupper():
        return (0, name)
    return (1, name) if name[:1].isupper() else (2, name)


def test_top_level_all_is_sorted_and_complete() -> None:
    names = list(afterwork.__all__)
    assert names == sorted(names, key=isort_key)
    # Keep the top-level namespace small: 25 names, plus RateLimit (issue 13, flow control).
    assert len(names) <= 26
    for name in names:
        assert hasattr(afterwork, name), name
    exported = {n for n in dir(afterwork) if not n.startswith("_")} - {
        m.split(".")[1] for m in PUBLIC_MODULES
    }
    exported.discard("annotations")  # from __future__
    assert exported <= set(names), exported - set(names)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_module_declares_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert isinstance(getattr(module, "__all__", None), tuple), module_name
    assert list(module.__all__) == sorted(module.__all__, key=isort_key), module_name
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.{name}"


def test_every_public_symbol_has_a_docstring() -> None:
    missing = [
        name
        for name in afterwork.__all__
        if name != "__version__" and not getattr(afterwork, name).__doc__
    ]
    assert missing == []
