"""The ported tests write ``log.txt`` in the working directory, as the originals do: give
each test a fresh one (test hygiene, not afterwork setup)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
