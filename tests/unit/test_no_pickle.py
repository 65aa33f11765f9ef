"""The T-NOPICKLE guard of tests/conftest.py is live (a guard that cannot fail is no guard)."""

from __future__ import annotations

import pickle

import pytest


def test_unpickling_anywhere_in_the_suite_fails(no_pickle: list[str]) -> None:
    payload = pickle.dumps({"a": 1})
    with pytest.raises(AssertionError, match="never unpickle"):
        pickle.loads(payload)
    assert no_pickle == ["pickle.loads"]
    no_pickle.clear()  # this call was the test's own
