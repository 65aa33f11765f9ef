"""The SQLite store's files are private unless configured otherwise."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from afterwork import Afterwork, ConfigurationError

pytestmark = pytest.mark.anyio


def modes(db: Path) -> dict[str, int]:
    files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in files}


async def modes_in_use(db: Path, query: str = "") -> dict[str, int]:
    """Enqueue a job into the store at ``db``; the modes of its files while it is open."""
    aw = Afterwork(f"sqlite:///{db}{query}")

    @aw.task(name="t")
    async def t() -> None: ...

    async with aw:
        await t.enqueue()
        return modes(db)  # -wal and -shm exist while a connection is open


async def test_the_database_wal_and_shm_are_created_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, which gave 0644 before
    try:
        created = await modes_in_use(tmp_path / "jobs.db")
    finally:
        os.umask(old)
    assert created == {"jobs.db": 0o600, "jobs.db-wal": 0o600, "jobs.db-shm": 0o600}


async def test_the_mode_is_configurable_and_an_existing_file_keeps_its_own(
    tmp_path: Path,
) -> None:
    old = os.umask(0o077)  # file_mode is exact, whatever the umask
    try:
        group = await modes_in_use(tmp_path / "group.db", "?file_mode=0640")
        existing = tmp_path / "existing.db"
        existing.touch()
        existing.chmod(0o644)
        kept = await modes_in_use(existing)
    finally:
        os.umask(old)
    assert group == {"group.db": 0o640, "group.db-wal": 0o640, "group.db-shm": 0o640}
    assert kept["existing.db"] == 0o644


def test_a_bad_file_mode_is_a_configuration_error(tmp_path: Path) -> None:
    for bad in ("999", "0o1777", "rw"):
        with pytest.raises(ConfigurationError):
            Afterwork(f"sqlite:///{tmp_path}/x.db?file_mode={bad}")
